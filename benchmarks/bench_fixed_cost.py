"""Where a small run's time goes: ``segspark demo`` (or ``run`` on given data), step by step.

Not a test. Each repetition runs every command in turn, each in a fresh process with Spark's event
log on, and prints for every step the job recorded (``<step> took <s> s`` in the run's log: stages,
model fits, table writes, MLflow logging, the report):

- ``seconds``: the step's wall time (inner steps are also inside their stage's figure);
- ``jobs`` / ``tasks``: the Spark jobs and tasks that started inside the step (from the event log;
  a job belongs to the innermost step whose interval holds its submission);
- ``in_jobs``: seconds during which at least one of those jobs ran (the JVM's work, scheduling
  included); ``driver``: the rest (Python on the driver, query planning and code generation, Delta
  commits by delta-rs, MLflow calls).

and, for each command's first run, the Spark jobs by call site: the Python line whose action
started them (the description Spark gives the SQL execution of each job, e.g. ``toPandas at
segspark/clv/validation.py:159``), with their job seconds summed (``--sites N`` of them). Table
writes show as ``parquet at ...`` (their step in the table above says which table).

    python benchmarks/bench_fixed_cost.py --repeat 3
    python benchmarks/bench_fixed_cost.py --repeat 3 \\
        --cmd "old=env PYTHONPATH=/tmp/wt-old python -m segspark" --cmd "new=python -m segspark"
    python benchmarks/bench_fixed_cost.py --cmd "aqe=python -m segspark" \
        --cmd "noaqe=python -m segspark -- --set 'spark.conf={spark.sql.adaptive.enabled: false}'"
    python benchmarks/bench_fixed_cost.py --lines 1000000 --inputs tx   # segspark run on 1M lines

With ``--lines`` the data are generated once (``segspark generate``, about 12 lines per customer) and
each repetition times ``segspark run`` on them (``--inputs tx``: transactions only); without it,
``segspark demo --customers N`` (generation included, as a newcomer runs it). Medians over the
repetitions are printed per command, and the raw figures are appended to ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KEY = "benchmark-key-not-secret"
LINES_PER_CUSTOMER = 12.0  # the generator's archetypes, measured on the 20,000-customer demo
RATES = "{EUR: 1.08, GBP: 1.27}"
TOOK = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ [\w.]+: (\w+) took ([\d.]+) s")


def _ms(stamp: str) -> float:
    """A log line's local timestamp as epoch milliseconds (the event log's clock)."""
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000


def steps_of(log: Path) -> list[tuple[str, float, float]]:
    """(step, start ms, end ms) of every ``<step> took <s> s`` line of a run's log, in log order."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = TOOK.match(line)
        if m:
            end = _ms(m.group(1))
            out.append((m.group(2), end - float(m.group(3)) * 1000, end))
    return out


def jobs_of(folder: Path) -> list[dict[str, Any]]:
    """Every Spark job of the event log(s) under ``folder``: submitted, completed (ms), tasks, and
    ``site``: the description of the SQL execution that started it, which names the Python line
    (``toPandas at segspark/clv/validation.py:159``; ``parquet at <unknown>:0`` for a table write
    started from a thread, ``?`` for a job outside any SQL execution)."""
    import pyarrow as pa

    jobs: dict[int, dict[str, Any]] = {}
    sites: dict[str, str] = {}
    for part in sorted(x for x in folder.rglob("events_*") if x.is_file()):
        codec = part.suffix.lstrip(".")
        stream = pa.input_stream(str(part), compression=codec if codec in ("zstd", "lz4", "gzip") else None)
        with io.TextIOWrapper(stream, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if "SQLExecutionStart" in line[:100]:
                    event = json.loads(line)
                    # "collect at /any/checkout/segspark/x.py:12" -> "collect at segspark/x.py:12"
                    site = re.sub(r"\S*/(segspark/)", r"\1", str(event.get("description", "?")))
                    sites[str(event["executionId"])] = site
                    continue
                if '"SparkListenerJob' not in line:
                    continue
                event = json.loads(line)
                if event["Event"] == "SparkListenerJobStart":
                    tasks = sum(s.get("Number of Tasks", 0) for s in event.get("Stage Infos", []))
                    execution = (event.get("Properties") or {}).get("spark.sql.execution.id")
                    site = sites.get(str(execution), "?") if execution is not None else "?"
                    jobs[event["Job ID"]] = {"start": event["Submission Time"], "tasks": tasks, "site": site}
                elif event["Event"] == "SparkListenerJobEnd" and event["Job ID"] in jobs:
                    jobs[event["Job ID"]]["end"] = event["Completion Time"]
    return [j for j in jobs.values() if "end" in j]


def by_site(jobs: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The ``top`` call sites by the seconds their jobs ran (overlapping jobs counted once each)."""
    table: dict[str, dict[str, Any]] = {}
    for job in jobs:
        row = table.setdefault(job["site"], {"site": job["site"], "jobs": 0, "seconds": 0.0, "tasks": 0})
        row["jobs"] += 1
        row["seconds"] += (job["end"] - job["start"]) / 1000
        row["tasks"] += int(job["tasks"])
    rows = sorted(table.values(), key=lambda r: -r["seconds"])[:top]
    return [{**r, "seconds": round(r["seconds"], 2)} for r in rows]


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, last = 0.0, -1e30
    for a, b in sorted(intervals):
        if b <= last:
            continue
        total += b - max(a, last)
        last = b
    return total / 1000


def attribute(steps: list[tuple[str, float, float]], jobs: list[dict[str, float]]) -> dict[str, dict]:
    """Per step: seconds, jobs, tasks, in_jobs, driver (see the module docstring)."""
    table: dict[str, dict[str, Any]] = {}
    owned: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in steps}
    for job in jobs:
        holders = [(b - a, name) for name, a, b in steps if a - 5 <= job["start"] <= b + 5]
        if holders:
            owned[min(holders)[1]].append(job)
    for name, a, b in steps:
        # the stage's own figures include its inner steps' jobs
        mine = [j for j in jobs if a - 5 <= j["start"] <= b + 5] if name.startswith("stage_") else owned[name]
        in_jobs = _union_seconds([(j["start"], j["end"]) for j in mine])
        seconds = (b - a) / 1000
        table[name] = {
            "seconds": round(seconds, 2),
            "jobs": len(mine),
            "tasks": int(sum(j["tasks"] for j in mine)),
            "in_jobs": round(in_jobs, 2),
            "driver": round(max(0.0, seconds - in_jobs), 2),
        }
    return table


def _env() -> dict[str, str]:
    return {**os.environ, "SEGSPARK_PSEUDO_KEY": KEY, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}


def _generate(out: Path, lines: int) -> Path:
    data = out / f"data-{lines}"
    if (data / ".complete").exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    customers = max(100, round(lines / LINES_PER_CUSTOMER))
    cmd = [sys.executable, "-m", "segspark", "generate", "--out", str(data), "--customers", str(customers)]
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
    (data / ".complete").write_text("")
    return data


def run_once(label: str, command: str, rep: int, args: argparse.Namespace, data: Path | None) -> dict:
    folder = Path(args.out) / f"{label}-{rep}"
    shutil.rmtree(folder, ignore_errors=True)
    events = folder / "events"
    events.mkdir(parents=True)
    if data is None:
        verb = ["demo", "--out", str(folder / "demo"), "--customers", str(args.customers)]
    else:
        inputs = (
            ["transactions"]
            if args.inputs == "tx"
            else ["transactions", "customers", "events", "marketing_spend"]
        )
        verb = ["run", "--set", f"output.path={folder / 'out'}", "--set", f"quality.currency.rates={RATES}"]
        verb += ["--set", "lakehouse.engine=delta-rs"]  # the demo's engine; "-- --set ..." compares another
        for name in inputs:
            verb += ["--set", f"input.{name}.path={data / name}", "--set", f"input.{name}.format=delta"]
    # the event log through spark-submit's arguments (a local session launches its JVM with them),
    # so that a command's own --set spark.conf stays its own
    env = {
        **_env(),
        "PYSPARK_SUBMIT_ARGS": (
            f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir={events} pyspark-shell"
        ),
    }
    # "LAUNCHER -- ARGS": ARGS go after the command's own arguments (e.g. a --set to compare)
    launcher, _, extra = command.partition(" -- ")
    log = folder / "run.log"
    started = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.run(
            [*shlex.split(launcher), *verb, *shlex.split(extra)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        ).returncode
    wall = time.perf_counter() - started
    jobs = jobs_of(events)
    steps = attribute(steps_of(log), jobs)
    text = log.read_text(errors="replace")
    gen = re.search(r"generated \d+ customers .* in ([\d.]+) s", text)
    result = {
        "label": label,
        "rep": rep,
        "exit": code,
        "wall_s": round(wall, 1),
        "generate_s": float(gen.group(1)) if gen else None,
        "jobs": len(jobs),
        "steps": steps,
        "sites": by_site(jobs, args.sites),
    }
    with (Path(args.out) / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(result) + "\n")
    if not args.keep:
        shutil.rmtree(folder / "demo", ignore_errors=True)
        shutil.rmtree(folder / "out", ignore_errors=True)
    return result


def summary(results: list[dict]) -> str:
    lines = []
    for label in dict.fromkeys(r["label"] for r in results):
        mine = [r for r in results if r["label"] == label and r["exit"] == 0]
        if not mine:
            lines.append(f"{label}: every run failed (see its run.log)")
            continue
        walls = [r["wall_s"] for r in mine]
        gens = [r["generate_s"] for r in mine if r["generate_s"] is not None]
        head = f"## {label}: wall median {statistics.median(walls):.1f} s over {len(mine)} runs {walls}"
        if gens:
            head += f"; generation {statistics.median(gens):.1f} s"
        head += f"; Spark jobs {statistics.median(r['jobs'] for r in mine):.0f}"
        lines += [
            head,
            "",
            "| step | seconds | jobs | tasks | in jobs | driver |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        names = list(dict.fromkeys(n for r in mine for n in r["steps"]))
        for name in names:
            cells = []
            for key in ("seconds", "jobs", "tasks", "in_jobs", "driver"):
                values = [r["steps"][name][key] for r in mine if name in r["steps"]]
                cells.append(
                    f"{statistics.median(values):.1f}"
                    if key in ("seconds", "in_jobs", "driver")
                    else f"{statistics.median(values):.0f}"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        if mine[0].get("sites"):
            lines += [
                f"{label} #{mine[0]['rep']}: the Spark jobs by the Python line that started them "
                "(seconds: the jobs' durations summed)",
                "",
                "| call site | jobs | seconds | tasks |",
                "|---|---:|---:|---:|",
                *[
                    f"| {r['site']} | {r['jobs']} | {r['seconds']:.1f} | {r['tasks']} |"
                    for r in mine[0]["sites"]
                ],
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="/tmp/segspark-bench/fixed-cost")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--customers", type=int, default=20_000, help="demo size (without --lines)")
    p.add_argument("--lines", type=int, default=None, help="time `segspark run` on this many generated lines")
    p.add_argument("--inputs", choices=["tx", "all"], default="tx", help="with --lines: the inputs given")
    p.add_argument("--cmd", action="append", default=[], help="LABEL=COMMAND (default: this checkout)")
    p.add_argument("--keep", action="store_true", help="keep each run's tables")
    p.add_argument("--sites", type=int, default=15, help="call sites listed per command (by job seconds)")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    commands = [tuple(c.split("=", 1)) for c in args.cmd] or [("this", f"{sys.executable} -m segspark")]
    data = _generate(Path(args.out), args.lines) if args.lines else None
    results = []
    for rep in range(args.repeat):
        for label, command in commands:
            r = run_once(label, command, rep, args, data)
            print(f"{label} #{rep}: exit {r['exit']}, {r['wall_s']} s, {r['jobs']} Spark jobs", flush=True)
            results.append(r)
    print(summary(results))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
