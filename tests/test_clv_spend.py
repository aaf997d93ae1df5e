"""The spend model conditioned on frequency: strata, recovery of known parameters, its choice when
Gamma-Gamma's independence check fails, and the holdout value by repeat-purchase band and segment."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from segspark import schema as SC
from segspark import silver
from segspark.clv import SEGMENT, ClvResult, run_clv
from segspark.clv import spend as SP
from segspark.clv.simulation import simulate_spend
from segspark.clv.stats import SpendStats
from segspark.config import ClvConfig, PurchaseConfig
from segspark.pipeline import clv_validation_rows
from segspark.report.clv_holdout import holdout_value_table
from segspark.report.fmt import Fmt

TX_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), True),
        T.StructField("order_id", T.StringType(), True),
        T.StructField("order_ts", T.TimestampType(), True),
        T.StructField("amount", T.DoubleType(), True),
    ]
)
START, CAL_END, AS_OF = dt.date(2023, 1, 1), dt.date(2023, 12, 31), dt.date(2024, 3, 31)


# ------------------------------------------------------------------------------------------------
# Strata and the per-stratum fits (driver side, no Spark)
# ------------------------------------------------------------------------------------------------
def _stats(x: np.ndarray, m: np.ndarray) -> SpendStats:
    return SpendStats.from_arrays(x, m)


def test_short_strata_join_their_lower_neighbour() -> None:
    # buyers per stratum: x=1: 500, 2-3: 300, 4-7: 40, 8-15: 250, 16+: 30
    x = np.repeat([1, 2, 5, 9, 20], [500, 300, 40, 250, 30]).astype(float)
    bounds = SP.strata_bounds(_stats(x, np.full(x.size, 10.0)), 100)
    # 4-7 (40) joins 2-3; 16+ (30) is short at the top and joins 8-15
    assert bounds == [(1, 1), (2, 7), (8, None)]
    assert [SP.stratum_label(lo, hi) for lo, hi in bounds] == ["1", "2-7", "8+"]
    assert SP.strata_bounds(_stats(x, np.full(x.size, 10.0)), 10_000) == [(1, None)]
    # a short lowest stratum joins the next one up
    y = np.repeat([1, 2, 4], [20, 300, 300]).astype(float)
    assert SP.strata_bounds(_stats(y, np.full(y.size, 10.0)), 100) == [(1, 3), (4, None)]


def test_each_stratum_recovers_its_own_spend_parameters() -> None:
    """Known answers: spend simulated from different Gamma-Gamma parameters by frequency; each
    stratum's fitted population mean p*gamma/(q-1) is its own, not the pooled one."""
    rng = np.random.default_rng(3)
    low_x = rng.integers(1, 2, 6_000).astype(float)  # one repeat purchase: small spenders
    high_x = rng.integers(4, 12, 6_000).astype(float)  # frequent: high spenders
    low_params, high_params = (6.0, 4.0, 10.0), (6.0, 4.0, 60.0)  # population means 20 and 120
    m = np.concatenate([simulate_spend(low_params, low_x, 1), simulate_spend(high_params, high_x, 2)])
    x = np.concatenate([low_x, high_x])
    model = SP.fit_by_frequency(_stats(x, m), [0.0, 0.001], 500)
    means = {s.label: s.population_mean for s in model.strata}
    assert set(means) == {"1-3", "4-7", "8+"}  # no buyer with 2-3 repeat purchases: 1 and 2-3 merge
    assert means["1-3"] == pytest.approx(20.0, rel=0.1)
    assert means["4-7"] == pytest.approx(120.0, rel=0.1)
    assert means["8+"] == pytest.approx(120.0, rel=0.1)
    pooled, _ = SP.fit_with_penalizers(_stats(x, m), [0.0, 0.001])
    pooled_mean = SP.Stratum(1, None, pooled).population_mean
    # the pooled model values a customer without repeat history well above her peers' spend
    assert pooled_mean > 1.5 * means["1-3"]


# ------------------------------------------------------------------------------------------------
# In Spark: the choice, the scores and the holdout value by band and segment
# ------------------------------------------------------------------------------------------------
N_CUSTOMERS = 3_000


def _transactions(seed: int = 11) -> tuple[pd.DataFrame, dict[str, str]]:
    """A BG/NBD world over 15 months with spend tied to frequency: purchase rate lambda ~ Gamma(0.8,
    1/40 per day), a dropout chance p ~ Beta(1, 6) after each purchase, first purchases spread over
    2023, and a mean spend per purchase of 10 + 3000 lambda (about $16 for a purchase a year, $160
    for one every 3 weeks). Returns the lines and each customer's kind (rate above the median:
    frequent)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.8, 1 / 40, N_CUSTOMERS)
    drop = rng.beta(1.0, 6.0, N_CUSTOMERS)
    rows: list[tuple[str, str, dt.datetime, float]] = []
    horizon = (AS_OF - START).days
    for i in range(N_CUSTOMERS):
        day, spend = float(rng.integers(0, 330)), 10.0 + 3000.0 * lam[i]
        while day <= horizon:
            ts = dt.datetime.combine(START + dt.timedelta(days=int(day)), dt.time(12))
            rows.append((f"c{i:05d}", f"o{len(rows)}", ts, round(float(rng.gamma(8.0, spend / 8.0)), 2)))
            if rng.random() < drop[i]:
                break
            day += rng.exponential(1.0 / lam[i])
    median = float(np.median(lam))
    kinds = {f"c{i:05d}": ("frequent" if lam[i] > median else "occasional") for i in range(N_CUSTOMERS)}
    return pd.DataFrame(rows, columns=["customer_id", "order_id", "order_ts", "amount"]), kinds


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, dict[str, str]]:
    return _transactions()


@pytest.fixture(scope="module")
def tx(world: tuple[pd.DataFrame, dict[str, str]]) -> pd.DataFrame:
    return world[0]


@pytest.fixture(scope="module")
def days(spark: Any, tx: pd.DataFrame) -> DataFrame:
    lines = spark.createDataFrame(tx, TX_SCHEMA)
    return silver.customer_days(silver.orders(lines, PurchaseConfig())).cache()


@pytest.fixture(scope="module")
def kinds(spark: Any, world: tuple[pd.DataFrame, dict[str, str]]) -> DataFrame:
    return spark.createDataFrame(list(world[1].items()), f"{SC.CUSTOMER_ID} string, {SEGMENT} string")


@pytest.fixture(scope="module")
def runs(days: DataFrame, kinds: DataFrame) -> dict[str, tuple[ClvResult, pd.DataFrame]]:
    asked: list[dt.date] = []

    def segments_at(day: dt.date) -> DataFrame:
        asked.append(day)
        return kinds

    out = {}
    for name in ("auto", "gamma_gamma"):
        cfg = ClvConfig(calibration_end=CAL_END, spend_model=name)  # type: ignore[arg-type]
        res = run_clv(days, AS_OF, cfg, segments_at=segments_at)
        out[name] = (res, res.customers.toPandas().set_index(SC.CUSTOMER_ID))
    assert asked == [CAL_END, CAL_END]  # segments as of the calibration end, not the as-of date
    return out


def test_a_failed_independence_check_conditions_spend_on_frequency(runs: dict[str, Any]) -> None:
    res, _ = runs["auto"]
    fit = res.fit
    assert not fit["validity"]["gamma_gamma"]["spend_corr_ok"] and fit["spend_freq_corr"] > 0.3
    assert fit["spend_model"] == SP.BY_FREQUENCY
    assert "independence check failed" in fit["spend_reason"] and fit["spend_strata"].startswith("1")
    assert any(k.startswith("x1.") for k in fit["spend_params"])
    assert not any("treat expected spend with care" in w for w in res.warnings)
    plain_fit = runs["gamma_gamma"][0].fit
    assert plain_fit["spend_model"] == SP.GAMMA_GAMMA
    assert any("treat expected spend with care" in w for w in runs["gamma_gamma"][0].warnings)


def test_a_one_purchase_customer_is_valued_from_her_peers(runs: dict[str, Any], tx: pd.DataFrame) -> None:
    res, scores = runs["auto"]
    _, plain = runs["gamma_gamma"]
    assert res.fit["model"] == "bgnbd" and res.fit["refit_valid"], res.fit.get("reason")
    n_days = tx.assign(d=tx["order_ts"].dt.date).query("d <= @AS_OF").groupby("customer_id")["d"].nunique()
    one, frequent = n_days[n_days == 1].index, n_days[n_days >= 6].index
    assert len(one) > 100 and len(frequent) > 100
    zero_value = scores.loc[one, SC.EXPECTED_AVG_VALUE]
    # a customer without repeat purchases: the lowest stratum's posterior mean given her first
    # purchase, p (gamma + v) / (p + q - 1), by hand from the recorded parameters
    lowest = SP.Stratum(1, 1, _stratum_fit(res.fit, res.fit["spend_strata"].split(", ")[0]))
    p, q, g = (lowest.fit.params[k] for k in ("p", "q", "gamma"))
    first_day = tx.assign(d=tx["order_ts"].dt.date).groupby(["customer_id", "d"])["amount"].sum()
    v = first_day.groupby(level="customer_id").first().loc[one]
    np.testing.assert_allclose(zero_value.to_numpy(), (p * (g + v) / (p + q - 1)).to_numpy(), rtol=1e-9)
    assert res.fit["spend_zero_repeat_value"] == pytest.approx(lowest.population_mean)
    # one small purchase, a small value: the smallest first purchases are valued lowest
    small, large = v.nsmallest(20).index, v.nlargest(20).index
    assert zero_value.loc[small].max() < zero_value.loc[large].min()
    assert zero_value.median() < 0.5 * scores.loc[frequent, SC.EXPECTED_AVG_VALUE].median()
    # plain Gamma-Gamma puts the same customers at the pooled mean, pulled up by the frequent buyers
    assert plain.loc[one, SC.EXPECTED_AVG_VALUE].iloc[0] > 1.3 * zero_value.median()
    # a customer with one small purchase (below the one-purchase median) is worth less than a
    # frequent, high-spending one; one large purchase may be worth more
    small_one = v[v <= v.median()].index
    assert scores.loc[small_one, SC.CLV].max() < scores.loc[frequent, SC.CLV].median()


def _stratum_fit(fit: dict[str, Any], label: str) -> Any:
    """The recorded Gamma-Gamma parameters of stratum ``label`` (``spend_params`` ``x1.p`` ...)."""
    from segspark.clv.validity import FitResult

    key = "x" + label.replace("-", "_").replace("+", "plus")
    params = {k: fit["spend_params"][f"{key}.{k}"] for k in ("p", "q", "gamma")}
    return FitResult("gamma_gamma", params, 0.0, 0, 0, True, 0, 0, 0.0, "", 0.0)


def test_holdout_value_by_band_and_segment_adds_up(
    runs: dict[str, Any], tx: pd.DataFrame, world: tuple[pd.DataFrame, dict[str, str]]
) -> None:
    res, _ = runs["auto"]
    v = res.validation
    by_band, by_seg = v[SC.CLV_VIEW_HOLDOUT_VALUE_BY_BAND], v[SC.CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT]
    assert list(by_band["label"]) == ["0", "1", "2-3", "4+"]
    # independently of the code under test: calibration buyers, their holdout purchase-day values
    t = tx.assign(d=tx["order_ts"].dt.date)
    cal = t[t["d"] <= CAL_END]
    hold = t[(t["d"] > CAL_END) & (t["d"] <= AS_OF) & t["customer_id"].isin(cal["customer_id"])]
    assert by_band["customers"].sum() == by_seg["customers"].sum() == cal["customer_id"].nunique()
    actual_total = float(hold["amount"].sum())
    assert float((by_band["actual"] * by_band["customers"]).sum()) == pytest.approx(actual_total, rel=1e-9)
    want = hold.groupby(hold["customer_id"].map(world[1]))["amount"].sum()
    got = by_seg.set_index("label")
    for kind in ("frequent", "occasional"):
        assert got.loc[kind, "actual"] * got.loc[kind, "customers"] == pytest.approx(want[kind], rel=1e-9)
    # the frequency-conditioned spend model is closer to the holdout for the customers without
    # repeat purchases than plain Gamma-Gamma, which overstates them
    plain = runs["gamma_gamma"][0].validation[SC.CLV_VIEW_HOLDOUT_VALUE_BY_BAND].set_index("label")
    ratio_new = float(
        by_band.set_index("label").loc["0", "predicted"] / by_band.set_index("label").loc["0", "actual"]
    )
    ratio_plain = float(plain.loc["0", "predicted"] / plain.loc["0", "actual"])
    assert ratio_plain > 1.2 and abs(np.log(ratio_new)) < abs(np.log(ratio_plain))


def test_holdout_value_rows_and_report_table(runs: dict[str, Any]) -> None:
    res, _ = runs["auto"]
    rows = pd.DataFrame(
        clv_validation_rows(res.validation),
        columns=["view", "x", "label", "actual", "predicted", "customers"],
    )
    band = rows[rows["view"] == SC.CLV_VIEW_HOLDOUT_VALUE_BY_BAND]
    assert list(band["label"]) == ["0", "1", "2-3", "4+"] and list(band["x"]) == [0.0, 1.0, 2.0, 3.0]
    seg = rows[rows["view"] == SC.CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT]
    assert set(seg["label"]) == {"frequent", "occasional"}
    table = holdout_value_table(rows, Fmt("$"), ["frequent"])
    assert table is not None
    labels = [r[0] for r in table.rows]
    assert labels == [
        "repeat purchases 0",
        "repeat purchases 1",
        "repeat purchases 2-3",
        "repeat purchases 4+",
        "frequent",
        "occasional",
    ]
    first = band.iloc[0]
    assert table.rows[0][4] == f"{first['predicted'] / first['actual']:.2f}"
    assert table.rows[0][2:4] == [f"${first['predicted']:,.2f}", f"${first['actual']:,.2f}"]
    assert holdout_value_table(None, Fmt("$"), []) is None


def test_the_report_says_spend_is_conditioned_on_frequency_not_that_the_check_failed() -> None:
    """clv_fit rows of a run that chose the stratified spend model: Gamma-Gamma's check failed (its
    validity rows say so), but the figures no longer rest on that assumption."""
    from segspark.clv import FIT_COLUMNS
    from segspark.report.data import clv_validity as read_validity
    from segspark.report.sections import _spend_check

    rows = [
        ("bgnbd", True, "fit", "model", None, "bgnbd"),
        ("bgnbd", True, "fit", "spend_model", None, SP.BY_FREQUENCY),
        ("bgnbd", True, "validity", "valid", 1.0, None),
        ("gamma_gamma", False, "validity", "spend_corr", 0.699, None),
        ("gamma_gamma", False, "validity", "spend_corr_ok", 0.0, "|corr(frequency, mean spend)| 0.699 > 0.3"),
    ]
    v = read_validity(pd.DataFrame(rows, columns=list(FIT_COLUMNS)))
    assert v.spend_model == SP.BY_FREQUENCY and v.spend_corr_ok is False
    text, short, ok = _spend_check(v)
    assert ok is True and "conditioned on purchase frequency" in text and "0.699" in short
    # the same rows with Gamma-Gamma as the spend model: the failed check stays a failure
    plain = read_validity(pd.DataFrame([r for r in rows if r[3] != "spend_model"], columns=list(FIT_COLUMNS)))
    assert _spend_check(plain)[2] is False


def test_segments_at_the_calibration_end_see_no_later_order(spark: Any, tx: pd.DataFrame) -> None:
    from segspark import features as FE
    from segspark.config import RfmConfig

    # with a return-only day before the calibration end: monetary is net of it, recency ignores it
    first = tx.sort_values("order_ts").iloc[0]
    back = first["order_ts"] + pd.Timedelta(days=1, hours=1)
    assert (
        back.date() <= CAL_END
        and not ((tx["customer_id"] == first["customer_id"]) & (tx["order_ts"].dt.date == back.date())).any()
    )
    tx = pd.concat(
        [
            tx,
            pd.DataFrame([[first["customer_id"], "ret-1", back, -0.5 * first["amount"]]], columns=tx.columns),
        ]
    )
    orders = silver.orders(spark.createDataFrame(tx, TX_SCHEMA), PurchaseConfig())
    days = silver.customer_days(orders)
    got = FE.rfm_segments_as_of(days, CAL_END, RfmConfig(), SEGMENT).toPandas().set_index(SC.CUSTOMER_ID)
    cal = tx[tx["order_ts"].dt.date <= CAL_END]
    assert set(got.index) == set(cal["customer_id"])  # buyers of that date only, one row each
    assert got[SEGMENT].notna().all() and got.index.is_unique
    # from the customer days, the segments the RFM features of the orders give at that date
    cfg = RfmConfig()
    feats = FE.rfm_features(orders, CAL_END)
    from_orders = (
        FE.with_rfm_segment(FE.with_rfm_scores(feats, cfg), cfg).toPandas().set_index(SC.CUSTOMER_ID)
    )
    assert got[SEGMENT].to_dict() == from_orders[FE.RFM_SEGMENT].to_dict()
    three = [FE.RECENCY_DAYS, FE.FREQUENCY, FE.MONETARY]
    mine = FE.rfm_from_days(days, CAL_END).toPandas().set_index(SC.CUSTOMER_ID).sort_index()
    pd.testing.assert_frame_equal(mine[three], from_orders[three].sort_index(), check_dtype=False)
    returned = mine.loc[first["customer_id"]]
    assert (
        returned[FE.MONETARY]
        < tx[
            (tx["customer_id"] == first["customer_id"])
            & (tx["amount"] > 0)
            & (tx["order_ts"].dt.date <= CAL_END)
        ]["amount"].sum()
    )
    # a buyer's segment then is not her segment after the holdout's purchases
    later = FE.rfm_segments_as_of(days, AS_OF, cfg, SEGMENT).toPandas().set_index(SC.CUSTOMER_ID)
    both = got.join(later, rsuffix="_later", how="inner")
    assert (both[SEGMENT] != both[f"{SEGMENT}_later"]).any()


def test_the_holdout_window_is_said_in_days_and_dates() -> None:
    from segspark.report.clv_holdout import holdout_window

    fit = {"calibration_end": "2023-12-31", "holdout_end": "2024-03-31"}
    assert holdout_window(fit) == "the 91 days from 2023-12-31 to 2024-03-31"
    assert holdout_window({"calibration_end": "2023-12-31", "holdout_end": None}) == ""
    assert holdout_window(None) == ""


def test_the_tracking_curve_counts_the_calibration_customers_repeats_week_by_week(
    spark: Any, tx: pd.DataFrame
) -> None:
    """The actual curve: each week's repeat purchase days of the customers who bought by the
    calibration end, counted the way it is defined (every purchase day after the customer's first);
    customers whose first purchase falls in the holdout add nothing, their repeats neither."""
    from segspark.clv import models as M
    from segspark.clv import summary as S
    from segspark.clv import validation as V

    late = [
        (f"n{i:03d}", f"n{i:03d}-{j}", pd.Timestamp(day) + pd.Timedelta(hours=i % 20), 25.0)
        for i in range(30)
        for j, day in enumerate(("2024-01-09", "2024-02-14", "2024-03-20"))
    ]
    lines = pd.concat([tx, pd.DataFrame(late, columns=tx.columns)], ignore_index=True)
    days = S.purchase_days(
        silver.customer_days(silver.orders(spark.createDataFrame(lines, TX_SCHEMA), PurchaseConfig())), AS_OF
    )
    summary = S.summary_from_purchase_days(days, CAL_END, "week", AS_OF)
    fit = M.fit_transactions("bgnbd", S.compressed_rfm(summary, "week"), 0.0)
    curve = V.tracking_curve(days, summary, fit, CAL_END, AS_OF, "week")

    bought = lines.assign(day=lines["order_ts"].dt.date)[["customer_id", "day"]].drop_duplicates()
    first = bought.groupby("customer_id")["day"].transform("min")
    repeats = bought[(first <= CAL_END) & (bought["day"] > first) & (bought["day"] <= AS_OF)]
    start = first[first <= CAL_END].min()
    assert (first > CAL_END).sum() == 90  # the late customers' purchase days: not counted
    week = repeats["day"].map(lambda d: (d - start).days // 7)
    want = np.cumsum(np.bincount(week, minlength=len(curve)))
    assert curve["actual_cum"].tolist() == want.tolist()
    assert curve.loc[curve["calibration"], "actual_cum"].iloc[-1] < curve["actual_cum"].iloc[-1]
