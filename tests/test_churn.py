"""Churn propensity: hand-checked features and labels, and a time-split model on generated data."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from chispa import assert_df_equality
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import churn as C
from segspark.config import ChurnConfig
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
        (None, "8", ts("2024-02-01 10:00:00"), 99.0, "books", "web"),
    ]
    return spark.createDataFrame(rows, TX_SCHEMA)


def test_features_and_labels_by_hand(spark: Any, small_tx: DataFrame) -> None:
    got = C.labelled_features(small_tx, CUTOFF, 90).select(
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
        C.run_churn(small_tx, dt.date(2024, 6, 30), ChurnConfig(horizon_days=30))


@pytest.fixture(scope="module")
def generated_tx(spark: Any) -> DataFrame:
    from segspark import generate as G

    base = G.customer_base(spark, 1500, 11, partitions=2)
    return G.transactions(base, 11).cache()


@pytest.mark.slow
def test_churn_model_on_generated_data(generated_tx: DataFrame) -> None:
    from segspark import generate as G

    cfg = ChurnConfig(model="gbt", max_iter=5, max_depth=3, refit_on_latest=False)
    result = C.run_churn(generated_tx, G.DEFAULT_END, cfg)
    m = result.metrics
    assert m["auc"] > MIN_AUC and m["pr_auc"] > m["test_churn_rate"]
    lift = m["lift_by_decile"]
    assert lift["customers"].sum() == m["test_customers"]
    assert m["lift_top_decile"] > 1.3 and lift["lift"].iloc[0] >= lift["lift"].iloc[-1]
    assert m["calibration"]["customers"].sum() == m["test_customers"] and 0 <= m["brier"] < 0.25
    assert sum(m["feature_importances"].values()) == pytest.approx(1.0)
    assert set(result.figures) == {"churn_roc", "churn_lift", "churn_calibration"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    customers = result.customers.toPandas()
    buyers = (
        generated_tx.filter(F.to_date("order_ts") <= F.lit(G.DEFAULT_END))
        .groupBy("customer_id", "order_id")
        .agg(F.sum("amount").alias("net"))
        .filter("net > 0")
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
def test_logistic_churn_model(generated_tx: DataFrame) -> None:
    from segspark import generate as G

    result = C.run_churn(
        generated_tx, G.DEFAULT_END, ChurnConfig(model="logistic", max_iter=10, refit_on_latest=False)
    )
    assert result.metrics["auc"] > MIN_AUC
    assert len(result.metrics["feature_importances"]) == len(C.FEATURES)
