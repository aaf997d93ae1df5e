"""Acquisition-month cohort retention, computed by ``segspark/sql/cohort_retention.sql``.

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
from segspark.errors import InputError
from segspark.sql import run_sql

if TYPE_CHECKING:
    import pandas as pd

COHORT_MONTH = "cohort_month"
DIMENSION = "dimension"
DIMENSION_VALUE = "dimension_value"
MONTHS_SINCE_FIRST = "months_since_first"
COHORT_SIZE = "cohort_size"
ACTIVE_CUSTOMERS = "active_customers"
RETENTION_RATE = "retention_rate"
REVENUE = "revenue"
CUMULATIVE_REVENUE_PER_CUSTOMER = "cumulative_revenue_per_customer"
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


def transaction_view(transactions: DataFrame) -> DataFrame:
    """The transaction columns the analytical SQL reads (``channel`` null when the source has none)."""
    missing = [c for c in S.TRANSACTIONS_REQUIRED if c not in transactions.columns]
    if missing:
        raise InputError(f"transactions: missing column(s) {', '.join(missing)}")
    channel = F.col(S.CHANNEL) if S.CHANNEL in transactions.columns else F.lit(None)
    return transactions.select(*S.TRANSACTIONS_REQUIRED, channel.cast("string").alias(S.CHANNEL))


def acquisition_view(transactions: DataFrame, customers: DataFrame | None) -> DataFrame:
    """customer_id, acquisition_channel from the CRM; an empty table when there is none."""
    if customers is None or S.ACQUISITION_CHANNEL not in customers.columns:
        return transactions.sparkSession.createDataFrame([], _ACQUISITION_SCHEMA)
    return customers.where(F.col(S.CUSTOMER_ID).isNotNull()).select(
        S.CUSTOMER_ID, F.col(S.ACQUISITION_CHANNEL).cast("string").alias(S.ACQUISITION_CHANNEL)
    )


def cohort_retention(transactions: DataFrame, customers: DataFrame | None, as_of_date: dt.date) -> DataFrame:
    """Long-format cohort table (see :data:`COHORT_COLUMNS` and the SQL file for definitions).

    One row per (dimension, dimension_value, cohort_month, months_since_first) with dimension
    ``all`` and ``acquisition_channel``.
    """
    out = run_sql(
        transactions.sparkSession,
        "cohort_retention",
        {
            "transactions": transaction_view(transactions),
            "acquisition": acquisition_view(transactions, customers),
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
