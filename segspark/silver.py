"""Silver tables, built once per run right after ingest: every later stage reads them, never the lines.

- ``orders``: one row per (customer, order). An order's time is its first line's, its date that
  time's UTC date; its net amount is the sum of its lines (returns are negative lines), gross the sum
  of the positive lines, returned minus the sum of the negative ones. Its channel is the smallest
  non-null line channel (deterministic when lines disagree), its categories the distinct categories
  of its positive lines. ``is_purchase`` is THE purchase definition of the whole job:
  ``net_amount > purchase.min_net_amount`` (default 0: free orders and pure returns are not
  purchases). RFM, behaviour, CLV, churn, cohorts, LTV:CAC and the KPIs all use it.
- ``customer_days``: one row per (customer, day with at least one order): order and purchase counts,
  the net of every order and the net of the purchase orders. A purchase day (purchases > 0) is the
  purchase occasion of the BTYD models (several orders on one day are one occasion), and RFM
  ``frequency`` counts the same occasions, so per customer ``frequency == CLV x + 1``.

Both hold every clean order, including those after ``as_of_date`` (the holdout of the CLV and churn
checks); each stage applies its own as-of filter.

- ``customer_state``: one row per customer from the orders on or before ``as_of_date`` (see
  :func:`customer_state` for its columns and the merge rule of each); RFM reads it.
- ``customer_months``: one row per customer and month with an order on or before ``as_of_date``;
  cohort retention reads it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark import tables
from segspark.config import PurchaseConfig
from segspark.errors import InputError


def _require(df: DataFrame, table: str, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"table '{table}': column(s) {', '.join(missing)} missing")


def _optional(df: DataFrame, name: str, type_: str) -> Column:
    return (F.col(name) if name in df.columns else F.lit(None)).cast(type_).alias(name)


def orders(transactions: DataFrame, purchase: PurchaseConfig) -> DataFrame:
    """Clean order lines -> one row per order (columns of ``tables.ORDERS_SCHEMA``).

    The run's own orders come from ingest, which groups the lines with these same aggregates in the
    pass that validates them (``ingest.orders``); this is the same definition over lines that are
    already clean (tests, notebooks, lines from elsewhere). Lines that carry the source id
    (``schema.SOURCE_KEY``) next to its pseudonym group by it; others by customer_id.
    """
    _require(transactions, "transactions", S.TRANSACTIONS_REQUIRED)
    keyed = S.SOURCE_KEY in transactions.columns
    lines = transactions.select(
        *([F.col(S.SOURCE_KEY)] if keyed else []),
        *S.TRANSACTIONS_REQUIRED,
        _optional(transactions, S.QUANTITY, "long"),
        _optional(transactions, S.PRODUCT_CATEGORY, "string"),
        _optional(transactions, S.CHANNEL, "string"),
    ).where(F.col(S.CUSTOMER_ID).isNotNull() & F.col(S.ORDER_ID).isNotNull() & F.col(S.ORDER_TS).isNotNull())
    by = [S.SOURCE_KEY, S.ORDER_ID] if keyed else [S.CUSTOMER_ID, S.ORDER_ID]
    grouped = lines.groupBy(*by).agg(*order_aggregates(None, with_customer=keyed))
    return order_columns(grouped, purchase)


def order_aggregates(keep: Column | None, *, with_customer: bool) -> list[Column]:
    """An order's aggregates over its lines (those where ``keep`` holds, every line when None):
    first time, net, gross and returned amounts, line count, quantity of the positive lines, the
    smallest channel, the categories of the positive lines, the return lines (day, amount returned);
    ``with_customer``: the customer_id (one pseudonym per source id: any kept line's)."""

    def kept(c: Column) -> Column:
        return c if keep is None else F.when(keep, c)

    amount = F.coalesce(F.col(S.AMOUNT).cast("double"), F.lit(0.0))
    positive = amount > 0
    customer = [F.any_value(kept(F.col(S.CUSTOMER_ID)), ignoreNulls=True).alias(S.CUSTOMER_ID)]
    return [
        *(customer if with_customer else []),
        F.min(kept(F.col(S.ORDER_TS))).alias(S.ORDER_TS),
        F.sum(kept(amount)).alias(S.NET_AMOUNT),
        F.sum(kept(F.when(positive, amount).otherwise(F.lit(0.0)))).alias(S.GROSS_AMOUNT),
        F.sum(kept(F.when(amount < 0, -amount).otherwise(F.lit(0.0)))).alias(S.RETURNED_AMOUNT),
        F.count(kept(F.lit(1))).alias(S.LINES),
        F.sum(kept(F.when(positive, F.col(S.QUANTITY)))).alias(S.QUANTITY),
        F.min(kept(F.col(S.CHANNEL))).alias(S.CHANNEL),
        F.collect_set(kept(F.when(positive, F.col(S.PRODUCT_CATEGORY)))).alias(S.CATEGORIES),
        # every return line, copies included (a set would merge two equal returns of one day)
        F.collect_list(kept(F.when(amount < 0, return_line(F.to_date(F.col(S.ORDER_TS)), -amount)))).alias(
            S.RETURNS
        ),
    ]


def return_line(day: Column, returned: Column) -> Column:
    """One element of ``orders.returns``: the day a return line was recorded, the amount returned."""
    return F.struct(day.alias(S.RETURN_DAY), returned.alias(S.RETURN_AMOUNT))


def order_columns(grouped: DataFrame, purchase: PurchaseConfig) -> DataFrame:
    """Grouped ``order_aggregates`` -> the columns of ``tables.ORDERS_SCHEMA``, with THE purchase
    definition (``is_purchase``)."""
    return grouped.select(
        F.col(S.CUSTOMER_ID),
        F.col(S.ORDER_ID),
        F.col(S.ORDER_TS),
        F.to_date(F.col(S.ORDER_TS)).alias(S.ORDER_DATE),
        F.col(S.NET_AMOUNT),
        F.col(S.GROSS_AMOUNT),
        F.col(S.RETURNED_AMOUNT),
        F.col(S.LINES).cast("long").alias(S.LINES),
        F.col(S.QUANTITY).cast("long").alias(S.QUANTITY),
        F.col(S.CHANNEL),
        F.array_sort(F.col(S.CATEGORIES)).alias(S.CATEGORIES),
        (F.col(S.NET_AMOUNT) > F.lit(float(purchase.min_net_amount))).alias(S.IS_PURCHASE),
        (
            F.array_sort(F.col(S.LINE_HASHES))
            if S.LINE_HASHES in grouped.columns
            else F.lit(None).cast(T.ArrayType(T.LongType(), containsNull=False))
        ).alias(S.LINE_HASHES),
        # the declared type (nullable fields): delta-rs refuses to cast a nested field's nullability
        F.array_sort(F.col(S.RETURNS)).cast(tables.ORDERS_SCHEMA[S.RETURNS].dataType).alias(S.RETURNS),
    )


def merged_orders(earlier: DataFrame, batch: DataFrame, purchase: PurchaseConfig) -> DataFrame:
    """The orders of a batch of new lines (``order_columns``) merged with the same orders in
    ``earlier`` (the ``orders`` table): one row per (customer, order) of the batch, as if all of the
    order's lines had been grouped at once. Every aggregate merges: the first time and the smallest
    channel take the smaller, amounts, lines and quantities add (a null quantity is no quantity), the
    categories, line hashes and return lines are the union. Orders of ``earlier`` the batch does not
    touch are not returned (a MERGE by key leaves them as they are)."""
    keys = [S.CUSTOMER_ID, S.ORDER_ID]
    columns = [f for f in batch.columns]
    touched = earlier.join(batch.select(*keys), on=keys, how="left_semi").select(*columns)
    both = touched.unionByName(batch)
    grouped = both.groupBy(*keys).agg(
        F.min(S.ORDER_TS).alias(S.ORDER_TS),
        F.sum(S.NET_AMOUNT).alias(S.NET_AMOUNT),
        F.sum(S.GROSS_AMOUNT).alias(S.GROSS_AMOUNT),
        F.sum(S.RETURNED_AMOUNT).alias(S.RETURNED_AMOUNT),
        F.sum(S.LINES).alias(S.LINES),
        F.sum(S.QUANTITY).alias(S.QUANTITY),
        F.min(S.CHANNEL).alias(S.CHANNEL),
        F.array_distinct(F.flatten(F.collect_list(S.CATEGORIES))).alias(S.CATEGORIES),
        F.flatten(F.collect_list(S.LINE_HASHES)).alias(S.LINE_HASHES),
        F.flatten(F.collect_list(S.RETURNS)).alias(S.RETURNS),
    )
    return order_columns(grouped, purchase)


def customer_days(orders: DataFrame) -> DataFrame:
    """Orders -> one row per customer and order day (columns of ``tables.CUSTOMER_DAYS_SCHEMA``)."""
    _require(orders, S.ORDERS, (S.CUSTOMER_ID, S.ORDER_DATE, S.NET_AMOUNT, S.IS_PURCHASE))
    return _activity(orders, S.ORDER_DATE, F.col(S.ORDER_DATE), with_value=True)


def _activity(orders: DataFrame, name: str, period: Column, *, with_value: bool) -> DataFrame:
    """One row per customer and ``period`` (named ``name``): orders, purchase orders, net, and with
    ``with_value`` the net of the purchase orders."""
    bought = F.col(S.IS_PURCHASE)
    value = [F.sum(F.when(bought, F.col(S.NET_AMOUNT)).otherwise(F.lit(0.0))).alias(S.PURCHASE_VALUE)]
    return (
        orders.groupBy(F.col(S.CUSTOMER_ID), period.alias(name))
        .agg(
            F.count(F.lit(1)).alias(S.ORDERS_COUNT),
            F.count_if(bought).alias(S.PURCHASES),
            F.sum(S.NET_AMOUNT).alias(S.NET_AMOUNT),
            *(value if with_value else []),
        )
        .select(
            F.col(S.CUSTOMER_ID),
            F.col(name),
            F.col(S.ORDERS_COUNT).cast("long").alias(S.ORDERS_COUNT),
            F.col(S.PURCHASES).cast("long").alias(S.PURCHASES),
            F.col(S.NET_AMOUNT).cast("double").alias(S.NET_AMOUNT),
            *([F.col(S.PURCHASE_VALUE).cast("double").alias(S.PURCHASE_VALUE)] if with_value else []),
        )
    )


def purchase_days(days: DataFrame) -> DataFrame:
    """The purchase occasions: ``customer_days`` rows with at least one purchase order."""
    return days.where(F.col(S.PURCHASES) > 0)


# the state's amounts and sums of squares (doubles), in the schema's order
STATE_AMOUNTS: tuple[str, ...] = (
    S.NET_AMOUNT,
    S.NET_SUMSQ,
    S.PURCHASE_VALUE,
    S.PURCHASE_VALUE_SUMSQ,
    S.GROSS_AMOUNT,
    S.GROSS_SUMSQ,
    S.RETURNED_AMOUNT,
)


def customer_state(orders: DataFrame, as_of_date: dt.date, channels: Sequence[str]) -> DataFrame:
    """Orders on or before ``as_of_date`` -> one row per customer (``tables.CUSTOMER_STATE_SCHEMA``,
    plus ``orders_<channel>`` for each of ``channels``).

    Orders are repartitioned by customer once; the day and the customer aggregations both run on
    that partitioning (purchase days are counted from the days).

    Merge rule of every column, for adding a batch of newer orders by ``customer_id`` (the
    incremental refresh): a customer new to the state is inserted as computed from the batch;
    otherwise ``first_*`` take the smaller of state and batch, ``last_*`` the larger;
    ``first_purchase_order_id`` and ``first_purchase_channel`` go with the smaller
    (``first_purchase_ts``, ``first_purchase_order_id``); ``acquisition_month`` is the month of the
    merged ``first_purchase_ts``; ``orders``, ``purchases``, ``orders_<channel>``, ``orders_other``
    and every amount and sum of squares add; ``purchase_days`` adds, minus one when the batch's
    first purchase day is the state's last purchase day (exact for batches of orders on or after the
    state's last order day; a batch reaching further back needs the customer's rows rebuilt from
    ``customer_days``); ``btyd_x`` is the merged ``purchase_days - 1`` and ``btyd_t_x_days`` the days
    from the merged first to the merged last purchase day.
    """
    as_of = F.lit(as_of_date)
    net = F.col(S.NET_AMOUNT)
    bought = F.col(S.IS_PURCHASE)
    listed = F.col(S.CHANNEL).isin(*channels) if channels else F.lit(False)
    first_of = F.struct(
        F.col(S.ORDER_TS).alias("ts"), F.col(S.ORDER_ID).alias("id"), F.col(S.CHANNEL).alias("ch")
    )
    channel_cols = [S.channel_column(ch) for ch in channels]
    days = (
        orders.where(F.col(S.ORDER_DATE) <= as_of)
        .repartition(F.col(S.CUSTOMER_ID))
        .groupBy(S.CUSTOMER_ID, S.ORDER_DATE)
        .agg(
            F.count(F.lit(1)).alias(S.ORDERS_COUNT),
            F.count_if(bought).alias(S.PURCHASES),
            F.sum(net).alias(S.NET_AMOUNT),
            F.sum(net * net).alias(S.NET_SUMSQ),
            F.sum(F.when(bought, net).otherwise(F.lit(0.0))).alias(S.PURCHASE_VALUE),
            F.sum(F.when(bought, net * net).otherwise(F.lit(0.0))).alias(S.PURCHASE_VALUE_SUMSQ),
            F.sum(S.GROSS_AMOUNT).alias(S.GROSS_AMOUNT),
            F.sum(F.col(S.GROSS_AMOUNT) * F.col(S.GROSS_AMOUNT)).alias(S.GROSS_SUMSQ),
            F.sum(S.RETURNED_AMOUNT).alias(S.RETURNED_AMOUNT),
            F.min(F.when(bought, first_of)).alias("_first"),
            F.max(F.when(bought, F.col(S.ORDER_TS))).alias(S.LAST_PURCHASE_TS),
            F.min(S.ORDER_TS).alias(S.FIRST_SEEN_TS),
            F.max(S.ORDER_TS).alias(S.LAST_SEEN_TS),
            *[
                F.count_if(bought & (F.col(S.CHANNEL) == F.lit(ch))).alias(S.channel_column(ch))
                for ch in channels
            ],
            F.count_if(bought & ~F.coalesce(listed, F.lit(False))).alias(S.ORDERS_OTHER),
        )
    )
    summed = (S.ORDERS_COUNT, S.NET_SUMSQ, S.PURCHASE_VALUE, S.PURCHASE_VALUE_SUMSQ, S.GROSS_SUMSQ)
    customers = days.groupBy(S.CUSTOMER_ID).agg(
        F.count_if(F.col(S.PURCHASES) > 0).alias(S.PURCHASE_DAYS),
        F.min(F.when(F.col(S.PURCHASES) > 0, F.col(S.ORDER_DATE))).alias("_first_day"),
        F.max(F.when(F.col(S.PURCHASES) > 0, F.col(S.ORDER_DATE))).alias("_last_day"),
        F.sum(S.PURCHASES).alias(S.PURCHASES),
        F.sum(S.NET_AMOUNT).alias(S.NET_AMOUNT),
        F.min("_first").alias("_first"),
        F.max(S.LAST_PURCHASE_TS).alias(S.LAST_PURCHASE_TS),
        F.min(S.FIRST_SEEN_TS).alias(S.FIRST_SEEN_TS),
        F.max(S.LAST_SEEN_TS).alias(S.LAST_SEEN_TS),
        F.sum(S.GROSS_AMOUNT).alias(S.GROSS_AMOUNT),
        F.sum(S.RETURNED_AMOUNT).alias(S.RETURNED_AMOUNT),
        *[F.sum(c).alias(c) for c in (*summed, *channel_cols, S.ORDERS_OTHER)],
    )
    return _state_columns(customers, channel_cols)


def _state_columns(customers: DataFrame, channel_cols: list[str]) -> DataFrame:
    """The aggregated customers in the order and types of ``tables.CUSTOMER_STATE_SCHEMA``."""
    first = F.col("_first")
    bought = F.col(S.PURCHASE_DAYS) > 0
    return customers.select(
        F.col(S.CUSTOMER_ID),
        F.col(S.FIRST_SEEN_TS),
        F.col(S.LAST_SEEN_TS),
        first["ts"].alias(S.FIRST_PURCHASE_TS),
        F.col(S.LAST_PURCHASE_TS),
        first["id"].alias(S.FIRST_PURCHASE_ORDER_ID),
        first["ch"].alias(S.FIRST_PURCHASE_CHANNEL),
        F.trunc(F.to_date(first["ts"]), "month").alias(S.ACQUISITION_MONTH),
        F.col(S.PURCHASE_DAYS).cast("long").alias(S.PURCHASE_DAYS),
        F.when(bought, F.col(S.PURCHASE_DAYS) - 1).cast("long").alias(S.BTYD_X),
        F.datediff(F.col("_last_day"), F.col("_first_day")).cast("long").alias(S.BTYD_T_X_DAYS),
        F.col(S.ORDERS_COUNT).cast("long").alias(S.ORDERS_COUNT),
        F.col(S.PURCHASES).cast("long").alias(S.PURCHASES),
        *[F.col(c).cast("double").alias(c) for c in STATE_AMOUNTS],
        *[F.col(c).cast("long").alias(c) for c in (*channel_cols, S.ORDERS_OTHER)],
    )


def customer_months(orders: DataFrame, as_of_date: dt.date) -> DataFrame:
    """Orders on or before ``as_of_date`` -> one row per customer and month with an order
    (``tables.CUSTOMER_MONTHS_SCHEMA``). Merge rule: by (customer_id, month), the counts and the
    net add; a new key is inserted."""
    as_of = orders.where(F.col(S.ORDER_DATE) <= F.lit(as_of_date))
    return _activity(as_of, S.MONTH, F.trunc(F.col(S.ORDER_DATE), "month"), with_value=False)
