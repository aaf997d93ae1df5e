from __future__ import annotations

import math

import pytest
from pyspark.sql import SparkSession

from segspark.drift import psi, segment_drift
from segspark.errors import InputError


def test_psi_matches_a_hand_computation() -> None:
    prev, cur = [0.5, 0.3, 0.2], [0.4, 0.4, 0.2]
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.4 - 0.3) * math.log(0.4 / 0.3)
    assert psi(prev, cur) == pytest.approx(expected)
    assert psi(prev, prev) == 0.0


def test_segment_drift_first_run_is_empty_and_shift_is_flagged(spark: SparkSession) -> None:
    schema = "customer_id string, rfm_segment string, monetary double"
    prev = spark.createDataFrame(
        [(f"c{i}", "Champions" if i < 50 else "Lost", float(i)) for i in range(100)], schema
    )
    cur = spark.createDataFrame(
        [
            (f"c{i}", "Champions" if i < 20 else ("Lost" if i < 95 else None), float(i) * 3)
            for i in range(100)
        ],
        schema,
    )
    assert segment_drift(cur, None, ["rfm_segment"], ["monetary"]).count() == 0
    rows = {
        (r.dimension, r.bucket): r for r in segment_drift(cur, prev, ["rfm_segment"], ["monetary"]).collect()
    }
    seg = rows[("rfm_segment", "Champions")]
    assert (seg.previous_share, seg.current_share) == (0.5, 0.2)
    assert rows[("rfm_segment", "(none)")].current_share == pytest.approx(0.05)
    total = rows[("rfm_segment", "__total__")]
    expected = psi([0.5, 0.0, 0.5], [0.2, 0.05, 0.75])
    assert total.psi == pytest.approx(expected)
    assert total.status == "major"
    assert rows[("monetary", "__total__")].status == "major"
    unchanged = (
        segment_drift(prev, prev, ["rfm_segment"], ["monetary"]).where("bucket = '__total__'").collect()
    )
    assert all(r.psi == pytest.approx(0.0) and r.status == "stable" for r in unchanged)


def test_a_high_cardinality_column_is_refused_not_collected(spark: SparkSession) -> None:
    # the driver receives at most max_buckets + 1 shares per dimension: a customer id (or any
    # column with more values) is refused; the deciles of a numeric column stay within 11 buckets
    schema = "customer_id string, monetary double"
    df = spark.createDataFrame([(f"c{i}", float(i)) for i in range(40)], schema)
    with pytest.raises(InputError, match="'customer_id' has more than 10 distinct values"):
        segment_drift(df, df, ["customer_id"], [], max_buckets=10)
    rows = segment_drift(df, df, [], ["monetary"], max_buckets=10).where("bucket != '__total__'").count()
    assert rows <= 11
