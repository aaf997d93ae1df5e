"""Behaviour features (from the silver orders), engagement features (from events) and the CRM attributes.

All three are customer-level tables keyed by ``customer_id`` and computed as of one inclusive date;
the ``with_*`` functions left-join them onto the RFM feature table without ever dropping a customer.

Rule for customers without events (documented in the README too):
- an ``events`` table was given but a customer has no event on or before ``as_of_date``: every
  count column is 0, every rate and days-since column is null, ``has_events`` is false;
- no ``events`` table at all: every engagement column is null (unknown, not zero), ``has_events`` null.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.errors import InputError
from segspark.schema import (  # the columns' one spelling
    ACTIVE_DAYS_30D,
    ACTIVE_DAYS_90D,
    ADD_TO_CART_90D,
    AVG_BASKET_SIZE,
    CATEGORY_BREADTH,
    CHANNEL_SHARE_OTHER,
    CHECKOUTS_90D,
    CONVERSION_RATE_90D,
    DAYS_SINCE_LAST_LOGIN,
    DAYS_SINCE_LAST_VISIT,
    DEMOGRAPHIC_COLUMNS,
    ENGAGEMENT_COUNTS,
    ENGAGEMENT_DAYS,
    ENGAGEMENT_RATES,
    FEATURE_USES_90D,
    HAS_EVENTS,
    LAST_INTERPURCHASE_DAYS,
    MEAN_INTERPURCHASE_DAYS,
    ORDERS_LAST_90D,
    ORDERS_PREV_90D,
    PAGE_VIEWS_90D,
    PURCHASES_90D,
    SESSIONS_30D,
    SESSIONS_90D,
    STD_INTERPURCHASE_DAYS,
    TREND_90D,
    TREND_INDEX_90D,
    channel_share_column,
)

# Windows are part of the column names (``*_30d``, ``*_90d``), so they are fixed here, not config.
TREND_WINDOW_DAYS = 90
SHORT_WINDOW_DAYS = 30
LONG_WINDOW_DAYS = 90


ENGAGEMENT_COLUMNS: tuple[str, ...] = (HAS_EVENTS, *ENGAGEMENT_COUNTS, *ENGAGEMENT_RATES, *ENGAGEMENT_DAYS)


def _require(df: DataFrame, table: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{table}: missing column(s) {', '.join(missing)}")


def _col_or_null(df: DataFrame, name: str, type_: str) -> Column:
    """An optional input column, or a typed null when the source does not have it."""
    return (F.col(name) if name in df.columns else F.lit(None)).cast(type_).alias(name)


def days_before(as_of: dt.date, ts: Column) -> Column:
    """Whole days from the date of ``ts`` to ``as_of`` (0 on the day itself)."""
    return F.datediff(F.lit(as_of), F.to_date(ts))


def purchases(orders: DataFrame, as_of_date: dt.date) -> DataFrame:
    """Purchase orders on or before ``as_of_date``, from the silver ``orders`` table.

    Columns: customer_id, order_id, order_ts, order_date, net_amount, units (positive lines; null
    when no quantity is known), channel, categories.
    """
    _require(orders, S.ORDERS, (S.CUSTOMER_ID, S.ORDER_ID, S.ORDER_TS, S.ORDER_DATE, S.IS_PURCHASE))
    return orders.where(F.col(S.IS_PURCHASE) & (F.col(S.ORDER_DATE) <= F.lit(as_of_date))).select(
        S.CUSTOMER_ID,
        S.ORDER_ID,
        S.ORDER_TS,
        S.ORDER_DATE,
        S.NET_AMOUNT,
        F.col(S.QUANTITY).alias("units"),
        S.CHANNEL,
        S.CATEGORIES,
    )


def behaviour_features(
    orders: DataFrame,
    as_of_date: dt.date,
    channels: Sequence[str] = ("web", "app", "store"),
) -> DataFrame:
    """One row per customer with a purchase on or before ``as_of_date``.

    Columns: customer_id, mean/std/last inter-purchase days (null below 2 / 3 / 2 purchases),
    orders in the last and previous 90 days with their ratio and bounded index, category breadth,
    average basket size, and the channel mix as ``channel_share_<channel>`` plus
    ``channel_share_other`` (shares of the purchases whose channel is known; null if none is).
    Return rate is not repeated here: the RFM feature table has it.
    """
    orders = purchases(orders, as_of_date)
    by_time = Window.partitionBy(S.CUSTOMER_ID).orderBy(S.ORDER_TS, S.ORDER_ID)
    gap = F.datediff(F.col("order_date"), F.lag("order_date").over(by_time))
    age = days_before(as_of_date, F.col(S.ORDER_TS))
    with_gap = orders.select(
        S.CUSTOMER_ID,
        S.ORDER_ID,
        S.ORDER_TS,
        "units",
        S.CHANNEL,
        "categories",
        gap.alias("gap"),
        F.when(age < TREND_WINDOW_DAYS, 1).otherwise(0).alias("in_last"),
        F.when((age >= TREND_WINDOW_DAYS) & (age < 2 * TREND_WINDOW_DAYS), 1).otherwise(0).alias("in_prev"),
    )
    known = F.count(S.CHANNEL)
    shares = [
        F.try_divide(F.count_if(F.col(S.CHANNEL) == F.lit(c)), known).alias(channel_share_column(c))
        for c in channels
    ]
    listed = F.col(S.CHANNEL).isin(*channels) if channels else F.lit(False)
    other = F.try_divide(F.count_if(F.col(S.CHANNEL).isNotNull() & ~listed), known).alias(CHANNEL_SHARE_OTHER)
    last, prev = F.col(ORDERS_LAST_90D), F.col(ORDERS_PREV_90D)
    per_customer = with_gap.groupBy(S.CUSTOMER_ID).agg(
        F.avg("gap").alias(MEAN_INTERPURCHASE_DAYS),
        F.stddev_samp("gap").alias(STD_INTERPURCHASE_DAYS),
        F.max_by("gap", F.struct(S.ORDER_TS, S.ORDER_ID)).alias(LAST_INTERPURCHASE_DAYS),
        F.sum("in_last").alias(ORDERS_LAST_90D),
        F.sum("in_prev").alias(ORDERS_PREV_90D),
        F.size(F.array_distinct(F.flatten(F.collect_list("categories")))).alias(CATEGORY_BREADTH),
        F.avg("units").alias(AVG_BASKET_SIZE),
        *shares,
        other,
    )
    return per_customer.select(
        S.CUSTOMER_ID,
        F.col(MEAN_INTERPURCHASE_DAYS).cast("double").alias(MEAN_INTERPURCHASE_DAYS),
        F.col(STD_INTERPURCHASE_DAYS).cast("double").alias(STD_INTERPURCHASE_DAYS),
        F.col(LAST_INTERPURCHASE_DAYS).cast("int").alias(LAST_INTERPURCHASE_DAYS),
        last.cast("long").alias(ORDERS_LAST_90D),
        prev.cast("long").alias(ORDERS_PREV_90D),
        F.try_divide(last.cast("double"), prev).alias(TREND_90D),
        F.try_divide((last - prev).cast("double"), last + prev).alias(TREND_INDEX_90D),
        F.col(CATEGORY_BREADTH).cast("int").alias(CATEGORY_BREADTH),
        F.col(AVG_BASKET_SIZE).cast("double").alias(AVG_BASKET_SIZE),
        *[F.col(channel_share_column(c)) for c in channels],
        F.col(CHANNEL_SHARE_OTHER),
    )


def engagement_features(events: DataFrame, as_of_date: dt.date) -> DataFrame:
    """One row per customer with at least one event on or before ``as_of_date``.

    Windows are inclusive of ``as_of_date``: ``_30d`` covers the 30 days ending on it. Anonymous
    events (null customer_id) are ignored. Join onto the feature table with :func:`with_engagement`,
    which applies the rule for customers without events.
    """
    _require(events, "events", S.EVENTS_REQUIRED)
    day = F.to_date(F.col(S.EVENT_TS))
    age = F.datediff(F.lit(as_of_date), day)
    kind = F.col(S.EVENT_TYPE)
    in_30, in_90 = age < SHORT_WINDOW_DAYS, age < LONG_WINDOW_DAYS

    def count_90d(event_type: str) -> Column:
        return F.count_if(in_90 & (kind == F.lit(event_type)))

    per_customer = (
        events.where(F.col(S.CUSTOMER_ID).isNotNull() & (day <= F.lit(as_of_date)))
        .groupBy(S.CUSTOMER_ID)
        .agg(
            F.count_if(in_30 & (kind == F.lit("session_start"))).alias(SESSIONS_30D),
            count_90d("session_start").alias(SESSIONS_90D),
            F.count_distinct(F.when(in_30, day)).alias(ACTIVE_DAYS_30D),
            F.count_distinct(F.when(in_90, day)).alias(ACTIVE_DAYS_90D),
            count_90d("page_view").alias(PAGE_VIEWS_90D),
            count_90d("add_to_cart").alias(ADD_TO_CART_90D),
            count_90d("checkout").alias(CHECKOUTS_90D),
            count_90d("purchase").alias(PURCHASES_90D),
            count_90d("feature_used").alias(FEATURE_USES_90D),
            F.max(F.when(kind == F.lit("login"), day)).alias("last_login"),
            F.max(day).alias("last_visit"),
        )
    )
    return per_customer.select(
        S.CUSTOMER_ID,
        F.lit(True).alias(HAS_EVENTS),
        *[F.col(c).cast("long").alias(c) for c in ENGAGEMENT_COUNTS],
        F.try_divide(F.col(PURCHASES_90D).cast("double"), F.col(SESSIONS_90D)).alias(CONVERSION_RATE_90D),
        F.datediff(F.lit(as_of_date), F.col("last_login")).alias(DAYS_SINCE_LAST_LOGIN),
        F.datediff(F.lit(as_of_date), F.col("last_visit")).alias(DAYS_SINCE_LAST_VISIT),
    )


def _types(df: DataFrame) -> dict[str, str]:
    return {f.name: f.dataType.simpleString() for f in df.schema.fields}


def with_behaviour(features: DataFrame, behaviour: DataFrame) -> DataFrame:
    """Left-join :func:`behaviour_features` onto ``features``; customers without purchases get nulls."""
    _require(features, "customer features", (S.CUSTOMER_ID,))
    extra = [c for c in behaviour.columns if c != S.CUSTOMER_ID and c not in features.columns]
    joined = features.join(behaviour.select(S.CUSTOMER_ID, *extra), on=S.CUSTOMER_ID, how="left")
    return joined.select(*features.columns, *extra)


def with_engagement(features: DataFrame, engagement: DataFrame | None) -> DataFrame:
    """Left-join :func:`engagement_features` onto ``features`` by the module's rule for missing events.

    Both inputs are keyed by ``customer_id`` (engagement by construction, features by the RFM stage).
    """
    _require(features, "customer features", (S.CUSTOMER_ID,))
    kept = [c for c in features.columns if c not in ENGAGEMENT_COLUMNS]
    if engagement is None:
        nulls = {HAS_EVENTS: "boolean", **dict.fromkeys(ENGAGEMENT_COUNTS, "bigint")}
        nulls |= dict.fromkeys(ENGAGEMENT_RATES, "double") | dict.fromkeys(ENGAGEMENT_DAYS, "int")
        return features.select(*kept, *[F.lit(None).cast(nulls[c]).alias(c) for c in ENGAGEMENT_COLUMNS])
    _require(engagement, "engagement features", (S.CUSTOMER_ID, *ENGAGEMENT_COLUMNS))
    joined = features.select(*kept).join(
        engagement.select(S.CUSTOMER_ID, *ENGAGEMENT_COLUMNS), on=S.CUSTOMER_ID, how="left"
    )
    return joined.select(
        *kept,
        F.coalesce(F.col(HAS_EVENTS), F.lit(False)).alias(HAS_EVENTS),
        *[F.coalesce(F.col(c), F.lit(0).cast("bigint")).alias(c) for c in ENGAGEMENT_COUNTS],
        *ENGAGEMENT_RATES,
        *ENGAGEMENT_DAYS,
    )


def with_demographics(features: DataFrame, customers: DataFrame | None) -> DataFrame:
    """Left-join the allow-listed CRM attributes (:data:`DEMOGRAPHIC_COLUMNS`) onto ``features``.

    Attributes missing from the CRM table, or the whole table, become typed nulls so the feature
    table keeps one schema. ``customers`` is keyed by customer_id (ingest enforces uniqueness).
    """
    _require(features, "customer features", (S.CUSTOMER_ID,))
    kept = [c for c in features.columns if c not in DEMOGRAPHIC_COLUMNS]
    if customers is None:
        return features.select(*kept, *[F.lit(None).cast(t).alias(c) for c, t in DEMOGRAPHIC_COLUMNS.items()])
    _require(customers, "customers", S.CUSTOMERS_REQUIRED)
    present = _types(customers)
    attrs = [
        (F.col(c) if c in present else F.lit(None)).cast(t).alias(c) for c, t in DEMOGRAPHIC_COLUMNS.items()
    ]
    crm = customers.where(F.col(S.CUSTOMER_ID).isNotNull()).select(S.CUSTOMER_ID, *attrs)
    joined = features.select(*kept).join(crm, on=S.CUSTOMER_ID, how="left")
    return joined.select(*kept, *DEMOGRAPHIC_COLUMNS)
