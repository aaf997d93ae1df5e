"""The report's words: the CLV validity line, the findings, what is not shown and why, the summary
figures (``report_summary``) and the changes since the previous run."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from segspark.config import Settings
from segspark.report.data import OTHER, SPEND_BY_FREQUENCY, UNASSIGNED, ClvValidity, ReportData, SegmentView
from segspark.report.fmt import (
    SUMMARY_COLUMNS,
    TYPE_LABELS,
    WORDS,
    Fmt,
    Table,
    _as_float,
    _finite,
    fmt_int,
    fmt_metric,
    fmt_num,
    fmt_signed_pct,
)
from segspark.report.recommend import (
    AT_RISK_SEGMENTS,
)
from segspark.report.section_tables import Validity
from segspark.schema import CHURN_RISK, CLV, CUSTOMERS, LIFECYCLE_STAGE, REVENUE, RFM_SEGMENT, SEGMENT

if TYPE_CHECKING:
    pass


def _spend_check(v: ClvValidity) -> tuple[str, str, bool | None]:
    """The spend model's check (Gamma-Gamma: spend independent of purchase frequency): the sentence,
    its compact form and the verdict (None: not recorded)."""
    label = "Gamma-Gamma" if v.spend_model in (None, "gamma_gamma") else str(v.spend_model)
    has_corr = v.spend_corr is not None
    if v.spend_model == SPEND_BY_FREQUENCY:
        corr = f" (corr {fmt_num(v.spend_corr, 3)})" if has_corr else ""
        text = f"spend per purchase conditioned on purchase frequency{corr}"
        return text, f"spend by purchase frequency{corr}", True
    corr = f"spend/frequency correlation {fmt_num(v.spend_corr, 3)}" if has_corr else ""
    short_corr = f" (corr {fmt_num(v.spend_corr, 3)})" if has_corr else ""
    if v.spend_corr_ok is None:
        if corr:
            return f"{label} check: {corr}", f"{label}{short_corr}", None
        return f"{label} check not recorded", f"{label} check not recorded", None
    verdict = "passed" if v.spend_corr_ok else "failed"
    reason = f" ({v.spend_reason})" if v.spend_reason and not v.spend_corr_ok else ""
    text = f"{label} check {verdict}{': ' + corr if corr else ''}{reason}"
    return text, f"{label} check {verdict}{short_corr}", v.spend_corr_ok


def _brief(text: str, limit: int = 160) -> str:
    """A reason short enough to stand beside a figure: cut at a word, the full text being in the
    methodology section (CLV model row and candidate table) and in report_summary."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.(") + "… (in full under Models and validation)"


def clv_validity(data: ReportData) -> Validity | None:
    """The validity of the run's CLV figures (None when the run has no CLV): the model, valid or
    not, its holdout total error and the spend model's check; for the fallback, what CLV is then
    and why no model was used. Tables without validity rows say "validity not recorded"."""
    if not data.has.get(CLV):
        return None
    v = data.clv_validity
    if v is None:
        text = "CLV validity not recorded: no clv_fit table for this run."
        return Validity("unknown", text, "CLV validity not recorded")
    if v.fallback:
        why = _brief(v.fallback_reason or "no reason recorded")
        text = (
            "CLV is a historical spend-rate estimate, not a model prediction: no CLV model passed its "
            f"validity checks ({why}). P(alive) and expected purchases are not estimated."
        )
        return Validity("fallback", text, "historical spend-rate estimate: no CLV model passed its checks")
    model = v.model or str((data.clv_fit or {}).get("model") or "unknown model")
    if not v.recorded:
        text = f"CLV model {model}: validity not recorded (the clv_fit table has no validity rows)."
        return Validity("unknown", text, f"CLV model {model}: validity not recorded")
    c, valid = v.chosen, v.valid
    if valid is None:
        verdict = "validity not recorded"
    elif valid:
        verdict = "valid"
    else:
        verdict = "NOT valid" + (f" ({c['reason']})" if c.get("reason") else "")
    err = c.get("holdout_total_error")
    err_text = (
        f"holdout total error {fmt_signed_pct(err)} (predicted vs actual holdout purchases)"
        if err is not None
        else "holdout total error not measured"
    )
    spend_text, spend_short, spend_ok = _spend_check(v)
    text = f"CLV model {model}: {verdict}; {err_text}; {spend_text}."
    short = f"CLV model {model}: {verdict.split(' (')[0]}, holdout error {fmt_signed_pct(err)}, {spend_short}"
    if valid is False or spend_ok is False:
        status = "bad"
    elif valid is None or spend_ok is None:
        status = "unknown"
    else:
        status = "ok"
    return Validity(status, text, short)


def candidate_table(v: ClvValidity | None, fmt: Fmt) -> Table | None:
    """Every CLV candidate's validity (methodology section); None when not recorded."""
    if v is None or not v.models:
        return None
    rows = []
    for name, m in sorted(v.models.items(), key=lambda kv: (not kv[1].get("chosen"), kv[0])):
        valid = m.get("valid")
        se = m.get("max_relative_se")
        rows.append(
            [
                name,
                "yes" if m.get("chosen") else "",
                "–" if valid is None else ("valid" if valid else "not valid"),
                str(m.get("reason") or "–"),
                fmt_signed_pct(m.get("holdout_total_error")),
                "–"
                if se is None
                else f"{fmt_metric(se)}"
                + (f" ({m['max_relative_se_param']})" if m.get("max_relative_se_param") else ""),
            ]
        )
    header = ["Model", "Chosen", "Validity", "Why", "Holdout total error", "Max relative SE (parameter)"]
    return Table(header, rows)


def _named(view: SegmentView) -> pd.DataFrame:
    t = view.table
    return t[~t[SEGMENT].isin([OTHER, UNASSIGNED])]


def _top_segment_finding(data: ReportData, fmt: Fmt, w: dict[str, str]) -> dict[str, Any] | None:
    """The named segment of the primary type whose revenue share most exceeds its customer share."""
    primary = data.primary_type()
    if primary is None:
        return None
    named = _named(data.segments[primary])
    named = named[named[REVENUE] > 0]
    if named.empty:
        return None
    r = named.loc[(named["revenue_share"] - named["customer_share"]).idxmax()]
    return {
        "metric": "top_segment_revenue_share",
        "value": float(r["revenue_share"]),
        "unit": "share",
        "text": f"{r[SEGMENT]} are {fmt.pct(r['customer_share'])} of {w['customers']} and "
        f"{fmt.pct(r['revenue_share'])} of net revenue.",
        "segment": str(r[SEGMENT]),
        "customer_share": float(r["customer_share"]),
    }


def _at_risk_rows(data: ReportData) -> tuple[pd.DataFrame | None, str]:
    """The at-risk RFM segments (else the at-risk lifecycle stage) and how the finding names them."""
    risk_rows, label = None, ""
    if RFM_SEGMENT in data.segments:
        view = data.segments[RFM_SEGMENT]
        rows = view.table[view.table[SEGMENT].isin(AT_RISK_SEGMENTS)]
        rows = rows.sort_values(SEGMENT, key=lambda s: s.map(AT_RISK_SEGMENTS.index))
        if not rows.empty:
            risk_rows, label = rows, " and ".join(str(s) for s in rows[SEGMENT])
    if risk_rows is None and LIFECYCLE_STAGE in data.segments:
        row = data.segments[LIFECYCLE_STAGE].row("at_risk")
        if row is not None:
            risk_rows, label = pd.DataFrame([row]), "the at-risk lifecycle stage"
    return risk_rows, label


def _value_at_risk_finding(
    data: ReportData, fmt: Fmt, w: dict[str, str], months: int
) -> dict[str, Any] | None:
    """The CLV (expected spend over the horizon; else net revenue) held by the at-risk customers."""
    risk_rows, label = _at_risk_rows(data)
    if risk_rows is None:
        return None
    t = data.totals
    n = float(risk_rows[CUSTOMERS].sum())
    clv_based = bool(data.has.get(CLV) and float(risk_rows["n_clv"].sum()) > 0)
    if clv_based:
        fallback = data.clv_validity is not None and data.clv_validity.fallback
        what = (
            f"spend over the next {months} months, estimated from past spending,"
            if fallback
            else f"expected spend over the next {months} months"
        )
        v = float(risk_rows["sum_clv"].sum())
    else:
        v, what = float(risk_rows[REVENUE].sum()), "net revenue to date"
    return {
        "metric": "value_at_risk",
        "value": v,
        "unit": "currency",
        "text": f"{fmt.money(v)} of {what} sits in {label} ({fmt.count(n)} {w['customers']}, "
        f"{fmt.pct(n / t[CUSTOMERS] if t[CUSTOMERS] else math.nan)} of all).",
        "clv": clv_based,
    }


def _high_churn_risk_finding(
    data: ReportData, settings: Settings, fmt: Fmt, w: dict[str, str]
) -> dict[str, Any] | None:
    """The share of scored customers above the high churn-risk threshold."""
    t = data.totals
    if not (data.has.get(CHURN_RISK) and t[f"n_{CHURN_RISK}"] > 0):
        return None
    share = t["high_churn_risk"] / t[f"n_{CHURN_RISK}"]
    return {
        "metric": "high_churn_risk_share",
        "value": share,
        "unit": "share",
        "text": f"{fmt.pct(share)} of {w['customers']} with a churn-risk score have a high churn risk "
        f"(a probability of at least {fmt.pct(settings.churn.high_risk_threshold, 0)} of not buying within "
        f"{settings.churn.horizon_days} days).",
    }


def _churned_buyer_finding(data: ReportData, settings: Settings, fmt: Fmt) -> dict[str, Any] | None:
    """The share of buyers in the churned lifecycle stage."""
    t = data.totals
    if LIFECYCLE_STAGE not in data.segments:
        return None
    row = data.segments[LIFECYCLE_STAGE].row("churned")
    if row is None or not t["buyers"]:
        return None
    share = float(row[CUSTOMERS]) / t["buyers"]
    return {
        "metric": "churned_buyer_share",
        "value": share,
        "unit": "share",
        "text": f"{fmt.pct(share)} of buyers have lapsed (no purchase for more than "
        f"{settings.lifecycle.churned_days} days).",
    }


def _one_time_buyer_finding(data: ReportData, fmt: Fmt) -> dict[str, Any] | None:
    """The share of buyers who bought only once."""
    t = data.totals
    if not t["buyers"]:
        return None
    share = (t["buyers"] - t["repeat_buyers"]) / t["buyers"]
    return {
        "metric": "one_time_buyer_share",
        "value": share,
        "unit": "share",
        "text": f"{fmt.pct(share)} of buyers have bought only once.",
    }


def findings(data: ReportData, settings: Settings, fmt: Fmt) -> list[dict[str, Any]]:
    """The three computed findings of the executive summary (metric, value, unit, text)."""
    w = WORDS[settings.report.preset]
    out: list[dict[str, Any]] = []
    for found in (
        _top_segment_finding(data, fmt, w),
        _value_at_risk_finding(data, fmt, w, settings.clv.horizon_months),
        _high_churn_risk_finding(data, settings, fmt, w),
    ):
        if found is not None:
            out.append(found)
    # the fallbacks fill the summary's three findings when a model or a segment type is missing
    if len(out) < 3:
        churned = _churned_buyer_finding(data, settings, fmt)
        if churned is not None:
            out.append(churned)
    if len(out) < 3:
        one_time = _one_time_buyer_finding(data, fmt)
        if one_time is not None:
            out.append(one_time)
    return out[:3]


def not_shown(data: ReportData, recs: pd.DataFrame, settings: Settings) -> list[str]:
    """What the report could not show, one plain sentence each: groups below the minimum size,
    a skipped model, a stage that did not run, no cohorts, no previous run, no play."""
    w = WORDS[settings.report.preset]
    k, t = data.k, data.totals
    out: list[str] = []
    if t[CUSTOMERS] < k:
        out.append(
            f"Only {fmt_int(t[CUSTOMERS])} {w['customers']} in this run, fewer than the minimum segment "
            f"size of {k}: no group of {w['customers']} can be shown on its own."
        )
    for st, view in data.segments.items():
        label = TYPE_LABELS.get(st, st)
        named = _named(view)
        if view.merged_segments and named.empty:
            where = "not shown" if view.table.empty else "merged into Other"
            out.append(
                f"By {label}: every {label} has fewer than {k} {w['customers']} "
                f"({view.merged_segments} {label}(s), {fmt_int(view.merged_customers)} {w['customers']}): "
                f"{where}."
            )
        elif view.merged_segments:
            out.append(
                f"By {label}: {view.merged_segments} {label}(s) with fewer than {k} {w['customers']} "
                f"({fmt_int(view.merged_customers)} {w['customers']} in all) merged into Other"
                + (" (Other itself too small: not shown)." if view.suppressed_customers else ".")
            )
    if not data.kpis and "kpis" in data.notes:
        out.append(data.notes["kpis"])
    if data.rfm_grid is not None and not data.rfm_grid[CUSTOMERS].notna().any():
        out.append(f"RFM grid: every cell has fewer than {k} {w['customers']}; not drawn.")
    if data.cohorts is None:
        if data.cohorts_hidden:
            out.append(
                f"Cohort retention: all {data.cohorts_hidden} acquisition cohort(s) have fewer than {k} "
                f"{w['customers']}; not shown."
            )
        else:
            out.append("Cohort retention: no acquisition cohort in this run.")
    elif data.cohorts_hidden:
        out.append(f"Cohort retention: {data.cohorts_hidden} cohort(s) below {k} {w['customers']} hidden.")
    if "churn" in data.notes:
        out.append(data.notes["churn"].rstrip(".") + ".")
    cl = data.clustering
    if cl is None:
        out.append("Behavioural clustering did not run: no personas.")
    elif cl.get("profiles") is not None and cl["profiles"].empty and cl.get("hidden_clusters"):
        out.append(
            f"Personas: all {cl['hidden_clusters']} cluster(s) have fewer than {k} {w['customers']}; "
            "not shown."
        )
    elif cl.get("hidden_clusters"):
        out.append(f"Personas: {cl['hidden_clusters']} cluster(s) below {k} {w['customers']} hidden.")
    if "clv" in data.notes:
        out.append(data.notes["clv"].rstrip(".") + ".")
    v = data.clv_validity
    if data.has.get(CLV) and v is not None and v.fallback:
        out.append(
            "CLV models: none passed its validity checks, so CLV is a historical spend-rate estimate and "
            "P(alive) is not shown."
        )
    if data.ltv_cac is not None and data.ltv_cac.empty and data.ltv_cac_hidden:
        out.append(f"LTV:CAC: every group has fewer than {k} new {w['customers']}; not shown.")
    if data.first_run and data.previous_summary is None:
        out.append("No previous run: drift and segment transitions are measured from the next run on.")
    if recs.empty:
        out.append(f"Recommendations: no segment reaches the minimum size of {k} {w['customers']}; no play.")
    return out


SummaryRow = tuple[str, float | None, str, str]  # a report_summary row: metric, value, unit, text


def _headline_rows(data: ReportData, fmt: Fmt) -> list[SummaryRow]:
    """Customers, buyers, revenue, CLV and churn risk over the whole run."""
    t = data.totals
    rows: list[SummaryRow] = [
        ("customers", t[CUSTOMERS], "customers", fmt.count(t[CUSTOMERS])),
        ("buyers", t["buyers"], "customers", fmt.count(t["buyers"])),
        ("revenue", t[REVENUE], "currency", fmt.money(t[REVENUE])),
        (
            "revenue_per_buyer",
            t[REVENUE] / t["buyers"] if t["buyers"] else None,
            "currency",
            fmt.money(t[REVENUE] / t["buyers"] if t["buyers"] else None),
        ),
    ]
    if t[f"n_{CLV}"] > 0:
        rows += [
            ("total_clv", t[f"sum_{CLV}"], "currency", fmt.money(t[f"sum_{CLV}"])),
            (
                "avg_clv",
                t[f"sum_{CLV}"] / t[f"n_{CLV}"],
                "currency",
                fmt.money(t[f"sum_{CLV}"] / t[f"n_{CLV}"]),
            ),
        ]
    if t[f"n_{CHURN_RISK}"] > 0:
        avg = t[f"sum_{CHURN_RISK}"] / t[f"n_{CHURN_RISK}"]
        rows.append(("avg_churn_risk", avg, "share", fmt.pct(avg)))
    return rows


def _segment_rows(data: ReportData, found: list[dict[str, Any]], fmt: Fmt) -> list[SummaryRow]:
    """The findings (numbered and by metric), cohort retention and how many segments are shown."""
    rows: list[SummaryRow] = []
    for i, f in enumerate(found, start=1):
        rows.append((f"finding_{i}", f["value"], f["unit"], f["text"]))
        rows.append((f["metric"], f["value"], f["unit"], f["text"]))
    for m, v in sorted(data.cohort_retention_at.items()):
        rows.append((f"retention_month_{m}", v, "share", fmt.pct(v)))
    merged_segments = sum(v.merged_segments for v in data.segments.values())
    rows += [
        ("min_segment_size", float(data.k), "customers", fmt.count(data.k)),
        ("segments_merged", float(merged_segments), "count", fmt.count(merged_segments)),
    ]
    for st, view in data.segments.items():
        rows.append((f"segments_shown_{st}", float(len(view.table)), "count", fmt.count(len(view.table))))
    return rows


def _play_rows(recs: pd.DataFrame, fmt: Fmt) -> list[SummaryRow]:
    """The plays: how many, how many testable, their total impact and the top three."""
    if recs.empty:
        return []
    rows: list[SummaryRow] = [
        ("plays", float(len(recs)), "count", fmt.count(len(recs))),
        ("testable_plays", float(recs["testable"].sum()), "count", fmt.count(recs["testable"].sum())),
        ("total_impact", float(recs["impact"].sum()), "currency", fmt.money(recs["impact"].sum())),
        ("total_net_value", float(recs["net_value"].sum()), "currency", fmt.money(recs["net_value"].sum())),
    ]
    for _, r in recs.head(3).iterrows():
        rows.append(
            (
                f"top_play_{int(r['rank'])}",
                float(r["net_value"]),
                "currency",
                f"{r['play_name']} for {r['segment']}: {fmt.money(r['net_value'])} net value over "
                f"{int(r['horizon_months'])} months (margin {fmt.money(r['impact'])} - cost "
                f"{fmt.money(r['play_cost'])}), effort {r['effort']}"
                + (f"; measured by a {r['test_design']}" if r["testable"] else f"; {r['test_flag']}"),
            )
        )
    return rows


def _clustering_and_clv_rows(data: ReportData, fmt: Fmt) -> list[SummaryRow]:
    """The chosen k and its silhouette, and the CLV model's holdout errors."""
    rows: list[SummaryRow] = []
    cl = data.clustering
    if cl and cl["chosen"].get("k") is not None:
        rows.append(("chosen_k", float(cl["chosen"]["k"]), "count", str(cl["chosen"].get("reason", ""))))
        sil = (cl["chosen"].get("final_metrics") or {}).get("silhouette")
        if _finite(sil):
            rows.append(("silhouette", _as_float(sil), "index", fmt.num(sil, 3)))
    if data.clv_fit:
        for key in ("holdout_mae", "holdout_total_error_pct"):
            v = data.clv_fit["validation"].get(key)
            if _finite(v):
                rows.append(
                    (f"clv_{key}", float(v), "pct" if key.endswith("pct") else "purchases", fmt.num(v, 3))
                )
    return rows


def _validity_rows(data: ReportData, validity: Validity | None) -> list[SummaryRow]:
    """The CLV validity line and, for the fallback, why; else the holdout error and spend check."""
    if validity is None:
        return []
    rows: list[SummaryRow] = []
    cv = data.clv_validity
    valid = None if cv is None or not cv.recorded else (0.0 if cv.fallback else cv.valid)
    rows.append(("clv_valid", None if valid is None else float(valid), "flag", validity.text))
    if cv is not None and cv.fallback:
        rows.append(("clv_fallback", 1.0, "flag", cv.fallback_reason or "no reason recorded"))
    elif cv is not None:
        err = cv.chosen.get("holdout_total_error")
        rows.append(("clv_holdout_total_error", err, "share", fmt_signed_pct(err)))
        if cv.spend_corr is not None or cv.spend_corr_ok is not None:
            rows.append(("clv_spend_corr", cv.spend_corr, "correlation", _spend_check(cv)[0]))
    return rows


def _run_rows(data: ReportData, missing: list[str] | None, fmt: Fmt) -> list[SummaryRow]:
    """Churn AUCs, quarantined rows, segment drift, the run's warnings and what is not shown."""
    rows: list[SummaryRow] = []
    if data.churn:
        for key, v in data.churn.items():
            if "auc" in key.lower():
                rows.append(
                    (f"churn_{key}" if not key.startswith("churn") else key, v, "index", fmt.num(v, 3))
                )
    if data.quality is not None:
        q = float(data.quality["rows"].sum()) if len(data.quality) else 0.0
        rows.append(("quarantined_rows", q, "rows", fmt.count(q)))
    for dim, share in sorted(data.moved_share.items()):
        rows.append((f"moved_share_{dim}", share, "share", fmt.pct(share)))
    warnings = data.lineage.warnings if data.lineage is not None else None
    if warnings is not None:
        rows.append(("run_warnings", float(len(warnings)), "count", " | ".join(warnings)))
    if missing:
        rows.append(("not_shown", float(len(missing)), "count", " | ".join(missing)))
    return rows


def summary_table(
    data: ReportData,
    recs: pd.DataFrame,
    found: list[dict[str, Any]],
    settings: Settings,
    validity: Validity | None = None,
    missing: list[str] | None = None,
) -> pd.DataFrame:
    """``report_summary``: one row per headline figure (metric, value, unit, text)."""
    fmt = Fmt(settings.report.currency_symbol)
    rows = [
        *_headline_rows(data, fmt),
        *_segment_rows(data, found, fmt),
        *_play_rows(recs, fmt),
        *_clustering_and_clv_rows(data, fmt),
        *_validity_rows(data, validity),
        *_run_rows(data, missing, fmt),
    ]
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype("float64")
    return out.drop_duplicates("metric", keep="first").reset_index(drop=True)


# Headline figures compared with the previous run's report_summary (in this order, when both have them).
CHANGE_METRICS: tuple[str, ...] = (
    "customers",
    "buyers",
    "revenue",
    "total_clv",
    "avg_clv",
    "avg_churn_risk",
    "retention_month_1",
    "retention_month_3",
    "retention_month_6",
    "chosen_k",
    "silhouette",
    "plays",
    "testable_plays",
    "total_impact",
    "total_net_value",
)


def changes_since_previous(summary: pd.DataFrame, previous: pd.DataFrame | None, fmt: Fmt) -> Table | None:
    """Previous value, this run's, and the change of each headline figure both runs report; shares
    change in percentage points, amounts and counts also by percent."""
    if previous is None or summary.empty or not {"metric", "value"} <= set(previous.columns):
        return None
    before = {str(m): v for m, v in zip(previous["metric"], previous["value"], strict=True) if _finite(v)}
    cols = (summary["metric"], summary["value"], summary["unit"])
    now = {str(m): (v, u) for m, v, u in zip(*cols, strict=True)}
    rows = []
    for m in CHANGE_METRICS:
        if m not in before or m not in now or not _finite(now[m][0]):
            continue
        (v, unit), b = now[m], float(before[m])
        v = float(v)
        if unit == "share":
            shown = [fmt.pct(b), fmt.pct(v), f"{(v - b) * 100:+.1f} pts"]
        else:
            show = fmt.money if unit == "currency" else fmt.metric
            if unit in ("count", "customers"):
                show = fmt.count
            rel = f" ({(v - b) / abs(b):+.1%})" if b else ""
            diff = v - b
            sign = "+" if diff >= 0 else "-"
            shown = [show(b), show(v), f"{sign}{show(abs(diff))}{rel}"]
        rows.append([m.replace("_", " ").capitalize(), *shown])
    return Table(["Figure", "Previous run", "This run", "Change"], rows) if rows else None
