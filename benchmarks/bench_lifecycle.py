"""Wall time of the behaviour, engagement, lifecycle, transitions, cohort, KPI and LTV:CAC stages.

Usage (the issue's size is the default: 1M customers, about 8M transaction lines):

    python benchmarks/bench_lifecycle.py --customers 1000000 --master "local[*]"
    python benchmarks/bench_lifecycle.py --customers 100000          # a quick run

The synthetic inputs come from ``segspark.generate`` and are materialized as Parquet in a scratch
folder first, so generation is not timed. Each stage is then timed once, forced end to end with
Spark's ``noop`` sink (full computation, nothing written). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession


def _timed(
    name: str, build: Callable[[], DataFrame], out: dict[str, float], cache: bool = False
) -> DataFrame:
    start = time.perf_counter()
    df = build()
    if cache:  # later stages reuse it: materialize the cache inside this stage's time
        df = df.cache()
    df.write.format("noop").mode("overwrite").save()
    out[name] = round(time.perf_counter() - start, 2)
    print(f"  {name:<22} {out[name]:>8.2f} s", file=sys.stderr, flush=True)
    return df


def run(spark: SparkSession, customers: int, seed: int, scratch: Path) -> dict[str, object]:
    from segspark import features as FE
    from segspark import generate as G
    from segspark.behaviour import (
        behaviour_features,
        engagement_features,
        with_behaviour,
        with_demographics,
        with_engagement,
    )
    from segspark.cohorts import cohort_retention
    from segspark.config import LifecycleConfig, RfmConfig
    from segspark.kpis import segment_kpis
    from segspark.lifecycle import segment_transitions, with_lifecycle_stage
    from segspark.ltv_cac import ltv_cac

    start = time.perf_counter()
    base = G.customer_base(spark, customers, seed)
    crm_full = G.customers(base, seed)
    tables = {
        "transactions": G.transactions(base, seed),
        "customers": crm_full.drop("email", "name", "phone", "address"),
        "events": G.events(base, seed),
        "marketing_spend": G.marketing_spend(crm_full, seed),
    }
    for name, df in tables.items():
        df.write.mode("overwrite").parquet(str(scratch / name))
    tx, crm, ev, spend = (spark.read.parquet(str(scratch / n)) for n in tables)
    rows = {n: spark.read.parquet(str(scratch / n)).count() for n in tables}
    generate_s = round(time.perf_counter() - start, 2)
    print(f"  generated {rows} in {generate_s} s", file=sys.stderr, flush=True)

    as_of = G.DEFAULT_END
    previous_as_of = as_of - dt.timedelta(days=30)
    life, rfm_cfg = LifecycleConfig(), RfmConfig()
    t: dict[str, float] = {}
    _timed("behaviour_features", lambda: behaviour_features(tx, as_of, rfm_cfg.channels), t)
    _timed("engagement_features", lambda: engagement_features(ev, as_of), t)

    def segments_as_of(day: dt.date) -> DataFrame:
        rfm = FE.with_rfm_segment(FE.with_rfm_scores(FE.rfm_features(tx, day), rfm_cfg), rfm_cfg)
        feats = with_behaviour(rfm, behaviour_features(tx, day, rfm_cfg.channels))
        return with_lifecycle_stage(feats, crm, day, life)

    # RFM features are computed here too: lifecycle needs them (timed with it)
    current = _timed("rfm+behaviour+lifecycle", lambda: segments_as_of(as_of), t, cache=True)
    _timed(
        "engagement+demographics",
        lambda: with_demographics(with_engagement(current, engagement_features(ev, as_of)), crm),
        t,
    )
    previous = segments_as_of(previous_as_of).cache()
    previous.write.format("noop").mode("overwrite").save()  # the previous run's table: not timed
    _timed("segment_transitions", lambda: segment_transitions(current, previous), t)
    _timed("cohort_retention", lambda: cohort_retention(tx, crm, as_of), t)
    _timed("segment_kpis", lambda: segment_kpis(current, engagement_features(ev, as_of)), t)
    _timed("ltv_cac", lambda: ltv_cac(tx, crm, spend, current, as_of, 12), t)
    return {
        "customers": customers,
        "rows": rows,
        "generate_and_materialize_s": generate_s,
        "stage_seconds": t,
        "total_stage_seconds": round(sum(t.values()), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--shuffle-partitions", type=int, default=None)
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument(
        "--scratch", default=None, help="folder for the generated inputs (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    from segspark.config import SparkConfig
    from segspark.session import get_spark

    spark = get_spark(
        SparkConfig(
            master=args.master, shuffle_partitions=args.shuffle_partitions, driver_memory=args.driver_memory
        )
    )
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="segspark-bench-"))
    try:
        result = run(spark, args.customers, args.seed, scratch)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        spark.stop()
    result["master"] = args.master
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
