"""Silver tables: one order and purchase definition, shared by RFM and the CLV summary."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import types as T

from segspark import features as FT
from segspark import silver
from segspark.clv import summary as CS
from segspark.config import PurchaseConfig
from segspark.tables import CUSTOMER_DAYS_SCHEMA, ORDERS_SCHEMA

AS_OF = dt.date(2025, 3, 31)
ts = dt.datetime
TX_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("order_id", T.StringType()),
        T.StructField("order_ts", T.TimestampType()),
        T.StructField("amount", T.DoubleType()),
        T.StructField("quantity", T.IntegerType()),
        T.StructField("product_category", T.StringType()),
        T.StructField("channel", T.StringType()),
    ]
)
LINES = [
    # A: two purchase orders on one day, a later order partly returned, a free order, a holdout order
    ("A", "a1", ts(2025, 1, 5, 9), 50.0, 1, "home", "web"),
    ("A", "a2", ts(2025, 1, 5, 18), 20.0, 2, "toys", None),
    ("A", "a3", ts(2025, 2, 1, 12), 80.0, 1, "home", "app"),
    ("A", "a3", ts(2025, 2, 3, 12), -30.0, -1, "home", "app"),
    ("A", "a4", ts(2025, 3, 1, 12), 0.0, 1, "gift", "web"),  # free: not a purchase
    ("A", "a5", ts(2025, 4, 2, 12), 40.0, 1, "home", "web"),  # after as_of: holdout
    # B: a fully returned order, then one purchase; a pure return order on another day
    ("B", "b1", ts(2025, 1, 10, 10), 25.0, 1, "toys", "store"),
    ("B", "b1", ts(2025, 1, 12, 10), -25.0, -1, "toys", "store"),
    ("B", "b2", ts(2025, 2, 20, 10), 60.0, 3, "toys", "store"),
    ("B", "b3", ts(2025, 3, 10, 10), -5.0, -1, "toys", "store"),
    # C: only a free order: never a purchase
    ("C", "c1", ts(2025, 3, 3, 10), 0.0, 1, None, "web"),
    # D: three purchase days, two orders on the last one
    ("D", "d1", ts(2024, 11, 1, 8), 10.0, None, "books", "web"),
    ("D", "d2", ts(2024, 12, 1, 8), 10.0, 1, "books", "web"),
    ("D", "d3", ts(2025, 3, 31, 8), 10.0, 1, "books", "web"),
    ("D", "d4", ts(2025, 3, 31, 23, 59, 59), 15.0, 1, "toys", "app"),
]


@pytest.fixture(scope="module")
def orders(spark):
    return silver.orders(spark.createDataFrame(LINES, TX_SCHEMA), PurchaseConfig()).cache()


def test_orders_match_their_declared_schema_and_hand_values(orders) -> None:
    assert orders.schema.fieldNames() == ORDERS_SCHEMA.fieldNames()
    assert [f.dataType for f in orders.schema] == [f.dataType for f in ORDERS_SCHEMA]
    got = {r["order_id"]: r.asDict() for r in orders.collect()}
    assert len(got) == 13
    a3 = got["a3"]
    assert (a3["net_amount"], a3["gross_amount"], a3["returned_amount"], a3["lines"]) == (50.0, 80.0, 30.0, 2)
    assert a3["order_date"] == dt.date(2025, 2, 1) and a3["is_purchase"] is True
    assert got["a4"]["is_purchase"] is False and got["b1"]["is_purchase"] is False
    assert got["b3"]["is_purchase"] is False and got["b3"]["returned_amount"] == 5.0
    assert got["b2"]["quantity"] == 3 and got["d1"]["quantity"] is None
    assert got["a2"]["channel"] is None and got["a2"]["categories"] == ["toys"]
    assert got["c1"]["categories"] == []


def test_customer_days_count_purchase_occasions(orders) -> None:
    days = silver.customer_days(orders)
    assert days.schema.fieldNames() == CUSTOMER_DAYS_SCHEMA.fieldNames()
    got = {(r["customer_id"], r["order_date"]): tuple(r)[2:] for r in days.collect()}
    assert got[("A", dt.date(2025, 1, 5))] == (2, 2, 70.0, 70.0)
    assert got[("A", dt.date(2025, 3, 1))] == (1, 0, 0.0, 0.0)
    assert got[("B", dt.date(2025, 3, 10))] == (1, 0, -5.0, 0.0)
    assert got[("D", dt.date(2025, 3, 31))] == (2, 2, 25.0, 25.0)


def test_rfm_frequency_is_clv_x_plus_one_per_customer(orders) -> None:
    """One purchase definition: RFM frequency (purchase days) = the BTYD repeat count x + 1, on data
    with returns, free orders, pure-return orders and multi-order days."""
    rfm = {r["customer_id"]: r for r in FT.rfm_features(orders, AS_OF).collect()}
    clv = {r["customer_id"]: r for r in CS.summary_statistics(silver.customer_days(orders), AS_OF).collect()}
    buyers = {c for c, r in rfm.items() if r["frequency"] > 0}
    assert buyers == set(clv) == {"A", "B", "D"}
    for c in buyers:
        assert rfm[c]["frequency"] == clv[c]["frequency"] + 1, c
    assert {c: rfm[c]["frequency"] for c in buyers} == {"A": 2, "B": 1, "D": 3}
    assert {c: rfm[c]["orders"] for c in buyers} == {"A": 3, "B": 1, "D": 4}
    assert rfm["C"]["frequency"] == 0 and "C" not in clv
