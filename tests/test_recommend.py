"""Plays, impact, ranking and A/B test sizing, checked against hand calculations."""

from __future__ import annotations

import math
from statistics import NormalDist
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T
from statsmodels.stats.power import NormalIndPower, TTestIndPower

from segspark.config import AbTestConfig, Settings, load_settings
from segspark.errors import ConfigError
from segspark.report.collect import collect
from segspark.report.data import ReportData
from segspark.report.recommend import (
    LIFECYCLE_PLAYS,
    PRESET_PLAYS,
    RECOMMENDATION_COLUMNS,
    RFM_PLAYS,
    TOO_SMALL,
    ab_plan,
    design_for,
    holdout_lift,
    play_for,
    plays_and_gaps,
    recommend,
    revenue_cv,
    revenue_sample_size,
    sample_size_per_arm,
    weeks_needed,
)
from segspark.report.segment_stats import k_anonymize
from segspark.report.sizing import CANNOT_SIZE, CannotSize, solve

K = 30

SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), False),
        T.StructField("frequency", T.LongType()),
        T.StructField("monetary", T.DoubleType()),
        T.StructField("recency_days", T.IntegerType()),
        T.StructField("r_score", T.IntegerType()),
        T.StructField("f_score", T.IntegerType()),
        T.StructField("m_score", T.IntegerType()),
        T.StructField("rfm_segment", T.StringType()),
        T.StructField("lifecycle_stage", T.StringType()),
        T.StructField("clv", T.DoubleType()),
        T.StructField("churn_risk", T.DoubleType()),
    ]
)
# (segment, customers, stage, monetary, clv, churn risk)
GROUPS = [
    ("Champions", 1200, "active", 800.0, 1000.0, 0.10),
    ("At Risk", 300, "at_risk", 300.0, 200.0, 0.60),
    ("Lost", 60, "churned", 50.0, 4.0, 0.90),
    ("New Customers", 60, "new", 60.0, 80.0, 0.50),
    ("Promising", 5, "new", 40.0, 60.0, 0.40),  # below K: merged, no play of its own
    ("Need Attention", 90, "reactivated", 200.0, 150.0, 0.35),  # came back: values a win-back
]
PROSPECTS = 40


def z(p: float) -> float:
    return NormalDist().inv_cdf(p)


def hand_n(p0: float, p1: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Two-proportion sample size per arm on the arcsine scale (Cohen's h), equal arms."""
    h = 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p0))
    return math.ceil(2 * (z(1 - alpha / 2) + z(power)) ** 2 / h**2)


def pooled_n(p0: float, p1: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The textbook pooled-variance formula (Fleiss, no continuity correction)."""
    pbar = (p0 + p1) / 2
    num = z(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar)) + z(power) * math.sqrt(
        p0 * (1 - p0) + p1 * (1 - p1)
    )
    return num**2 / (p1 - p0) ** 2


@pytest.mark.parametrize(
    ("p0", "mde", "alpha", "power", "decrease"),
    [
        (0.10, 0.20, 0.05, 0.80, False),
        (0.05, 0.10, 0.05, 0.80, False),
        (0.30, 0.10, 0.01, 0.90, False),
        (0.60, 0.50, 0.05, 0.80, True),
        (0.02, 0.25, 0.10, 0.80, True),
    ],
)
def test_sample_size_matches_the_two_proportion_formula(
    p0: float, mde: float, alpha: float, power: float, decrease: bool
) -> None:
    p1 = p0 * (1 - mde) if decrease else p0 * (1 + mde)
    n = sample_size_per_arm(p0, mde, alpha, power, decrease)
    assert abs(n - hand_n(p0, p1, alpha, power)) <= 1  # root finding vs closed form
    assert n == pytest.approx(pooled_n(p0, p1, alpha, power), rel=0.02)


def test_published_example() -> None:
    # 10% -> 12% conversion, alpha 0.05 two-sided, power 0.8: 3,841 per arm by the pooled formula
    assert round(pooled_n(0.10, 0.12)) == 3841
    assert sample_size_per_arm(0.10, 0.20, 0.05, 0.80) == hand_n(0.10, 0.12) == 3835


def test_weeks_needed_and_the_too_small_flag() -> None:
    cfg = AbTestConfig(alpha=0.05, power=0.8, mde_relative=0.1, max_weeks=8, weekly_reach=0.25)
    n = hand_n(0.2, 0.22)
    big = ab_plan(0.2, 100_000, cfg)
    assert big.sample_size_per_arm == n and big.testable and big.flag == ""
    assert big.weeks_needed == math.ceil(2 * n / 25_000)
    # a segment of exactly both arms is enrolled in ceil(1 / weekly_reach) = 4 weeks
    assert weeks_needed(n, 2 * n, 0.25) == 4
    slow = ab_plan(0.2, 2 * n, cfg.model_copy(update={"weekly_reach": 0.05}))
    assert slow.weeks_needed == 20 and not slow.testable and slow.flag == TOO_SMALL
    small = ab_plan(0.2, 2 * n - 1, cfg)
    assert small.weeks_needed is None and not small.testable and small.flag == TOO_SMALL
    assert not ab_plan(math.nan, 10_000, cfg).testable


def test_revenue_spread_of_a_window_from_the_segments_spend() -> None:
    # X = B * Y, B ~ Bernoulli(p), Y with mean m and sd s: simulate and compare the closed form
    rng = np.random.default_rng(7)
    p, m, s = 0.3, 120.0, 90.0
    y = rng.gamma((m / s) ** 2, s**2 / m, 400_000)
    x = np.where(rng.random(y.size) < p, y, 0.0)
    assert revenue_cv(m, s, p) == pytest.approx(x.std() / x.mean(), rel=0.01)
    assert revenue_cv(m, 0.0, 1.0) == 0.0 and math.isnan(revenue_cv(0.0, 1.0, 0.5))


def test_revenue_sample_size_is_the_t_test_formula() -> None:
    cv, mde = 0.9, 0.1
    n = revenue_sample_size(cv, mde, 0.05, 0.8)
    normal = 2 * (z(0.975) + z(0.8)) ** 2 * (cv / mde) ** 2  # the t-test needs a customer or two more
    assert normal <= n <= normal + 3


def test_an_underpowered_churn_test_gets_a_powered_design_not_do_not_act() -> None:
    """The demo's case: VIP for 3,464 Champions with 3.3% churn needs ~44,000 customers per arm."""
    cfg = AbTestConfig()
    plan = ab_plan(0.033, 3464, cfg, decrease=True)
    assert not plan.testable and plan.sample_size_per_arm is not None and plan.sample_size_per_arm > 40_000
    cv = revenue_cv(850.0, 700.0, 1 - 0.033)
    d = design_for(plan, cv, 3464, cfg, decrease=True)
    assert d.kind == "revenue test" and d.powered
    assert d.sample_size_per_arm == revenue_sample_size(cv, cfg.mde_relative, cfg.alpha, cfg.power)
    assert d.weeks == weeks_needed(d.sample_size_per_arm, 3464, cfg.weekly_reach) <= cfg.max_weeks
    # noisier spend (rare buyers): the revenue test is too slow in 8 weeks but fits in the long limit
    slow_cfg = cfg.model_copy(update={"weekly_reach": 0.05})
    slow = design_for(
        ab_plan(0.033, 20_000, slow_cfg, True), revenue_cv(850.0, 1500.0, 0.967), 20_000, slow_cfg, True
    )
    assert slow.kind == "longer test" and cfg.max_weeks < (slow.weeks or 0) <= cfg.long_test_weeks
    # nothing fits: a rollout with a holdout, powered when its detectable lift is small enough
    big = design_for(
        ab_plan(0.033, 200_000, slow_cfg.model_copy(update={"long_test_weeks": 8}), True),
        math.nan,
        200_000,
        slow_cfg.model_copy(update={"long_test_weeks": 8}),
        True,
    )
    assert big.kind == "holdout rollout"
    lift = holdout_lift(200_000, cfg, math.nan, 0.033, True)
    assert big.powered == (lift <= cfg.max_holdout_lift) and f"{lift:.0%}" in big.note


def test_a_holdout_statsmodels_sizes_with_an_array_is_sized_not_a_crash() -> None:
    """The bad input kept: a segment of 11,053 customers with a 10% holdout. statsmodels' bracketing
    solver does not converge there and its fsolve fallback returns a one-element array, which
    ``float()`` refused under NumPy 2 ("only 0-dimensional arrays ...") and failed the run."""
    cfg = AbTestConfig()
    customers = 11_053
    treated, ratio = customers * 0.9, 0.1 / 0.9
    raw = TTestIndPower().solve_power(
        effect_size=None, nobs1=treated, ratio=ratio, alpha=cfg.alpha, power=cfg.power
    )
    assert np.ndim(raw) == 1, "statsmodels answers this input with a scalar now: keep another that fails"
    cv = 1.3
    lift = holdout_lift(customers, cfg, cv, 0.3, False)
    # the detectable lift is the one the holdout finds with the configured power
    achieved = TTestIndPower().power(effect_size=lift / cv, nobs1=treated, ratio=ratio, alpha=cfg.alpha)
    assert achieved == pytest.approx(cfg.power, abs=1e-4)
    slow = cfg.model_copy(update={"weekly_reach": 0.001})  # no test fits: the rollout is proposed
    d = design_for(ab_plan(0.3, customers, slow), cv, customers, slow, False)
    assert d.kind == "holdout rollout" and f"{lift:.0%}" in d.note


def test_a_design_the_power_calculation_cannot_size_is_said_so_with_the_reason() -> None:
    # one customer per arm leaves the t-test no degrees of freedom: statsmodels raises ValueError
    with pytest.raises(CannotSize, match="no detectable effect: f\\(a\\) and f\\(b\\)"):
        solve(
            TTestIndPower(),
            "detectable effect",
            effect_size=None,
            nobs1=1.0,
            ratio=1.0,
            alpha=0.05,
            power=0.8,
        )
    # an effect so large that the root finder never converges: statsmodels warns and returns NaN
    assert math.isnan(NormalIndPower().solve_power(effect_size=10.0, alpha=0.05, power=0.8, ratio=1.0))
    with pytest.raises(CannotSize, match="no sample size: it did not converge"):
        revenue_sample_size(0.01, 0.1, 0.05, 0.8)
    # the conversion test of a 1% rate pushed to 99.9% cannot be sized; the play still gets a design
    cfg = AbTestConfig(mde_relative=100)
    plan = ab_plan(0.01, 10_000, cfg)
    assert plan.flag.startswith(CANNOT_SIZE) and "did not converge" in plan.flag
    assert plan.sample_size_per_arm is None and not plan.testable
    d = design_for(plan, revenue_cv(100.0, 1.0, 1.0), 10_000, cfg, False)
    assert d.kind == "holdout rollout" and d.powered


def rows() -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    i = 0
    for seg, n, stage, mon, clv, churn in GROUPS:
        for j in range(n):
            out.append(
                (f"{i:016x}", 1 + j % 4, mon + j % 9, 10 + j % 30, 3, 3, 3, seg, stage, clv + j % 5, churn)
            )
            i += 1
    out[0] = (*out[0][:9], out[0][9], None)  # a Champion without a churn score (null)
    out[-1] = (out[-1][0], 0, -15.0, *out[-1][3:])  # returns exceed purchases (edge)
    for _ in range(PROSPECTS):
        out.append((f"{i:016x}", None, None, None, None, None, None, None, "prospect", None, None))
        i += 1
    return out


def settings(**extra: Any) -> Settings:
    items = [
        f"report.min_segment_size={K}",
        "report.ab_test.mde_relative=0.5",
        "report.uplift={vip: 0.2, retention: 0.1, win_back: 0.05, onboarding: 0.3}",
        "report.effort={vip: 4, retention: 2, win_back: 1, onboarding: 3}",
        "report.value.cost_per_contact={vip: 2.0, retention: 0.5, win_back: 1.0, first_purchase: 0.25}",
        "report.value.fixed_cost={vip: 500, win_back: 100}",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_settings([], items)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.DataFrame(rows(), columns=SCHEMA.fieldNames())


@pytest.fixture(scope="module")
def data(spark: Any) -> ReportData:
    df = spark.createDataFrame(rows(), SCHEMA)
    return collect(SimpleNamespace(run_id="r1", as_of_date=None), {"customer_segments": df}, settings())


def test_plays_impact_rank_and_ab_plan_from_the_data(data: ReportData, frame: pd.DataFrame) -> None:
    recs = recommend(data, settings())
    by = recs.set_index("segment")
    assert set(zip(recs["play"], recs["segment"], strict=True)) == {
        ("vip", "Champions"),
        ("win_back", "At Risk"),  # long past their usual gap: win-back, not a reminder
        ("win_back", "Lost"),
        ("first_purchase", "prospect"),  # prospects have no first purchase yet
        ("onboarding", "New Customers"),
        ("retention", "Need Attention"),
    }
    g = frame.groupby("rfm_segment")
    clv_of = frame.groupby("lifecycle_stage")["clv"].mean()
    margin = 0.4  # the stated default
    # one basis: customers x reference value over the horizon x uplift x margin - cost
    champions = by.loc["Champions"]
    assert champions["impact"] == pytest.approx(g["clv"].sum()["Champions"] * 0.2 * margin)
    assert champions["play_cost"] == pytest.approx(1200 * 2.0 + 500)  # configured costs
    assert champions["net_value"] == pytest.approx(champions["impact"] - champions["play_cost"])
    assert champions["horizon_months"] == 12 and champions["gross_margin"] == margin
    # win-back: what a customer who came back after lapsing is worth (lifecycle 'reactivated')
    at_risk = by.loc["At Risk"]
    assert at_risk["value_per_customer"] == pytest.approx(clv_of["reactivated"])
    assert at_risk["impact"] == pytest.approx(300 * clv_of["reactivated"] * 0.05 * margin)
    assert at_risk["play_cost"] == pytest.approx(300 * 1.0 + 100)
    # prospects: what a recent first-time buyer is worth (lifecycle 'new'); preset fixed cost 2,000
    prospect = by.loc["prospect"]
    assert prospect["value_per_customer"] == pytest.approx(clv_of["new"])
    assert prospect["impact"] == pytest.approx(PROSPECTS * clv_of["new"] * 0.05 * margin)  # preset uplift
    assert prospect["play_cost"] == pytest.approx(PROSPECTS * 0.25 + 2_000)
    assert "first-time buyer" in prospect["value_basis"] and "12 months" in prospect["value_basis"]
    # one rule: net value, highest first; rank 1..n
    assert list(recs["rank"]) == list(range(1, len(recs) + 1))
    assert list(recs["net_value"]) == sorted(recs["net_value"], reverse=True)
    assert (recs["priority"] == recs["net_value"]).all()
    # VIP is tested on churn (decrease): baseline = the Champions' mean churn risk (null row excluded)
    p0 = float(frame.loc[frame["rfm_segment"] == "Champions", "churn_risk"].mean())
    n = by.loc["Champions", "sample_size_per_arm"]
    assert by.loc["Champions", "baseline_rate"] == pytest.approx(p0)
    assert abs(n - hand_n(p0, p0 * 0.5)) <= 1
    assert by.loc["Champions", "weeks_needed"] == math.ceil(2 * n / (1200 * 0.25))
    assert bool(by.loc["Champions", "testable"])
    # win-back is tested on purchases (increase) and Lost is too small for it
    q0 = 1 - float(frame.loc[frame["rfm_segment"] == "Lost", "churn_risk"].mean())
    assert by.loc["Lost", "baseline_rate"] == pytest.approx(q0)
    assert abs(by.loc["Lost", "sample_size_per_arm"] - hand_n(q0, q0 * 1.5)) <= 1
    # ... on its own (60 customers); pooled with At Risk, which gets the same win-back play, it is
    assert not by.loc["Lost", "sample_size_per_arm"] <= 30 and pd.isna(by.loc["Lost", "weeks_needed"])
    assert by.loc["Lost", "testable"] and by.loc["Lost", "test_design"] == "pooled test"
    assert by.loc["Lost", "design_note"].startswith("pooled with At Risk (360 customers)")
    # prospects: baseline = recent conversion, new buyers / (new buyers + prospects)
    new = int((frame["lifecycle_stage"] == "new").sum())
    assert new == 65 and by.loc["prospect", "baseline_rate"] == pytest.approx(new / (new + PROSPECTS))
    # quadrants: high value = at least the median net value, low effort = 1 or 2
    median = float(recs["net_value"].median())
    for seg, r in by.iterrows():
        high, easy = r["net_value"] >= median, r["effort"] <= 2
        expected = {(True, True): "Quick win", (True, False): "Big bet", (False, True): "Fill-in"}
        assert r["quadrant"] == expected.get((high, easy), "Deprioritise"), seg
    assert len(set(by["quadrant"])) >= 2


def test_small_segments_get_no_play(data: ReportData) -> None:
    view = data.segments["rfm_segment"]
    # Promising (5) is merged; Other (5) is itself below K and suppressed; the 40 prospects without
    # an RFM segment are shown as 'unassigned' (a mix: no play; they get the lifecycle onboarding play)
    assert (view.merged_segments, view.merged_customers, view.suppressed_customers) == (1, 5, 5)
    assert view.names() == ["Champions", "New Customers", "Need Attention", "At Risk", "Lost", "unassigned"]
    segments = set(recommend(data, settings())["segment"])
    assert "Promising" not in segments and "Other" not in segments and "unassigned" not in segments


def test_saas_preset_changes_plays_and_wording(data: ReportData) -> None:
    retail = recommend(data, settings()).set_index("segment")
    saas = recommend(data, settings(**{"report.preset": "saas", "report.uplift": "{}"})).set_index("segment")
    vip = saas.loc["Champions"]
    assert vip["play_name"] == "Executive sponsor programme" != retail.loc["Champions", "play_name"]
    assert saas.loc["prospect", "play_name"] == "Trial-to-paid conversion"
    # without configured uplifts the preset's assumption is used, and shown
    assert vip["uplift_assumption"] != 0.2
    assert vip["impact"] == pytest.approx(vip["value_at_stake"] * vip["uplift_assumption"] * 0.4)


def test_configured_plays_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown play 'loyalty'"):
        load_settings([], ["report.uplift={loyalty: 0.1}"])
    with pytest.raises(ConfigError, match="effort"):
        load_settings([], ["report.effort={vip: 7}"])
    with pytest.raises(ConfigError, match="uplift"):
        load_settings([], ["report.uplift={vip: 1.5}"])


def test_k_anonymize_merges_and_suppresses() -> None:
    table = pd.DataFrame(
        {
            "segment": ["A", "B", "C", "D"],
            "customers": [100.0, 40.0, 20.0, 9.0],
            "revenue": [10.0, 4.0, 2.0, 1.0],
        }
    )
    shown, n, c, suppressed = k_anonymize(table, 30)
    assert list(shown["segment"]) == ["A", "B"]  # Other = C + D = 29 < 30: suppressed as well
    assert (n, c, suppressed) == (2, 29, 29)
    shown, n, c, suppressed = k_anonymize(table, 25)
    assert list(shown["segment"]) == ["A", "B", "Other"] and suppressed == 0
    assert shown.set_index("segment").loc["Other", "customers"] == 29
    assert shown.set_index("segment").loc["Other", "revenue"] == 3.0


FIT_SCHEMA = "model string, chosen boolean, section string, name string, value double, text string"
VALID_FIT = [
    ("bgnbd", True, "fit", "model", None, "bgnbd"),
    ("bgnbd", True, "validity", "valid", 1.0, None),
    ("bgnbd", True, "validity", "holdout_total_error", 0.05, None),
]
FALLBACK_FIT = [
    ("bgnbd", False, "validity", "valid", 0.0, "parameter at its boundary"),
    ("historical_rate", True, "validity", "valid", 1.0, None),
    ("historical_rate", True, "fit", "fallback_reason", None, "bgnbd: parameter at its boundary"),
]


def alive_data(spark: Any, fit_rows: list[tuple[Any, ...]]) -> ReportData:
    """The groups scored with P(alive) = 1 - churn risk and no churn model, with a ``clv_fit`` table."""
    alive = [(*r[:10], None if r[10] is None else 1.0 - r[10]) for r in rows()]
    schema = T.StructType([*SCHEMA.fields[:10], T.StructField("p_alive", T.DoubleType())])
    tables = {
        "customer_segments": spark.createDataFrame(alive, schema),
        "clv_fit": spark.createDataFrame(fit_rows, FIT_SCHEMA),
    }
    return collect(SimpleNamespace(run_id="r1", as_of_date=None), tables, settings())


def test_p_alive_baselines_only_from_a_valid_clv_model(spark: Any, frame: pd.DataFrame) -> None:
    valid = recommend(alive_data(spark, VALID_FIT), settings()).set_index("segment")
    # a valid model: the retention play is tested on 1 - mean P(alive), its value is predicted CLV
    champions = frame[frame["rfm_segment"] == "Champions"]
    p_alive = float((1.0 - champions["churn_risk"]).mean())
    assert valid.loc["Champions", "baseline_metric"] == "churn: 1 - mean P(alive)"
    assert valid.loc["Champions", "baseline_rate"] == pytest.approx(1.0 - p_alive)
    assert (
        valid.loc["Champions", "value_basis"]
        == "the segment's expected spend per customer over the next 12 months"
    )
    # the fallback: P(alive) is not used even where the table still holds values, and the value at
    # stake says it is the historical spend-rate estimate
    data = alive_data(spark, FALLBACK_FIT)
    assert not data.p_alive_ok() and not data.has["p_alive"]
    fallback = recommend(data, settings()).set_index("segment")
    assert not fallback["baseline_metric"].str.contains("P\\(alive\\)").any()
    assert fallback.loc["Champions", "baseline_metric"] == "one-time buyers (1 - repeat-purchase rate)"
    assert fallback.loc["Champions", "value_basis"].endswith("(estimated from past spending)")
    assert fallback.loc["Champions", "value_at_stake"] == pytest.approx(champions["clv"].sum())


def test_no_segment_big_enough_gives_an_empty_ranking(spark: Any) -> None:
    few = spark.createDataFrame(rows()[:10], SCHEMA)
    data = collect(SimpleNamespace(run_id="r1", as_of_date=None), {"customer_segments": few}, settings())
    recs = recommend(data, settings())
    assert recs.empty and list(recs.columns) == list(RECOMMENDATION_COLUMNS)


def test_a_play_without_the_input_to_value_it_is_left_out_and_said(spark: Any) -> None:
    # no customer came back after lapsing: win-back has no reference value, and none is assumed
    no_return = [r for r in rows() if r[8] != "reactivated"]
    df = spark.createDataFrame(no_return, SCHEMA)
    data = collect(SimpleNamespace(run_id="r1", as_of_date=None), {"customer_segments": df}, settings())
    recs, gaps = plays_and_gaps(data, settings())
    assert "win_back" not in set(recs["play"]) and {"vip", "first_purchase"} <= set(recs["play"])
    assert gaps == [
        "Win-back offer for At Risk and Lost are not valued or ranked: this run has too few customers "
        "who came back after lapsing to show what the play would bring."
    ]
    # no lifetime value at all: nothing is ranked, one sentence says why
    no_clv = spark.createDataFrame([(*r[:9], None, r[10]) for r in rows()], SCHEMA)
    data = collect(SimpleNamespace(run_id="r1", as_of_date=None), {"customer_segments": no_clv}, settings())
    recs, gaps = plays_and_gaps(data, settings())
    assert recs.empty and list(recs.columns) == list(RECOMMENDATION_COLUMNS)
    assert gaps and all("no lifetime-value estimate" in g for g in gaps)


LAPSED = ("At Risk", "Cannot Lose Them", "Hibernating", "Lost")


@pytest.mark.parametrize("preset", sorted(PRESET_PLAYS))
def test_plays_fit_their_audience(preset: str) -> None:
    plays = PRESET_PLAYS[preset]
    # lapsed RFM segments and churned customers get a comeback play; prospects a first purchase
    assert {RFM_PLAYS[s] for s in LAPSED} == {"win_back"} and LIFECYCLE_PLAYS["churned"] == "win_back"
    assert LIFECYCLE_PLAYS["prospect"] == "first_purchase"
    row = pd.Series({"segment": "x", "mean_r_score": 4.0, "mean_f_score": 1.0, "mean_frequency": 1.0})
    assert play_for("persona", row, 5, "prospect") == "first_purchase"
    assert play_for("persona", row, 5, "churned") == "win_back"
    # the copy says what the mechanism is: prospects have no purchase to repeat, lapsed ones no gap left
    first = plays["first_purchase"].action.lower()
    assert "second" not in first and "repeat" not in first
    assert "before" not in plays["win_back"].action and "gap" not in plays["win_back"].action
    assert "stopped buying" in plays["win_back"].action or "lapsed" in plays["win_back"].action
    assert all(p.cost_per_contact > 0 and p.fixed_cost > 0 for p in plays.values())


def test_every_segment_with_material_revenue_gets_a_play(data: ReportData) -> None:
    material = settings().report.value.material_revenue_share
    view = data.segments["rfm_segment"]
    named = view.table[~view.table["segment"].isin(["Other", "unassigned"])]
    for _, r in named[named["revenue_share"] >= material].iterrows():
        assert play_for("rfm_segment", r, 5, None) is not None, r["segment"]
    # every standard RFM segment and lifecycle stage has its play in the preset's library
    for name in [*RFM_PLAYS.values(), *LIFECYCLE_PLAYS.values()]:
        assert name in PRESET_PLAYS["retail"] and name in PRESET_PLAYS["saas"]


def test_the_recommendations_table_declares_every_column_of_the_ranking() -> None:
    # the pipeline writes the ranking through the declared schema: an undeclared column would be lost
    from segspark.tables import RECOMMENDATIONS_SCHEMA

    assert [f.name for f in RECOMMENDATIONS_SCHEMA.fields] == list(RECOMMENDATION_COLUMNS)
