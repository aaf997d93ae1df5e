"""Behaviour, engagement and demographic features on small hand-computed tables."""

from __future__ import annotations

import datetime as dt
import statistics

import pytest
from pyspark.sql.types import (
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from segspark import behaviour as B
from segspark.errors import InputError
from tests.conftest import orders_of

AS_OF = dt.date(2025, 6, 30)
T = dt.datetime

TX_SCHEMA = StructType(
    [
        StructField("customer_id", StringType()),
        StructField("order_id", StringType()),
        StructField("order_ts", TimestampType()),
        StructField("amount", DoubleType()),
        StructField("quantity", IntegerType()),
        StructField("product_category", StringType()),
        StructField("channel", StringType()),
        StructField("currency", StringType()),
    ]
)
EV_SCHEMA = StructType(
    [
        StructField("customer_id", StringType()),
        StructField("event_ts", TimestampType()),
        StructField("event_type", StringType()),
        StructField("channel", StringType()),
        StructField("device", StringType()),
    ]
)


@pytest.fixture(scope="module")
def transactions(spark):
    rows = [
        # A: four purchases, a return line, a null quantity, a null channel, a null category
        ("A", "a1", T(2025, 1, 10, 9), 30.0, 2, "home", "web", "USD"),
        ("A", "a1", T(2025, 1, 10, 9), 20.0, 1, "toys", "web", "USD"),
        ("A", "a2", T(2025, 3, 1, 12), 40.0, 1, "home", "app", "USD"),
        ("A", "a2", T(2025, 3, 5, 12), -10.0, -1, "home", "app", "USD"),
        ("A", "a3", T(2025, 5, 1, 8), 25.0, None, "books", None, "USD"),
        ("A", "a4", T(2025, 6, 30, 23, 59), 15.0, 1, None, "store", "USD"),  # on as_of: included
        ("A", "a5", T(2025, 7, 1, 0, 1), 99.0, 1, "home", "web", "USD"),  # after as_of: holdout
        ("A", "a6", T(2025, 4, 1, 8), 10.0, 1, "garden", "web", "USD"),  # fully returned: no purchase
        ("A", "a6", T(2025, 4, 2, 8), -10.0, -1, "garden", "web", "USD"),
        # B: one purchase through a channel outside the list
        ("B", "b1", T(2024, 12, 1, 8), 5.0, 1, "toys", "kiosk", "USD"),
        # C: two purchases on the same day
        ("C", "c1", T(2025, 6, 1, 8), 10.0, 1, "toys", "web", "USD"),
        ("C", "c2", T(2025, 6, 1, 18), 10.0, 1, "toys", "web", "USD"),
        # D: only a fully returned order; E: only an order after as_of
        ("D", "d1", T(2025, 2, 1, 8), 10.0, 1, "toys", "web", "USD"),
        ("D", "d1", T(2025, 2, 3, 8), -10.0, -1, "toys", "web", "USD"),
        ("E", "e1", T(2025, 7, 2, 8), 10.0, 1, "toys", "web", "USD"),
    ]
    return spark.createDataFrame(rows, TX_SCHEMA)


@pytest.fixture(scope="module")
def events(spark):
    rows = [
        ("A", T(2025, 6, 30, 10), "session_start", "web", "mobile"),
        ("A", T(2025, 6, 30, 10, 5), "page_view", "web", "mobile"),
        ("A", T(2025, 6, 30, 10, 6), "page_view", "web", "mobile"),
        ("A", T(2025, 6, 30, 10, 9), "purchase", "web", "mobile"),
        ("A", T(2025, 6, 1, 10), "session_start", "web", "mobile"),  # 29 days before: in 30d
        ("A", T(2025, 5, 31, 10), "session_start", "app", None),  # 30 days before: 90d only
        ("A", T(2025, 6, 15, 10), "feature_used", "app", None),
        ("A", T(2025, 4, 2, 10), "login", "app", None),  # 89 days before: in 90d
        ("A", T(2025, 4, 1, 10), "add_to_cart", "app", None),  # 90 days before: outside 90d
        ("A", T(2025, 7, 1, 10), "checkout", "web", None),  # after as_of
        ("B", T(2025, 1, 1, 10), "login", "web", None),
        ("F", T(2025, 6, 20, 10), "page_view", "web", None),
        (None, T(2025, 6, 20, 10), "session_start", "web", None),  # anonymous: ignored
    ]
    return spark.createDataFrame(rows, EV_SCHEMA)


def _by_id(df):
    return {r["customer_id"]: r.asDict() for r in df.collect()}


def test_behaviour_features_hand_computed(transactions):
    out = B.behaviour_features(orders_of(transactions), AS_OF, channels=("web", "app", "store"))
    assert out.columns == [
        "customer_id",
        B.MEAN_INTERPURCHASE_DAYS,
        B.STD_INTERPURCHASE_DAYS,
        B.LAST_INTERPURCHASE_DAYS,
        B.ORDERS_LAST_90D,
        B.ORDERS_PREV_90D,
        B.TREND_90D,
        B.TREND_INDEX_90D,
        B.CATEGORY_BREADTH,
        B.AVG_BASKET_SIZE,
        "channel_share_web",
        "channel_share_app",
        "channel_share_store",
        B.CHANNEL_SHARE_OTHER,
    ]
    rows = _by_id(out)
    assert set(rows) == {"A", "B", "C"}  # D never bought (net 0), E only after as_of

    a = rows["A"]
    gaps = [50, 61, 60]  # Jan 10 -> Mar 1 -> May 1 -> Jun 30
    assert a[B.MEAN_INTERPURCHASE_DAYS] == pytest.approx(statistics.mean(gaps))
    assert a[B.STD_INTERPURCHASE_DAYS] == pytest.approx(statistics.stdev(gaps))
    assert a[B.LAST_INTERPURCHASE_DAYS] == 60
    assert (a[B.ORDERS_LAST_90D], a[B.ORDERS_PREV_90D]) == (2, 2)  # ages 0, 60 | 121, 171
    assert a[B.TREND_90D] == pytest.approx(1.0)
    assert a[B.TREND_INDEX_90D] == pytest.approx(0.0)
    assert a[B.CATEGORY_BREADTH] == 3  # home, toys, books; not the returned garden order
    assert a[B.AVG_BASKET_SIZE] == pytest.approx((3 + 1 + 1) / 3)  # a3 has no quantity
    assert [a[f"channel_share_{c}"] for c in ("web", "app", "store")] == pytest.approx([1 / 3] * 3)
    assert a[B.CHANNEL_SHARE_OTHER] == pytest.approx(0.0)

    b = rows["B"]
    assert b[B.MEAN_INTERPURCHASE_DAYS] is None and b[B.STD_INTERPURCHASE_DAYS] is None
    assert b[B.LAST_INTERPURCHASE_DAYS] is None
    assert (b[B.ORDERS_LAST_90D], b[B.ORDERS_PREV_90D]) == (0, 0)
    assert b[B.TREND_90D] is None and b[B.TREND_INDEX_90D] is None
    assert b[B.CHANNEL_SHARE_OTHER] == pytest.approx(1.0) and b["channel_share_web"] == 0.0

    c = rows["C"]
    assert c[B.MEAN_INTERPURCHASE_DAYS] == 0.0 and c[B.LAST_INTERPURCHASE_DAYS] == 0
    assert c[B.STD_INTERPURCHASE_DAYS] is None
    assert c[B.TREND_90D] is None  # nothing in the previous window
    assert c[B.TREND_INDEX_90D] == pytest.approx(1.0)


def test_behaviour_features_without_optional_columns(transactions):
    bare = transactions.select("customer_id", "order_id", "order_ts", "amount")
    rows = _by_id(B.behaviour_features(orders_of(bare), AS_OF, channels=("web",)))
    assert rows["A"][B.AVG_BASKET_SIZE] is None
    assert rows["A"][B.CATEGORY_BREADTH] == 0
    assert rows["A"]["channel_share_web"] is None  # no channel known: shares unknown, not 0
    with pytest.raises(InputError, match=r"'transactions': column\(s\) order_id missing"):
        orders_of(bare.drop("order_id"))


def test_engagement_features_windows(events):
    rows = _by_id(B.engagement_features(events, AS_OF))
    assert set(rows) == {"A", "B", "F"}
    a = rows["A"]
    assert a[B.HAS_EVENTS] is True
    assert (a[B.SESSIONS_30D], a[B.SESSIONS_90D]) == (2, 3)
    assert (a[B.ACTIVE_DAYS_30D], a[B.ACTIVE_DAYS_90D]) == (3, 5)
    assert (a[B.PAGE_VIEWS_90D], a[B.ADD_TO_CART_90D], a[B.CHECKOUTS_90D]) == (2, 0, 0)
    assert (a[B.PURCHASES_90D], a[B.FEATURE_USES_90D]) == (1, 1)
    assert a[B.CONVERSION_RATE_90D] == pytest.approx(1 / 3)
    assert (a[B.DAYS_SINCE_LAST_LOGIN], a[B.DAYS_SINCE_LAST_VISIT]) == (89, 0)
    b = rows["B"]
    assert all(b[c] == 0 for c in B.ENGAGEMENT_COUNTS)
    assert b[B.CONVERSION_RATE_90D] is None
    assert (b[B.DAYS_SINCE_LAST_LOGIN], b[B.DAYS_SINCE_LAST_VISIT]) == (180, 180)
    f = rows["F"]
    assert (f[B.SESSIONS_90D], f[B.PAGE_VIEWS_90D], f[B.ACTIVE_DAYS_30D]) == (0, 1, 1)
    assert f[B.DAYS_SINCE_LAST_LOGIN] is None and f[B.DAYS_SINCE_LAST_VISIT] == 10


def test_with_engagement_rule_for_customers_without_events(spark, events):
    feats = spark.createDataFrame(
        [("A", 1), ("B", 2), ("Z", 3), ("F", None)],
        StructType([StructField("customer_id", StringType()), StructField("frequency", LongType())]),
    )
    joined = B.with_engagement(feats, B.engagement_features(events, AS_OF))
    assert joined.columns == ["customer_id", "frequency", *B.ENGAGEMENT_COLUMNS]
    rows = _by_id(joined)
    assert set(rows) == {"A", "B", "Z", "F"}  # nobody dropped
    z = rows["Z"]
    assert z[B.HAS_EVENTS] is False
    assert all(z[c] == 0 for c in B.ENGAGEMENT_COUNTS)
    assert all(z[c] is None for c in (*B.ENGAGEMENT_RATES, *B.ENGAGEMENT_DAYS))
    assert rows["A"][B.SESSIONS_90D] == 3

    unknown = B.with_engagement(feats, None)
    assert unknown.columns == joined.columns
    assert dict(unknown.dtypes) == dict(joined.dtypes)
    assert all(
        v is None for r in unknown.collect() for k, v in r.asDict().items() if k in B.ENGAGEMENT_COLUMNS
    )


def test_with_demographics_allow_list(spark):
    feats = spark.createDataFrame([("A", 1), ("G", 2)], "customer_id string, frequency long")
    crm = spark.createDataFrame(
        [
            ("A", T(2024, 1, 1), "email", "US", "female", "ava@example.com"),
            ("P", None, None, "DE", None, "x@y.z"),
        ],
        "customer_id string, signup_ts timestamp, acquisition_channel string, country string,"
        " gender string, email string",
    )
    out = B.with_demographics(feats, crm)
    assert out.columns == ["customer_id", "frequency", *B.DEMOGRAPHIC_COLUMNS]
    assert "email" not in out.columns
    rows = _by_id(out)
    assert set(rows) == {"A", "G"}  # CRM-only customers are added by the lifecycle stage, not here
    assert (rows["A"]["country"], rows["A"]["acquisition_channel"], rows["A"]["age_band"]) == (
        "US",
        "email",
        None,
    )
    assert rows["G"]["country"] is None
    assert dict(B.with_demographics(feats, None).dtypes) == dict(out.dtypes)
