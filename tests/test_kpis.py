"""Segment KPIs (long format) and LTV:CAC on small hand-computed tables."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType, TimestampType

from segspark.behaviour import engagement_features
from segspark.context import materialize
from segspark.errors import ConfigError, InputError
from segspark.kpis import segment_kpis
from segspark.ltv_cac import LTV_CAC_COLUMNS, ltv_cac
from tests.conftest import orders_of

T = dt.datetime
D = dt.date

SEG_SCHEMA = StructType(
    [
        StructField("customer_id", StringType()),
        StructField("rfm_segment", StringType()),
        StructField("lifecycle_stage", StringType()),
        StructField("monetary", DoubleType()),
        StructField("frequency", LongType()),
        StructField("clv", DoubleType()),
        StructField("churn_risk", DoubleType()),
    ]
)


@pytest.fixture(scope="module")
def segments(spark):
    rows = [
        ("a", "Champions", "active", 300.0, 3, 500.0, 0.1),
        ("b", "Champions", "churned", 100.0, 1, 100.0, 0.9),
        ("c", "Lost", "at_risk", 50.0, 2, None, 0.5),
        ("e", "Lost", "reactivated", 50.0, 2, 50.0, 0.3),
        ("d", None, "prospect", None, None, None, None),  # a prospect: no RFM segment, no purchases
    ]
    return spark.createDataFrame(rows, SEG_SCHEMA)


def _kpis(df):
    return {(r["segment_type"], r["segment"], r["kpi"]): r["value"] for r in df.collect()}


def test_segment_kpis_hand_computed(spark, segments):
    as_of = D(2025, 6, 30)
    events = spark.createDataFrame(
        [
            ("a", T(2025, 6, 29, 9), "session_start"),
            ("a", T(2025, 6, 20, 9), "session_start"),
            ("a", T(2025, 5, 1, 9), "session_start"),
            ("a", T(2025, 5, 2, 9), "session_start"),
            ("a", T(2025, 5, 2, 9, 5), "purchase"),
            ("c", T(2025, 5, 1, 9), "session_start"),
            ("c", T(2025, 5, 1, 10), "session_start"),
            ("c", T(2025, 5, 1, 10, 5), "purchase"),
        ],
        "customer_id string, event_ts timestamp, event_type string",
    )
    got = _kpis(segment_kpis(segments, engagement_features(events, as_of)))
    champions = {
        "customers": 2,
        "customer_share": 2 / 5,
        "revenue": 400,
        "revenue_share": 400 / 500,
        "avg_order_value": 400 / 4,
        "orders_per_customer": 2,
        "repeat_purchase_rate": 1 / 2,
        "retention_rate": 1 / 2,
        "churn_rate": 1 / 2,
        "avg_clv": 300,
        "avg_churn_risk": 0.5,
        "conversion_rate_90d": 1 / 4,
        "sessions_per_customer_30d": 1,
        "active_days_per_customer_30d": 1,
        "engaged_share_30d": 1 / 2,
    }
    for kpi, want in champions.items():
        assert got[("rfm_segment", "Champions", kpi)] == pytest.approx(want), kpi
    assert got[("rfm_segment", "Lost", "retention_rate")] == pytest.approx(0.5)  # reactivated counts
    assert got[("rfm_segment", "Lost", "avg_clv")] == pytest.approx(50.0)  # unknown CLV is skipped
    assert got[("rfm_segment", "Lost", "conversion_rate_90d")] == pytest.approx(0.5)
    # the prospect has no RFM segment: reported as 'unassigned', with undefined ratios left null
    assert got[("rfm_segment", "unassigned", "customers")] == 1
    assert got[("rfm_segment", "unassigned", "orders_per_customer")] == 0
    assert got[("rfm_segment", "unassigned", "avg_order_value")] is None
    assert got[("rfm_segment", "unassigned", "retention_rate")] is None
    assert got[("lifecycle_stage", "prospect", "customer_share")] == pytest.approx(0.2)
    total = {k[2]: v for k, v in got.items() if k[:2] == ("all", "all")}
    assert total["avg_order_value"] == pytest.approx(500 / 8)
    assert total["retention_rate"] == pytest.approx(2 / 4) and total["churn_rate"] == pytest.approx(1 / 4)
    assert total["avg_clv"] == pytest.approx(650 / 3) and total["avg_churn_risk"] == pytest.approx(0.45)
    # shares add up to one within each segment type
    for st in ("rfm_segment", "lifecycle_stage"):
        assert sum(v for k, v in got.items() if k[0] == st and k[2] == "customer_share") == pytest.approx(1.0)
    assert {k[0] for k in got} == {"all", "rfm_segment", "lifecycle_stage"}


def test_segment_kpis_leave_out_what_cannot_be_computed(segments):
    plain = segments.select("customer_id", "rfm_segment", "monetary", "frequency")
    kpis = {k[2] for k in _kpis(segment_kpis(plain, None))}
    assert kpis == {
        "customers",
        "customer_share",
        "revenue",
        "revenue_share",
        "avg_order_value",
        "orders_per_customer",
        "repeat_purchase_rate",
    }
    with pytest.raises(InputError, match="monetary"):
        segment_kpis(segments.drop("monetary"), None)


@pytest.fixture(scope="module")
def ltv_inputs(spark):
    tx_schema = StructType(
        [
            StructField("customer_id", StringType()),
            StructField("order_id", StringType()),
            StructField("order_ts", TimestampType()),
            StructField("amount", DoubleType()),
            StructField("channel", StringType()),
        ]
    )
    tx = [
        ("u1", "1a", T(2025, 1, 10, 9), 100.0, "web"),
        ("u1", "1b", T(2025, 3, 9, 9), 50.0, "web"),  # inside the 3-month window [Jan 10, Apr 10)
        ("u1", "1c", T(2025, 4, 10, 9), 70.0, "web"),  # first day after the window
        ("u2", "2a", T(2025, 1, 20, 9), 40.0, "web"),
        ("u2", "2a", T(2025, 1, 25, 9), -10.0, "web"),  # return: net 30
        ("u3", "3a", T(2025, 2, 5, 9), 20.0, "web"),
        ("u4", "4a", T(2025, 3, 31, 9), 60.0, "app"),  # window [Mar 31, Jun 30): just observed in full
        ("u4", "4b", T(2025, 6, 30, 9), 5.0, "app"),  # outside the window
        ("u5", "5a", T(2025, 4, 2, 9), 80.0, "web"),  # window ends Jul 1: not yet observed in full
        ("u6", "6a", T(2025, 2, 14, 9), 10.0, "web"),  # no CRM channel: first order's channel (web)
        ("u7", "7a", T(2025, 7, 2, 9), 10.0, "web"),  # after as_of
    ]
    crm = spark.createDataFrame(
        [
            ("u1", "paid_search"),
            ("u2", "paid_search"),
            ("u3", "organic"),
            ("u4", "social"),
            ("u5", "paid_search"),
            ("u6", None),
            ("p", "social"),
        ],
        "customer_id string, acquisition_channel string",
    )
    spend = spark.createDataFrame(
        [
            (D(2025, 1, 1), "paid_search", 200.0),
            (D(2025, 1, 1), "paid_search", 100.0),  # two rows for one month add up
            (D(2025, 2, 1), "paid_search", 100.0),  # spend, nobody acquired that month
            (D(2025, 4, 1), "paid_search", 160.0),
            (D(2025, 2, 1), "organic", 0.0),  # known zero spend
            (D(2025, 7, 1), "paid_search", 999.0),  # after as_of
            (D(2025, 3, 1), None, 50.0),  # no channel: ignored
        ],
        "month date, channel string, spend double",
    )
    segments = spark.createDataFrame(
        [
            ("u1", "Champions", 200.0),
            ("u2", "Champions", 100.0),
            ("u3", "Lost", None),
            ("u4", "Lost", None),
            ("u5", "New", None),
            ("u6", "New", None),
            ("p", None, None),
        ],
        "customer_id string, rfm_segment string, clv double",
    )
    return orders_of(spark.createDataFrame(tx, tx_schema)), crm, spend, segments


def _rows(df):
    return {(r["level"], r["segment_type"], r["segment"], r["month"]): r.asDict() for r in df.collect()}


def test_ltv_cac_hand_computed(ltv_inputs, capsys):
    tx, crm, spend, segments = ltv_inputs
    out = ltv_cac(tx, crm, spend, segments, D(2025, 6, 30), window_months=3)
    assert out.columns == list(LTV_CAC_COLUMNS)
    rows = _rows(out)
    ch = "acquisition_channel"

    jan = rows[("channel_month", ch, "paid_search", D(2025, 1, 1))]
    assert (jan["new_customers"], jan["spend"], jan["cac"], jan["cac_status"]) == (2, 300.0, 150.0, "known")
    assert (jan["ltv_customers"], jan["ltv_realized"]) == (2, pytest.approx((150 + 30) / 2))
    feb = rows[("channel_month", ch, "paid_search", D(2025, 2, 1))]
    assert (feb["new_customers"], feb["cac"], feb["cac_status"]) == (0, None, "no_new_customers")
    apr = rows[("channel_month", ch, "paid_search", D(2025, 4, 1))]
    assert (apr["cac"], apr["ltv_customers"], apr["ltv_realized"]) == (160.0, 0, None)
    assert ("channel_month", ch, "paid_search", D(2025, 7, 1)) not in rows

    paid = rows[("channel", ch, "paid_search", None)]
    assert (paid["new_customers"], paid["spend"]) == (3, 560.0)
    assert paid["cac"] == pytest.approx(560 / 3)
    assert paid["ltv_realized"] == pytest.approx(90.0)
    assert paid["ltv_to_cac"] == pytest.approx(90 / (560 / 3))
    assert paid["ltv_predicted"] == pytest.approx(150.0)  # mean CLV of u1, u2 (u5 has none)
    organic = rows[("channel", ch, "organic", None)]
    assert (organic["cac"], organic["cac_status"], organic["ltv_realized"]) == (0.0, "known", 20.0)
    assert organic["ltv_to_cac"] is None  # free customers: no finite ratio
    for unknown in ("social", "web"):  # no spend rows: CAC unknown, never 0
        r = rows[("channel", ch, unknown, None)]
        assert (r["cac"], r["spend"], r["cac_status"], r["cac_coverage"]) == (
            None,
            None,
            "unknown_spend",
            0.0,
        )
    assert rows[("channel", ch, "social", None)]["ltv_realized"] == pytest.approx(60.0)

    champions = rows[("segment", "rfm_segment", "Champions", None)]
    assert champions["cac"] == pytest.approx(560 / 3) and champions["cac_status"] == "known"
    lost = rows[("segment", "rfm_segment", "Lost", None)]  # organic (0) + social (unknown)
    assert (lost["cac"], lost["cac_coverage"], lost["cac_status"]) == (0.0, 0.5, "partial_spend")
    assert lost["ltv_realized"] == pytest.approx(40.0)
    total = rows[("segment", "all", "all", None)]
    assert total["new_customers"] == 6  # the prospect p never bought
    assert total["cac"] == pytest.approx(560 / 4)  # u1, u2, u5 at 560/3 and u3 at 0
    assert (total["ltv_customers"], total["ltv_realized"]) == (5, pytest.approx(270 / 5))
    assert ("segment", "rfm_segment", None, None) not in rows

    # the pipeline keeps the customer level (computed once, one row per buyer): the same table, and
    # every aggregate of the query reads the kept frame: the plan holds no order, where a persisted
    # frame served only the first of the WITH list's references and the others joined the orders again
    kept: list = []

    def keep(df):
        kept.append(materialize(df, for_query=True))
        return kept[-1]

    out_kept = ltv_cac(tx, crm, spend, segments, D(2025, 6, 30), window_months=3, keep=keep)
    assert _rows(out_kept) == rows
    [base] = kept
    assert base.count() == 6  # the six buyers (the prospect p never bought)
    assert "order_ts" in _plan(capsys, ltv_cac(tx, crm, spend, segments, D(2025, 6, 30), window_months=3))
    assert "order_ts" not in _plan(capsys, out_kept)


def _plan(capsys, df) -> str:
    """The text of ``df.explain()`` (its physical plan)."""
    capsys.readouterr()
    df.explain()
    return capsys.readouterr().out


def test_ltv_cac_without_spend_reports_unknown(ltv_inputs):
    tx, crm, _, _ = ltv_inputs
    rows = ltv_cac(tx, crm, None, None, D(2025, 6, 30), window_months=3).collect()
    assert rows and all(r["cac"] is None and r["cac_status"] == "unknown_spend" for r in rows)
    assert {r["level"] for r in rows} == {"channel_month", "channel"}
    with pytest.raises(ConfigError):
        ltv_cac(tx, crm, None, None, D(2025, 6, 30), window_months=0)
