"""Lifecycle stages (one customer per rule, plus boundaries) and segment transitions across runs."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from segspark import lifecycle as L
from segspark.config import LifecycleConfig, load_settings
from segspark.errors import ConfigError, InputError
from tests.conftest import orders_of

AS_OF = dt.date(2025, 6, 30)
CFG = LifecycleConfig(
    new_days=60,
    at_risk_days=120,
    churned_days=365,
    at_risk_gap_factor=2.0,
    at_risk_min_days=30,
    reactivation_gap_days=180,
)  # the defaults, spelt out so the expectations below read against them

FEATURE_SCHEMA = StructType(
    [
        StructField("customer_id", StringType()),
        StructField("frequency", LongType()),
        StructField("recency_days", IntegerType()),
        StructField("first_order_ts", TimestampType()),
        StructField("mean_interpurchase_days", DoubleType()),
        StructField("last_interpurchase_days", IntegerType()),
        StructField("monetary", DoubleType()),
    ]
)


def _ago(days: int) -> dt.datetime:
    return dt.datetime.combine(AS_OF - dt.timedelta(days=days), dt.time(15, 0))


# customer -> (frequency, recency, first order days ago, mean gap, last gap, expected stage)
CASES = {
    "zero_orders": (0, 10, 10, None, None, "prospect"),
    "new_59": (1, 59, 59, None, None, "new"),
    "new_edge_60": (1, 60, 60, None, None, "active"),  # first order exactly new_days ago: no longer new
    "new_with_repeat": (3, 2, 20, 9.0, 5, "new"),
    "churned_366": (4, 366, 900, 100.0, 100, "churned"),
    "churn_edge_365": (4, 365, 900, 100.0, 100, "at_risk"),
    "at_risk_121": (2, 121, 400, None, 279, "at_risk"),  # threshold beats the reactivation rule
    "risk_edge_120": (3, 120, 500, 100.0, 100, "active"),  # 120 > max(2 x 100, 30)? no
    "own_gap_41": (5, 41, 300, 20.0, 20, "at_risk"),  # 41 > 2 x 20
    "own_gap_edge_40": (5, 40, 300, 20.0, 20, "active"),
    "floor_31": (9, 31, 300, 5.0, 5, "at_risk"),  # 2 x 5 = 10, floor 30
    "floor_edge_30": (9, 30, 300, 5.0, 5, "active"),
    "reactivated_181": (3, 10, 700, 200.0, 181, "reactivated"),
    "reactivated_edge_180": (3, 10, 700, 200.0, 180, "active"),
    "single_old_buyer": (1, 100, 100, None, None, "active"),
    "not_in_crm": (2, 5, 300, 50.0, 50, "active"),
}


@pytest.fixture(scope="module")
def features(spark):
    rows = [(cid, f, r, _ago(first), mean, last, 10.0) for cid, (f, r, first, mean, last, _) in CASES.items()]
    rows.append(("null_frequency", None, None, None, None, None, None))
    return spark.createDataFrame(rows, FEATURE_SCHEMA)


@pytest.fixture(scope="module")
def crm(spark):
    ids = [c for c in CASES if c != "not_in_crm"]
    rows = [(c, _ago(400)) for c in ids]
    rows += [
        ("crm_only", _ago(3)),  # known, never bought
        ("crm_no_signup", None),  # signup unknown: still known
        ("signs_up_later", dt.datetime(2025, 7, 1, 0, 0)),  # not yet a customer on as_of
        ("signed_up_on_as_of", dt.datetime(2025, 6, 30, 23, 59)),
        (None, _ago(1)),
    ]
    return spark.createDataFrame(
        rows,
        StructType([StructField("customer_id", StringType()), StructField("signup_ts", TimestampType())]),
    )


def test_one_customer_per_rule_and_boundaries(features, crm):
    out = L.with_lifecycle_stage(features, crm, AS_OF, CFG)
    assert out.columns == [*features.columns, L.LIFECYCLE_STAGE]
    rows = out.collect()
    stages = {r["customer_id"]: r[L.LIFECYCLE_STAGE] for r in rows}
    expected = {cid: case[-1] for cid, case in CASES.items()}
    expected |= {
        "null_frequency": "prospect",
        "crm_only": "prospect",
        "crm_no_signup": "prospect",
        "signed_up_on_as_of": "prospect",
    }
    assert stages == expected  # signs_up_later and the null id are not customers yet
    assert len(rows) == len(expected)  # exactly one row (and one stage) per customer
    assert set(stages.values()) == set(L.LIFECYCLE_STAGES)  # every stage is exercised


def test_without_crm_and_missing_columns(features):
    out = L.with_lifecycle_stage(features, None, AS_OF, CFG)
    assert out.count() == features.count()
    with pytest.raises(InputError, match="mean_interpurchase_days"):
        L.with_lifecycle_stage(features.drop("mean_interpurchase_days"), None, AS_OF, CFG)


def test_stage_thresholds_must_be_ordered():
    with pytest.raises(ConfigError, match="churned_days"):
        load_settings(overrides=["lifecycle.at_risk_days=400"])
    assert load_settings(overrides=["lifecycle.new_days=30"]).lifecycle.new_days == 30


SEG_SCHEMA = "customer_id string, rfm_segment string, lifecycle_stage string"


def _transitions(df):
    return {(r["dimension"], r["from_segment"], r["to_segment"]): r["customers"] for r in df.collect()}


def test_transitions_first_run_is_the_current_distribution(spark):
    current = spark.createDataFrame(
        [("a", "Champions", "active"), ("b", "Champions", "new"), ("c", None, "prospect")], SEG_SCHEMA
    )
    got = _transitions(L.segment_transitions(current, None))
    assert got == {
        ("rfm_segment", None, "Champions"): 2,
        ("lifecycle_stage", None, "active"): 1,
        ("lifecycle_stage", None, "new"): 1,
        ("lifecycle_stage", None, "prospect"): 1,
    }


def test_transitions_across_two_runs_on_changed_data(spark):
    tx_schema = "customer_id string, order_id string, order_ts timestamp, amount double"
    tx = [
        ("a", "a1", dt.datetime(2025, 1, 5), 10.0),
        ("a", "a2", dt.datetime(2025, 2, 5), 10.0),
        ("b", "b1", dt.datetime(2025, 1, 20), 10.0),
        ("c", "c1", dt.datetime(2024, 6, 1), 10.0),
        ("c", "c2", dt.datetime(2025, 5, 1), 10.0),  # c comes back after 334 days
        ("d", "d1", dt.datetime(2025, 4, 15), 10.0),  # d's first purchase falls between the runs
    ]
    crm = spark.createDataFrame([("p", dt.datetime(2025, 1, 1))], "customer_id string, signup_ts timestamp")
    transactions = orders_of(spark.createDataFrame(tx, tx_schema))

    def run(as_of: dt.date):
        from segspark.behaviour import behaviour_features, purchases

        p = purchases(transactions, as_of)
        base = p.groupBy("customer_id").agg(
            F.count(F.lit(1)).alias("frequency"),
            F.datediff(F.lit(as_of), F.max("order_date")).alias("recency_days"),
            F.min("order_ts").alias("first_order_ts"),
        )
        feats = base.join(behaviour_features(transactions, as_of), "customer_id", "left")
        return L.with_lifecycle_stage(feats, crm, as_of, CFG).select("customer_id", L.LIFECYCLE_STAGE)

    # as of 2025-02-28: a new (first order 54 days ago), b new (39), c at_risk (recency 272 > 120)
    previous = run(dt.date(2025, 2, 28))
    assert {r[0]: r[1] for r in previous.collect()} == {
        "a": "new",
        "b": "new",
        "c": "at_risk",
        "p": "prospect",
    }
    # as of 2025-05-31: a at_risk (recency 115 > 2 x its 31-day gap), b at_risk (131 > 120),
    # c reactivated (last gap 334 > 180, recency 30), d new, p prospect
    current = run(dt.date(2025, 5, 31))
    assert {r[0]: r[1] for r in current.collect()} == {
        "a": "at_risk",
        "b": "at_risk",
        "c": "reactivated",
        "d": "new",
        "p": "prospect",
    }
    got = _transitions(L.segment_transitions(current, previous))
    assert got == {
        ("lifecycle_stage", "new", "at_risk"): 2,
        ("lifecycle_stage", "at_risk", "reactivated"): 1,
        ("lifecycle_stage", None, "new"): 1,
        ("lifecycle_stage", "prospect", "prospect"): 1,
    }

    # a customer erased between runs shows as a move to null; segment changes are counted per dimension
    prev_seg = spark.createDataFrame([("a", "Loyal", "active"), ("x", "Lost", "churned")], SEG_SCHEMA)
    cur_seg = spark.createDataFrame([("a", "At Risk", "at_risk"), ("y", None, "prospect")], SEG_SCHEMA)
    assert _transitions(L.segment_transitions(cur_seg, prev_seg)) == {
        ("rfm_segment", "Loyal", "At Risk"): 1,
        ("rfm_segment", "Lost", None): 1,
        ("lifecycle_stage", "active", "at_risk"): 1,
        ("lifecycle_stage", "churned", None): 1,
        ("lifecycle_stage", None, "prospect"): 1,
    }


@pytest.mark.slow
def test_planted_archetypes_land_in_the_expected_stages_and_segments(spark):
    """Generated data: each archetype mostly gets the stage and RFM segments its behaviour implies.

    Measured with seed 42 and 2,000 customers: at_risk_regulars 100% at_risk; lapsed_one_timers
    100% churned (75% Lost, 25% Hibernating); champions 100% active and Champions; loyal_regulars
    100% active (56% Champions, 44% Loyal); new_customers 100% new (86% Potential Loyalist);
    bargain_occasionals 84% active, 16% at_risk (recency 121-140 days); prospects 100% prospect.
    """
    from segspark import features as FE
    from segspark import generate as G
    from segspark.behaviour import behaviour_features, with_behaviour
    from segspark.config import RfmConfig

    # cached as ``segspark generate`` caches it: a filter on a generated column is otherwise pushed
    # into the purchase process's projections and evaluates its whole inlined expression (minutes)
    base = G.customer_base(spark, 2000, 42, partitions=2).cache()
    tx = orders_of(G.transactions(base, 42))
    as_of = G.DEFAULT_END
    rfm_cfg = RfmConfig()
    rfm = FE.with_rfm_segment(FE.with_rfm_scores(FE.rfm_features(tx, as_of), rfm_cfg), rfm_cfg)
    feats = with_behaviour(rfm, behaviour_features(tx, as_of))
    staged = L.with_lifecycle_stage(feats, G.customers(base, 42), as_of, CFG)
    counts = (
        staged.join(G.ground_truth(base), "customer_id", "left")
        .groupBy("archetype", L.LIFECYCLE_STAGE, L.RFM_SEGMENT)
        .count()
        .collect()
    )
    total: dict[str, int] = {}
    for r in counts:
        total[r["archetype"]] = total.get(r["archetype"], 0) + r["count"]
    assert sum(total.values()) == 2000  # every generated customer, prospects included, exactly once

    def share(
        archetype: str, stages: set[str] | None = None, segments: set[str | None] | None = None
    ) -> float:
        hit = sum(
            r["count"]
            for r in counts
            if r["archetype"] == archetype
            and (stages is None or r[L.LIFECYCLE_STAGE] in stages)
            and (segments is None or r[L.RFM_SEGMENT] in segments)
        )
        return hit / total[archetype]

    assert share("champions", {"active"}) >= 0.95
    assert share("champions", segments={"Champions"}) >= 0.9
    assert share("loyal_regulars", {"active"}) >= 0.95
    assert share("loyal_regulars", segments={"Champions", "Loyal"}) >= 0.9
    assert share("new_customers", {"new"}) >= 0.95
    assert share("new_customers", segments={"New Customers", "Potential Loyalist", "Promising"}) >= 0.8
    assert share("at_risk_regulars", {"at_risk"}) >= 0.95
    assert share("at_risk_regulars", segments={"At Risk", "Cannot Lose Them"}) >= 0.8
    assert share("lapsed_one_timers", {"churned"}) >= 0.95
    assert share("lapsed_one_timers", segments={"Lost", "Hibernating"}) >= 0.95
    assert share("bargain_occasionals", {"active", "at_risk"}) >= 0.95
    assert share("bargain_occasionals", {"active"}) >= 0.7
    assert share("prospects", {"prospect"}, {None}) == 1.0
    base.unpersist()
