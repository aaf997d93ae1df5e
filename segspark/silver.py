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
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
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

    Lines from ``ingest.validate`` arrive partitioned and sorted by (source customer id, order) and
    carry the source id (``schema.SOURCE_KEY``) next to its pseudonym: grouping by it streams over
    them with no shuffle (session.JOB_CONF sort aggregates). Lines without it group by customer_id.
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
    amount = F.coalesce(F.col(S.AMOUNT).cast("double"), F.lit(0.0))
    positive = amount > 0
    # one pseudonym per source id: any value of the group is the customer's
    by, customer = (
        ([S.SOURCE_KEY, S.ORDER_ID], [F.any_value(S.CUSTOMER_ID).alias(S.CUSTOMER_ID)])
        if keyed
        else ([S.CUSTOMER_ID, S.ORDER_ID], [])
    )
    grouped = lines.groupBy(*by).agg(
        *customer,
        F.min(S.ORDER_TS).alias(S.ORDER_TS),
        F.sum(amount).alias(S.NET_AMOUNT),
        F.sum(F.when(positive, amount).otherwise(F.lit(0.0))).alias(S.GROSS_AMOUNT),
        F.sum(F.when(amount < 0, -amount).otherwise(F.lit(0.0))).alias(S.RETURNED_AMOUNT),
        F.count(F.lit(1)).alias(S.LINES),
        F.sum(F.when(positive, F.col(S.QUANTITY))).alias(S.QUANTITY),
        F.min(S.CHANNEL).alias(S.CHANNEL),
        F.collect_set(F.when(positive, F.col(S.PRODUCT_CATEGORY))).alias(S.CATEGORIES),
    )
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
    )


def customer_days(orders: DataFrame) -> DataFrame:
    """Orders -> one row per customer and order day (columns of ``tables.CUSTOMER_DAYS_SCHEMA``)."""
    _require(orders, S.ORDERS, (S.CUSTOMER_ID, S.ORDER_DATE, S.NET_AMOUNT, S.IS_PURCHASE))
    bought = F.col(S.IS_PURCHASE)
    return (
        orders.groupBy(S.CUSTOMER_ID, S.ORDER_DATE)
        .agg(
            F.count(F.lit(1)).alias(S.ORDERS_COUNT),
            F.count_if(bought).alias(S.PURCHASES),
            F.sum(S.NET_AMOUNT).alias(S.NET_AMOUNT),
            F.sum(F.when(bought, F.col(S.NET_AMOUNT)).otherwise(F.lit(0.0))).alias(S.PURCHASE_VALUE),
        )
        .select(
            F.col(S.CUSTOMER_ID),
            F.col(S.ORDER_DATE),
            F.col(S.ORDERS_COUNT).cast("long").alias(S.ORDERS_COUNT),
            F.col(S.PURCHASES).cast("long").alias(S.PURCHASES),
            F.col(S.NET_AMOUNT).cast("double").alias(S.NET_AMOUNT),
            F.col(S.PURCHASE_VALUE).cast("double").alias(S.PURCHASE_VALUE),
        )
    )


def purchase_days(days: DataFrame) -> DataFrame:
    """The purchase occasions: ``customer_days`` rows with at least one purchase order."""
    return days.where(F.col(S.PURCHASES) > 0)
