"""What the report knows about a run: the collected ``ReportData`` and its parts (segment views,
lineage, CLV validity), and the column names the report reads."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from segspark.schema import (  # the columns' one spelling
    CHURN_RISK,
    CLV,
    CUSTOMERS,
    F_SCORE,
    FREQUENCY,
    LIFECYCLE_STAGE,
    M_SCORE,
    MONETARY,
    P_ALIVE,
    PERSONA,
    R_SCORE,
    RECENCY_DAYS,
    REVENUE,
    RFM_SEGMENT,
    SEGMENT,
    VALUE_TIER,
)

# --- columns of the run's tables (names as their stages define them) ------------------------------


SEGMENT_TYPES: tuple[str, ...] = (RFM_SEGMENT, LIFECYCLE_STAGE, PERSONA, VALUE_TIER)


LIFECYCLE_ORDER: tuple[str, ...] = ("prospect", "new", "active", "reactivated", "at_risk", "churned")


ALL = "all"


DRIFT_TOTAL = "__total__"  # the drift table's per-dimension summary row


PREVIOUS_SUMMARY = "previous_report_summary"  # optional: the previous run's report_summary rows


OTHER = "Other"


UNASSIGNED = "unassigned"


# Measures summed (with a non-null count) per segment so that means of merged groups stay exact.
MEAN_MEASURES: tuple[str, ...] = (
    RECENCY_DAYS,
    FREQUENCY,
    MONETARY,
    R_SCORE,
    F_SCORE,
    M_SCORE,
    CLV,
    P_ALIVE,
    CHURN_RISK,
)


# Additive columns of the per-segment statistics table.
ADDITIVE: tuple[str, ...] = (
    CUSTOMERS,
    "buyers",
    "repeat_buyers",
    REVENUE,
    "high_churn_risk",
    *[f"sum_{m}" for m in MEAN_MEASURES],
    *[f"n_{m}" for m in MEAN_MEASURES],
    "sumsq_monetary",  # for the spread of revenue per customer (power of a revenue test)
)


# segment_kpis: how a KPI of merged segments is recomputed from its members (None: not shown).
KPI_MERGE: dict[str, str | None] = {
    "customers": "sum",
    "customer_share": "sum",
    "revenue": "sum",
    "revenue_share": "sum",
    "orders_per_customer": "weighted",
    "avg_clv": "weighted",
    "avg_churn_risk": "weighted",
    "sessions_per_customer_30d": "weighted",
    "active_days_per_customer_30d": "weighted",
    "engaged_share_30d": "weighted",
    "avg_order_value": "aov",
    "repeat_purchase_rate": None,
    "retention_rate": None,
    "churn_rate": None,
    "conversion_rate_90d": None,
}


# commands that run the pipeline and write the runs row a report describes (a report's own
# command, or a partial stage command, may have appended rows for the same run id)
PIPELINE_COMMANDS: tuple[str, ...] = ("run", "score", "demo")


@dataclass(frozen=True)
class RunInfo:
    """Which run the report describes and which command builds it (``run`` in the pipeline,
    ``report`` when rebuilt from the tables)."""

    run_id: str
    as_of_date: dt.date
    command: str


@dataclass
class RunLineage:
    """The run's row of the ``runs`` table: what the report says about lineage."""

    command: str | None
    status: str | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    config_hash: str | None
    code_version: str | None
    engine: str | None
    mlflow_run_id: str | None
    inputs: list[dict[str, Any]]
    outputs: dict[str, int | None]
    step_seconds: dict[str, float]
    # what the run degraded to (CLV fallback, skipped model, too-small section); None: the runs row
    # predates the warnings column
    warnings: list[str] | None = None


@dataclass
class SegmentView:
    """One segment type after the k-anonymity merge."""

    segment_type: str
    table: pd.DataFrame  # one row per shown segment: statistics, shares and means
    lifecycle_mix: pd.DataFrame | None  # shown segment x lifecycle stage: customers
    merged_segments: int = 0  # segments below the threshold merged into Other
    merged_customers: int = 0
    suppressed_customers: int = 0  # customers of an Other that was itself below the threshold

    def names(self) -> list[str]:
        return [str(s) for s in self.table[SEGMENT]]

    def row(self, segment: str) -> pd.Series | None:
        hit = self.table[self.table[SEGMENT] == segment]
        return None if hit.empty else hit.iloc[0]


# the clv_fit rows of the fits' validity checks (section "validity"; the fallback's reason is a
# "fit" row): written by the CLV stage since issue 14, absent from older tables
VALIDITY = "validity"


FALLBACK_MODEL = "historical_rate"
# the spend model that conditions spend on frequency (segspark.clv.spend.BY_FREQUENCY): it answers a
# failed Gamma-Gamma independence check instead of carrying it
SPEND_BY_FREQUENCY = "gamma_gamma_by_frequency"


SPEND_CHECKS: tuple[str, ...] = ("spend_corr", "spend_corr_ok")


# customer columns that exist only with a fitted BG/NBD or Pareto/NBD model (null in the fallback)
MODEL_ONLY_FEATURES: tuple[str, ...] = (P_ALIVE, "expected_purchases")


@dataclass
class ClvValidity:
    """What ``clv_fit`` says about the CLV fits' validity (read tolerantly: ``recorded`` is False
    for tables written before the checks existed)."""

    recorded: bool
    model: str | None  # the chosen model (``historical_rate`` for the fallback)
    fallback: bool = False
    fallback_reason: str | None = None
    # candidate -> valid (bool | None), reason, holdout_total_error (signed share), max_relative_se,
    # max_relative_se_param, chosen
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    spend_model: str | None = None
    spend_corr: float | None = None
    spend_corr_ok: bool | None = None
    spend_reason: str | None = None

    @property
    def chosen(self) -> dict[str, Any]:
        return self.models.get(self.model or "", {})

    @property
    def valid(self) -> bool | None:
        """The chosen model's verdict (None: not recorded)."""
        return self.chosen.get("valid") if self.recorded else None

    @property
    def p_alive_ok(self) -> bool:
        return not self.fallback and self.valid is not False


def _cell(value: Any) -> Any:
    """A table cell as a plain value: None for nulls and NaN."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        return value
    return value


def _number(value: Any) -> float | None:
    v = _cell(value)
    try:
        f = float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _reason(text: Any) -> str | None:
    """A reason text; the encoder's markers for booleans and NaN are not reasons."""
    t = _cell(text)
    if t is None or str(t).strip().lower() in ("", "true", "false", "nan", "none"):
        return None
    return str(t)


def clv_validity(pdf: pd.DataFrame) -> ClvValidity:
    """The validity of the CLV fits from ``clv_fit`` rows (model, chosen, section, name, value, text).

    Per candidate model: ``valid`` (1/0, reason in text), ``holdout_total_error`` (signed share
    (predicted - actual) / actual), ``max_relative_se`` (parameter name in text); for the spend
    model ``spend_corr`` and ``spend_corr_ok``. The fallback is model ``historical_rate``, chosen,
    with its reason as the ``fit`` row ``fallback_reason``. Missing rows or columns read as "not
    recorded", never as valid.
    """
    cols = {"model", "section", "name", "value", "text"}
    if pdf is None or pdf.empty or not cols <= set(pdf.columns):
        return ClvValidity(recorded=False, model=None)
    df = pdf.assign(
        model=pdf["model"].astype("string"),
        section=pdf["section"].astype("string"),
        name=pdf["name"].astype("string"),
        chosen=(pdf["chosen"].fillna(False).astype(bool) if "chosen" in pdf.columns else False),
    )
    fit = df[(df["section"] == "fit") & df["chosen"]]
    fit_model = next((_reason(t) for t in fit.loc[fit["name"] == "model", "text"]), None)
    spend_named = next((_reason(t) for t in fit.loc[fit["name"] == "spend_model", "text"]), None)
    fallback_reason = next(
        (_reason(t) for t in df.loc[(df["section"] == "fit") & (df["name"] == "fallback_reason"), "text"]),
        None,
    )
    rows = df[df["section"] == VALIDITY]
    spend_rows = rows[rows["name"].isin(SPEND_CHECKS)]
    spend_model = next(iter(spend_rows["model"].dropna()), None) or spend_named
    if spend_named == SPEND_BY_FREQUENCY:  # the check's rows stay Gamma-Gamma's, the model is another
        spend_model = spend_named
    models: dict[str, dict[str, Any]] = {}
    for r in rows[~rows["name"].isin(SPEND_CHECKS)].itertuples(index=False):
        m = models.setdefault(str(r.model), {"chosen": False})
        m["chosen"] = m["chosen"] or bool(r.chosen)
        value = _number(r.value)
        if r.name == "valid":
            m["valid"] = None if value is None else value >= 0.5
            m["reason"] = _reason(r.text)
        elif r.name == "holdout_total_error":
            m["holdout_total_error"] = value
        elif r.name == "max_relative_se":
            m["max_relative_se"] = value
            m["max_relative_se_param"] = _reason(r.text)
    chosen = [name for name, m in models.items() if m["chosen"]]
    model = FALLBACK_MODEL if FALLBACK_MODEL in chosen else (chosen[0] if chosen else fit_model)
    fallback = model == FALLBACK_MODEL or (fit_model == FALLBACK_MODEL)
    if fallback:
        model = FALLBACK_MODEL
    out = ClvValidity(
        recorded=bool(len(rows)) or fallback,
        model=model,
        fallback=fallback,
        fallback_reason=fallback_reason,
        models=models,
        spend_model=spend_model,
    )
    for r in spend_rows.itertuples(index=False):
        if r.name == "spend_corr":
            out.spend_corr = _number(r.value)
        else:
            ok = _number(r.value)
            out.spend_corr_ok = None if ok is None else ok >= 0.5
            out.spend_reason = _reason(r.text)
    return out


@dataclass
class ReportData:
    """Everything the report shows, as small pandas objects and plain values."""

    run_id: str
    as_of_date: dt.date | None
    k: int
    totals: dict[str, float]
    segments: dict[str, SegmentView]
    has: dict[str, bool]  # which customer columns exist: clv, churn_risk, p_alive, lifecycle_stage, ...
    kpis: dict[str, pd.DataFrame] = field(default_factory=dict)  # segment_type -> segment x kpi
    rfm_grid: pd.DataFrame | None = None  # r_score x f_score: customers (NaN where below k)
    rfm_grid_hidden: int = 0
    cohorts: pd.DataFrame | None = None  # cohort_month x months_since_first: retention rate
    cohorts_hidden: int = 0
    cohort_retention_at: dict[int, float] = field(default_factory=dict)  # month -> size-weighted retention
    ltv_cac: pd.DataFrame | None = None
    ltv_cac_hidden: int = 0
    transitions: pd.DataFrame | None = None  # dimension, from_segment, to_segment, customers
    transitions_hidden: int = 0
    moved_share: dict[str, float] = field(default_factory=dict)  # dimension -> share that changed segment
    first_run: bool = True
    clv_hist: pd.DataFrame | None = None  # bin_lo, bin_hi, customers
    clv_quantiles: dict[str, float] = field(default_factory=dict)
    quality: pd.DataFrame | None = None  # source_table, rule, rows
    command: str = ""  # the command building the report
    lineage: RunLineage | None = None  # the run's row of runs (None: not recorded)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    clustering: dict[str, Any] | None = None  # sweep, profiles, chosen, features
    clv_fit: dict[str, Any] | None = None  # fit, validation scalars
    clv_validity: ClvValidity | None = None  # the fit's validity rows (None: no clv_fit table)
    # clv_validation's holdout value by repeat-purchase band and RFM segment (report.clv_holdout)
    clv_holdout: pd.DataFrame | None = None
    churn: dict[str, float] | None = None
    drift: pd.DataFrame | None = None
    previous_summary: pd.DataFrame | None = None
    notes: dict[str, str] = field(default_factory=dict)  # section -> why something is absent
    # demographic attribute -> group x (customers, shares, revenue, mean CLV, mean churn risk), k-anonymous
    demographics: dict[str, pd.DataFrame] = field(default_factory=dict)
    # customers x every segment label and lifecycle stage: counts and sums (the primary cross-tab)
    cells: pd.DataFrame | None = None
    persona_channels: pd.DataFrame | None = None  # persona x channel: share of purchase orders

    def p_alive_ok(self) -> bool:
        """Whether statements may rest on P(alive): not when CLV fell back to the historical rate
        or the chosen model is recorded as invalid."""
        v = self.clv_validity
        return v is None or v.p_alive_ok

    def primary_type(self) -> str | None:
        """The segment type the plays are built on: RFM when present, else lifecycle, else persona."""
        for t in (RFM_SEGMENT, LIFECYCLE_STAGE, PERSONA, VALUE_TIER):
            if t in self.segments:
                return t
        return None
