"""``validate``: one conformed input table to clean rows, quarantine rows and counts.

In order: check the columns, build the table's plan (``plans``), count the input in one scan, shuffle
once by customer and parse, add the row keys (``keys``), flag each row with the first rule it breaks,
persist the flagged frame (the transactions: grouped into orders first, ``orders``) and count it by
rule.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.config import ERASED_RULE, PrivacyConfig, QualityConfig
from segspark.errors import InputError
from segspark.ingest.columns import blank_to_null, conform, is_true
from segspark.ingest.keys import LINE_HASH, with_row_keys
from segspark.ingest.orders import clean_orders, grouped_orders, quarantined_lines, rule_counts
from segspark.ingest.plans import SEEN, Plan, table_plan
from segspark.ingest.quarantine import RAW, RULE, kept, quarantine_rows, raw_fields
from segspark.ingest.result import IngestResult
from segspark.ingest.rules import DATED_BY, TABLE_RULES, severity
from segspark.privacy import mark_pseudonymized

# the package's logger: log lines keep the name they had when ingest was one module
log = logging.getLogger("segspark.ingest")

HISTORY_HASH = "_dq_history_hash"  # ``History.lines``: one clean line's hash
_ERASED_TAG, _ERASED_AT = "_dq_erased_tag", "_dq_erased_at"  # ``erased``: a row's customer's erasure


@dataclass(frozen=True)
class History:
    """What an incremental refresh validates a batch of new transaction lines against: ``whole``,
    the whole input (conformed; the outlier bound is its amounts'), ``lines``, the clean lines of
    the earlier orders the batch may touch (``customer_id``, ``order_id``, ``HISTORY_HASH``); with
    ``batch`` (the batch, conformed) and ``earlier`` (those orders' table) for ``why_full``."""

    whole: DataFrame
    lines: DataFrame
    batch: DataFrame
    earlier: DataFrame


def validate(
    df: DataFrame,
    table: str,
    cfg: QualityConfig,
    processing_ts: dt.datetime,
    currency_rates: DataFrame | None = None,
    *,
    key: bytes | None = None,
    privacy: PrivacyConfig | None = None,
    history: History | None = None,
    erased: DataFrame | None = None,
) -> IngestResult:
    """Apply the quality rules of ``table`` to a conformed input; return clean rows, quarantine and counts.

    ``history`` (transactions, an incremental refresh): ``df`` is a batch of new lines; the outlier
    bound is the whole input's and a line copying a clean line of an earlier order is a copy
    (``duplicate_line``), as a full refresh of the whole input flags them.

    ``key``: when given (and ``privacy.pseudonymize``), ``clean.customer_id`` and the customer id in
    the quarantine JSON are HMAC pseudonyms (``result.pseudonymized`` is True and
    ``privacy.pseudonymize`` leaves the column alone). The HMAC runs once per customer (on its first
    line in the duplicate window) and is carried to its other lines. The transactions are grouped
    into orders right after the shuffle (``result.orders``, persisted; ``result.clean`` is not, and
    reading it recomputes the validation). Without a key the clean ids are the trimmed source ids and the
    quarantine JSON omits them.
    ``currency_rates``: optional table (currency, rate = units of the base currency per unit), on top
    of ``quality.currency.rates``. Clean amounts are in the base currency.
    ``erased``: the ``erasures`` table (``segspark erase``): a row of an erased customer dated up to
    the erasure, or undated, breaks rule ``erased_customer`` (first after a missing id) and is
    quarantined without its key and values; one dated after it (a purchase since) is taken.

    Clean columns: transactions: customer_id, order_id, order_ts, amount, quantity, product_category,
    channel, currency; customers: customer_id, signup_ts, acquisition_channel, country, age,
    birth_year, gender, income_band, industry, company_size (PII dropped; ``privacy.minimize`` makes
    the age band); events: customer_id, event_ts, event_type, channel, device; marketing_spend:
    month (first of month), channel, spend. Quarantine columns: source_table, rule, reason, raw.
    """
    _check_columns(df, table)
    privacy = privacy or PrivacyConfig()
    src_cols = list(df.columns)
    pseudo = key is not None and privacy.pseudonymize
    keyed_table = S.CUSTOMER_ID in src_cols
    # The source columns that travel through the one shuffle; the customer id goes trimmed, as the
    # shuffle key. Its pseudonym is computed after the shuffle, once per customer (``keys``).
    src_kept = [c for c in src_cols if not (pseudo and c == S.CUSTOMER_ID)]
    pid = F.col(S.SOURCE_KEY) if keyed_table else F.lit(None).cast("string")
    whole = history.whole if history is not None else None
    plan = table_plan(df, table, cfg, processing_ts, currency_rates, pid, whole)
    rows_in, counted = _count_input(df, plan)
    stage = _parsed_stage(df, plan, src_kept, keyed_table, counted)
    skip = {ERASED_RULE} if erased is None else set()  # without an erasures list, no erased rows
    rules = [r for r in TABLE_RULES[table] if severity(r, cfg) != "off" and r not in skip]
    stage = with_row_keys(stage, table, plan, rules, src_kept, key if pseudo else None)
    if erased is not None and ERASED_RULE in rules:
        stage = _with_erasures(stage, erased, plan, DATED_BY[table])
    if history is not None and LINE_HASH in stage.columns:
        seen = history.lines.select(
            S.CUSTOMER_ID, S.ORDER_ID, F.col(HISTORY_HASH).alias(LINE_HASH), F.lit(True).alias(SEEN)
        ).distinct()
        stage = stage.join(seen, on=[S.CUSTOMER_ID, S.ORDER_ID, LINE_HASH], how="left")
    stage = stage.withColumn(RULE, _first_broken_rule(stage, plan, rules))
    flagged = _flagged(stage, plan, raw_fields(src_cols, privacy, pseudo), pseudo)
    # the pseudonymous key (as in the clean rows), so erasure reaches quarantined rows too; the
    # source id only where pseudonymization is off, and nothing when it is on but no key is given
    with_id = keyed_table and (pseudo or not privacy.pseudonymize)
    result = _result(flagged, table, cfg, plan, rows_in, pseudo=pseudo, with_id=with_id)
    log.info(
        "%s: %d rows in, %d clean, %d quarantined %s",
        table,
        rows_in,
        result.rows_clean,
        result.rows_quarantined,
        result.by_rule,
    )
    return result


def validate_inputs(
    frames: Mapping[str, DataFrame],
    mappings: Mapping[str, Mapping[str, str]],
    cfg: QualityConfig,
    processing_ts: dt.datetime,
    held: list[Callable[[], None]],
    *,
    key: bytes | None = None,
    privacy: PrivacyConfig | None = None,
    history: Mapping[str, History] | None = None,
    erased: DataFrame | None = None,
) -> list[IngestResult]:
    """``conform`` and ``validate`` every input (``mappings``: its canonical -> source columns), all
    at once; the results in the order of ``frames``.

    Each input's validation is a handful of Spark jobs and the planning and code generation between
    them, one after the other, and the inputs do not depend on each other: their validations run side
    by side, each from a thread of its own (Spark schedules the jobs of several threads of one
    session, a Connect session's too). Measured on 2 cores, the 2,000-customer demo's four inputs: the
    ingest stage took 25.7 and 24.8 s against 27.0 and 29.1 s one by one; the 20,000-customer demo's,
    36.4 s against 35.9 s (in a fresh JVM it is mostly the JIT's and code generation's CPU, which two
    cores share either way: the gain is on small inputs, where jobs wait on each other's latency).
    A large input was not measured side by side: its tasks queue for the same cores as one by one,
    and what each input caches is held until the stage ends either way.

    ``history``: by input, what a batch of its new rows is validated against (``validate``).
    ``erased``: the ``erasures`` table, for every input keyed by customer (``validate``).

    ``held``: every validated input's ``release`` is appended, in input order, before the first
    input's error (in input order, as when they ran one by one) is raised.
    """

    def one(name: str, raw: DataFrame) -> IngestResult:
        past = (history or {}).get(name)
        return validate(
            conform(raw, name, mappings[name]),
            name,
            cfg,
            processing_ts,
            key=key,
            privacy=privacy,
            history=past,
            erased=erased,
        )

    with ThreadPoolExecutor(max_workers=max(1, len(frames)), thread_name_prefix="validate") as pool:
        futures = [pool.submit(one, name, raw) for name, raw in frames.items()]
        results: list[IngestResult] = []
        error: Exception | None = None
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # the first in input order is raised once every input is done
                error = error or exc
    held.extend(r.release for r in results)
    if error is not None:
        raise error
    return results


def _check_columns(df: DataFrame, table: str) -> None:
    """``InputError`` for an unknown table or a missing required column."""
    if table not in TABLE_RULES:
        raise InputError(f"unknown input table '{table}'; expected one of {', '.join(TABLE_RULES)}")
    required, _ = S.INPUT_COLUMNS[table]
    for name in required:
        if name not in df.columns:
            raise InputError(f"{table}: required column '{name}' is missing; columns are {df.columns}")


def _with_erasures(stage: DataFrame, erased: DataFrame, plan: Plan, dated_by: str) -> DataFrame:
    """``stage`` with the time its customer was last erased (null: never), matched by the SHA-256 of
    the key the tables hold (``erasures.erased_tag``), and the plan's ``erased_customer`` condition
    on it: erased, and the row not dated after the erasure. A broadcast join: the list is small
    next to the input, and the rows keep their partitioning and order by customer."""
    tags = erased.groupBy(F.col(S.ERASED_TAG).alias(_ERASED_TAG)).agg(F.max(S.ERASED_AT).alias(_ERASED_AT))
    tag = F.sha2(F.col(S.CUSTOMER_ID).cast("string"), 256)
    at = F.col(_ERASED_AT)
    plan.rules[ERASED_RULE] = lambda d: at.isNotNull() & ~F.coalesce(F.col(dated_by) > at, F.lit(False))
    return stage.join(F.broadcast(tags), tag == F.col(_ERASED_TAG), "left").drop(_ERASED_TAG)


def _count_input(df: DataFrame, plan: Plan) -> tuple[int, dict[str, int]]:
    """The input's rows and the plan's counts (the outlier rule: the finite amounts)."""
    # One scan counts the input rows and whatever the plan needs counted, instead of one scan each.
    plan_counts = [c.alias(k) for k, c in plan.counts.items()]
    totals = df.agg(F.count(F.lit(1)).alias("_rows_in"), *plan_counts).first()
    assert totals is not None  # a global aggregate always returns one row
    return int(totals["_rows_in"]), {k: int(totals[k]) for k in plan.counts}


def _parsed_stage(
    df: DataFrame, plan: Plan, src_kept: list[str], keyed_table: bool, counted: dict[str, int]
) -> DataFrame:
    """The plan's parsed columns next to the untouched source columns, after the one shuffle by
    customer, with the plan's helper columns (``extra``)."""
    base = df
    if keyed_table:
        base = df.select(
            *[F.col(c) for c in src_kept], blank_to_null(F.col(S.CUSTOMER_ID)).alias(S.SOURCE_KEY)
        )
    # One shuffle, by customer: the row keys' window and the silver orders reuse it.
    if plan.keyed:
        base = base.repartition(F.col(S.SOURCE_KEY))
    # Parsed columns next to the untouched source columns (renamed so names never clash).
    stage = base.select(
        *[F.col(c).alias(f"_src_{c}") for c in src_kept],
        *[expr.alias(name) for name, expr in plan.parsed.items()],
    )
    if plan.extra is not None:
        stage = plan.extra(stage, counted)
    return stage


def _first_broken_rule(stage: DataFrame, plan: Plan, rules: list[str]) -> Column:
    """The id of the first of ``rules`` (in precedence order) the row breaks; null for a clean row."""
    if not rules:
        return F.lit(None).cast("string")
    conds = [(r, is_true(plan.rules[r](stage))) for r in rules]
    chain = F.when(conds[0][1], F.lit(conds[0][0]))
    for r, cond in conds[1:]:
        chain = chain.when(cond, F.lit(r))
    return chain


def _flagged(stage: DataFrame, plan: Plan, raw: list[Column], pseudo: bool) -> DataFrame:
    """The output columns, the source key, the rule and (flagged rows only) the raw JSON: the counts,
    the clean rows and the quarantine all read it (persisted as it is, or for the transactions as
    one row per order: ``ingest.orders``)."""
    out_cols = [
        (
            mark_pseudonymized(F.col(name), name)
            if (name == S.CUSTOMER_ID and pseudo)
            else F.col(name).cast(kind).alias(name)
        )
        for name, kind in plan.output
    ]
    keep_key = (
        [F.col(S.SOURCE_KEY) if pseudo else F.col(S.CUSTOMER_ID).alias(S.SOURCE_KEY)] if plan.keyed else []
    )
    return stage.select(
        *out_cols,
        *keep_key,
        *([F.col(LINE_HASH)] if LINE_HASH in stage.columns else []),
        F.col(RULE),
        kept(F.to_json(F.struct(*raw), {"ignoreNullFields": "false"})).alias(RAW),
    )


def _result(
    flagged: DataFrame,
    table: str,
    cfg: QualityConfig,
    plan: Plan,
    rows_in: int,
    *,
    pseudo: bool,
    with_id: bool,
) -> IngestResult:
    """Counts by rule (one aggregation of the flagged frame), the clean rows and the quarantine rows."""
    clean_cols = [F.col(name) for name, _ in plan.output]
    by_order = plan.keyed and table == "transactions"
    last_line_ts = None
    if by_order:
        # one row per order persisted (the lines never are): counts, orders and quarantine read it
        clean_cols.append(F.col(S.SOURCE_KEY))  # for silver.orders over these lines (tests) only
        persisted = grouped_orders(flagged)
        counts, last_line_ts = rule_counts(persisted)
        quarantined = quarantined_lines(persisted)
    else:
        persisted = flagged.persist(StorageLevel.MEMORY_AND_DISK_DESER)  # serialized costs ~2x here
        counts = {
            row[RULE]: int(row["n"])
            for row in persisted.groupBy(RULE).agg(F.count(F.lit(1)).alias("n")).collect()
        }
        quarantined = persisted
    rows_clean = counts.pop(None, 0)
    for frame in plan.held:  # in the cached frame now
        frame.unpersist()
    by_rule = {r: counts[r] for r in TABLE_RULES[table] if counts.get(r)}
    return IngestResult(
        table=table,
        # the transactions' clean lines are not persisted: reading them recomputes the validation
        clean=(flagged if by_order else persisted).where(F.col(RULE).isNull()).select(*clean_cols),
        quarantine=quarantine_rows(quarantined, table, cfg, with_id),
        rows_in=rows_in,
        rows_clean=rows_clean,
        rows_quarantined=sum(by_rule.values()),
        by_rule=by_rule,
        severities={r: severity(r, cfg) for r in by_rule},
        pseudonymized=pseudo,
        flagged=persisted,
        orders=clean_orders(persisted) if by_order else None,
        last_clean_ts=last_line_ts,
        outlier_bound=plan.found.get("outlier_bound"),
    )
