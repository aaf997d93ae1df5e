"""LTV:CAC by acquisition channel (and month) and by segment, computed by ``segspark/sql/ltv_cac.sql``
from the customer level of ``segspark/sql/ltv_cac_customers.sql``.

Unknown spend stays unknown: a channel or month without a spend row gets a null CAC and
``cac_status = 'unknown_spend'``, never a CAC of zero. The SQL file holds every definition.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, DoubleType, StringType, StructField, StructType

from segspark import schema as S
from segspark import silver
from segspark.cohorts import acquisition_view, order_view
from segspark.errors import ConfigError, InputError
from segspark.kpis import ALL, CLV, SEGMENT, SEGMENT_TYPE, SEGMENT_TYPES
from segspark.schema import (  # the columns' one spelling
    CAC,
    CAC_COVERAGE,
    CAC_STATUS,
    LEVEL,
    LTV_CUSTOMERS,
    LTV_PREDICTED,
    LTV_PREDICTED_TO_CAC,
    LTV_REALIZED,
    LTV_TO_CAC,
    NEW_CUSTOMERS,
    WINDOW_MONTHS,
)
from segspark.sql import run_sql

LTV_CAC_COLUMNS: dict[str, str] = {
    LEVEL: "string",
    SEGMENT_TYPE: "string",
    SEGMENT: "string",
    S.MONTH: "date",
    NEW_CUSTOMERS: "bigint",
    S.SPEND: "double",
    CAC: "double",
    CAC_STATUS: "string",
    CAC_COVERAGE: "double",
    LTV_CUSTOMERS: "bigint",
    LTV_REALIZED: "double",
    LTV_PREDICTED: "double",
    LTV_TO_CAC: "double",
    LTV_PREDICTED_TO_CAC: "double",
    WINDOW_MONTHS: "int",
}

_SPEND_SCHEMA = StructType(
    [
        StructField(S.MONTH, DateType()),
        StructField(S.CHANNEL, StringType()),
        StructField(S.SPEND, DoubleType()),
    ]
)
_MEMBER_SCHEMA = StructType(
    [
        StructField(SEGMENT_TYPE, StringType()),
        StructField(SEGMENT, StringType()),
        StructField(S.CUSTOMER_ID, StringType()),
        StructField(CLV, DoubleType()),
    ]
)


def _spend_view(orders: DataFrame, marketing_spend: DataFrame | None) -> DataFrame:
    if marketing_spend is None:
        return orders.sparkSession.createDataFrame([], _SPEND_SCHEMA)
    missing = [c for c in S.SPEND_REQUIRED if c not in marketing_spend.columns]
    if missing:
        raise InputError(f"marketing_spend: missing column(s) {', '.join(missing)}")
    return marketing_spend.select(
        F.to_date(F.col(S.MONTH)).alias(S.MONTH),
        F.col(S.CHANNEL).cast("string").alias(S.CHANNEL),
        F.col(S.SPEND).cast("double").alias(S.SPEND),
    )


def _member_view(orders: DataFrame, segments: DataFrame | None) -> DataFrame:
    """segment_type, segment, customer_id, clv: one row per customer and segment type, plus 'all'."""
    if segments is None:
        return orders.sparkSession.createDataFrame([], _MEMBER_SCHEMA)
    types = [t for t in SEGMENT_TYPES if t in segments.columns]
    clv = (F.col(CLV) if CLV in segments.columns else F.lit(None)).cast("double").alias(CLV)
    labels = [F.col(t).cast("string").alias(f"seg__{t}") for t in types]
    wide = segments.select(S.CUSTOMER_ID, clv, *labels, F.lit(ALL).alias(f"seg__{ALL}"))
    long = wide.unpivot([S.CUSTOMER_ID, CLV], [f"seg__{t}" for t in [*types, ALL]], SEGMENT_TYPE, SEGMENT)
    return long.where(F.col(SEGMENT).isNotNull()).select(
        F.regexp_replace(F.col(SEGMENT_TYPE), "^seg__", "").alias(SEGMENT_TYPE), SEGMENT, S.CUSTOMER_ID, CLV
    )


def ltv_cac(
    orders: DataFrame,
    customers: DataFrame | None,
    marketing_spend: DataFrame | None,
    segments: DataFrame | None,
    as_of_date: dt.date,
    window_months: int,
    state: DataFrame | None = None,
    keep: Callable[[DataFrame], DataFrame] | None = None,
) -> DataFrame:
    """LTV:CAC table (columns :data:`LTV_CAC_COLUMNS`); see ``ltv_cac.sql`` for the definitions.

    Rows: ``level = channel_month`` (acquisition channel x month), ``channel`` (all months) and, when
    ``segments`` (one row per customer_id, with segment columns and optionally ``clv``) is given,
    ``segment`` for each segment type present and ``segment_type = 'all'``. ``state``: the silver
    ``customer_state`` of ``as_of_date`` (the first purchases; computed from ``orders`` when None).
    ``keep``: computes the customer level (one row per buyer) once for the table's aggregates, which
    read it several times (the pipeline's :func:`segspark.context.materialize` with ``for_query``,
    released with the run's other caches); None: each aggregate computes it from the orders again.
    """
    if window_months < 1:
        raise ConfigError(f"kpis.ltv_window_months must be >= 1, got {window_months}")
    params = {"as_of_date": as_of_date, "window_months": int(window_months)}
    members = _member_view(orders, segments)
    base = run_sql(
        orders.sparkSession,
        "ltv_cac_customers",
        {
            "orders": order_view(orders),
            "customer_state": (
                state if state is not None else silver.customer_state(orders, as_of_date, ())
            ).select(S.CUSTOMER_ID, S.FIRST_PURCHASE_TS, S.FIRST_PURCHASE_CHANNEL),
            "acquisition": acquisition_view(orders, customers),
            "segment_members": members,
        },
        params,
    )
    out = run_sql(
        orders.sparkSession,
        "ltv_cac",
        {
            "customer_base": keep(base) if keep is not None else base,
            "marketing_spend": _spend_view(orders, marketing_spend),
            "segment_members": members,
        },
        params,
    )
    return out.select(*[F.col(c).cast(t).alias(c) for c, t in LTV_CAC_COLUMNS.items()])
