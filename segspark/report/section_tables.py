"""The report's tables: segment profiles, personas, KPIs, demographics, LTV:CAC, plays, A/B designs,
the plan, governance and the SQL appendix, each built from the collected ``ReportData``."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from segspark.config import Milestone, Settings
from segspark.report import charts as C
from segspark.report.data import MODEL_ONLY_FEATURES, UNASSIGNED, ReportData, SegmentView
from segspark.report.fmt import WORDS, Fmt, Table, _as_float, _finite
from segspark.report.recommend import (
    dominant_stage,
    play_for,
    play_settings,
)
from segspark.schema import CHURN_RISK, CLV, CUSTOMERS, PERSONA, REVENUE, SEGMENT

if TYPE_CHECKING:
    pass

DEFAULT_MILESTONES: dict[str, list[Milestone]] = {
    "retail": [
        Milestone(
            name="Approve plays, assumptions and test plans", owner="Head of CRM", start_week=0, weeks=1
        ),
        Milestone(
            name="Build audiences from the segment table in the CRM and email platform",
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
            name="Update the plays' assumptions with the test results",
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
            name="Update the plays' assumptions with the test results",
            owner="Analytics",
            start_week=12,
            weeks=1,
        ),
    ],
}


@dataclass(frozen=True)
class Validity:
    """The CLV validity line shown next to every CLV figure."""

    status: str  # ok | bad | unknown | fallback (the badge's colour)
    text: str  # the full sentence
    short: str  # the compact badge (persona cards, chart captions)


_MODEL_ONLY_PHRASE = re.compile(
    r"(?:;\s*)?\b(?:" + "|".join(f.replace("_", " ") for f in MODEL_ONLY_FEATURES) + r")\b[^;]*?(?=;|\.?$)"
)


def without_model_only(text: str) -> str:
    """A persona description without its P(alive) and expected-purchases phrases (for runs whose
    CLV fell back or whose model is not valid: those figures would rest on nothing)."""
    out = _MODEL_ONLY_PHRASE.sub("", text)
    out = re.sub(r":\s*;\s*", ": ", out)
    return re.sub(r":\s*\.?$", ".", out)


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
    w = WORDS[settings.report.preset]
    # at most 12 short columns, so the table fits the A4 width (the lifecycle mix is in the primary
    # cross-tab, the play in the executive part's segment table)
    header = [
        "Segment",
        w["Customers"],
        f"% {w['customers']}",
        "% revenue",
        "R/F/M",
        "Recency (days)",
        "Purchases",
        f"Revenue / {w['customer']}",
    ]
    has_clv, has_churn = data.has.get(CLV), data.has.get(CHURN_RISK)
    if has_clv:
        header += ["Avg CLV", "CLV total"]
    if has_churn:
        header += ["Churn risk", "High risk"]
    rows = []
    for _, r in view.table.iterrows():
        # no spaces: the scores never wrap over several lines
        rfm = "/".join(fmt.num(r.get(f"mean_{c}"), 1) for c in ("r_score", "f_score", "m_score"))
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
                "R/F/M",
                "/".join(fmt.num(r.get(f"mean_{c}"), 1) for c in ("r_score", "f_score", "m_score")),
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


# CAC status -> how the LTV:CAC table says it; a ratio is shown only for ``known`` (complete spend)
CAC_STATUS_WORDS: dict[str, str] = {
    "known": "complete",
    "partial_spend": "spend missing for some months: no ratio",
    "unknown_spend": "no spend recorded: no ratio",
    "no_new_customers": "no new customers",
}


LTV_CAC_RULE = (
    "A channel's LTV:CAC is shown only when its spend is complete: marketing_spend has a row for every "
    "month in which the channel acquired customers (cac_status = known). A channel with spend missing "
    "for any such month, or with none, shows no CAC and no ratio: a partial CAC would be too low and its "
    "ratio too high. LTV:CAC is not shown by segment: a segment holds customers acquired at any time "
    "(every Champion was once new), so it has no acquisition cost of its own."
)


LTV_CAC_DEFINITIONS: tuple[tuple[str, str], ...] = (
    (
        "CAC",
        "marketing spend / new customers of the channel over the months it acquired customers; shown "
        "only when the spend of every such month is known.",
    ),
    (
        "Realized LTV",
        "mean net revenue in the first kpis.ltv_window_months after the first purchase, over "
        "the customers observed that long.",
    ),
    ("Predicted LTV", "mean predicted CLV of the same new customers."),
    ("LTV:CAC", "LTV / CAC for channels with complete spend; 3 or more is usually called healthy."),
)


def complete_spend(ltv: pd.DataFrame) -> pd.Series:
    """Whether each LTV:CAC row's CAC rests on complete spend (status ``known``)."""
    return ltv["cac_status"].astype("string").fillna("") == "known"


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


def kpi_definitions(kpis: dict[str, pd.DataFrame]) -> list[tuple[str, str]]:
    """(label, definition) for every KPI column the report's KPI tables show, in table order."""
    shown = {c for wide in kpis.values() for c in wide.columns}
    return [(KPI_LABELS[c][0], KPI_DEFINITIONS[c]) for c in KPI_LABELS if c in shown]


def _ratio_text(fmt: Fmt, v: Any, complete: bool = True) -> str:
    return fmt.num(v, 2) if complete else "–"


def kpi_table(wide: pd.DataFrame, fmt: Fmt, colours: dict[str, str], words: dict[str, str]) -> Table:
    cols = [c for c in KPI_LABELS if c in wide.columns]
    header = ["Segment", *[KPI_LABELS[c][0].replace("Customers", words["Customers"]) for c in cols]]
    rows = []
    for seg, r in wide.iterrows():
        rows.append([str(seg), *[getattr(fmt, KPI_LABELS[c][1])(r[c]) for c in cols]])
    return Table(header, rows, [colours.get(str(s), C.OTHER_COLOUR) for s in wide.index])


def ltv_cac_tables(
    ltv: pd.DataFrame, fmt: Fmt, primary: str | None = None, order: list[str] | None = None
) -> list[tuple[str, Table]]:
    """The channel table of LTV:CAC (:data:`LTV_CAC_RULE`: ratios only where spend is complete)."""
    header = [
        "Channel",
        "New customers",
        "Spend",
        "CAC",
        "Spend status",
        "Realized LTV",
        "Predicted LTV",
        "LTV:CAC",
        "Predicted LTV:CAC",
    ]
    ch = ltv[ltv["level"] == "channel"].sort_values("segment")
    if ch.empty:
        return []
    rows = []
    for (_, r), ok in zip(ch.iterrows(), complete_spend(ch), strict=True):
        rows.append(
            [
                str(r["segment"]),
                fmt.count(r["new_customers"]),
                fmt.money(r.get("spend")),
                fmt.money(r["cac"]) if ok else "–",
                CAC_STATUS_WORDS.get(str(r["cac_status"]), str(r["cac_status"])),
                fmt.money(r["ltv_realized"]),
                fmt.money(r["ltv_predicted"]),
                _ratio_text(fmt, r["ltv_to_cac"], ok),
                _ratio_text(fmt, r["ltv_predicted_to_cac"], ok),
            ]
        )
    return [("By acquisition channel", Table(header, rows))]


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


def governance_rows(settings: Settings, run_date: dt.date | None) -> list[tuple[str, str, bool]]:
    """(item, what is decided, whether it is decided) from ``report.governance``; an item not set
    names the setting that records it. Without a recorded review the next one is due
    ``review_every_months`` after ``run_date`` (the day the report is built)."""
    g = settings.report.governance

    def item(name: str, value: str | None, key: str) -> tuple[str, str, bool]:
        if value:
            return name, value, True
        return name, f"not decided yet (set report.governance.{key})", False

    base = g.last_review or run_date or dt.date.today()
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


def plan_rows(settings: Settings, run_date: dt.date) -> Table:
    """The implementation plan, dated from the day the report is built (the data's as-of date may
    lie long before it): ``report.start_date`` when it is not in the past, else a week after."""
    cfg = settings.report
    start = (
        cfg.start_date if cfg.start_date and cfg.start_date >= run_date else run_date + dt.timedelta(days=7)
    )
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
