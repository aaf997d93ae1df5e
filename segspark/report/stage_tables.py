"""The stage tables the report shows, reduced to small aggregates: the RFM grid, the cohort retention
slice, LTV:CAC, segment transitions (and the share that moved), drift and the CLV histogram.

Groups below the minimum segment size ``k`` are hidden (and counted), never shown on their own.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.report.aggregates import small_table
from segspark.report.data import ALL, DRIFT_TOTAL, OTHER, SegmentView
from segspark.schema import (
    CLV,
    COHORT_MONTH,
    COHORT_SIZE,
    CUSTOMERS,
    DIMENSION,
    DIMENSION_VALUE,
    F_SCORE,
    FROM_SEGMENT,
    LEVEL,
    MONETARY,
    MONTHS_SINCE_FIRST,
    NEW_CUSTOMERS,
    R_SCORE,
    RETENTION_RATE,
    REVENUE,
    TO_SEGMENT,
)


def rfm_grid_table(grid: DataFrame | None, segments: DataFrame, k: int) -> tuple[pd.DataFrame | None, int]:
    """R x F customers (and revenue); cells with fewer than ``k`` customers are blanked."""
    if grid is None:
        if R_SCORE not in segments.columns or F_SCORE not in segments.columns:
            return None, 0
        grid = (
            segments.where(F.col(R_SCORE).isNotNull() & F.col(F_SCORE).isNotNull())
            .groupBy(R_SCORE, F_SCORE)
            .agg(F.count(F.lit(1)).alias(CUSTOMERS), F.sum(MONETARY).alias(REVENUE))
        )
    pdf = small_table(grid.select(R_SCORE, F_SCORE, CUSTOMERS, REVENUE), S.RFM_GRID)
    pdf = pdf.groupby([R_SCORE, F_SCORE], as_index=False)[[CUSTOMERS, REVENUE]].sum()
    hidden = int((pdf[CUSTOMERS] < k).sum())
    pdf.loc[pdf[CUSTOMERS] < k, [CUSTOMERS, REVENUE]] = np.nan
    return pdf, hidden


def cohort_table(
    cohorts: DataFrame, as_of: dt.date | None, k: int, max_cohorts: int
) -> tuple[pd.DataFrame | None, int, dict[int, float]]:
    """Newest ``max_cohorts`` cohorts (dimension 'all'): retention matrix, hidden cohorts, month-m means."""
    part = cohorts.where((F.col(DIMENSION) == F.lit(ALL)) & (F.col(DIMENSION_VALUE) == F.lit(ALL)))
    # one cell per cohort and month: a few thousand rows even for ten years of monthly cohorts
    cells = small_table(
        part.select(COHORT_MONTH, MONTHS_SINCE_FIRST, COHORT_SIZE, RETENTION_RATE), S.COHORT_RETENTION
    )
    if cells.empty:
        return None, 0, {}
    newest = sorted(cells[COHORT_MONTH].unique())[-max_cohorts:]
    cells = cells[cells[COHORT_MONTH].isin(newest)]
    small = cells[COHORT_SIZE] < k
    hidden = int(cells.loc[small, COHORT_MONTH].nunique())
    cells = cells[~small]
    if cells.empty:
        return None, hidden, {}
    cells[COHORT_MONTH] = pd.to_datetime(cells[COHORT_MONTH])
    # the month of as_of_date is still running: its cells are partial and stay out of the means
    as_of_month = pd.Timestamp(as_of.replace(day=1)) if as_of else cells[COHORT_MONTH].max()
    elapsed = (as_of_month.year - cells[COHORT_MONTH].dt.year) * 12 + (
        as_of_month.month - cells[COHORT_MONTH].dt.month
    )
    complete = cells[cells[MONTHS_SINCE_FIRST] < elapsed]
    at: dict[int, float] = {}
    for m in (1, 3, 6, 12):
        c = complete[complete[MONTHS_SINCE_FIRST] == m]
        if not c.empty and c[COHORT_SIZE].sum() > 0:
            at[m] = float((c[RETENTION_RATE] * c[COHORT_SIZE]).sum() / c[COHORT_SIZE].sum())
    matrix = cells.pivot_table(
        index=COHORT_MONTH, columns=MONTHS_SINCE_FIRST, values=RETENTION_RATE, aggfunc="first"
    )
    # every month between the first and the last cohort keeps its row: a month without new customers
    # (or hidden below k) shows empty instead of vanishing from the heatmap
    months = pd.date_range(matrix.index.min(), matrix.index.max(), freq="MS")
    matrix = matrix.reindex(months)
    matrix.index = [d.strftime("%Y-%m") for d in matrix.index]
    return matrix.sort_index(), hidden, at


def ltv_cac_table(ltv: DataFrame, k: int) -> tuple[pd.DataFrame | None, int]:
    """Channel and segment rows of the LTV:CAC table; groups with fewer than ``k`` new customers hidden."""
    pdf = small_table(
        ltv.where(F.col(LEVEL).isin("channel", "segment")).drop(S.RUN_ID, S.AS_OF_DATE), S.LTV_CAC
    )
    if pdf.empty:
        return None, 0
    small = pd.to_numeric(pdf[NEW_CUSTOMERS], errors="coerce").fillna(0) < k
    return pdf[~small].reset_index(drop=True), int(small.sum())


def transition_table(
    transitions: DataFrame, views: dict[str, SegmentView], k: int
) -> tuple[pd.DataFrame, int, bool, dict[str, float]]:
    """Transition counts with small segments relabelled Other; flows below ``k`` hidden and counted.

    Also returns the drift per dimension (:func:`moved_shares` on the unmerged counts)."""
    pdf = small_table(
        transitions.select(DIMENSION, FROM_SEGMENT, TO_SEGMENT, CUSTOMERS), S.SEGMENT_TRANSITIONS
    )
    first_run = bool(pdf[FROM_SEGMENT].isna().all()) if len(pdf) else True
    parts = []
    for dim, g in pdf.groupby(DIMENSION, sort=False):
        view = views.get(str(dim))
        shown = set(view.names()) if view is not None else set()

        def relabel(s: pd.Series, shown: set[str] = shown) -> pd.Series:
            return s.where(s.isna() | s.isin(shown), OTHER)

        g = g.assign(**{FROM_SEGMENT: relabel(g[FROM_SEGMENT]), TO_SEGMENT: relabel(g[TO_SEGMENT])})
        parts.append(
            g.groupby([DIMENSION, FROM_SEGMENT, TO_SEGMENT], dropna=False, as_index=False)[CUSTOMERS].sum()
        )
    out = pd.concat(parts, ignore_index=True) if parts else pdf.iloc[0:0]
    small = out[CUSTOMERS] < k
    return out[~small].reset_index(drop=True), int(small.sum()), first_run, moved_shares(pdf)


def moved_shares(flows: pd.DataFrame) -> dict[str, float]:
    """Per dimension: share of customers present in both runs whose segment changed (drift)."""
    both = flows[flows[FROM_SEGMENT].notna() & flows[TO_SEGMENT].notna()]
    out: dict[str, float] = {}
    for dim, g in both.groupby(DIMENSION):
        n = float(g[CUSTOMERS].sum())
        if n:
            out[str(dim)] = float(g.loc[g[FROM_SEGMENT] != g[TO_SEGMENT], CUSTOMERS].sum()) / n
    return out


def clv_histogram(segments: DataFrame, bins: int = 30) -> tuple[pd.DataFrame | None, dict[str, float]]:
    """CLV histogram: ``bins`` equal bins from min(0, p1) to the 99th percentile, the rest in the last bin."""
    q = segments.agg(
        F.percentile_approx(F.col(CLV), [0.01, 0.5, 0.9, 0.99], 1000).alias("q"),
        F.count(F.col(CLV)).alias("n"),
        F.sum(F.col(CLV)).alias("s"),
    ).first()
    if q is None or not q["n"]:
        return None, {}
    p01, p50, p90, p99 = (float(v) for v in q["q"])
    quantiles = {"p50": p50, "p90": p90, "p99": p99, "n": float(q["n"]), "sum": float(q["s"] or 0.0)}
    lo = min(0.0, p01)
    hi = p99 if p99 > lo else lo + 1.0
    width = (hi - lo) / bins
    idx = F.least(
        F.greatest(F.floor((F.col(CLV) - F.lit(lo)) / F.lit(width)), F.lit(0)), F.lit(bins - 1)
    ).cast("int")
    counts = (
        segments.where(F.col(CLV).isNotNull())
        .groupBy(idx.alias("bin"))
        .agg(F.count(F.lit(1)).alias(CUSTOMERS))
        .toPandas()
    )
    full = pd.DataFrame({"bin": range(bins)}).merge(counts, on="bin", how="left").fillna({CUSTOMERS: 0})
    full["bin_lo"] = lo + full["bin"] * width
    full["bin_hi"] = full["bin_lo"] + width
    return full[["bin_lo", "bin_hi", CUSTOMERS]], quantiles


def drift_table(drift: DataFrame) -> pd.DataFrame:
    """One row per drift dimension (its total PSI and status); bucket rows stay out of the report,
    since a bucket's share can describe fewer customers than the minimum segment size."""
    if "bucket" in drift.columns:
        drift = drift.where(F.col("bucket") == F.lit(DRIFT_TOTAL))
        keep = [c for c in ("dimension", "kind", "psi", "status") if c in drift.columns]
        return small_table(drift.select(*keep), S.DRIFT, 5_000).sort_values(keep[:1]).reset_index(drop=True)
    pdf = small_table(drift, S.DRIFT, 5_000)
    return pdf.drop(columns=[c for c in (S.RUN_ID, S.AS_OF_DATE) if c in pdf.columns])
