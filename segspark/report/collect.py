"""Reduce a run's tables to the small pandas aggregates the report is made of.

Only aggregates reach the driver: per-segment sufficient statistics (counts and sums, so merged
groups stay exact), the RFM grid, a slice of the cohort table, LTV:CAC rows, transition counts,
quarantine counts and a CLV histogram. Never a customer row.

:func:`collect` ties the readers together; they live beside it by what they read:
:mod:`~segspark.report.segment_stats` (segment cells and views, KPIs, demographics),
:mod:`~segspark.report.stage_tables` (RFM grid, cohorts, LTV:CAC, transitions, drift, CLV histogram),
:mod:`~segspark.report.model_results` (clustering, CLV fit, churn) and :mod:`~segspark.report.lineage`
(the runs row, quarantine counts), each reaching the driver through
:func:`~segspark.report.aggregates.small_table`.

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

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame

from segspark import schema as S
from segspark.config import Settings
from segspark.errors import InputError
from segspark.report.aggregates import drop_stamp, small_table
from segspark.report.clv_holdout import holdout_value_rows
from segspark.report.data import (
    LIFECYCLE_ORDER,
    MEAN_MEASURES,
    P_ALIVE,
    PREVIOUS_SUMMARY,
    SEGMENT_TYPES,
    ReportData,
    RunInfo,
    clv_validity,
)
from segspark.report.lineage import quality_table, run_lineage
from segspark.report.model_results import churn_from_table, clustering_info, clv_fit_from_table, clv_info
from segspark.report.segment_stats import (
    DEMOGRAPHICS_B2B,
    DEMOGRAPHICS_B2C,
    channel_mix,
    demographic_tables,
    kpi_tables,
    segment_statistics,
    segment_views,
)
from segspark.report.stage_tables import (
    clv_histogram,
    cohort_table,
    drift_table,
    ltv_cac_table,
    rfm_grid_table,
    transition_table,
)
from segspark.schema import (
    CHURN_RISK,
    CLUSTER_ID,
    CLV,
    CUSTOMERS,
    F_SCORE,
    LIFECYCLE_STAGE,
    M_SCORE,
    PERSONA,
    R_SCORE,
    RFM_SEGMENT,
    VALUE_TIER,
)

log = logging.getLogger(__name__)


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
    stats, types, cells = segment_statistics(segments, settings.churn.high_risk_threshold)
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
        cells=cells,
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
        data.persona_channels = channel_mix(segments, features, PERSONA, settings.rfm.channels, k)
        if missing_attrs:
            notes["demographics"] = "Not shown: " + "; ".join(missing_attrs) + "."
    else:
        notes["demographics"] = "No customer_features table for this run: demographics are not shown."
    if S.CLV_FIT in t:
        fit_rows = small_table(drop_stamp(t[S.CLV_FIT]), S.CLV_FIT, 5_000)
        if not fit_rows.empty:
            data.clv_fit = clv_info(clv_fit_from_table(fit_rows))
            data.clv_validity = clv_validity(fit_rows)
    if S.CLV_VALIDATION in t:
        data.clv_holdout = holdout_value_rows(t[S.CLV_VALIDATION])
    if not data.p_alive_ok():
        # the fallback leaves P(alive) null; an invalid model's P(alive) is not shown either
        has[P_ALIVE] = False
    if S.CHURN_METRICS in t:
        churn_rows = small_table(drop_stamp(t[S.CHURN_METRICS]), S.CHURN_METRICS, 20_000)
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
            prev if isinstance(prev, pd.DataFrame) else small_table(prev, PREVIOUS_SUMMARY, 5_000)
        )
    if not has[LIFECYCLE_STAGE]:
        notes["lifecycle"] = "No lifecycle stages in this run."
