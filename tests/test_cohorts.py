"""Cohort retention against a hand-computed matrix, and the SQL files the pipeline runs."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pyspark.sql.types import DoubleType, StringType, StructField, StructType, TimestampType

from segspark import cohorts as C
from segspark.errors import InputError, SegsparkError
from segspark.sql import bind_views, load_sql, run_sql, sql_names
from tests.conftest import orders_of

AS_OF = dt.date(2025, 3, 15)
T = dt.datetime
D = dt.date

TX_SCHEMA = StructType(
    [
        StructField("customer_id", StringType()),
        StructField("order_id", StringType()),
        StructField("order_ts", TimestampType()),
        StructField("amount", DoubleType()),
        StructField("channel", StringType()),
    ]
)


@pytest.fixture(scope="module")
def cohort_table(spark):
    tx = [
        ("u1", "o1", T(2025, 1, 3, 10), 100.0, "web"),
        ("u1", "o2", T(2025, 2, 10, 10), 50.0, "web"),
        ("u1", "o2", T(2025, 2, 12, 10), -20.0, "web"),  # partial return: net 30
        ("u1", "o3", T(2025, 3, 15, 23, 59), 10.0, "web"),  # on as_of: counted
        ("u2", "o4", T(2025, 1, 31, 23, 59), 40.0, "app"),  # last minute of January (UTC)
        ("u2", "o5", T(2025, 3, 1, 10), 20.0, "app"),
        ("u2", "o5", T(2025, 3, 2, 10), -20.0, "app"),  # fully returned: not a purchase, revenue 0
        ("u3", "o6", T(2025, 2, 28, 10), 60.0, None),
        ("u3", "o7", T(2025, 2, 28, 11), 5.0, None),  # second order, same month: active once
        ("u4", "o8", T(2024, 12, 20, 10), -5.0, "store"),  # a return before the first purchase: ignored
        ("u4", "o9", T(2025, 2, 2, 10), 25.0, "store"),
        ("u5", "o10", T(2025, 3, 16, 0, 1), 70.0, "web"),  # after as_of: holdout
        ("u6", "o11", T(2025, 1, 15, 10), 30.0, "web"),
        ("u6", "o11", T(2025, 1, 16, 10), -30.0, "web"),  # never a purchase: no cohort
    ]
    crm = spark.createDataFrame(
        [("u1", "email"), ("u2", None), ("u4", "social"), ("zz", "email")],
        "customer_id string, acquisition_channel string",
    )
    return C.cohort_retention(orders_of(spark.createDataFrame(tx, TX_SCHEMA)), crm, AS_OF).cache()


def test_cohort_retention_hand_computed(cohort_table):
    assert cohort_table.columns == list(C.COHORT_COLUMNS)
    got = {
        (r[C.DIMENSION], r[C.DIMENSION_VALUE], r[C.COHORT_MONTH], r[C.MONTHS_SINCE_FIRST]): (
            r[C.COHORT_SIZE],
            r[C.ACTIVE_CUSTOMERS],
            r[C.RETENTION_RATE],
            r[C.REVENUE],
            r[C.CUMULATIVE_REVENUE_PER_CUSTOMER],
        )
        for r in cohort_table.collect()
    }
    jan, feb = D(2025, 1, 1), D(2025, 2, 1)
    expected = {
        # January: u1, u2.  Feb: u3, u4.  (size, active, retention, revenue, cumulative per customer)
        ("all", "all", jan, 0): (2, 2, 1.0, 140.0, 70.0),
        ("all", "all", jan, 1): (2, 1, 0.5, 30.0, 85.0),
        ("all", "all", jan, 2): (2, 1, 0.5, 10.0, 90.0),
        ("all", "all", feb, 0): (2, 2, 1.0, 90.0, 45.0),
        ("all", "all", feb, 1): (2, 0, 0.0, 0.0, 45.0),
        # CRM channel; u2 has none in the CRM -> its first order's channel; u3 neither -> unknown
        ("acquisition_channel", "email", jan, 0): (1, 1, 1.0, 100.0, 100.0),
        ("acquisition_channel", "email", jan, 1): (1, 1, 1.0, 30.0, 130.0),
        ("acquisition_channel", "email", jan, 2): (1, 1, 1.0, 10.0, 140.0),
        ("acquisition_channel", "app", jan, 0): (1, 1, 1.0, 40.0, 40.0),
        ("acquisition_channel", "app", jan, 1): (1, 0, 0.0, 0.0, 40.0),
        ("acquisition_channel", "app", jan, 2): (1, 0, 0.0, 0.0, 40.0),
        ("acquisition_channel", "unknown", feb, 0): (1, 1, 1.0, 65.0, 65.0),
        ("acquisition_channel", "unknown", feb, 1): (1, 0, 0.0, 0.0, 65.0),
        ("acquisition_channel", "social", feb, 0): (1, 1, 1.0, 25.0, 25.0),
        ("acquisition_channel", "social", feb, 1): (1, 0, 0.0, 0.0, 25.0),
    }
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        assert got[key] == pytest.approx(want), key


def test_cohort_matrix_pivot(cohort_table):
    matrix = C.cohort_matrix(cohort_table)
    want = pd.DataFrame(
        {0: [1.0, 1.0], 1: [0.5, 0.0], 2: [0.5, float("nan")]},
        index=pd.Index([D(2025, 1, 1), D(2025, 2, 1)], name=C.COHORT_MONTH),
    )
    want.columns.name = C.MONTHS_SINCE_FIRST
    pd.testing.assert_frame_equal(matrix, want, check_dtype=False, check_column_type=False)
    newest = C.cohort_matrix(
        cohort_table,
        value=C.REVENUE,
        dimension="acquisition_channel",
        dimension_value="social",
        last_cohorts=1,
    )
    assert newest.index.tolist() == [D(2025, 2, 1)] and newest.iloc[0].tolist() == [25.0, 0.0]
    with pytest.raises(InputError):
        C.cohort_matrix(cohort_table, value="customer_id")


def test_without_crm_the_first_order_channel_is_used(spark):
    tx = spark.createDataFrame([("u1", "o1", T(2025, 1, 3), 10.0, "web")], TX_SCHEMA)
    rows = C.cohort_retention(orders_of(tx), None, D(2025, 1, 31)).collect()
    assert {(r[C.DIMENSION], r[C.DIMENSION_VALUE]) for r in rows} == {
        ("all", "all"),
        ("acquisition_channel", "web"),
    }


def test_sql_files_ship_with_the_package():
    assert {"cohort_retention", "segment_kpis", "ltv_cac"} <= set(sql_names())
    text = load_sql("cohort_retention")
    # the customer-level silver tables, never the orders
    assert "FROM customer_state" in text and "FROM customer_months" in text and ":as_of_date" in text
    assert "FROM orders" not in text
    with pytest.raises(SegsparkError, match="no SQL file"):
        load_sql("nope")


def test_bind_views_reads_every_input_and_escapes_braces(spark):
    assert bind_views("SELECT '{x}' FROM t JOIN u ON t.a = u.a", {"t": 1, "u": 2}) == (
        "SELECT '{{x}}' FROM {t} JOIN {u} ON t.a = u.a"
    )
    with pytest.raises(SegsparkError, match="never reads the input view 'missing'"):
        bind_views("SELECT 1 FROM t", {"t": 1, "missing": 2})
    # inputs are bound per query, not left behind as session-wide temp views
    out = run_sql(spark, "segment_kpis", {"segment_members": _members(spark)}, _flags()).collect()
    assert {r["kpi"] for r in out} >= {"customers", "retention_rate"}
    assert "avg_clv" not in {r["kpi"] for r in out}
    assert not spark.catalog.tableExists("segment_members")


def _members(spark):
    return spark.createDataFrame(
        [("all", "all", "c1", 10.0, 1, "active", None, None, 0, 0, 0, 0)],
        "segment_type string, segment string, customer_id string, monetary double, frequency long,"
        " lifecycle_stage string, clv double, churn_risk double, sessions_30d long, active_days_30d long,"
        " sessions_90d long, purchase_events_90d long",
    )


def _flags():
    return {"has_lifecycle": True, "has_clv": False, "has_churn": False, "has_events": False}
