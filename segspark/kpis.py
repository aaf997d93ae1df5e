"""KPIs by segment, computed by ``segspark/sql/segment_kpis.sql`` (the one implementation).

This module only stacks the customer table into one row per customer and segment type; the SQL
file defines every KPI.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.behaviour import (
    ACTIVE_DAYS_30D,
    PURCHASES_90D,
    SESSIONS_30D,
    SESSIONS_90D,
    with_engagement,
)
from segspark.errors import InputError
from segspark.lifecycle import FREQUENCY, LIFECYCLE_STAGE, RFM_SEGMENT
from segspark.schema import (  # the columns' one spelling
    CHURN_RISK,
    CLV,
    KPI,
    PERSONA,
    SEGMENT,
    SEGMENT_TYPE,
    VALUE,
    VALUE_TIER,
)
from segspark.sql import run_sql

MONETARY = "monetary"

ALL = "all"
UNASSIGNED = "unassigned"  # a customer without a segment of that type (e.g. a prospect has no RFM)

# Segment types reported when the column is present, in this order, plus 'all' (every customer).
SEGMENT_TYPES: tuple[str, ...] = (RFM_SEGMENT, LIFECYCLE_STAGE, PERSONA, VALUE_TIER)
_ENGAGEMENT = (SESSIONS_30D, ACTIVE_DAYS_30D, SESSIONS_90D, PURCHASES_90D)


def segment_members(segments: DataFrame, segment_types: list[str]) -> DataFrame:
    """One row per customer and segment type (and 'all'), with the measures the KPI SQL reads."""

    def optional(name: str, type_: str) -> Column:
        return (F.col(name) if name in segments.columns else F.lit(None)).cast(type_).alias(name)

    names = [S.CUSTOMER_ID, MONETARY, FREQUENCY, LIFECYCLE_STAGE, CLV, CHURN_RISK, *_ENGAGEMENT]
    measures = [
        F.col(S.CUSTOMER_ID),
        F.col(MONETARY).cast("double").alias(MONETARY),
        F.col(FREQUENCY).cast("long").alias(FREQUENCY),
        optional(LIFECYCLE_STAGE, "string"),
        optional(CLV, "double"),
        optional(CHURN_RISK, "double"),
        *[optional(c, "long") for c in _ENGAGEMENT],
    ]
    # lifecycle_stage is both a measure and a segment type, so the segment copies get a prefix
    stacked = [*segment_types, ALL]
    labels = [
        F.coalesce(F.col(t).cast("string"), F.lit(UNASSIGNED)).alias(f"seg__{t}") for t in segment_types
    ]
    wide = segments.select(*measures, *labels, F.lit(ALL).alias(f"seg__{ALL}"))
    long = wide.unpivot(tuple(names), tuple(f"seg__{t}" for t in stacked), SEGMENT_TYPE, SEGMENT)
    return long.select(
        F.regexp_replace(F.col(SEGMENT_TYPE), "^seg__", "").alias(SEGMENT_TYPE),
        SEGMENT,
        *names,
    )


def segment_kpis(segments: DataFrame, events_features: DataFrame | None = None) -> DataFrame:
    """KPIs per segment in long format: segment_type, segment, kpi, value (double).

    ``segments`` is the customer-level table (one row per customer_id) with monetary and frequency
    and any of rfm_segment, lifecycle_stage, persona, value_tier, clv, churn_risk.
    ``events_features`` is :func:`segspark.behaviour.engagement_features`; when given, engagement and
    conversion KPIs are added (customers without events count as zero sessions). KPIs whose inputs are
    absent are left out rather than reported as null.
    """
    missing = [c for c in (S.CUSTOMER_ID, MONETARY, FREQUENCY) if c not in segments.columns]
    if missing:
        raise InputError(f"customer segments: missing column(s) {', '.join(missing)} needed for segment KPIs")
    types = [t for t in SEGMENT_TYPES if t in segments.columns]
    base = segments if events_features is None else with_engagement(segments, events_features)
    members = segment_members(base, types)
    params = {
        "has_lifecycle": LIFECYCLE_STAGE in segments.columns,
        "has_clv": CLV in segments.columns,
        "has_churn": CHURN_RISK in segments.columns,
        "has_events": events_features is not None,
    }
    out = run_sql(segments.sparkSession, "segment_kpis", {"segment_members": members}, params)
    return out.select(SEGMENT_TYPE, SEGMENT, KPI, F.col(VALUE).cast("double").alias(VALUE))
