"""Build the report: collect -> recommend -> charts -> HTML + Markdown + PNGs, and the BI tables.

:func:`build_report` is the one entry point. It writes ``<out_dir>/<run_id>/`` (``report.html``,
``report.md``, ``figures/*.png``) and copies the folder to ``<out_dir>/latest/``; it returns the
``report_summary`` and ``recommendations`` tables as pandas DataFrames for the pipeline to write.

The HTML is self-contained: inline CSS, the PNGs embedded as base64 data URIs, no script and no
network resource, so it opens offline and prints. The Markdown has the same text with the PNGs
beside it. Every number shown is formatted from the collected aggregates.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from segspark import schema as S
from segspark.config import Milestone, Settings
from segspark.errors import EnvironmentProblem, SegsparkError
from segspark.report import charts as C
from segspark.report.collect import (
    CHURN_RISK,
    CLV,
    CUSTOMERS,
    LIFECYCLE_ORDER,
    LIFECYCLE_STAGE,
    MODEL_ONLY_FEATURES,
    OTHER,
    PERSONA,
    REVENUE,
    RFM_SEGMENT,
    SEGMENT,
    SEGMENT_TYPES,
    UNASSIGNED,
    ClvValidity,
    ReportData,
    RunInfo,
    SegmentView,
    collect,
)
from segspark.report.recommend import (
    AT_RISK_SEGMENTS,
    FALLBACK_BASIS,
    dominant_stage,
    play_for,
    play_settings,
    recommend,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

SUMMARY_COLUMNS: tuple[str, ...] = ("metric", "value", "unit", "text")
# written after the report from what it returns: their versions cannot be in the runs row it reads
REPORT_TABLES: tuple[str, ...] = (S.REPORT_SUMMARY, S.RECOMMENDATIONS)
LATEST = "latest"
FIGURES = "figures"

WORDS: dict[str, dict[str, str]] = {
    "retail": {
        "customers": "customers",
        "customer": "customer",
        "Customers": "Customers",
        "orders": "orders",
        "business": "B2C e-commerce",
    },
    "saas": {
        "customers": "accounts",
        "customer": "account",
        "Customers": "Accounts",
        "orders": "renewals and expansions",
        "business": "B2B SaaS",
    },
}
DEFAULT_MILESTONES: dict[str, list[Milestone]] = {
    "retail": [
        Milestone(
            name="Approve plays, assumptions and test plans", owner="Head of CRM", start_week=0, weeks=1
        ),
        Milestone(
            name="Build audiences from customer_segments in the CRM / ESP",
            owner="Data engineering",
            start_week=1,
            weeks=1,
        ),
        Milestone(
            name="Launch A/B tests of the top plays", owner="CRM / lifecycle marketing", start_week=2, weeks=1
        ),
        Milestone(
            name="Read out tests; scale winners, stop losers", owner="Analytics", start_week=10, weeks=1
        ),
        Milestone(
            name="Refresh assumptions in the config from test results",
            owner="Analytics",
            start_week=11,
            weeks=1,
        ),
    ],
    "saas": [
        Milestone(
            name="Approve plays, assumptions and test plans",
            owner="VP Customer Success",
            start_week=0,
            weeks=1,
        ),
        Milestone(name="Sync segments and health scores to the CRM", owner="RevOps", start_week=1, weeks=2),
        Milestone(
            name="Launch A/B tests of the top plays", owner="Customer success / growth", start_week=3, weeks=1
        ),
        Milestone(
            name="Read out tests; scale winners into playbooks", owner="Analytics", start_week=11, weeks=1
        ),
        Milestone(
            name="Refresh assumptions in the config from test results",
            owner="Analytics",
            start_week=12,
            weeks=1,
        ),
    ],
}
TYPE_LABELS: dict[str, str] = {
    RFM_SEGMENT: "RFM segment",
    LIFECYCLE_STAGE: "lifecycle stage",
    PERSONA: "persona",
    "value_tier": "value tier",
    "all": "all customers",
}
ENGAGEMENT_KPIS: tuple[str, ...] = ("conversion_rate_90d", "engaged_share_30d", "sessions_per_customer_30d")
# charts drawing CLV: their captions carry the CLV validity line
CLV_CHARTS: tuple[str, ...] = ("clv_distribution", "revenue_by_segment", "ltv_cac")
FALLBACK_LABEL = "Estimated CLV (historical spend rate)"


@dataclass
class ReportResult:
    """What :func:`build_report` produced."""

    html_path: Path
    md_path: Path
    pdf_path: Path | None  # None when report.pdf is off, or auto and no Chromium was found
    figures_dir: Path
    latest_dir: Path
    summary: pd.DataFrame  # report_summary: metric, value, unit, text
    recommendations: pd.DataFrame  # see recommend.RECOMMENDATION_COLUMNS
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    data: ReportData | None = field(default=None, repr=False)  # the collected aggregates
    # what the report could not show (too small, skipped, absent), one plain sentence each; the
    # pipeline may record them as the run's warnings
    not_shown: list[str] = field(default_factory=list)


# --- formatting -------------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    try:
        return x is not None and not pd.isna(x) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _as_float(x: Any) -> float:
    return float(x) if _finite(x) else math.nan


def fmt_int(x: Any) -> str:
    return f"{round(float(x)):,}" if _finite(x) else "–"


def fmt_money(x: Any, sym: str) -> str:
    if not _finite(x):
        return "–"
    v = float(x)
    return f"-{sym}{-v:,.0f}" if v < 0 else f"{sym}{v:,.0f}"


def fmt_pct(x: Any, digits: int = 1) -> str:
    return f"{float(x) * 100:.{digits}f}%" if _finite(x) else "–"


def fmt_num(x: Any, digits: int = 2) -> str:
    return f"{float(x):,.{digits}f}" if _finite(x) else "–"


def fmt_signed_pct(x: Any, digits: int = 1) -> str:
    """A signed share as a percentage: +23.7%, -3.1%."""
    return f"{float(x) * 100:+.{digits}f}%" if _finite(x) else "–"


def fmt_metric(x: Any) -> str:
    """A model metric: whole numbers as counts (e.g. customers), the rest with three decimals."""
    if not _finite(x):
        return "–"
    v = float(x)
    return fmt_int(v) if v.is_integer() and abs(v) >= 10 else fmt_num(v, 3)


class Fmt:
    """Formatters bound to the report's currency symbol (also used by the templates)."""

    def __init__(self, sym: str) -> None:
        self.sym = sym

    def count(self, x: Any) -> str:
        return fmt_int(x)

    def money(self, x: Any) -> str:
        return fmt_money(x, self.sym)

    def pct(self, x: Any, digits: int = 1) -> str:
        return fmt_pct(x, digits)

    def num(self, x: Any, digits: int = 2) -> str:
        return fmt_num(x, digits)

    def metric(self, x: Any) -> str:
        return fmt_metric(x)


@dataclass
class Table:
    """A table ready for both templates: header and rows of strings."""

    header: list[str]
    rows: list[list[str]]
    swatches: list[str] | None = None  # a colour per row (segment tables)


# --- CLV validity -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Validity:
    """The CLV validity line shown next to every CLV figure."""

    status: str  # ok | bad | unknown | fallback (the badge's colour)
    text: str  # the full sentence
    short: str  # the compact badge (persona cards, chart captions)


def _spend_check(v: ClvValidity) -> tuple[str, str, bool | None]:
    """The spend model's check (Gamma-Gamma: spend independent of purchase frequency): the sentence,
    its compact form and the verdict (None: not recorded)."""
    label = "Gamma-Gamma" if v.spend_model in (None, "gamma_gamma") else str(v.spend_model)
    has_corr = v.spend_corr is not None
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


_MODEL_ONLY_PHRASE = re.compile(
    r"(?:;\s*)?\b(?:" + "|".join(f.replace("_", " ") for f in MODEL_ONLY_FEATURES) + r")\b[^;]*?(?=;|\.?$)"
)


def without_model_only(text: str) -> str:
    """A persona description without its P(alive) and expected-purchases phrases (for runs whose
    CLV fell back or whose model is not valid: those figures would rest on nothing)."""
    out = _MODEL_ONLY_PHRASE.sub("", text)
    out = re.sub(r":\s*;\s*", ": ", out)
    return re.sub(r":\s*\.?$", ".", out)


# --- findings and summary ---------------------------------------------------------------------------


def _named(view: SegmentView) -> pd.DataFrame:
    t = view.table
    return t[~t[SEGMENT].isin([OTHER, UNASSIGNED])]


def findings(data: ReportData, settings: Settings, fmt: Fmt) -> list[dict[str, Any]]:
    """The three computed findings of the executive summary (metric, value, unit, text)."""
    w = WORDS[settings.report.preset]
    out: list[dict[str, Any]] = []
    t = data.totals
    primary = data.primary_type()
    if primary is not None:
        named = _named(data.segments[primary])
        named = named[named[REVENUE] > 0]
        if not named.empty:
            r = named.loc[(named["revenue_share"] - named["customer_share"]).idxmax()]
            out.append(
                {
                    "metric": "top_segment_revenue_share",
                    "value": float(r["revenue_share"]),
                    "unit": "share",
                    "text": f"{r[SEGMENT]} are {fmt.pct(r['customer_share'])} of {w['customers']} and "
                    f"{fmt.pct(r['revenue_share'])} of net revenue.",
                    "segment": str(r[SEGMENT]),
                    "customer_share": float(r["customer_share"]),
                }
            )
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
    if risk_rows is not None:
        n = float(risk_rows[CUSTOMERS].sum())
        clv_based = bool(data.has.get(CLV) and float(risk_rows["n_clv"].sum()) > 0)
        if clv_based:
            fallback = data.clv_validity is not None and data.clv_validity.fallback
            what = "CLV estimated from the historical spend rate" if fallback else "predicted CLV"
            v = float(risk_rows["sum_clv"].sum())
        else:
            v, what = float(risk_rows[REVENUE].sum()), "net revenue to date"
        out.append(
            {
                "metric": "value_at_risk",
                "value": v,
                "unit": "currency",
                "text": f"{fmt.money(v)} of {what} sits in {label} ({fmt.count(n)} {w['customers']}, "
                f"{fmt.pct(n / t[CUSTOMERS] if t[CUSTOMERS] else math.nan)} of all).",
                "clv": clv_based,
            }
        )
    if data.has.get(CHURN_RISK) and t[f"n_{CHURN_RISK}"] > 0:
        share = t["high_churn_risk"] / t[f"n_{CHURN_RISK}"]
        out.append(
            {
                "metric": "high_churn_risk_share",
                "value": share,
                "unit": "share",
                "text": f"{fmt.pct(share)} of scored {w['customers']} have a high churn risk "
                f"(at least {fmt.pct(settings.churn.high_risk_threshold, 0)} of not buying within "
                f"{settings.churn.horizon_days} days).",
            }
        )
    if LIFECYCLE_STAGE in data.segments and len(out) < 3:
        row = data.segments[LIFECYCLE_STAGE].row("churned")
        if row is not None and t["buyers"]:
            share = float(row[CUSTOMERS]) / t["buyers"]
            out.append(
                {
                    "metric": "churned_buyer_share",
                    "value": share,
                    "unit": "share",
                    "text": f"{fmt.pct(share)} of buyers have lapsed (no purchase for more than "
                    f"{settings.lifecycle.churned_days} days).",
                }
            )
    if len(out) < 3 and t["buyers"]:
        share = (t["buyers"] - t["repeat_buyers"]) / t["buyers"]
        out.append(
            {
                "metric": "one_time_buyer_share",
                "value": share,
                "unit": "share",
                "text": f"{fmt.pct(share)} of buyers have bought only once.",
            }
        )
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


def summary_table(
    data: ReportData,
    recs: pd.DataFrame,
    found: list[dict[str, Any]],
    settings: Settings,
    validity: Validity | None = None,
    missing: list[str] | None = None,
) -> pd.DataFrame:
    """``report_summary``: one row per headline figure (metric, value, unit, text)."""
    t = data.totals
    sym = settings.report.currency_symbol
    fmt = Fmt(sym)
    rows: list[tuple[str, float | None, str, str]] = [
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
    if not recs.empty:
        rows += [
            ("plays", float(len(recs)), "count", fmt.count(len(recs))),
            ("testable_plays", float(recs["testable"].sum()), "count", fmt.count(recs["testable"].sum())),
            ("total_impact", float(recs["impact"].sum()), "currency", fmt.money(recs["impact"].sum())),
        ]
        for _, r in recs.head(3).iterrows():
            rows.append(
                (
                    f"top_play_{int(r['rank'])}",
                    float(r["impact"]),
                    "currency",
                    f"{r['play_name']} for {r['segment']}: {fmt.money(r['impact'])} impact (assumed), "
                    f"effort {r['effort']}"
                    + (f"; measured by a {r['test_design']}" if r["testable"] else f"; {r['test_flag']}"),
                )
            )
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
    if validity is not None:
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
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype("float64")
    return out.drop_duplicates("metric", keep="first").reset_index(drop=True)


# --- tables for the templates ----------------------------------------------------------------------


def _mix_text(view: SegmentView, segment: str, k: int) -> str:
    """The top lifecycle stages of a segment as shares; stages with fewer than ``k`` customers in the
    segment are pooled into "other stages" so no cross-tab cell below the minimum size shows."""
    mix = view.lifecycle_mix
    if mix is None or segment not in mix.index:
        return "–"
    row = mix.loc[segment]
    total = float(row.sum())
    if not total:
        return "–"
    parts = sorted(((str(s), float(v)) for s, v in row.items() if v >= k), key=lambda p: -p[1])
    rest = total - sum(v for _, v in parts[:3])
    shown = [(s.replace("_", " "), v) for s, v in parts[:3]] + ([("other stages", rest)] if rest > 0 else [])
    return ", ".join(f"{s} {v / total * 100:.0f}%" for s, v in shown)


def _traits(row: pd.Series, data: ReportData, fmt: Fmt) -> str:
    t = data.totals
    bits = []

    def overall(m: str) -> float:
        return t[f"sum_{m}"] / t[f"n_{m}"] if t[f"n_{m}"] else math.nan

    mon, all_mon = _as_float(row.get("mean_monetary")), overall("monetary")
    if _finite(mon) and _finite(all_mon) and all_mon:
        ratio = mon / all_mon
        bits.append(f"net revenue {fmt.money(mon)} each ({ratio:.1f}x the average {fmt.money(all_mon)})")
    fr, all_fr = row.get("mean_frequency"), overall("frequency")
    if _finite(fr) and _finite(all_fr):
        bits.append(f"{fmt.num(fr, 1)} purchases (average {fmt.num(all_fr, 1)})")
    rec, all_rec = row.get("mean_recency_days"), overall("recency_days")
    if _finite(rec) and _finite(all_rec):
        bits.append(f"last purchase {fmt.count(rec)} days ago (average {fmt.count(all_rec)})")
    return "; ".join(bits) or "–"


def segment_profile_table(
    view: SegmentView, data: ReportData, settings: Settings, fmt: Fmt, colours: dict[str, str]
) -> Table:
    plays = play_settings(settings)
    w = WORDS[settings.report.preset]
    header = [
        "Segment",
        w["Customers"],
        f"% {w['customers']}",
        "% revenue",
        "R / F / M",
        "Recency (days)",
        "Purchases",
        f"Revenue / {w['customer']}",
    ]
    has_clv, has_churn = data.has.get(CLV), data.has.get(CHURN_RISK)
    if has_clv:
        header += ["Avg CLV", "CLV total"]
    if has_churn:
        header += ["Churn risk", "High risk"]
    header += ["Lifecycle mix", "Suggested play"]
    rows = []
    for _, r in view.table.iterrows():
        rfm = " / ".join(fmt.num(r.get(f"mean_{c}"), 1) for c in ("r_score", "f_score", "m_score"))
        row = [
            str(r[SEGMENT]),
            fmt.count(r[CUSTOMERS]),
            fmt.pct(r["customer_share"]),
            fmt.pct(r["revenue_share"]),
            rfm,
            fmt.num(r.get("mean_recency_days"), 0),
            fmt.num(r.get("mean_frequency"), 1),
            fmt.money(r.get("mean_monetary")),
        ]
        if has_clv:
            total_clv = r.get("sum_clv") if _as_float(r.get("n_clv")) > 0 else None
            row += [fmt.money(r.get("mean_clv")), fmt.money(total_clv)]
        if has_churn:
            row += [fmt.pct(r.get("mean_churn_risk")), fmt.pct(r.get("high_churn_risk_share"))]
        pid = play_for(view.segment_type, r, settings.rfm.bins, dominant_stage(view, str(r[SEGMENT])))
        row += [_mix_text(view, str(r[SEGMENT]), data.k), plays[pid].name if pid else "–"]
        rows.append(row)
    return Table(header, rows, [colours.get(str(s), C.OTHER_COLOUR) for s in view.table[SEGMENT]])


def persona_cards(
    data: ReportData,
    settings: Settings,
    fmt: Fmt,
    colours: dict[str, str],
    validity: Validity | None = None,
) -> list[dict[str, Any]]:
    view = data.segments.get(PERSONA)
    if view is None:
        return []
    plays = play_settings(settings)
    desc: dict[str, str] = {}
    prof = (data.clustering or {}).get("profiles")
    if isinstance(prof, pd.DataFrame) and "persona_description" in prof.columns:
        desc = {str(p): str(d) for p, d in zip(prof[PERSONA], prof["persona_description"], strict=True)}
        if not data.p_alive_ok():
            desc = {p: without_model_only(d) for p, d in desc.items()}
    cards = []
    for _, r in view.table.iterrows():
        name = str(r[SEGMENT])
        if name == UNASSIGNED:
            continue
        pid = play_for(PERSONA, r, settings.rfm.bins, dominant_stage(view, name))
        facts = [
            # all customers (prospects included); the description's share is of the buyers clustered
            ("Size", f"{fmt.count(r[CUSTOMERS])} ({fmt.pct(r['customer_share'])} of all customers)"),
            ("Revenue share", fmt.pct(r["revenue_share"])),
            (
                "R / F / M",
                " / ".join(fmt.num(r.get(f"mean_{c}"), 1) for c in ("r_score", "f_score", "m_score")),
            ),
        ]
        if data.has.get(CLV):
            label = "Avg CLV (historical rate)" if validity and validity.status == "fallback" else "Avg CLV"
            facts.append((label, fmt.money(r.get("mean_clv"))))
            if validity is not None:
                facts.append(("CLV validity", validity.short))
        if data.has.get(CHURN_RISK):
            facts.append(("Churn risk", fmt.pct(r.get("mean_churn_risk"))))
        facts.append(("Lifecycle mix", _mix_text(view, name, data.k)))
        cards.append(
            {
                "name": name,
                "colour": colours.get(name, C.OTHER_COLOUR),
                "description": desc.get(name, ""),
                "traits": _traits(r, data, fmt),
                "facts": facts,
                "play": f"{plays[pid].name}: {plays[pid].action}" if pid else "–",
            }
        )
    return cards


KPI_LABELS: dict[str, tuple[str, str]] = {
    "customers": ("Customers", "count"),
    "revenue": ("Revenue", "money"),
    "revenue_share": ("% revenue", "pct"),
    "avg_order_value": ("Avg order value", "money"),
    "orders_per_customer": ("Orders / customer", "num"),
    "repeat_purchase_rate": ("Repeat rate", "pct"),
    "retention_rate": ("Retention", "pct"),
    "churn_rate": ("Churned", "pct"),
    "avg_clv": ("Avg CLV", "money"),
    "avg_churn_risk": ("Churn risk", "pct"),
    "conversion_rate_90d": ("Conversion 90d", "pct"),
    "engaged_share_30d": ("Engaged 30d", "pct"),
    "sessions_per_customer_30d": ("Sessions / cust. 30d", "num"),
}


# One line per KPI, shown under the KPI tables (the SQL's own definitions, segment_kpis.sql).
KPI_DEFINITIONS: dict[str, str] = {
    "customers": "members of the segment (buyers and, for lifecycle, prospects).",
    "revenue": "net revenue to date (orders net of returns) of the segment's members.",
    "revenue_share": "the segment's revenue as a share of all revenue.",
    "avg_order_value": "revenue / purchases.",
    "orders_per_customer": "purchases / members.",
    "repeat_purchase_rate": "buyers with 2 or more purchases / buyers.",
    "retention_rate": "buyers in lifecycle stage new, active or reactivated at the as-of date / buyers.",
    "churn_rate": "buyers in lifecycle stage churned (recency beyond lifecycle.churned_days) / buyers.",
    "avg_clv": "mean predicted customer lifetime value over the configured horizon.",
    "avg_churn_risk": "mean predicted probability of no purchase within the churn horizon.",
    "conversion_rate_90d": "purchase events / sessions in the last 90 days, summed over the segment.",
    "engaged_share_30d": "members with a session in the last 30 days / members.",
    "sessions_per_customer_30d": "sessions in the last 30 days per member (members without events count 0).",
}
# LTV:CAC above this is shown as ">cap": at that level the ratio says more about missing spend than efficiency
LTV_CAC_CAP = 20.0
LTV_CAC_DEFINITIONS: tuple[tuple[str, str], ...] = (
    (
        "CAC",
        "marketing spend / new customers of the channel, over the months whose spend is known "
        "(a segment's CAC: the mean of its members' channel CAC).",
    ),
    (
        "Realized LTV",
        "mean net revenue in the first kpis.ltv_window_months after the first purchase, over "
        "the customers observed that long.",
    ),
    ("Predicted LTV", "mean predicted CLV of the same new customers."),
    (
        "LTV:CAC",
        f"LTV / CAC; 3 or more is usually called healthy. Ratios above {LTV_CAC_CAP:.0f} are shown as "
        f">{LTV_CAC_CAP:.0f}: they mean little spend is recorded for the group (organic or referral "
        "channels, or spend missing from marketing_spend), not an efficient channel; check the spend first.",
    ),
)


# Model metrics in words: label, digits, and how to read the value (None: no reading added).
METRIC_WORDS: dict[str, tuple[str, int, str | None]] = {
    "silhouette": ("silhouette", 2, "-1 to 1; higher means better separated clusters"),
    "davies_bouldin": ("Davies-Bouldin index", 2, "lower is better"),
    "calinski_harabasz": ("Calinski-Harabasz index", 0, "higher is better"),
    "stability": ("stability", 2, "agreement of refits on resamples, 1 = identical"),
    "wcss": ("within-cluster sum of squares", 0, None),
    "holdout_mae": ("mean absolute error", 3, "repeat purchases per customer in the holdout period"),
    "holdout_rmse": ("root mean squared error", 3, "repeat purchases per customer in the holdout period"),
    "holdout_corr": ("correlation of predicted and actual purchases", 2, "1 = perfect ranking"),
    "holdout_total_error_pct": ("error of the total holdout purchases", 1, "percent; 0 = exact"),
    "histogram_chi2": (
        "chi-square of the purchase-count histogram",
        1,
        "predicted vs. actual customers per repeat count; lower is closer",
    ),
    "auc": ("ROC AUC", 3, "0.5 = chance, 1 = perfect ranking of churners"),
    "pr_auc": ("PR AUC", 3, "precision over recall; compare with the churn base rate"),
    "brier": ("Brier score", 3, "mean squared error of the probabilities; lower is better"),
    "lift_top_decile": ("top-decile lift", 2, "churn rate of the riskiest 10% / the base rate"),
    "ece": ("expected calibration error", 3, "0 = predicted probabilities match observed rates"),
}


def metric_words(name: str, value: Any, fmt: Fmt) -> str:
    """One model metric as a reader reads it: "silhouette 0.41 (-1 to 1; higher ...)"; counts as
    whole numbers ("6 clusters"); a metric not listed keeps its name with spaces."""
    if name in {"clusters", "k"}:
        return f"{fmt.count(value)} clusters"
    if name not in METRIC_WORDS:
        return f"{name.replace('_', ' ')} {fmt.metric(value)}"
    label, digits, reading = METRIC_WORDS[name]
    number = fmt.count(value) if digits == 0 else fmt.num(value, digits)
    return f"{label} {number}" + (f" ({reading})" if reading else "")


DEMOGRAPHIC_LABELS: dict[str, str] = {
    "age_band": "age band",
    "country": "country",
    "gender": "gender",
    "income_band": "income band",
    "industry": "industry",
    "company_size": "company size",
}


def demographic_tables(data: ReportData, fmt: Fmt, words: dict[str, str]) -> list[tuple[str, Table]]:
    """One table per demographic attribute: customers and revenue with their shares, mean CLV and
    mean churn risk (when modelled), for groups of at least the minimum segment size."""
    out = []
    for attribute, t in data.demographics.items():
        header = [
            DEMOGRAPHIC_LABELS.get(attribute, attribute).capitalize(),
            words["Customers"],
            f"% {words['customers']}",
            "Revenue",
            "% revenue",
        ]
        has_clv, has_churn = f"mean_{CLV}" in t.columns, f"mean_{CHURN_RISK}" in t.columns
        header += ["Avg CLV"] * has_clv + ["Avg churn risk"] * has_churn
        rows = []
        for _, r in t.iterrows():
            row = [
                str(r[SEGMENT]),
                fmt.count(r[CUSTOMERS]),
                fmt.pct(r["customer_share"]),
                fmt.money(r[REVENUE]),
                fmt.pct(r["revenue_share"]),
            ]
            row += [fmt.money(r[f"mean_{CLV}"])] * has_clv + [fmt.pct(r[f"mean_{CHURN_RISK}"])] * has_churn
            rows.append(row)
        out.append((DEMOGRAPHIC_LABELS.get(attribute, attribute), Table(header, rows)))
    return out


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


def kpi_definitions(kpis: dict[str, pd.DataFrame]) -> list[tuple[str, str]]:
    """(label, definition) for every KPI column the report's KPI tables show, in table order."""
    shown = {c for wide in kpis.values() for c in wide.columns}
    return [(KPI_LABELS[c][0], KPI_DEFINITIONS[c]) for c in KPI_LABELS if c in shown]


def _ratio_text(fmt: Fmt, v: Any) -> str:
    return f">{LTV_CAC_CAP:.0f}" if _finite(v) and float(v) > LTV_CAC_CAP else fmt.num(v, 2)


def kpi_table(wide: pd.DataFrame, fmt: Fmt, colours: dict[str, str], words: dict[str, str]) -> Table:
    cols = [c for c in KPI_LABELS if c in wide.columns]
    header = ["Segment", *[KPI_LABELS[c][0].replace("Customers", words["Customers"]) for c in cols]]
    rows = []
    for seg, r in wide.iterrows():
        rows.append([str(seg), *[getattr(fmt, KPI_LABELS[c][1])(r[c]) for c in cols]])
    return Table(header, rows, [colours.get(str(s), C.OTHER_COLOUR) for s in wide.index])


def ltv_cac_tables(
    ltv: pd.DataFrame, fmt: Fmt, primary: str | None, order: list[str] | None = None
) -> list[tuple[str, Table]]:
    out = []
    header = [
        "Group",
        "New customers",
        "Spend",
        "CAC",
        "CAC status",
        "Realized LTV",
        "Predicted LTV",
        "LTV:CAC",
        "Predicted LTV:CAC",
    ]

    def rows(df: pd.DataFrame) -> list[list[str]]:
        return [
            [
                str(r["segment"]),
                fmt.count(r["new_customers"]),
                fmt.money(r.get("spend")),
                fmt.money(r["cac"]),
                str(r["cac_status"]),
                fmt.money(r["ltv_realized"]),
                fmt.money(r["ltv_predicted"]),
                _ratio_text(fmt, r["ltv_to_cac"]),
                _ratio_text(fmt, r["ltv_predicted_to_cac"]),
            ]
            for _, r in df.iterrows()
        ]

    ch = ltv[ltv["level"] == "channel"]
    if not ch.empty:
        out.append(("By acquisition channel", Table(header, rows(ch.sort_values("segment")))))
    seg = ltv[(ltv["level"] == "segment") & (ltv["segment_type"].isin([primary, "all"]))]
    if order:  # the segment order of the profile tables, 'all' last
        rank = {name: i for i, name in enumerate([*order, "all"])}
        seg = seg.sort_values("segment", key=lambda c: c.map(lambda v: rank.get(v, len(rank))))
    if not seg.empty:
        out.append((f"By {TYPE_LABELS.get(primary or '', 'segment')}", Table(header, rows(seg))))
    return out


def recommendation_table(recs: pd.DataFrame, fmt: Fmt) -> Table:
    header = [
        "#",
        "Play",
        "Segment",
        "Customers",
        "Value at stake",
        "Uplift (assumed)",
        "Impact",
        "Effort",
        "Quadrant",
        "Owner",
    ]
    rows = [
        [
            str(r["rank"]),
            str(r["play_name"]),
            str(r["segment"]),
            fmt.count(r["customers"]),
            f"{fmt.money(r['value_at_stake'])} ({r['value_basis']})",
            fmt.pct(r["uplift_assumption"], 0),
            fmt.money(r["impact"]),
            str(r["effort"]),
            str(r["quadrant"]),
            str(r["owner"]),
        ]
        for _, r in recs.iterrows()
    ]
    return Table(header, rows)


def ab_table(recs: pd.DataFrame, fmt: Fmt) -> Table:
    header = [
        "#",
        "Play",
        "Segment",
        "Baseline rate",
        "Baseline metric",
        "MDE (abs.)",
        "Target rate",
        "Rate test: sample / arm",
        "Rate test: weeks",
        "How it is measured",
    ]
    rows = []
    for _, r in recs.iterrows():
        weeks = fmt.count(r["weeks_needed"]) if _finite(r["weeks_needed"]) else "–"
        design = str(r.get("test_design") or "")
        note = str(r.get("design_note") or "")
        verdict = (
            "conversion test"
            if design == "conversion test"
            else f"{design}: {note}"
            if design
            else str(r["test_flag"])
        )
        rows.append(
            [
                str(r["rank"]),
                str(r["play_name"]),
                str(r["segment"]),
                fmt.pct(r["baseline_rate"]),
                str(r["baseline_metric"]),
                fmt.pct(r["mde"], 2),
                fmt.pct(r["target_rate"]),
                fmt.count(r["sample_size_per_arm"]) if _finite(r["sample_size_per_arm"]) else "–",
                weeks,
                verdict,
            ]
        )
    return Table(header, rows)


def frame_table(df: pd.DataFrame, fmt: Fmt, limit: int = 40) -> Table:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return fmt.num(v, 3)
        if isinstance(v, int):
            return fmt.count(v)
        return "–" if v is None else str(v)

    return Table(
        [str(c) for c in df.columns],
        [[cell(v) for v in row] for row in df.head(limit).itertuples(index=False)],
    )


def governance_rows(settings: Settings, as_of: dt.date | None) -> list[tuple[str, str, bool]]:
    """(item, what is decided, whether it is decided) from ``report.governance``; an item not set
    names the setting that records it."""
    g = settings.report.governance

    def item(name: str, value: str | None, key: str) -> tuple[str, str, bool]:
        if value:
            return name, value, True
        return name, f"not decided yet (set report.governance.{key})", False

    base = g.last_review or as_of or dt.date.today()
    due = (pd.Timestamp(base) + pd.DateOffset(months=g.review_every_months)).date()
    consent = (
        f"only customers whose CRM column '{g.consent_column}' is true enter an activation list"
        if g.consent_column
        else None
    )
    months = f"{g.review_every_months} months after"
    since = (
        f"{months} the last review ({g.last_review.isoformat()})"
        if g.last_review
        else f"{months} this run (no review recorded: report.governance.last_review)"
    )
    return [
        item("Legal basis", g.legal_basis, "legal_basis"),
        item("Consent for activation", consent, "consent_column"),
        item("Retention period", g.retention_period, "retention_period"),
        item("Owner", g.owner_role, "owner_role"),
        item("Reviewer", g.reviewer_role, "reviewer_role"),
        ("Next review", f"{due.isoformat()}: {since}", g.last_review is not None),
    ]


def _print_pdf(folder: Path, mode: str) -> bool:
    """``report.pdf`` from ``report.html`` in ``folder`` (see :mod:`segspark.report.pdf`)."""
    from segspark.report import pdf

    if mode == "off":
        return False
    exe = pdf.find_chromium()
    if exe is None:
        if mode == "on":
            raise EnvironmentProblem(
                "report.pdf is on but no Chromium was found: install chromium or set SEGSPARK_CHROMIUM"
            )
        log.info("report PDF not written: no Chromium found (install chromium or set SEGSPARK_CHROMIUM)")
        return False
    started = time.perf_counter()
    try:
        pdf.print_pdf(folder / "report.html", folder / "report.pdf", exe)
    except EnvironmentProblem as exc:
        if mode == "on":
            raise
        # auto: the HTML and Markdown are the report; a browser that cannot print does not fail the run
        log.warning("report PDF not written: %s", exc)
        (folder / "report.pdf").unlink(missing_ok=True)
        return False
    log.info("report PDF printed in %.1f s", time.perf_counter() - started)
    return True


def plan_rows(settings: Settings, as_of: dt.date | None) -> Table:
    cfg = settings.report
    start = cfg.start_date or ((as_of or dt.date.today()) + dt.timedelta(days=7))
    steps = cfg.milestones or DEFAULT_MILESTONES[cfg.preset]
    rows = []
    for m in sorted(steps, key=lambda s: (s.start_week, s.name)):
        begin = start + dt.timedelta(weeks=m.start_week)
        end = begin + dt.timedelta(weeks=m.weeks) - dt.timedelta(days=1)
        rows.append([m.name, m.owner, f"week {m.start_week}", begin.isoformat(), end.isoformat()])
    return Table(["Milestone", "Owner", "Starts", "From", "To"], rows)


def sql_appendix() -> list[tuple[str, str]]:
    from segspark.sql import load_sql, sql_names

    return [(f"{n}.sql", load_sql(n)) for n in sql_names()]


# --- the entry point ---------------------------------------------------------------------------------


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("segspark.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["mdcell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


def _context(
    data: ReportData,
    recs: pd.DataFrame,
    charts: list[dict[str, Any]],
    found: list[dict[str, Any]],
    palettes: dict[str, dict[str, str]],
    settings: Settings,
    missing: list[str] | None = None,
    summary: pd.DataFrame | None = None,
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
    clv_basis = ["predicted CLV", FALLBACK_BASIS]
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
        "top3_clv": bool(not recs.empty and recs.head(3)["value_basis"].isin(clv_basis).any()),
        "recs_clv": bool(not recs.empty and recs["value_basis"].isin(clv_basis).any()),
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
                "segment": r["segment"],
                "impact": fmt.money(r["impact"]),
                "effort": int(r["effort"]),
                "testable": bool(r["testable"]),
                "flag": r["test_flag"],
                "design": r.get("test_design") or "",
                "action": r["action"],
            }
            for _, r in recs.head(3).iterrows()
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
            (p.name, p.action, fmt.pct(p.uplift, 0), p.effort, p.owner)
            for p in play_settings(settings).values()
        ],
        "plan": plan_rows(settings, data.as_of_date),
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
        "governance": governance_rows(settings, data.as_of_date),
        "notes": data.notes,
        "sql": sql_appendix(),
        "config_yaml": yaml.safe_dump(settings.as_dict(), sort_keys=False, default_flow_style=False),
    }


def _palettes(data: ReportData) -> dict[str, dict[str, str]]:
    out = {st: C.palette(v.names()) for st, v in data.segments.items()}
    if data.transitions is not None:
        for dim, g in data.transitions.groupby("dimension"):
            names = [*out.get(str(dim), {}), *g["from_segment"].dropna(), *g["to_segment"].dropna()]
            out[str(dim)] = {**C.palette(names), **out.get(str(dim), {})}
    return out


def build_report(
    tables: Mapping[str, DataFrame | None], run: RunInfo, out_dir: Path, settings: Settings
) -> ReportResult:
    """Build the report of one run from its tables and return where it is plus the
    ``report_summary`` and ``recommendations`` tables (pandas; the pipeline writes them).

    ``tables``: Spark DataFrames read from the lakehouse by table name, restricted to the run
    (snapshot tables: its ``as_of_date`` partition; ``quarantine`` and ``runs``: its ``run_id``
    rows); ``customer_segments`` is required, the others optional (see :func:`collect`). ``run``:
    the run described and the command building the report. ``out_dir``: the reports root,
    normally ``<output.path>/reports``. Nothing comes from memory: the same tables give the same
    report.
    """
    started = time.perf_counter()
    run_id = str(run.run_id or "")
    if not run_id or not all(ch.isalnum() or ch in "-_" for ch in run_id):
        raise SegsparkError(f"report: run id {run_id!r} cannot name a report folder")
    cfg = settings.report
    data = collect(run, tables, settings)
    recs = recommend(data, settings)
    fmt = Fmt(cfg.currency_symbol)
    found = findings(data, settings, fmt)
    validity = clv_validity(data)
    missing = not_shown(data, recs, settings)
    summary = summary_table(data, recs, found, settings, validity, missing)
    palettes = _palettes(data)

    out_dir = Path(out_dir)
    run_dir = out_dir / run_id
    staging = out_dir / f".{run_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    figures_dir = staging / FIGURES
    figures_dir.mkdir(parents=True)
    chart_list = C.make_charts(
        data, recs, palettes, cfg.currency_symbol, settings.rfm.bins, cfg.ltv_cac_target
    )
    charts = []
    for ch in chart_list:
        png = C.to_png(ch.figure, figures_dir / f"{ch.name}.png", cfg.figure_dpi)
        caption = ch.caption
        if validity is not None and ch.name in CLV_CHARTS:
            caption = f"{caption} {validity.text}"
        charts.append(
            {
                "name": ch.name,
                "title": ch.title,
                "caption": caption,
                "validity": validity.status if validity is not None and ch.name in CLV_CHARTS else None,
                "file": f"{FIGURES}/{ch.name}.png",
                "uri": C.data_uri(png),
            }
        )
    context = _context(data, recs, charts, found, palettes, settings, missing, summary)
    env = _env()
    (staging / "report.html").write_text(
        env.get_template("report.html.j2").render(**context), encoding="utf-8"
    )
    (staging / "report.md").write_text(env.get_template("report.md.j2").render(**context), encoding="utf-8")
    pdf_written = _print_pdf(staging, cfg.pdf)
    # replace this run's folder and latest/ in one step each, so readers never see half a report
    shutil.rmtree(run_dir, ignore_errors=True)
    staging.rename(run_dir)
    latest = out_dir / LATEST
    latest_tmp = out_dir / f".{LATEST}.tmp"
    shutil.rmtree(latest_tmp, ignore_errors=True)
    shutil.copytree(run_dir, latest_tmp)
    shutil.rmtree(latest, ignore_errors=True)
    latest_tmp.rename(latest)
    seconds = time.perf_counter() - started
    log.info("report written to %s in %.1f s (%d charts)", run_dir, seconds, len(charts))
    return ReportResult(
        html_path=run_dir / "report.html",
        md_path=run_dir / "report.md",
        pdf_path=run_dir / "report.pdf" if pdf_written else None,
        figures_dir=run_dir / FIGURES,
        latest_dir=latest,
        summary=summary,
        recommendations=recs,
        figures=[str(c["name"]) for c in charts],
        seconds=seconds,
        data=data,
        not_shown=missing,
    )
