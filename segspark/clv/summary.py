"""Per-customer BTYD summary statistics in Spark, and their compressed forms for the driver.

Definitions (the literature's, as in Fader, Hardie & Lee 2005 and the ``lifetimes`` package):

- the input is the silver ``customer_days`` table (:mod:`segspark.silver`): a *purchase day* is a
  row with ``purchases > 0`` (at least one order with ``is_purchase``, the job's one purchase
  definition ``net_amount > purchase.min_net_amount``), its value ``purchase_value`` (the net of
  that day's purchase orders); several orders on one day are one purchase occasion;
- ``frequency`` x = distinct purchase days in the calibration period minus one (repeat purchases);
- ``recency`` t_x = last minus first purchase day; ``T`` = calibration end minus first purchase day;
  both in days divided by the unit length (1 for ``day``, 7 for ``week``), so CDNOW weeks are
  fractional exactly as in the published data;
- ``monetary_value`` = mean value of the repeat purchase days (the first day excluded), null when
  x == 0;
- optional holdout: ``frequency_holdout`` = distinct purchase days in (calibration end, holdout end].

Only grouped statistics leave Spark: (x, t_x, T) triples with counts (bounded by the day grid, not
by the number of customers) and (x, spend-bin) groups for the Gamma-Gamma model.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark.clv.models import RfmStats, SpendStats
from segspark.errors import InputError
from segspark.schema import CUSTOMER_ID, ORDER_DATE, PURCHASE_VALUE, PURCHASES

# stage-specific column names (purchase_value is the silver customer_days column)
PURCHASE_DATE = "purchase_date"
FREQUENCY = "frequency"
RECENCY = "recency"
AGE = "T"
MONETARY_VALUE = "monetary_value"
RECENCY_DAYS = "recency_days"
AGE_DAYS = "T_days"
FIRST_PURCHASE_DATE = "first_purchase_date"
FREQUENCY_HOLDOUT = "frequency_holdout"
DURATION_HOLDOUT = "duration_holdout"
COUNT = "n"

UNIT_DAYS = {"day": 1.0, "week": 7.0}

SUMMARY_COLUMNS = (
    CUSTOMER_ID,
    FREQUENCY,
    RECENCY,
    AGE,
    MONETARY_VALUE,
    RECENCY_DAYS,
    AGE_DAYS,
    FIRST_PURCHASE_DATE,
)


def unit_days(time_unit: str) -> float:
    """Length of one time unit in days."""
    return UNIT_DAYS[time_unit]


def purchase_days(customer_days: DataFrame, end: dt.date) -> DataFrame:
    """The purchase occasions up to ``end`` (inclusive): ``customer_days`` rows with ``purchases > 0``.

    Columns: customer_id, purchase_date (the day), purchase_value (net of that day's purchase orders).
    """
    needed = (CUSTOMER_ID, ORDER_DATE, PURCHASES, PURCHASE_VALUE)
    missing = [c for c in needed if c not in customer_days.columns]
    if missing:
        raise InputError(f"customer_days: column(s) {', '.join(missing)} missing; CLV needs them")
    return customer_days.where((F.col(PURCHASES) > 0) & (F.col(ORDER_DATE) <= F.lit(end))).select(
        F.col(CUSTOMER_ID),
        F.col(ORDER_DATE).alias(PURCHASE_DATE),
        F.col(PURCHASE_VALUE).cast("double").alias(PURCHASE_VALUE),
    )


def summary_from_purchase_days(
    days: DataFrame,
    calibration_end: dt.date,
    time_unit: str,
    holdout_end: dt.date | None = None,
) -> DataFrame:
    """Summary statistics from :func:`purchase_days`; one aggregation pass.

    Columns: customer_id, frequency (long), recency, T, monetary_value (double), recency_days,
    T_days (int), first_purchase_date; plus frequency_holdout (long), duration_holdout (double)
    when ``holdout_end`` is given. Only customers with a purchase on or before ``calibration_end``.
    """
    unit = unit_days(time_unit)
    cal = F.col(PURCHASE_DATE) <= F.lit(calibration_end)
    aggs: list[Column] = [
        F.min(F.when(cal, F.col(PURCHASE_DATE))).alias("first"),
        F.max(F.when(cal, F.col(PURCHASE_DATE))).alias("last"),
        F.count_if(cal).alias("n_days"),
        F.sum(F.when(cal, F.col(PURCHASE_VALUE))).alias("total"),
        # the value of the first purchase day (rows with a null ordering are skipped); min_by keeps
        # the aggregation hash-based, where a min over a struct falls back to a sort
        F.min_by(F.col(PURCHASE_VALUE), F.when(cal, F.col(PURCHASE_DATE))).alias("first_value"),
    ]
    if holdout_end is not None:
        hold = (F.col(PURCHASE_DATE) > F.lit(calibration_end)) & (F.col(PURCHASE_DATE) <= F.lit(holdout_end))
        aggs.append(F.count_if(hold).alias("n_hold"))
    agg = days.groupBy(CUSTOMER_ID).agg(*aggs).filter(F.col("n_days") > 0)
    x = (F.col("n_days") - 1).cast("long")
    recency_days = F.datediff(F.col("last"), F.col("first"))
    age_days = F.datediff(F.lit(calibration_end), F.col("first"))
    cols: list[Column] = [
        F.col(CUSTOMER_ID),
        x.alias(FREQUENCY),
        (recency_days / F.lit(unit)).alias(RECENCY),
        (age_days / F.lit(unit)).alias(AGE),
        F.try_divide(F.col("total") - F.col("first_value"), x.cast("double")).alias(MONETARY_VALUE),
        recency_days.alias(RECENCY_DAYS),
        age_days.alias(AGE_DAYS),
        F.col("first").alias(FIRST_PURCHASE_DATE),
    ]
    if holdout_end is not None:
        cols.append(F.col("n_hold").cast("long").alias(FREQUENCY_HOLDOUT))
        cols.append(
            (F.lit(float((holdout_end - calibration_end).days)) / F.lit(unit)).alias(DURATION_HOLDOUT)
        )
    return agg.select(*cols)


def summary_statistics(
    customer_days: DataFrame,
    calibration_end: dt.date,
    time_unit: str = "week",
    holdout_end: dt.date | None = None,
) -> DataFrame:
    """Per-customer (x, t_x, T, mean repeat value[, holdout count]) from the silver ``customer_days``."""
    end = max(calibration_end, holdout_end) if holdout_end is not None else calibration_end
    return summary_from_purchase_days(
        purchase_days(customer_days, end), calibration_end, time_unit, holdout_end
    )


def compressed_rfm(summary: DataFrame, time_unit: str) -> RfmStats:
    """Distinct (x, t_x, T) on the day grid with customer counts: the only thing the fit needs."""
    unit = unit_days(time_unit)
    grouped = summary.groupBy(FREQUENCY, RECENCY_DAYS, AGE_DAYS).agg(F.count(F.lit(1)).alias(COUNT))
    pdf = grouped.toPandas()  # sufficient statistics, bounded by the day grid
    if pdf.empty:
        raise InputError(
            "customer_days: no purchases on or before the calibration end; cannot fit a CLV model"
        )
    pdf = pdf.sort_values([FREQUENCY, RECENCY_DAYS, AGE_DAYS], kind="stable")  # deterministic order
    return RfmStats.from_arrays(
        pdf[FREQUENCY].to_numpy(np.float64),
        pdf[RECENCY_DAYS].to_numpy(np.float64) / unit,
        pdf[AGE_DAYS].to_numpy(np.float64) / unit,
        pdf[COUNT].to_numpy(np.float64),
    )


@dataclass(frozen=True)
class SpendSummary:
    """Gamma-Gamma inputs plus the checks the issue asks for."""

    stats: SpendStats | None
    n_repeat_buyers: int
    n_excluded_nonpositive: int
    freq_spend_corr: float  # NaN when undefined (fewer than 2 buyers, or frequency or spend constant)
    n_rows: int


def corr_or_null(a: Column, b: Column) -> Column:
    """Pearson correlation as an aggregate; null when either column is constant or has < 2 rows.

    ``F.corr`` divides by the standard deviations and raises DIVIDE_BY_ZERO under ANSI when one is
    0; covariance over the product of the (population) standard deviations is the same figure.
    """
    return F.try_divide(F.covar_pop(a, b), F.stddev_pop(a) * F.stddev_pop(b))


def compressed_spend(summary: DataFrame, resolution: float = 1e-4) -> SpendSummary:
    """Repeat buyers grouped by (x, log-spend bin of relative width ``resolution``; 0 = exact value).

    Each group keeps its count, the exact sum of log spend and the mean spend (see ``SpendStats``).
    Repeat buyers with zero or negative mean spend are excluded and counted.
    """
    repeat = summary.filter(F.col(FREQUENCY) > 0)
    checks = repeat.agg(
        F.count(F.lit(1)).alias("repeat"),
        F.count_if(F.coalesce(F.col(MONETARY_VALUE), F.lit(0.0)) <= 0).alias("excluded"),
        corr_or_null(
            F.when(F.col(MONETARY_VALUE) > 0, F.col(FREQUENCY).cast("double")),
            F.when(F.col(MONETARY_VALUE) > 0, F.col(MONETARY_VALUE)),
        ).alias("corr"),
    ).first()
    assert checks is not None
    positive = repeat.filter(F.col(MONETARY_VALUE) > 0)
    if resolution > 0:
        key = F.floor(F.log(F.col(MONETARY_VALUE)) / F.lit(math.log1p(resolution))).alias("bin")
    else:
        key = F.col(MONETARY_VALUE).alias("bin")
    grouped = positive.groupBy(F.col(FREQUENCY), key).agg(
        F.count(F.lit(1)).alias(COUNT),
        F.sum(F.log(F.col(MONETARY_VALUE))).alias("sum_log_m"),
        F.avg(F.col(MONETARY_VALUE)).alias("mean_m"),
    )
    pdf = grouped.toPandas().sort_values([FREQUENCY, "bin"], kind="stable")
    corr = checks["corr"]
    stats = None
    if not pdf.empty:
        x = pdf[FREQUENCY].to_numpy(np.float64)
        w = pdf[COUNT].to_numpy(np.float64)
        stats = SpendStats(
            x=x,
            weight=w,
            sum_log_m=pdf["sum_log_m"].to_numpy(np.float64),
            mean_m=pdf["mean_m"].to_numpy(np.float64),
        )
    return SpendSummary(
        stats=stats,
        n_repeat_buyers=int(checks["repeat"]),
        n_excluded_nonpositive=int(checks["excluded"]),
        freq_spend_corr=float(corr) if corr is not None else float("nan"),
        n_rows=len(pdf),
    )
