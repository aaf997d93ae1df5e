"""Supervised churn propensity with Spark ML: features at a cutoff, label = no purchase in the next N days.

Time-based split (``h`` = ``churn.horizon_days``, all dates inclusive):

- train: features as of ``as_of_date - 2h``, label from purchases in the following ``h`` days;
- test: features as of ``as_of_date - h``, label from purchases in (as_of_date - h, as_of_date];
- score: features as of ``as_of_date``; the model is refitted on the test window first when
  ``churn.refit_on_latest`` (the metrics describe the model trained one window earlier).

Orders after ``as_of_date`` are never used. A purchase is an order with positive net amount.
Metrics: AUC, PR-AUC, Brier score, lift by risk decile, calibration by probability bin, feature
importances; figures (ROC, lift, calibration) are returned, not written.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark.config import ChurnConfig
from segspark.errors import InputError
from segspark.schema import AMOUNT, CHANNEL, CUSTOMER_ID, ORDER_ID, ORDER_TS, PRODUCT_CATEGORY

log = logging.getLogger(__name__)

CHURN_RISK = "churn_risk"
CHURN_BAND = "churn_band"
CHURN_LABEL = "churned"
BAND_LOW, BAND_MEDIUM, BAND_HIGH = "low", "medium", "high"
CUSTOMER_COLUMNS = (CUSTOMER_ID, CHURN_RISK, CHURN_BAND)

FEATURES = (
    "recency_days",
    "tenure_days",
    "orders",
    "orders_30d",
    "orders_90d",
    "orders_prev_90d",
    "orders_365d",
    "net_revenue",
    "revenue_90d",
    "avg_order_value",
    "mean_gap_days",
    "recency_to_gap",
    "return_rate",
    "distinct_categories",
    "distinct_channels",
)

_LIFT_DECILES = 10
_CAL_BINS = 10
_ROC_BINS = 200


@dataclass
class ChurnResult:
    """What the churn stage hands to the pipeline (nothing written)."""

    customers: DataFrame  # customer_id, churn_risk, churn_band
    metrics: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)

    def scalar_metrics(self) -> dict[str, float]:
        """Flat numeric metrics for experiment tracking (names prefixed ``churn_``)."""
        out: dict[str, float] = {}
        for key, value in self.metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value)):
                out[f"churn_{key}"] = float(value)
        for name, value in self.metrics.get("feature_importances", {}).items():
            out[f"churn_importance_{name}"] = float(value)
        return out


def _day(col: str) -> Column:
    return F.to_date(F.col(col))


def _orders(transactions: DataFrame, end: dt.date) -> DataFrame:
    """Order level up to ``end``: net amount, order day, whether any line was a return, category, channel."""
    missing = [c for c in (CUSTOMER_ID, ORDER_ID, ORDER_TS, AMOUNT) if c not in transactions.columns]
    if missing:
        raise InputError(f"transactions: column(s) {', '.join(missing)} missing; churn needs them")
    cat = F.col(PRODUCT_CATEGORY) if PRODUCT_CATEGORY in transactions.columns else F.lit(None).cast("string")
    chan = F.col(CHANNEL) if CHANNEL in transactions.columns else F.lit(None).cast("string")
    return (
        transactions.filter(
            F.col(CUSTOMER_ID).isNotNull() & F.col(ORDER_TS).isNotNull() & (_day(ORDER_TS) <= F.lit(end))
        )
        .groupBy(CUSTOMER_ID, ORDER_ID)
        .agg(
            F.sum(F.coalesce(F.col(AMOUNT), F.lit(0.0))).alias("net"),
            F.min(ORDER_TS).alias("ts"),
            F.max((F.col(AMOUNT) < 0).cast("int")).alias("has_return"),
            F.first(cat, ignorenulls=True).alias("category"),
            F.first(chan, ignorenulls=True).alias("order_channel"),
        )
        .select(
            CUSTOMER_ID,
            ORDER_ID,
            "net",
            F.to_date(F.col("ts")).alias("day"),
            "has_return",
            "category",
            "order_channel",
        )
    )


def churn_features(transactions: DataFrame, cutoff: dt.date) -> DataFrame:
    """One row per customer with a purchase on or before ``cutoff``: [customer_id, *FEATURES].

    Purchases are orders with positive net amount; recency/tenure are whole days to the cutoff;
    mean_gap_days is (last - first) / (orders - 1), 0 for one-time buyers.
    """
    orders = _orders(transactions, cutoff).filter(F.col("net") > 0)
    ago = F.datediff(F.lit(cutoff), F.col("day"))
    agg = orders.groupBy(CUSTOMER_ID).agg(
        F.max("day").alias("last"),
        F.min("day").alias("first"),
        F.count(F.lit(1)).alias("orders"),
        F.count_if(ago < 30).alias("orders_30d"),
        F.count_if(ago < 90).alias("orders_90d"),
        F.count_if((ago >= 90) & (ago < 180)).alias("orders_prev_90d"),
        F.count_if(ago < 365).alias("orders_365d"),
        F.sum("net").alias("net_revenue"),
        F.sum(F.when(ago < 90, F.col("net")).otherwise(F.lit(0.0))).alias("revenue_90d"),
        F.avg(F.col("has_return").cast("double")).alias("return_rate"),
        F.count_distinct(F.col("category")).alias("distinct_categories"),
        F.count_distinct(F.col("order_channel")).alias("distinct_channels"),
    )
    recency = F.datediff(F.lit(cutoff), F.col("last"))
    span = F.datediff(F.col("last"), F.col("first"))
    gap = F.coalesce(F.try_divide(span.cast("double"), (F.col("orders") - 1).cast("double")), F.lit(0.0))
    return agg.select(
        F.col(CUSTOMER_ID),
        recency.cast("double").alias("recency_days"),
        F.datediff(F.lit(cutoff), F.col("first")).cast("double").alias("tenure_days"),
        F.col("orders").cast("double").alias("orders"),
        F.col("orders_30d").cast("double").alias("orders_30d"),
        F.col("orders_90d").cast("double").alias("orders_90d"),
        F.col("orders_prev_90d").cast("double").alias("orders_prev_90d"),
        F.col("orders_365d").cast("double").alias("orders_365d"),
        F.col("net_revenue"),
        F.col("revenue_90d"),
        (F.col("net_revenue") / F.col("orders")).alias("avg_order_value"),
        gap.alias("mean_gap_days"),
        # recency relative to the customer's own rhythm; one-time buyers: recency / 1
        (recency.cast("double") / F.greatest(gap, F.lit(1.0))).alias("recency_to_gap"),
        F.coalesce(F.col("return_rate"), F.lit(0.0)).alias("return_rate"),
        F.col("distinct_categories").cast("double").alias("distinct_categories"),
        F.col("distinct_channels").cast("double").alias("distinct_channels"),
    )


def churn_labels(transactions: DataFrame, cutoff: dt.date, horizon_days: int) -> DataFrame:
    """[customer_id, purchased]: customers with a purchase in (cutoff, cutoff + horizon_days]."""
    end = cutoff + dt.timedelta(days=horizon_days)
    return (
        _orders(transactions, end)
        .filter((F.col("net") > 0) & (F.col("day") > F.lit(cutoff)))
        .groupBy(CUSTOMER_ID)
        .agg(F.lit(1).alias("purchased"))
        .select(CUSTOMER_ID, "purchased")
    )


def labelled_features(transactions: DataFrame, cutoff: dt.date, horizon_days: int) -> DataFrame:
    """Features at ``cutoff`` with ``churned`` = 1.0 when no purchase follows within the horizon."""
    feats = churn_features(transactions, cutoff)
    labels = churn_labels(transactions, cutoff, horizon_days)
    return feats.join(labels, on=CUSTOMER_ID, how="left").select(
        *[F.col(c) for c in (CUSTOMER_ID, *FEATURES)],
        F.when(F.col("purchased").isNull(), F.lit(1.0)).otherwise(F.lit(0.0)).alias(CHURN_LABEL),
    )


def _pipeline(cfg: ChurnConfig) -> Pipeline:
    assembler = VectorAssembler(inputCols=list(FEATURES), outputCol="features_raw", handleInvalid="keep")
    if cfg.model == "gbt":
        clf = GBTClassifier(
            featuresCol="features_raw",
            labelCol=CHURN_LABEL,
            maxIter=cfg.max_iter,
            maxDepth=cfg.max_depth,
            seed=cfg.seed,
        )
        return Pipeline(stages=[assembler, clf])
    scaler = StandardScaler(inputCol="features_raw", outputCol="features", withMean=True, withStd=True)
    lr = LogisticRegression(
        featuresCol="features", labelCol=CHURN_LABEL, maxIter=cfg.max_iter, regParam=cfg.reg_param
    )
    return Pipeline(stages=[assembler, scaler, lr])


def _probability(model: PipelineModel, df: DataFrame) -> DataFrame:
    scored = model.transform(df)
    return scored.select(
        F.col(CUSTOMER_ID),
        *([F.col(CHURN_LABEL)] if CHURN_LABEL in df.columns else []),
        vector_to_array(F.col("probability"))[1].alias(CHURN_RISK),
        F.col("rawPrediction"),
    )


def _importances(model: PipelineModel, cfg: ChurnConfig) -> dict[str, float]:
    last = model.stages[-1]
    if cfg.model == "gbt":
        values = np.asarray(last.featureImportances.toArray(), dtype=np.float64)  # type: ignore[attr-defined]
    else:
        coef = np.abs(np.asarray(last.coefficients.toArray(), dtype=np.float64))  # type: ignore[attr-defined]
        values = coef / coef.sum() if coef.sum() > 0 else coef
    return {name: float(v) for name, v in zip(FEATURES, values, strict=True)}


def _class_counts(df: DataFrame) -> tuple[int, int]:
    row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col(CHURN_LABEL)).alias("pos")).first()
    assert row is not None
    return int(row["n"]), int(row["pos"] or 0)


def evaluate(scored: DataFrame) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """AUC, PR-AUC, Brier, lift by decile, calibration and ROC points of a scored, labelled table."""
    metrics: dict[str, Any] = {}
    for name, metric in (("auc", "areaUnderROC"), ("pr_auc", "areaUnderPR")):
        ev = BinaryClassificationEvaluator(
            rawPredictionCol="rawPrediction", labelCol=CHURN_LABEL, metricName=metric
        )
        metrics[name] = float(ev.evaluate(scored))
    row = scored.agg(
        F.avg(F.col(CHURN_LABEL)).alias("rate"),
        F.avg((F.col(CHURN_RISK) - F.col(CHURN_LABEL)) ** 2).alias("brier"),
        F.percentile_approx(
            F.col(CHURN_RISK), [i / _LIFT_DECILES for i in range(1, _LIFT_DECILES)], 10_000
        ).alias("cuts"),
    ).first()
    assert row is not None
    base_rate = float(row["rate"])
    metrics["test_churn_rate"] = base_rate
    metrics["brier"] = float(row["brier"])
    # decile 1 = highest risk; ties at a cut go to the lower-risk decile
    cuts = list(row["cuts"])
    decile: Column = F.lit(_LIFT_DECILES)
    for i, cut in enumerate(cuts):
        decile = F.when(F.col(CHURN_RISK) > F.lit(float(cut)), F.lit(_LIFT_DECILES - 1 - i)).otherwise(decile)
    lift = (
        scored.groupBy(decile.alias("decile"))
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg(F.col(CHURN_LABEL)).alias("churn_rate"),
            F.avg(CHURN_RISK).alias("mean_risk"),
        )
        .toPandas()
        .sort_values("decile")
        .reset_index(drop=True)
    )
    lift["lift"] = lift["churn_rate"] / base_rate if base_rate > 0 else np.nan
    metrics["lift_top_decile"] = float(lift["lift"].iloc[0]) if len(lift) else math.nan
    cal_bin = F.least(F.floor(F.col(CHURN_RISK) * F.lit(_CAL_BINS)), F.lit(_CAL_BINS - 1)).cast("int")
    calib = (
        scored.groupBy(cal_bin.alias("bin"))
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg(CHURN_RISK).alias("mean_predicted"),
            F.avg(CHURN_LABEL).alias("observed_rate"),
        )
        .toPandas()
        .sort_values("bin")
        .reset_index(drop=True)
    )
    n = calib["customers"].sum()
    metrics["calibration_ece"] = (
        float((calib["customers"] * (calib["mean_predicted"] - calib["observed_rate"]).abs()).sum() / n)
        if n
        else math.nan
    )
    roc_bin = F.least(F.floor(F.col(CHURN_RISK) * F.lit(_ROC_BINS)), F.lit(_ROC_BINS - 1)).cast("int")
    roc_counts = (
        scored.groupBy(roc_bin.alias("bin"))
        .agg(F.sum(F.col(CHURN_LABEL)).alias("pos"), F.sum(F.lit(1.0) - F.col(CHURN_LABEL)).alias("neg"))
        .toPandas()
        .sort_values("bin", ascending=False)
    )
    pos, neg = roc_counts["pos"].to_numpy(), roc_counts["neg"].to_numpy()
    roc = pd.DataFrame(
        {
            "fpr": np.concatenate([[0.0], np.cumsum(neg) / max(neg.sum(), 1.0)]),
            "tpr": np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1.0)]),
        }
    )
    return metrics, {"lift": lift, "calibration": calib, "roc": roc}


def churn_band(risk: Column, cfg: ChurnConfig) -> Column:
    """low / medium / high by the configured thresholds (null risk -> null band)."""
    return (
        F.when(risk.isNull(), F.lit(None).cast("string"))
        .when(risk >= F.lit(cfg.high_risk_threshold), F.lit(BAND_HIGH))
        .when(risk >= F.lit(cfg.medium_risk_threshold), F.lit(BAND_MEDIUM))
        .otherwise(F.lit(BAND_LOW))
    )


def run_churn(transactions: DataFrame, as_of_date: dt.date, cfg: ChurnConfig) -> ChurnResult:
    """The churn stage: time-split train/test, metrics, then churn_risk and churn_band per customer.

    Returns customers [customer_id, churn_risk, churn_band] for every customer with a purchase on or
    before ``as_of_date``. Raises ``InputError`` when the history is too short for two labelled
    windows or a window holds only one class.
    """
    h = cfg.horizon_days
    test_cutoff = as_of_date - dt.timedelta(days=h)
    train_cutoff = as_of_date - dt.timedelta(days=2 * h)
    train = labelled_features(transactions, train_cutoff, h).persist()
    test = labelled_features(transactions, test_cutoff, h).persist()
    try:
        n_train, pos_train = _class_counts(train)
        n_test, pos_test = _class_counts(test)
        for name, n, pos, cut in (
            ("training", n_train, pos_train, train_cutoff),
            ("test", n_test, pos_test, test_cutoff),
        ):
            if n == 0 or pos in (0, n):
                raise InputError(
                    f"transactions: the churn {name} window (features as of {cut}, label over the next {h} days) "
                    f"has {n} customers and {pos} churned; churn needs history of at least {2 * h} days before "
                    f"as_of_date with both outcomes (lower churn.horizon_days or provide more history)"
                )
        model = _pipeline(cfg).fit(train)
        scored_test = _probability(model, test)
        metrics, tables = evaluate(scored_test)
        metrics.update(
            model=cfg.model,
            train_cutoff=train_cutoff.isoformat(),
            test_cutoff=test_cutoff.isoformat(),
            horizon_days=h,
            train_customers=n_train,
            train_churn_rate=pos_train / n_train,
            test_customers=n_test,
            feature_importances=_importances(model, cfg),
            lift_by_decile=tables["lift"],
            calibration=tables["calibration"],
        )
        log.info(
            "churn: test AUC %.3f, PR-AUC %.3f, top-decile lift %.2f",
            metrics["auc"],
            metrics["pr_auc"],
            metrics["lift_top_decile"],
        )
        final = _pipeline(cfg).fit(test) if cfg.refit_on_latest else model
        metrics["scored_with"] = (
            "refit on the test window" if cfg.refit_on_latest else "training-window model"
        )
        figures = {
            "churn_roc": _roc_figure(tables["roc"], metrics["auc"]),
            "churn_lift": _lift_figure(tables["lift"]),
            "churn_calibration": _calibration_figure(tables["calibration"]),
        }
    finally:
        train.unpersist()
        test.unpersist()
    current = churn_features(transactions, as_of_date)
    scored = _probability(final, current)
    customers = scored.select(
        F.col(CUSTOMER_ID), F.col(CHURN_RISK), churn_band(F.col(CHURN_RISK), cfg).alias(CHURN_BAND)
    )
    return ChurnResult(customers=customers, metrics=metrics, figures=figures)


# ------------------------------------------------------------------------------------------------
# Figures (matplotlib object API, nothing written)
# ------------------------------------------------------------------------------------------------
def _roc_figure(roc: pd.DataFrame, auc: float) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot(roc["fpr"], roc["tpr"], color="tab:red", label=f"model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Churn ROC (test window)")
    ax.legend()
    fig.tight_layout()
    return fig


def _lift_figure(lift: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.bar(lift["decile"].astype(int), lift["lift"], color="tab:red")
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("risk decile (1 = highest predicted risk)")
    ax.set_ylabel("lift over the base churn rate")
    ax.set_title("Churn lift by decile (test window)")
    fig.tight_layout()
    return fig


def _calibration_figure(calib: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    ax.plot(calib["mean_predicted"], calib["observed_rate"], marker="o", color="tab:red", label="model")
    ax.set_xlabel("mean predicted churn risk")
    ax.set_ylabel("observed churn rate")
    ax.set_title("Churn calibration (test window)")
    ax.legend()
    fig.tight_layout()
    return fig
