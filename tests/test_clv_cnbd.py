"""MBG/CNBD-k (regular inter-purchase times): the model against MBG/NBD at k = 1, parameters and k
recovered from simulated event logs, and the whole CLV stage on regular buyers who stopped."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark.clv import SEGMENT, cnbd, fit_from_table, fit_table, run_clv
from segspark.clv import bands as B
from segspark.clv import models as M
from segspark.clv import predict as P
from segspark.clv import validation as V
from segspark.config import ClvConfig
from segspark.schema import CUSTOMER_ID, ORDER_DATE, PURCHASE_VALUE, PURCHASES

MBG = [0.7, 5.0, 0.9, 2.5]  # r, alpha, a, b


def event_log(
    n: int, k: int, params: list[float], horizon: float, seed: int
) -> tuple[M.RfmStats, list[list[float]]]:
    """n customers of MBG/CNBD-k with (r, alpha, a, b) = ``params``, first purchase at 0 and ages
    uniform in [horizon / 2, horizon]: their statistics (with the log gaps) and purchase times."""
    r, alpha, a, b = params
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(r, 1.0 / alpha, n), rng.beta(a, b, n)
    xs, txs, ages, times = [], [], [], []
    litt = 0.0
    for i in range(n):
        age, t, mine = rng.uniform(horizon / 2, horizon), 0.0, [0.0]
        while rng.random() >= p[i]:  # she stays after this purchase
            gap = rng.gamma(k, 1.0 / lam[i])
            if t + gap > age:
                break
            t += gap
            litt += float(np.log(gap))
            mine.append(t)
        xs.append(len(mine) - 1)
        txs.append(t)
        ages.append(age)
        times.append(mine)
    stats = M.RfmStats.from_arrays(xs, txs, ages)
    return replace(stats, litt_sum=litt, n_gaps=float(sum(xs))), times


def test_k1_is_mbgnbd() -> None:
    stats, _ = event_log(400, 1, MBG, 52.0, seed=3)
    params = [1.0, *MBG]
    np.testing.assert_allclose(
        M.log_likelihood(M.MBGCNBD, params, stats), M.log_likelihood(M.MBGNBD, MBG, stats), rtol=1e-12
    )
    x, t_x, age = stats.x, stats.t_x, stats.T
    np.testing.assert_allclose(
        M.p_alive(M.MBGCNBD, params, x, t_x, age), M.p_alive(M.MBGNBD, MBG, x, t_x, age)
    )
    np.testing.assert_allclose(
        M.alive_purchases(M.MBGCNBD, params, 26.0, x, age), M.alive_purchases(M.MBGNBD, MBG, 26.0, x, age)
    )
    t = np.array([1.0, 10.0, 52.0, 200.0])
    np.testing.assert_allclose(
        M.expected_purchases_new(M.MBGCNBD, params, t), M.expected_purchases_new(M.MBGNBD, MBG, t), rtol=1e-8
    )


def test_k_and_parameters_recovered_from_an_event_log() -> None:
    truth = [2.0, 3.0, 0.8, 3.0]
    stats, _ = event_log(3000, 3, truth, 52.0, seed=1)
    fit = M.fit_transactions(M.MBGCNBD, stats)
    assert fit.params["k"] == 3.0 and "k=3 by profile log-likelihood" in fit.message
    for name, want in zip(("r", "alpha", "a", "b"), truth, strict=True):
        assert fit.params[name] == pytest.approx(want, rel=0.25), name
    assert M.assess(fit, 10.0, 0.25).valid
    # refit with k given (the refit on the full history): the same optimum
    again = M.fit_transactions(M.MBGCNBD, stats, initial=fit.values)
    np.testing.assert_allclose(again.values, fit.values, rtol=1e-4)
    # the same data in days: the same k, time parameters x7
    days = replace(
        M.RfmStats.from_arrays(stats.x, stats.t_x * 7.0, stats.T * 7.0, stats.weight),
        litt_sum=stats.litt_sum + stats.n_gaps * np.log(7.0),
        n_gaps=stats.n_gaps,
    )
    d = M.fit_transactions(M.MBGCNBD, days)
    assert d.params["k"] == 3.0 and d.params["alpha"] / 7.0 == pytest.approx(fit.params["alpha"], rel=1e-3)
    # without the log gaps k cannot be chosen: a clear error, not a guess
    with pytest.raises(Exception, match="log gaps"):
        M.fit_transactions(M.MBGCNBD, M.RfmStats.from_arrays(stats.x, stats.t_x, stats.T))


def test_expectations_match_simulation() -> None:
    params = [4.0, 1.5, 12.0, 0.7, 4.0]
    t = np.full(200_000, 40.0)
    x, _ = cnbd.simulate(params, t, np.random.default_rng(7))
    assert M.expected_purchases_new(M.MBGCNBD, params, 40.0) == pytest.approx(x.mean(), rel=0.02)
    # a regular buyer silent for many of her usual gaps is far less likely alive than under MBG/NBD
    x_, t_x, age = 10.0, 30.0, 60.0  # ten purchases in 30 weeks, then 30 weeks of silence
    regular = M.p_alive(M.MBGCNBD, params, x_, t_x, age)[()]
    poisson = M.p_alive(M.MBGNBD, params[1:], x_, t_x, age)[()]
    assert regular < 0.01 < poisson


# ------------------------------------------------------------------------------------------------
# The CLV stage on regular buyers, some of whom stopped on a planted date
# ------------------------------------------------------------------------------------------------
DAYS_SCHEMA = T.StructType(
    [
        T.StructField(CUSTOMER_ID, T.StringType(), True),
        T.StructField(ORDER_DATE, T.DateType(), True),
        T.StructField(PURCHASES, T.LongType(), True),
        T.StructField(PURCHASE_VALUE, T.DoubleType(), True),
    ]
)
START = dt.date(2023, 1, 1)
CAL_END = dt.date(2024, 12, 31)
HOLD_END = dt.date(2025, 6, 30)
STOPPED = "stopped"


def _regular_buyers(n: int, seed: int) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    """Customers buying every ~21-60 days with Erlang-8 gaps; a third stop on a planted day 180-300
    days before the calibration end, the rest buy on. Returns customer_days rows and the planted
    (customer, segment) labels: ``stopped`` or ``active``."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[Any, ...]] = []
    labels: list[tuple[str, str]] = []
    for i in range(n):
        cid = f"c{i:04d}"
        mean_gap = rng.uniform(21, 60)
        stopped = rng.random() < 1 / 3
        end = CAL_END - dt.timedelta(days=int(rng.integers(180, 301))) if stopped else HOLD_END
        day = START + dt.timedelta(days=int(rng.integers(0, 200)))
        value = float(rng.uniform(20, 80))
        while day <= end:
            rows.append((cid, day, 1, round(value * rng.uniform(0.8, 1.2), 2)))
            day += dt.timedelta(days=max(1, round(rng.gamma(8, mean_gap / 8))))
        labels.append((cid, STOPPED if stopped else "active"))
    return rows, labels


@pytest.fixture(scope="module")
def stopped_result(spark: Any) -> Any:
    rows, labels = _regular_buyers(600, seed=11)
    days = spark.createDataFrame(rows, DAYS_SCHEMA)
    segments = spark.createDataFrame(labels, f"{CUSTOMER_ID} string, {SEGMENT} string")

    def segments_at(day: dt.date) -> DataFrame:
        assert day == CAL_END
        return segments

    cfg = ClvConfig(model="auto", calibration_end=CAL_END, holdout_end=HOLD_END)
    return run_clv(days, HOLD_END, cfg, segments_at=segments_at)


def test_regular_buyers_who_stopped_are_not_valued_above_their_holdout(stopped_result: Any) -> None:
    result = stopped_result
    cands = result.fit["candidates"]
    assert result.fit["model"] == M.MBGCNBD and cands[M.MBGCNBD]["params"]["k"] > 2
    assert "RFM segments" in result.fit["reason"] and "worst segment" in result.fit["reason"]
    # auto ranks by the error over bands and segments, which the Poisson models lose on the stopped
    errors = {m: c["holdout_error"] for m, c in cands.items() if "holdout_error" in c}
    assert min(errors, key=errors.__getitem__) == M.MBGCNBD
    by_seg = result.validation["holdout_value_by_segment"].set_index("label")
    stopped, active = by_seg.loc[STOPPED], by_seg.loc["active"]
    assert stopped["actual"] == 0.0 and active["actual"] > 50
    # predicted holdout value of a customer who stopped: a few percent of an active one's at most
    assert stopped["predicted"] < 0.05 * active["actual"]
    assert active["predicted"] == pytest.approx(active["actual"], rel=0.25)
    # the stopped have no holdout purchase (no ratio): the segment error says how far off each model is
    assert all(np.isnan(c[V.segment_key(STOPPED)]) for c in cands.values())
    for poisson in (M.PARETO_NBD, M.MBGNBD):
        assert cands[poisson]["holdout_segment_error"] > 2 * cands[M.MBGCNBD]["holdout_segment_error"]


def test_spark_predictions_per_customer_match_numpy(spark: Any) -> None:
    """P(alive) is a Spark expression (a sum of k terms), the expectations a pandas_udf: both agree
    with the numpy closed forms, edges included (no repeat purchase, first purchase on the as-of day)."""
    schema = "customer_id string, frequency long, recency double, T double, monetary_value double"
    rows = [
        ("a", 2, 3.0, 10.0, 20.0),
        ("b", 2, 8.0, 10.0, 30.0),  # same (x, T) as "a", another recency: another P(alive)
        ("c", 0, 0.0, 5.0, None),
        ("d", 0, 0.0, 0.0, None),
        ("e", 12, 20.0, 52.0, 12.5),  # a steady buyer silent for 32 weeks
    ]
    summary = spark.createDataFrame(rows, schema)
    stats, _ = event_log(300, 3, [2.0, 3.0, 0.8, 3.0], 52.0, seed=5)
    fit = M.fit_transactions(M.MBGCNBD, stats)
    params, gg = fit.values, [6.0, 4.0, 15.0]
    got = (
        P.with_predictions(summary, fit, gg, 6, 0.01, 4.0)
        .toPandas()
        .set_index("customer_id")
        .loc[list("abcde")]
    )
    x, t_x, age = (np.array([r[i] for r in rows], dtype=float) for i in (1, 2, 3))
    m = np.array([r[4] if r[4] is not None else np.nan for r in rows])
    np.testing.assert_allclose(got["p_alive"], M.p_alive(M.MBGCNBD, params, x, t_x, age), rtol=1e-10)
    np.testing.assert_allclose(
        got["expected_purchases"], M.expected_purchases(M.MBGCNBD, params, 24.0, x, t_x, age), rtol=1e-9
    )
    value = M.expected_avg_value(gg, x, m)
    np.testing.assert_allclose(
        got["clv"], M.discounted_clv(M.MBGCNBD, params, x, t_x, age, value, 6, 0.01, 4.0), rtol=1e-9
    )
    assert got.loc["a", "p_alive"] < got.loc["b", "p_alive"]  # the longer silence
    assert got.loc["e", "p_alive"] < 0.01 and got.loc["d", "p_alive"] > 0.5


# ------------------------------------------------------------------------------------------------
# Regular buyers who stop, mixed with irregular buyers of one or two purchases: one model per band
# ------------------------------------------------------------------------------------------------
IRREGULAR = "irregular"
# the band a model per repeat band must hold: predicted / actual holdout value of bands 0 and 1
BAND_VALUE_RATIO = (0.7, 1.4)


def _irregular_buyers(n: int, seed: int) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    """Poisson buyers with long, irregular gaps (exponential, mean 120-360 days) who leave after a
    purchase with probability 0.3 (geometric, as the Poisson models assume): most have no or one
    repeat purchase by the calibration end."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[Any, ...]] = []
    for i in range(n):
        cid = f"i{i:04d}"
        mean_gap = rng.uniform(120, 360)
        day = START + dt.timedelta(days=int(rng.integers(0, (CAL_END - START).days - 30)))
        value = float(rng.uniform(20, 80))
        while day <= HOLD_END:
            rows.append((cid, day, 1, round(value * rng.uniform(0.8, 1.2), 2)))
            if rng.random() < 0.3:
                break
            day += dt.timedelta(days=max(1, round(rng.exponential(mean_gap))))
    return rows, [(f"i{i:04d}", IRREGULAR) for i in range(n)]


@pytest.fixture(scope="module")
def mixed_days(spark: Any) -> tuple[DataFrame, Any]:
    regular, labels = _regular_buyers(200, seed=5)
    irregular, more = _irregular_buyers(600, seed=6)
    days = spark.createDataFrame(regular + irregular, DAYS_SCHEMA)
    segments = spark.createDataFrame(labels + more, f"{CUSTOMER_ID} string, {SEGMENT} string")

    def segments_at(day: dt.date) -> DataFrame:
        assert day == CAL_END
        return segments

    return days, segments_at


def _band_value_ratios(result: Any) -> dict[str, float]:
    by_band = result.validation["holdout_value_by_band"].set_index("label")
    return {b: float(by_band.loc[b, "predicted"] / by_band.loc[b, "actual"]) for b in ("0", "1")}


def test_auto_chooses_the_model_per_repeat_band(mixed_days: tuple[DataFrame, Any]) -> None:
    """One model for everyone under-predicts the irregular few-purchase buyers (or overvalues the
    stopped regular ones); the model chosen per band holds both bands 0 and 1 within
    ``BAND_VALUE_RATIO`` of their holdout value, where the best single model does not."""
    days, segments_at = mixed_days
    cfg = ClvConfig(model="auto", per_band=True, calibration_end=CAL_END, holdout_end=HOLD_END)
    result = run_clv(days, HOLD_END, cfg, segments_at=segments_at)
    fit = result.fit
    single = fit["primary_model"]
    print(fit["reason"], _band_value_ratios(result))
    assert fit["model"] == B.PER_BAND
    assert fit["band_models"].startswith("0 ") and fit["band_model_4plus"] in M.TRANSACTION_MODELS
    low, high = BAND_VALUE_RATIO
    assert all(low <= r <= high for r in _band_value_ratios(result).values()), _band_value_ratios(result)
    # the choice is recorded like a model's: its holdout error beats the best single model's
    cands = fit["candidates"]
    assert cands[B.PER_BAND]["holdout_error"] < (1 - B.MIN_GAIN) * cands[single]["holdout_error"]
    assert fit["validity"][B.PER_BAND]["valid"] and "per repeat band" in fit["reason"]
    assert {f"{m}.r" for m in set(fit[k] for k in fit if k.startswith("band_model_"))} <= set(fit["params"])
    # in clv_fit: the choice's rows are the chosen ones, and read back as written
    rows = fit_table(result)
    chosen = set(rows.loc[rows["chosen"] & (rows["section"] == "validity"), "model"])
    assert B.PER_BAND in chosen and not chosen & set(M.TRANSACTION_MODELS)
    back = fit_from_table(rows)["fit"]
    assert back["band_models"] == fit["band_models"] and back["validity"][B.PER_BAND]["valid"]
    # scored per band: every customer has a finite CLV and P(alive) (nothing collected per customer)
    got = result.customers.agg(
        F.count(F.lit(1)).alias("n"), F.count(F.col("clv")).alias("clv"), F.max("p_alive").alias("pa")
    ).first()
    assert got["n"] == got["clv"] == 800 and got["pa"] <= 1.0
    # the best single model for everyone misses band 0 or 1 by more than the stated band
    alone = run_clv(days, HOLD_END, cfg.model_copy(update={"model": single}), segments_at=segments_at)
    assert alone.fit["model"] == single
    print(single, _band_value_ratios(alone))
    assert not all(low <= r <= high for r in _band_value_ratios(alone).values()), _band_value_ratios(alone)
