"""Reduce a run's tables to the small pandas aggregates the report is made of.

Only aggregates reach the driver: per-segment sufficient statistics (counts and sums, so merged
groups stay exact), the RFM grid, a slice of the cohort table, LTV:CAC rows, transition counts,
quarantine counts and a CLV histogram. Never a customer row.

The report reads tables only: model results come from ``clv_fit`` (with the fits' validity rows,
see :func:`clv_validity`), ``churn_metrics`` and ``clustering_sweep``; lineage (inputs with their
rows in / clean / quarantined, output table versions, config hash, code version, engine, warnings)
from the run's row of ``runs``, which the pipeline writes before the report. Nothing is taken
from memory or recomputed, so ``segspark report`` on a run's tables rebuilds that run's report.

Every input except ``customer_segments`` is optional: a stage that was disabled or had no input
leaves its table out, and the report says so in a note instead of failing.

k-anonymity: within each segment type, a segment with fewer than ``report.min_segment_size``
customers is never shown on its own. Such segments are merged into "Other" (and counted); if
"Other" is itself below the threshold it is suppressed too. The same rule hides small cohorts,
acquisition channels, transition flows and clusters.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.config import Settings
from segspark.errors import InputError
from segspark.ingest import blank_to_null
from segspark.report.data import (
    ADDITIVE,
    ALL,
    DRIFT_TOTAL,
    KPI_MERGE,
    LIFECYCLE_ORDER,
    MEAN_MEASURES,
    OTHER,
    P_ALIVE,
    PIPELINE_COMMANDS,
    PREVIOUS_SUMMARY,
    SEGMENT_TYPES,
    UNASSIGNED,
    ReportData,
    RunInfo,
    RunLineage,
    SegmentView,
    clv_validity,
)
from segspark.schema import (
    CHURN_RISK,
    CLUSTER_ID,
    CLV,
    COHORT_MONTH,
    COHORT_SIZE,
    CUSTOMERS,
    DIMENSION,
    DIMENSION_VALUE,
    F_SCORE,
    FREQUENCY,
    FROM_SEGMENT,
    KPI,
    LEVEL,
    LIFECYCLE_STAGE,
    M_SCORE,
    MONETARY,
    MONTHS_SINCE_FIRST,
    NEW_CUSTOMERS,
    R_SCORE,
    RETENTION_RATE,
    REVENUE,
    RFM_SEGMENT,
    SEGMENT,
    SEGMENT_TYPE,
    TO_SEGMENT,
    VALUE,
    VALUE_TIER,
)

log = logging.getLogger(__name__)


def _scalars(data: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (data or {}).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float | np.integer | np.floating) and math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def _opt(df: DataFrame, name: str, type_: str) -> Column:
    return (F.col(name) if name in df.columns else F.lit(None)).cast(type_).alias(name)


def _additive(df: pd.DataFrame) -> list[str]:
    return [c for c in ADDITIVE if c in df.columns]


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num / den.where(den > 0)


def _small(df: DataFrame, name: str, limit: int = 50_000) -> pd.DataFrame:
    """``toPandas`` for tables that are aggregates by construction; refuses anything that is not."""
    pdf = df.limit(limit + 1).toPandas()
    if len(pdf) > limit:
        raise InputError(f"table '{name}': more than {limit} rows; the report reads aggregate tables only")
    return pdf


def segment_statistics(
    segments: DataFrame, high_churn_risk: float, max_cells: int = 200_000
) -> tuple[pd.DataFrame, list[str]]:
    """Sufficient statistics per (segment_type, segment, lifecycle stage), from one Spark aggregation.

    Spark groups the customers by every combination of their segment labels and lifecycle stage
    (a few hundred cells: the labels have low cardinality) into counts and sums; pandas then rolls
    the cells up per segment type (and ``all``). Counts and sums add up, so the result is exact.
    Returns the statistics and the segment types present.
    """
    missing = [c for c in (S.CUSTOMER_ID, MONETARY, FREQUENCY) if c not in segments.columns]
    if missing:
        raise InputError(f"table 'customer_segments': missing column(s) {', '.join(missing)} for the report")
    types = [t for t in SEGMENT_TYPES if t in segments.columns]
    labels = [F.coalesce(F.col(t).cast("string"), F.lit(UNASSIGNED)).alias(f"seg__{t}") for t in types]
    stage = _opt(segments, LIFECYCLE_STAGE, "string").alias("_stage")
    freq, churn = F.col(FREQUENCY).cast("double"), _opt(segments, CHURN_RISK, "double")
    aggs = [
        F.count(F.lit(1)).alias(CUSTOMERS),
        F.count_if(freq > 0).alias("buyers"),
        F.count_if(freq >= 2).alias("repeat_buyers"),
        F.sum(F.coalesce(F.col(MONETARY).cast("double"), F.lit(0.0))).alias(REVENUE),
        F.count_if(churn >= F.lit(high_churn_risk)).alias("high_churn_risk"),
    ]
    for m in MEAN_MEASURES:
        x = _opt(segments, m, "double")
        aggs += [F.sum(x).alias(f"sum_{m}"), F.count(x).alias(f"n_{m}")]
    spend = F.col(MONETARY).cast("double")
    aggs.append(F.sum(spend * spend).alias("sumsq_monetary"))
    cells = _small(
        segments.groupBy(*labels, stage).agg(*aggs), S.CUSTOMER_SEGMENTS + " (segment cells)", max_cells
    )
    for c in ADDITIVE:
        cells[c] = pd.to_numeric(cells[c], errors="coerce").fillna(0.0)
    parts = []
    for t in [*types, ALL]:
        key = cells[f"seg__{t}"] if t != ALL else pd.Series(ALL, index=cells.index)
        g = cells.assign(**{SEGMENT: key}).groupby([SEGMENT, "_stage"], dropna=False, as_index=False)[
            list(ADDITIVE)
        ]
        parts.append(g.sum().assign(**{SEGMENT_TYPE: t}))
    stats = pd.concat(parts, ignore_index=True)
    return stats[[SEGMENT_TYPE, SEGMENT, "_stage", *ADDITIVE]], types


# Demographic segmentation: the attributes of customer_features the report breaks down by.
DEMOGRAPHICS_B2C: tuple[str, ...] = ("age_band", S.COUNTRY, S.GENDER, S.INCOME_BAND)


DEMOGRAPHICS_B2B: tuple[str, ...] = (S.INDUSTRY, S.COMPANY_SIZE)


UNKNOWN = "unknown"  # a customer without the attribute (no CRM row, or the CRM left it empty)


def demographic_tables(
    segments: DataFrame, features: DataFrame, attributes: tuple[str, ...], k: int, max_groups: int = 20_000
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Customers, revenue, mean CLV and mean churn risk per value of each demographic attribute.

    One Spark aggregation: the customers' attribute values are stacked as (attribute, value) pairs
    and grouped, so only counts and sums per group reach the driver (groups are the attributes'
    values: bands, countries; at most ``max_groups``). Groups smaller than ``k`` merge into "Other"
    (:func:`k_anonymize`). An attribute no customer has is left out and named in the notes.
    """
    present = [a for a in attributes if a in features.columns]
    notes = [f"{a.replace('_', ' ')}: not in customer_features" for a in attributes if a not in present]
    if not present:
        return {}, notes
    demo = features.select(S.CUSTOMER_ID, *present)
    scores = [c for c in (CLV, CHURN_RISK) if c in segments.columns]
    base = segments.select(S.CUSTOMER_ID, MONETARY, FREQUENCY, *scores)
    joined = base.join(demo, on=S.CUSTOMER_ID, how="left")
    pairs = F.explode(
        F.array(
            *[
                F.struct(
                    F.lit(a).alias("attribute"),
                    F.coalesce(blank_to_null(F.col(a)), F.lit(UNKNOWN)).alias("value"),
                )
                for a in present
            ]
        )
    ).alias("d")
    aggs = [
        F.count(F.lit(1)).alias(CUSTOMERS),
        F.count_if(F.col(FREQUENCY) > 0).alias("buyers"),
        F.sum(F.coalesce(F.col(MONETARY).cast("double"), F.lit(0.0))).alias(REVENUE),
    ]
    for m in scores:
        aggs += [F.sum(F.col(m).cast("double")).alias(f"sum_{m}"), F.count(F.col(m)).alias(f"n_{m}")]
    grouped = (
        joined.select(pairs, MONETARY, FREQUENCY, *scores)
        .groupBy(F.col("d.attribute").alias("attribute"), F.col("d.value").alias(SEGMENT))
        .agg(*aggs)
    )
    cells = _small(grouped, S.CUSTOMER_FEATURES + " (demographic groups)", max_groups)
    out: dict[str, pd.DataFrame] = {}
    for a in present:
        part = cells[cells["attribute"] == a].drop(columns=["attribute"])
        if part.empty or set(part[SEGMENT]) == {UNKNOWN}:
            notes.append(f"{a.replace('_', ' ')}: no customer has it")
            continue
        total_c, total_r = float(part[CUSTOMERS].sum()), float(part[REVENUE].sum())
        shown, _, _, _ = k_anonymize(part.reset_index(drop=True), k)
        shown = shown.assign(
            customer_share=shown[CUSTOMERS] / total_c if total_c else np.nan,
            revenue_share=shown[REVENUE] / total_r if total_r else np.nan,
        )
        for m in scores:
            shown[f"mean_{m}"] = _ratio(shown[f"sum_{m}"], shown[f"n_{m}"])
        out[a] = shown.reset_index(drop=True)
    return out, notes


def _derive(table: pd.DataFrame, type_customers: float, type_revenue: float) -> pd.DataFrame:
    out = table.copy()
    out["customer_share"] = out[CUSTOMERS] / type_customers if type_customers else np.nan
    out["revenue_share"] = out[REVENUE] / type_revenue if type_revenue else np.nan
    for m in MEAN_MEASURES:
        out[f"mean_{m}"] = _ratio(out[f"sum_{m}"], out[f"n_{m}"])
    # population standard deviation of revenue per customer, from the sums (exact, additive)
    var = _ratio(out["sumsq_monetary"], out[f"n_{MONETARY}"]) - out[f"mean_{MONETARY}"] ** 2
    out["sd_monetary"] = np.sqrt(var.clip(lower=0.0))
    out["repeat_rate"] = _ratio(out["repeat_buyers"], out["buyers"])
    out["high_churn_risk_share"] = _ratio(out["high_churn_risk"], out[f"n_{CHURN_RISK}"])
    return out


def k_anonymize(
    per_segment: pd.DataFrame, k: int, order: list[str] | None = None
) -> tuple[pd.DataFrame, int, int, int]:
    """Merge segments with fewer than ``k`` customers into "Other" (sums of additive columns).

    Returns (table, merged segments, merged customers, suppressed customers); "Other" is dropped
    (suppressed) when it is itself smaller than ``k``. Rows keep ``order`` when given, else
    descending size; "Other" comes last.
    """
    small = per_segment[CUSTOMERS] < k
    big = per_segment[~small].copy()
    merged = per_segment[small]
    n_merged, c_merged, suppressed = len(merged), int(merged[CUSTOMERS].sum()), 0
    if n_merged:
        existing = big[big[SEGMENT] == OTHER]
        other = merged[_additive(merged)].sum(numeric_only=True)
        if not existing.empty:
            other = other + existing[_additive(existing)].sum(numeric_only=True)
            big = big[big[SEGMENT] != OTHER]
        if other[CUSTOMERS] >= k:
            row = {SEGMENT: OTHER, **{c: float(other[c]) for c in other.index}}
            big = pd.concat([big, pd.DataFrame([row])], ignore_index=True)
        else:
            suppressed = int(other[CUSTOMERS])
    if order:
        rank = {s: i for i, s in enumerate(order)}
        big = big.assign(_o=[rank.get(s, len(rank)) for s in big[SEGMENT]], _c=-big[CUSTOMERS])
        big = big.sort_values(["_o", "_c", SEGMENT]).drop(columns=["_o", "_c"])
    else:
        big = big.assign(_c=-big[CUSTOMERS]).sort_values(["_c", SEGMENT]).drop(columns=["_c"])
    is_other = big[SEGMENT] == OTHER
    big = pd.concat([big[~is_other], big[is_other]], ignore_index=True)
    return big.reset_index(drop=True), n_merged, c_merged, suppressed


def segment_views(
    stats: pd.DataFrame, types: list[str], k: int, order: dict[str, list[str]]
) -> tuple[dict[str, SegmentView], dict[str, float]]:
    """k-anonymous per-type tables and lifecycle mixes from :func:`segment_statistics`."""
    views: dict[str, SegmentView] = {}
    per = stats.groupby([SEGMENT_TYPE, SEGMENT], as_index=False)[list(ADDITIVE)].sum()
    everyone = per[per[SEGMENT_TYPE] == ALL]
    totals_row = (
        everyone[list(ADDITIVE)].sum() if not everyone.empty else pd.Series(0.0, index=list(ADDITIVE))
    )
    totals = {c: float(totals_row[c]) for c in ADDITIVE}
    for t in types:
        table = per[per[SEGMENT_TYPE] == t].drop(columns=[SEGMENT_TYPE])
        shown, n_merged, c_merged, suppressed = k_anonymize(table, k, order.get(t))
        shown = _derive(shown, totals[CUSTOMERS], totals[REVENUE])
        mix = None
        part = stats[(stats[SEGMENT_TYPE] == t) & stats["_stage"].notna()]
        if not part.empty:
            names = set(shown[SEGMENT])
            seg = part[SEGMENT].where(part[SEGMENT].isin(names), OTHER)
            mix = (
                part.assign(**{SEGMENT: seg})
                .pivot_table(index=SEGMENT, columns="_stage", values=CUSTOMERS, aggfunc="sum", fill_value=0)
                .reindex(index=[s for s in shown[SEGMENT] if s in set(seg)])
            )
            mix = mix[
                [s for s in LIFECYCLE_ORDER if s in mix.columns]
                + [s for s in mix.columns if s not in LIFECYCLE_ORDER]
            ]
            mix.columns.name = None
        views[t] = SegmentView(t, shown, mix, n_merged, c_merged, suppressed)
    return views, totals


def kpi_tables(kpis: DataFrame, views: dict[str, SegmentView], k: int) -> dict[str, pd.DataFrame]:
    """segment_kpis pivoted per segment type (segment x kpi), small segments merged into Other."""
    pdf = _small(
        kpis.select(SEGMENT_TYPE, SEGMENT, KPI, F.col(VALUE).cast("double").alias(VALUE)), S.SEGMENT_KPIS
    )
    out: dict[str, pd.DataFrame] = {}
    for t, g in pdf.groupby(SEGMENT_TYPE, sort=False):
        wide = g.pivot_table(index=SEGMENT, columns=KPI, values=VALUE, aggfunc="first")
        wide.columns.name = None
        if "customers" not in wide.columns:
            continue
        small = wide["customers"] < k
        big, merged = wide[~small], wide[small]
        if len(merged):
            row: dict[str, float] = {}
            w = merged["customers"]
            for kpi in wide.columns:
                how = KPI_MERGE.get(kpi)
                if how == "sum":
                    row[kpi] = float(merged[kpi].sum())
                elif how == "weighted" and w.sum() > 0 and merged[kpi].notna().all():
                    row[kpi] = float((merged[kpi] * w).sum() / w.sum())
                elif how == "aov" and "orders_per_customer" in merged and "revenue" in merged:
                    purchases = float((merged["orders_per_customer"] * w).sum())
                    row[kpi] = float(merged["revenue"].sum()) / purchases if purchases else math.nan
                else:
                    row[kpi] = math.nan
            if row.get("customers", 0) >= k:
                big = pd.concat([big, pd.DataFrame([row], index=[OTHER])])
        view = views.get(str(t))
        if view is not None:
            order = [s for s in view.names() if s in big.index] + [
                s for s in big.index if s not in view.names()
            ]
            big = big.reindex(order)
        out[str(t)] = big
    return out


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
    pdf = _small(grid.select(R_SCORE, F_SCORE, CUSTOMERS, REVENUE), S.RFM_GRID)
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
    cells = _small(
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
    matrix.index = [d.strftime("%Y-%m") for d in matrix.index]
    return matrix.sort_index(), hidden, at


def ltv_cac_table(ltv: DataFrame, k: int) -> tuple[pd.DataFrame | None, int]:
    """Channel and segment rows of the LTV:CAC table; groups with fewer than ``k`` new customers hidden."""
    pdf = _small(ltv.where(F.col(LEVEL).isin("channel", "segment")).drop(S.RUN_ID, S.AS_OF_DATE), S.LTV_CAC)
    if pdf.empty:
        return None, 0
    small = pd.to_numeric(pdf[NEW_CUSTOMERS], errors="coerce").fillna(0) < k
    return pdf[~small].reset_index(drop=True), int(small.sum())


def transition_table(
    transitions: DataFrame, views: dict[str, SegmentView], k: int
) -> tuple[pd.DataFrame, int, bool, dict[str, float]]:
    """Transition counts with small segments relabelled Other; flows below ``k`` hidden and counted.

    Also returns the drift per dimension (:func:`moved_shares` on the unmerged counts)."""
    pdf = _small(transitions.select(DIMENSION, FROM_SEGMENT, TO_SEGMENT, CUSTOMERS), S.SEGMENT_TRANSITIONS)
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


def _plain(value: Any) -> Any:
    """A Spark Row (struct) or map as a plain dict; anything else unchanged."""
    if hasattr(value, "asDict"):
        return value.asDict(recursive=True)
    return value


def run_lineage(runs: DataFrame, run_id: str) -> RunLineage | None:
    """The run's row of ``runs``: the latest ``ended_at`` among the pipeline's commands (succeeded
    first), else among any command's rows for the run id; None when the run left no row."""
    q = runs.where(F.col(S.RUN_ID) == F.lit(run_id)) if S.RUN_ID in runs.columns else runs
    rows = [r.asDict(recursive=True) for r in q.limit(1000).collect()]  # a row per attempt of one run
    if not rows:
        return None
    pipeline = [r for r in rows if r.get("command") in PIPELINE_COMMANDS]
    pool = pipeline or rows
    succeeded = [r for r in pool if r.get("status") == "succeeded"]
    pool = succeeded or pool
    epoch = dt.datetime.min.replace(tzinfo=dt.timezone.utc)

    def ended(r: dict[str, Any]) -> dt.datetime:
        t = r.get("ended_at")
        if not isinstance(t, dt.datetime):
            return epoch
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)

    row = max(pool, key=ended)
    inputs = [
        {
            "name": i.get("name"),
            "location": i.get("location") or "",
            "format": i.get("format") or "",
            "version": i.get("version"),
            "rows_in": i.get("rows_in"),
            "rows_clean": i.get("rows_clean"),
            "rows_quarantined": i.get("rows_quarantined"),
        }
        for i in (_plain(x) for x in row.get("inputs") or [])
    ]
    outputs = {str(o["table"]): o.get("version") for o in (_plain(x) for x in row.get("outputs") or [])}
    steps = {str(k): float(v) for k, v in (row.get("step_seconds") or {}).items() if v is not None}
    return RunLineage(
        command=row.get("command"),
        status=row.get("status"),
        started_at=row.get("started_at"),
        ended_at=row.get("ended_at"),
        config_hash=row.get("config_hash"),
        code_version=row.get("code_version"),
        engine=row.get("engine"),
        mlflow_run_id=row.get("mlflow_run_id"),
        inputs=inputs,
        outputs=outputs,
        step_seconds=steps,
        warnings=[str(w) for w in row["warnings"] or [] if w] if "warnings" in row else None,
    )


def quality_table(
    run_id: str, quarantine: DataFrame | None, lineage: RunLineage | None
) -> pd.DataFrame | None:
    """Quarantined rows by source table and rule, from the run's quarantine rows; without that
    table, the per-input totals of the runs row (rule not recorded)."""
    if quarantine is not None and S.Q_RULE in quarantine.columns:
        q = quarantine
        if S.RUN_ID in q.columns and run_id:
            q = q.where(F.col(S.RUN_ID) == F.lit(run_id))
        src = S.Q_SOURCE_TABLE if S.Q_SOURCE_TABLE in q.columns else None
        keys = [F.col(src).alias("source_table")] if src else [F.lit("").alias("source_table")]
        # one row per (source table, rule): the quality rules are a fixed list
        counts = q.groupBy(*keys, F.col(S.Q_RULE).alias("rule")).agg(F.count(F.lit(1)).alias("rows"))
        pdf = _small(counts, S.QUARANTINE + " (rule counts)", 5_000)
        return pdf.sort_values(["source_table", "rows", "rule"], ascending=[True, False, True]).reset_index(
            drop=True
        )
    if lineage is None or not lineage.inputs:
        return None
    rows = [
        {
            "source_table": i["name"],
            "rule": "(all rules; no quarantine table)",
            "rows": int(i["rows_quarantined"]),
        }
        for i in lineage.inputs
        if i.get("rows_quarantined")
    ]
    return pd.DataFrame(rows, columns=["source_table", "rule", "rows"])


def _drop_stamp(df: DataFrame) -> DataFrame:
    return df.drop(*[c for c in (S.RUN_ID, S.AS_OF_DATE) if c in df.columns])


def clustering_info(
    sweep_table: DataFrame | None, profiles_table: DataFrame | None, k: int
) -> dict[str, Any] | None:
    """The sweep, the choice and its features (from ``clustering_sweep``) and the profiles (from
    ``cluster_profiles``; clusters below ``k`` customers dropped and counted)."""
    from segspark.clustering.results import sweep_from_table

    if sweep_table is None and profiles_table is None:
        return None
    result = None
    if sweep_table is not None:
        # a row per candidate: a few dozen rows
        result = sweep_from_table(_small(_drop_stamp(sweep_table), S.CLUSTERING_SWEEP, 5_000))
    profiles = None
    if profiles_table is not None:
        profiles = _small(_drop_stamp(profiles_table), S.CLUSTER_PROFILES)
        if CLUSTER_ID in profiles.columns:
            profiles = profiles.sort_values(CLUSTER_ID, kind="stable").reset_index(drop=True)
    if result is None and profiles is None:
        return None
    chosen = dict((result or {}).get("chosen") or {})
    features = list((result or {}).get("features") or [])
    hidden = 0
    if profiles is not None and "size" in profiles.columns:
        small = profiles["size"] < k
        hidden = int(small.sum())
        profiles = profiles[~small].reset_index(drop=True)
    if not features and profiles is not None:
        features = [c[2:] for c in profiles.columns if c.startswith("z_")]
    sweep = (result or {}).get("sweep")
    return {
        "sweep": sweep if isinstance(sweep, pd.DataFrame) and not sweep.empty else None,
        "profiles": profiles,
        "chosen": chosen,
        "features": features,
        "customers": (result or {}).get("customers"),
        "hidden_clusters": hidden,
    }


def drift_table(drift: DataFrame) -> pd.DataFrame:
    """One row per drift dimension (its total PSI and status); bucket rows stay out of the report,
    since a bucket's share can describe fewer customers than the minimum segment size."""
    if "bucket" in drift.columns:
        drift = drift.where(F.col("bucket") == F.lit(DRIFT_TOTAL))
        keep = [c for c in ("dimension", "kind", "psi", "status") if c in drift.columns]
        return _small(drift.select(*keep), S.DRIFT, 5_000).sort_values(keep[:1]).reset_index(drop=True)
    pdf = _small(drift, S.DRIFT, 5_000)
    return pdf.drop(columns=[c for c in (S.RUN_ID, S.AS_OF_DATE) if c in pdf.columns])


def clv_fit_from_table(pdf: pd.DataFrame) -> dict[str, Any]:
    """``{"fit": ..., "validation": ...}`` (the CLV stage's shape) from ``clv_fit`` rows."""
    from segspark.clv import fit_from_table

    return fit_from_table(pdf)


def clv_info(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    fit = dict(result.get("fit") or {})
    validation = result.get("validation") or {}
    return {
        "model": fit.get("model"),
        "reason": fit.get("reason"),
        "time_unit": fit.get("time_unit"),
        "calibration_end": fit.get("calibration_end"),
        "holdout_end": fit.get("holdout_end"),
        "params": {k: float(v) for k, v in (fit.get("params") or {}).items() if isinstance(v, int | float)},
        "spend_model": fit.get("spend_model"),
        "value_tier_threshold": fit.get("value_tier_threshold"),
        "fit": _scalars(
            {k: v for k, v in fit.items() if k in ("log_likelihood", "bic", "n_customers", "fit_seconds")}
        ),
        "validation": _scalars(validation),
    }


def churn_from_table(pdf: pd.DataFrame) -> tuple[dict[str, float] | None, str | None]:
    """The churn model's scalar metrics and, for a skipped model, why (from ``churn_metrics`` rows:
    ``metric`` rows are the scalars; a ``status`` row named ``skipped`` carries the reason)."""
    status = pdf[(pdf["section"] == "status") & (pdf["name"] == "skipped")]
    skipped = next((str(t) for t in status["text"] if t is not None and not pd.isna(t)), None)
    if not status.empty and skipped is None:
        skipped = "no reason recorded"
    import segspark.churn

    metrics_from_table = getattr(segspark.churn, "metrics_from_table", None)
    if metrics_from_table is not None:
        metrics = dict(metrics_from_table(pdf))
    else:
        rows = pdf[pdf["section"] == "metric"]
        metrics = {str(n): v for n, v in zip(rows["name"], rows["value"], strict=True)}
    return _scalars(metrics) or None, skipped


def collect(run: RunInfo, tables: Mapping[str, DataFrame | None], settings: Settings) -> ReportData:
    """Reduce the run's tables (by their names in :mod:`segspark.schema`) to :class:`ReportData`.

    ``tables`` holds Spark DataFrames already restricted to the run (its ``as_of_date`` snapshot, or
    its ``run_id`` rows for ``quarantine`` and ``runs``): ``customer_segments`` (required), and any of
    ``segment_kpis``, ``rfm_grid``, ``cohort_retention``, ``ltv_cac``, ``segment_transitions``,
    ``drift``, ``quarantine``, ``cluster_profiles``, ``clustering_sweep``, ``clv_fit``,
    ``churn_metrics``, ``runs``, ``customer_features`` (demographics) and ``previous_report_summary``
    (Spark or pandas). Missing or None
    entries are absent stages.
    """
    t: dict[str, Any] = {name: df for name, df in tables.items() if df is not None}
    segments: DataFrame | None = t.get(S.CUSTOMER_SEGMENTS)
    if segments is None:
        raise InputError("report: table 'customer_segments' is required (one row per customer)")
    cfg = settings.report
    k = cfg.min_segment_size
    stats, types = segment_statistics(segments, settings.churn.high_risk_threshold)
    order = {
        RFM_SEGMENT: list(dict.fromkeys(r.name for r in settings.rfm.segment_rules())),
        LIFECYCLE_STAGE: list(LIFECYCLE_ORDER),
        VALUE_TIER: ["high", "standard"],
    }
    views, totals = segment_views(stats, types, k, order)
    # a score column the run left all null (its stage disabled or skipped) counts as absent
    has = {
        c: c in segments.columns and (c not in MEAN_MEASURES or totals[f"n_{c}"] > 0)
        for c in (*SEGMENT_TYPES, CLV, P_ALIVE, CHURN_RISK, R_SCORE, F_SCORE, M_SCORE, CLUSTER_ID)
    }
    data = ReportData(
        run_id=str(run.run_id),
        as_of_date=run.as_of_date,
        k=k,
        totals=totals,
        segments=views,
        has=has,
        command=str(getattr(run, "command", "") or ""),
    )
    _collect_segment_tables(data, t, segments, views, settings)
    _collect_lineage(data, t)
    _collect_models(data, t, segments, settings)
    return data


def _collect_segment_tables(
    data: ReportData, t: dict[str, Any], segments: DataFrame, views: dict[str, Any], settings: Settings
) -> None:
    """KPIs, the RFM grid, cohorts, LTV:CAC, transitions and the CLV histogram, with a note for each
    one absent or all below the minimum size."""
    cfg, k, has, totals = settings.report, data.k, data.has, data.totals
    notes = data.notes
    if S.SEGMENT_KPIS in t:
        data.kpis = {st: w for st, w in kpi_tables(t[S.SEGMENT_KPIS], views, k).items() if not w.empty}
        if not data.kpis:
            notes["kpis"] = f"Segment KPIs not shown: no segment reaches the minimum size of {k}."
    else:
        notes["kpis"] = "No segment KPI table in this run."
    if has[R_SCORE] or S.RFM_GRID in t:
        data.rfm_grid, data.rfm_grid_hidden = rfm_grid_table(t.get(S.RFM_GRID), segments, k)
    if data.rfm_grid is None:
        notes["rfm_grid"] = "No RFM scores in this run."
    elif not data.rfm_grid[CUSTOMERS].notna().any():
        notes["rfm_grid"] = f"RFM grid not drawn: every cell has fewer than {k} customers."
    if S.COHORT_RETENTION in t:
        data.cohorts, data.cohorts_hidden, data.cohort_retention_at = cohort_table(
            t[S.COHORT_RETENTION], data.as_of_date, k, cfg.max_cohorts
        )
    if data.cohorts is None and data.cohorts_hidden:
        notes["cohorts"] = (
            f"Cohort retention not shown: all {data.cohorts_hidden} acquisition cohort(s) have fewer "
            f"than {k} customers."
        )
    elif data.cohorts is None:
        notes["cohorts"] = "No cohort retention in this run (no table, or no acquisition cohort in it)."
    if S.LTV_CAC in t:
        data.ltv_cac, data.ltv_cac_hidden = ltv_cac_table(t[S.LTV_CAC], k)
    if data.ltv_cac is None or not data.ltv_cac["cac"].notna().any():
        notes["ltv_cac"] = "No marketing spend in this run: CAC and LTV:CAC are unknown (never assumed zero)."
    if S.SEGMENT_TRANSITIONS in t:
        data.transitions, data.transitions_hidden, data.first_run, data.moved_share = transition_table(
            t[S.SEGMENT_TRANSITIONS], views, k
        )
    else:
        notes["transitions"] = "No segment transition table in this run."
    if has[CLV] and totals[f"n_{CLV}"] >= k:
        data.clv_hist, data.clv_quantiles = clv_histogram(segments)
    if not has[CLV]:
        notes["clv"] = "CLV was not modelled in this run (stage disabled or no repeat purchases)."
    elif data.clv_hist is None:
        notes["clv"] = (
            f"CLV distribution not shown: {int(totals[f'n_{CLV}']):,} customers have a CLV, fewer than "
            f"the minimum segment size of {k}."
        )


def _collect_lineage(data: ReportData, t: dict[str, Any]) -> None:
    """The run's lineage (inputs, outputs) and its quarantine counts."""
    notes = data.notes
    if S.RUNS in t:
        data.lineage = run_lineage(t[S.RUNS], data.run_id)
    if data.lineage is None:
        notes["lineage"] = (
            f"The runs table has no row for run {data.run_id}: input lineage, output versions, "
            "config hash and code version were not recorded."
        )
    else:
        data.inputs = data.lineage.inputs
        data.outputs = dict(data.lineage.outputs)
    data.quality = quality_table(data.run_id, t.get(S.QUARANTINE), data.lineage)


def _collect_models(data: ReportData, t: dict[str, Any], segments: DataFrame, settings: Settings) -> None:
    """Clustering, demographics, the CLV fit and its validity, churn, drift and the previous summary."""
    cfg, k, has, notes = settings.report, data.k, data.has, data.notes
    data.clustering = clustering_info(t.get(S.CLUSTERING_SWEEP), t.get(S.CLUSTER_PROFILES), k)
    if data.clustering is None:
        notes["clustering"] = "Behavioural clustering did not run (stage disabled)."
    elif data.clustering["sweep"] is None and not data.clustering["chosen"]:
        notes["clustering"] = "No clustering_sweep table for this run: the sweep and the choice are unknown."
    features = t.get(S.CUSTOMER_FEATURES)
    attributes = DEMOGRAPHICS_B2B if cfg.preset == "saas" else DEMOGRAPHICS_B2C
    if features is not None and not isinstance(features, pd.DataFrame):
        data.demographics, missing_attrs = demographic_tables(segments, features, attributes, k)
        if missing_attrs:
            notes["demographics"] = "Not shown: " + "; ".join(missing_attrs) + "."
    else:
        notes["demographics"] = "No customer_features table for this run: demographics are not shown."
    if S.CLV_FIT in t:
        fit_rows = _small(_drop_stamp(t[S.CLV_FIT]), S.CLV_FIT, 5_000)
        if not fit_rows.empty:
            data.clv_fit = clv_info(clv_fit_from_table(fit_rows))
            data.clv_validity = clv_validity(fit_rows)
    if not data.p_alive_ok():
        # the fallback leaves P(alive) null; an invalid model's P(alive) is not shown either
        has[P_ALIVE] = False
    if S.CHURN_METRICS in t:
        churn_rows = _small(_drop_stamp(t[S.CHURN_METRICS]), S.CHURN_METRICS, 20_000)
        data.churn, skipped = churn_from_table(churn_rows)
        if skipped:
            notes["churn"] = f"Churn propensity model skipped: {skipped}"
    if "churn" not in notes and data.churn is None and not has[CHURN_RISK]:
        notes["churn"] = "Churn propensity was not modelled in this run."
    if S.DRIFT in t:
        data.drift = drift_table(t[S.DRIFT])
    prev = t.get(PREVIOUS_SUMMARY)
    if prev is not None:
        data.previous_summary = (
            prev if isinstance(prev, pd.DataFrame) else _small(prev, PREVIOUS_SUMMARY, 5_000)
        )
    if not has[LIFECYCLE_STAGE]:
        notes["lifecycle"] = "No lifecycle stages in this run."
