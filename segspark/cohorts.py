"""Acquisition-month cohort retention, computed by ``segspark/sql/cohort_retention.sql`` from the
silver customer-level tables (``customer_state``, ``customer_months``).

The SQL file is the one implementation (analysts run it as it stands); this module only shapes the
inputs it reads and pivots a small slice of its output into the matrix the report draws.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from segspark import schema as S
from segspark import silver
from segspark.errors import InputError
from segspark.schema import (  # the columns' one spelling
    ACTIVE_CUSTOMERS,
    COHORT_MONTH,
    COHORT_SIZE,
    CUMULATIVE_REVENUE_PER_CUSTOMER,
    DIMENSION,
    DIMENSION_VALUE,
    MONTHS_SINCE_FIRST,
    RETENTION_RATE,
    REVENUE,
)
from segspark.sql import run_sql

if TYPE_CHECKING:
    import pandas as pd

COHORT_COLUMNS: tuple[str, ...] = (
    COHORT_MONTH,
    DIMENSION,
    DIMENSION_VALUE,
    MONTHS_SINCE_FIRST,
    COHORT_SIZE,
    ACTIVE_CUSTOMERS,
    RETENTION_RATE,
    REVENUE,
    CUMULATIVE_REVENUE_PER_CUSTOMER,
)
ALL = "all"

_ACQUISITION_SCHEMA = StructType(
    [StructField(S.CUSTOMER_ID, StringType()), StructField(S.ACQUISITION_CHANNEL, StringType())]
)


ORDER_VIEW_COLUMNS: tuple[str, ...] = (
    S.CUSTOMER_ID,
    S.ORDER_ID,
    S.ORDER_TS,
    S.ORDER_DATE,
    S.NET_AMOUNT,
    S.CHANNEL,
    S.IS_PURCHASE,
)


def _require_orders(orders: DataFrame) -> None:
    missing = [c for c in ORDER_VIEW_COLUMNS if c not in orders.columns]
    if missing:
        raise InputError(f"table '{S.ORDERS}': missing column(s) {', '.join(missing)}")


def order_view(orders: DataFrame) -> DataFrame:
    """The silver ``orders`` columns the analytical SQL reads."""
    _require_orders(orders)
    return orders.select(*ORDER_VIEW_COLUMNS)


def acquisition_view(frame: DataFrame, customers: DataFrame | None) -> DataFrame:
    """customer_id, acquisition_channel from the CRM; an empty table (in ``frame``'s session) when
    there is none."""
    if customers is None or S.ACQUISITION_CHANNEL not in customers.columns:
        return frame.sparkSession.createDataFrame([], _ACQUISITION_SCHEMA)
    return customers.where(F.col(S.CUSTOMER_ID).isNotNull()).select(
        S.CUSTOMER_ID, F.col(S.ACQUISITION_CHANNEL).cast("string").alias(S.ACQUISITION_CHANNEL)
    )


def cohort_retention(orders: DataFrame, customers: DataFrame | None, as_of_date: dt.date) -> DataFrame:
    """Long-format cohort table (see :data:`COHORT_COLUMNS` and the SQL file for definitions) from
    silver ``orders``: :func:`cohort_retention_from_state` of the orders' customer-level tables.

    One row per (dimension, dimension_value, cohort_month, months_since_first) with dimension
    ``all`` and ``acquisition_channel``.
    """
    _require_orders(orders)
    state = silver.customer_state(orders, as_of_date, ())
    return cohort_retention_from_state(
        state, silver.customer_months(orders, as_of_date), customers, as_of_date
    )


def cohort_retention_from_state(
    state: DataFrame, months: DataFrame, customers: DataFrame | None, as_of_date: dt.date
) -> DataFrame:
    """The cohort table from the silver ``customer_state`` and ``customer_months`` of ``as_of_date``
    (what the run reads: one row per customer and per active month, never the orders)."""
    out = run_sql(
        state.sparkSession,
        "cohort_retention",
        {
            "customer_state": state.select(
                S.CUSTOMER_ID, S.FIRST_PURCHASE_TS, S.FIRST_PURCHASE_CHANNEL, S.ACQUISITION_MONTH
            ),
            "customer_months": months.select(S.CUSTOMER_ID, S.MONTH, S.PURCHASES, S.NET_AMOUNT),
            "acquisition": acquisition_view(state, customers),
        },
        {"as_of_date": as_of_date},
    )
    return out.select(
        F.col(COHORT_MONTH).cast("date").alias(COHORT_MONTH),
        DIMENSION,
        DIMENSION_VALUE,
        F.col(MONTHS_SINCE_FIRST).cast("int").alias(MONTHS_SINCE_FIRST),
        F.col(COHORT_SIZE).cast("long").alias(COHORT_SIZE),
        F.col(ACTIVE_CUSTOMERS).cast("long").alias(ACTIVE_CUSTOMERS),
        F.col(RETENTION_RATE).cast("double").alias(RETENTION_RATE),
        F.col(REVENUE).cast("double").alias(REVENUE),
        F.col(CUMULATIVE_REVENUE_PER_CUSTOMER).cast("double").alias(CUMULATIVE_REVENUE_PER_CUSTOMER),
    )


def cohort_matrix(
    cohorts: DataFrame,
    value: str = RETENTION_RATE,
    dimension: str = ALL,
    dimension_value: str = ALL,
    last_cohorts: int | None = 24,
) -> pd.DataFrame:
    """Pivot one slice of the cohort table into cohort_month x months_since_first (for the heatmap).

    Only the slice (at most ``last_cohorts`` cohorts, each with at most as many months) reaches the
    driver: an aggregate of a few hundred cells, never customer rows.
    """
    if value not in COHORT_COLUMNS[4:]:
        raise InputError(f"cohort_retention: cannot draw column {value!r}; use one of {COHORT_COLUMNS[4:]}")
    part = cohorts.where((F.col(DIMENSION) == dimension) & (F.col(DIMENSION_VALUE) == dimension_value))
    if last_cohorts is not None:
        newest = part.agg(F.max(COHORT_MONTH).alias("m")).first()
        if newest is not None and newest["m"] is not None:
            oldest = F.add_months(F.lit(newest["m"]), -(last_cohorts - 1))
            part = part.where(F.col(COHORT_MONTH) >= oldest)
    cells = part.select(COHORT_MONTH, MONTHS_SINCE_FIRST, value).toPandas()
    matrix = cells.pivot(index=COHORT_MONTH, columns=MONTHS_SINCE_FIRST, values=value).sort_index()
    matrix.columns.name = MONTHS_SINCE_FIRST
    return matrix
