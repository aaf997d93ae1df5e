"""RFM: hand-computed features and scores, segments cover the grid, one shuffle, DuckDB agrees."""

from __future__ import annotations

import datetime as dt
import math
import random

import duckdb
import numpy as np
import pytest
from pyspark.sql import types as T

from segspark import features as FT
from segspark.config import DEFAULT_RFM_SEGMENTS, RfmConfig, load_settings
from segspark.errors import ConfigError
from tests.conftest import orders_of

AS_OF = dt.date(2025, 3, 31)
TX_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("order_id", T.StringType()),
        T.StructField("order_ts", T.TimestampType()),
        T.StructField("amount", T.DoubleType()),
        T.StructField("quantity", T.IntegerType()),
        T.StructField("channel", T.StringType()),
    ]
)
ts = dt.datetime
HAND = [
    # A: an order with a later return line, an order on the last inclusive second, a holdout order
    ("A", "O1", ts(2025, 1, 10, 10), 100.0, 2, "web"),
    ("A", "O1", ts(2025, 1, 15, 9), -40.0, -1, "web"),
    ("A", "O2", ts(2025, 3, 31, 23, 59, 59), 60.0, 1, "app"),
    ("A", "O3", ts(2025, 4, 1, 0, 0, 0), 500.0, 1, "web"),
    # B: two orders the same day, one without a channel
    ("B", "O4", ts(2025, 2, 1, 8), 30.0, None, None),
    ("B", "O5", ts(2025, 2, 1, 18), 30.0, 1, "store"),
    # C: fully returned order: no purchase, recency from the order itself
    ("C", "O6", ts(2025, 3, 1, 12), 20.0, 1, "web"),
    ("C", "O6", ts(2025, 3, 5, 12), -20.0, -1, "web"),
    # D: a channel outside the configured list, and a free line of the same order via the web: the
    # order's channel is its smallest line channel ("kiosk"), which is not listed: "other"
    ("D", "O7", ts(2024, 12, 31, 12), 10.0, 1, "kiosk"),
    ("D", "O7", ts(2024, 12, 31, 12), 0.0, 1, "web"),
    # E: null quantity
    ("E", "O8", ts(2025, 3, 15, 0), 40.0, None, "app"),
    # F: ties with B on recency and monetary
    ("F", "O9", ts(2025, 2, 1, 0), 60.0, 1, "web"),
    # G: only after as_of: no row
    ("G", "O10", ts(2025, 4, 2), 70.0, 1, "web"),
]
# customer: recency, frequency (purchase days), orders (purchase orders), monetary, aov (per order),
# first, last, tenure, return_rate, web, app, store, other
HAND_FEATURES = {
    "A": (0, 2, 2, 120.0, 60.0, ts(2025, 1, 10, 10), ts(2025, 3, 31, 23, 59, 59), 80, 0.25, 1, 1, 0, 0),
    # two purchase orders on one day: one purchase occasion (frequency 1), two orders
    "B": (58, 1, 2, 60.0, 30.0, ts(2025, 2, 1, 8), ts(2025, 2, 1, 18), 58, 0.0, 0, 0, 1, 1),
    "C": (30, 0, 0, 0.0, 0.0, ts(2025, 3, 1, 12), ts(2025, 3, 1, 12), 30, 1.0, 0, 0, 0, 0),
    "D": (90, 1, 1, 10.0, 10.0, ts(2024, 12, 31, 12), ts(2024, 12, 31, 12), 90, 0.0, 0, 0, 0, 1),
    "E": (16, 1, 1, 40.0, 40.0, ts(2025, 3, 15), ts(2025, 3, 15), 16, 0.0, 0, 1, 0, 0),
    "F": (58, 1, 1, 60.0, 60.0, ts(2025, 2, 1), ts(2025, 2, 1), 58, 0.0, 1, 0, 0, 0),
}
# Quintile edges by hand (value at rank ceil(p * 6)): recency 0,16,30,58,58,90 -> [16, 30, 58, 58];
# frequency 0,1,1,1,1,2 -> [1, 1, 1, 1]; monetary 0,10,40,60,60,120 -> [10, 40, 60, 60].
# score = 1 + #edges below (recency: 5 - #edges below); FM = round-half-up((F + M) / 2).
HAND_SCORES = {
    "A": (5, 5, 5, "Champions"),
    "B": (3, 1, 3, "About to Sleep"),  # FM 2
    "C": (4, 1, 1, "Promising"),
    "D": (1, 1, 1, "Lost"),
    "E": (5, 1, 2, "Potential Loyalist"),  # FM 1.5 -> 2
    "F": (3, 1, 3, "About to Sleep"),
}


@pytest.fixture(scope="module")
def hand(spark):
    return orders_of(spark.createDataFrame(HAND, TX_SCHEMA))


def test_hand_computed_features(hand) -> None:
    out = FT.rfm_features(hand, AS_OF)
    assert out.columns == FT.rfm_feature_columns()
    got = {r["customer_id"]: tuple(r)[1:] for r in out.collect()}
    assert got == HAND_FEATURES
    assert dict(out.dtypes)["recency_days"] == "int" and dict(out.dtypes)["frequency"] == "bigint"


def test_hand_computed_scores_segments_and_grid(hand) -> None:
    cfg = RfmConfig()
    feats = FT.rfm_features(hand, AS_OF)
    edges = FT.rfm_edges(feats, cfg)
    assert edges == {
        "recency_days": [16, 30, 58, 58],
        "frequency": [1, 1, 1, 1],
        "monetary": [10, 40, 60, 60],
    }
    scored = FT.with_rfm_segment(FT.with_rfm_scores(feats, cfg, edges), cfg)
    got = {
        r["customer_id"]: (r["r_score"], r["f_score"], r["m_score"], r["rfm_segment"])
        for r in scored.collect()
    }
    assert got == HAND_SCORES
    codes = {r["customer_id"]: r["rfm_code"] for r in scored.collect()}
    assert codes["A"] == "555" and codes["D"] == "111"
    grid = {
        (r["r_score"], r["f_score"]): (r["customers"], r["revenue"]) for r in FT.rfm_grid(scored).collect()
    }
    assert grid == {
        (5, 5): (1, 120.0),
        (4, 1): (1, 0.0),
        (1, 1): (1, 10.0),
        (5, 1): (1, 40.0),
        (3, 1): (2, 120.0),
    }
    assert FT.rfm_grid(scored).columns == ["r_score", "f_score", "customers", "revenue"]


@pytest.mark.parametrize("bins", [4, 5])
def test_every_score_cell_gets_exactly_one_of_the_11_segments(spark, bins: int) -> None:
    cells = [(r, f, m) for r in range(1, bins + 1) for f in range(1, bins + 1) for m in range(1, bins + 1)]
    df = spark.createDataFrame(cells, "r_score int, f_score int, m_score int")
    out = FT.with_rfm_segment(df, RfmConfig(bins=bins)).collect()
    assert len(out) == len(cells) and all(r["rfm_segment"] for r in out)
    names = {r["rfm_segment"] for r in out}
    assert names == {
        "Champions",
        "Loyal",
        "Potential Loyalist",
        "New Customers",
        "Promising",
        "Need Attention",
        "About to Sleep",
        "At Risk",
        "Cannot Lose Them",
        "Hibernating",
        "Lost",
    }
    # the default tables are partitions: no cell matches two rules
    for r in range(1, bins + 1):
        for fm in range(1, bins + 1):
            hits = [
                x for x in DEFAULT_RFM_SEGMENTS[bins] if x.r[0] <= r <= x.r[1] and x.fm[0] <= fm <= x.fm[1]
            ]
            assert len(hits) == 1, (r, fm, hits)


def test_segment_rules_must_cover_the_grid() -> None:
    with pytest.raises(ConfigError, match=r"R=1, FM=1"):
        load_settings(overrides=["rfm.segments=[{name: Top, r: [2, 5], fm: [1, 5]}]"])
    cfg = load_settings(
        overrides=["rfm.segments=[{name: Top, r: [5, 5], fm: [1, 5]}, {name: Rest, r: [1, 5], fm: [1, 5]}]"]
    )
    assert [s.name for s in cfg.rfm.segment_rules()] == ["Top", "Rest"]


def test_rfm_needs_one_shuffle(spark, hand, capsys) -> None:
    """From the silver orders (here as written rows, as a stage reads its table) RFM shuffles once."""
    from segspark.tables import ORDERS_SCHEMA

    table = spark.createDataFrame(hand.collect(), ORDERS_SCHEMA)
    FT.rfm_features(table, AS_OF).explain()
    plan = capsys.readouterr().out
    assert plan.count("Exchange hashpartitioning") == 1, plan


def _generated_lines(seed: int, customers: int) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for c in range(customers):
        for o in range(rng.randint(1, 6)):
            when = ts(2024, 1, 1) + dt.timedelta(seconds=rng.randint(0, 500 * 86_400))
            channel = rng.choice(["web", "app", "store", "kiosk", None])
            amount = round(rng.uniform(1, 300), 2)
            rows.append((f"c{c}", f"o{c}-{o}", when, amount, rng.randint(1, 3), channel))
            if rng.random() < 0.2:  # a return, sometimes of the whole order, sometimes after as_of
                back = amount if rng.random() < 0.3 else round(amount * rng.uniform(0.1, 0.9), 2)
                rows.append(
                    (f"c{c}", f"o{c}-{o}", when + dt.timedelta(days=rng.randint(1, 30)), -back, -1, channel)
                )
    return rows


DUCKDB_RFM = """
SET TimeZone = 'UTC';
WITH orders AS (
  SELECT customer_id, order_id, SUM(amount) AS net,
         SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END) AS gross,
         SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END) AS ret,
         MIN(order_ts) AS ts, MIN(channel) AS ch
  FROM read_parquet('{path}/*.parquet') GROUP BY customer_id, order_id
  HAVING CAST(MIN(order_ts) AS DATE) <= DATE '{as_of}'
), c AS (
  SELECT customer_id, COUNT(DISTINCT CAST(ts AS DATE)) FILTER (WHERE net > 0) AS frequency,
         COUNT(*) FILTER (WHERE net > 0) AS n_orders, SUM(net) AS monetary,
         MIN(ts) FILTER (WHERE net > 0) AS fp, MAX(ts) FILTER (WHERE net > 0) AS lp,
         MIN(ts) AS fo, MAX(ts) AS lo, SUM(gross) AS g, SUM(ret) AS r,
         COUNT(*) FILTER (WHERE net > 0 AND ch = 'web') AS w,
         COUNT(*) FILTER (WHERE net > 0 AND ch = 'app') AS a,
         COUNT(*) FILTER (WHERE net > 0 AND ch = 'store') AS s,
         COUNT(*) FILTER (WHERE net > 0 AND (ch IS NULL OR ch NOT IN ('web', 'app', 'store'))) AS o
  FROM orders GROUP BY customer_id
)
SELECT customer_id,
       DATE_DIFF('day', CAST(COALESCE(lp, lo) AS DATE), DATE '{as_of}') AS recency_days,
       frequency, n_orders AS orders, monetary,
       CASE WHEN n_orders > 0 THEN monetary / n_orders ELSE 0 END AS avg_order_value,
       CAST(COALESCE(fp, fo) AS TIMESTAMP) AS first_order_ts,
       CAST(COALESCE(lp, lo) AS TIMESTAMP) AS last_order_ts,
       DATE_DIFF('day', CAST(COALESCE(fp, fo) AS DATE), DATE '{as_of}') AS tenure_days,
       CASE WHEN g > 0 THEN LEAST(1.0, r / g) WHEN r > 0 THEN 1.0 ELSE 0.0 END AS return_rate,
       w AS orders_web, a AS orders_app, s AS orders_store, o AS orders_other
FROM c ORDER BY customer_id
"""


@pytest.mark.slow
def test_rfm_matches_duckdb_on_the_same_parquet(spark, tmp_path) -> None:
    path = str(tmp_path / "tx")
    spark.createDataFrame(_generated_lines(7, 600), TX_SCHEMA).repartition(3).write.parquet(path)
    as_of = dt.date(2025, 3, 1)
    ours = FT.rfm_features(orders_of(spark.read.parquet(path)), as_of).toPandas()  # 600 customers: a fixture
    con = duckdb.connect()
    ref = con.execute(DUCKDB_RFM.format(path=path, as_of=as_of.isoformat())).fetchdf()
    ours = ours.sort_values("customer_id").reset_index(drop=True)
    assert len(ours) == len(ref) > 500
    assert list(ours.columns) == list(ref.columns)
    mismatches = 0
    for col in ref.columns:
        for a, b in zip(ours[col], ref[col], strict=True):
            if isinstance(a, float) or isinstance(b, float):
                same = math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
            else:
                same = a == b
            mismatches += not same
    assert mismatches == 0
    # scores: with n far below 1 / relative_error, percentile_approx is exact, so the edges equal
    # numpy's inverted-CDF quantiles of the same features
    cfg = RfmConfig()
    edges = FT.rfm_edges(spark.createDataFrame(ref[["recency_days", "frequency", "monetary"]]), cfg)
    probs = [0.2, 0.4, 0.6, 0.8]
    for col in ("recency_days", "frequency", "monetary"):
        expected = np.quantile(ref[col].to_numpy(dtype=float), probs, method="inverted_cdf")
        assert edges[col] == pytest.approx(list(expected)), col
