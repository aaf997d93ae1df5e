"""Declared schemas of the output tables: one StructType per table, checked at every write.

``run_id`` and ``as_of_date`` are added by the writer and are not part of these declarations.
A table missing from ``SCHEMAS`` is written unchecked only if it is listed in ``UNCHECKED``.
"""

from __future__ import annotations

from typing import Final

from pyspark.sql import types as T

from segspark import schema as S


def _f(name: str, type_: T.DataType) -> T.StructField:
    return T.StructField(name, type_, True)


STR, DBL, LONG, BOOL, DATE, TS = (
    T.StringType(),
    T.DoubleType(),
    T.LongType(),
    T.BooleanType(),
    T.DateType(),
    T.TimestampType(),
)

# --- silver ------------------------------------------------------------------------------------
ORDERS_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.ORDER_ID, STR),
        _f(S.ORDER_TS, TS),  # the order's first line
        _f(S.ORDER_DATE, DATE),  # UTC date of order_ts
        _f(S.NET_AMOUNT, DBL),  # sum of the lines (returns are negative lines)
        _f(S.GROSS_AMOUNT, DBL),  # sum of the positive lines
        _f(S.RETURNED_AMOUNT, DBL),  # minus the sum of the negative lines (>= 0)
        _f(S.LINES, LONG),
        _f(S.QUANTITY, LONG),  # units on positive lines; null when no line has a quantity
        _f(S.CHANNEL, STR),  # smallest non-null line channel
        _f(S.CATEGORIES, T.ArrayType(STR, True)),  # distinct categories of positive lines
        _f(S.IS_PURCHASE, BOOL),  # net_amount > purchase.min_net_amount (the one purchase definition)
    ]
)
CUSTOMER_DAYS_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.ORDER_DATE, DATE),
        _f(S.ORDERS_COUNT, LONG),  # orders that day
        _f(S.PURCHASES, LONG),  # purchase orders that day (a purchase day has purchases > 0)
        _f(S.NET_AMOUNT, DBL),  # net of every order that day
        _f(S.PURCHASE_VALUE, DBL),  # net of the purchase orders that day (0 without purchase)
    ]
)

# --- model results (small, long format: BI pivots freely) --------------------------------------
CLV_FIT_SCHEMA: Final = T.StructType(
    [
        _f("model", STR),  # the model the row describes (chosen model, a candidate, or the spend model)
        _f("chosen", BOOL),
        _f("section", STR),  # fit | params | se | spend_params | spend_se | validation | candidate
        _f("name", STR),
        _f("value", DBL),
        _f("text", STR),  # non-numeric values (reasons, dates, messages)
    ]
)
CHURN_METRICS_SCHEMA: Final = T.StructType(
    [
        _f("section", STR),  # metric | importance | roc | lift | calibration | status
        _f("name", STR),
        _f("x", DBL),  # curve abscissa (null for scalar metrics)
        _f("value", DBL),
        _f("text", STR),
    ]
)
CLUSTERING_SWEEP_SCHEMA: Final = T.StructType(
    [
        _f("phase", STR),  # sweep (a candidate on the sweep sample) | final (the chosen model as fitted)
        _f("algorithm", STR),
        _f("k", LONG),
        _f("clusters", LONG),  # clusters found (density: excluding noise)
        _f("wcss", DBL),
        _f("silhouette", DBL),
        _f("calinski_harabasz", DBL),
        _f("davies_bouldin", DBL),
        _f("min_cluster_share", DBL),
        _f("stability", DBL),  # adjusted Rand index between half-sample fits (null: not measured)
        _f("fit_seconds", DBL),
        _f("engine", STR),  # local | spark | density | mllib (final)
        _f("knee", LONG),  # the k at the knee of this algorithm's WCSS curve
        _f("chosen", BOOL),
        _f("reason", STR),  # why this candidate was chosen (chosen rows only)
        _f("features", STR),  # the features clustered, comma-separated
        _f("customers", LONG),  # customers clustered
    ]
)

CUSTOMER_SCORES_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f("p_alive", DBL),
        _f("expected_purchases", DBL),
        _f("expected_avg_value", DBL),
        _f("clv", DBL),
        _f("value_tier", STR),
        _f("churn_risk", DBL),
        _f("churn_band", STR),
    ]
)

SCHEMAS: dict[str, T.StructType] = {
    S.ORDERS: ORDERS_SCHEMA,
    S.CUSTOMER_DAYS: CUSTOMER_DAYS_SCHEMA,
    S.CLV_FIT: CLV_FIT_SCHEMA,
    S.CHURN_METRICS: CHURN_METRICS_SCHEMA,
    S.CLUSTERING_SWEEP: CLUSTERING_SWEEP_SCHEMA,
}
