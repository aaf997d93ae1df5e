"""Rule-based lifecycle stages and the segment transitions between two runs.

Stages, tried in this order (the first rule that matches wins, so every customer gets exactly one):

1. ``prospect``: known to the CRM (signed up on or before ``as_of_date``, or signup unknown) but no
   purchase, i.e. no order with a positive net amount on or before ``as_of_date``;
2. ``new``: first order less than ``new_days`` days before ``as_of_date`` (0 .. new_days - 1);
3. ``churned``: ``recency_days > churned_days``;
4. ``at_risk``: ``recency_days > at_risk_days``, or ``recency_days`` beyond the customer's own
   habit: ``> max(at_risk_gap_factor * mean_interpurchase_days, at_risk_min_days)``;
5. ``reactivated``: the latest purchase ended a lapse, ``last_interpurchase_days > reactivation_gap_days``;
6. ``active``: everyone else who has bought.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.behaviour import LAST_INTERPURCHASE_DAYS, MEAN_INTERPURCHASE_DAYS
from segspark.config import LifecycleConfig
from segspark.errors import InputError
from segspark.schema import (  # the columns' one spelling
    CUSTOMERS,
    DIMENSION,
    FROM_SEGMENT,
    LIFECYCLE_STAGE,
    TO_SEGMENT,
)

RFM_SEGMENT = "rfm_segment"
RECENCY_DAYS = "recency_days"
FREQUENCY = "frequency"
FIRST_ORDER_TS = "first_order_ts"

PROSPECT = "prospect"
NEW = "new"
ACTIVE = "active"
AT_RISK = "at_risk"
CHURNED = "churned"
REACTIVATED = "reactivated"
LIFECYCLE_STAGES: tuple[str, ...] = (PROSPECT, NEW, ACTIVE, AT_RISK, CHURNED, REACTIVATED)
RETAINED_STAGES: tuple[str, ...] = (NEW, ACTIVE, REACTIVATED)

TRANSITION_DIMENSIONS: tuple[str, ...] = (RFM_SEGMENT, LIFECYCLE_STAGE)

_REQUIRED = (
    S.CUSTOMER_ID,
    FREQUENCY,
    RECENCY_DAYS,
    FIRST_ORDER_TS,
    MEAN_INTERPURCHASE_DAYS,
    LAST_INTERPURCHASE_DAYS,
)


def lifecycle_stage(
    frequency: Column,
    recency_days: Column,
    days_since_first_order: Column,
    mean_gap_days: Column,
    last_gap_days: Column,
    cfg: LifecycleConfig,
) -> Column:
    """The stage of one customer from its purchase history (see the module docstring)."""
    personal = F.greatest(F.lit(cfg.at_risk_gap_factor) * mean_gap_days, F.lit(float(cfg.at_risk_min_days)))
    at_risk = (recency_days > F.lit(cfg.at_risk_days)) | (
        mean_gap_days.isNotNull() & (recency_days > personal)
    )
    return (
        F.when(F.coalesce(frequency, F.lit(0)) <= 0, F.lit(PROSPECT))
        .when(days_since_first_order < F.lit(cfg.new_days), F.lit(NEW))
        .when(recency_days > F.lit(cfg.churned_days), F.lit(CHURNED))
        .when(at_risk, F.lit(AT_RISK))
        .when(last_gap_days > F.lit(cfg.reactivation_gap_days), F.lit(REACTIVATED))
        .otherwise(F.lit(ACTIVE))
    )


def with_lifecycle_stage(
    features: DataFrame,
    customers: DataFrame | None,
    as_of_date: dt.date,
    cfg: LifecycleConfig,
) -> DataFrame:
    """Add ``lifecycle_stage``; CRM customers without a feature row are added as prospects.

    ``features`` needs customer_id, frequency, recency_days, first_order_ts and the behaviour columns
    mean_interpurchase_days and last_interpurchase_days (join :func:`segspark.behaviour.behaviour_features`
    first). Customers who signed up after ``as_of_date`` are not yet known and are left out; added
    prospects carry nulls in every feature column. Both tables are keyed by customer_id.
    """
    missing = [c for c in _REQUIRED if c not in features.columns]
    if missing:
        raise InputError(
            f"customer features: missing column(s) {', '.join(missing)} needed for lifecycle stages"
            " (join the behaviour features first)"
        )
    table = features
    if customers is not None:
        if S.CUSTOMER_ID not in customers.columns:
            raise InputError("customers: missing column customer_id")
        known = customers.where(F.col(S.CUSTOMER_ID).isNotNull())
        if S.SIGNUP_TS in customers.columns:
            signup = F.to_date(F.col(S.SIGNUP_TS))
            known = known.where(signup.isNull() | (signup <= F.lit(as_of_date)))
        # full outer: CRM-only customers become prospects, buyers missing from the CRM stay
        table = features.join(known.select(S.CUSTOMER_ID), on=S.CUSTOMER_ID, how="full")
    stage = lifecycle_stage(
        F.col(FREQUENCY),
        F.col(RECENCY_DAYS),
        F.datediff(F.lit(as_of_date), F.to_date(F.col(FIRST_ORDER_TS))),
        F.col(MEAN_INTERPURCHASE_DAYS),
        F.col(LAST_INTERPURCHASE_DAYS),
        cfg,
    )
    kept = [c for c in features.columns if c != LIFECYCLE_STAGE]
    return table.select(*kept, stage.alias(LIFECYCLE_STAGE))


def _long(segments: DataFrame, dims: list[str], value: str) -> DataFrame:
    """customer_id, dimension, <value>: one row per customer and dimension with a segment."""
    rows = segments.select(S.CUSTOMER_ID, *[F.col(d).cast("string").alias(d) for d in dims])
    return rows.unpivot(S.CUSTOMER_ID, tuple(dims), DIMENSION, value).where(F.col(value).isNotNull())


def segment_transitions(current: DataFrame, previous: DataFrame | None) -> DataFrame:
    """Customers moving between RFM segments and between lifecycle stages since the previous run.

    Output: dimension (rfm_segment | lifecycle_stage), from_segment, to_segment, customers. A null
    from_segment means the customer had no segment of that dimension in the previous run (always
    so on the first run, when ``previous`` is None: the rows are the current distribution); a null
    to_segment means the customer had one then but has none now (e.g. erased). Dimensions are those
    of rfm_segment/lifecycle_stage present in ``current``; both tables are keyed by customer_id.
    """
    dims = [d for d in TRANSITION_DIMENSIONS if d in current.columns]
    if not dims:
        raise InputError("customer segments: neither rfm_segment nor lifecycle_stage is present")
    now = _long(current, dims, TO_SEGMENT)
    if previous is None:
        moves = now.select(DIMENSION, F.lit(None).cast("string").alias(FROM_SEGMENT), TO_SEGMENT)
    else:
        old_dims = [d for d in dims if d in previous.columns]
        then = _long(previous, old_dims, FROM_SEGMENT) if old_dims else None
        moves = (
            now.join(then, on=[S.CUSTOMER_ID, DIMENSION], how="full")
            if then is not None
            else now.withColumn(FROM_SEGMENT, F.lit(None).cast("string"))
        )
    counts = moves.groupBy(DIMENSION, FROM_SEGMENT, TO_SEGMENT).agg(F.count(F.lit(1)).alias(CUSTOMERS))
    return counts.select(DIMENSION, FROM_SEGMENT, TO_SEGMENT, F.col(CUSTOMERS).cast("long").alias(CUSTOMERS))
