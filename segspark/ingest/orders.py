"""Transactions: the flagged lines grouped into orders in the pass that validates them.

The flagged lines (every line, with the first rule it breaks or null) come out of the one shuffle by
customer sorted by (customer, order), so one sort aggregate by (source customer id, order) turns them
into one row per order: the silver order aggregates over the order's clean lines
(``silver.order_aggregates``), and its quarantined lines kept whole as an array of (customer id,
rule, raw JSON). That frame, about one row per order instead of one per line, is the one persisted;
the counts by rule, the quarantine rows and the clean orders all read it, and the validated lines are
never materialized. An order whose lines were all quarantined has no clean line: it is no order.
"""

from __future__ import annotations

import datetime as dt

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.ingest.keys import LINE_HASH
from segspark.ingest.quarantine import RAW, RULE, kept
from segspark.silver import order_aggregates

# Internal columns of the per-order frame: the order's quarantined lines, and the time of its last
# clean line (the run's default as_of_date is the date of the last clean line).
QUARANTINED = "_dq_quarantined"
LAST_LINE_TS = "_dq_last_line_ts"


def grouped_orders(flagged: DataFrame) -> DataFrame:
    """Flagged lines (output columns, ``schema.SOURCE_KEY``, rule, raw) -> one persisted row per
    (source customer id, order id): the aggregates of its clean lines, and its quarantined lines."""
    clean = F.col(RULE).isNull()
    bad = F.struct(
        kept(F.col(S.CUSTOMER_ID).cast("string")).alias(S.CUSTOMER_ID),
        F.col(RULE),
        kept(F.col(RAW)).alias(RAW),
    )
    return (
        flagged.groupBy(S.SOURCE_KEY, S.ORDER_ID)
        .agg(
            *order_aggregates(clean, with_customer=True),
            F.max(F.when(clean, F.col(S.ORDER_TS))).alias(LAST_LINE_TS),
            # collect_list keeps every quarantined line, copies included (a set would merge them)
            F.collect_list(F.when(~clean, bad)).alias(QUARANTINED),
            *(
                [F.collect_list(F.when(clean, F.col(LINE_HASH))).alias(S.LINE_HASHES)]
                if LINE_HASH in flagged.columns
                else []
            ),
        )
        .persist(StorageLevel.MEMORY_AND_DISK_DESER)
    )


def rule_counts(grouped: DataFrame) -> tuple[dict[str | None, int], dt.datetime | None]:
    """Lines per rule (None: clean) and the time of the last clean line, in one job over the
    persisted orders: each row gives (null, its clean lines) and (rule, 1) per quarantined line."""

    def entry(rule: Column, n: Column, ts: Column) -> Column:
        return F.struct(rule.alias(RULE), n.cast("long").alias("n"), ts.alias(LAST_LINE_TS))

    none = F.lit(None)
    entries = F.concat(
        F.array(entry(none.cast("string"), F.col(S.LINES), F.col(LAST_LINE_TS))),
        F.transform(F.col(QUARANTINED), lambda q: entry(q[RULE], F.lit(1), none.cast("timestamp"))),
    )
    rows = (
        grouped.select(F.inline(entries))
        .groupBy(RULE)
        .agg(F.sum("n").alias("n"), F.max(LAST_LINE_TS).alias(LAST_LINE_TS))
        .collect()
    )
    counts = {r[RULE]: int(r["n"] or 0) for r in rows}
    last = next((r[LAST_LINE_TS] for r in rows if r[RULE] is None), None)
    return counts, last


def clean_orders(grouped: DataFrame) -> DataFrame:
    """The orders with at least one clean line: ``silver.order_aggregates`` columns (``silver.order_columns``
    makes them the ``orders`` table)."""
    return grouped.where(F.col(S.LINES) > 0).drop(S.SOURCE_KEY, QUARANTINED, LAST_LINE_TS)


def quarantined_lines(grouped: DataFrame) -> DataFrame:
    """The quarantined lines, one row each: customer_id (the pseudonym, or the source id), rule, raw."""
    return grouped.select(F.inline(F.col(QUARANTINED)))
