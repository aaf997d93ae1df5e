"""Benchmark `segspark generate`: transactions written per second at a given size.

    python benchmarks/bench_generate.py --customers 125000 1250000   # ~1M and ~10M transactions

Prints, per size: customers, transactions, wall time of the whole generate (all five tables, Delta
commits included), transactions/s. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from segspark import generate
from segspark.config import load_settings
from segspark.session import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, nargs="+", default=[125_000, 1_250_000])
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--out", default=None, help="folder for the data (default: a temporary one, removed)")
    args = parser.parse_args()
    settings = load_settings([], [f"spark.master={args.master}", "lakehouse.engine=delta-rs"])
    spark = get_spark(settings.spark)
    root = Path(args.out or tempfile.mkdtemp(prefix="segspark-bench-"))
    print(f"{'customers':>12} {'transactions':>14} {'seconds':>9} {'tx/s':>12}")
    for n in args.customers:
        out = root / f"gen-{n}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        result = generate.write_lakehouse(settings, str(out), n, seed=42, spark=spark)
        elapsed = time.perf_counter() - started
        tx = result["rows"]["transactions"]
        print(f"{n:>12,} {tx:>14,} {elapsed:>9.1f} {tx / elapsed:>12,.0f}", flush=True)
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
