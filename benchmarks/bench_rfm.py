"""Benchmark: segspark ingest + RFM against the same RFM in DuckDB and pandas, on the same Parquet.

Not a test. For each size it writes generated transactions to Parquet once, then runs every engine
in its own Python process (so peak memory is per engine) and prints wall times and peak resident
memory side by side. Spark's JVM start is timed separately and excluded from its wall time.

    python benchmarks/bench_rfm.py --transactions 1000000 10000000 --out /tmp/segspark-bench

``--parquet PATH`` runs the engines on an existing Parquet folder instead (e.g. the one
``bench_pipeline.py`` made, so both benchmarks read the same file).

Engines:
- ``spark-ingest+rfm``: ``ingest.validate`` (all rules, HMAC pseudonyms, quarantine JSON, counts)
  + ``silver.orders`` + ``features.rfm_features`` + scores + segments, written to Spark's ``noop``
  sink (the job writes the orders to a table in between; here they stream on).
- ``spark-rfm``: ``silver.orders`` + ``features.rfm_features`` + scores + segments on the Parquet as
  it is.
- ``spark-sql``: DuckDB's query below, run by Spark SQL on the same Parquet, with the lines
  distributed by customer so both aggregations share one shuffle (hash aggregates, no ingest, no
  scores): Spark's own floor for this RFM on the machine, against which the other Spark figures read.
- ``duckdb`` / ``pandas``: the same RFM feature definitions (see ``features``), result materialized.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

AS_OF = dt.date(2025, 12, 31)
KEY = b"benchmark-key-not-secret"
RATES = {"EUR": 1.08, "GBP": 1.27}
DONE = ".complete"

DUCKDB_RFM = """
WITH lines AS (
  SELECT * FROM read_parquet('{path}/*.parquet') WHERE CAST(order_ts AS DATE) <= DATE '{as_of}'
), orders AS (
  SELECT customer_id, order_id, SUM(amount) AS net,
         SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END) AS gross,
         SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END) AS ret,
         MIN(order_ts) AS ts, MIN(CASE WHEN channel IN ('web', 'app', 'store') THEN channel END) AS ch
  FROM lines GROUP BY customer_id, order_id
), c AS (
  SELECT customer_id, COUNT(*) FILTER (WHERE net > 0) AS frequency, SUM(net) AS monetary,
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
       frequency, monetary,
       CASE WHEN frequency > 0 THEN monetary / frequency ELSE 0 END AS avg_order_value,
       COALESCE(fp, fo) AS first_order_ts, COALESCE(lp, lo) AS last_order_ts,
       DATE_DIFF('day', CAST(COALESCE(fp, fo) AS DATE), DATE '{as_of}') AS tenure_days,
       CASE WHEN g > 0 THEN LEAST(1.0, r / g) WHEN r > 0 THEN 1.0 ELSE 0.0 END AS return_rate,
       w AS orders_web, a AS orders_app, s AS orders_store, o AS orders_other
FROM c
"""

# DUCKDB_RFM in Spark SQL's dialect (DATE_DIFF -> datediff), lines distributed by customer first.
SPARK_SQL_RFM = (
    DUCKDB_RFM.replace(
        "SELECT * FROM read_parquet('{path}/*.parquet') WHERE CAST(order_ts AS DATE) <= DATE '{as_of}'",
        "SELECT * FROM tx WHERE CAST(order_ts AS DATE) <= DATE '{as_of}' DISTRIBUTE BY customer_id",
    )
    .replace(
        "DATE_DIFF('day', CAST(COALESCE(lp, lo) AS DATE), DATE '{as_of}')",
        "datediff(DATE '{as_of}', COALESCE(lp, lo))",
    )
    .replace(
        "DATE_DIFF('day', CAST(COALESCE(fp, fo) AS DATE), DATE '{as_of}')",
        "datediff(DATE '{as_of}', COALESCE(fp, fo))",
    )
)


def _proc_peak_kb(pid: int) -> int:
    """Peak resident set (VmHWM) of a live process, in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _spark(driver_memory: str, rows: int | None = None):  # type: ignore[no-untyped-def]
    """A local session as the job makes it: shuffle partitions ``auto`` (the cores' floor, 8 here),
    raised for an input of ``rows`` rows as ``segspark run`` raises them (one per 2M rows)."""
    from segspark.config import SparkConfig
    from segspark.session import get_spark, scale_shuffle_partitions

    cfg = SparkConfig(master="local[2]", driver_memory=driver_memory)
    spark = get_spark(cfg)
    if rows is not None:
        scale_shuffle_partitions(spark, cfg, rows)
    return spark


# --- generation -------------------------------------------------------------------------------------


def generate(path: Path, transactions: int, driver_memory: str) -> int:
    """Generated order lines (the project's generator, else a range-based one) written as Parquet."""
    spark = _spark(driver_memory)
    try:
        from segspark import generate as G

        pilot = G.transactions(G.customer_base(spark, 20_000, 42), 42).count() / 20_000
        customers = max(1, math.ceil(transactions / pilot))
        df = G.transactions(G.customer_base(spark, customers, 42), 42)
        source = f"segspark.generate ({customers} customers)"
    except (ImportError, AttributeError, TypeError):
        from pyspark.sql import functions as F

        customers = max(1, transactions // 8)
        h = F.xxhash64(F.col("id"))
        df = spark.range(transactions).select(
            F.format_string("C%09d", F.pmod(h, F.lit(customers))).alias("customer_id"),
            F.format_string("O%011d", F.col("id") / 2).alias("order_id"),
            F.timestamp_seconds(F.lit(1_704_067_200) + F.pmod(h, F.lit(730 * 86_400))).alias("order_ts"),
            F.when(F.pmod(h, F.lit(20)) == 0, -F.lit(10.0))
            .otherwise(F.pmod(h, F.lit(20_000)) / 100)
            .alias("amount"),
            F.lit(1).alias("quantity"),
            F.lit("home").alias("product_category"),
            F.element_at(
                F.array(F.lit("web"), F.lit("app"), F.lit("store")), (F.pmod(h, F.lit(3)) + 1).cast("int")
            ).alias("channel"),
            F.lit("USD").alias("currency"),
        )
        source = f"range-based generator ({customers} customers)"
    df.write.mode("overwrite").parquet(str(path))
    n = spark.read.parquet(str(path)).count()
    (path / DONE).write_text(str(n))  # Spark and DuckDB both skip files named with a leading dot
    print(f"generated {n:,} transactions at {path} with {source}", flush=True)
    spark.stop()
    return n


# --- engines (each run in its own process) ----------------------------------------------------------


def run_spark(path: str, engine: str, driver_memory: str) -> dict[str, float]:
    """One Spark engine; wall and CPU time cover its work only, not the JVM start or the check count."""
    import pyarrow.dataset as ds

    t0 = time.perf_counter()
    spark = _spark(driver_memory, ds.dataset(path, format="parquet").count_rows())
    spark.range(1).count()
    start = time.perf_counter() - t0

    jvms = _children(os.getpid())
    cpu0 = sum(_proc_cpu_s(p) for p in jvms) + _self_cpu_s()
    t = time.perf_counter()
    if engine == "spark-sql":
        customers, quarantined = _spark_sql_rfm(spark, path), None
    else:
        customers, quarantined = _segspark_rfm(spark, path, engine == "spark-ingest+rfm")
    wall = time.perf_counter() - t
    cpu = sum(_proc_cpu_s(p) for p in jvms) + _self_cpu_s() - cpu0
    jvm_kb = max((_proc_peak_kb(p) for p in _children(os.getpid())), default=0)
    res = {"wall_s": wall, "jvm_start_s": start, "jvm_peak_mb": jvm_kb / 1024, "cpu_s": cpu}
    res["customers"] = float(customers() if callable(customers) else customers)
    if quarantined is not None:
        res["quarantined"] = float(quarantined)
    spark.stop()
    return res


def _segspark_rfm(spark, path: str, with_ingest: bool) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from segspark import features, ingest, silver
    from segspark.config import PurchaseConfig, QualityConfig, RfmConfig

    raw = spark.read.parquet(path)
    quarantined = 0
    if with_ingest:
        cfg = QualityConfig(currency={"rates": RATES})
        processing = dt.datetime.combine(AS_OF + dt.timedelta(days=1), dt.time(0), tzinfo=dt.timezone.utc)
        res = ingest.validate(
            ingest.conform(raw, "transactions", {}), "transactions", cfg, processing, key=KEY
        )
        ingest.reconcile(res)
        res.quarantine.write.format("noop").mode("overwrite").save()
        clean = res.clean  # pseudonymous customer ids
        quarantined = res.rows_quarantined
    else:
        clean = raw
    rfm_cfg = RfmConfig()
    # as the job: the lines become silver orders, the RFM features read the orders
    feats = features.rfm_features(silver.orders(clean, PurchaseConfig()), AS_OF).persist()
    scored = features.with_rfm_segment(features.with_rfm_scores(feats, rfm_cfg), rfm_cfg)
    scored.write.format("noop").mode("overwrite").save()
    return int(features.rfm_grid(scored).agg(F.sum("customers")).first()[0]), quarantined


def _spark_sql_rfm(spark, path: str):  # type: ignore[no-untyped-def]
    spark.read.parquet(path).createOrReplaceTempView("tx")
    out = spark.sql(SPARK_SQL_RFM.format(as_of=AS_OF.isoformat()))
    out.write.format("noop").mode("overwrite").save()  # every row computed, as the other Spark engines
    return out.count  # counted after the timing


def run_duckdb(path: str) -> dict[str, float]:
    import duckdb

    cpu0 = _self_cpu_s()
    t = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    df = con.execute(DUCKDB_RFM.format(path=path, as_of=AS_OF.isoformat())).to_arrow_table()
    return {"wall_s": time.perf_counter() - t, "customers": float(df.num_rows), "cpu_s": _self_cpu_s() - cpu0}


def run_pandas(path: str) -> dict[str, float]:
    cpu0 = _self_cpu_s()
    t = time.perf_counter()
    out = pandas_rfm(path)
    return {"wall_s": time.perf_counter() - t, "customers": float(len(out)), "cpu_s": _self_cpu_s() - cpu0}


def pandas_rfm(path: str):  # type: ignore[no-untyped-def]
    """The RFM features in pandas (index: customer_id)."""
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(path, columns=["customer_id", "order_id", "order_ts", "amount", "channel"])
    df = df[df["order_ts"] < pd.Timestamp(AS_OF + dt.timedelta(days=1), tz="UTC")]
    # an order's channel: the alphabetically first of its listed channels (see features); min() of
    # an object column runs row by row in Python, so take the min of sorted category codes
    cats = sorted(["web", "app", "store"])
    codes = pd.Categorical(df["channel"], categories=cats).codes.astype("int32")
    none = len(cats)
    df = df.assign(
        gross=df["amount"].clip(lower=0),
        ret=(-df["amount"]).clip(lower=0),
        ch=np.where(codes < 0, none, codes),
    )
    orders = (
        df.groupby(["customer_id", "order_id"], sort=False)
        .agg(
            net=("amount", "sum"),
            gross=("gross", "sum"),
            ret=("ret", "sum"),
            ts=("order_ts", "min"),
            ch=("ch", "min"),
        )
        .reset_index()
    )
    orders["ch"] = pd.Categorical.from_codes(
        np.where(orders["ch"] == none, -1, orders["ch"]), categories=cats
    )
    buy = orders["net"] > 0
    orders = orders.assign(
        buy=buy,
        pts=orders["ts"].where(buy),
        **{f"o_{c}": buy & (orders["ch"] == c) for c in ("web", "app", "store")},
        o_other=buy & ~orders["ch"].isin(["web", "app", "store"]).to_numpy(),
    )
    c = orders.groupby("customer_id", sort=False).agg(
        frequency=("buy", "sum"),
        monetary=("net", "sum"),
        fp=("pts", "min"),
        lp=("pts", "max"),
        fo=("ts", "min"),
        lo=("ts", "max"),
        g=("gross", "sum"),
        r=("ret", "sum"),
        orders_web=("o_web", "sum"),
        orders_app=("o_app", "sum"),
        orders_store=("o_store", "sum"),
        orders_other=("o_other", "sum"),
    )
    as_of = pd.Timestamp(AS_OF, tz="UTC")
    first, last = c["fp"].fillna(c["fo"]), c["lp"].fillna(c["lo"])
    out = pd.DataFrame(
        {
            "recency_days": (as_of - last.dt.floor("D")).dt.days,
            "frequency": c["frequency"],
            "monetary": c["monetary"],
            "avg_order_value": np.where(
                c["frequency"] > 0, c["monetary"] / c["frequency"].clip(lower=1), 0.0
            ),
            "first_order_ts": first,
            "last_order_ts": last,
            "tenure_days": (as_of - first.dt.floor("D")).dt.days,
            "return_rate": np.where(
                c["g"] > 0,
                np.minimum(1.0, c["r"] / c["g"].where(c["g"] > 0, 1)),
                np.where(c["r"] > 0, 1.0, 0.0),
            ),
            "orders_web": c["orders_web"],
            "orders_app": c["orders_app"],
            "orders_store": c["orders_store"],
            "orders_other": c["orders_other"],
        }
    )
    return out


def worker(engine: str, path: str, driver_memory: str) -> None:
    if engine.startswith("spark"):
        res = run_spark(path, engine, driver_memory)
    elif engine == "duckdb":
        res = run_duckdb(path)
    else:
        res = run_pandas(path)
    res["python_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["load_avg_1m"] = os.getloadavg()[0]  # other work on the machine inflates wall times
    line = json.dumps(res)
    with open(Path(path).parent / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"engine": engine, "path": path, **res}) + "\n")
    print("RESULT " + line, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transactions", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", default="/tmp/segspark-bench")
    engines = ["spark-ingest+rfm", "spark-rfm", "spark-sql", "duckdb", "pandas"]
    ap.add_argument("--engines", nargs="+", choices=engines, default=engines)
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--parquet", help="an existing Parquet folder of transactions (instead of generating)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of every engine, in turn")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.driver_memory)
        return 0

    rows = []
    sizes: list[tuple[int, Path]] = []
    if args.parquet:
        import pyarrow.dataset as ds

        sizes.append((ds.dataset(args.parquet, format="parquet").count_rows(), Path(args.parquet)))
    for n in [] if args.parquet else args.transactions:
        path = Path(args.out) / f"tx_{n}"
        if not (path / DONE).exists():
            generate(path, n, args.driver_memory)
        sizes.append((n, path))
    # repetitions run every engine in turn, so a slow spell of the machine hits them all alike
    turns = ((size, e) for size in sizes for _ in range(args.repeat) for e in args.engines)
    for (n, path), engine in turns:
        cmd = [sys.executable, __file__, "--driver-memory", args.driver_memory, "--worker", engine, str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{engine} failed at {n:,}:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        res = json.loads(line[len("RESULT ") :])
        res["peak_mb"] = res.get("jvm_peak_mb", 0.0) + res["python_peak_mb"]
        rows.append((n, engine, res))
        print(f"{n:>12,} {engine:<18} " + _fmt(res), flush=True)

    # the yardsticks: wall time (median over repetitions) as a multiple of DuckDB's and of Spark
    # SQL's bare RFM query (Spark's floor for this work) on the same Parquet
    med: dict[tuple[int, str], dict[str, float]] = {}
    for key in dict.fromkeys((n, engine) for n, engine, _ in rows):
        runs = [res for n, engine, res in rows if (n, engine) == key]
        med[key] = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]} | {"runs": len(runs)}
    print(
        "\n| transactions | engine | runs | wall (s, median) | x DuckDB | x Spark SQL | CPU (s) "
        "| peak RSS (MB) | customers | load avg |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (n, engine), res in med.items():
        ratios = [
            f"{res['wall_s'] / med[(n, ref)]['wall_s']:.2f}" if (n, ref) in med else "-"
            for ref in ("duckdb", "spark-sql")
        ]
        print(
            f"| {n:,} | {engine} | {res['runs']:.0f} | {res['wall_s']:.1f} | {ratios[0]} | {ratios[1]} "
            f"| {res.get('cpu_s', 0):.1f} | {res['peak_mb']:.0f} | {int(res['customers']):,} "
            f"| {res.get('load_avg_1m', 0):.1f} |"
        )
    return 0


def _fmt(res: dict[str, float]) -> str:
    text = (
        f"wall {res['wall_s']:8.2f} s   CPU {res.get('cpu_s', 0):8.1f} s   peak {res['peak_mb']:8.0f} MB   "
        f"customers {int(res['customers']):,}"
    )
    if res.get("jvm_start_s"):
        text += f"   (JVM start {res['jvm_start_s']:.1f} s excluded)"
    return text + f"   load avg {res.get('load_avg_1m', 0):.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
