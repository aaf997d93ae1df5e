"""Calibration/holdout validation of a fitted transaction model; figures returned, never written.

- per customer: predicted vs actual holdout purchases (MAE, RMSE, Pearson correlation), computed
  as Spark aggregates; by calibration frequency (the classic conditional-expectation plot);
- in aggregate: total predicted vs actual holdout purchases;
- the cumulative repeat-purchase tracking curve by week over calibration and holdout;
- the calibration frequency histogram, actual vs model.

Only aggregates (per week, per frequency, per first-purchase day) reach the driver.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark.clv import models as M
from segspark.clv.predict import expected_purchases_udf
from segspark.clv.summary import (
    AGE,
    COUNT,
    DURATION_HOLDOUT,
    FIRST_PURCHASE_DATE,
    FREQUENCY,
    FREQUENCY_HOLDOUT,
    PURCHASE_DATE,
    RECENCY,
    VALUE_HOLDOUT,
    unit_days,
)
from segspark.schema import CUSTOMER_ID

# repeat-purchase bands of the holdout value check: (label, lowest x, highest x or None)
REPEAT_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0),
    ("1", 1, 1),
    ("2-3", 2, 3),
    ("4+", 4, None),
)
SEGMENT_UNKNOWN = "(no segment)"
# Continuity correction, in purchases, of the band error's log ratio: a band whose holdout has no
# purchase (a tiny input) keeps a finite error, and bands with a handful of purchases weigh little.
BAND_ERROR_PSEUDO_PURCHASES = 0.5
HOLDOUT_ERROR = "holdout_error"  # the mean error over bands and segments that auto ranks by
HISTOGRAM_BUCKETS = 7  # 0..6 and "7+", as in Fader, Hardie & Lee (2005), figure 2
SIMULATION_DRAWS = 200_000


# one fitted model for everyone, or the model of each repeat band of REPEAT_BANDS (label -> fit)
Fits = M.FitResult | Mapping[str, M.FitResult]


def holdout_purchases(fits: Fits) -> Column:
    """E[purchases in the holdout | calibration history] over the summary's columns: one model's, or
    the model of the customer's repeat band (a when-chain over the bands, one pandas_udf per model)."""

    def expected(fit: M.FitResult) -> Column:
        return expected_purchases_udf(fit.model, fit.values)(
            F.col(DURATION_HOLDOUT), F.col(FREQUENCY).cast("double"), F.col(RECENCY), F.col(AGE)
        )

    if isinstance(fits, M.FitResult):
        return expected(fits)
    distinct = {f.model: f for f in fits.values()}
    if len(distinct) == 1:
        return expected(next(iter(distinct.values())))
    cols = {name: expected(f) for name, f in distinct.items()}
    return by_band({band: cols[f.model] for band, f in fits.items()}, F.col(FREQUENCY))


def by_band(columns: Mapping[str, Column], x: Column) -> Column:
    """The column of the repeat band (label of :data:`REPEAT_BANDS`) that holds ``x`` repeat
    purchases; null for a band without one."""
    out = F.when(F.lit(False), F.lit(None))
    for label, _, hi in REPEAT_BANDS:
        col = columns.get(label, F.lit(None))
        out = out.when(x <= F.lit(hi), col) if hi is not None else out.otherwise(col)
    return out


def with_holdout_prediction(summary: DataFrame, fit: Fits) -> DataFrame:
    """Add ``predicted_holdout`` = E[purchases in the holdout | calibration history]."""
    pred = holdout_purchases(fit)
    return summary.select(
        F.col(CUSTOMER_ID), F.col(FREQUENCY), F.col(FREQUENCY_HOLDOUT), pred.alias("predicted_holdout")
    )


def holdout_metrics(
    summary: DataFrame, fit: M.FitResult, segments: DataFrame | None = None
) -> dict[str, float]:
    """MAE, RMSE, correlation and totals of predicted vs actual holdout purchases (one Spark pass)."""
    return holdout_metrics_many(summary, {fit.model: fit}, segments)[fit.model]


def _with_segment(scored: DataFrame, segments: DataFrame | None, segment_col: str) -> DataFrame:
    """``scored`` with a ``segment`` column: the customer's segment from ``segments`` (customer_id,
    ``segment_col``; one row per customer), :data:`SEGMENT_UNKNOWN` when she has none."""
    if segments is None:
        return scored.withColumn("segment", F.lit(SEGMENT_UNKNOWN))
    seg = segments.select(F.col(CUSTOMER_ID), F.col(segment_col).alias("segment"))
    joined = scored.join(seg, on=CUSTOMER_ID, how="left")
    return joined.withColumn("segment", F.coalesce(F.col("segment"), F.lit(SEGMENT_UNKNOWN)))


def holdout_metrics_many(
    summary: DataFrame,
    fits: dict[str, M.FitResult],
    segments: DataFrame | None = None,
    segment_col: str = "segment",
) -> dict[str, dict[str, float]]:
    """:func:`holdout_metrics` for several fitted models in one pass over the summary.

    Sums per (repeat band, segment) cell leave Spark (a few dozen rows, :func:`holdout_cells`);
    per-customer MAE, RMSE and correlation follow from the cells' sums. ``segments`` (customer_id,
    ``segment_col``), when given, adds the error by segment (:func:`_group_errors`).
    """
    cells = holdout_cells(summary, fits, segments, segment_col)
    return {name: cell_metrics(cells, str(i), segments is not None) for i, name in enumerate(fits)}


CELL_SUMS = ("p", "pp", "pa", "abs", "sq")  # per model i: columns p_i, pp_i, pa_i, abs_i, sq_i


def holdout_cells(
    summary: DataFrame,
    fits: dict[str, M.FitResult],
    segments: DataFrame | None = None,
    segment_col: str = "segment",
) -> pd.DataFrame:
    """Sums per (repeat band, segment) cell of actual and each model's predicted holdout purchases
    (one Spark pass): band, segment, n, a, aa and, for the i-th model of ``fits``, the columns of
    :data:`CELL_SUMS` suffixed ``_i``."""
    actual = F.col(FREQUENCY_HOLDOUT).cast("double")
    preds = [holdout_purchases(fit).alias(f"pred_{i}") for i, fit in enumerate(fits.values())]
    scored = summary.select(
        F.col(CUSTOMER_ID), actual.alias("actual"), repeat_band(F.col(FREQUENCY)).alias("band"), *preds
    )
    a = F.col("actual")
    aggs = [F.count(F.lit(1)).alias("n"), F.sum(a).alias("a"), F.sum(a * a).alias("aa")]
    for i in range(len(fits)):
        p = F.col(f"pred_{i}")
        err = p - a
        aggs += [
            F.sum(p).alias(f"p_{i}"),
            F.sum(p * p).alias(f"pp_{i}"),
            F.sum(p * a).alias(f"pa_{i}"),
            F.sum(F.abs(err)).alias(f"abs_{i}"),
            F.sum(err * err).alias(f"sq_{i}"),
        ]
    cells = _with_segment(scored, segments, segment_col).groupBy("band", "segment").agg(*aggs).toPandas()
    return cells.fillna(0.0)


def cell_metrics(cells: pd.DataFrame, suffix: str, by_segment: bool) -> dict[str, float]:
    """The holdout metrics of the predictions whose cell sums are the columns of :data:`CELL_SUMS`
    suffixed ``_<suffix>`` (:func:`holdout_cells`)."""
    n = float(cells["n"].sum())
    total = float(cells["a"].sum())
    predicted = float(cells[f"p_{suffix}"].sum())
    return {
        "holdout_customers": n,
        "holdout_mae": float(cells[f"abs_{suffix}"].sum()) / n if n else math.nan,
        "holdout_rmse": math.sqrt(float(cells[f"sq_{suffix}"].sum()) / n) if n else math.nan,
        "holdout_corr": _corr(
            n,
            predicted,
            total,
            *(float(cells[c].sum()) for c in (f"pp_{suffix}", "aa", f"pa_{suffix}")),
        ),
        "holdout_actual_total": total,
        "holdout_predicted_total": predicted,
        "holdout_total_error_pct": 100.0 * (predicted - total) / total if total else math.nan,
        # the share the validity rule bounds (clv.max_holdout_error)
        "holdout_total_error": (predicted - total) / total if total else math.nan,
        **_group_errors(cells, f"p_{suffix}", by_segment),
    }


def _corr(n: float, sp: float, sa: float, spp: float, saa: float, spa: float) -> float:
    """Pearson correlation from sums (NaN when either side is constant)."""
    if n < 2:
        return math.nan
    cov = spa - sp * sa / n
    vp = spp - sp * sp / n
    va = saa - sa * sa / n
    return cov / math.sqrt(vp * va) if vp > 0 and va > 0 else math.nan


def band_key(band: str) -> str:
    """``holdout_band_ratio_0``, ``_2_3``, ``_4plus``: a metric name any tracking store takes."""
    return "holdout_band_ratio_" + band.replace("-", "_").replace("+", "plus")


def segment_key(segment: str) -> str:
    """``holdout_segment_ratio_at_risk``: a metric name any tracking store takes."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in segment.lower()).strip("_")
    return "holdout_segment_ratio_" + "_".join(part for part in slug.split("_") if part)


def _log_error(predicted: float, actual: float) -> float:
    c = BAND_ERROR_PSEUDO_PURCHASES
    return abs(math.log((max(predicted, 0.0) + c) / (actual + c)))


def _group_errors(cells: pd.DataFrame, pred: str, by_segment: bool) -> dict[str, float]:
    """Predicted / actual holdout purchases per repeat band of :data:`REPEAT_BANDS` (:func:`band_key`)
    and, ``by_segment``, per segment (:func:`segment_key`); their errors:

    - ``holdout_band_error``: the mean over the bands with customers of |ln((predicted + c) /
      (actual + c))|, c = :data:`BAND_ERROR_PSEUDO_PURCHASES`;
    - ``holdout_segment_error``: the same over the segments (customers without one left out);
    - ``holdout_error``: the mean of that term over the bands and the segments together, what
      ``clv.model: auto`` ranks by (the band error without segments).

    Every group weighs the same whatever its size, and a model 2x over and one 2x under err alike: a
    model far off on one band or segment (few holdout purchases, so little weight in a per-customer
    MAE: the customers without a repeat purchase, regular buyers who stopped) loses to one that is
    close on every group.
    """
    out: dict[str, float] = {}
    band_logs: list[float] = []
    by_band: dict[Any, dict[Any, Any]] = cells.groupby("band")[["n", "a", pred]].sum().to_dict("index")
    for band, _, _ in REPEAT_BANDS:
        if band not in by_band or not by_band[band]["n"]:
            continue
        actual, predicted = float(by_band[band]["a"]), float(by_band[band][pred])
        out[band_key(band)] = predicted / actual if actual else math.nan
        band_logs.append(_log_error(predicted, actual))
    out["holdout_band_error"] = float(np.mean(band_logs)) if band_logs else math.nan
    out["holdout_error"] = out["holdout_band_error"]
    if not by_segment:
        return out
    seg_logs: list[float] = []
    by_seg: dict[Any, dict[Any, Any]] = cells.groupby("segment")[["n", "a", pred]].sum().to_dict("index")
    for segment in sorted(str(s) for s in by_seg if s != SEGMENT_UNKNOWN):
        actual, predicted = float(by_seg[segment]["a"]), float(by_seg[segment][pred])
        out[segment_key(segment)] = predicted / actual if actual else math.nan
        seg_logs.append(_log_error(predicted, actual))
    out["holdout_segment_error"] = float(np.mean(seg_logs)) if seg_logs else math.nan
    logs = band_logs + seg_logs
    out["holdout_error"] = float(np.mean(logs)) if logs else math.nan
    return out


def holdout_by_frequency(summary: DataFrame, fit: Fits, max_x: int = HISTOGRAM_BUCKETS) -> pd.DataFrame:
    """Mean actual and predicted holdout purchases by calibration frequency (capped at ``max_x``)."""
    scored = with_holdout_prediction(summary, fit)
    bucket = F.least(F.col(FREQUENCY), F.lit(max_x)).alias("frequency")
    pdf = (
        scored.groupBy(bucket)
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg(F.col(FREQUENCY_HOLDOUT).cast("double")).alias("actual"),
            F.avg("predicted_holdout").alias("predicted"),
        )
        .toPandas()
    )
    return pdf.sort_values("frequency").reset_index(drop=True)


def repeat_band(x: Column) -> Column:
    """The label of :data:`REPEAT_BANDS` that holds ``x`` repeat purchases."""
    out = F.when(F.lit(False), F.lit(None).cast("string"))
    for label, _, hi in REPEAT_BANDS:
        out = out.when(x <= F.lit(hi), F.lit(label)) if hi is not None else out.otherwise(F.lit(label))
    return out


def holdout_value(
    summary: DataFrame,
    fit: Fits,
    avg_value: Column,
    segments: DataFrame | None,
    segment_col: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicted vs actual holdout value per customer, by repeat-purchase band and by segment.

    Predicted: E[purchases in the holdout | calibration history] x ``avg_value`` (the calibration
    spend model's expected spend per purchase, a column over the summary); actual: the net value of
    the holdout purchase days. ``segments`` (customer_id, ``segment_col``; one row per customer, e.g.
    the RFM segment as of the calibration end) is joined to the summary, missing as
    :data:`SEGMENT_UNKNOWN`. One Spark aggregation by (band, segment); the two views are summed on
    the driver. Each frame: label, customers, actual and predicted (means per customer), in band
    order / by label.
    """
    pred_n = holdout_purchases(fit)
    scored = summary.select(
        F.col(CUSTOMER_ID),
        repeat_band(F.col(FREQUENCY)).alias("band"),
        (pred_n * avg_value).alias("predicted"),
        F.col(VALUE_HOLDOUT).alias("actual"),
    )
    cells = (
        _with_segment(scored, segments, segment_col)
        .groupBy("band", "segment")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum("actual").alias("actual"),
            F.sum("predicted").alias("predicted"),
        )
        .toPandas()
    )

    def view(key: str, order: list[str] | None) -> pd.DataFrame:
        g = cells.groupby(key, as_index=False)[["customers", "actual", "predicted"]].sum()
        g["actual"] = g["actual"] / g["customers"]
        g["predicted"] = g["predicted"] / g["customers"]
        g = g.rename(columns={key: "label"})
        if order is not None:
            g["_o"] = g["label"].map({b: i for i, b in enumerate(order)})
            return g.sort_values("_o").drop(columns="_o").reset_index(drop=True)
        return g.sort_values("label").reset_index(drop=True)

    return view("band", [b for b, _, _ in REPEAT_BANDS]), view("segment", None)


def tracking_curve(
    days: DataFrame,
    summary: DataFrame,
    fit: M.FitResult,
    calibration_end: dt.date,
    holdout_end: dt.date,
    time_unit: str,
) -> pd.DataFrame:
    """Weekly cumulative repeat purchases of the calibration customers, actual vs model.

    ``days`` is the purchase-day table (customer_id, purchase_date). The model curve sums
    n_c * E[X(t)] over first-purchase cohorts c, with t the time since the cohort's first day.
    Columns: week (1-based), week_end (date), actual_cum, expected_cum, calibration (bool).
    """
    cohorts = summary.groupBy(F.col(FIRST_PURCHASE_DATE)).agg(F.count(F.lit(1)).alias(COUNT)).toPandas()
    if cohorts.empty:
        return pd.DataFrame(columns=["week", "week_end", "actual_cum", "expected_cum", "calibration"])
    cohorts = cohorts.sort_values(FIRST_PURCHASE_DATE)
    start = min(cohorts[FIRST_PURCHASE_DATE])
    n_weeks = max(1, math.ceil(((holdout_end - start).days + 1) / 7))
    # The calibration customers' repeat purchase days, by week, without joining every purchase day
    # to the summary: up to the calibration end every purchase day is a calibration customer's, and
    # all but her first (one row per customer and day) are repeats: the week's purchase days minus
    # the first purchases in it (the cohorts above). In the holdout, only the days of customers of the
    # summary count, and only customers with holdout purchases have any (the semi-join's few rows).
    week = F.floor(F.datediff(F.col(PURCHASE_DATE), F.lit(start)) / F.lit(7)).alias("week_idx")
    weeks = days.where(F.col(PURCHASE_DATE) <= F.lit(calibration_end)).select(week)
    if holdout_end > calibration_end:
        buyers = summary
        if FREQUENCY_HOLDOUT in summary.columns:
            buyers = summary.where(F.col(FREQUENCY_HOLDOUT) > 0)
        held = days.where(
            (F.col(PURCHASE_DATE) > F.lit(calibration_end)) & (F.col(PURCHASE_DATE) <= F.lit(holdout_end))
        ).join(buyers.select(CUSTOMER_ID), on=CUSTOMER_ID, how="left_semi")
        weeks = weeks.unionByName(held.select(week))
    counts = weeks.groupBy("week_idx").agg(F.count(F.lit(1)).alias(COUNT)).toPandas()
    weekly = np.zeros(n_weeks)
    if not counts.empty:
        idx = counts["week_idx"].to_numpy(np.int64)
        np.add.at(weekly, np.clip(idx, 0, n_weeks - 1), counts[COUNT].to_numpy(np.float64))
    first_idx = np.array([(d - start).days // 7 for d in cohorts[FIRST_PURCHASE_DATE]], dtype=np.int64)
    np.subtract.at(weekly, np.clip(first_idx, 0, n_weeks - 1), cohorts[COUNT].to_numpy(np.float64))
    unit = unit_days(time_unit)
    cohort_day = np.array([(d - start).days for d in cohorts[FIRST_PURCHASE_DATE]], dtype=np.float64)
    cohort_n = cohorts[COUNT].to_numpy(np.float64)
    # last day of each week, capped at the holdout end; elapsed days since each cohort's first day
    week_end_day = np.minimum(np.arange(1, n_weeks + 1) * 7 - 1, (holdout_end - start).days).astype(
        np.float64
    )
    elapsed = np.maximum(week_end_day[None, :] - cohort_day[:, None], 0.0) / unit
    with np.errstate(all="ignore"):
        ex = M.expected_purchases_new(fit.model, fit.values, elapsed)
    expected_cum = (np.nan_to_num(ex) * cohort_n[:, None]).sum(axis=0)
    week_end = [start + dt.timedelta(days=int(d)) for d in week_end_day]
    return pd.DataFrame(
        {
            "week": np.arange(1, n_weeks + 1),
            "week_end": week_end,
            "actual_cum": np.cumsum(weekly),
            "expected_cum": expected_cum,
            "calibration": [d <= calibration_end for d in week_end],
        }
    )


def frequency_histogram(
    stats: M.RfmStats, fit: M.FitResult, buckets: int = HISTOGRAM_BUCKETS, seed: int = 42
) -> pd.DataFrame:
    """Customers by calibration repeat purchases 0..buckets-1 and 'buckets+', actual vs model.

    BG/NBD and MBG/NBD use the closed-form P(X(T)=x) per distinct T; Pareto/NBD, whose P(X(t)=x)
    needs a long hypergeometric series, is simulated from the fitted parameters (seeded).
    """
    n = stats.n_customers
    actual = np.array(
        [stats.weight[stats.x == k].sum() for k in range(buckets)] + [stats.weight[stats.x >= buckets].sum()]
    )
    uniq_T, inv = np.unique(stats.T, return_inverse=True)
    w_T = np.bincount(inv.ravel(), weights=stats.weight)
    if fit.model in (M.BGNBD, M.MBGNBD):
        with np.errstate(all="ignore"):
            probs = np.array(
                [np.dot(w_T, M.prob_n_purchases(fit.model, fit.values, uniq_T, k)) for k in range(buckets)]
            )
    else:
        rng = np.random.default_rng(seed)
        T_draw = rng.choice(uniq_T, size=SIMULATION_DRAWS, p=w_T / w_T.sum())
        x_sim, _ = M.simulate(fit.model, fit.values, T_draw, seed=seed)
        probs = np.array([np.mean(x_sim == k) for k in range(buckets)]) * n
    expected = np.append(probs, n - probs.sum())
    labels = [str(k) for k in range(buckets)] + [f"{buckets}+"]
    return pd.DataFrame({"repeat_purchases": labels, "actual": actual, "expected": expected})


def histogram_chi2(hist: pd.DataFrame) -> float:
    """Pearson chi-square of the frequency histogram (a fit summary, not a formal test here)."""
    e = hist["expected"].to_numpy(np.float64)
    a = hist["actual"].to_numpy(np.float64)
    ok = e > 0
    return float((((a - e) ** 2)[ok] / e[ok]).sum())


# ------------------------------------------------------------------------------------------------
# Figures (matplotlib object API: no global pyplot state, nothing written)
# ------------------------------------------------------------------------------------------------
def tracking_figure(curve: pd.DataFrame, model: str, calibration_end: dt.date) -> Figure:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    ax.plot(curve["week"], curve["actual_cum"], label="actual", color="black")
    ax.plot(curve["week"], curve["expected_cum"], label=f"{model} model", linestyle="--", color="tab:blue")
    cal_weeks = curve.loc[curve["calibration"], "week"]
    if len(cal_weeks) and len(cal_weeks) < len(curve):
        ax.axvline(float(cal_weeks.max()) + 0.5, color="grey", linestyle=":", label="calibration end")
    ax.set_xlabel("week")
    ax.set_ylabel("cumulative repeat purchases")
    ax.set_title("Tracking cumulative repeat purchases")
    ax.legend()
    fig.tight_layout()
    return fig


def histogram_figure(hist: pd.DataFrame, model: str) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    pos = np.arange(len(hist))
    ax.bar(pos - 0.2, hist["actual"], width=0.4, label="actual", color="dimgrey")
    ax.bar(pos + 0.2, hist["expected"], width=0.4, label=f"{model} model", color="tab:blue")
    ax.set_xticks(pos, hist["repeat_purchases"])
    ax.set_xlabel("repeat purchases in calibration")
    ax.set_ylabel("customers")
    ax.set_title("Frequency of repeat purchases")
    ax.legend()
    fig.tight_layout()
    return fig


def conditional_figure(by_freq: pd.DataFrame, model: str) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    labels = [str(int(v)) for v in by_freq["frequency"]]
    if labels:
        labels[-1] = labels[-1] + "+"
    ax.plot(labels, by_freq["actual"], marker="o", color="black", label="actual")
    ax.plot(
        labels, by_freq["predicted"], marker="s", linestyle="--", color="tab:blue", label=f"{model} model"
    )
    ax.set_xlabel("repeat purchases in calibration")
    ax.set_ylabel("mean purchases in holdout")
    ax.set_title("Conditional expectation: holdout purchases by calibration frequency")
    ax.legend()
    fig.tight_layout()
    return fig
