"""Supervised churn propensity with Spark ML: features at a cutoff, label = no purchase in the next N days.

Input: the silver ``orders`` table (:mod:`segspark.silver`); purchases are its ``is_purchase``
orders (the job's one purchase definition), an order "has a return" when it has a return line, its
categories and channel are the order's own columns.

Point in time: a window's features count every order as it stood at the window's cutoff, and its
label judges the purchases of the horizon as they stood at the horizon's end. An order's return
lines keep the day they were recorded (``orders.returns``), so a return recorded after the cutoff
neither lowers the order's net amount, nor marks it as returned, nor (when it cancels the order)
takes it out of the purchases: the features at a past cutoff are those a run on that day's lines
computes (tests/test_churn.py), not features that know of returns made later. The purchase
definition is the orders' own; only an order with a return after the day judged is judged again,
on its net amount then (``purchase.min_net_amount``).

Time-based split (``h`` = ``churn.horizon_days``, all dates inclusive):

- train: features as of ``as_of_date - 2h``, label from purchases in the following ``h`` days;
- test: features as of ``as_of_date - h``, label from purchases in (as_of_date - h, as_of_date];
- score: features as of ``as_of_date``; the model is refitted on the test window first when
  ``churn.refit_on_latest`` (the metrics describe the model trained one window earlier).

Both labelled windows and the scoring window come from ONE aggregation over the orders (conditional
aggregates per cutoff), cached until the scores are written.
The model is trained on a seeded sample of at most about ``churn.max_train_rows`` customers of its
window (a hash of the customer id and the seed picks them, so the sample does not depend on
partitioning), and evaluated on the driver over a seeded sample of at most about
``churn.max_eval_rows`` test customers; scoring stays distributed over every customer. Orders after
``as_of_date`` are never used. Metrics: AUC, PR-AUC (as Spark's ``BinaryClassificationEvaluator``
computes them), Brier score, lift by risk decile, calibration by probability bin, feature
importances; figures (ROC, lift, calibration) are returned, not written.
:func:`segspark.churn_table.metrics_table` turns the result into ``churn_metrics`` rows,
:func:`segspark.churn_table.metrics_from_table` reads them back.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark.config import ChurnConfig, PurchaseConfig
from segspark.errors import InputError
from segspark.local_models import LocalClassifier, fit_classifier
from segspark.schema import (
    CATEGORIES,
    CHANNEL,
    CHURN_BAND,
    CUSTOMER_ID,
    IS_PURCHASE,
    NET_AMOUNT,
    ORDER_DATE,
    RETURN_AMOUNT,
    RETURN_DAY,
    RETURNS,
)

log = logging.getLogger(__name__)

CHURN_RISK = "churn_risk"
CHURN_LABEL = "churned"
BAND_LOW, BAND_MEDIUM, BAND_HIGH = "low", "medium", "high"
CUSTOMER_COLUMNS = (CUSTOMER_ID, CHURN_RISK, CHURN_BAND)
ORDER_COLUMNS = (CUSTOMER_ID, ORDER_DATE, NET_AMOUNT, RETURNS, CATEGORIES, CHANNEL, IS_PURCHASE)

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
_SAMPLE_GRID = 1_000_000  # resolution of the hash sample's fraction
_ROWS_PER_FIT_PARTITION = 100_000


@dataclass
class ChurnResult:
    """What the churn stage hands to the pipeline (nothing written)."""

    customers: DataFrame  # customer_id, churn_risk, churn_band
    metrics: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)
    # the persisted aggregation ``customers`` is scored from: ``release`` once they are written
    held: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        for df in self.held:
            df.unpersist()

    def scalar_metrics(self) -> dict[str, float]:
        """Flat numeric metrics for experiment tracking (names prefixed ``churn_``)."""
        out: dict[str, float] = {}
        for key, value in self.metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value)):
                out[f"churn_{key}"] = float(value)
        for name, value in self.metrics.get("feature_importances", {}).items():
            out[f"churn_importance_{name}"] = float(value)
        return out


# ------------------------------------------------------------------------------------------------
# Features and labels: conditional aggregates, any number of cutoffs in one pass over the orders
# ------------------------------------------------------------------------------------------------
_MAX_CODES = 63  # distinct values a long bit mask can hold
_CAT_MASK, _CHAN_MASK = "category_mask", "channel_mask"


@dataclass(frozen=True)
class Codes:
    """The distinct categories and channels of the purchase orders, one bit of a long each.

    With them, a window's distinct categories (channels) are the set bits of the OR of its orders'
    masks: plain aggregates, where sets of strings make Spark fall back to sort-based object
    aggregation (measured 4x the time of the other features together). None for a kind with more
    than 63 values: that kind is counted with sets.
    """

    categories: tuple[str, ...] | None
    channels: tuple[str, ...] | None


def value_codes(orders: DataFrame, end: dt.date) -> Codes:
    """The :class:`Codes` of the purchase orders on or before ``end`` (one global aggregate; at most
    63 values of each kind reach the driver)."""
    bought = _purchases(orders, end, None, (), 0.0)
    cats = F.array_distinct(F.flatten(F.collect_set(F.col(CATEGORIES))))
    chans = F.collect_set(F.col(CHANNEL))
    row = bought.agg(
        F.size(cats).alias("n_cats"),
        F.slice(F.array_sort(cats), 1, _MAX_CODES).alias("cats"),
        F.size(chans).alias("n_chans"),
        F.slice(F.array_sort(chans), 1, _MAX_CODES).alias("chans"),
    ).first()
    assert row is not None

    def fitting(n: int, values: list[str | None]) -> tuple[str, ...] | None:
        return tuple(str(v) for v in values if v is not None) if n <= _MAX_CODES else None

    return Codes(
        categories=fitting(int(row["n_cats"]), list(row["cats"])),
        channels=fitting(int(row["n_chans"]), list(row["chans"])),
    )


def _bits(values: tuple[str, ...]) -> Column:
    return F.create_map(*[x for i, v in enumerate(values) for x in (F.lit(v), F.lit(1 << i).cast("long"))])


def _purchases(
    orders: DataFrame, end: dt.date, codes: Codes | None, days: Sequence[dt.date], min_net: float
) -> DataFrame:
    """The orders on or before ``end`` that are purchases on some day (an order a later return
    cancelled was one before it), with the columns the features need (categories and channel as
    bit masks where ``codes`` allow) and, for each of ``days`` (index i), the order as it stood at
    the end of that day: ``_net<i>`` its net amount, ``_buy<i>`` whether it was a purchase,
    ``_ret<i>`` 1.0 when it had a return line by then."""
    missing = [c for c in ORDER_COLUMNS if c not in orders.columns]
    if missing:
        raise InputError(f"orders: column(s) {', '.join(missing)} missing; churn needs them")
    cats: Column = F.col(CATEGORIES)
    chans: Column = F.col(CHANNEL)
    if codes is not None and codes.categories is not None:
        bits = _bits(codes.categories)
        cats = F.aggregate(
            F.coalesce(F.col(CATEGORIES), F.array().cast("array<string>")),
            F.lit(0).cast("long"),
            lambda acc, c: acc.bitwiseOR(F.coalesce(F.try_element_at(bits, c), F.lit(0).cast("long"))),
        ).alias(_CAT_MASK)
    if codes is not None and codes.channels is not None:
        chans = F.try_element_at(_bits(codes.channels), F.col(CHANNEL)).alias(_CHAN_MASK)
    returns = F.col(RETURNS)
    # only an order with a return line (a few %) evaluates the array functions (interpreted, not in
    # Spark's generated code); the others skip them (CASE WHEN and AND evaluate lazily)
    returned = F.coalesce(F.size(returns) > 0, F.lit(False))
    as_of = [c for i, day in enumerate(days) for c in _as_it_stood(returns, returned, day, i, min_net)]
    cancelled_later = returned & F.exists(returns, lambda r: r[RETURN_DAY] > F.col(ORDER_DATE))
    return orders.where((F.col(IS_PURCHASE) | cancelled_later) & (F.col(ORDER_DATE) <= F.lit(end))).select(
        F.col(CUSTOMER_ID), F.col(ORDER_DATE), *as_of, cats, chans
    )


def _as_it_stood(returns: Column, returned: Column, day: dt.date, i: int, min_net: float) -> list[Column]:
    """An order at the end of ``day``: ``_net<i>``, ``_buy<i>``, ``_ret<i>`` (see :func:`_purchases`);
    ``returned``: whether the order has a return line at all."""
    # the amount returned after ``day``
    after = F.aggregate(
        F.filter(returns, lambda r: r[RETURN_DAY] > F.lit(day)),
        F.lit(0.0),
        lambda acc, r: acc + r[RETURN_AMOUNT],
    )
    later = F.when(returned, after).otherwise(F.lit(0.0))
    net = F.col(NET_AMOUNT) + later  # 0.0 added exactly for nearly every order
    return [
        net.alias(f"_net{i}"),
        F.when(later > 0, net > F.lit(float(min_net))).otherwise(F.col(IS_PURCHASE)).alias(f"_buy{i}"),
        (returned & F.exists(returns, lambda r: r[RETURN_DAY] <= F.lit(day)))
        .cast("double")
        .alias(f"_ret{i}"),
    ]


def _aggs(
    cutoff: dt.date, p: str, horizon_days: int | None, coded: tuple[bool, bool], days: Sequence[dt.date]
) -> list[Column]:
    """Aggregates of window ``p`` (column prefix): purchases on or before ``cutoff`` as they stood
    then, and the label (purchases in the horizon as they stood at its end); ``days``: those of
    :func:`_purchases`."""
    i = days.index(cutoff)
    day = F.col(ORDER_DATE)
    seen = (day <= F.lit(cutoff)) & F.col(f"_buy{i}")
    ago = F.datediff(F.lit(cutoff), day)

    def within(n: int) -> Column:
        return seen & (ago < n)

    def distinct(coded_kind: bool, mask: str, column: str) -> Column:
        # a mask's OR, or a set (not count_distinct: several distinct counts expand every row)
        return (
            F.bit_or(F.when(seen, F.col(mask))) if coded_kind else F.collect_set(F.when(seen, F.col(column)))
        )

    net = F.col(f"_net{i}")
    aggs = [
        F.max(F.when(seen, day)).alias(f"{p}last"),
        F.min(F.when(seen, day)).alias(f"{p}first"),
        F.count_if(seen).alias(f"{p}orders"),
        F.count_if(within(30)).alias(f"{p}orders_30d"),
        F.count_if(within(90)).alias(f"{p}orders_90d"),
        F.count_if(seen & (ago >= 90) & (ago < 180)).alias(f"{p}orders_prev_90d"),
        F.count_if(within(365)).alias(f"{p}orders_365d"),
        F.sum(F.when(seen, net)).alias(f"{p}net_revenue"),
        F.sum(F.when(within(90), net)).alias(f"{p}revenue_90d"),
        F.avg(F.when(seen, F.col(f"_ret{i}"))).alias(f"{p}return_rate"),
        distinct(coded[0], _CAT_MASK, CATEGORIES).alias(f"{p}categories"),
        distinct(coded[1], _CHAN_MASK, CHANNEL).alias(f"{p}channels"),
    ]
    if horizon_days is not None:
        end = cutoff + dt.timedelta(days=horizon_days)
        bought = (day > F.lit(cutoff)) & (day <= F.lit(end)) & F.col(f"_buy{days.index(end)}")
        aggs.append(F.count_if(bought).alias(f"{p}bought_after"))
    return aggs


def _distinct_count(wide: DataFrame, name: str) -> Column:
    """The number of distinct values of a window's mask (set bits) or set (of arrays for categories)."""
    col = F.col(name)
    type_ = wide.schema[name].dataType
    if isinstance(type_, T.ArrayType):
        flat = F.flatten(col) if isinstance(type_.elementType, T.ArrayType) else col
        return F.size(F.array_distinct(flat)).cast("double")
    return F.coalesce(F.bit_count(col), F.lit(0)).cast("double")


def _feature_columns(wide: DataFrame, cutoff: dt.date, p: str, horizon_days: int | None) -> list[Column]:
    """Window ``p``'s aggregates -> the model's FEATURES (and ``churned``), unprefixed names."""
    c = F.lit(cutoff)
    n = F.col(f"{p}orders")
    recency = F.datediff(c, F.col(f"{p}last")).cast("double")
    span = F.datediff(F.col(f"{p}last"), F.col(f"{p}first")).cast("double")
    gap = F.coalesce(F.try_divide(span, (n - 1).cast("double")), F.lit(0.0))
    revenue = F.coalesce(F.col(f"{p}net_revenue"), F.lit(0.0))
    cols = [
        recency.alias("recency_days"),
        F.datediff(c, F.col(f"{p}first")).cast("double").alias("tenure_days"),
        n.cast("double").alias("orders"),
        F.col(f"{p}orders_30d").cast("double").alias("orders_30d"),
        F.col(f"{p}orders_90d").cast("double").alias("orders_90d"),
        F.col(f"{p}orders_prev_90d").cast("double").alias("orders_prev_90d"),
        F.col(f"{p}orders_365d").cast("double").alias("orders_365d"),
        revenue.alias("net_revenue"),
        F.coalesce(F.col(f"{p}revenue_90d"), F.lit(0.0)).alias("revenue_90d"),
        F.try_divide(revenue, n.cast("double")).alias("avg_order_value"),
        gap.alias("mean_gap_days"),
        # recency relative to the customer's own rhythm; one-time buyers: recency / 1
        (recency / F.greatest(gap, F.lit(1.0))).alias("recency_to_gap"),
        F.coalesce(F.col(f"{p}return_rate"), F.lit(0.0)).alias("return_rate"),
        _distinct_count(wide, f"{p}categories").alias("distinct_categories"),
        _distinct_count(wide, f"{p}channels").alias("distinct_channels"),
    ]
    if horizon_days is not None:
        bought = F.col(f"{p}bought_after") > 0
        cols.append(F.when(bought, F.lit(0.0)).otherwise(F.lit(1.0)).alias(CHURN_LABEL))
    return cols


def windowed_features(
    orders: DataFrame,
    cutoffs: Sequence[dt.date],
    horizon_days: int | None,
    codes: Codes | None = None,
    unlabelled: Sequence[dt.date] = (),
    *,
    min_net: float,
) -> DataFrame:
    """One aggregation over the orders: per customer, every cutoff's aggregates (prefix ``w<i>_``),
    then those of each ``unlabelled`` cutoff (no label: the scoring window), numbered on.

    One row per customer with an order on or before the last cutoff (plus its horizon when
    ``horizon_days`` is given, for the labels); select a window with :func:`window`. ``codes``: from
    :func:`value_codes` over at least these orders (computed here when not given). ``min_net``:
    the purchase definition's ``min_net_amount``, for orders a later return changed.
    """
    end = max([max(cutoffs) + dt.timedelta(days=horizon_days or 0), *unlabelled])
    codes = codes if codes is not None else value_codes(orders, end)
    coded = (codes.categories is not None, codes.channels is not None)
    windows = [*((cut, horizon_days) for cut in cutoffs), *((cut, None) for cut in unlabelled)]
    days = sorted({d for cut, h in windows for d in (cut, cut + dt.timedelta(days=h or 0))})
    aggs = [a for i, (cut, h) in enumerate(windows) for a in _aggs(cut, f"w{i}_", h, coded, days)]
    return _purchases(orders, end, codes, days, min_net).groupBy(CUSTOMER_ID).agg(*aggs)


def window(wide: DataFrame, i: int, cutoff: dt.date, horizon_days: int | None) -> DataFrame:
    """Window ``i`` of :func:`windowed_features`: its customers (a purchase on or before the cutoff),
    [customer_id, *FEATURES] (+ churned when labelled)."""
    return wide.where(F.col(f"w{i}_orders") > 0).select(
        F.col(CUSTOMER_ID), *_feature_columns(wide, cutoff, f"w{i}_", horizon_days)
    )


def churn_features(
    orders: DataFrame, cutoff: dt.date, codes: Codes | None = None, *, min_net: float
) -> DataFrame:
    """One row per customer with a purchase on or before ``cutoff``: [customer_id, *FEATURES], the
    orders as they stood at the cutoff.

    recency/tenure are whole days to the cutoff; mean_gap_days is (last - first) / (orders - 1),
    0 for one-time buyers; return_rate is the share of purchase orders with a return line;
    distinct categories and channels are counted over the purchase orders.
    """
    return window(windowed_features(orders, [cutoff], None, codes, min_net=min_net), 0, cutoff, None)


def labelled_features(
    orders: DataFrame, cutoff: dt.date, horizon_days: int, codes: Codes | None = None, *, min_net: float
) -> DataFrame:
    """Features at ``cutoff`` with ``churned`` = 1.0 when no purchase (as it stood at the horizon's
    end) follows within the horizon."""
    wide = windowed_features(orders, [cutoff], horizon_days, codes, min_net=min_net)
    return window(wide, 0, cutoff, horizon_days)


def seeded_sample(df: DataFrame, max_rows: int, rows: int, seed: int, salt: str) -> DataFrame:
    """About ``max_rows`` of ``df``'s ``rows`` rows, chosen by a hash of (customer_id, seed, salt).

    The same customers whatever the partitioning or the row order; all rows when rows <= max_rows.
    """
    if rows <= max_rows:
        return df
    keep = math.ceil(_SAMPLE_GRID * max_rows / rows)
    bucket = F.pmod(F.xxhash64(F.col(CUSTOMER_ID), F.lit(seed), F.lit(salt)), F.lit(_SAMPLE_GRID))
    return df.where(bucket < F.lit(keep))


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
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


def _to_driver(df: DataFrame, label: bool) -> pd.DataFrame:
    """A bounded sample's features (and label) on the driver, in customer order: the local fit does
    not depend on Spark's partitioning or row order."""
    cols = [CUSTOMER_ID, *FEATURES, *([CHURN_LABEL] if label else [])]
    return df.select(*cols).toPandas().sort_values(CUSTOMER_ID, ignore_index=True)


Model = PipelineModel | LocalClassifier


def _train(cfg: ChurnConfig, df: DataFrame, rows: int, pulled: pd.DataFrame | None = None) -> Model:
    """The configured model fitted on ``df`` (a bounded sample of ``rows`` rows): on the driver
    (``churn.engine: local``; ``pulled``: ``df`` already there) or with Spark ML (``spark``)."""
    if cfg.engine == "spark":
        return _fit(cfg, df, rows)
    return fit_classifier(
        cfg.model,
        pulled if pulled is not None else _to_driver(df, label=True),
        FEATURES,
        CHURN_LABEL,
        max_iter=cfg.max_iter,
        max_depth=cfg.max_depth,
        reg_param=cfg.reg_param,
        seed=cfg.seed,
    )


def _scored_sample(model: Model, df: DataFrame, pulled: pd.DataFrame | None = None) -> pd.DataFrame:
    """(churn_risk, churned) of a bounded labelled sample, on the driver (``pulled``: ``df`` already
    there, for a local model)."""
    if isinstance(model, LocalClassifier):
        pdf = pulled if pulled is not None else _to_driver(df, label=True)
        return pd.DataFrame({CHURN_RISK: model.predict_proba(pdf), CHURN_LABEL: pdf[CHURN_LABEL]})
    return _probability(model, df).select(CHURN_RISK, CHURN_LABEL).toPandas()


def _score(model: Model, df: DataFrame) -> DataFrame:
    """[customer_id, churn_risk] of every row of ``df`` (distributed)."""
    if isinstance(model, LocalClassifier):
        return df.select(F.col(CUSTOMER_ID), model.probability().alias(CHURN_RISK))
    return _probability(model, df)


def _fit(cfg: ChurnConfig, df: DataFrame, rows: int) -> PipelineModel:
    """Fit on ``df`` (``rows`` rows, a sample) spread over few partitions: MLlib's trees build a
    histogram per partition and node at every level and then merge them, so partitions cost more
    than rows here (194k rows, 30 rounds: 8 partitions 24 s, 2 partitions 8 s on 2 cores)."""
    partitions = max(1, math.ceil(rows / _ROWS_PER_FIT_PARTITION))
    # rows placed and ordered by customer: the trees' split candidates come from a seeded sample of
    # each partition, so the model must not depend on the input's file layout or shuffle order
    spread = df.repartition(partitions, F.col(CUSTOMER_ID)).sortWithinPartitions(CUSTOMER_ID)
    return _pipeline(cfg).fit(spread)


def _probability(model: PipelineModel, df: DataFrame) -> DataFrame:
    scored = model.transform(df)
    return scored.select(
        F.col(CUSTOMER_ID),
        *([F.col(CHURN_LABEL)] if CHURN_LABEL in df.columns else []),
        vector_to_array(F.col("probability"))[1].alias(CHURN_RISK),
    )


def _importances(model: Model, cfg: ChurnConfig) -> dict[str, float]:
    if isinstance(model, LocalClassifier):
        return model.importances()
    last = model.stages[-1]
    if cfg.model == "gbt":
        values = np.asarray(last.featureImportances.toArray(), dtype=np.float64)  # type: ignore[attr-defined]
    else:
        coef = np.abs(np.asarray(last.coefficients.toArray(), dtype=np.float64))  # type: ignore[attr-defined]
        values = coef / coef.sum() if coef.sum() > 0 else coef
    return {name: float(v) for name, v in zip(FEATURES, values, strict=True)}


# ------------------------------------------------------------------------------------------------
# Evaluation on the driver, over a bounded sample of (risk, label) pairs
# ------------------------------------------------------------------------------------------------
def _threshold_counts(risk: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Cumulative (true positives, false positives) at each distinct score, highest first."""
    order = np.argsort(-risk, kind="stable")
    r, y = risk[order], label[order]
    last = np.r_[np.flatnonzero(np.diff(r) != 0), len(r) - 1]  # last row of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1.0 - y)[last]
    return tp, fp, float(y.sum()), float(len(y) - y.sum())


def roc_auc(risk: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve, trapezoids over the distinct scores (ties count half)."""
    tp, fp, pos, neg = _threshold_counts(risk, label)
    if pos == 0 or neg == 0:
        return math.nan
    tpr, fpr = np.r_[0.0, tp / pos, 1.0], np.r_[0.0, fp / neg, 1.0]
    return float(np.trapezoid(tpr, fpr))


def pr_auc(risk: np.ndarray, label: np.ndarray) -> float:
    """Area under the precision-recall curve as Spark computes it: trapezoids over the distinct
    scores, starting at (recall 0, the precision at the highest score)."""
    tp, fp, pos, _ = _threshold_counts(risk, label)
    if pos == 0:
        return math.nan
    precision = tp / (tp + fp)
    recall = tp / pos
    return float(np.trapezoid(np.r_[precision[0], precision], np.r_[0.0, recall]))


def lift_by_decile(risk: np.ndarray, label: np.ndarray, deciles: int = _LIFT_DECILES) -> pd.DataFrame:
    """Customers, churn rate and mean risk per risk decile (1 = the riskiest tenth), with ties split.

    A model often gives one score to many customers (a tree ensemble's leaves), so a decile cut can
    fall inside a block of equal scores; assigning the whole block to one side leaves a decile
    nearly empty (one customer in the top decile, lift 0). Each decile is instead exactly a tenth of
    the positions in the ranking, and a tie block spread over a cut counts in each decile in
    proportion to its positions there: the expected figures under a random order of the ties,
    deterministic. (Hand-written: scikit-learn and statsmodels have no lift table.)
    """
    n = len(risk)
    if n == 0:
        return pd.DataFrame(columns=["decile", "customers", "churn_rate", "mean_risk"])
    blocks = (
        pd.DataFrame({"risk": risk, "label": label})
        .groupby("risk", sort=True)
        .agg(count=("label", "size"), churned=("label", "sum"))
        .iloc[::-1]  # riskiest first
    )
    count = blocks["count"].to_numpy(np.float64)
    end = np.cumsum(count)
    start = end - count
    edges = np.linspace(0.0, float(n), deciles + 1)
    # positions each block has in each decile: overlap of [start, end) with [edge_d, edge_d+1)
    overlap = np.clip(
        np.minimum(end[None, :], edges[1:, None]) - np.maximum(start[None, :], edges[:-1, None]), 0.0, None
    )
    share = overlap / count[None, :]
    customers = overlap.sum(axis=1)
    churned = share @ blocks["churned"].to_numpy(np.float64)
    risk_sum = overlap @ blocks.index.to_numpy(np.float64)
    # every decile holds n / deciles > 0 positions, so no division by zero
    return pd.DataFrame(
        {
            "decile": np.arange(1, deciles + 1),
            "customers": customers,
            "churn_rate": churned / customers,
            "mean_risk": risk_sum / customers,
        }
    )


def evaluate(scored: pd.DataFrame) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """AUC, PR-AUC, Brier, lift by decile, calibration and ROC points of scored, labelled rows
    (a pandas frame with churn_risk and churned: a bounded sample, never the whole customer base)."""
    risk = scored[CHURN_RISK].to_numpy(np.float64)
    label = scored[CHURN_LABEL].to_numpy(np.float64)
    metrics: dict[str, Any] = {"auc": roc_auc(risk, label), "pr_auc": pr_auc(risk, label)}
    base_rate = float(label.mean()) if len(label) else math.nan
    metrics["test_churn_rate"] = base_rate
    metrics["brier"] = float(np.mean((risk - label) ** 2)) if len(label) else math.nan
    frame = pd.DataFrame({"risk": risk, "label": label})
    lift = lift_by_decile(risk, label)
    lift["lift"] = lift["churn_rate"] / base_rate if base_rate > 0 else np.nan
    metrics["lift_top_decile"] = float(lift["lift"].iloc[0]) if len(lift) else math.nan
    frame["bin"] = np.minimum(np.floor(risk * _CAL_BINS), _CAL_BINS - 1).astype(int)
    calib = (
        frame.groupby("bin")
        .agg(customers=("label", "size"), mean_predicted=("risk", "mean"), observed_rate=("label", "mean"))
        .reset_index()
        .sort_values("bin")
        .reset_index(drop=True)
    )
    n = calib["customers"].sum()
    metrics["calibration_ece"] = (
        float((calib["customers"] * (calib["mean_predicted"] - calib["observed_rate"]).abs()).sum() / n)
        if n
        else math.nan
    )
    roc_bin = np.minimum(np.floor(risk * _ROC_BINS), _ROC_BINS - 1).astype(int)
    pos = np.bincount(roc_bin, weights=label, minlength=_ROC_BINS)[::-1]
    neg = np.bincount(roc_bin, weights=1.0 - label, minlength=_ROC_BINS)[::-1]
    present = (pos + neg) > 0
    pos, neg = pos[present], neg[present]
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


def _class_counts(wide: DataFrame, windows: int) -> list[tuple[int, int]]:
    """(customers, churned) of each labelled window, in one pass."""
    aggs: list[Column] = []
    for i in range(windows):
        present = F.col(f"w{i}_orders") > 0
        aggs += [
            F.count_if(present).alias(f"n{i}"),
            F.count_if(present & ~(F.col(f"w{i}_bought_after") > 0)).alias(f"pos{i}"),
        ]
    row = wide.agg(*aggs).first()
    assert row is not None
    return [(int(row[f"n{i}"]), int(row[f"pos{i}"])) for i in range(windows)]


def run_churn(
    orders: DataFrame, as_of_date: dt.date, cfg: ChurnConfig, purchase: PurchaseConfig
) -> ChurnResult:
    """The churn stage: time-split train/test, metrics, then churn_risk and churn_band per customer.

    ``orders``: the silver orders table, built with the ``purchase`` definition. Returns customers
    [customer_id, churn_risk, churn_band] for every customer with a purchase on or before
    ``as_of_date`` (computed lazily from ``orders``). Raises ``InputError`` when the history is too
    short for two labelled windows or a window holds only one class.
    """
    h = cfg.horizon_days
    test_cutoff = as_of_date - dt.timedelta(days=h)
    train_cutoff = as_of_date - dt.timedelta(days=2 * h)
    codes = value_codes(orders, as_of_date)
    # both labelled windows and the scoring one (as of as_of_date) in one aggregation, cached for the
    # counts, the samples, the fits and the scores: ``release`` once the scores are written
    wide = windowed_features(
        orders,
        [train_cutoff, test_cutoff],
        h,
        codes,
        unlabelled=[as_of_date],
        min_net=purchase.min_net_amount,
    ).persist()
    try:
        final, metrics, figures = _train_and_evaluate(wide, train_cutoff, test_cutoff, cfg)
    except BaseException:
        wide.unpersist()
        raise
    scored = _score(final, window(wide, 2, as_of_date, None))
    customers = scored.select(
        F.col(CUSTOMER_ID), F.col(CHURN_RISK), churn_band(F.col(CHURN_RISK), cfg).alias(CHURN_BAND)
    )
    return ChurnResult(customers=customers, metrics=metrics, figures=figures, held=[wide])


def _train_and_evaluate(
    wide: DataFrame, train_cutoff: dt.date, test_cutoff: dt.date, cfg: ChurnConfig
) -> tuple[Model, dict[str, Any], dict[str, Figure]]:
    """Train on window 0 of ``wide``, evaluate on window 1: (the model to score with, the metrics,
    the figures)."""
    h = cfg.horizon_days
    (n_train, pos_train), (n_test, pos_test) = _class_counts(wide, 2)
    _require_both_classes(
        h, [("training", n_train, pos_train, train_cutoff), ("test", n_test, pos_test, test_cutoff)]
    )
    train_all = window(wide, 0, train_cutoff, h)
    test_all = window(wide, 1, test_cutoff, h)
    train = seeded_sample(train_all, cfg.max_train_rows, n_train, cfg.seed, "train")
    train_rows = train.count() if n_train > cfg.max_train_rows else n_train
    model = _train(cfg, train, train_rows)
    test = seeded_sample(test_all, cfg.max_eval_rows, n_test, cfg.seed, "eval")
    # a bounded sample of (risk, label) pairs: the metrics are computed on the driver; a local
    # engine pulls the test sample once when the refit below trains on the same rows
    pulled = _to_driver(test, label=True) if cfg.engine == "local" else None
    scored_test = _scored_sample(model, test, pulled)
    metrics, tables = evaluate(scored_test)
    metrics.update(
        model=cfg.model,
        engine=cfg.engine,
        train_cutoff=train_cutoff.isoformat(),
        test_cutoff=test_cutoff.isoformat(),
        horizon_days=h,
        train_customers=n_train,
        train_churn_rate=pos_train / n_train,
        test_customers=n_test,
        train_rows=train_rows,
        eval_customers=len(scored_test),
        feature_importances=_importances(model, cfg),
        lift_by_decile=tables["lift"],
        calibration=tables["calibration"],
        roc=tables["roc"],
    )
    final = _scoring_model(cfg, model, test_all, test, n_test, pulled, metrics)
    _log_evaluation(metrics, n_train, n_test)
    return final, metrics, _figures(metrics, tables)


def _require_both_classes(h: int, windows: list[tuple[str, int, int, dt.date]]) -> None:
    """Raise ``InputError`` unless each labelled window (name, customers, churned, cutoff) has
    customers of both outcomes: a model cannot be trained or evaluated on one class."""
    for name, n, pos, cut in windows:
        if n == 0 or pos in (0, n):
            raise InputError(
                f"orders: the churn {name} window (features as of {cut}, label over the next {h} "
                f"days) has {n} customers and {pos} churned; churn needs history of at least {2 * h} "
                f"days before as_of_date with both outcomes (lower churn.horizon_days or provide more "
                f"history)"
            )


def _scoring_model(
    cfg: ChurnConfig,
    model: Model,
    test_all: DataFrame,
    test: DataFrame,
    n_test: int,
    pulled: pd.DataFrame | None,
    metrics: dict[str, Any],
) -> Model:
    """The model that scores the customers: refitted on the test window when
    ``churn.refit_on_latest``, else the evaluated one; ``metrics["scored_with"]`` says which."""
    if cfg.refit_on_latest:
        latest = seeded_sample(test_all, cfg.max_train_rows, n_test, cfg.seed, "train")
        final = _train(cfg, latest, min(n_test, cfg.max_train_rows), pulled if latest is test else None)
        metrics["scored_with"] = "refit on the test window"
    else:
        final = model
        metrics["scored_with"] = "training-window model"
    return final


def _log_evaluation(metrics: dict[str, Any], n_train: int, n_test: int) -> None:
    """One line on the test metrics and the sample sizes behind them."""
    log.info(
        "churn: test AUC %.3f, PR-AUC %.3f, top-decile lift %.2f (trained on %d of %d customers, "
        "evaluated on %d of %d)",
        metrics["auc"],
        metrics["pr_auc"],
        metrics["lift_top_decile"],
        metrics["train_rows"],
        n_train,
        metrics["eval_customers"],
        n_test,
    )


def _figures(metrics: dict[str, Any], tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """The evaluation's ROC, lift and calibration figures."""
    return {
        "churn_roc": _roc_figure(tables["roc"], metrics["auc"]),
        "churn_lift": _lift_figure(tables["lift"]),
        "churn_calibration": _calibration_figure(tables["calibration"]),
    }


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
