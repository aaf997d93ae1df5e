"""RFM features, scores and named segments, as of one inclusive date.

Definitions (one row per customer with at least one order on or before ``as_of_date``), all from
the silver ``customer_state`` table, itself from ``orders`` (``segspark.silver``: one order and
purchase definition for the job):

- An *order* is (customer_id, order_id) with its net amount (lines summed, returns negative), its
  time (first line) and channel (smallest line channel). Orders after ``as_of_date`` (by UTC date)
  are left out: they are holdout.
- A *purchase* is an order with ``is_purchase`` (net amount > ``purchase.min_net_amount``).
- ``frequency``: purchase occasions, the days with at least one purchase (several orders on one day
  are one occasion, as in the BTYD models: ``frequency`` equals the CLV model's x + 1).
- ``orders``: purchase orders (>= frequency).
- ``monetary``: net revenue, the sum of all order nets (can be <= 0 for customers who returned more
  than they bought in the window).
- ``avg_order_value``: monetary / orders; 0 when the customer has no purchase.
- ``first_order_ts`` / ``last_order_ts``: first and last purchase; for a customer without any
  purchase, the first and last order instead, so recency and tenure are always defined.
- ``recency_days``: ``as_of_date`` minus the date of ``last_order_ts`` (0 if bought that day);
  ``tenure_days`` likewise from ``first_order_ts``.
- ``return_rate``: returned value / gross sales value over the lines (0 without returns, capped at 1,
  1 for a customer with returns and no sales in the window).
- ``orders_<channel>``: purchase orders per channel in ``rfm.channels``; ``orders_other`` for the
  rest (other or missing channel). They add up to ``orders``.

Scores: quintile (or quartile) edges of recency, frequency and monetary from ``percentile_approx``
(relative error ``rfm.relative_error``); a value's score is 1 + the number of edges strictly below it
(recency inverted: bins minus that number). Ties therefore never split: equal values always get
the same score, and when one value covers several quantiles (many one-time buyers) the scores in
between are not used. Null values score lowest (1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark import silver
from segspark.config import RfmConfig
from segspark.schema import (  # the columns' one spelling
    AVG_ORDER_VALUE,
    CUSTOMERS,
    F_SCORE,
    FIRST_ORDER_TS,
    FREQUENCY,
    LAST_ORDER_TS,
    M_SCORE,
    MONETARY,
    ORDERS,
    ORDERS_OTHER,
    R_SCORE,
    RECENCY_DAYS,
    RETURN_RATE,
    REVENUE,
    RFM_CODE,
    RFM_SEGMENT,
    TENURE_DAYS,
    channel_column,
)

DEFAULT_CHANNELS: tuple[str, ...] = ("web", "app", "store")
SCORE_COLUMNS: tuple[str, ...] = (R_SCORE, F_SCORE, M_SCORE, RFM_CODE)


def rfm_feature_columns(channels: Sequence[str] = DEFAULT_CHANNELS) -> list[str]:
    """The columns ``rfm_features`` returns, in order."""
    return [
        S.CUSTOMER_ID,
        RECENCY_DAYS,
        FREQUENCY,
        ORDERS,
        MONETARY,
        AVG_ORDER_VALUE,
        FIRST_ORDER_TS,
        LAST_ORDER_TS,
        TENURE_DAYS,
        RETURN_RATE,
        *[channel_column(c) for c in channels],
        ORDERS_OTHER,
    ]


def days_between(as_of: Column, ts: Column) -> Column:
    """Whole days from the (UTC) date of ``ts`` to ``as_of``."""
    return F.datediff(as_of, F.to_date(ts))


def rfm_features(
    orders: DataFrame, as_of_date: dt.date, channels: Sequence[str] = DEFAULT_CHANNELS
) -> DataFrame:
    """Per-customer RFM features as of ``as_of_date`` (inclusive) from the silver ``orders`` table;
    see the module docstring. The same as :func:`rfm_from_state` of the orders' ``customer_state``
    (the run reads that table instead of the orders)."""
    return rfm_from_state(silver.customer_state(orders, as_of_date, channels), as_of_date, channels)


def rfm_from_state(
    state: DataFrame, as_of_date: dt.date, channels: Sequence[str] = DEFAULT_CHANNELS
) -> DataFrame:
    """Per-customer RFM features as of ``as_of_date`` from the silver ``customer_state`` of that date
    (one row per customer with an order on or before it): no shuffle, one projection."""
    as_of = F.lit(as_of_date)
    first = F.coalesce(F.col(S.FIRST_PURCHASE_TS), F.col(S.FIRST_SEEN_TS))
    last = F.coalesce(F.col(S.LAST_PURCHASE_TS), F.col(S.LAST_SEEN_TS))
    gross, returned = F.col(S.GROSS_AMOUNT), F.col(S.RETURNED_AMOUNT)
    return_rate = (
        F.when(gross > 0, F.least(F.lit(1.0), returned / gross))
        .when(returned > 0, F.lit(1.0))
        .otherwise(F.lit(0.0))
    )
    aov = F.coalesce(F.try_divide(F.col(S.NET_AMOUNT), F.col(S.PURCHASES)), F.lit(0.0))
    return state.select(
        F.col(S.CUSTOMER_ID),
        days_between(as_of, last).alias(RECENCY_DAYS),
        F.col(S.PURCHASE_DAYS).cast("long").alias(FREQUENCY),
        F.col(S.PURCHASES).cast("long").alias(ORDERS),
        F.col(S.NET_AMOUNT).cast("double").alias(MONETARY),
        aov.cast("double").alias(AVG_ORDER_VALUE),
        first.alias(FIRST_ORDER_TS),
        last.alias(LAST_ORDER_TS),
        days_between(as_of, first).alias(TENURE_DAYS),
        return_rate.alias(RETURN_RATE),
        *[F.col(channel_column(ch)).cast("long").alias(channel_column(ch)) for ch in channels],
        F.col(ORDERS_OTHER).cast("long").alias(ORDERS_OTHER),
    )


def rfm_edges(df: DataFrame, cfg: RfmConfig) -> dict[str, list[float]]:
    """Quantile edges (bins - 1 each) of recency_days, frequency and monetary: one aggregate job.

    Only these few numbers reach the driver; the pipeline can log them with the run.
    """
    probs = [i / cfg.bins for i in range(1, cfg.bins)]
    accuracy = max(1, round(1.0 / cfg.relative_error))
    row = df.agg(
        *[
            F.percentile_approx(F.col(c), probs, accuracy).alias(c)
            for c in (RECENCY_DAYS, FREQUENCY, MONETARY)
        ]
    ).first()
    edges: dict[str, list[float]] = {}
    for c in (RECENCY_DAYS, FREQUENCY, MONETARY):
        values = row[c] if row is not None else None
        edges[c] = [float(v) for v in values] if values else []
    return edges


def score(value: Column, edges: Sequence[float], bins: int, inverted: bool = False) -> Column:
    """1 + number of edges strictly below ``value`` (inverted: bins minus that number); null -> 1."""
    above = sum(((value > F.lit(e)).cast("int") for e in edges), F.lit(0))
    s = (F.lit(bins) - above) if inverted else (F.lit(1) + above)
    return F.when(value.isNull(), F.lit(1)).otherwise(s).cast("int")


def with_rfm_scores(df: DataFrame, cfg: RfmConfig, edges: dict[str, list[float]] | None = None) -> DataFrame:
    """Add r_score, f_score, m_score (1..bins, recency inverted) and rfm_code (e.g. "545").

    ``edges`` from ``rfm_edges`` (computed here when not given).
    """
    edges = edges if edges is not None else rfm_edges(df, cfg)
    r = score(F.col(RECENCY_DAYS), edges[RECENCY_DAYS], cfg.bins, inverted=True)
    f = score(F.col(FREQUENCY), edges[FREQUENCY], cfg.bins)
    m = score(F.col(MONETARY), edges[MONETARY], cfg.bins)
    keep = [F.col(c) for c in df.columns if c not in SCORE_COLUMNS]
    scored = df.select(*keep, r.alias(R_SCORE), f.alias(F_SCORE), m.alias(M_SCORE))
    code = F.concat(*[F.col(c).cast("string") for c in (R_SCORE, F_SCORE, M_SCORE)])
    return scored.select(*[F.col(c) for c in scored.columns], code.alias(RFM_CODE))


def fm_score(f: Column, m: Column) -> Column:
    """The combined F/M score: (F + M) / 2 rounded half up."""
    return F.floor((f + m) / F.lit(2.0) + F.lit(0.5)).cast("int")


def rfm_segment(r: Column, fm: Column, cfg: RfmConfig) -> Column:
    """The first segment rule of ``cfg`` whose R and FM ranges hold the scores."""
    rules = cfg.segment_rules()
    expr = None
    for rule in rules:
        cond = r.between(rule.r[0], rule.r[1]) & fm.between(rule.fm[0], rule.fm[1])
        expr = F.when(cond, F.lit(rule.name)) if expr is None else expr.when(cond, F.lit(rule.name))
    assert expr is not None  # RfmConfig validates that the rules cover the whole grid
    return expr


def with_rfm_segment(df: DataFrame, cfg: RfmConfig) -> DataFrame:
    """Add rfm_segment from r_score and the combined F/M score, by the rule table in ``cfg``.

    The rules cover every (R, FM) cell (checked when the config is loaded), so every customer gets
    exactly one segment.
    """
    seg = rfm_segment(F.col(R_SCORE), fm_score(F.col(F_SCORE), F.col(M_SCORE)), cfg)
    keep = [F.col(c) for c in df.columns if c != RFM_SEGMENT]
    return df.select(*keep, seg.alias(RFM_SEGMENT))


def rfm_from_days(customer_days: DataFrame, as_of_date: dt.date) -> DataFrame:
    """(customer_id, recency_days, frequency, monetary) as of ``as_of_date`` from the silver
    ``customer_days``: the values :func:`rfm_features` gives from the orders (days are the UTC dates
    of the orders' timestamps, as :func:`days_between` counts them), in one aggregation of a
    customer-level table rather than two of the orders."""
    bought = F.col(S.PURCHASES) > 0
    last = F.coalesce(F.max(F.when(bought, F.col(S.ORDER_DATE))), F.max(F.col(S.ORDER_DATE)))
    return (
        customer_days.where(F.col(S.ORDER_DATE) <= F.lit(as_of_date))
        .groupBy(S.CUSTOMER_ID)
        .agg(
            F.datediff(F.lit(as_of_date), last).alias(RECENCY_DAYS),
            F.count_if(bought).cast("long").alias(FREQUENCY),
            F.sum(S.NET_AMOUNT).cast("double").alias(MONETARY),
        )
    )


def rfm_segments_as_of(
    customer_days: DataFrame, as_of_date: dt.date, cfg: RfmConfig, segment_col: str = RFM_SEGMENT
) -> DataFrame:
    """(customer_id, ``segment_col``): the RFM segment every buyer had as of ``as_of_date``, with the
    score edges of that date's buyers (e.g. the CLV check of holdout value by segment at the
    calibration end, which must not see the holdout purchases), from the silver ``customer_days``
    (:func:`rfm_from_days`).

    The result is persisted and materialized (the caller unpersists it): the days are aggregated
    once, for the score edges and the segments both."""
    buyers = rfm_from_days(customer_days, as_of_date).persist()
    try:
        scored = buyers.transform(with_rfm_scores, cfg).transform(with_rfm_segment, cfg)
        out = scored.select(F.col(S.CUSTOMER_ID), F.col(RFM_SEGMENT).alias(segment_col)).persist()
        out.count()
    finally:
        buyers.unpersist()
    return out


def rfm_grid(df: DataFrame) -> DataFrame:
    """R score x F score: customers and net revenue per cell (the heatmap behind the report)."""
    return (
        df.groupBy(R_SCORE, F_SCORE)
        .agg(F.count(F.lit(1)).alias(CUSTOMERS), F.sum(MONETARY).cast("double").alias(REVENUE))
        .select(F.col(R_SCORE), F.col(F_SCORE), F.col(CUSTOMERS), F.col(REVENUE))
    )
