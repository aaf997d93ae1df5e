"""End-to-end benchmark: ``segspark run`` against the notebook a user would write instead, on the same files.

Not a test. For each ``--lines`` size it generates a lakehouse once with the package's own generator
(``segspark generate``; its archetypes give about 12 transaction lines per customer, measured once on
a 20,000-customer pilot, so the customer count is chosen to give the wanted lines), and copies the
transactions to Parquet once (``transactions.parquet``: both sides read the same file). Then, for
each repetition, alternately:

- ``segspark run`` as a subprocess, end to end (JVM start, ingest ... report, MLflow), for
  ``tx`` (transactions only) and ``all`` (the four inputs: transactions from the same Parquet, the
  customers, events and marketing spend tables as generated), once per ``--segspark-cmd``;
- the reference notebook (``--skip-reference`` to leave it out) in a subprocess of its own: pandas
  RFM with quintile scores and segments, lifetimes ``summary_data_from_transaction_data`` +
  ``BetaGeoFitter`` + ``GammaGammaFitter`` and a 12-month CLV and P(alive) for every customer,
  scikit-learn ``KMeans`` for k = 2..10 with the silhouette on a 10,000-customer sample, and a
  monthly cohort retention matrix; BLAS/OpenMP limited to one thread (threadpoolctl).

For every run: wall time (parent's clock, process start to exit), the peak resident memory of the
whole process tree (driver Python + JVM + Python workers: the sum of every descendant's RSS,
polled every 0.5 s from /proc), and each stage's seconds (``segspark``: the ``step_seconds`` of the
run's row in the ``runs`` table, read with ``deltalake``; reference: its own step timer). At the end
a Markdown table and the ratio segspark / reference (target: at most 0.5 at 10M lines).

    python benchmarks/bench_pipeline.py --lines 1000000 10000000 --inputs both

Before/after: give ``--segspark-cmd`` once per checkout, ``LABEL=COMMAND``; every repetition runs
them in turn on the same files. A command is split like a shell line and run with the run folder as
working directory, so an older checkout is picked with ``env PYTHONPATH=...``::

    git worktree add /tmp/wt-old <commit>
    python benchmarks/bench_pipeline.py --lines 10000000 --repeat 2 \\
        --segspark-cmd "old=env PYTHONPATH=/tmp/wt-old python -m segspark" \\
        --segspark-cmd "new=python -m segspark"

With ``--event-log``, each run's Spark event log also gives, per pipeline stage (tasks placed by
their finish time in the stage's window from the run log): the shuffle bytes written and the full
scans of the input lines and of ``orders`` (the rows their file scans read, from each scan node's
SQL metric, divided by the table's rows: 2.0 is the table read twice, a pruned read a fraction).

Results (one JSON object per run) are also appended to ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEED = 42
PILOT = 20_000
DONE = ".complete"  # Spark, pandas and DuckDB all skip files named with a leading dot
KEY = "benchmark-key-not-secret"
CURRENCY_RATES = {"EUR": 1.08, "GBP": 1.27}  # the generator's currencies, as in pipeline.demo_overrides
RATES = "{" + ", ".join(f"{k}: {v}" for k, v in CURRENCY_RATES.items()) + "}"
OPTIONAL_INPUTS = ("customers", "events", "marketing_spend")
POLL_S = 0.5
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
MIN_AGE_S = 1.0
GB = 1e9


# ---- process tree memory ---------------------------------------------------------------------------
def _tree(root: int) -> list[int]:
    """``root`` and every live descendant (from the parent ids in /proc/<pid>/stat), except processes
    younger than :data:`MIN_AGE_S`.

    The JVM starts each Python worker by forking itself (posix_spawn through jspawnhelper): until the
    exec, /proc shows the child with the JVM's whole resident set, and a sample then would count the
    JVM twice. Forks that short never live a second; the workers that stay are counted from then on.
    """
    children: dict[int, list[int]] = {}
    young: set[int] = set()
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, started = int(fields[1]), int(fields[19]) / TICKS
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        if uptime - started < MIN_AGE_S:
            young.add(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid == root or pid not in young:
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _kind(pid: int) -> str:
    """``java``, ``python`` or the process's own name: the breakdown of the peak."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            name = fh.read().strip()
    except OSError:
        return "?"
    return next((k for k in ("java", "python") if name.startswith(k)), name)


class TreeMemory(threading.Thread):
    """Polls the summed RSS of a process tree until stopped; keeps the peak."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak = 0
        self.peak_processes = 0
        self.peak_by_kind: dict[str, int] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = {pid: _rss(pid) for pid in _tree(self.root)}
            total = sum(rss.values())
            if total > self.peak:
                self.peak, self.peak_processes = total, len(rss)
                self.peak_by_kind = {}
                for pid, value in rss.items():
                    kind = _kind(pid)
                    self.peak_by_kind[kind] = self.peak_by_kind.get(kind, 0) + value
            self._stop_event.wait(POLL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Measured:
    code: int
    wall_s: float
    peak_rss: int
    processes: int
    peak_by_kind: dict[str, int]
    stdout: str
    timed_out: bool = False


def measure(cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float) -> Measured:
    """Run ``cmd`` in its own session; wall time and peak tree RSS; output to ``log`` (stdout kept)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        err.write(f"$ (cd {cwd} && {shlex.join(cmd)})\n")
        err.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        sampler = TreeMemory(proc.pid)
        sampler.start()
        timed_out = False
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
            stdout, _ = proc.communicate()
        except BaseException:  # Ctrl-C: leave no JVM behind
            _stop_group(proc)
            raise
        finally:
            sampler.stop()
        wall = time.perf_counter() - started
        err.write(f"\n---- stdout ----\n{stdout}")
    return Measured(
        proc.returncode, wall, sampler.peak, sampler.peak_processes, sampler.peak_by_kind, stdout, timed_out
    )


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop the process group this benchmark started for ``proc`` (its JVM and workers included)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- data ------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SEGSPARK_PSEUDO_KEY", KEY)
    env.pop("PYSPARK_GATEWAY_PORT", None)  # every run starts its own JVM
    return env


def _generate(out: Path, customers: int, log: Path) -> dict[str, Any]:
    """``segspark generate`` of this checkout; returns the generated row counts."""
    cmd = [
        sys.executable,
        "-m",
        "segspark",
        "generate",
        "--out",
        str(out),
        "--customers",
        str(customers),
        "--seed",
        str(SEED),
    ]
    run = measure(cmd, cwd=REPO, env=_env(), log=log, timeout=4 * 3600)
    if run.code != 0:
        raise SystemExit(f"segspark generate failed (exit {run.code}); see {log}")
    from deltalake import DeltaTable

    rows = {name: _delta_rows(DeltaTable(str(out / name))) for name in ("transactions", *OPTIONAL_INPUTS)}
    print(
        f"  generated {customers:,} customers in {run.wall_s:.0f} s (peak RSS {run.peak_rss / GB:.1f} GB): "
        + ", ".join(f"{k} {v:,}" for k, v in rows.items()),
        flush=True,
    )
    return rows


def _delta_rows(table: Any) -> int:
    return int(table.to_pyarrow_dataset().count_rows())  # from the Parquet footers


def lines_per_customer(out: Path) -> float:
    """Transaction lines per generated customer, measured once on a pilot and cached."""
    cache = out / "lines_per_customer.json"
    if cache.exists():
        return float(json.loads(cache.read_text())["lines_per_customer"])
    print(f"pilot: {PILOT:,} customers to measure lines per customer", flush=True)
    pilot = out / "pilot"
    shutil.rmtree(pilot, ignore_errors=True)
    rows = _generate(pilot, PILOT, out / "logs" / "pilot.log")
    ratio = rows["transactions"] / PILOT
    cache.write_text(json.dumps({"lines_per_customer": ratio, "pilot_customers": PILOT, "seed": SEED}))
    shutil.rmtree(pilot, ignore_errors=True)
    return ratio


def prepare(out: Path, lines: int) -> dict[str, Any]:
    """The generated lakehouse for ``lines`` and its transactions as Parquet (made once, then reused)."""
    data = out / f"data-{lines}"
    marker = data / DONE
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    customers = max(1, math.ceil(lines / lines_per_customer(out)))
    print(f"data for {lines:,} lines: {customers:,} customers under {data}", flush=True)
    shutil.rmtree(data, ignore_errors=True)
    rows = _generate(data / "delta", customers, out / "logs" / f"generate-{lines}.log")
    started = time.perf_counter()
    parquet = data / "transactions.parquet"
    _to_parquet(data / "delta" / "transactions", parquet)
    print(f"  transactions copied to Parquet in {time.perf_counter() - started:.0f} s: {parquet}", flush=True)
    info = {
        "lines": rows["transactions"],
        "customers": customers,
        "rows": rows,
        "delta": str(data / "delta"),
        "parquet": str(parquet),
    }
    marker.write_text(json.dumps(info))
    return info


def _to_parquet(delta: Path, parquet: Path) -> None:
    """The Delta table's current snapshot as plain Parquet files (streamed, no Spark needed)."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    ds.write_dataset(
        DeltaTable(str(delta)).to_pyarrow_dataset(),
        parquet,
        format="parquet",
        max_rows_per_file=2_000_000,
        min_rows_per_group=250_000,
        max_rows_per_group=500_000,
        existing_data_behavior="delete_matching",
    )


# ---- segspark run ----------------------------------------------------------------------------------
def run_overrides(data: dict[str, Any], inputs: str, output: Path) -> list[str]:
    """``--set`` items: the Parquet transactions, the generated Delta tables for ``all``, the output,
    and the embedded engine (README's figures; ``--set lakehouse.engine=delta-spark`` measures Delta's
    own Spark engine: the extra ``--set`` items come after these)."""
    items = [
        "lakehouse.engine=delta-rs",
        f"output.path={output}",
        f"input.transactions.path={data['parquet']}",
        "input.transactions.format=parquet",
        f"quality.currency.rates={RATES}",
    ]
    if inputs == "all":
        for name in OPTIONAL_INPUTS:
            items += [f"input.{name}.path={Path(data['delta']) / name}", f"input.{name}.format=delta"]
    return items


def read_runs_rows(output: Path) -> dict[str, Any] | None:
    """The run's ``runs`` rows merged (status, step seconds in order), or None if none was written.

    The output folder is the run's own, so every row is this run's: one per command it recorded
    (a ``run`` row, and on newer versions a ``report`` row of the same run id).
    """
    table = output / "tables" / "runs"
    if not (table / "_delta_log").is_dir():
        return None
    from deltalake import DeltaTable

    rows = DeltaTable(str(table)).to_pyarrow_table().to_pylist()
    rows.sort(key=lambda r: str(r.get("started_at")))
    if not rows:
        return None
    steps: dict[str, float] = {}
    for row in rows:
        pairs = row.get("step_seconds") or []
        steps.update(pairs.items() if isinstance(pairs, dict) else pairs)
    failed = [r for r in rows if r.get("status") != "succeeded"]
    return {
        "status": failed[0]["status"] if failed else "succeeded",
        "error": failed[0].get("error") if failed else None,
        "commands": [r.get("command") for r in rows],
        "steps": steps,
    }


def in_log_order(steps: dict[str, float], log: Path) -> dict[str, float]:
    """``steps`` in the order the run logged them ("<step> took N s" as each ends; the runs table's
    map does not keep the order), those never logged last."""
    text = log.read_text(errors="replace")
    position = {step: text.find(f" {step} took ") for step in steps}
    ranked = sorted(steps, key=lambda step: (position[step] < 0, position[step]))
    return {step: steps[step] for step in ranked}


def run_segspark(
    label: str,
    command: str,
    data: dict[str, Any],
    inputs: str,
    rep: int,
    args: argparse.Namespace,
    engine: str | None = None,
) -> dict[str, Any]:
    label = f"{label}-{engine}" if engine else label
    name = f"{label}-{data['lines']}-{inputs}-r{rep}"
    output = Path(args.out) / "runs" / name
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    engine_set = [f"lakehouse.engine={engine}"] if engine else []
    overrides = [*run_overrides(data, inputs, output), *engine_set, *args.set]
    events = Path(args.out) / "eventlogs" / name
    if args.event_log:
        shutil.rmtree(events, ignore_errors=True)
        events.mkdir(parents=True)
        overrides.append(f'spark.conf={{spark.eventLog.enabled: "true", spark.eventLog.dir: "{events}"}}')
    cmd = [*shlex.split(command), "run", *(x for item in overrides for x in ("--set", item))]
    log = Path(args.out) / "logs" / f"{name}.log"
    measured = measure(cmd, cwd=output, env=_env(), log=log, timeout=args.timeout)
    row = read_runs_rows(output)
    if row:
        row["steps"] = in_log_order(row["steps"], log)
    status = "ok" if measured.code == 0 else ("timeout" if measured.timed_out else f"exit {measured.code}")
    result = {
        "kind": "segspark",
        "label": label,
        "lines": data["lines"],
        "customers": data["customers"],
        "inputs": inputs,
        "rep": rep,
        "status": status,
        "wall_s": round(measured.wall_s, 1),
        "peak_rss_gb": round(measured.peak_rss / GB, 2),
        "processes": measured.processes,
        "peak_by_kind_gb": {k: round(v / GB, 2) for k, v in sorted(measured.peak_by_kind.items())},
        "steps": (row or {}).get("steps", {}),
        "run_status": (row or {}).get("status"),
        "log": str(log),
    }
    if measured.code != 0:
        result["error"] = _last_error(log)
    if args.event_log:
        result["spark"] = spark_task_totals(events)
        result["per_stage"] = per_stage_io(events, log, *scanned_tables(data, output))
    if not args.keep_runs:
        shutil.rmtree(output, ignore_errors=True)
    return result


# TaskEnd metrics summed over every task of a run (Spark's event log, one JSON event per line)
TASK_TOTALS = {
    "spill_memory_gb": ("Memory Bytes Spilled",),
    "spill_disk_gb": ("Disk Bytes Spilled",),
    "shuffle_write_gb": ("Shuffle Write Metrics", "Shuffle Bytes Written"),
    "input_gb": ("Input Metrics", "Bytes Read"),
}


def scanned_tables(data: dict[str, Any], output: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The tables whose full scans are counted (kind -> path) and their rows: the input lines and the
    silver ``orders`` of the run (its latest version)."""
    tables = {"lines": str(data["parquet"]), "orders": str(output / "tables" / "orders")}
    rows = {"lines": int(data["lines"])}
    if (output / "tables" / "orders" / "_delta_log").is_dir():
        from deltalake import DeltaTable

        rows["orders"] = _delta_rows(DeltaTable(tables["orders"]))
    return tables, rows


def _events(folder: Path, kinds: tuple[str, ...]) -> Any:
    """The events of ``kinds`` (e.g. ``"SparkListenerTaskEnd"``) in the event log under ``folder``, parsed."""
    import io

    import pyarrow as pa

    parts = sorted(x for x in folder.rglob("events_*") if x.is_file())  # rolling logs: a folder of parts
    for log in parts:
        codec = log.suffix.lstrip(".")  # Spark 4 compresses event logs (zstd by default)
        stream = pa.input_stream(str(log), compression=codec if codec in ("zstd", "lz4", "gzip") else None)
        with io.TextIOWrapper(stream, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                # SQL events are named with their package (org.apache.spark.sql.execution.ui.)
                if any(f'{kind}"' in line[:200] for kind in kinds):
                    yield json.loads(line)


def _metric(metrics: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = metrics
    for part in path:
        value = value.get(part, 0) if isinstance(value, dict) else 0
    return float(value or 0)


def spark_task_totals(folder: Path) -> dict[str, float]:
    """Spill, shuffle and input bytes (GB) and the task count of the run whose event log is in ``folder``."""
    totals = dict.fromkeys(TASK_TOTALS, 0.0)
    tasks = 0
    for event in _events(folder, ("SparkListenerTaskEnd",)):
        metrics = event.get("Task Metrics") or {}
        tasks += 1
        for key, path in TASK_TOTALS.items():
            totals[key] += _metric(metrics, path) / GB
    return {k: round(v, 2) for k, v in totals.items()} | {"tasks": tasks}


# ---- per pipeline stage: shuffle bytes and full scans of lines and orders (event log + the run's log)
STAGE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*: stage_(\w+) took ([\d.]+) s$")
ROWS_READ = "number of output rows"  # a file scan's rows read (after row-group skipping)


def stage_windows(log: Path) -> list[tuple[str, float, float]]:
    """(stage, start, end) in epoch seconds, from the run log's "stage_<name> took N s" lines (the
    log's local time, on this machine's clock like the event log's)."""
    windows = []
    for line in log.read_text(errors="replace").splitlines():
        m = STAGE_LINE.match(line.strip())
        if m:
            end = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            windows.append((m.group(3), end - float(m.group(4)), end))
    return windows


def _scan_accumulators(plan: dict[str, Any], tables: dict[str, str], out: dict[int, str]) -> None:
    """The rows-read accumulator of every file scan in ``plan`` whose location holds one of
    ``tables``' paths (kind -> path), into ``out`` (accumulator id -> kind)."""
    location = str((plan.get("metadata") or {}).get("Location", ""))
    if plan.get("nodeName", "").startswith(("Scan ", "FileScan")) and location:
        kind = next((k for k, path in tables.items() if path in location), None)
        for metric in plan.get("metrics", []):
            if kind and metric.get("name") == ROWS_READ:
                out[int(metric["accumulatorId"])] = kind
    for child in plan.get("children", []):
        _scan_accumulators(child, tables, out)


def per_stage_io(folder: Path, log: Path, tables: dict[str, str], rows: dict[str, int]) -> dict[str, Any]:
    """Per pipeline stage: shuffle bytes written (GB) and full scans of each of ``tables`` (rows its
    file scans read / ``rows[kind]``: 2.0 is the whole table read twice, a pruned read a fraction).

    Tasks go to the stage whose time window holds their finish time; a scan's rows come from the SQL
    metric of its plan node (plans of every SQL execution, adaptive re-plans included)."""
    windows = stage_windows(log)
    accumulators: dict[int, str] = {}
    out = {name: {"shuffle_gb": 0.0} | dict.fromkeys(tables, 0.0) for name, _, _ in windows}
    plan_kinds = ("SparkListenerSQLExecutionStart", "SparkListenerSQLAdaptiveExecutionUpdate")
    for event in _events(folder, (*plan_kinds, "SparkListenerTaskEnd")):
        if not event["Event"].endswith("SparkListenerTaskEnd"):
            _scan_accumulators(event.get("sparkPlanInfo") or {}, tables, accumulators)
            continue
        finished = (event.get("Task Info") or {}).get("Finish Time", 0) / 1000
        stage = next((name for name, start, end in windows if start <= finished <= end + 1), None)
        if stage is None:
            continue
        written = _metric(event.get("Task Metrics") or {}, ("Shuffle Write Metrics", "Shuffle Bytes Written"))
        out[stage]["shuffle_gb"] += written / GB
        for acc in (event.get("Task Info") or {}).get("Accumulables", []):
            kind = accumulators.get(int(acc.get("ID", -1)))
            if kind is not None:
                out[stage][kind] += float(acc.get("Update") or 0) / max(rows.get(kind, 0), 1)
    return {stage: {k: round(v, 3) for k, v in values.items()} for stage, values in out.items()}


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("segspark:") or "Error" in line or "error" in line]
    return (errors or lines or [""])[-1][:300]


# ---- the reference notebook ------------------------------------------------------------------------
# The classic (R, F) score -> segment map of RFM notebooks.
RFM_SEGMENTS = {
    r"[1-2][1-2]": "hibernating",
    r"[1-2][3-4]": "at_risk",
    r"[1-2]5": "cant_lose",
    r"3[1-2]": "about_to_sleep",
    r"33": "need_attention",
    r"[3-4][4-5]": "loyal_customers",
    r"41": "promising",
    r"51": "new_customers",
    r"[4-5][2-3]": "potential_loyalists",
    r"5[4-5]": "champions",
}


def reference(parquet: str, seed: int) -> dict[str, Any]:
    """What a user writes instead: pandas RFM, lifetimes CLV, scikit-learn k-means, cohort matrix."""
    import numpy as np
    import pandas as pd
    from threadpoolctl import threadpool_limits

    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = round(now - clock, 3)
        clock = now

    with threadpool_limits(limits=1):
        from lifetimes import BetaGeoFitter, GammaGammaFitter
        from lifetimes.utils import ConvergenceError, summary_data_from_transaction_data
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score
        from sklearn.preprocessing import StandardScaler

        step("imports")
        tx = pd.read_parquet(parquet)
        step("read")

        # amounts are in each line's currency: to the base currency, as the job's quality.currency.rates do
        tx["amount"] = tx["amount"] * tx["currency"].map(CURRENCY_RATES).fillna(1.0)
        orders = (
            tx.groupby(["customer_id", "order_id"], sort=False)
            .agg(order_ts=("order_ts", "min"), net=("amount", "sum"))
            .reset_index()
        )
        orders["order_date"] = orders["order_ts"].dt.tz_convert(None).dt.normalize()
        as_of = orders["order_date"].max()
        purchases = orders[orders["net"] > 0]
        rfm = purchases.groupby("customer_id").agg(
            last=("order_date", "max"), frequency=("order_id", "count"), monetary=("net", "sum")
        )
        rfm["recency"] = (as_of - rfm["last"]).dt.days
        rfm["R"] = pd.qcut(rfm["recency"].rank(method="first"), 5, labels=[5, 4, 3, 2, 1]).astype(int)
        rfm["F"] = pd.qcut(rfm["frequency"].rank(method="first"), 5, labels=[1, 2, 3, 4, 5]).astype(int)
        rfm["M"] = pd.qcut(rfm["monetary"].rank(method="first"), 5, labels=[1, 2, 3, 4, 5]).astype(int)
        rfm["segment"] = (rfm["R"].astype(str) + rfm["F"].astype(str)).replace(RFM_SEGMENTS, regex=True)
        step("rfm")

        summary = summary_data_from_transaction_data(
            purchases,
            "customer_id",
            "order_date",
            monetary_value_col="net",
            observation_period_end=as_of,
            freq="W",
        )
        step("clv_summary")
        frt = summary["frequency"], summary["recency"], summary["T"]
        penalizer = 0.0
        try:
            bgf = BetaGeoFitter(penalizer_coef=penalizer).fit(*frt)
        except ConvergenceError:  # lifetimes' own advice: add a small penalizer
            penalizer = 0.001
            bgf = BetaGeoFitter(penalizer_coef=penalizer).fit(*frt)
        returning = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
        gg_penalizer = 0.0
        try:
            ggf = GammaGammaFitter(penalizer_coef=gg_penalizer).fit(
                returning["frequency"], returning["monetary_value"]
            )
        except ConvergenceError:  # as for BG/NBD: the small penalizer a notebook would add next
            gg_penalizer = 0.001
            ggf = GammaGammaFitter(penalizer_coef=gg_penalizer).fit(
                returning["frequency"], returning["monetary_value"]
            )
        step("clv_fit")
        summary["p_alive"] = bgf.conditional_probability_alive(*frt)
        summary["clv_12m"] = ggf.customer_lifetime_value(
            bgf, *frt, summary["monetary_value"], time=12, freq="W", discount_rate=0.01
        )
        step("clv_predict")

        features = rfm[["recency", "frequency", "monetary"]].join(summary["clv_12m"], how="left").fillna(0.0)
        x = StandardScaler().fit_transform(np.log1p(features.clip(lower=0.0)))
        sweep = {}
        for k in range(2, 11):
            labels = KMeans(n_clusters=k, n_init="auto", random_state=seed).fit_predict(x)
            sweep[k] = float(silhouette_score(x, labels, sample_size=min(10_000, len(x)), random_state=seed))
        best_k = max(sweep, key=lambda k: sweep[k])
        step("kmeans_sweep")

        first = purchases.groupby("customer_id")["order_date"].transform("min")
        cohort = first.dt.to_period("M")
        period = (purchases["order_date"].dt.to_period("M") - cohort).apply(lambda offset: offset.n)
        active = (
            pd.DataFrame({"cohort": cohort, "period": period, "customer_id": purchases["customer_id"]})
            .groupby(["cohort", "period"])["customer_id"]
            .nunique()
            .unstack(fill_value=0)
        )
        retention = active.div(active[0], axis=0)
        step("cohorts")

    return {
        "steps": steps,
        "lines": len(tx),
        "customers": len(rfm),
        "segments": int(rfm["segment"].nunique()),
        "bgnbd_penalizer": penalizer,
        "gamma_gamma_penalizer": gg_penalizer,
        "bgnbd": {k: float(v) for k, v in bgf.params_.items()},
        "best_k": best_k,
        "silhouette": round(sweep[best_k], 4),
        "cohort_matrix": list(retention.shape),
    }


def run_reference(data: dict[str, Any], rep: int, args: argparse.Namespace) -> dict[str, Any]:
    log = Path(args.out) / "logs" / f"reference-{data['lines']}-r{rep}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--reference-of", data["parquet"]]
    measured = measure(cmd, cwd=Path(args.out), env=_env(), log=log, timeout=args.timeout)
    result: dict[str, Any] = {
        "kind": "reference",
        "label": "reference",
        "lines": data["lines"],
        "customers": data["customers"],
        "inputs": "tx",
        "rep": rep,
        "wall_s": round(measured.wall_s, 1),
        "peak_rss_gb": round(measured.peak_rss / GB, 2),
        "processes": measured.processes,
        "peak_by_kind_gb": {k: round(v / GB, 2) for k, v in sorted(measured.peak_by_kind.items())},
        "log": str(log),
    }
    if measured.code == 0:
        out = json.loads(measured.stdout.strip().splitlines()[-1])
        result.update(status="ok", steps=out.pop("steps"), detail=out)
    else:
        result.update(
            status="timeout" if measured.timed_out else f"exit {measured.code}",
            steps={},
            error=_last_error(log),
        )
    return result


# ---- reporting -------------------------------------------------------------------------------------
def _print_run(result: dict[str, Any]) -> None:
    who = result["label"] if result["kind"] == "reference" else f"{result['label']} run ({result['inputs']})"
    print(
        f"{who} at {result['lines']:,} lines, rep {result['rep']}: {result['status']}, "
        f"wall {result['wall_s']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB "
        f"({result['processes']} processes: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result.get("peak_by_kind_gb", {}).items())
        + ")",
        flush=True,
    )
    for step, seconds in result.get("steps", {}).items():
        print(f"    {step:32s} {seconds:9.1f} s")
    if result.get("spark"):
        print("    spark tasks: " + ", ".join(f"{k} {v}" for k, v in result["spark"].items()))
    for stage, values in result.get("per_stage", {}).items():
        print(
            f"    stage {stage:12s} shuffle {values['shuffle_gb']:.3f} GB, full scans: "
            + ", ".join(f"{k} {v:.2f}" for k, v in values.items() if k != "shuffle_gb")
        )
    if result.get("detail"):
        print(f"    {json.dumps(result['detail'])}")
    if result.get("error"):
        print(f"    error: {result['error']}  (log: {result['log']})")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary_table(results: list[dict[str, Any]], min_step_s: float = 1.0) -> str:
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["lines"], r["label"], r["inputs"]), []).append(r)
    ref_wall = {
        lines: _median([r["wall_s"] for r in rs if r["status"] == "ok"])
        for (lines, label, _), rs in groups.items()
        if label == "reference"
    }
    head = [
        "lines",
        "customers",
        "what",
        "inputs",
        "runs ok",
        "wall s (median)",
        "peak RSS GB (max)",
        "x reference",
    ]
    rows = [head, ["---:", "---:", "---", "---", "---:", "---:", "---:", "---:"]]
    order = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "reference", kv[0][2] != "tx"))
    for (lines, label, inputs), rs in order:
        ok = [r for r in rs if r["status"] == "ok"]
        wall = _median([r["wall_s"] for r in ok])
        ratio = wall / ref_wall[lines] if label != "reference" and ok and lines in ref_wall else None
        rows.append(
            [
                f"{lines:,}",
                f"{rs[0]['customers']:,}",
                label,
                inputs,
                f"{len(ok)}/{len(rs)}",
                f"{wall:.1f}" if ok else "-",
                f"{max(r['peak_rss_gb'] for r in rs):.2f}",
                f"{ratio:.2f}" if ratio is not None and ratio == ratio else "-",
            ]
        )
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)

    # stage seconds (median over repetitions), one column per run kind
    columns = sorted(groups, key=lambda key: (key[0], key[1] == "reference", key[1], key[2] != "tx"))
    steps = _names(groups, columns, "steps")
    rows2 = _head("step", columns)
    hidden = 0
    for s in steps:
        medians = [_median([r["steps"][s] for r in groups[k] if s in r.get("steps", {})]) for k in columns]
        if max((m for m in medians if m == m), default=0.0) < min_step_s:
            hidden += 1
            continue
        rows2.append([s, *[f"{m:.1f}" if m == m else "" for m in medians]])
    note = f" ({hidden} steps under {min_step_s:g} s everywhere not shown)" if hidden else ""
    return (
        table
        + f"\n\nStep seconds (median over repetitions){note}:\n\n"
        + "\n".join("| " + " | ".join(row) + " |" for row in rows2)
        + stage_io_table(groups, columns)
    )


Groups = dict[tuple[int, str, str], list[dict[str, Any]]]  # runs by (lines, label, inputs)


def _names(groups: Groups, columns: list[Any], field: str) -> list[str]:
    """The keys of every run's ``field`` (steps, per_stage), in first-seen order."""
    names: list[str] = []
    for key in columns:
        for r in groups[key]:
            names += [s for s in r.get(field, {}) if s not in names]
    return names


def _head(first: str, columns: list[Any]) -> list[list[str]]:
    """A Markdown table's header and alignment rows, one column per (lines, label, inputs)."""
    head = [first, *[f"{label} {inputs} {lines // 1000:,}k" for lines, label, inputs in columns]]
    return [head, ["---", *["---:"] * len(columns)]]


def stage_io_table(groups: Groups, columns: list[Any]) -> str:
    """Per pipeline stage and run kind (runs with ``--event-log``): shuffle GB / full scans of the
    lines / of orders, medians over repetitions; empty without event logs."""
    with_io = [k for k in columns if any(r.get("per_stage") for r in groups[k])]
    if not with_io:
        return ""
    stages = _names(groups, with_io, "per_stage")
    rows = _head("stage", with_io)
    for stage in stages:
        cells = []
        for key in with_io:
            found = [r["per_stage"][stage] for r in groups[key] if stage in r.get("per_stage", {})]
            med = {m: _median([f[m] for f in found if m in f]) for m in ("shuffle_gb", "lines", "orders")}
            cells.append(" / ".join(f"{v:.2f}" if v == v else "-" for v in med.values()))
        rows.append([stage, *cells])
    return (
        "\n\nPer stage, from the event log: shuffle GB written / full scans of the lines / of orders "
        "(median over repetitions):\n\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)
    )


# ---- main ------------------------------------------------------------------------------------------
def _commands(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for i, value in enumerate(values or [f"segspark={shlex.quote(sys.executable)} -m segspark"]):
        label, sep, command = value.partition("=")
        if not sep or " " in label or not label:
            label, command = (f"segspark{i + 1}" if len(values) > 1 else "segspark"), value
        out.append((label, command))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="/tmp/segspark-bench/pipeline", help="data, runs, logs and results")
    p.add_argument("--lines", type=int, nargs="+", default=[1_000_000], help="transaction lines per size")
    p.add_argument("--inputs", choices=["tx", "all", "both"], default="both")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-segspark", action="store_true", help="run the reference notebook only")
    p.add_argument("--repeat", type=int, default=1, help="repetitions; each runs every command alternately")
    p.add_argument(
        "--segspark-cmd",
        action="append",
        default=[],
        metavar="[LABEL=]COMMAND",
        help="command that runs segspark (repeatable, one per checkout); default: this Python's "
        "'-m segspark'; run with the run's output folder as working directory",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra --set for every segspark run (repeatable)",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        choices=["delta-rs", "delta-spark"],
        default=[],
        help="table engines to run each command with, alternately (the label gains the engine); "
        "default: the embedded engine only",
    )
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds before a run is stopped")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's output tables")
    p.add_argument(
        "--event-log",
        action="store_true",
        help="write each run's Spark event log under <out>/eventlogs and report its spill, "
        "shuffle and input bytes, and per pipeline stage the shuffle bytes and the full scans of "
        "the input lines and of orders (sets spark.conf: do not also --set spark.conf)",
    )
    p.add_argument(
        "--min-step-s",
        type=float,
        default=1.0,
        help="the final step table leaves out steps shorter than this in every column",
    )
    p.add_argument("--reference-of", help=argparse.SUPPRESS)  # internal: run the reference on this Parquet
    args = p.parse_args(argv)

    if args.reference_of:
        print(json.dumps(reference(args.reference_of, SEED)))
        return 0

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    commands = _commands(args.segspark_cmd)
    variants = ["tx", "all"] if args.inputs == "both" else [args.inputs]
    datasets = [prepare(out, lines) for lines in args.lines]
    results: list[dict[str, Any]] = []
    with open(out / "results.jsonl", "a") as sink:
        for rep in range(1, args.repeat + 1):
            for data in datasets:
                for inputs in variants:
                    runs = [] if args.skip_segspark else commands
                    for (label, command), engine in itertools.product(runs, args.engines or [None]):
                        results.append(run_segspark(label, command, data, inputs, rep, args, engine))
                        _print_run(results[-1])
                        sink.write(json.dumps(results[-1]) + "\n")
                        sink.flush()
                if not args.skip_reference:
                    results.append(run_reference(data, rep, args))
                    _print_run(results[-1])
                    sink.write(json.dumps(results[-1]) + "\n")
                    sink.flush()
    print()
    print(summary_table(results, args.min_step_s))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
