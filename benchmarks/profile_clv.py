"""Where the CLV stage's time goes: each step of ``segspark.clv.run_clv`` timed, on a lakehouse a run left.

Not a test. Reads the ``customer_days`` table of an output folder (the Delta table's current files,
read as Parquet: no Delta engine needed), starts a local session as a run does, and runs the stage
as the pipeline calls it (the holdout value by the RFM segment at the calibration end included), with
a timer around each of its steps: the summaries, the candidate fits and their holdout cells, the
checks (tracking curve, holdout by frequency, holdout value), the refit, the spend models and the
value tier. Inner steps print indented under the step that called them; then the customers are
written to Spark's ``noop`` sink. The first Spark jobs of the process pay the JVM's warm-up: run it
twice (``--repeat 2``) to see the warm figures a run's later stages see.

    python benchmarks/profile_clv.py --output /tmp/bench/out --as-of 2025-12-31 --repeat 2

``--output`` is a run's output folder (``output.path``), e.g. the one
``bench_refresh.py --incremental`` leaves under ``<out>/refresh/incremental-<lines>/incremental/output``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# (module, function) pairs timed; a step called inside another prints under it
STEPS = (
    ("segspark.clv.summary", "two_summaries_from_purchase_days"),
    ("segspark.clv.summary", "compressed_rfm"),
    ("segspark.clv.summary", "compressed_spend"),
    ("segspark.clv.models", "fit_transactions"),
    ("segspark.clv.validation", "holdout_cells"),
    ("segspark.clv.validation", "holdout_by_frequency"),
    ("segspark.clv.validation", "tracking_curve"),
    ("segspark.clv.validation", "holdout_value"),
    ("segspark.clv.predict", "value_tier_threshold"),
    ("segspark.features", "rfm_segments_as_of"),
    ("segspark.clv.fit", "_search"),
    ("segspark.clv.fit", "_validation"),
    ("segspark.clv.fit", "_holdout_value"),
    ("segspark.clv.fit", "_final_fits"),
    ("segspark.clv.fit", "spend_model_for"),
    ("segspark.clv.fit", "_with_value_tier"),
)


class _Timers:
    """Wraps module functions with timers; each call prints its seconds, indented by nesting."""

    def __init__(self) -> None:
        self.depth = 0
        self.lines: list[tuple[int, str, float]] = []

    def wrap(self, module: Any, name: str) -> None:
        fn = getattr(module, name)
        label = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.lines.append((self.depth, label, time.perf_counter() - start))

        setattr(module, name, timed)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        start = time.perf_counter()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            self.lines.append((self.depth, label, time.perf_counter() - start))

    def print(self, title: str) -> None:
        # a call prints when it returns (after its inner calls): put each caller above its callees
        print(f"\n{title}")
        stack: list[list[tuple[int, str, float]]] = [[]]
        for depth, label, seconds in self.lines:
            while len(stack) <= depth + 1:
                stack.append([])
            children = stack[depth + 1]
            stack[depth + 1] = []
            stack[depth].append((depth, label, seconds))
            stack[depth].extend(children)
        for depth, label, seconds in stack[0]:
            print(f"  {'  ' * depth}{label:<{60 - 2 * depth}s} {seconds:7.1f} s")
        self.lines.clear()


def _customer_days(spark: Any, output: Path) -> Any:
    from deltalake import DeltaTable

    table = output / "tables" / "customer_days"
    if not table.is_dir():
        raise SystemExit(f"no customer_days table under {output / 'tables'}: give a run's output folder")
    return spark.read.parquet(*DeltaTable(str(table)).file_uris())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="a run's output folder (output.path)")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, required=True, help="the run's as_of_date")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args()

    import importlib

    from segspark.config import ClvConfig, RfmConfig, SparkConfig
    from segspark.session import get_spark

    spark = get_spark(SparkConfig(master="local[2]", driver_memory=args.driver_memory))
    timers = _Timers()
    for module_name, name in STEPS:
        timers.wrap(importlib.import_module(module_name), name)
    from segspark import features
    from segspark.clv import SEGMENT, run_clv

    days = _customer_days(spark, args.output)

    def segments(day: dt.date) -> Any:  # as the pipeline gives them: from the same customer days
        return features.rfm_segments_as_of(days, day, RfmConfig(), SEGMENT)

    for rep in range(args.repeat):
        with timers.step("run_clv (the whole stage)"):
            res = run_clv(days, args.as_of, ClvConfig(), segments_at=segments)
        with timers.step("its customers written (noop)"):
            res.customers.write.format("noop").mode("overwrite").save()
        res.release()
        timers.print(f"run {rep + 1} of {args.repeat}: model {res.fit.get('model')}")
    spark.stop()


if __name__ == "__main__":
    main()
