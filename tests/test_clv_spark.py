"""CLV in Spark: hand-computed summary statistics, CDNOW from the raw transactions (through the
silver orders and customer_days) into run_clv, and the fit as a small table."""

from __future__ import annotations

import datetime as dt
import math
import os
from typing import Any

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from segspark import silver, tables
from segspark.clv import ClvResult, fit_from_table, fit_table, resolve_windows, run_clv
from segspark.clv import models as M
from segspark.clv import predict as P
from segspark.clv import summary as S
from segspark.clv import validation as V
from segspark.config import ClvConfig, PurchaseConfig
from segspark.errors import ConfigError, InputError

lifetimes = pytest.importorskip("lifetimes")

TX_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), True),
        T.StructField("order_id", T.StringType(), True),
        T.StructField("order_ts", T.TimestampType(), True),
        T.StructField("amount", T.DoubleType(), True),
    ]
)
CAL_END = dt.date(1997, 9, 30)
HOLD_END = dt.date(1998, 6, 30)
PUBLISHED_BG = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_PARETO = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}


def ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def customer_days(tx: DataFrame, min_net_amount: float = 0.0) -> DataFrame:
    """The silver customer_days of some order lines, built as the pipeline builds them."""
    return silver.customer_days(silver.orders(tx, PurchaseConfig(min_net_amount=min_net_amount)))


def _close(got: dict[str, float], want: dict[str, float], rel: float) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=rel), f"{k}: {got[k]} vs {v}"


# ------------------------------------------------------------------------------------------------
# Summary statistics on a hand-made example
# ------------------------------------------------------------------------------------------------
def test_summary_statistics_by_hand(spark: Any) -> None:
    rows = [
        # c1: first day 2024-01-01 (two orders that day = one purchase occasion, value 30)
        ("c1", "o1", ts("2024-01-01 09:00:00"), 10.0),
        ("c1", "o2", ts("2024-01-01 18:00:00"), 20.0),
        # a fully returned order (net -5) and a free order (net 0): not purchases
        ("c1", "o3", ts("2024-01-05 10:00:00"), -5.0),
        ("c1", "o3b", ts("2024-01-20 10:00:00"), 0.0),
        # repeat on 2024-01-15: an order with a return line, net 40 - 10 = 30
        ("c1", "o4", ts("2024-01-15 10:00:00"), 40.0),
        ("c1", "o4", ts("2024-01-15 10:00:00"), -10.0),
        # repeat on the calibration end day itself (inclusive), value 6
        ("c1", "o5", ts("2024-01-29 23:59:59"), 6.0),
        # holdout purchase, and one after the holdout end (ignored)
        ("c1", "o6", ts("2024-02-10 12:00:00"), 15.0),
        ("c1", "o7", ts("2024-03-10 12:00:00"), 15.0),
        # c2: one-time buyer on the calibration end day: x = 0, T = 0; the same day's pure return
        # order is no purchase and leaves the day's purchase value at 50
        ("c2", "o8", ts("2024-01-29 00:00:00"), 50.0),
        ("c2", "o8r", ts("2024-01-29 15:00:00"), -10.0),
        # c3: only in the holdout: not in the summary
        ("c3", "o9", ts("2024-02-01 00:00:00"), 25.0),
        # null customer and null timestamp rows are ignored; a null amount counts as 0 (so that
        # order is no purchase), the other order of the same day is
        (None, "o10", ts("2024-01-02 00:00:00"), 99.0),
        ("c4", "o11", None, 99.0),
        ("c4", "o12", ts("2024-01-08 00:00:00"), None),
        ("c4", "o13", ts("2024-01-08 10:00:00"), 12.0),
        # c5: only a free order and a pure return: never a buyer
        ("c5", "o14", ts("2024-01-10 00:00:00"), 0.0),
        ("c5", "o15", ts("2024-01-11 00:00:00"), -3.0),
    ]
    tx = spark.createDataFrame(rows, TX_SCHEMA)
    got = S.summary_statistics(customer_days(tx), dt.date(2024, 1, 29), "week", dt.date(2024, 2, 29))
    expected_schema = T.StructType(
        [
            T.StructField("customer_id", T.StringType(), True),
            T.StructField("frequency", T.LongType(), True),
            T.StructField("recency", T.DoubleType(), True),
            T.StructField("T", T.DoubleType(), True),
            T.StructField("monetary_value", T.DoubleType(), True),
            T.StructField("recency_days", T.IntegerType(), True),
            T.StructField("T_days", T.IntegerType(), True),
            T.StructField("first_purchase_date", T.DateType(), True),
            T.StructField("first_value", T.DoubleType(), True),
            T.StructField("log_gaps", T.DoubleType(), True),
            T.StructField("frequency_holdout", T.LongType(), True),
            T.StructField("value_holdout", T.DoubleType(), True),
            T.StructField("duration_holdout", T.DoubleType(), True),
        ]
    )
    expected = spark.createDataFrame(
        [
            # c1's holdout purchase day 2024-02-10 is worth 15 (the 2024-03-10 one is after the end)
            # c1's gaps: 14 and 14 days, 2 weeks each (the log gaps MBG/CNBD-k's choice of k sums)
            (
                *("c1", 2, 28 / 7, 28 / 7, (30.0 + 6.0) / 2, 28, 28, dt.date(2024, 1, 1), 30.0),
                *(2 * math.log(2.0), 1, 15.0, 31 / 7),
            ),
            ("c2", 0, 0.0, 0.0, None, 0, 0, dt.date(2024, 1, 29), 50.0, 0.0, 0, 0.0, 31 / 7),
            ("c4", 0, 0.0, 21 / 7, None, 0, 21, dt.date(2024, 1, 8), 12.0, 0.0, 0, 0.0, 31 / 7),
        ],
        expected_schema,
    )
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)
    # the fit's statistics sum them with the (x, t_x, T) groups: no pass of their own
    stats = S.compressed_rfm(got, "week")
    assert stats.litt_sum == pytest.approx(2 * math.log(2.0)) and stats.n_gaps == 2.0
    with pytest.raises(InputError, match="purchase_value"):
        S.purchase_days(customer_days(tx).drop("purchase_value"), dt.date(2024, 1, 29))


def test_windows_default_and_errors() -> None:
    as_of = dt.date(2024, 6, 30)
    assert resolve_windows(as_of, ClvConfig()) == (as_of - dt.timedelta(days=91), as_of)
    with pytest.raises(ConfigError, match="calibration_end"):
        resolve_windows(as_of, ClvConfig(calibration_end=dt.date(2024, 7, 1)))
    with pytest.raises(ConfigError, match="holdout_end"):
        resolve_windows(
            as_of, ClvConfig(calibration_end=dt.date(2024, 5, 1), holdout_end=dt.date(2024, 4, 1))
        )


# ------------------------------------------------------------------------------------------------
# CDNOW from the raw transactions
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cdnow_raw() -> pd.DataFrame:
    path = os.path.join(os.path.dirname(lifetimes.__file__), "datasets", "CDNOW_sample.txt")
    df = pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        names=["cid", "id", "date", "cds", "amount"],
        dtype={"cid": str, "date": str},
    )
    df["date"] = pd.to_datetime(df["date"], format="%Y%m%d")
    return df


@pytest.fixture(scope="module")
def cdnow_published() -> pd.DataFrame:
    """The published calibration summary (x, t_x, T, zbar rounded to 2 decimals), by the file's ID."""
    path = os.path.join(
        os.path.dirname(lifetimes.__file__), "datasets", "cdnow_customers_summary_with_transactions.csv"
    )
    return pd.read_csv(path).set_index("ID")


@pytest.fixture(scope="module")
def cdnow_tx(spark: Any, cdnow_raw: pd.DataFrame) -> DataFrame:
    pdf = pd.DataFrame(
        {
            "customer_id": cdnow_raw["cid"],
            "order_id": [f"o{i}" for i in range(len(cdnow_raw))],
            "order_ts": [d.to_pydatetime() for d in cdnow_raw["date"]],
            "amount": cdnow_raw["amount"].astype(float),
        }
    )
    return spark.createDataFrame(pdf, TX_SCHEMA)


@pytest.fixture(scope="module")
def cdnow_days(cdnow_tx: DataFrame) -> DataFrame:
    # CDNOW has 8 one-time buyers whose only purchase is worth $0.00; the published summary (and
    # lifetimes) count them, so the purchase threshold sits just below zero here
    return customer_days(cdnow_tx, min_net_amount=-0.005).cache()


@pytest.fixture(scope="module")
def cdnow_result(cdnow_days: DataFrame) -> tuple[ClvResult, pd.DataFrame]:
    cfg = ClvConfig(model="auto", calibration_end=CAL_END, holdout_end=HOLD_END)
    result = run_clv(cdnow_days, CAL_END, cfg)
    return result, result.customers.toPandas()


def test_cdnow_published_parameters_from_raw_transactions(
    cdnow_result: tuple[ClvResult, pd.DataFrame],
) -> None:
    result, _ = cdnow_result
    cands = result.fit["candidates"]
    _close(cands["bgnbd"]["params"], PUBLISHED_BG, 0.005)
    assert cands["bgnbd"]["log_likelihood"] == pytest.approx(-9582.4, rel=0.005)
    _close(cands["pareto_nbd"]["params"], PUBLISHED_PARETO, 0.005)
    _close(result.fit["spend_params"], PUBLISHED_GG, 0.005)
    assert result.fit["spend_repeat_buyers"] == 946 and result.fit["spend_excluded_nonpositive"] == 0
    bg = [cands["bgnbd"]["params"][k] for k in ("r", "alpha", "a", "b")]
    spots = M.expected_purchases_new(M.BGNBD, bg, [1.0, 3.0, 32.0, 78.0])
    np.testing.assert_allclose(spots, [0.0532, 0.1506, 1.0437, 1.8576], rtol=1e-3)
    assert result.fit["n_customers"] == 2357 and result.fit["converged"]
    assert result.fit["compressed_rows"] < 2357
    # under the driver cap: the exact day grid and every customer
    assert (result.fit["compressed_grid_days"], result.fit["compressed_sample_fraction"]) == (1, 1.0)
    assert (result.fit["spend_resolution_used"], result.fit["spend_sample_fraction"]) == (1e-4, 1.0)


def test_cdnow_model_choice_and_validation(
    cdnow_result: tuple[ClvResult, pd.DataFrame], cdnow_raw: pd.DataFrame, cdnow_published: pd.DataFrame
) -> None:
    result, _ = cdnow_result
    cands = result.fit["candidates"]
    errors = {k: v["holdout_error"] for k, v in cands.items()}
    assert result.fit["model"] == min(errors, key=errors.__getitem__)
    assert "lowest holdout error" in result.fit["reason"] and "MAE" in result.fit["reason"]
    # every repeat band holds CDNOW customers, so each has its predicted/actual ratio
    chosen = cands[result.fit["model"]]
    assert all(V.band_key(b) in chosen for b, _, _ in V.REPEAT_BANDS)
    v = result.validation
    # holdout purchase occasions counted independently with pandas from the raw file
    hold = cdnow_raw[
        (cdnow_raw["date"] > pd.Timestamp(CAL_END)) & (cdnow_raw["date"] <= pd.Timestamp(HOLD_END))
    ]
    assert v["holdout_actual_total"] == hold.groupby("cid")["date"].nunique().sum()
    assert 0 < v["holdout_mae"] < 1.0 and v["holdout_corr"] > 0.5
    curve = v["tracking_curve"]
    assert len(curve) == 78
    assert curve.loc[curve["calibration"], "actual_cum"].iloc[-1] == cdnow_published["x"].sum()  # 2457
    assert curve["actual_cum"].iloc[-1] == cdnow_published["x"].sum() + v["holdout_actual_total"]
    assert abs(curve["expected_cum"].iloc[-1] / curve["actual_cum"].iloc[-1] - 1) < 0.1
    hist = v["frequency_histogram"]
    assert hist["actual"].sum() == pytest.approx(2357) and hist["expected"].sum() == pytest.approx(2357)
    assert hist["actual"].iloc[0] == (cdnow_published["x"] == 0).sum()
    assert set(result.figures) == {"clv_tracking", "clv_frequency_histogram", "clv_conditional_expectation"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    metrics = result.metrics()
    assert metrics["clv_holdout_mae"] == v["holdout_mae"] and "clv_spend_p" in metrics


def test_cdnow_customer_scores_match_lifetimes(
    cdnow_result: tuple[ClvResult, pd.DataFrame], cdnow_raw: pd.DataFrame, cdnow_published: pd.DataFrame
) -> None:
    result, customers = cdnow_result
    assert list(customers.columns) == list(P.CUSTOMER_COLUMNS)
    assert len(customers) == 2357 and customers["customer_id"].is_unique
    ids = cdnow_raw.drop_duplicates("cid").set_index("cid")["id"]
    ref = cdnow_published.loc[ids.loc[customers["customer_id"]].to_numpy()]
    model = result.fit["model"]
    fitter = {
        "bgnbd": lifetimes.BetaGeoFitter,
        "mbgnbd": lifetimes.ModifiedBetaGeoFitter,
        "pareto_nbd": lifetimes.ParetoNBDFitter,
    }[model]()
    fitter.fit(ref["x"], ref["t_x"], ref["T"])
    x, t_x, Tcol = ref["x"].to_numpy(), ref["t_x"].to_numpy(), ref["T"].to_numpy()
    # the published file rounds t_x and T to 0.01 weeks: agreement to ~1e-3 is what rounding allows
    np.testing.assert_allclose(
        customers["p_alive"], fitter.conditional_probability_alive(x, t_x, Tcol), rtol=2e-2, atol=2e-3
    )
    horizon = 12 * 30.4375 / 7
    want = fitter.conditional_expected_number_of_purchases_up_to_time(horizon, x, t_x, Tcol)
    np.testing.assert_allclose(customers["expected_purchases"], want, rtol=2e-2, atol=2e-3)
    gg = lifetimes.GammaGammaFitter().fit(ref.loc[ref["x"] > 0, "x"], ref.loc[ref["x"] > 0, "zbar"])
    np.testing.assert_allclose(
        customers["expected_avg_value"],
        gg.conditional_expected_average_profit(ref["x"], ref["zbar"]),
        rtol=2e-3,
    )
    high = customers["value_tier"] == P.VALUE_TIER_HIGH
    assert high.mean() == pytest.approx(0.2, abs=0.01)
    assert customers.loc[high, "clv"].min() >= customers.loc[~high, "clv"].max()


def test_bgnbd_spark_predictions_match_lifetimes_clv(spark: Any, cdnow_published: pd.DataFrame) -> None:
    ref = cdnow_published.reset_index()
    summary = spark.createDataFrame(
        pd.DataFrame(
            {
                "customer_id": ref["ID"].astype(str),
                "frequency": ref["x"].astype("int64"),
                "recency": ref["t_x"].astype(float),
                "T": ref["T"].astype(float),
                "monetary_value": ref["zbar"].where(ref["x"] > 0),
            }
        )
    )
    bg = lifetimes.BetaGeoFitter().fit(ref["x"], ref["t_x"], ref["T"])
    rep = ref[ref["x"] > 0]
    gg = lifetimes.GammaGammaFitter().fit(rep["x"], rep["zbar"])
    fit = M.fit_transactions(M.BGNBD, M.RfmStats.from_arrays(ref["x"], ref["t_x"], ref["T"]))
    fit.params = dict(zip(M.PARAM_NAMES[M.BGNBD], bg.params_.to_numpy(), strict=True))
    got = (
        P.with_predictions(summary, fit, gg.params_.to_numpy(), 12, 0.01, 4.345)
        .toPandas()
        .assign(ID=lambda d: d["customer_id"].astype(int))
        .set_index("ID")
        .loc[rep["ID"]]
    )
    want = gg.customer_lifetime_value(
        bg, rep["x"], rep["t_x"], rep["T"], rep["zbar"], time=12, discount_rate=0.01, freq="W"
    )
    np.testing.assert_allclose(got["clv"], want.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(
        got["p_alive"], bg.conditional_probability_alive(rep["x"], rep["t_x"], rep["T"]), rtol=1e-10
    )
    # evaluated once per distinct (x, T) and joined back: still every customer's own expectation
    np.testing.assert_allclose(
        got["expected_purchases"],
        bg.conditional_expected_number_of_purchases_up_to_time(12 * 4.345, rep["x"], rep["t_x"], rep["T"]),
        rtol=1e-8,
    )


def test_compressed_spark_statistics_give_the_per_customer_fit(spark: Any, cdnow_days: DataFrame) -> None:
    summary = S.summary_statistics(cdnow_days, CAL_END, "week")
    compressed = S.compressed_rfm(summary, "week")
    per_customer = summary.select("frequency", "recency", "T").toPandas()  # small test data only
    full = M.fit_transactions(
        M.BGNBD, M.RfmStats.from_arrays(per_customer["frequency"], per_customer["recency"], per_customer["T"])
    )
    small = M.fit_transactions(M.BGNBD, compressed)
    assert compressed.n_rows < len(per_customer)
    _close(small.params, full.params, 1e-6)


# ------------------------------------------------------------------------------------------------
# Driver memory: the fits' statistics never exceed their row cap, whatever the customer count
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cdnow_summary(cdnow_days: DataFrame) -> Any:
    summary = S.summary_statistics(cdnow_days, CAL_END, "week").cache()
    yield summary
    summary.unpersist()


def test_rfm_statistics_stay_under_the_cap(cdnow_summary: DataFrame) -> None:
    exact = S.compressed_rfm(cdnow_summary, "week")
    assert (exact.grid_days, exact.sample_fraction) == (1, 1.0) and exact.n_customers == 2357
    # a cap at the exact row count changes nothing: the day grid, bit for bit
    same = S.compressed_rfm(cdnow_summary, "week", max_rows=exact.n_rows)
    for a in ("x", "t_x", "T", "weight"):
        np.testing.assert_array_equal(getattr(same, a), getattr(exact, a))
    # a third of the rows: coarser day bins; every customer counted at its own x, and the groups'
    # mean recency and T keep the totals, so the fit moves by little
    cap = exact.n_rows // 3
    coarse = S.compressed_rfm(cdnow_summary, "week", max_rows=cap)
    assert coarse.n_rows <= cap and coarse.grid_days in S.RFM_GRID_DAYS[1:] and coarse.sample_fraction == 1.0
    np.testing.assert_array_equal(coarse.x_index[0], exact.x_index[0])
    np.testing.assert_array_equal(coarse.x_weights, exact.x_weights)
    for a in ("t_x", "T"):
        total = float(getattr(exact, a) @ exact.weight)
        assert float(getattr(coarse, a) @ coarse.weight) == pytest.approx(total, rel=1e-12)
    assert np.all(coarse.t_x <= coarse.T)
    want = M.fit_transactions(M.BGNBD, exact).params
    got = M.fit_transactions(M.BGNBD, coarse).params
    _close(got, want, 0.05)  # measured: within 3.7% at 28-day bins (205 rows for 2,357 customers)
    # a cap no grid meets: a seeded sample of customers, weighted up; the same rows on a rerun
    tiny = S.compressed_rfm(cdnow_summary, "week", max_rows=40)
    again = S.compressed_rfm(cdnow_summary, "week", max_rows=40)
    assert 0 < tiny.n_rows <= 40 and 0.0 < tiny.sample_fraction < 1.0
    np.testing.assert_array_equal(tiny.weight, again.weight)
    np.testing.assert_array_equal(tiny.t_x, again.t_x)


def test_spend_statistics_stay_under_the_cap(cdnow_summary: DataFrame) -> None:
    exact = S.compressed_spend(cdnow_summary)
    assert (exact.resolution, exact.sample_fraction) == (1e-4, 1.0) and exact.stats is not None
    cap = exact.n_rows - 20
    coarse = S.compressed_spend(cdnow_summary, max_rows=cap)
    assert coarse.n_rows <= cap and coarse.resolution in S.SPEND_GRID_STEPS[1:]
    assert coarse.stats is not None and coarse.stats.n_customers == exact.stats.n_customers == 946
    # counts and the sum of log spend stay exact; only log(gamma + x m) is taken at a bin's mean
    assert coarse.stats.x_sum_log_m == pytest.approx(exact.stats.x_sum_log_m, rel=1e-12)
    assert (coarse.n_repeat_buyers, coarse.freq_spend_corr) == (exact.n_repeat_buyers, exact.freq_spend_corr)
    want = M.fit_gamma_gamma(exact.stats).params
    got = M.fit_gamma_gamma(coarse.stats).params
    _close(got, want, 1e-4)  # measured: 1e-6 at width 1e-3 (730 rows for 946 buyers)
    tiny = S.compressed_spend(cdnow_summary, max_rows=20)
    assert 0 < tiny.n_rows <= 20 and 0.0 < tiny.sample_fraction < 1.0


def test_no_holdout_fits_on_everything_and_chooses_by_bic(cdnow_days: DataFrame) -> None:
    early = cdnow_days.filter("order_date < date'1997-07-01'")
    as_of = dt.date(1997, 9, 30)  # default calibration end as_of - 91 days: an empty holdout window
    result = run_clv(early, as_of, ClvConfig(model="auto"))
    assert result.validation["has_holdout"] is False
    assert result.fit["calibration_end"] == as_of.isoformat() and result.fit["holdout_end"] is None
    bics = {k: v["bic"] for k, v in result.fit["candidates"].items()}
    assert result.fit["model"] == min(bics, key=bics.__getitem__) and "BIC" in result.fit["reason"]
    assert "holdout_mae" not in result.validation and "clv_conditional_expectation" not in result.figures
    assert result.customers.count() == early.where("purchases > 0").select("customer_id").distinct().count()


def test_candidates_on_a_coarser_grid_score_from_the_finer_one(
    cdnow_days: DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over ``SEARCH_ROWS`` rows the candidates are fitted on a coarser grid, and the chosen model
    that scores is fitted again on up to ``MAX_FIT_ROWS`` rows: the parameters of a fit on those."""
    early = cdnow_days.filter("order_date < date'1997-07-01'")
    as_of = dt.date(1997, 9, 30)  # no holdout: the calibration statistics are the scoring ones
    summary = S.summary_statistics(early, as_of, "week")
    exact = S.compressed_rfm(summary, "week")
    monkeypatch.setattr(S, "SEARCH_ROWS", exact.n_rows // 3)
    result = run_clv(early, as_of, ClvConfig(model="bgnbd"))
    fit = result.fit
    assert fit["calibration_fit"]["n_rows"] <= exact.n_rows // 3
    assert (fit["compressed_rows"], fit["compressed_grid_days"]) == (exact.n_rows, 1)
    want = M.fit_transactions(M.BGNBD, exact).params
    got = {k: fit["params"][k] for k in want}
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-4)
    coarse = {k: fit["calibration_fit"]["params"][k] for k in want}
    assert coarse != got  # the candidates' fit is not the scoring one


def test_mbgnbd_spark_predictions_per_customer(spark: Any) -> None:
    schema = T.StructType(
        [
            T.StructField("customer_id", T.StringType(), True),
            T.StructField("frequency", T.LongType(), True),
            T.StructField("recency", T.DoubleType(), True),
            T.StructField("T", T.DoubleType(), True),
            T.StructField("monetary_value", T.DoubleType(), True),
        ]
    )
    rows = [
        ("a", 2, 3.0, 10.0, 20.0),
        ("b", 2, 8.0, 10.0, 30.0),  # same (x, T) as "a", another recency: another P(alive)
        ("c", 0, 0.0, 5.0, None),  # one-time buyer, no spend history
        ("d", 0, 0.0, 0.0, None),  # edge: first purchase on the as-of day
        ("e", 7, 40.0, 52.0, 12.5),
    ]
    summary = spark.createDataFrame(rows, schema)
    params = [0.5, 6.0, 0.9, 1.6]
    gg = [6.0, 4.0, 15.0]
    fit = M.fit_transactions(M.MBGNBD, M.RfmStats.from_arrays([0, 1, 3], [0, 1, 2], [4, 5, 6]), strict=False)
    fit.params = dict(zip(M.PARAM_NAMES[M.MBGNBD], params, strict=True))
    got = (
        P.with_predictions(summary, fit, gg, 6, 0.01, 4.0)
        .toPandas()
        .set_index("customer_id")
        .loc[list("abcde")]
    )
    x = np.array([r[1] for r in rows], dtype=float)
    t_x = np.array([r[2] for r in rows])
    Tv = np.array([r[3] for r in rows])
    m = np.array([r[4] if r[4] is not None else np.nan for r in rows])
    np.testing.assert_allclose(got["p_alive"], M.p_alive(M.MBGNBD, params, x, t_x, Tv), rtol=1e-12)
    np.testing.assert_allclose(
        got["expected_purchases"], M.expected_purchases(M.MBGNBD, params, 24.0, x, t_x, Tv), rtol=1e-10
    )
    value = M.expected_avg_value(gg, x, m)
    np.testing.assert_allclose(got["expected_avg_value"], value, rtol=1e-12)
    np.testing.assert_allclose(
        got["clv"], M.discounted_clv(M.MBGNBD, params, x, t_x, Tv, value, 6, 0.01, 4.0), rtol=1e-10
    )
    assert got.loc["a", "p_alive"] != got.loc["b", "p_alive"]


# ------------------------------------------------------------------------------------------------
# The fit as a small table (clv_fit) and back
# ------------------------------------------------------------------------------------------------
def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and np.isnan(want):
        return isinstance(got, float) and np.isnan(got)
    return bool(got == want) and isinstance(got, bool) == isinstance(want, bool)


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not isinstance(v, dict | pd.DataFrame | list)}


def test_fit_table_round_trips_through_spark(
    spark: Any, cdnow_result: tuple[ClvResult, pd.DataFrame]
) -> None:
    from segspark.report.model_results import clv_info

    result, _ = cdnow_result
    fallback = "unpenalized fit did not converge (x); used penalizer 0.001"
    res = ClvResult(result.customers, {**result.fit, "penalizer_fallback": fallback}, result.validation)
    pdf = fit_table(res)
    assert list(pdf.columns) == [f.name for f in tables.CLV_FIT_SCHEMA.fields]
    rows = [
        tuple(None if isinstance(v, float) and v != v else v for v in r)
        for r in pdf.astype(object).itertuples(index=False, name=None)
    ]
    back_pdf = spark.createDataFrame(rows, tables.CLV_FIT_SCHEMA).toPandas()  # as the table holds it
    back = fit_from_table(back_pdf)
    fit, chosen = res.fit, res.fit["model"]

    want_fit = _scalars(fit)
    assert set(_scalars(back["fit"])) == set(want_fit)
    bad = {k: (back["fit"][k], v) for k, v in want_fit.items() if not _same(back["fit"][k], v)}
    assert not bad, bad
    assert back["fit"]["converged"] is True and back["fit"]["penalizer_fallback"] == fallback
    for section in ("params", "se", "spend_params", "spend_se"):
        assert back["fit"][section] == fit[section], section
    want_val = _scalars(res.validation)
    assert want_val.keys() == back["validation"].keys()
    assert all(_same(back["validation"][k], v) for k, v in want_val.items())
    assert back["validation"]["has_holdout"] is True and "holdout_mae" in back["validation"]
    # every candidate's summary, nested again; the chosen one also carries its calibration fit
    assert set(back["fit"]["candidates"]) == set(fit["candidates"]) == set(M.TRANSACTION_MODELS)
    for model, summary in fit["candidates"].items():
        got = back["fit"]["candidates"][model]
        assert got["params"] == summary["params"]
        assert all(_same(got[k], v) for k, v in _scalars(summary).items()), model
    assert back["fit"]["candidates"][chosen]["iterations"] == fit["calibration_fit"]["iterations"]

    assert set(pdf.loc[pdf["chosen"], "model"]) == {chosen, "gamma_gamma"}
    assert set(pdf.loc[pdf["section"].isin(["spend_params", "spend_se"]), "model"]) == {"gamma_gamma"}
    candidates = pdf[pdf["section"] == "candidate"]
    assert set(candidates.loc[candidates["chosen"], "model"]) == {chosen}
    # what the report reads from the table
    info = clv_info(back)
    assert info is not None and info["model"] == chosen and info["params"] == fit["params"]
    assert info["validation"]["holdout_mae"] == res.validation["holdout_mae"]


# ------------------------------------------------------------------------------------------------
# Validity of the fits (the rule itself is tested in test_clv_models and test_clv_validity)
# ------------------------------------------------------------------------------------------------
def test_cdnow_fits_are_valid_and_say_so_in_clv_fit(cdnow_result: tuple[ClvResult, pd.DataFrame]) -> None:
    result, _ = cdnow_result
    chosen, validity = result.fit["model"], result.fit["validity"]
    assert not result.fallback and not result.warnings  # CDNOW: every model interior, spend check ok
    for model in M.TRANSACTION_MODELS:
        v, cand = validity[model], result.fit["candidates"][model]
        assert v["valid"] is True and v["reason"] is None
        want = (cand["holdout_predicted_total"] - cand["holdout_actual_total"]) / cand["holdout_actual_total"]
        assert v["holdout_total_error"] == pytest.approx(want, rel=1e-12) and abs(want) < 0.25
        assert 0 < v["max_relative_se"] < 10 and v["max_relative_se_param"] in M.PARAM_NAMES[model]
    table = fit_table(result)
    rows = table[table["section"] == "validity"]
    for model in M.TRANSACTION_MODELS:
        mine = rows[rows["model"] == model].set_index("name")
        assert list(mine.index) == ["valid", "holdout_total_error", "max_relative_se"]
        assert set(mine["chosen"]) == {model == chosen}
        assert mine.loc["valid", "value"] == 1.0 and mine.loc["valid", "text"] is None
        assert mine.loc["holdout_total_error", "value"] == validity[model]["holdout_total_error"]
        assert mine.loc["holdout_total_error", "text"] is None
        assert mine.loc["max_relative_se", "text"] == validity[model]["max_relative_se_param"]
    spend = rows[rows["model"] == "gamma_gamma"].set_index("name")
    assert list(spend.index) == ["spend_corr", "spend_corr_ok"] and spend["chosen"].all()
    assert spend.loc["spend_corr", "value"] == result.fit["spend_freq_corr"]
    assert abs(result.fit["spend_freq_corr"]) < 0.3  # CDNOW's spend hardly depends on frequency
    assert spend.loc["spend_corr_ok", "value"] == 1.0 and spend.loc["spend_corr_ok", "text"] is None
    assert "historical_rate" not in set(table["model"])
    assert fit_from_table(table)["fit"]["validity"] == validity


def test_a_named_model_beyond_the_holdout_bound_gives_way(
    cdnow_days: DataFrame, cdnow_result: tuple[ClvResult, pd.DataFrame]
) -> None:
    result, _ = cdnow_result
    errors = {m: abs(result.fit["validity"][m]["holdout_total_error"]) for m in M.TRANSACTION_MODELS}
    worst, second = sorted(errors, key=errors.__getitem__, reverse=True)[:2]
    assert errors[worst] > errors[second]  # a bound between them rejects only the worst
    bound = (errors[worst] + errors[second]) / 2
    cfg = ClvConfig(model=worst, calibration_end=CAL_END, holdout_end=HOLD_END, max_holdout_error=bound)
    res = run_clv(cdnow_days, CAL_END, cfg)
    following = next(m for m in M.TRANSACTION_MODELS if m != worst)
    assert res.fit["model"] == following and not res.fallback
    assert res.fit["validity"][worst]["valid"] is False
    assert "clv.max_holdout_error" in res.fit["validity"][worst]["reason"]
    assert res.fit["reason"].startswith(f"configured clv.model={worst} is not valid (holdout total error")
    assert any(w.startswith(f"clv: configured clv.model={worst} is not valid") for w in res.warnings)


def test_a_prediction_udf_unpickled_in_a_fresh_python_imports_the_models_only(spark: Any) -> None:
    """What a Python worker of a run does with the CLV predictions' pandas_udfs: unpickle the function
    (pyspark's cloudpickle) and call it. It imports this package's models, not the fit with matplotlib
    and statsmodels (about a second of imports in every worker), and gives the driver's numbers."""
    import json
    import subprocess
    import sys

    from pyspark import cloudpickle

    params = [0.243, 4.414, 0.793, 2.426]  # Fader, Hardie & Lee (2005) on CDNOW
    blob = cloudpickle.dumps(P.expected_purchases_udf(M.BGNBD, params).func)
    code = (
        "import json, pickle, sys\n"
        "import pandas as pd\n"
        "f = pickle.loads(sys.stdin.buffer.read())\n"
        "s = pd.Series\n"
        "out = f(s([39.0]), s([2.0]), s([30.43]), s([38.86]))\n"
        "heavy = ('segspark.clv.fit', 'matplotlib', 'statsmodels', 'segspark.report', 'mlflow')\n"
        "print(json.dumps([float(out.iloc[0]), sorted(m for m in heavy if m in sys.modules)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    value, heavy = json.loads(proc.stdout)
    assert heavy == []
    # the published CDNOW conditional expectation (Fader, Hardie & Lee 2005): 1.226 for this customer
    expected = M.expected_purchases(M.BGNBD, params, *(np.array([v]) for v in (39.0, 2.0, 30.43, 38.86)))
    assert value == pytest.approx(float(expected[0]), rel=1e-12)
    assert value == pytest.approx(1.226, abs=0.001)


def test_the_python_workers_start_beside_the_fits_and_are_the_ones_the_udfs_find(spark: Any) -> None:
    """The candidate fits run inside ``python_workers_started``: a background job starts the local
    session's Python workers meanwhile (importing the CLV models) and is waited for at the end."""
    import threading

    import pyspark.sql.functions as F

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "segspark-python-workers"]

    with P.python_workers_started(spark):
        assert len(workers()) == 1  # started, and the body runs meanwhile (a job takes far longer)
    assert workers() == []  # waited for: no job of it outlives the fits

    def loaded(x: pd.Series) -> pd.Series:  # by value: its unpickling imports no segspark module
        import sys

        return pd.Series([float("segspark.clv.models" in sys.modules)] * len(x))

    probe = F.pandas_udf(loaded, "double")  # type: ignore[call-overload]
    got = spark.range(0, 2, 1, 2).select(F.min(probe(F.col("id").cast("double"))).alias("m")).first()
    assert got["m"] == 1.0  # both task threads' workers hold the models already
