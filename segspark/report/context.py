"""The templates' context: one builder per report section (summary, segments, models, value, plays,
changes, lineage), merged by :func:`report_context`."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from segspark.config import Settings
from segspark.report import executive as X
from segspark.report.clv_holdout import holdout_value_table, holdout_window
from segspark.report.data import LIFECYCLE_ORDER, SEGMENT_TYPES, ReportData
from segspark.report.fmt import (
    ENGAGEMENT_KPIS,
    FALLBACK_LABEL,
    REPORT_TABLES,
    TYPE_LABELS,
    WORDS,
    Fmt,
    Table,
    _finite,
)
from segspark.report.recommend import (
    play_settings,
)
from segspark.report.section_tables import (
    LTV_CAC_DEFINITIONS,
    LTV_CAC_RULE,
    ab_table,
    demographic_tables,
    frame_table,
    governance_rows,
    kpi_definitions,
    kpi_table,
    ltv_cac_tables,
    metric_words,
    persona_cards,
    plan_rows,
    recommendation_table,
    segment_profile_table,
    sql_appendix,
)
from segspark.report.sections import candidate_table, changes_since_previous, clv_validity
from segspark.schema import CHURN_RISK, CLV, CUSTOMERS, LIFECYCLE_STAGE, PERSONA, REVENUE, RFM_SEGMENT

if TYPE_CHECKING:
    pass


def report_context(
    data: ReportData,
    recs: pd.DataFrame,
    charts: list[dict[str, Any]],
    found: list[dict[str, Any]],
    palettes: dict[str, dict[str, str]],
    settings: Settings,
    missing: list[str] | None = None,
    summary: pd.DataFrame | None = None,
    gaps: list[str] | None = None,
) -> dict[str, Any]:
    """The templates' context: one builder per report section, merged."""
    cfg = settings.report
    fmt = Fmt(cfg.currency_symbol)
    w = WORDS[cfg.preset]
    validity = clv_validity(data)
    return {
        **_summary_context(data, recs, found, settings, fmt, w, validity, missing),
        **_segments_context(data, settings, fmt, w, palettes, validity),
        "models": _model_rows(data, fmt, w, validity),
        **_value_context(data, fmt),
        "charts": charts,
        "chart": {c["name"]: c for c in charts},
        **_plays_context(data, recs, settings, fmt),
        **_changes_context(data, summary, fmt, w),
        **_lineage_context(data, settings, fmt),
        "clv_holdout": holdout_value_table(
            data.clv_holdout, fmt, list(dict.fromkeys(r.name for r in settings.rfm.segment_rules()))
        ),
        "clv_holdout_window": holdout_window(data.clv_fit),
        **_executive_context(data, recs, settings, fmt, gaps or []),
    }


def _executive_context(
    data: ReportData, recs: pd.DataFrame, settings: Settings, fmt: Fmt, gaps: list[str]
) -> dict[str, Any]:
    """The executive part: headline with definitions, the one caveat, segments, plays, gaps."""
    months = settings.clv.horizon_months
    return {
        "months": months,
        "churn_days": settings.churn.horizon_days,
        "cards": X.headline(data, settings, fmt),
        "caveat": X.clv_caveat(data, settings),
        "segment_glance": X.segment_table(data, settings, fmt),
        "cross_tab": X.cross_tab(data, fmt, months),
        "persona_offers": X.persona_cards(data, settings, fmt),
        "demographic_sentence": X.demographic_conclusion(data, settings, fmt),
        "ranking": X.ranking_table(recs, fmt) if not recs.empty else None,
        "total_net": fmt.money(recs["net_value"].sum()) if not recs.empty else None,
        "losing": int((recs["net_value"] < 0).sum()) if not recs.empty else 0,
        "assumptions": X.value_assumptions(settings, recs, fmt),
        "gaps": gaps,
        "exec_not_shown": X.not_shown_plainly(data, settings),
        "value_cfg": settings.report.value,
    }


def _headline(data: ReportData, fmt: Fmt, w: dict[str, str], validity: Any) -> list[tuple[str, str, Any]]:
    """Page 1's figures: customers, buyers, revenue, predicted CLV and churn risk when scored."""
    t = data.totals
    fallback = validity is not None and validity.status == "fallback"
    return [
        (w["Customers"], fmt.count(t[CUSTOMERS]), None),
        ("Buyers", fmt.count(t["buyers"]), None),
        ("Net revenue", fmt.money(t[REVENUE]), None),
        *(
            [(FALLBACK_LABEL if fallback else "Predicted CLV", fmt.money(t[f"sum_{CLV}"]), validity)]
            if t[f"n_{CLV}"] > 0
            else []
        ),
        *(
            [("Avg churn risk", fmt.pct(t[f"sum_{CHURN_RISK}"] / t[f"n_{CHURN_RISK}"]), None)]
            if t[f"n_{CHURN_RISK}"] > 0
            else []
        ),
    ]


def _summary_context(
    data: ReportData,
    recs: pd.DataFrame,
    found: list[dict[str, Any]],
    settings: Settings,
    fmt: Fmt,
    w: dict[str, str],
    validity: Any,
    missing: list[str] | None,
) -> dict[str, Any]:
    """The executive summary: headline figures, findings, the top three plays, the run's warnings."""
    cfg = settings.report
    return {
        "title": cfg.title,
        "preset": cfg.preset,
        "w": w,
        "fmt": fmt,
        "run_id": data.run_id,
        "as_of_date": data.as_of_date.isoformat() if data.as_of_date else "–",
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "k": data.k,
        "headline": _headline(data, fmt, w, validity),
        "findings": [{"text": f["text"], "validity": validity if f.get("clv") else None} for f in found],
        "validity": validity,
        "clv_candidates": candidate_table(data.clv_validity, fmt) if data.has.get(CLV) else None,
        # every ranked play is valued on CLV (report.play_value): its section carries the validity line
        "recs_clv": bool(not recs.empty and data.has.get(CLV)),
        "ltv_clv": bool(data.has.get(CLV)) and data.ltv_cac is not None and not data.ltv_cac.empty,
        "warnings": data.lineage.warnings if data.lineage is not None else None,
        "not_shown": missing,
        "warnings_missing": (
            "Not recorded: the runs table has no row for this run."
            if data.lineage is None
            else "Not recorded: the run's row in the runs table has no warnings column."
        ),
        "top3": [
            {
                "rank": int(r["rank"]),
                "name": r["play_name"],
                "segment": X.words(r["segment"]),
                "impact": fmt.money(r["impact"]),
                "net": fmt.money(r["net_value"]),
                "margin": fmt.money(r["impact"]),
                "cost": fmt.money(r["play_cost"]),
                "effort": int(r["effort"]),
                "testable": bool(r["testable"]),
                "flag": r["test_flag"],
                "design": r.get("test_design") or "",
                # a play's action is said once, with its first segment
                "action": r["action"] if r["play"] not in set(recs.head(3)["play"].iloc[:i]) else "",
            }
            for i, (_, r) in enumerate(recs.head(3).iterrows())
        ],
        "primary": TYPE_LABELS.get(data.primary_type() or "", "segment"),
    }


def _segments_context(
    data: ReportData,
    settings: Settings,
    fmt: Fmt,
    w: dict[str, str],
    palettes: dict[str, dict[str, str]],
    validity: Any,
) -> dict[str, Any]:
    """The segment sections: profiles, KPIs, lifecycle, retention, personas, demographics."""
    merges = [
        {
            "type": TYPE_LABELS.get(st, st),
            "segments": v.merged_segments,
            "customers": v.merged_customers,
            "suppressed": v.suppressed_customers,
        }
        for st, v in data.segments.items()
        if v.merged_segments
    ]
    # a segment type whose every segment is below the minimum size has no table (not_shown says so)
    profile_tables = [
        (
            TYPE_LABELS.get(st, st),
            segment_profile_table(data.segments[st], data, settings, fmt, palettes.get(st, {})),
        )
        for st in (RFM_SEGMENT, LIFECYCLE_STAGE, "value_tier")
        if st in data.segments and not data.segments[st].table.empty
    ]
    empty_types = [
        TYPE_LABELS.get(st, st)
        for st in (*SEGMENT_TYPES,)
        if st in data.segments and data.segments[st].table.empty
    ]
    kpis = [
        (
            TYPE_LABELS.get(st, st),
            kpi_table(data.kpis[st], fmt, palettes.get(st, {}), w),
            "avg_clv" in data.kpis[st].columns and data.kpis[st]["avg_clv"].notna().any(),
        )
        for st in (*SEGMENT_TYPES, "all")
        if st in data.kpis and not data.kpis[st].empty
    ]
    life = data.segments.get(LIFECYCLE_STAGE)
    life_kpis = []
    if life is not None:
        for stage in LIFECYCLE_ORDER:
            r = life.row(stage)
            if r is not None:
                life_kpis.append(
                    (stage.replace("_", " "), fmt.count(r[CUSTOMERS]), fmt.pct(r["customer_share"]))
                )
    cl = data.clustering
    return {
        "profile_clv": bool(data.has.get(CLV)) and bool(profile_tables),
        "empty_types": empty_types,
        "features": list(dict.fromkeys(cl["features"])) if cl and cl.get("features") else [],
        "profile_tables": profile_tables,
        "demographics": demographic_tables(data, fmt, w),
        "personas": persona_cards(data, settings, fmt, palettes.get(PERSONA, {}), validity),
        "kpis": kpis,
        "kpi_defs": kpi_definitions(data.kpis),
        "retention": [(f"Month {m}", fmt.pct(v)) for m, v in sorted(data.cohort_retention_at.items())],
        "life_kpis": life_kpis,
        "has_engagement": any(k in wide.columns for wide in data.kpis.values() for k in ENGAGEMENT_KPIS),
        "merges": merges,
        "hidden": {
            "rfm_cells": data.rfm_grid_hidden,
            "cohorts": data.cohorts_hidden,
            "ltv_groups": data.ltv_cac_hidden,
            "flows": data.transitions_hidden,
        },
    }


def _clustering_rows(data: ReportData, fmt: Fmt, w: dict[str, str]) -> list[tuple[str, str]]:
    """The clustering's lines of the models table: the choice, the sweep, the chosen fit's indices."""
    cl = data.clustering
    if not cl:
        return []
    rows: list[tuple[str, str]] = []
    ch = cl["chosen"]
    fm = ch.get("final_metrics") or {}
    if ch.get("reason") or ch.get("k") is not None:
        rows.append(("Clustering", str(ch.get("reason") or f"k = {ch.get('k')}")))
    else:  # profiles without a clustering_sweep table
        n = len(cl["profiles"]) if cl.get("profiles") is not None else 0
        rows.append(("Clustering", f"{n} personas profiled; no clustering_sweep table for this run"))
    if cl.get("sweep") is not None:
        sw = cl["sweep"]
        algos = ", ".join(str(a) for a in dict.fromkeys(sw["algorithm"]))
        rows.append(
            (
                "Clustering sweep",
                f"{len(sw)} candidates ({algos}; k {int(sw['k'].min())} to {int(sw['k'].max())})"
                + (f" on {fmt.count(cl['customers'])} {w['customers']}" if cl.get("customers") else ""),
            )
        )
    if fm:
        rows.append(
            (
                "Chosen model as fitted (indices on the seeded sample)",
                "; ".join(metric_words(k, v, fmt) for k, v in fm.items() if _finite(v)),
            )
        )
    if cl.get("hidden_clusters"):
        rows.append(("Clusters hidden (below minimum size)", fmt.count(cl["hidden_clusters"])))
    return rows


def _clv_rows(data: ReportData, fmt: Fmt, validity: Any) -> list[tuple[str, str]]:
    """The CLV model's lines of the models table: the model (or the fallback) and its holdout check."""
    if data.clv_fit is None:
        return [("CLV model", "scores present; no clv_fit table for this run")] if data.has.get(CLV) else []
    if not data.clv_fit:
        return []
    if validity is not None and validity.status == "fallback":
        v = data.clv_validity
        why = (v.fallback_reason if v else None) or "no reason recorded"
        return [("CLV model", f"historical spend-rate estimate (fallback: {why})")]
    c = data.clv_fit
    rows = [
        (
            "CLV model",
            f"{c.get('model')} ({c.get('reason')}); spend model {c.get('spend_model')}; "
            f"calibration to {c.get('calibration_end')}, holdout to {c.get('holdout_end')}",
        )
    ]
    val = c["validation"]
    names = ("holdout_mae", "holdout_rmse", "holdout_corr", "holdout_total_error_pct", "histogram_chi2")
    keys = [k for k in names if k in val]
    if keys:
        rows.append(("CLV holdout validation", "; ".join(metric_words(k, val[k], fmt) for k in keys)))
    return rows


def _model_rows(data: ReportData, fmt: Fmt, w: dict[str, str], validity: Any) -> list[tuple[str, str]]:
    """The models section: clustering, CLV and churn, each as fitted."""
    rows = _clustering_rows(data, fmt, w) + _clv_rows(data, fmt, validity)
    if data.churn:
        words = "; ".join(metric_words(k, v, fmt) for k, v in sorted(data.churn.items()))
        rows.append(("Churn model", words))
    return rows


def _value_context(data: ReportData, fmt: Fmt) -> dict[str, Any]:
    """The LTV:CAC section."""
    primary = data.primary_type()
    return {
        "ltv_defs": LTV_CAC_DEFINITIONS,
        "ltv_rule": LTV_CAC_RULE,
        "ltv_cac": (
            ltv_cac_tables(data.ltv_cac, fmt, primary, data.segments[primary].names() if primary else None)
            if data.ltv_cac is not None
            else []
        ),
    }


def _plays_context(data: ReportData, recs: pd.DataFrame, settings: Settings, fmt: Fmt) -> dict[str, Any]:
    """The recommendations, their A/B designs and the implementation plan."""
    cfg = settings.report
    top = recs.head(cfg.top_plays)
    return {
        "recs": recommendation_table(recs, fmt) if not recs.empty else None,
        "ab": ab_table(top, fmt) if not top.empty else None,
        "ab_cfg": cfg.ab_test,
        "top_n": cfg.top_plays,
        "plays": [
            (
                pid,
                p.name,
                p.action,
                fmt.pct(p.uplift, 0),
                fmt.money(p.cost_per_contact),
                fmt.money(p.fixed_cost),
                p.effort,
                p.owner,
            )
            for pid, p in play_settings(settings).items()
        ],
        "plan": plan_rows(settings, dt.datetime.now(dt.timezone.utc).date()),
        "scoring_cadence": cfg.scoring_cadence,
        "refit_cadence": cfg.refit_cadence,
    }


def _changes_context(
    data: ReportData, summary: pd.DataFrame | None, fmt: Fmt, w: dict[str, str]
) -> dict[str, Any]:
    """What changed since the previous run: movement between segments, drift, the previous figures."""
    drift_rows = [
        f"{fmt.pct(share)} of {w['customers']} present in both runs changed {TYPE_LABELS.get(dim, dim)}."
        for dim, share in sorted(data.moved_share.items())
    ]
    prev_table = None
    if data.previous_summary is not None and {"metric", "value"} <= set(data.previous_summary.columns):
        prev_table = data.previous_summary
    return {
        "drift": drift_rows,
        "changes": (
            None if summary is None or data.first_run else changes_since_previous(summary, prev_table, fmt)
        ),
        "drift_table": frame_table(data.drift, fmt) if data.drift is not None and len(data.drift) else None,
        "first_run": data.first_run,
        "prev": frame_table(prev_table[["metric", "value"]], fmt) if prev_table is not None else None,
    }


def _lineage_rows(data: ReportData, settings: Settings) -> tuple[list[tuple[str, str]], list[str]]:
    """The lineage table's rows (run, date, config, code, command, engine, MLflow) and its notes."""
    lin = data.lineage
    rows = [
        ("Run id", data.run_id),
        ("As-of date", data.as_of_date.isoformat() if data.as_of_date else "–"),
        ("Config hash", (lin.config_hash if lin else None) or "not recorded"),
        ("Code version", (lin.code_version if lin else None) or "not recorded"),
    ]
    if lin is not None:
        ended = lin.ended_at.strftime("%Y-%m-%d %H:%M:%S UTC") if lin.ended_at else "–"
        rows += [
            ("Pipeline command", f"segspark {lin.command} ({lin.status or '–'}, ended {ended})"),
            ("Table engine", lin.engine or "–"),
            ("MLflow run", lin.mlflow_run_id or "not tracked"),
        ]
    rows.append(("Report built by", f"segspark {data.command}" if data.command else "–"))
    notes = []
    if lin is not None and lin.config_hash and lin.config_hash != settings.config_hash():
        notes.append(
            f"The configuration building this report (hash {settings.config_hash()}) differs from the "
            f"run's ({lin.config_hash}): the figures come from the run's tables; the effective "
            "configuration in the appendix and the plays' assumptions are this report's."
        )
    if lin is not None:
        notes.append(
            "Output versions are the ones the run recorded; "
            + " and ".join(REPORT_TABLES)
            + " are written after this report, so their versions are in their Delta logs only."
        )
    return rows, notes


def _lineage_context(data: ReportData, settings: Settings, fmt: Fmt) -> dict[str, Any]:
    """Data, lineage and governance: inputs and quarantine, outputs, lineage, privacy, SQL, config."""
    inputs = Table(
        ["Source", "Location", "Format", "Version", "Rows in", "Clean", "Quarantined"],
        [
            [
                i["name"],
                str(i["location"]),
                str(i["format"]),
                "–" if i["version"] is None else str(i["version"]),
                fmt.count(i["rows_in"]),
                fmt.count(i["rows_clean"]),
                fmt.count(i["rows_quarantined"]),
            ]
            for i in data.inputs
        ],
    )
    quality = (
        Table(
            ["Table", "Rule", "Rows quarantined"],
            [[str(r.source_table), str(r.rule), fmt.count(r.rows)] for r in data.quality.itertuples()],
        )
        if data.quality is not None and len(data.quality)
        else None
    )
    outputs = Table(
        ["Table", "Delta version"],
        [[n, "–" if v is None else str(v)] for n, v in sorted(data.outputs.items())],
    )
    lineage, notes = _lineage_rows(data, settings)
    return {
        "inputs": inputs,
        "quality": quality,
        "outputs": outputs,
        "lineage": lineage,
        "lineage_notes": notes,
        "privacy": settings.privacy,
        "retention_hours": settings.lakehouse.vacuum_retention_hours,
        "governance": governance_rows(settings, dt.datetime.now(dt.timezone.utc).date()),
        "notes": data.notes,
        "sql": sql_appendix(),
        "config_yaml": yaml.safe_dump(settings.as_dict(), sort_keys=False, default_flow_style=False),
    }
