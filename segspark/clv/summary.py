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

Only grouped statistics leave Spark: (x, t_x, T) groups with counts for the transaction models and
(x, spend-bin) groups for the Gamma-Gamma model, each at most ``MAX_FIT_ROWS`` rows (``SEARCH_ROWS``
for the model choice's candidate fits) whatever the
number of customers. Distinct triples on the day grid grow with the customers until the grid
saturates (measured on generated data: 61,096 at 120K customers, 395,593 at 792K with 10M lines,
about 1.1M at saturation by the Chao1 estimate), so when they exceed the cap the grid coarsens
(:data:`RFM_GRID_DAYS`, :data:`SPEND_GRID_STEPS`) and, as a last resort (kept for the guarantee),
a seeded sample of customers is fitted with weights 1 / fraction.
See ``docs/driver_memory.md`` for every collect of the job and its bound.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from segspark.clv.stats import RfmStats, SpendStats
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
FIRST_VALUE = "first_value"
FREQUENCY_HOLDOUT = "frequency_holdout"
VALUE_HOLDOUT = "value_holdout"
DURATION_HOLDOUT = "duration_holdout"
# sum over the customer's gaps between consecutive purchase days of log(gap / unit): what MBG/CNBD-k's
# choice of k needs beyond (x, t_x, T) (BTYDplus's ``litt``); 0 without a repeat purchase
LOG_GAPS = "log_gaps"
COUNT = "n"

UNIT_DAYS = {"day": 1.0, "week": 7.0}

log = logging.getLogger(__name__)

# The most rows a fit reads on the driver (transaction model and spend model alike): 250,000 rows
# of 4-6 doubles are under 15 MB as Arrow, pandas and numpy, and the fits' per-row work arrays stay
# under 100 MB; a likelihood evaluation costs O(rows), so the cap also bounds the fit's time.
MAX_FIT_ROWS = 250_000
# The most rows the model choice's candidate fits read (calibration period; every candidate, and
# MBG/CNBD-k a whole fit per k of its profile): the chosen model is then fitted again on at most
# MAX_FIT_ROWS rows to score. Measured at 10M generated lines (675,750 calibration customers):
# 223,570 rows on 2-day bins took 42 s (Pareto/NBD) and 83 s (MBG/CNBD-k's profile); 39,762 rows on
# 7-day bins 7 s and 15 s, with the same k and parameters within 0.6% (BG/NBD's a 0.3%,
# MBG/CNBD-k's 0.1%), well inside what tells the candidates' holdout errors apart.
SEARCH_ROWS = 50_000
# Day-bin widths tried in turn for (recency, T) when the day grid has more than the cap's rows.
RFM_GRID_DAYS = (1, 2, 3, 7, 14, 28)
# Relative log-spend bin widths tried in turn when the configured grid has more than the cap's rows.
# Small steps: the Gamma-Gamma likelihood is flat along its (p, gamma) ridge, so its parameters
# follow the bin width more than its value does (at 10M generated lines: 8e-4 relative at width 1e-3,
# 10% at 1e-2), where the day bins of the transaction models hardly matter (2e-4 at 3-day bins).
SPEND_GRID_STEPS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
# The last resort's sample: a keyed hash of the customer id on a grid of this many buckets.
_SAMPLE_GRID = 1 << 20
_SAMPLE_SALT = "clv-fit-sample"
_RK, _TK, _RSUM, _TSUM = "_rk", "_tk", "_rsum", "_tsum"  # group keys and day sums of the RFM groups
_LSUM = "_lsum"  # the RFM groups' sum of the customers' log gaps
_LOG_GAP = "_log_gap"  # a purchase day's log gap to the customer's previous purchase day
_BIN, _SUM_LOG, _MEAN, _SUM = "bin", "sum_log_m", "mean_m", "_sum_m"

SUMMARY_COLUMNS = (
    CUSTOMER_ID,
    FREQUENCY,
    RECENCY,
    AGE,
    MONETARY_VALUE,
    RECENCY_DAYS,
    AGE_DAYS,
    FIRST_PURCHASE_DATE,
    FIRST_VALUE,
    LOG_GAPS,
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
    T_days (int), first_purchase_date, first_value (the value of the first purchase day), log_gaps
    (:data:`LOG_GAPS`, from the same aggregation: no window pass over the purchase days); plus
    frequency_holdout (long), value_holdout (the net value of those purchase days),
    duration_holdout (double) when ``holdout_end`` is given. Only customers with a purchase on or
    before ``calibration_end``.
    """
    aggs = _period_aggs("", calibration_end, holdout_end, log_gaps=True)
    agg = _with_log_gap(days).groupBy(CUSTOMER_ID).agg(*aggs)
    return _period_summary(agg, "", calibration_end, time_unit, holdout_end)


def two_summaries_from_purchase_days(
    days: DataFrame, calibration_end: dt.date, holdout_end: dt.date, end: dt.date, time_unit: str
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The calibration summary (with its holdout, as :func:`summary_from_purchase_days` with
    ``holdout_end``) and the summary as of ``end`` (without holdout), from ONE aggregation of the
    purchase days: (both per customer, to persist; the calibration summary; the one as of ``end``),
    the last two projections of the first. Each has exactly the rows and values of its own pass.
    """
    # the log gaps of the calibration period only: the refit on the full history keeps the validated k
    aggs = [*_period_aggs("", calibration_end, holdout_end, log_gaps=True), *_period_aggs(_FULL, end, None)]
    both = _with_log_gap(days).groupBy(CUSTOMER_ID).agg(*aggs)
    return (
        both,
        _period_summary(both, "", calibration_end, time_unit, holdout_end),
        _period_summary(both, _FULL, end, time_unit, None),
    )


_FULL = "full_"  # prefix of the aggregates as of the scoring date in the two-summary pass


def _period_aggs(
    prefix: str, calibration_end: dt.date, holdout_end: dt.date | None, log_gaps: bool = False
) -> list[Column]:
    """Per-customer aggregates of the purchase days up to ``calibration_end`` (and of the holdout;
    and the log gaps, ``log_gaps``), named with ``prefix``."""
    cal = F.col(PURCHASE_DATE) <= F.lit(calibration_end)
    aggs: list[Column] = [
        F.min(F.when(cal, F.col(PURCHASE_DATE))).alias(f"{prefix}first"),
        F.max(F.when(cal, F.col(PURCHASE_DATE))).alias(f"{prefix}last"),
        F.count_if(cal).alias(f"{prefix}n_days"),
        F.sum(F.when(cal, F.col(PURCHASE_VALUE))).alias(f"{prefix}total"),
        # the value of the first purchase day (rows with a null ordering are skipped); min_by keeps
        # the aggregation hash-based, where a min over a struct falls back to a sort
        F.min_by(F.col(PURCHASE_VALUE), F.when(cal, F.col(PURCHASE_DATE))).alias(f"{prefix}first_value"),
    ]
    if log_gaps:  # the column of _with_log_gap, null on each customer's first day
        aggs.append(F.coalesce(F.sum(F.when(cal, F.col(_LOG_GAP))), F.lit(0.0)).alias(f"{prefix}log_gaps"))
    if holdout_end is not None:
        hold = (F.col(PURCHASE_DATE) > F.lit(calibration_end)) & (F.col(PURCHASE_DATE) <= F.lit(holdout_end))
        aggs.append(F.count_if(hold).alias(f"{prefix}n_hold"))
        aggs.append(F.sum(F.when(hold, F.col(PURCHASE_VALUE)).otherwise(F.lit(0.0))).alias(f"{prefix}v_hold"))
    return aggs


def _with_log_gap(days: DataFrame) -> DataFrame:
    """The purchase days with log(days since the customer's previous purchase day) (null on her
    first), for the summary's aggregation to sum: the window partitions by customer as the
    aggregation does, so both run in one shuffle (where a pass of its own shuffled and sorted the
    purchase days a second time). A day twice (not in a silver table, one row per customer and day)
    is a gap of 0 and adds log 1 = 0."""
    previous = F.lag(F.col(PURCHASE_DATE)).over(Window.partitionBy(CUSTOMER_ID).orderBy(PURCHASE_DATE))
    gap = F.greatest(F.datediff(F.col(PURCHASE_DATE), previous), F.lit(1))
    return days.select("*", F.log(gap.cast("double")).alias(_LOG_GAP))


def _period_summary(
    agg: DataFrame, prefix: str, calibration_end: dt.date, time_unit: str, holdout_end: dt.date | None
) -> DataFrame:
    """The summary columns from :func:`_period_aggs`' columns of that ``prefix``; only customers
    with a purchase on or before ``calibration_end``."""
    unit = unit_days(time_unit)

    def c(name: str) -> Column:
        return F.col(f"{prefix}{name}")

    x = (c("n_days") - 1).cast("long")
    recency_days = F.datediff(c("last"), c("first"))
    age_days = F.datediff(F.lit(calibration_end), c("first"))
    cols: list[Column] = [
        F.col(CUSTOMER_ID),
        x.alias(FREQUENCY),
        (recency_days / F.lit(unit)).alias(RECENCY),
        (age_days / F.lit(unit)).alias(AGE),
        F.try_divide(c("total") - c("first_value"), x.cast("double")).alias(MONETARY_VALUE),
        recency_days.alias(RECENCY_DAYS),
        age_days.alias(AGE_DAYS),
        c("first").alias(FIRST_PURCHASE_DATE),
        c("first_value").alias(FIRST_VALUE),
    ]
    if f"{prefix}log_gaps" in agg.columns:  # log(gap / unit) = log(gap) - log(unit), over the x gaps
        cols.append((c("log_gaps") - x.cast("double") * F.lit(math.log(unit))).alias(LOG_GAPS))
    if holdout_end is not None:
        cols.append(c("n_hold").cast("long").alias(FREQUENCY_HOLDOUT))
        cols.append(c("v_hold").alias(VALUE_HOLDOUT))
        cols.append(
            (F.lit(float((holdout_end - calibration_end).days)) / F.lit(unit)).alias(DURATION_HOLDOUT)
        )
    return agg.filter(c("n_days") > 0).select(*cols)


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


def _customer_sample(df: DataFrame, keep: int) -> DataFrame:
    """About keep / 2**20 of the customers, chosen by a keyed hash of the id (partitioning-independent)."""
    bucket = F.pmod(F.xxhash64(F.col(CUSTOMER_ID), F.lit(_SAMPLE_SALT)), F.lit(_SAMPLE_GRID))
    return df.where(bucket < F.lit(keep))


def _sample_keep(customers: int, max_rows: int) -> int:
    """Hash buckets kept for about max_rows / 2 customers: a sample has no more distinct rows than
    customers, so its rows stay under the cap but for a binomial excess of many standard deviations."""
    return max(1, min(_SAMPLE_GRID, _SAMPLE_GRID * max_rows // max(2 * customers, 1)))


def _bounded(
    fine: DataFrame,
    coarsen: list[DataFrame],
    sample: Callable[[int], DataFrame],
    max_rows: int,
) -> tuple[pd.DataFrame, int, float]:
    """The first of ``fine``, then each frame of ``coarsen``, with at most ``max_rows`` rows, as pandas;
    else ``sample(keep)`` with ``keep`` halved until it fits. Returns (rows, index of the frame used
    (len(coarsen) + 1 for the sample), sample fraction). Only counts reach the driver before the
    frame that fits: never more than ``max_rows`` rows.
    """
    for i, frame in enumerate([fine, *coarsen]):
        if frame.count() <= max_rows:
            return frame.toPandas(), i, 1.0
    customers = int(fine.agg(F.sum(F.col(COUNT))).first()[0])  # type: ignore[index]
    keep = _sample_keep(customers, max_rows)
    while True:
        frame = sample(keep)
        if frame.count() <= max_rows or keep == 1:
            pdf = frame.limit(max_rows).toPandas()
            return pdf, len(coarsen) + 1, keep / _SAMPLE_GRID
        keep = max(1, keep // 2)


def _rfm_groups(summary: DataFrame) -> DataFrame:
    """Distinct (x, recency days, T days) with counts, day sums and the sum of the customers' log
    gaps (NaN when the summary has no :data:`LOG_GAPS`) (the exact day grid)."""
    log_gaps = F.sum(F.col(LOG_GAPS)) if LOG_GAPS in summary.columns else F.lit(math.nan)
    grouped = summary.groupBy(FREQUENCY, RECENCY_DAYS, AGE_DAYS).agg(
        F.count(F.lit(1)).alias(COUNT), log_gaps.alias(_LSUM)
    )
    return grouped.select(
        F.col(FREQUENCY),
        F.col(RECENCY_DAYS).cast("long").alias(_RK),
        F.col(AGE_DAYS).cast("long").alias(_TK),
        F.col(COUNT),
        (F.col(RECENCY_DAYS).cast("long") * F.col(COUNT)).alias(_RSUM),
        (F.col(AGE_DAYS).cast("long") * F.col(COUNT)).alias(_TSUM),
        F.col(_LSUM).cast("double").alias(_LSUM),
    )


def _coarser_rfm(fine: DataFrame, days: int) -> DataFrame:
    """The day-grid groups merged into ``days``-day bins of recency and T (sums kept exact)."""
    return fine.groupBy(
        F.col(FREQUENCY),
        F.floor(F.col(_RK) / F.lit(days)).alias(_RK),
        F.floor(F.col(_TK) / F.lit(days)).alias(_TK),
    ).agg(
        F.sum(F.col(COUNT)).alias(COUNT),
        F.sum(F.col(_RSUM)).alias(_RSUM),
        F.sum(F.col(_TSUM)).alias(_TSUM),
        F.sum(F.col(_LSUM)).alias(_LSUM),
    )


def compressed_rfm(summary: DataFrame, time_unit: str, max_rows: int = MAX_FIT_ROWS) -> RfmStats:
    """(x, t_x, T) groups with customer counts, the only thing the fit needs: at most ``max_rows`` rows;
    with the sum of the log gaps (``litt_sum``, ``n_gaps``) when the summary has :data:`LOG_GAPS`.

    Exact when the day grid has at most ``max_rows`` distinct triples. Otherwise customers are
    grouped by (x, recency // b, T // b) for the smallest ``b`` of :data:`RFM_GRID_DAYS` that fits,
    each group at its customers' mean recency and mean T: every customer's t_x and T move by less
    than ``b`` days, x is exact and t_x <= T still holds. If no grid fits, a seeded hash sample of
    about max_rows / 2 customers on the day grid, weighted by 1 / fraction (``sample_fraction``).
    """
    unit = unit_days(time_unit)
    fine = _rfm_groups(summary).persist()  # read by the count, the collect and any coarser grid
    try:
        pdf, step, fraction = _bounded(
            fine,
            [_coarser_rfm(fine, b) for b in RFM_GRID_DAYS[1:]],
            lambda keep: _rfm_groups(_customer_sample(summary, keep)),
            max_rows,
        )
    finally:
        fine.unpersist()
    if pdf.empty:
        raise InputError(
            "customer_days: no purchases on or before the calibration end; cannot fit a CLV model"
        )
    grid = RFM_GRID_DAYS[step] if step < len(RFM_GRID_DAYS) else 1
    if step:
        log.info(
            "clv: %s rows of (x, t_x, T) for the fit (cap %d): %s",
            len(pdf),
            max_rows,
            f"{grid}-day bins of recency and T" if fraction == 1.0 else f"a {fraction:.2e} customer sample",
        )
    pdf = pdf.sort_values([FREQUENCY, _RK, _TK], kind="stable")  # deterministic order
    n = pdf[COUNT].to_numpy(np.float64)
    # the day grid's sums are count x days: the division gives the days back exactly
    stats = RfmStats.from_arrays(
        pdf[FREQUENCY].to_numpy(np.float64),
        pdf[_RSUM].to_numpy(np.float64) / n / unit,
        pdf[_TSUM].to_numpy(np.float64) / n / unit,
        n / fraction if fraction < 1.0 else n,
    )
    # MBG/CNBD-k's statistic beyond (x, t_x, T): exact on every grid (sums), scaled like the weights
    # on a sample; the gaps of a customer are her x repeat purchase days
    lsum = pdf[_LSUM].to_numpy(np.float64)
    litt = float(lsum.sum()) / fraction  # NaN when the summary has no log gaps
    n_gaps = float(np.dot(pdf[FREQUENCY].to_numpy(np.float64), n)) / fraction
    return replace(
        stats,
        grid_days=grid,
        sample_fraction=fraction,
        litt_sum=litt if math.isfinite(litt) else math.nan,
        n_gaps=n_gaps if math.isfinite(litt) else math.nan,
    )


@dataclass(frozen=True)
class SpendSummary:
    """Gamma-Gamma inputs plus the checks the issue asks for."""

    stats: SpendStats | None
    n_repeat_buyers: int
    n_excluded_nonpositive: int
    freq_spend_corr: float  # NaN when undefined (fewer than 2 buyers, or frequency or spend constant)
    n_rows: int
    resolution: float = 0.0  # the log-spend bin width used (the configured one unless over the cap)
    sample_fraction: float = 1.0  # below 1 only when no grid of SPEND_GRID_STEPS fits the cap


def corr_or_null(a: Column, b: Column) -> Column:
    """Pearson correlation as an aggregate; null when either column is constant or has < 2 rows.

    ``F.corr`` divides by the standard deviations and raises DIVIDE_BY_ZERO under ANSI when one is
    0; covariance over the product of the (population) standard deviations is the same figure.
    """
    return F.try_divide(F.covar_pop(a, b), F.stddev_pop(a) * F.stddev_pop(b))


def _spend_groups(repeat: DataFrame, resolution: float) -> DataFrame:
    """Repeat buyers with positive spend by (x, log-spend bin); count, exact sum of log spend, mean."""
    positive = repeat.filter(F.col(MONETARY_VALUE) > 0)
    if resolution > 0:
        key = F.floor(F.log(F.col(MONETARY_VALUE)) / F.lit(math.log1p(resolution))).alias(_BIN)
    else:
        key = F.col(MONETARY_VALUE).alias(_BIN)
    return positive.groupBy(F.col(FREQUENCY), key).agg(
        F.count(F.lit(1)).alias(COUNT),
        F.sum(F.log(F.col(MONETARY_VALUE))).alias(_SUM_LOG),
        F.avg(F.col(MONETARY_VALUE)).alias(_MEAN),
        F.sum(F.col(MONETARY_VALUE)).alias(_SUM),
    )


def _coarser_spend(fine: DataFrame, resolution: float) -> DataFrame:
    """Groups merged into log-spend bins of relative width ``resolution`` (by each group's mean, which
    lies in its own finer bin); counts and sums stay exact, the mean is the customers' mean."""
    return fine.groupBy(
        F.col(FREQUENCY), F.floor(F.log(F.col(_MEAN)) / F.lit(math.log1p(resolution))).alias(_BIN)
    ).agg(
        F.sum(F.col(COUNT)).alias(COUNT),
        F.sum(F.col(_SUM_LOG)).alias(_SUM_LOG),
        (F.sum(F.col(_SUM)) / F.sum(F.col(COUNT))).alias(_MEAN),
        F.sum(F.col(_SUM)).alias(_SUM),
    )


def compressed_spend(
    summary: DataFrame, resolution: float = 1e-4, max_rows: int = MAX_FIT_ROWS
) -> SpendSummary:
    """Repeat buyers grouped by (x, log-spend bin of relative width ``resolution``; 0 = exact value).

    Each group keeps its count, the exact sum of log spend and the mean spend (see ``SpendStats``).
    Repeat buyers with zero or negative mean spend are excluded and counted. At most ``max_rows``
    groups reach the driver: when the configured grid has more, the next width of
    :data:`SPEND_GRID_STEPS` that fits (the likelihood's one approximated term, log(gamma + x m) at
    the bin mean, errs by about the squared width per buyer); if none fits, a seeded hash sample
    of about max_rows / 2 buyers, weighted by 1 / fraction.
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
    steps = [r for r in SPEND_GRID_STEPS if r > resolution]
    fine = _spend_groups(repeat, resolution).persist()  # read by the count, the collect, coarser grids
    try:
        pdf, step, fraction = _bounded(
            fine,
            [_coarser_spend(fine, r) for r in steps],
            lambda keep: _spend_groups(_customer_sample(repeat, keep), resolution),
            max_rows,
        )
    finally:
        fine.unpersist()
    used = steps[step - 1] if 0 < step <= len(steps) else resolution
    if step:
        log.info(
            "clv: %d rows of (x, spend bin) for the Gamma-Gamma fit (cap %d): %s",
            len(pdf),
            max_rows,
            f"log-spend bins of width {used:g}" if fraction == 1.0 else f"a {fraction:.2e} buyer sample",
        )
    pdf = pdf.sort_values([FREQUENCY, _BIN], kind="stable")
    corr = checks["corr"]
    stats = None
    if not pdf.empty:
        x = pdf[FREQUENCY].to_numpy(np.float64)
        w = pdf[COUNT].to_numpy(np.float64)
        sum_log = pdf[_SUM_LOG].to_numpy(np.float64)
        stats = SpendStats(
            x=x,
            weight=w / fraction if fraction < 1.0 else w,
            sum_log_m=sum_log / fraction if fraction < 1.0 else sum_log,
            mean_m=pdf[_MEAN].to_numpy(np.float64),
        )
    return SpendSummary(
        stats=stats,
        n_repeat_buyers=int(checks["repeat"]),
        n_excluded_nonpositive=int(checks["excluded"]),
        freq_spend_corr=float(corr) if corr is not None else float("nan"),
        n_rows=len(pdf),
        resolution=used,
        sample_fraction=fraction,
    )
