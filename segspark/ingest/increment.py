"""An incremental refresh's transactions: a batch of new lines validated against what earlier runs
ingested, as a full refresh of the whole input would judge them (``segspark.refresh``).

``validate`` takes the batch with a ``History``: the outlier bound is the whole input's, and a line
that copies a clean line of an earlier order (its hash in ``orders.line_hashes``) is a copy. What a
batch cannot be judged alone on is found here, after it is validated (``why_full``): then the run
validates the whole history instead. The batch's counts and quarantine rows are added to those of
the run that validated the history (``combined``).
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.config import QualityConfig
from segspark.ingest.columns import blank_to_null
from segspark.ingest.orders import QUARANTINED
from segspark.ingest.quarantine import RULE
from segspark.ingest.result import IngestResult
from segspark.ingest.validation import HISTORY_HASH, History


def history(whole: DataFrame, batch: DataFrame, earlier_orders: DataFrame) -> History:
    """What ``validate`` judges the conformed ``batch`` against: the conformed ``whole`` input, and
    the clean line hashes of the earlier orders whose order id the batch carries (only those can
    hold a line the batch copies)."""
    ids = batch.select(blank_to_null(F.col(S.ORDER_ID)).alias(S.ORDER_ID)).where(
        F.col(S.ORDER_ID).isNotNull()
    )
    lines = earlier_orders.join(ids.distinct(), on=S.ORDER_ID, how="left_semi").select(
        S.CUSTOMER_ID, S.ORDER_ID, F.explode(F.col(S.LINE_HASHES)).alias(HISTORY_HASH)
    )
    return History(whole, lines, batch, earlier_orders)


def _raw_order_id(raw: Column) -> Column:
    return blank_to_null(F.get_json_object(raw, f"$.{S.ORDER_ID}"))


def why_full(
    batch: IngestResult,
    earlier_orders: DataFrame,
    earlier_quarantine: DataFrame,
    amounts: tuple[DataFrame, DataFrame],
    cfg: QualityConfig,
    bound_before: float | None,
) -> str | None:
    """Why the validated ``batch`` does not give what a full refresh gives (None: it does), each
    found by one small job:

    - a batch order id that an earlier line carries with another customer: the order-id conflict
      rule then quarantines the earlier lines too;
    - a batch line quarantined as an outlier in an order where an earlier line was too: one may be a
      copy of the other (a copy of an outlier is a ``duplicate_line``, the first one the outlier);
    - the outlier bound moved past an earlier line (``amounts``: the whole input's and the batch's
      line amounts, ``plans.transaction_amounts``): that line's verdict changes.

    ``earlier_quarantine``: the transactions' quarantine rows the run stands on.
    """
    grouped = batch.flagged
    assert grouped is not None and QUARANTINED in grouped.columns
    customer = F.coalesce(F.col(S.CUSTOMER_ID), F.col(QUARANTINED)[0][S.CUSTOMER_ID])
    pairs = grouped.select(F.col(S.ORDER_ID), customer.alias("_c")).where(
        F.col(S.ORDER_ID).isNotNull() & F.col("_c").isNotNull()
    )
    quarantined = earlier_quarantine.select(
        _raw_order_id(F.col(S.Q_RAW)).alias(S.ORDER_ID), F.col(S.CUSTOMER_ID), F.col(S.Q_RULE)
    ).where(F.col(S.ORDER_ID).isNotNull() & F.col(S.CUSTOMER_ID).isNotNull())
    earlier = earlier_orders.select(S.ORDER_ID, S.CUSTOMER_ID).unionByName(quarantined.drop(S.Q_RULE))
    clash = pairs.join(earlier, on=S.ORDER_ID).where(F.col("_c") != F.col(S.CUSTOMER_ID)).first()
    if clash is not None:
        return "a new line carries an order id an earlier line carries with another customer"
    if batch.by_rule.get("amount_outlier"):
        new_outliers = (
            grouped.select(F.col(S.ORDER_ID), F.inline(F.col(QUARANTINED)))
            .where(F.col(RULE) == "amount_outlier")
            .select(S.ORDER_ID, S.CUSTOMER_ID)
        )
        old_outliers = quarantined.where(F.col(S.Q_RULE) == "amount_outlier").drop(S.Q_RULE)
        if new_outliers.join(old_outliers, on=[S.ORDER_ID, S.CUSTOMER_ID], how="left_semi").first():
            return "a new outlier line is in an order with an earlier outlier line (it may copy it)"
    bound = batch.outlier_bound
    if bound != bound_before:
        if bound is None or bound_before is None:
            return "the outlier rule's bound appeared or vanished"
        lo, hi = sorted((bound, bound_before))
        whole, new = (a.where((F.col("_a") > lo) & (F.col("_a") <= hi)).count() for a in amounts)
        if whole > new:
            moved = f"from {bound_before:.6g} to {bound:.6g}"
            return f"the outlier bound moved {moved} past {whole - new} earlier line(s)"
    return None


def combined(carried: IngestResult, batch: IngestResult) -> IngestResult:
    """The whole input's transactions after the batch: the earlier run's counts and quarantine rows
    (``carried``) plus the batch's; its orders are the batch's (merged into ``orders`` by silver)."""
    by_rule = dict(carried.by_rule)
    for rule, n in batch.by_rule.items():
        by_rule[rule] = by_rule.get(rule, 0) + n
    lasts = [t for t in (carried.last_clean_ts, batch.last_clean_ts) if t is not None]
    last: dt.datetime | None = max(lasts) if lasts else None
    return IngestResult(
        table="transactions",
        clean=None,
        quarantine=carried.quarantine.unionByName(batch.quarantine),
        rows_in=carried.rows_in + batch.rows_in,
        rows_clean=carried.rows_clean + batch.rows_clean,
        rows_quarantined=carried.rows_quarantined + batch.rows_quarantined,
        by_rule=by_rule,
        severities={**carried.severities, **batch.severities},
        pseudonymized=batch.pseudonymized,
        flagged=batch.flagged,
        orders=batch.orders,
        last_clean_ts=last,
        outlier_bound=batch.outlier_bound,
    )
