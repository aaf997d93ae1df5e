"""Churn propensity from the silver orders: hand-checked features and labels, the metrics against
Spark's evaluator, a time-split model on generated data, and the metrics as a small table."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from matplotlib.figure import Figure
from pandas.testing import assert_frame_equal
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import churn as C
from segspark import churn_table as CT
from segspark import silver, tables
from segspark.config import ChurnConfig, PurchaseConfig
from segspark.errors import InputError

TX_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), True),
        T.StructField("order_id", T.StringType(), True),
        T.StructField("order_ts", T.TimestampType(), True),
        T.StructField("amount", T.DoubleType(), True),
        T.StructField("product_category", T.StringType(), True),
        T.StructField("channel", T.StringType(), True),
    ]
)
CUTOFF = dt.date(2024, 3, 31)
MIN_AUC = 0.75  # stated floor for generated data (measured about 0.9)


def ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def orders(tx: DataFrame) -> DataFrame:
    """The silver orders of some order lines, built as the pipeline builds them."""
    return silver.orders(tx, PurchaseConfig())


@pytest.fixture(scope="module")
def small_tx(spark: Any) -> DataFrame:
    rows = [
        ("a", "1", ts("2024-01-01 10:00:00"), 100.0, "books", "web"),
        ("a", "2", ts("2024-03-01 10:00:00"), 50.0, "toys", "app"),
        ("a", "2", ts("2024-03-01 10:00:00"), -20.0, "toys", "app"),  # return line: net 30
        ("a", "3", ts("2024-03-31 23:00:00"), 20.0, None, None),  # on the cutoff: a feature
        ("a", "4", ts("2024-06-29 10:00:00"), 10.0, "books", "web"),  # cutoff + 90 days: in the label window
        ("b", "5", ts("2023-12-01 10:00:00"), 40.0, "books", "store"),
        ("b", "6", ts("2024-07-01 10:00:00"), 40.0, "books", "store"),  # after the label window
        ("c", "7", ts("2024-02-01 10:00:00"), -15.0, "books", "web"),  # only a return: not a customer
        ("c", "9", ts("2024-02-02 10:00:00"), 0.0, "books", "web"),  # a free order: not a purchase
        (None, "8", ts("2024-02-01 10:00:00"), 99.0, "books", "web"),
    ]
    return orders(spark.createDataFrame(rows, TX_SCHEMA))


def test_features_and_labels_by_hand(spark: Any, small_tx: DataFrame) -> None:
    got = C.labelled_features(small_tx, CUTOFF, 90, min_net=0.0).select(
        "customer_id",
        "recency_days",
        "tenure_days",
        "orders",
        "orders_30d",
        "orders_90d",
        "net_revenue",
        "mean_gap_days",
        "recency_to_gap",
        "return_rate",
        "distinct_categories",
        "distinct_channels",
        C.CHURN_LABEL,
    )
    schema = T.StructType(
        [T.StructField("customer_id", T.StringType())]
        + [T.StructField(c, T.DoubleType()) for c in got.columns[1:]]
    )
    expected = spark.createDataFrame(
        [
            # a: orders 90, 30 and 0 days before the cutoff (30 is not "< 30"); gap 90/2; 1 of 3 had a return
            ("a", 0.0, 90.0, 3.0, 1.0, 2.0, 150.0, 45.0, 0.0, 1 / 3, 2.0, 2.0, 0.0),
            # b: one order 121 days before the cutoff, next purchase after the 90-day window: churned
            ("b", 121.0, 121.0, 1.0, 0.0, 0.0, 40.0, 0.0, 121.0, 0.0, 1.0, 1.0, 1.0),
        ],
        schema,
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_short_history_is_a_clear_error(small_tx: DataFrame) -> None:
    with pytest.raises(InputError, match="horizon_days"):
        C.run_churn(small_tx, dt.date(2024, 6, 30), ChurnConfig(horizon_days=30), PurchaseConfig())


def test_two_windows_in_one_pass_equal_each_window_alone(small_tx: DataFrame) -> None:
    early = CUTOFF - dt.timedelta(days=60)
    wide = C.windowed_features(small_tx, [early, CUTOFF], 90, min_net=0.0)
    for i, cut in enumerate((early, CUTOFF)):
        assert_df_equality(
            C.window(wide, i, cut, 90),
            C.labelled_features(small_tx, cut, 90, min_net=0.0),
            ignore_row_order=True,
        )
    # categories and channels as bit masks (the default) or, past 63 values, as sets: same features
    assert C.value_codes(small_tx, CUTOFF) == C.Codes(
        categories=("books", "toys"), channels=("app", "store", "web")
    )
    by_sets = C.labelled_features(small_tx, CUTOFF, 90, C.Codes(categories=None, channels=None), min_net=0.0)
    assert dict(by_sets.dtypes)["distinct_categories"] == "double"
    assert_df_equality(by_sets, C.labelled_features(small_tx, CUTOFF, 90, min_net=0.0), ignore_row_order=True)


def test_features_count_each_order_as_it_stood_at_the_cutoff(spark: Any) -> None:
    """Returns recorded after a cutoff are unknown at it: the features (and the label, at the horizon's
    end) are those computed from the lines recorded by then, and differ from the orders' final state."""
    rows = [
        ("a", "1", ts("2024-03-20 10:00:00"), 100.0, "books", "web"),
        ("a", "1", ts("2024-04-05 10:00:00"), -100.0, "books", "web"),  # cancelled after the cutoff
        ("a", "2", ts("2024-03-25 10:00:00"), 50.0, "toys", "app"),
        ("a", "2", ts("2024-03-28 10:00:00"), -10.0, "toys", "app"),  # returned before the cutoff
        ("a", "2", ts("2024-04-10 10:00:00"), -20.0, "toys", "app"),  # and again after it
        ("a", "3", ts("2024-05-01 10:00:00"), 5.0, "toys", "app"),
        ("b", "4", ts("2024-01-10 10:00:00"), 30.0, "books", "web"),
        # the horizon's one purchase, cancelled after the horizon's end: b did buy in the horizon
        ("b", "5", ts("2024-04-20 10:00:00"), 40.0, "books", "web"),
        ("b", "5", ts("2024-08-01 10:00:00"), -40.0, "books", "web"),
        ("c", "6", ts("2024-02-01 10:00:00"), 30.0, "books", "web"),
        # cancelled within the horizon: no purchase by its end, c churned
        ("c", "7", ts("2024-04-20 10:00:00"), 40.0, "books", "web"),
        ("c", "7", ts("2024-05-01 10:00:00"), -40.0, "books", "web"),
    ]
    lines = spark.createDataFrame(rows, TX_SCHEMA)
    end = CUTOFF + dt.timedelta(days=90)

    def upto(day: dt.date) -> DataFrame:
        return orders(lines.where(F.to_date("order_ts") <= F.lit(day)))

    full = orders(lines)
    returns = {r["order_id"]: r["returns"] for r in full.select("order_id", "returns").collect()}
    assert returns["2"] == [(dt.date(2024, 3, 28), 10.0), (dt.date(2024, 4, 10), 20.0)]
    assert returns["4"] == []
    features = C.churn_features(full, CUTOFF, min_net=0.0)
    assert_df_equality(features, C.churn_features(upto(CUTOFF), CUTOFF, min_net=0.0), ignore_row_order=True)
    a = features.where("customer_id = 'a'").first()
    assert a is not None  # both orders were purchases then, worth 100 and 40; one had a return
    assert (a["orders"], a["net_revenue"], a["return_rate"]) == (2.0, 140.0, 0.5)
    labelled = C.labelled_features(full, CUTOFF, 90, min_net=0.0)
    assert_df_equality(
        labelled, C.labelled_features(upto(end), CUTOFF, 90, min_net=0.0), ignore_row_order=True
    )
    assert {r["customer_id"]: r[C.CHURN_LABEL] for r in labelled.collect()} == {"a": 0.0, "b": 0.0, "c": 1.0}
    # the scoring window at a later date sees the returns made by then: a's order 1 is no purchase
    late = C.churn_features(full, end, min_net=0.0).where("customer_id = 'a'").first()
    assert late is not None and (late["orders"], late["net_revenue"], late["return_rate"]) == (2.0, 25.0, 0.5)


def test_seeded_sample_is_about_the_size_and_independent_of_partitioning(spark: Any) -> None:
    df = spark.range(20_000).select(F.concat(F.lit("c"), F.col("id").cast("string")).alias("customer_id"))
    sample = C.seeded_sample(df, 5_000, 20_000, 42, "train")
    ids = {r[0] for r in sample.collect()}
    assert abs(len(ids) - 5_000) < 300
    assert ids == {r[0] for r in C.seeded_sample(df.repartition(7), 5_000, 20_000, 42, "train").collect()}
    assert ids != {r[0] for r in C.seeded_sample(df, 5_000, 20_000, 43, "train").collect()}
    assert C.seeded_sample(df, 20_000, 20_000, 42, "train") is df  # small enough: everything


def test_auc_and_pr_auc_equal_spark_evaluator(spark: Any) -> None:
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    rng = np.random.default_rng(5)
    label = (rng.random(3000) < 0.4).astype(float)
    risk = np.round(np.clip(0.3 * label + rng.random(3000) * 0.7, 0, 1), 2)  # many ties
    df = spark.createDataFrame(pd.DataFrame({"risk": risk, "churned": label}))
    for metric, ours in (("areaUnderROC", C.roc_auc), ("areaUnderPR", C.pr_auc)):
        ev = BinaryClassificationEvaluator(rawPredictionCol="risk", labelCol="churned", metricName=metric)
        assert ours(risk, label) == pytest.approx(ev.evaluate(df), abs=1e-12), metric
    assert C.roc_auc(np.array([0.9, 0.1]), np.array([1.0, 0.0])) == 1.0
    assert C.roc_auc(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == 0.5


@pytest.fixture(scope="module")
def generated_lines(spark: Any) -> DataFrame:
    from segspark import generate as G

    # cached as ``segspark generate`` caches it (a filter is otherwise pushed into its projections)
    base = G.customer_base(spark, 1500, 11, partitions=2).cache()
    return G.transactions(base, 11).cache()


@pytest.fixture(scope="module")
def generated_orders(generated_lines: DataFrame) -> DataFrame:
    return orders(generated_lines).cache()


def test_training_features_on_generated_data_are_those_of_the_lines_recorded_by_then(
    generated_lines: DataFrame, generated_orders: DataFrame
) -> None:
    """Generated returns come 1-14 days after their order: the features at a cutoff from every line
    equal those from the lines recorded by the cutoff, the labels those from the lines recorded by
    the horizon's end."""
    from segspark import generate as G

    cutoff = G.DEFAULT_END - dt.timedelta(days=120)
    end = cutoff + dt.timedelta(days=90)
    straddling = generated_orders.where(
        (F.col("order_date") <= F.lit(cutoff)) & F.exists("returns", lambda r: r["day"] > F.lit(cutoff))
    ).count()
    assert straddling > 5  # orders before the cutoff with a return after it: what the test is about

    def recorded_by(day: dt.date) -> DataFrame:
        return orders(generated_lines.where(F.to_date("order_ts") <= F.lit(day)))

    assert_approx_df_equality(
        C.churn_features(generated_orders, cutoff, min_net=0.0),
        C.churn_features(recorded_by(cutoff), cutoff, min_net=0.0),
        1e-9,
        ignore_row_order=True,
    )
    labels = C.labelled_features(generated_orders, cutoff, 90, min_net=0.0).select(
        "customer_id", C.CHURN_LABEL
    )
    known = C.labelled_features(recorded_by(end), cutoff, 90, min_net=0.0).select(
        "customer_id", C.CHURN_LABEL
    )
    assert_df_equality(labels, known, ignore_row_order=True)


@pytest.fixture(scope="module")
def gbt_result(generated_orders: DataFrame) -> tuple[C.ChurnResult, ChurnConfig]:
    from segspark import generate as G

    cfg = ChurnConfig(model="gbt", max_iter=5, max_depth=3, refit_on_latest=False)
    return C.run_churn(generated_orders, G.DEFAULT_END, cfg, PurchaseConfig()), cfg


@pytest.mark.slow
def test_churn_model_on_generated_data(
    generated_orders: DataFrame, gbt_result: tuple[C.ChurnResult, ChurnConfig]
) -> None:
    from segspark import generate as G

    result, cfg = gbt_result
    m = result.metrics
    assert m["auc"] > MIN_AUC and m["pr_auc"] > m["test_churn_rate"]
    # the window is smaller than churn.max_train_rows / max_eval_rows: no sampling
    assert m["train_rows"] == m["train_customers"] and m["eval_customers"] == m["test_customers"]
    lift = m["lift_by_decile"]
    assert lift["customers"].sum() == pytest.approx(m["test_customers"])
    assert m["lift_top_decile"] > 1.3 and lift["lift"].iloc[0] >= lift["lift"].iloc[-1]
    assert m["calibration"]["customers"].sum() == m["test_customers"] and 0 <= m["brier"] < 0.25
    assert sum(m["feature_importances"].values()) == pytest.approx(1.0)
    assert set(result.figures) == {"churn_roc", "churn_lift", "churn_calibration"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    customers = result.customers.toPandas()
    buyers = (
        generated_orders.where((F.col("order_date") <= F.lit(G.DEFAULT_END)) & F.col("is_purchase"))
        .select("customer_id")
        .distinct()
        .count()
    )
    assert len(customers) == buyers and customers["customer_id"].is_unique
    assert customers["churn_risk"].between(0, 1).all()
    bands = customers["churn_band"]
    assert set(bands) <= {C.BAND_LOW, C.BAND_MEDIUM, C.BAND_HIGH}
    assert (customers.loc[bands == C.BAND_HIGH, "churn_risk"] >= cfg.high_risk_threshold).all()
    assert (customers.loc[bands == C.BAND_LOW, "churn_risk"] < cfg.medium_risk_threshold).all()
    assert "churn_auc" in result.scalar_metrics()


@pytest.mark.slow
def test_logistic_churn_model_on_seeded_samples(generated_orders: DataFrame) -> None:
    from segspark import generate as G

    # the Spark ML engine (the default gbt fixture runs the driver-side engine)
    cfg = ChurnConfig(
        model="logistic",
        engine="spark",
        max_iter=10,
        refit_on_latest=True,
        max_train_rows=1000,
        max_eval_rows=1000,
    )
    result = C.run_churn(generated_orders, G.DEFAULT_END, cfg, PurchaseConfig())
    m = result.metrics
    assert m["auc"] > MIN_AUC
    assert len(m["feature_importances"]) == len(C.FEATURES)
    # trained and evaluated on seeded samples of about 1000 of the window's customers
    assert m["train_customers"] > 1100 and m["test_customers"] > 1100
    assert abs(m["train_rows"] - 1000) < 150 and abs(m["eval_customers"] - 1000) < 150
    assert m["lift_by_decile"]["customers"].sum() == pytest.approx(m["eval_customers"])
    assert m["scored_with"] == "refit on the test window"
    again = C.run_churn(generated_orders, G.DEFAULT_END, cfg, PurchaseConfig()).metrics
    assert (again["train_rows"], again["eval_customers"], again["auc"]) == (
        m["train_rows"],
        m["eval_customers"],
        m["auc"],
    )


def _scalar_metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if isinstance(v, int | float | str)}


def _through_spark(spark: Any, pdf: pd.DataFrame) -> pd.DataFrame:
    """The rows as the churn_metrics table holds them (declared schema, NaN as null)."""
    rows = [
        tuple(None if isinstance(v, float) and v != v else v for v in r)
        for r in pdf.astype(object).itertuples(index=False, name=None)
    ]
    return spark.createDataFrame(rows, tables.CHURN_METRICS_SCHEMA).toPandas()


@pytest.mark.slow
def test_metrics_table_round_trip(spark: Any, gbt_result: tuple[C.ChurnResult, ChurnConfig]) -> None:
    from segspark.report.model_results import churn_from_table

    result, _ = gbt_result
    pdf = CT.metrics_table(result)
    assert list(pdf.columns) == [f.name for f in tables.CHURN_METRICS_SCHEMA.fields]
    assert set(pdf["section"]) == {"status", "metric", "importance", "roc", "lift", "calibration"}
    back_pdf = _through_spark(spark, pdf)
    m = result.metrics
    assert CT.metrics_from_table(back_pdf) == _scalar_metrics(m)
    assert CT.metrics_from_table(back_pdf)["train_cutoff"] == m["train_cutoff"]  # cutoffs as text
    curves = CT.curves_from_table(back_pdf.sample(frac=1.0, random_state=1))  # any row order
    assert curves["feature_importances"] == m["feature_importances"]
    for key in ("lift_by_decile", "calibration", "roc"):
        want = m[key].astype(float)
        assert_frame_equal(curves[key][list(want.columns)], want, check_dtype=False)
    scalars, skipped = churn_from_table(back_pdf)  # what the report reads
    assert skipped is None and scalars is not None and scalars["auc"] == m["auc"]

    reason = "orders: the churn training window ... has 10 customers and 0 churned"
    skipped_pdf = _through_spark(spark, CT.skipped_table(reason))
    assert CT.metrics_from_table(skipped_pdf) == {"skipped": reason}
    assert churn_from_table(skipped_pdf) == (None, reason)


def test_lift_deciles_split_a_block_of_tied_scores_evenly() -> None:
    """A tree model gives one score to many customers: a decile cut inside such a block used to
    leave the top decile with the one customer above it (lift 0 in the demo's report)."""
    # 100 customers: one at 0.99 (not churned), 40 tied at 0.9 (30 churned), 59 at 0.1 (10 churned)
    risk = np.array([0.99] + [0.9] * 40 + [0.1] * 59)
    label = np.array([0.0] + [1.0] * 30 + [0.0] * 10 + [1.0] * 10 + [0.0] * 49)
    lift = C.lift_by_decile(risk, label)
    assert list(lift["decile"]) == list(range(1, 11))
    assert np.allclose(lift["customers"], 10.0)
    # top decile: the 0.99 customer and 9 of the tied block, whose churn rate is 30/40
    assert lift["churn_rate"].iloc[0] == pytest.approx((0 + 9 * 0.75) / 10)
    assert lift["mean_risk"].iloc[0] == pytest.approx((0.99 + 9 * 0.9) / 10)
    # every churner is counted once; the expected churners per decile add up to them
    assert (lift["churn_rate"] * lift["customers"]).sum() == pytest.approx(label.sum())
    # decile 5 (positions 40-49) straddles the block's end: 1 tied customer and 9 at 0.1
    assert lift["churn_rate"].iloc[4] == pytest.approx((1 * 0.75 + 9 * 10 / 59) / 10)


@pytest.mark.parametrize("kind", ["gbt", "logistic"])
def test_a_driver_fitted_model_scores_in_spark_as_it_does_on_the_driver(
    spark: Any, generated_orders: DataFrame, kind: str
) -> None:
    """churn.engine local: the model fitted by scikit-learn on the driver, applied in Spark as one
    column expression, gives the fitted model's own probabilities (missing values included)."""
    from segspark import generate as G
    from segspark.local_models import fit_classifier

    cutoff = G.DEFAULT_END - dt.timedelta(days=90)
    window = C.labelled_features(generated_orders, cutoff, 90, min_net=0.0)
    # two edge rows: every feature missing, and a recency far beyond any training value
    nulls = spark.createDataFrame(
        [
            ("zz-null", *[None] * len(C.FEATURES), 1.0),
            ("zz-far", 9999.0, *[None] * (len(C.FEATURES) - 1), 0.0),
        ],
        T.StructType([T.StructField(f.name, f.dataType, True) for f in window.schema]),
    )
    rows = window.unionByName(nulls).toPandas().sort_values("customer_id", ignore_index=True)
    model = fit_classifier(
        kind, rows, C.FEATURES, C.CHURN_LABEL, max_iter=10, max_depth=3, reg_param=0.01, seed=7
    )
    expected = model.predict_proba(rows)
    got = (
        window.unionByName(nulls)
        .select("customer_id", model.probability().alias("p"))
        .toPandas()
        .sort_values("customer_id", ignore_index=True)
    )
    assert len(got) == len(rows) > 100
    np.testing.assert_allclose(got["p"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert expected.min() > 0 and expected.max() < 1 and expected.std() > 0.05
    importances = model.importances()
    assert list(importances) == list(C.FEATURES) and sum(importances.values()) == pytest.approx(1.0)
