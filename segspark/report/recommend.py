"""Plays per segment, their impact and effort, the ranking, and an A/B test plan for each play.

A play is one of ``retention``, ``win_back``, ``cross_sell`` (upsell), ``onboarding`` (first-time
buyers: the second purchase), ``first_purchase`` (prospects) and ``vip``, chosen for a segment by its
name (the standard RFM segments, lifecycle stages, value tiers) or, for personas and custom segments,
by its dominant lifecycle stage and its mean R and F scores. Lapsed segments (At Risk, Cannot Lose
Them, Hibernating, Lost, churned) get win-back; prospects get first purchase.

Every play is valued on one basis (:mod:`segspark.report.play_value`): expected incremental gross
margin over the CLV horizon minus the play's cost (per customer contacted plus fixed), and ranked by
that net value, highest first (ties: more customers, then the segment's name). A play whose value
has a missing input is left out of the ranking with the reason (:func:`plays_and_gaps`).
Impact-effort quadrant: high value = at least the median net value, low effort <= 2.

A/B plan (two-sided z-test of two proportions, equal arms). The outcome metric depends on the play:
retention and VIP plays aim to lower churn, so their metric is the churn rate (mean churn risk when
churn is modelled, else 1 - mean P(alive), else the one-time-buyer share; P(alive) only from a valid
CLV model) and the test must detect p1 = p0 x (1 - ``report.ab_test.mde_relative``); the other
plays aim to raise purchases, so their metric is the purchase rate (1 - mean churn risk, else mean
P(alive), else the repeat-purchase rate;
for prospects the recent conversion new buyers / (new buyers + prospects), else the share of known
customers who have bought) and p1 = p0 x (1 + mde_relative),
capped below 1. The sample size per arm solves statsmodels' ``NormalIndPower`` for Cohen's
h = ``proportion_effectsize(p1, p0)`` at ``alpha`` and ``power``, i.e.
n = 2 (z_{1-alpha/2} + z_{power})^2 / h^2. The segment can enrol ``customers x weekly_reach`` customers
a week, so weeks needed = ceil(2n / (customers x weekly_reach)); a play needing more than
``max_weeks`` (or more customers than the segment has) is flagged "too small to test: do not act on
it yet".

When that test cannot detect the effect in time, the play is not dropped: the designs below are
tried in order and the first one that is powered is proposed (column ``test_design``):

1. ``conversion test``: the test above.
2. ``revenue test``: revenue per customer over the test window, a two-sample t-test (statsmodels'
   ``TTestIndPower``) for the same relative effect. Its spread comes from the data: a customer buys
   in the window with the play's purchase probability p and then spends like the segment's customers
   (mean m, standard deviation s of revenue per customer, from the segment's sums and sums of
   squares), so the coefficient of variation is CV^2 = (1 + (s/m)^2) / p - 1 and Cohen's
   d = mde_relative / CV. Spend carries more signal than a rare event such as a 3% churn rate.
3. ``longer test``: the better of the two runs up to ``ab_test.long_test_weeks``.
4. ``pooled test``: the same play for every segment that gets it, randomized within each segment
   and analysed together (the pooled rate, customers and spend).
5. ``holdout rollout``: roll the play out to the segment and keep ``ab_test.holdout_share`` back;
   powered when the lift it can detect (on revenue per customer, else on the rate) is at most
   ``ab_test.max_holdout_lift``.

Plays with a powered design rank first (by priority); "do not act on it yet" is left only for a play
no design can measure. A design the power calculation cannot size (statsmodels finds no solution)
is not a failed run: the play says "cannot be sized" with the reason (:mod:`segspark.report.sizing`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from segspark.config import REPORT_PLAYS, AbTestConfig, Settings
from segspark.report.data import OTHER, UNASSIGNED, ReportData, SegmentView
from segspark.report.play_value import Valuation, valuation, value_fields
from segspark.report.sizing import CANNOT_SIZE, CannotSize, solve
from segspark.schema import CUSTOMERS, LIFECYCLE_STAGE, MONETARY, RFM_SEGMENT, SEGMENT, VALUE_TIER

TOO_SMALL = "too small to test: do not act on it yet"
FALLBACK_BASIS = "CLV estimate (historical spend rate)"  # when no CLV model passed its checks
RATE_CAP = 0.999  # a rate cannot reach 1; the treated rate is capped just below it
RATE_FLOOR = 1e-4

RECOMMENDATION_COLUMNS: tuple[str, ...] = (
    "rank",
    "play",
    "play_name",
    "segment",
    "segment_type",
    "customers",
    "value_basis",
    "horizon_months",
    "value_per_customer",
    "value_at_stake",
    "uplift_assumption",
    "gross_margin",
    "impact",
    "cost_per_contact",
    "fixed_cost",
    "play_cost",
    "net_value",
    "effort",
    "priority",
    "quadrant",
    "baseline_metric",
    "baseline_rate",
    "mde",
    "mde_relative",
    "target_rate",
    "alpha",
    "power",
    "sample_size_per_arm",
    "weeks_needed",
    "testable",
    "test_flag",
    "test_design",
    "design_note",
    "owner",
    "action",
    "rationale",
)


@dataclass(frozen=True)
class Play:
    """A play as a preset describes it. ``uplift`` is the assumed share of the play's reference
    value it adds (module docstring); costs are per customer contacted and fixed per run of the play."""

    name: str
    action: str
    uplift: float
    effort: int
    owner: str
    cost_per_contact: float = 0.0
    fixed_cost: float = 0.0


PRESET_PLAYS: dict[str, dict[str, Play]] = {
    "retail": {
        "retention": Play(
            "Retention nudge",
            "Personalised reminders and replenishment offers timed to each customer's usual gap between"
            " purchases.",
            0.10,
            2,
            "CRM / lifecycle marketing",
            0.30,
            2_000.0,
        ),
        "win_back": Play(
            "Win-back offer",
            "Time-limited comeback offer for customers who have stopped buying, with a short 'what"
            " changed' survey; stop after two unanswered contacts.",
            0.05,
            2,
            "CRM / lifecycle marketing",
            1.50,
            3_000.0,
        ),
        "cross_sell": Play(
            "Cross-sell and upsell",
            "Recommendations and bundles from adjacent categories; free-shipping threshold just above the"
            " usual basket.",
            0.08,
            3,
            "Merchandising and e-commerce",
            0.20,
            5_000.0,
        ),
        "onboarding": Play(
            "Welcome series",
            "Three-step welcome journey for first-time buyers that leads to the second purchase within"
            " 30 days.",
            0.10,
            1,
            "CRM / lifecycle marketing",
            0.30,
            2_000.0,
        ),
        "first_purchase": Play(
            "First-purchase offer",
            "Welcome offer and product guidance for registered prospects who have not bought yet, aimed"
            " at their first order.",
            0.05,
            1,
            "CRM / lifecycle marketing",
            0.50,
            2_000.0,
        ),
        "vip": Play(
            "VIP programme",
            "Early access, dedicated service and referral rewards; protect margin rather than discount.",
            0.05,
            3,
            "Loyalty programme",
            5.00,
            10_000.0,
        ),
    },
    "saas": {
        "retention": Play(
            "Renewal save motion",
            "Health-score alert to the customer success manager, usage review and renewal plan 90 days"
            " ahead.",
            0.08,
            3,
            "Customer success",
            150.0,
            5_000.0,
        ),
        "win_back": Play(
            "Win-back campaign",
            "Re-engagement offer for lapsed accounts on the features they never used; sales-assisted for"
            " former large accounts.",
            0.03,
            2,
            "Sales development",
            60.0,
            5_000.0,
        ),
        "cross_sell": Play(
            "Expansion (upsell seats and tiers)",
            "Usage-triggered upgrade prompts and account-manager expansion reviews at seat or limit"
            " thresholds.",
            0.10,
            3,
            "Account management",
            120.0,
            8_000.0,
        ),
        "onboarding": Play(
            "Onboarding and activation",
            "Guided setup to the activation milestone in the first 30 days; in-app checklist plus kickoff"
            " call.",
            0.15,
            3,
            "Customer success / product",
            200.0,
            10_000.0,
        ),
        "first_purchase": Play(
            "Trial-to-paid conversion",
            "Guided trial, usage nudges and a sales-assisted offer that turn trial and free accounts into"
            " paying ones.",
            0.05,
            2,
            "Growth / sales development",
            40.0,
            5_000.0,
        ),
        "vip": Play(
            "Executive sponsor programme",
            "Named executive sponsor, quarterly business reviews and roadmap previews for the top accounts.",
            0.03,
            4,
            "Account management",
            500.0,
            20_000.0,
        ),
    },
}

# Standard segment names -> play.
RFM_PLAYS: dict[str, str] = {
    "Champions": "vip",
    "Loyal": "cross_sell",
    "Potential Loyalist": "cross_sell",
    "New Customers": "onboarding",
    "Promising": "onboarding",
    "Need Attention": "retention",
    "About to Sleep": "retention",
    "At Risk": "win_back",  # long past their usual gap: a comeback offer, not a reminder
    "Cannot Lose Them": "win_back",
    "Hibernating": "win_back",
    "Lost": "win_back",
}
LIFECYCLE_PLAYS: dict[str, str] = {
    "prospect": "first_purchase",
    "new": "onboarding",
    "active": "cross_sell",
    "reactivated": "retention",
    "at_risk": "retention",
    "churned": "win_back",
}
VALUE_TIER_PLAYS: dict[str, str] = {"high": "vip", "standard": "cross_sell"}
# RFM segments whose value is at risk (the executive summary's "CLV at stake" finding).
AT_RISK_SEGMENTS: tuple[str, ...] = ("At Risk", "Cannot Lose Them")


def play_settings(settings: Settings) -> dict[str, Play]:
    """The preset's plays with ``report.uplift``, ``report.effort``, ``report.owners`` and
    ``report.value.cost_per_contact`` / ``fixed_cost`` applied."""
    cfg = settings.report
    out = {}
    for pid, p in PRESET_PLAYS[cfg.preset].items():
        out[pid] = Play(
            p.name,
            p.action,
            float(cfg.uplift.get(pid, p.uplift)),
            int(cfg.effort.get(pid, p.effort)),
            cfg.owners.get(pid, p.owner),
            float(cfg.value.cost_per_contact.get(pid, p.cost_per_contact)),
            float(cfg.value.fixed_cost.get(pid, p.fixed_cost)),
        )
    assert set(out) == set(REPORT_PLAYS)
    return out


def _num(v: object) -> float:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return x


def dominant_stage(view: SegmentView, segment: str) -> str | None:
    """The most common lifecycle stage of a shown segment (None without lifecycle stages)."""
    mix = view.lifecycle_mix
    if mix is None or segment not in mix.index or not float(mix.loc[segment].sum()):
        return None
    return str(mix.loc[segment].idxmax())


def play_for(segment_type: str, row: pd.Series, bins: int, stage: str | None = None) -> str | None:
    """The play for one segment: by its standard name, else by its lifecycle stage and numbers.

    ``stage`` is the segment's dominant lifecycle stage (personas, custom segments). Returns None
    for Other and unassigned, which are mixes and get no play.
    """
    name = str(row[SEGMENT])
    if name in (OTHER, UNASSIGNED):
        return None
    table = {RFM_SEGMENT: RFM_PLAYS, LIFECYCLE_STAGE: LIFECYCLE_PLAYS, VALUE_TIER: VALUE_TIER_PLAYS}.get(
        segment_type, {}
    )
    if name in table:
        return table[name]
    r, f = _num(row.get("mean_r_score")), _num(row.get("mean_f_score"))
    loyal = not math.isnan(f) and f >= 0.7 * bins
    if stage in ("churned", "at_risk", "new", "prospect"):
        return LIFECYCLE_PLAYS[stage]
    if stage in ("active", "reactivated"):
        return "vip" if loyal and (math.isnan(r) or r >= 0.7 * bins) else "cross_sell"
    if not math.isnan(r):
        if r >= 0.7 * bins:
            return (
                "vip" if loyal else ("onboarding" if _num(row.get("mean_frequency")) < 1.5 else "cross_sell")
            )
        return "win_back" if r <= 0.3 * bins else "retention"
    churn = _num(row.get("mean_churn_risk"))
    if not math.isnan(churn):
        return "win_back" if churn >= 0.7 else ("retention" if churn >= 0.4 else "cross_sell")
    return "cross_sell"


# Plays that aim to lower churn are tested on the churn rate (decrease); the others on the purchase
# rate (increase). Testing the rarer outcome keeps the relative effect meaningful near 0 and 1.
DECREASE_PLAYS: frozenset[str] = frozenset({"retention", "vip"})


def target_rate(baseline: float, mde_relative: float, decrease: bool = False) -> tuple[float, float]:
    """(p0, p1): the baseline clipped into (0, 1) and the rate the test must detect."""
    p0 = min(max(baseline, RATE_FLOOR), RATE_CAP)
    p1 = p0 * (1.0 - mde_relative) if decrease else min(p0 * (1.0 + mde_relative), RATE_CAP)
    return p0, max(p1, RATE_FLOOR / 10)


def sample_size_per_arm(
    baseline: float, mde_relative: float, alpha: float, power: float, decrease: bool = False
) -> int:
    """Customers per arm to detect p0 -> p0 x (1 +/- mde_relative): two-sided z-test of two
    proportions with equal arms, sized with statsmodels on Cohen's h."""
    p0, p1 = target_rate(baseline, mde_relative, decrease)
    if p1 == p0:
        raise ValueError(
            f"baseline rate {baseline:.4f} leaves no room for a {mde_relative:.0%} relative effect"
        )
    h = proportion_effectsize(p1, p0)
    n = solve(
        NormalIndPower(),
        "sample size",
        effect_size=abs(h),
        alpha=alpha,
        power=power,
        ratio=1.0,
        alternative="two-sided",
    )
    return math.ceil(n)


def weeks_needed(n_per_arm: int, customers: float, weekly_reach: float) -> float:
    """Weeks to enrol both arms at ``customers x weekly_reach`` a week; inf when the segment is too small."""
    if customers <= 0 or 2 * n_per_arm > customers:
        return math.inf
    return float(math.ceil(2 * n_per_arm / (customers * weekly_reach)))


@dataclass(frozen=True)
class Design:
    """How a play is measured: the design, its size and length, and whether it is powered."""

    kind: str  # conversion test, revenue test, longer test, pooled test, holdout rollout; "" for none
    sample_size_per_arm: int | None
    weeks: float | None
    powered: bool
    note: str


def revenue_cv(mean_spend: float, sd_spend: float, p_buy: float) -> float:
    """Coefficient of variation of revenue per customer over a test window (module docstring, 2.)."""
    if not (mean_spend > 0 and math.isfinite(sd_spend) and 0 < p_buy <= 1):
        return math.nan
    return math.sqrt(max((1.0 + (sd_spend / mean_spend) ** 2) / p_buy - 1.0, 0.0))


def revenue_sample_size(cv: float, mde_relative: float, alpha: float, power: float) -> int:
    """Customers per arm for a t-test of revenue per customer to detect a relative lift."""
    if not cv > 0:
        return 2  # no spread: any lift shows
    n = solve(
        TTestIndPower(),
        "sample size",
        effect_size=mde_relative / cv,
        alpha=alpha,
        power=power,
        ratio=1.0,
        alternative="two-sided",
    )
    return math.ceil(n)


def holdout_lift(customers: float, cfg: AbTestConfig, cv: float, p0: float, decrease: bool) -> float:
    """The relative lift a rollout with a ``holdout_share`` holdout detects at ``alpha``/``power``:
    on revenue per customer when its spread is known (``cv``), else on the rate ``p0``.
    :class:`CannotSize` when the power calculation has no answer for these customers."""
    h = cfg.holdout_share
    treated, held = customers * (1.0 - h), customers * h
    if held < 2:
        return math.inf
    on_revenue = math.isfinite(cv)
    if not on_revenue and not 0 < p0 < 1:
        return math.inf
    # the detectable standardized effect: Cohen's d (revenue, a t test) or Cohen's h (the rate)
    es = solve(
        TTestIndPower() if on_revenue else NormalIndPower(),
        "detectable effect",
        effect_size=None,
        nobs1=treated,
        ratio=h / (1.0 - h),
        alpha=cfg.alpha,
        power=cfg.power,
    )
    if on_revenue:
        return es * cv
    # invert Cohen's h = 2 asin(sqrt p1) - 2 asin(sqrt p0) for the detectable rate
    angle = math.asin(math.sqrt(p0)) + (-1 if decrease else 1) * es / 2
    p1 = math.sin(min(max(angle, 0.0), math.pi / 2)) ** 2
    return abs(p1 - p0) / p0


def design_for(plan: AbPlan, cv: float, customers: float, cfg: AbTestConfig, decrease: bool) -> Design:
    """The first powered design among 1-3 and 5 of the module docstring (4, pooling, needs every
    play and is tried by :func:`recommend`); an unpowered holdout rollout when none is."""
    if plan.testable:
        return Design("conversion test", plan.sample_size_per_arm, plan.weeks_needed, True, "")
    n_rev = None
    if math.isfinite(cv):
        with contextlib.suppress(CannotSize):  # the rate and the holdout designs below are still tried
            n_rev = revenue_sample_size(cv, cfg.mde_relative, cfg.alpha, cfg.power)
    w_rev = weeks_needed(n_rev, customers, cfg.weekly_reach) if n_rev is not None else math.inf
    if w_rev <= cfg.max_weeks:
        note = (
            f"revenue per customer instead of the rate: {n_rev:,} per arm, {w_rev:.0f} weeks "
            f"(spread from the data: CV {cv:.2f})"
        )
        return Design("revenue test", n_rev, w_rev, True, note)
    options = [(w_rev, n_rev, "revenue per customer")]
    if plan.sample_size_per_arm is not None and plan.weeks_needed is not None:
        options.append((plan.weeks_needed, plan.sample_size_per_arm, "the rate"))
    weeks, n, metric = min(options, key=lambda o: o[0])
    limit = max(cfg.long_test_weeks, cfg.max_weeks)
    if weeks <= limit:
        note = f"run {weeks:.0f} weeks instead of {cfg.max_weeks} on {metric}: {n:,} per arm"
        return Design("longer test", n, weeks, True, note)
    on = "revenue per customer" if math.isfinite(cv) else "the rate"
    try:
        lift = holdout_lift(customers, cfg, cv, plan.baseline_rate, decrease)
    except CannotSize as exc:
        return Design("holdout rollout", None, None, False, f"{CANNOT_SIZE} (a rollout on {on}: {exc})")
    powered = lift <= cfg.max_holdout_lift
    held = f"{cfg.holdout_share:.0%} held back"
    if powered:
        note = f"roll out with {held}: detects a {lift:.0%} lift in {on}"
    elif math.isfinite(lift):
        # the verdict first: a reader stops at "do not act", the reason follows for who asks why
        note = (
            f"{TOO_SMALL} (even a rollout with {held} detects only a lift of {lift:.0%} or more in {on}; "
            f"ab_test.max_holdout_lift is {cfg.max_holdout_lift:.0%})"
        )
    else:
        note = f"{TOO_SMALL} (too few customers to hold any back)"
    return Design("holdout rollout", None, None, powered, note)


@dataclass(frozen=True)
class AbPlan:
    baseline_rate: float
    target_rate: float
    sample_size_per_arm: int | None
    weeks_needed: float | None
    testable: bool
    flag: str


def ab_plan(baseline: float, customers: float, cfg: AbTestConfig, decrease: bool = False) -> AbPlan:
    """The A/B plan of one play (see the module docstring)."""
    if math.isnan(baseline):
        return AbPlan(
            math.nan, math.nan, None, None, False, "no baseline rate in the data: do not act on it yet"
        )
    p0, p1 = target_rate(baseline, cfg.mde_relative, decrease)
    if p1 == p0:
        return AbPlan(p0, p1, None, None, False, "baseline rate at its ceiling: nothing to detect")
    try:
        n = sample_size_per_arm(p0, cfg.mde_relative, cfg.alpha, cfg.power, decrease)
    except CannotSize as exc:
        return AbPlan(p0, p1, None, None, False, f"{CANNOT_SIZE} ({exc})")
    weeks = weeks_needed(n, customers, cfg.weekly_reach)
    ok = weeks <= cfg.max_weeks
    return AbPlan(p0, p1, n, None if math.isinf(weeks) else weeks, ok, "" if ok else TOO_SMALL)


def _baseline(row: pd.Series, play: str, data: ReportData, horizon_days: int) -> tuple[float, str]:
    """The baseline rate of the play's outcome metric, and its description."""
    decrease = play in DECREASE_PLAYS
    if play == "first_purchase":
        life = data.segments.get(LIFECYCLE_STAGE)
        new = life.row("new") if life is not None else None
        if new is not None:  # recent conversion: first-time buyers of the last new_days vs. prospects
            rate = float(new[CUSTOMERS]) / (float(new[CUSTOMERS]) + float(row[CUSTOMERS]))
            return rate, "first purchase (new buyers / (new buyers + prospects))"
        t = data.totals
        rate = t["buyers"] / t[CUSTOMERS] if t[CUSTOMERS] else math.nan
        return rate, "first purchase (share of known customers who have bought)"
    churn = _num(row.get("mean_churn_risk"))
    if not math.isnan(churn):
        if decrease:
            return churn, f"churn: no purchase within {horizon_days} days (mean churn risk)"
        return 1.0 - churn, f"purchase within {horizon_days} days (1 - mean churn risk)"
    # P(alive) only from a valid fitted model (the historical-rate fallback has none)
    alive = _num(row.get("mean_p_alive")) if data.p_alive_ok() else math.nan
    if not math.isnan(alive):
        return (1.0 - alive, "churn: 1 - mean P(alive)") if decrease else (alive, "mean P(alive)")
    repeat = _num(row.get("repeat_rate"))
    if decrease:
        return 1.0 - repeat, "one-time buyers (1 - repeat-purchase rate)"
    return repeat, "repeat-purchase rate (buyers with 2+ purchases)"


def _candidates(data: ReportData) -> list[tuple[SegmentView, pd.Series]]:
    primary = data.primary_type()
    if primary is None:
        return []
    rows = [(data.segments[primary], r) for _, r in data.segments[primary].table.iterrows()]
    life = data.segments.get(LIFECYCLE_STAGE)
    if primary != LIFECYCLE_STAGE and life is not None:
        prospect = life.row("prospect")
        if prospect is not None:  # prospects have no RFM segment: they get their own first-purchase play
            rows.append((life, prospect))
    return rows


def _pool_designs(records: list[dict[str, Any]], cfg: AbTestConfig) -> None:
    """Design 4: a play no single-segment design measures is tested with every segment that gets
    the same play (pooled customers, customer-weighted rate and spend moments), if that is powered."""
    by_play: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec["segment_type"] != LIFECYCLE_STAGE or rec["segment"] != "prospect":
            by_play.setdefault(rec["play"], []).append(rec)
    for members in by_play.values():
        if len(members) < 2 or all(m["_design"].kind != "holdout rollout" for m in members):
            continue
        pool = [m["_pool"] for m in members]
        total = sum(c for c, *_ in pool)
        decrease = pool[0][4]
        rates = [(c, p) for c, p, *_ in pool if not math.isnan(p)]
        p0 = sum(c * p for c, p in rates) / sum(c for c, _ in rates) if rates else math.nan
        spends = [(c, m, sd) for c, _, m, sd, _ in pool if m > 0 and math.isfinite(sd)]
        cv = math.nan
        if spends and not math.isnan(p0):
            w = sum(c for c, _, _ in spends)
            mean = sum(c * m for c, m, _ in spends) / w
            ex2 = sum(c * (sd * sd + m * m) for c, m, sd in spends) / w
            cv = revenue_cv(mean, math.sqrt(max(ex2 - mean * mean, 0.0)), 1.0 - p0 if decrease else p0)
        plan = ab_plan(p0, total, cfg, decrease)
        pooled = design_for(plan, cv, total, cfg, decrease)
        if not pooled.powered or pooled.kind == "holdout rollout":
            continue
        names = [str(m["segment"]) for m in members]
        for m in members:
            if m["_design"].kind == "holdout rollout":
                others = ", ".join(n for n in names if n != m["segment"])
                how = pooled.note or f"{pooled.sample_size_per_arm:,} per arm, {pooled.weeks:.0f} weeks"
                m["_design"] = Design(
                    "pooled test",
                    pooled.sample_size_per_arm,
                    pooled.weeks,
                    True,
                    f"pooled with {others} ({int(total):,} customers): {how}",
                )


def _play_record(
    view: SegmentView,
    row: pd.Series,
    pid: str,
    play: Play,
    val: Valuation,
    data: ReportData,
    settings: Settings,
) -> dict[str, Any]:
    """One valued play for one segment: its value (:mod:`play_value`) and conversion-test plan, plus
    the working fields (``_design``, ``_pool``, ``_basis_text``) that :func:`_finish_record` resolves."""
    ab = settings.report.ab_test
    sym = settings.report.currency_symbol
    margin = settings.report.value.gross_margin
    baseline, metric = _baseline(row, pid, data, settings.churn.horizon_days)
    decrease = pid in DECREASE_PLAYS
    customers = float(row[CUSTOMERS])
    plan = ab_plan(baseline, customers, ab, decrease)
    spend, spread = _num(row.get(f"mean_{MONETARY}")), _num(row.get("sd_monetary"))
    p_buy = 1.0 - plan.baseline_rate if decrease else plan.baseline_rate
    cv = revenue_cv(spend, spread, p_buy) if not math.isnan(plan.baseline_rate) else math.nan
    design = design_for(plan, cv, customers, ab, decrease)
    money = value_fields(customers, val, play.uplift, margin, play.cost_per_contact, play.fixed_cost)
    return {
        "play": pid,
        "play_name": play.name,
        "segment": str(row[SEGMENT]),
        "segment_type": view.segment_type,
        "customers": int(row[CUSTOMERS]),
        "value_basis": val.basis,
        **money,
        "horizon_months": settings.clv.horizon_months,
        "gross_margin": margin,
        "cost_per_contact": play.cost_per_contact,
        "fixed_cost": play.fixed_cost,
        "uplift_assumption": play.uplift,
        "effort": play.effort,
        "priority": money["net_value"],
        "baseline_metric": metric,
        "baseline_rate": plan.baseline_rate,
        "mde": abs(plan.target_rate - plan.baseline_rate),
        "mde_relative": ab.mde_relative,
        "target_rate": plan.target_rate,
        "alpha": ab.alpha,
        "power": ab.power,
        "sample_size_per_arm": plan.sample_size_per_arm,
        "weeks_needed": plan.weeks_needed,
        "testable": plan.testable,
        "test_flag": plan.flag,
        "_design": design,
        "_pool": (customers, plan.baseline_rate, spend, spread, decrease),
        "owner": play.owner,
        "action": play.action,
        "_basis_text": f"{row[SEGMENT]}: {int(customers):,} customers x {sym}{val.per_customer:,.0f} "
        f"({val.basis}) x uplift {play.uplift:.0%} x margin {margin:.0%} = {sym}{money['impact']:,.0f}, "
        f"minus cost {sym}{money['play_cost']:,.0f} = net {sym}{money['net_value']:,.0f}. "
        f"Conversion test: baseline {plan.baseline_rate:.1%} ({metric})",
    }


def _finish_record(rec: dict[str, Any]) -> None:
    """Replace a record's working fields by the chosen design's columns and the rationale."""
    chosen: Design = rec.pop("_design")
    rec.pop("_pool")
    # sample_size_per_arm and weeks_needed stay the conversion test's; the design's are in its note
    n, weeks = chosen.sample_size_per_arm, chosen.weeks
    size = "" if n is None else f", {n:,} per arm" + ("" if weeks is None else f", {weeks:.0f} weeks")
    rec["testable"] = chosen.powered
    rec["test_flag"] = "" if chosen.powered else chosen.note
    rec["test_design"] = chosen.kind if chosen.powered else ""
    rec["design_note"] = chosen.note
    how = f"{size}."
    if chosen.kind != "conversion test":
        how = f" is underpowered; {chosen.kind}: {chosen.note}."
    rec["rationale"] = str(rec.pop("_basis_text")) + how


def _ranked(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The finished records ranked by one rule, net value highest first (ties: more customers, then
    the segment's name), with their quadrant (high value: at least the median net value)."""
    df = pd.DataFrame.from_records(records).sort_values(
        ["net_value", "customers", "segment"], ascending=[False, False, True], na_position="last"
    )
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    threshold = float(np.nanmedian(df["net_value"])) if df["net_value"].notna().any() else math.nan
    high = df["net_value"] >= threshold
    low_effort = df["effort"] <= 2
    df["quadrant"] = np.select(
        [high & low_effort, high & ~low_effort, ~high & low_effort],
        ["Quick win", "Big bet", "Fill-in"],
        default="Deprioritise",
    )
    df["sample_size_per_arm"] = df["sample_size_per_arm"].astype("Int64")
    df["weeks_needed"] = pd.to_numeric(df["weeks_needed"], errors="coerce")
    return df[list(RECOMMENDATION_COLUMNS)].reset_index(drop=True)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plays_and_gaps(data: ReportData, settings: Settings) -> tuple[pd.DataFrame, list[str]]:
    """The ranked plays (columns :data:`RECOMMENDATION_COLUMNS`) and, one plain sentence each, the
    plays left out of the ranking because an input to value them is missing."""
    plays = play_settings(settings)
    records: list[dict[str, Any]] = []
    missing: dict[tuple[str, str], list[str]] = {}  # (play, reason) -> segments
    for view, row in _candidates(data):
        pid = play_for(view.segment_type, row, settings.rfm.bins, dominant_stage(view, str(row[SEGMENT])))
        if pid is None:
            continue
        val = valuation(row, pid, data, settings.clv.horizon_months)
        if not val.ok:
            missing.setdefault((plays[pid].name, val.missing), []).append(str(row[SEGMENT]).replace("_", " "))
            continue
        records.append(_play_record(view, row, pid, plays[pid], val, data, settings))
    gaps = [
        f"{name} for {_and(segs)} {'is' if len(segs) == 1 else 'are'} not valued or ranked: {why}."
        for (name, why), segs in missing.items()
    ]
    if not records:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in RECOMMENDATION_COLUMNS}), gaps
    _pool_designs(records, settings.report.ab_test)
    for rec in records:
        _finish_record(rec)
    return _ranked(records), gaps


def recommend(data: ReportData, settings: Settings) -> pd.DataFrame:
    """Ranked plays with value, cost, quadrant and A/B plan (columns :data:`RECOMMENDATION_COLUMNS`)."""
    return plays_and_gaps(data, settings)[0]
