"""CLV (and churn) in Spark benchmark: summary statistics, fits, predictions and whole stages, timed.

Not a test. Transactions come from ``segspark.generate``; its archetypes give about 8 order lines
per customer, so the orders per customer are capped (a fractional cap, drawn per customer) to hit
the wanted customers and transactions together. The Parquet is written once under ``--out`` and
reused while its ``.complete`` marker is there; ``--path`` reads any Parquet of transactions (columns
customer_id, order_id, order_ts, amount) or a Delta table folder such as ``segspark generate``'s
``transactions`` instead. The silver ``orders`` and ``customer_days`` (``segspark.silver``) are built
from the lines once, written as Parquet next to them (``<path>_silver``) and reused: the model stages
read them, never the lines.

Steps, each timed on its own (Spark's JVM start is timed separately and excluded):

- ``summary``: ``summary.summary_statistics`` on ``customer_days`` as of the end date, persisted and
  materialized (as the CLV stage persists it); run ``--repeat`` times, the first on a cold JVM;
- ``sufficient stats``: the grouped (x, t_x, T) and (x, spend bin) tables that reach the driver;
- ``fit``: BG/NBD + Gamma-Gamma on them (driver);
- ``prediction``: ``predict.with_predictions`` (P(alive), expected purchases, expected spend,
  discounted CLV) on the persisted summary, written to Spark's ``noop`` sink;
- ``clv stage``: ``clv.run_clv`` (valid fits, the penalizer and historical-rate fallbacks) with the default
  holdout, then its customer scores to the ``noop`` sink;
- ``churn stage`` (``--churn``): ``churn.run_churn`` on ``orders`` with the default configuration,
  then its customer scores to the ``noop`` sink.

Each figure comes with the CPU seconds of the driver, the JVM and its Python workers, and the 1-minute
load average: other work on the machine inflates wall times (less so CPU times).

    python benchmarks/bench_clv_spark.py --customers 2500000 --transactions 10000000 [--after-ingest]

``--after-ingest`` first runs ``ingest.validate`` (timed on its own) and builds the silver tables from
its clean rows, as the pipeline does.

    python benchmarks/bench_clv_spark.py --path /tmp/ch-data/transactions --churn   # segspark generate's
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

AS_OF = "2025-12-31"  # the generator's default end date
DONE = ".complete"
SEED = 42
PILOT = 20_000


def _spark(driver_memory: str, partitions: int) -> Any:
    from segspark.config import SparkConfig
    from segspark.session import get_spark

    return get_spark(
        SparkConfig(master="local[2]", driver_memory=driver_memory, shuffle_partitions=partitions)
    )


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_s() -> float:
    """CPU seconds of this process, the JVM and the Python workers (a figure the load inflates less)."""
    total = 0.0
    for p in _descendants(os.getpid()):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in f[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


class _Step:
    """Wall and CPU time of one step, printed with the load average."""

    def __enter__(self) -> _Step:
        self.wall, self.cpu = time.perf_counter(), _cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu_s() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f}s (CPU {self.cpu:.1f}s, load {os.getloadavg()[0]:.2f})"


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def _capped(spark: Any, customers: int, cap: float) -> Any:
    """Generated order lines of ``customers`` base customers, each keeping at most floor/ceil(cap) orders."""
    from pyspark.sql import functions as F

    from segspark import generate as G

    base = G.customer_base(spark, customers, SEED)
    whole = math.floor(cap)
    # a per-customer uniform draw decides who keeps one more order: the mean cap is ``cap``
    u = F.pmod(F.xxhash64(F.col("id"), F.lit(SEED)), F.lit(1_000_000)) / F.lit(1_000_000.0)
    keep = F.lit(whole) + (u < F.lit(cap - whole)).cast("int")
    base = base.withColumn("n_orders", F.least(F.col("n_orders"), keep))
    return G.transactions(base, SEED)


def _plan(spark: Any, customers: int, transactions: int) -> tuple[int, float]:
    """Base size and order cap that give about ``customers`` buyers and ``transactions`` lines."""
    from pyspark.sql import functions as F

    from segspark import generate as G

    base = G.customer_base(spark, PILOT, SEED)
    buyers = base.filter(F.col("n_orders") > 0).count() / PILOT
    lines = G.transactions(base, SEED)
    k = F.substring_index(F.col("order_id"), "-", -1).cast("int")  # order number within the customer
    per_k = {
        int(r["k"]): int(r["n"])
        for r in lines.groupBy(k.alias("k")).agg(F.count(F.lit(1)).alias("n")).collect()
    }
    n_buyers = buyers * PILOT
    want = transactions / customers
    cum = 0.0
    for i in range(max(per_k) + 1):
        step = per_k.get(i, 0) / n_buyers
        if cum + step >= want:
            return math.ceil(customers / buyers), i + (want - cum) / step
        cum += step
    return math.ceil(customers / buyers), float(max(per_k) + 1)


def generate(path: Path, customers: int, transactions: int, driver_memory: str, partitions: int) -> None:
    spark = _spark(driver_memory, partitions)
    try:
        base_n, cap = _plan(spark, customers, transactions)
        t = time.perf_counter()
        _capped(spark, base_n, cap).write.mode("overwrite").parquet(str(path))
        df = spark.read.parquet(str(path))
        n = df.count()
        c = df.select("customer_id").distinct().count()
        (path / DONE).write_text(str(n))  # Spark skips files named with a leading dot
        print(
            f"generated {n:,} transactions of {c:,} customers (base {base_n:,}, mean order cap {cap:.3f}) "
            f"at {path} in {time.perf_counter() - t:.1f}s ({_load()})",
            flush=True,
        )
    finally:
        spark.stop()


def _read_lines(spark: Any, path: str) -> Any:
    """Transactions Parquet, or a Delta table folder (its current files, e.g. ``segspark generate``'s)."""
    if (Path(path) / "_delta_log").is_dir():
        import deltalake

        return spark.read.parquet(*deltalake.DeltaTable(path).file_uris())
    return spark.read.parquet(path)


def _silver(spark: Any, tx: Any, path: str) -> tuple[Any, Any]:
    """The silver orders and customer_days of ``tx``, written once next to ``path`` and read back."""
    from segspark import silver
    from segspark.config import PurchaseConfig

    folder = Path(path.rstrip("/") + "_silver")
    if not (folder / DONE).exists():
        with _Step() as step:
            silver.orders(tx, PurchaseConfig()).write.mode("overwrite").parquet(str(folder / "orders"))
            orders = spark.read.parquet(str(folder / "orders"))
            silver.customer_days(orders).write.mode("overwrite").parquet(str(folder / "customer_days"))
        (folder / DONE).write_text("")
        print(f"silver orders + customer_days (not part of the model stages) in {step}", flush=True)
    return spark.read.parquet(str(folder / "orders")), spark.read.parquet(str(folder / "customer_days"))


def run(
    path: str,
    driver_memory: str,
    partitions: int,
    model: str,
    repeat: int = 2,
    after_ingest: bool = False,
    churn: bool = False,
) -> None:
    import datetime as dt

    from pyspark.sql import functions as F

    from segspark.clv import PENALIZER_FALLBACK, run_clv
    from segspark.clv import models as M
    from segspark.clv import predict as P
    from segspark.clv import summary as S
    from segspark.config import ChurnConfig, ClvConfig

    t0 = time.perf_counter()
    spark = _spark(driver_memory, partitions)
    spark.range(1).count()
    print(f"JVM start {time.perf_counter() - t0:.1f}s (excluded)  {_load()}", flush=True)
    as_of = dt.date.fromisoformat(AS_OF)
    tx = _read_lines(spark, path)
    ingested = None
    silver_path = path
    if after_ingest:
        # as in the pipeline: the silver tables come from ingest's clean rows (pseudonymous ids)
        from segspark import ingest
        from segspark.config import CurrencyConfig, QualityConfig

        processing = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(0), tzinfo=dt.timezone.utc)
        with _Step() as step:
            ingested = ingest.validate(
                ingest.conform(tx, "transactions", {}),
                "transactions",
                QualityConfig(currency=CurrencyConfig(rates={"EUR": 1.08, "GBP": 1.27})),
                processing,
                key=b"benchmark-key-not-secret",
            )
        print(
            f"ingest (not part of the model stages): {ingested.rows_clean:,} clean lines in {step}",
            flush=True,
        )
        tx = ingested.clean
        silver_path = path.rstrip("/") + "_ingested"
    orders, days = _silver(spark, tx, silver_path)

    for i in range(repeat):
        # the first run pays the JVM's warm-up (JIT, code generation); in the pipeline the CLV stage
        # runs after ingest and RFM, on a warm JVM, as the later runs here do
        with _Step() as step:
            summary = S.summary_statistics(days, as_of, "week").persist()
            n = summary.count()
        print(f"summary statistics ({'cold' if i == 0 else 'warm'}): {n:,} customers in {step}", flush=True)
        if i < repeat - 1:
            summary.unpersist()

    with _Step() as step:
        rfm = S.compressed_rfm(summary, "week")
        spend = S.compressed_spend(summary)
    print(
        f"sufficient statistics to the driver: {rfm.n_rows:,} (x, t_x, T) rows, "
        f"{spend.n_rows:,} spend groups in {step}",
        flush=True,
    )

    t = time.perf_counter()
    fit = M.fit_transactions(model, rfm, strict=False)
    gg = M.fit_gamma_gamma(spend.stats, strict=False) if spend.stats is not None else None
    print(
        f"fit {model}{' + Gamma-Gamma' if gg else ''}: {time.perf_counter() - t:.2f}s  "
        f"converged {fit.converged}  params { {k: round(v, 4) for k, v in fit.params.items()} }  {_load()}",
        flush=True,
    )
    for penalty in PENALIZER_FALLBACK:  # what the pipeline does when the unpenalized fit fails
        if fit.converged:
            break
        t = time.perf_counter()
        fit = M.fit_transactions(model, rfm, penalizer=penalty, strict=False)
        print(
            f"    refit with penalizer {penalty}: {time.perf_counter() - t:.2f}s  converged {fit.converged}  "
            f"params { {k: round(v, 4) for k, v in fit.params.items()} }",
            flush=True,
        )

    with _Step() as step:
        pred = P.with_predictions(summary, fit, gg.values if gg else None, 12, 0.01, 30.4375 / 7)
        pred.write.format("noop").mode("overwrite").save()
    print(
        f"prediction (P(alive), expected purchases, expected spend, CLV): {n:,} customers in {step}",
        flush=True,
    )
    # a sanity figure from one aggregate, so a broken prediction does not pass as a fast one
    row = pred.agg(F.avg("p_alive").alias("pa"), F.sum("clv").alias("clv"), F.count("clv").alias("n")).first()
    assert row is not None
    print(f"    mean P(alive) {row['pa']:.4f}, total CLV {row['clv']:,.0f}, scored {row['n']:,}", flush=True)
    summary.unpersist()

    # the whole stage as the pipeline runs it: holdout validation, model fit and refit, scores
    with _Step() as step:
        res = run_clv(days, as_of, ClvConfig(model=model))  # type: ignore[arg-type]
    print(f"clv stage (run_clv, default holdout, model {model}): {step}", flush=True)
    with _Step() as step:
        res.customers.write.format("noop").mode("overwrite").save()
    print(f"    its customer scores written (noop): {step}", flush=True)
    if churn:
        from segspark import churn as C
        from segspark.config import PurchaseConfig

        with _Step() as step:
            cres = C.run_churn(orders, as_of, ChurnConfig(), PurchaseConfig())
        m = cres.metrics
        print(
            f"churn stage (run_churn, defaults): {step}; AUC {m['auc']:.3f}, trained on {m['train_rows']:,} "
            f"of {m['train_customers']:,}, evaluated on {m['eval_customers']:,} of {m['test_customers']:,}",
            flush=True,
        )
        with _Step() as step:
            cres.customers.write.format("noop").mode("overwrite").save()
        print(f"    its customer scores written (noop): {step}", flush=True)
    if ingested is not None:
        ingested.release()
    spark.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=2_500_000)
    ap.add_argument("--transactions", type=int, default=10_000_000)
    ap.add_argument("--out", default="/tmp/segspark-bench")
    ap.add_argument(
        "--path", default=None, help="existing transactions Parquet or Delta folder (skips generation)"
    )
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--model", default="bgnbd", choices=["bgnbd", "mbgnbd", "pareto_nbd"])
    ap.add_argument("--repeat", type=int, default=2, help="summary runs: the first cold, the rest warm")
    ap.add_argument(
        "--after-ingest", action="store_true", help="silver tables from ingest's clean rows, as the pipeline"
    )
    ap.add_argument("--churn", action="store_true", help="also time the churn stage on the silver orders")
    args = ap.parse_args(argv)
    if args.path:
        path = args.path
    else:
        p = Path(args.out) / f"clv_{args.customers}_{args.transactions}"
        if not (p / DONE).exists():
            generate(p, args.customers, args.transactions, args.driver_memory, args.shuffle_partitions)
        path = str(p)
    run(
        path,
        args.driver_memory,
        args.shuffle_partitions,
        args.model,
        max(1, args.repeat),
        args.after_ingest,
        args.churn,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
