"""CLV under bad fits and degenerate data, in Spark: ANSI-safe checks on constant columns, the
historical spend-rate fallback with its reasons, and the clv_fit validity rows."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.errors import ArithmeticException
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import tables
from segspark.clv import HISTORICAL_RATE, fit_from_table, fit_table, run_clv
from segspark.clv import models as M
from segspark.clv import predict as P
from segspark.clv import summary as S
from segspark.clv import validation as V
from segspark.config import ClvConfig

SUMMARY_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), True),
        T.StructField("frequency", T.LongType(), True),
        T.StructField("recency", T.DoubleType(), True),
        T.StructField("T", T.DoubleType(), True),
        T.StructField("monetary_value", T.DoubleType(), True),
        T.StructField("frequency_holdout", T.LongType(), True),
        T.StructField("duration_holdout", T.DoubleType(), True),
    ]
)
DAYS_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), True),
        T.StructField("order_date", T.DateType(), True),
        T.StructField("purchases", T.LongType(), True),
        T.StructField("purchase_value", T.DoubleType(), True),
    ]
)


def test_ansi_raises_on_a_constant_corr(spark: Any) -> None:
    # why the guards below exist: Spark's corr divides by a zero standard deviation under ANSI
    assert spark.conf.get("spark.sql.ansi.enabled") == "true"
    df = spark.createDataFrame([(1.0, 2.0), (1.0, 3.0)], "a double, b double")
    with pytest.raises(ArithmeticException, match="DIVIDE_BY_ZERO"):
        df.agg(F.corr("a", "b")).collect()


def test_spend_check_on_constant_frequency_and_spend(spark: Any) -> None:
    # every repeat buyer has the same frequency (1) and the same spend (10): the correlation is
    # undefined, a null (NaN on the driver), not a DIVIDE_BY_ZERO; one-time buyers and a null spend
    # are left out as before
    rows = [(f"c{i}", 1, 2.0, 5.0, 10.0, 0, 4.0) for i in range(6)] + [
        ("o1", 0, 0.0, 3.0, None, 0, 4.0),
        ("o2", 0, 0.0, 0.0, None, 1, 4.0),  # edge: first purchase on the calibration end
    ]
    summary = spark.createDataFrame(rows, SUMMARY_SCHEMA)
    spend = S.compressed_spend(summary)
    assert np.isnan(spend.freq_spend_corr)
    assert spend.n_repeat_buyers == 6 and spend.n_excluded_nonpositive == 0
    assert spend.stats is not None and spend.stats.n_customers == 6
    # same frequency, different spends: still undefined; varying both: the Pearson figure
    varied = spark.createDataFrame(
        [(f"c{i}", 1 + i % 3, 2.0, 5.0, 10.0 + i, 0, 4.0) for i in range(6)], SUMMARY_SCHEMA
    )
    want = np.corrcoef([1 + i % 3 for i in range(6)], [10.0 + i for i in range(6)])[0, 1]
    assert S.compressed_spend(varied).freq_spend_corr == pytest.approx(want, rel=1e-12)


def test_holdout_metrics_when_nobody_buys_in_the_holdout(spark: Any) -> None:
    # a constant actual column (all zero): correlation undefined, total error undefined; no crash
    rows = [(f"c{i}", i % 3, float(i % 3), 10.0, None, 0, 4.0) for i in range(8)]
    summary = spark.createDataFrame(rows, SUMMARY_SCHEMA)
    fit = M.fit_transactions(M.BGNBD, M.RfmStats.from_arrays([0, 1, 3], [0, 1, 2], [4, 5, 6]), strict=False)
    fit.params = {"r": 0.25, "alpha": 4.0, "a": 0.8, "b": 2.5}
    got = V.holdout_metrics(summary, fit)
    assert np.isnan(got["holdout_corr"]) and np.isnan(got["holdout_total_error"])
    assert got["holdout_actual_total"] == 0.0 and got["holdout_predicted_total"] > 0
    pred = M.expected_purchases(M.BGNBD, fit.values, 4.0, [r[1] for r in rows], [r[2] for r in rows], 10.0)
    assert got["holdout_mae"] == pytest.approx(float(np.mean(pred)), rel=1e-10)


@pytest.fixture(scope="module")
def one_time_buyers(spark: Any) -> tuple[Any, dt.date, pd.DataFrame]:
    """40 customers who never came back (no model has an interior optimum), one null-value edge."""
    start = dt.date(2024, 1, 1)
    rows = [(f"c{i:02d}", start + dt.timedelta(days=9 * i), 1, 10.0 + 3 * i) for i in range(40)]
    pdf = pd.DataFrame(rows, columns=["customer_id", "order_date", "purchases", "purchase_value"])
    as_of = start + dt.timedelta(days=9 * 39)  # the last customer's first purchase is on as_of
    return spark.createDataFrame(rows, DAYS_SCHEMA), as_of, pdf


def test_no_valid_model_falls_back_to_the_historical_spend_rate(
    one_time_buyers: tuple[Any, dt.date, pd.DataFrame],
) -> None:
    days, as_of, pdf = one_time_buyers
    cfg = ClvConfig(model="auto", holdout_days=30, horizon_months=12, monthly_discount_rate=0.01)
    res = run_clv(days, as_of, cfg)
    assert res.fallback and res.fit["model"] == HISTORICAL_RATE and res.figures == {}
    why = res.fit["fallback_reason"]
    assert why.startswith("no transaction model is valid (also with penalizers 0.001, 0.01): ")
    for model in M.TRANSACTION_MODELS:
        v = res.fit["validity"][model]
        assert v["valid"] is False and v["reason"] and f"{model} (" in why
        assert "penalizer 0: " in v["reason"] and "penalizer 0.01: " in v["reason"]
    assert any("historical spend rate" in w for w in res.warnings)
    # every customer's rate by hand: value / max(tenure days incl. both ends, one month) x the
    # month length, discounted month by month
    got = res.customers.toPandas().set_index("customer_id").sort_index()  # 40 rows of test data
    month = cfg.days_per_month
    factor = sum(1.01**-i for i in range(1, 13))
    tenure = np.maximum(np.array([(as_of - d).days for d in pdf["order_date"]]) + 1.0, month)
    want = pdf["purchase_value"].to_numpy() / tenure * month * factor
    np.testing.assert_allclose(got["clv"].to_numpy(), want, rtol=1e-12)
    assert got["p_alive"].isna().all() and got["expected_purchases"].isna().all()
    np.testing.assert_allclose(got["expected_avg_value"].to_numpy(), pdf["purchase_value"].to_numpy())
    assert set(got["value_tier"]) == {P.VALUE_TIER_HIGH, P.VALUE_TIER_STANDARD}

    # the clv_fit contract, and back
    table = fit_table(res)
    validity = table[table["section"] == "validity"]
    fallback_rows = validity[validity["model"] == HISTORICAL_RATE]
    assert fallback_rows[["chosen", "name", "value"]].values.tolist() == [[True, "valid", 1.0]]
    assert fallback_rows["text"].isna().all()
    reason_row = table[(table["section"] == "fit") & (table["name"] == "fallback_reason")]
    assert reason_row[["model", "chosen", "text"]].values.tolist() == [[HISTORICAL_RATE, True, why]]
    assert reason_row["value"].isna().all()
    for model in M.TRANSACTION_MODELS:
        rows = validity[validity["model"] == model].set_index("name")
        assert list(rows.index) == ["valid", "holdout_total_error", "max_relative_se"]
        assert not rows["chosen"].any() and rows.loc["valid", "value"] == 0.0
        assert rows.loc["valid", "text"] == res.fit["validity"][model]["reason"]
    spend = validity[validity["model"] == "gamma_gamma"].set_index("name")
    assert list(spend.index) == ["spend_corr", "spend_corr_ok"] and not spend["chosen"].any()
    assert pd.isna(spend.loc["spend_corr", "value"]) and "undefined" in spend.loc["spend_corr_ok", "text"]
    back = fit_from_table(table)["fit"]
    assert back["model"] == HISTORICAL_RATE and back["fallback_reason"] == why
    assert back["validity"][HISTORICAL_RATE] == {"valid": True, "reason": None}
    assert back["validity"]["bgnbd"]["reason"] == res.fit["validity"]["bgnbd"]["reason"]
    assert set(tables.CLV_FIT_SCHEMA.fieldNames()) == set(table.columns)


def test_a_named_model_that_is_not_valid_gives_way(
    one_time_buyers: tuple[Any, dt.date, pd.DataFrame],
) -> None:
    days, as_of, _ = one_time_buyers
    res = run_clv(days, as_of, ClvConfig(model="pareto_nbd", holdout_days=30, penalizer=0.01))
    # a configured penalizer: no penalizer rounds; the named model first, then the others in order
    assert res.fallback and list(res.fit["validity"])[:3] == ["pareto_nbd", "bgnbd", "mbgnbd"]
    assert "penalizers" not in res.fit["fallback_reason"]
    assert all("penalizer 0:" not in res.fit["validity"][m]["reason"] for m in M.TRANSACTION_MODELS)


# ------------------------------------------------------------------------------------------------
# The choice of clv.model: auto by the holdout error on every repeat-purchase band
# ------------------------------------------------------------------------------------------------
ONE_TIMER_WORLD_START = dt.date(2023, 1, 1)


def _one_timer_world(n: int = 3_000, seed: int = 5) -> pd.DataFrame:
    """Purchase days of a world where many leave right after their first purchase: a purchase rate
    lambda ~ Gamma(2, 1/60 per day) while alive; 40% one-timers drop out after each purchase with
    p ~ Beta(18, 2) (mean 0.9), the others with p ~ Beta(1, 60); first purchases over 700 days, the
    calibration end at day 730, a 91-day holdout after it. BG/NBD cannot let a customer without a
    repeat purchase drop out, so it keeps these old one-timers alive."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(2.0, 1 / 60, n)
    p = np.where(rng.random(n) < 0.4, rng.beta(18, 2, n), rng.beta(1, 60, n))
    first = rng.integers(0, 700, n).astype(float)
    rows: list[tuple[str, dt.date, int, float]] = []
    for i in range(n):
        day = first[i]
        while day <= 730 + 91:
            rows.append((f"c{i:05d}", ONE_TIMER_WORLD_START + dt.timedelta(days=int(day)), 1, 20.0))
            if rng.random() < p[i]:
                break
            day += max(1.0, rng.exponential(1 / lam[i]))
    pdf = pd.DataFrame(rows, columns=["customer_id", "order_date", "purchases", "purchase_value"])
    return pdf.drop_duplicates(["customer_id", "order_date"])  # one purchase occasion per day


def test_auto_does_not_overvalue_customers_without_a_repeat_purchase(spark: Any) -> None:
    """A model far above the holdout on the zero-repeat band loses, and the chosen one is close on it."""
    pdf = _one_timer_world()
    as_of = ONE_TIMER_WORLD_START + dt.timedelta(days=730 + 91)
    res = run_clv(spark.createDataFrame(pdf, DAYS_SCHEMA), as_of, ClvConfig(model="auto", holdout_days=91))
    cands = res.fit["candidates"]
    # the world has the defect the rule is for: BG/NBD is far above the holdout on band 0 ...
    assert cands["bgnbd"][V.band_key("0")] > 1.5
    chosen = res.fit["model"]
    assert chosen != "bgnbd" and res.fit["validity"][chosen]["valid"]
    errors = {k: c["holdout_error"] for k, c in cands.items()}
    assert chosen == min(errors, key=errors.__getitem__)
    # ... and the chosen model is close on every band, in purchases and (one spend: $20) in value
    assert all(0.75 < cands[chosen][V.band_key(b)] < 1.33 for b, _, _ in V.REPEAT_BANDS)
    by_band = res.validation["holdout_value_by_band"].set_index("label")
    ratio = by_band["predicted"] / by_band["actual"]
    assert 0.75 < ratio["0"] < 1.33, ratio
    assert "lowest holdout error" in res.fit["reason"] and "0 " in res.fit["reason"]


def test_band_error_is_the_mean_absolute_log_ratio_over_bands(spark: Any) -> None:
    """Known answer by hand: two customers in band 0 and one in band 4+; band 1 and 2-3 empty."""
    rows = [
        ("a", 0, 0.0, 10.0, None, 0, 5.0),
        ("b", 0, 0.0, 12.0, None, 1, 5.0),
        ("c", 5, 8.0, 9.0, 20.0, 3, 5.0),
    ]
    summary = spark.createDataFrame(rows, SUMMARY_SCHEMA)
    fit = M.FitResult(
        model=M.PARETO_NBD, params={"r": 1.0, "alpha": 2.0, "s": 0.5, "beta": 3.0}, log_likelihood=0.0,
        n_customers=3, n_rows=3, converged=True, iterations=1, function_evals=1, grad_norm=0.0,
        message="", penalizer=0.0,
    )  # fmt: skip
    got = V.holdout_metrics(summary, fit)
    x = np.array([0.0, 0.0, 5.0])
    pred = M.expected_purchases(
        M.PARETO_NBD, fit.values, 5.0, x, np.array([0.0, 0.0, 8.0]), np.array([10.0, 12.0, 9.0])
    )
    zero, top = pred[:2].sum(), pred[2]
    assert got[V.band_key("0")] == pytest.approx(zero / 1.0, rel=1e-9)
    assert got[V.band_key("4+")] == pytest.approx(top / 3.0, rel=1e-9)
    assert V.band_key("1") not in got and V.band_key("2-3") not in got  # no customer there
    want = (abs(np.log((zero + 0.5) / 1.5)) + abs(np.log((top + 0.5) / 3.5))) / 2
    assert got["holdout_band_error"] == pytest.approx(want, rel=1e-9)
    assert got["holdout_error"] == got["holdout_band_error"] and "holdout_segment_error" not in got
    # by segment: a and c in S1, b in S2; the error pools the bands' and the segments' terms
    segments = spark.createDataFrame(
        [("a", "S1"), ("b", "S2"), ("c", "S1")], "customer_id string, segment string"
    )
    seg = V.holdout_metrics(summary, fit, segments)
    s1, s2 = pred[0] + pred[2], pred[1]
    assert seg[V.segment_key("S1")] == pytest.approx(s1 / 3.0, rel=1e-9)
    assert seg[V.segment_key("S2")] == pytest.approx(s2 / 1.0, rel=1e-9)
    terms = [abs(np.log((s1 + 0.5) / 3.5)), abs(np.log((s2 + 0.5) / 1.5))]
    assert seg["holdout_segment_error"] == pytest.approx(np.mean(terms), rel=1e-9)
    band_terms = [abs(np.log((zero + 0.5) / 1.5)), abs(np.log((top + 0.5) / 3.5))]
    assert seg["holdout_error"] == pytest.approx(np.mean(band_terms + terms), rel=1e-9)
    assert seg["holdout_mae"] == pytest.approx(got["holdout_mae"], rel=1e-12)
