from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark import generate as G
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
    base = G.customer_base(spark, 3000, seed=3).cache()  # see test_customers_drop_out_at_archetype_rates
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
    result = G.write_lakehouse(settings, str(tmp_path / "data"), 300, seed=5, spark=spark)
    assert set(result["paths"]) == {"transactions", "customers", "events", "marketing_spend", "ground_truth"}
    for name, path in result["paths"].items():
        table = DeltaTable(path)
        assert table.version() == 0
        assert table.to_pyarrow_table().num_rows == result["rows"][name] > 0, name
    crm = DeltaTable(result["paths"]["customers"]).to_pyarrow_table()
    assert {"email", "name", "phone", "address"} <= set(crm.column_names)
    spend = DeltaTable(result["paths"]["marketing_spend"]).to_pyarrow_table()
    assert "organic" not in set(spend.column("channel").to_pylist())  # organic has no spend: CAC unknown


def test_poisson_draws_match_the_distribution(spark: SparkSession) -> None:
    """The generator's inverse-CDF Poisson draw against scipy's pmf (known answer from outside)."""
    from scipy import stats

    n, mean = 20_000, 3.5
    draws = spark.range(n, numPartitions=2).select(G.poisson(G._u(5, 0, F.col("id")), F.lit(mean)).alias("k"))
    counts = {r["k"]: r["count"] for r in draws.groupBy("k").count().collect()}
    for k in range(9):
        expected = n * stats.poisson.pmf(k, mean)
        assert abs(counts.get(k, 0) - expected) < 4.5 * expected**0.5 + 5, (k, counts.get(k), expected)
    big = spark.range(2000, numPartitions=2).select(
        G.poisson(G._u(6, 0, F.col("id")), F.lit(200.0)).alias("k")
    )
    row = big.agg(F.avg("k"), F.stddev("k")).first()
    assert row is not None
    assert row[0] == pytest.approx(200.0, abs=1.5) and row[1] == pytest.approx(200.0**0.5, rel=0.1)


def test_customers_drop_out_at_archetype_rates(spark: SparkSession) -> None:
    """Dropout is planted: at-risk regulars stop at their dropout date, lapsed customers soon after
    their first purchase; the alive archetypes keep buying until the end date at their own pace."""
    # cached as ``segspark generate`` caches it: a filter on a generated column is otherwise pushed
    # into the purchase process's projections and evaluates its whole inlined expression (minutes)
    base = G.customer_base(spark, 4000, seed=9).cache()
    per = {
        r["archetype"]: r
        for r in base.where(F.col("n_orders") > 0)
        .groupBy("archetype")
        .agg(
            F.avg((F.col("last_ago") <= 91).cast("double")).alias("bought_last_91d"),
            F.min("last_ago").alias("min_last"),
            F.avg("n_orders").alias("orders"),
            F.avg((F.col("n_orders") >= 2).cast("double")).alias("repeat"),
            F.avg(F.col("first_ago") - F.col("last_ago")).alias("lifetime"),
        )
        .collect()
    }
    risk, lapsed = G.ARCHETYPES[3], G.ARCHETYPES[4]
    assert risk.dies_days_ago is not None and lapsed.life_days is not None
    assert per["at_risk_regulars"]["min_last"] >= risk.dies_days_ago[0]  # no purchase after dropout
    assert per["lapsed_one_timers"]["lifetime"] <= lapsed.life_days[1]
    assert 0.03 < per["lapsed_one_timers"]["repeat"] < 0.4  # a few came back once before lapsing
    for alive in ("champions", "loyal_regulars", "bargain_occasionals"):
        assert per[alive]["bought_last_91d"] > 0.7, alive
    assert per["champions"]["orders"] > 2 * per["loyal_regulars"]["orders"]
    # the same customers and orders whatever the partitioning (hash draws inside array functions)
    again = G.customer_base(spark, 4000, seed=9, partitions=7)
    assert _fingerprint(base.select("customer_id", F.col("order_days").cast("string"))) == _fingerprint(
        again.select("customer_id", F.col("order_days").cast("string"))
    )
    base.unpersist()


@pytest.mark.slow
def test_bgnbd_fit_on_generated_data_is_interior_and_separates_the_lapsed(spark: SparkSession) -> None:
    """The planted dropout gives the BG/NBD model something to find: interior parameters with
    finite standard errors, and P(alive) far lower for lapsed and at-risk customers than for
    champions."""
    import math

    from segspark import silver
    from segspark.clv import models as M
    from segspark.clv import summary as CS
    from segspark.config import PurchaseConfig

    base = G.customer_base(spark, 2000, seed=42).cache()
    days = silver.customer_days(silver.orders(G.transactions(base, seed=42), PurchaseConfig()))
    summary = CS.summary_from_purchase_days(CS.purchase_days(days, G.DEFAULT_END), G.DEFAULT_END, "week")
    summary = summary.cache()
    fit = M.fit_transactions("bgnbd", CS.compressed_rfm(summary, "week"), 0.0)
    assert fit.converged, fit.message
    for name, value in fit.params.items():
        se = fit.se[name]
        assert 1e-3 < value < 1e3 and math.isfinite(se) and se < value, (name, value, se)
    rows = (
        summary.join(base.select("customer_id", "archetype"), "customer_id", how="inner")
        .select(
            "archetype",
            F.col(CS.FREQUENCY).cast("double").alias("x"),
            F.col(CS.RECENCY).alias("t_x"),
            F.col(CS.AGE).alias("T"),
        )
        .toPandas()  # a 2,000-customer test sample
    )
    rows["p_alive"] = M.p_alive("bgnbd", fit.values, rows["x"], rows["t_x"], rows["T"])
    by = rows.groupby("archetype")["p_alive"].mean()
    assert by["champions"] > 0.9 and by["loyal_regulars"] > 0.85
    assert by["at_risk_regulars"] < 0.4
    # BG/NBD deems a customer without a repeat purchase alive; lapsed repeat buyers are not
    lapsed = rows[(rows["archetype"] == "lapsed_one_timers") & (rows["x"] > 0)]
    assert len(lapsed) > 20 and lapsed["p_alive"].mean() < 0.5
    summary.unpersist()
    base.unpersist()


def test_uniform_spend_gives_every_archetype_one_mean_order_value_and_the_same_purchases(
    spark: SparkSession,
) -> None:
    """``generate --uniform-spend``: order value no longer depends on the archetype (so not on purchase
    frequency); every other draw, the purchase days included, is the same as the planted data's."""
    planted = G.customer_base(spark, 3000, seed=5)
    uniform = G.customer_base(spark, 3000, seed=5, uniform_spend=True)
    buyers = F.col("archetype") != G.PROSPECTS

    def mean_aov(df: DataFrame) -> dict[str, float]:
        rows = df.where(buyers).groupBy("archetype").agg(F.avg("aov").alias("m")).collect()
        return {r["archetype"]: r["m"] for r in rows}

    flat, planted_aov = mean_aov(uniform), mean_aov(planted)
    assert set(flat) == {a.name for a in G.ARCHETYPES if a.aov > 0}
    # draws of 0.7..1.3 x the mean: each archetype's average within 5% of the one mean
    assert all(abs(m / G.UNIFORM_AOV - 1) < 0.05 for m in flat.values()), flat
    assert planted_aov["champions"] > 5 * planted_aov["bargain_occasionals"]
    same = ["customer_id", "archetype", "order_days"]
    assert planted.select(*same).exceptAll(uniform.select(*same)).count() == 0
