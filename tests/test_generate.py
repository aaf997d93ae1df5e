from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark import generate as G
from segspark import pipeline
from segspark.config import Settings


def _fingerprint(df: DataFrame) -> tuple[int, int]:
    row = df.agg(F.count(F.lit(1)), F.sum(F.xxhash64(*df.columns) % 1_000_003)).first()
    assert row is not None
    return int(row[0]), int(row[1])


def test_same_seed_same_data_whatever_the_partitioning(spark: SparkSession) -> None:
    a = G.transactions(G.customer_base(spark, 800, seed=7, partitions=2), seed=7)
    b = G.transactions(G.customer_base(spark, 800, seed=7, partitions=5), seed=7)
    c = G.transactions(G.customer_base(spark, 800, seed=8, partitions=2), seed=8)
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a) != _fingerprint(c)


def test_archetype_shares_match_the_plan(spark: SparkSession) -> None:
    n = 20_000
    shares = {
        r.archetype: r["count"] / n
        for r in G.customer_base(spark, n, seed=1).groupBy("archetype").count().collect()
    }
    planned = {a.name: a.share for a in G.ARCHETYPES}
    assert set(shares) == set(planned)
    for name, share in planned.items():
        assert share == pytest.approx(shares[name], abs=0.01), name


def test_archetypes_differ_as_planted(spark: SparkSession) -> None:
    base = G.customer_base(spark, 3000, seed=3)
    tx = G.transactions(base, seed=3)
    per = (
        tx.join(base.select("customer_id", "archetype"), "customer_id", how="inner")
        .groupBy("archetype", "customer_id")
        .agg(
            F.countDistinct("order_id").alias("orders"),
            F.sum("amount").alias("spend"),
            F.max("order_ts").alias("last"),
            F.sum((F.col("amount") < 0).cast("int")).alias("returns"),
        )
        .groupBy("archetype")
        .agg(
            F.avg("orders").alias("orders"),
            F.avg("spend").alias("spend"),
            F.avg(F.datediff(F.lit(G.DEFAULT_END), F.col("last"))).alias("recency"),
            F.avg("returns").alias("returns"),
        )
    )
    stats = {r.archetype: r for r in per.collect()}
    assert "prospects" not in stats  # prospects never buy
    assert stats["champions"].orders > stats["loyal_regulars"].orders > stats["bargain_occasionals"].orders
    assert stats["champions"].spend > 5 * stats["lapsed_one_timers"].spend
    assert stats["lapsed_one_timers"].recency > 365 > stats["at_risk_regulars"].recency > 120
    assert stats["new_customers"].recency < 45
    # returns are negative lines of the same order
    neg = tx.where(F.col("amount") < 0).join(
        tx.where(F.col("amount") > 0).select("order_id").distinct(), "order_id", how="left_anti"
    )
    assert neg.count() == 0


def test_dirty_plants_every_kind_of_bad_row(spark: SparkSession) -> None:
    base = G.customer_base(spark, 200, seed=2)
    dirty = G.dirty_transactions(G.transactions(base, seed=2), seed=2)
    bad = {r.order_id for r in dirty.where(F.col("order_id").startswith("BAD-")).select("order_id").collect()}
    assert {
        "BAD-missing-id",
        "BAD-bad-ts",
        "BAD-future-ts",
        "BAD-early-ts",
        "BAD-bad-amount",
        "BAD-outlier",
        "BAD-currency",
        "BAD-conflict",
    } <= bad
    dupes = dirty.groupBy(*dirty.columns).count().where(F.col("count") > 1).count()
    assert dupes == 5
    crm = G.dirty_customers(G.customers(base, seed=2))
    assert crm.where(F.col("customer_id").isNull()).count() == 1


def test_generate_writes_five_delta_tables(spark: SparkSession, tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"output": {"path": str(tmp_path)}, "lakehouse": {"engine": "delta-rs"}}
    )
    result = pipeline.generate(settings, str(tmp_path / "data"), 300, seed=5, spark=spark)
    assert set(result["paths"]) == {"transactions", "customers", "events", "marketing_spend", "ground_truth"}
    for name, path in result["paths"].items():
        table = DeltaTable(path)
        assert table.version() == 0
        assert table.to_pyarrow_table().num_rows == result["rows"][name] > 0, name
    crm = DeltaTable(result["paths"]["customers"]).to_pyarrow_table()
    assert {"email", "name", "phone", "address"} <= set(crm.column_names)
    spend = DeltaTable(result["paths"]["marketing_spend"]).to_pyarrow_table()
    assert "organic" not in set(spend.column("channel").to_pylist())  # organic has no spend: CAC unknown
