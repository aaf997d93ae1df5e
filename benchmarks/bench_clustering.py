"""Benchmark the clustering stage: sweep + final fit + profiles at N customers, and density assignment.

    python benchmarks/bench_clustering.py --customers 2500000 [--engine local|spark] [--density]

The feature table is synthesised in Spark (four planted groups), cached and counted before the clock
starts, so the figures are the clustering stage alone. Peak memory is the high-water resident set of
the driver's Python process and of the Spark JVM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark.clustering import density as D
from segspark.clustering import fit_segments, prep
from segspark.config import ClusteringConfig, SparkConfig
from segspark.session import get_spark

# (recency, orders, aov, tenure, return rate, sessions) per planted group
GROUPS = [
    (5, 20, 150.0, 600, 0.02, 25),
    (500, 1, 35.0, 520, 0.10, 0),
    (15, 1, 60.0, 25, 0.04, 8),
    (90, 4, 18.0, 300, 0.3, 3),
]


def synth_features(spark: SparkSession, n: int, partitions: int) -> DataFrame:
    g = (F.col("id") % len(GROUPS)).cast("int")

    def pick(i: int) -> F.Column:
        return F.element_at(F.array(*[F.lit(float(t[i])) for t in GROUPS]), g + 1)

    def jitter(seed: int) -> F.Column:
        return F.lit(0.75) + F.lit(0.5) * F.rand(seed)

    freq = F.greatest(F.lit(1), F.round(pick(1) * jitter(2))).cast("long")
    aov = pick(2) * jitter(3)
    return spark.range(0, n, 1, partitions).select(
        F.sha2(F.col("id").cast("string"), 256).substr(1, 16).alias("customer_id"),
        (pick(0) * jitter(1)).cast("int").alias("recency_days"),
        freq.alias("frequency"),
        (freq * aov).alias("monetary"),
        aov.alias("avg_order_value"),
        (pick(3) * jitter(4)).cast("int").alias("tenure_days"),
        F.least(F.lit(1.0), pick(4) * jitter(5)).alias("return_rate"),
        (pick(5) * jitter(6)).cast("long").alias("sessions_90d"),
    )


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def peak_rss_mb() -> dict[str, float]:
    """High-water resident memory of this process and of the Spark JVM it started (Linux /proc)."""
    out = {"python_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for child in _children(os.getpid()):
        try:
            with open(f"/proc/{child}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
            if "java" in status.get("Name", ""):
                out["jvm_mb"] = int(status["VmHWM"].split()[0]) / 1024
        except (OSError, KeyError, ValueError):
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--engine", choices=["local", "spark"], default="local")
    ap.add_argument("--sample-size", type=int, default=None)
    ap.add_argument("--final-fit", choices=["all", "sample"], default="sample")
    ap.add_argument("--density", action="store_true", help="also time DBSCAN + nearest-core assignment")
    ap.add_argument("--driver-memory", default="6g")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cores = os.cpu_count() or 2
    spark = get_spark(
        SparkConfig(master=f"local[{cores}]", shuffle_partitions=cores * 2, driver_memory=args.driver_memory)
    )
    feats = synth_features(spark, args.customers, cores * 4).cache()
    t0 = time.perf_counter()
    feats.count()
    print(f"synthesised {args.customers:,} customers in {time.perf_counter() - t0:.1f}s (not counted)")

    extra = {"sample_size": args.sample_size} if args.sample_size else {}
    cfg = ClusteringConfig(sweep_engine=args.engine, final_fit=args.final_fit, **extra)
    t0 = time.perf_counter()
    res = fit_segments(feats, cfg)
    fit_s = time.perf_counter() - t0
    print(f"fit_segments: {fit_s:.1f}s  chosen: {res.chosen['reason']}")
    print("timings:", json.dumps({k: round(v, 1) for k, v in res.chosen["timings"].items()}))
    print("sweep (sample):")
    print(
        res.sweep[["algorithm", "k", "silhouette", "davies_bouldin", "stability", "fit_seconds"]]
        .round(3)
        .to_string()
    )
    print("profiles:\n", res.profiles[["cluster_id", "persona", "size"]].to_string())
    t0 = time.perf_counter()
    res.assignments.write.format("noop").mode("overwrite").save()
    print(f"materialise assignments: {time.perf_counter() - t0:.1f}s")
    res.release()

    if args.density:
        dcfg = ClusteringConfig(algorithm="dbscan", density_sample=20_000, density_min_samples=10)
        names = prep.candidate_features(feats, dcfg)
        pm = prep.build_prep_pipeline(names, dcfg).fit(feats)
        prepared = pm.transform(feats).select(*prep.prepared_columns(names)).cache()
        prepared.count()
        t0 = time.perf_counter()
        model = D.fit_density(prepared, dcfg, "dbscan")
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        D.assign_density(prepared, model).write.format("noop").mode("overwrite").save()
        t_assign = time.perf_counter() - t0
        print(
            f"density: fit on sample {t_fit:.1f}s ({model.describe()}); assignment of {args.customers:,} "
            f"customers {t_assign:.1f}s = {args.customers / t_assign:,.0f} customers/s"
        )
    print("peak memory:", json.dumps({k: round(v) for k, v in peak_rss_mb().items()}))


if __name__ == "__main__":
    main()
