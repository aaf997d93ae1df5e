"""Where the driver JVM's CPU goes in a small run: Java Flight Recorder's method samples, by thread and
activity.

Not a test. Runs ``segspark demo --customers N`` (or ``--cmd``) once with the JDK's own profiler on
(``JDK_JAVA_OPTIONS=-XX:StartFlightRecording``, read by every ``java`` launcher: the local session's
driver, which in local mode also runs the tasks), then reads its ``jdk.ExecutionSample`` events with
the JDK's ``jfr`` tool and prints, for each kind of thread (Spark's task threads, the threads serving
the Python driver's Py4J calls: analysis, planning and actions, and the JVM's other threads), the share
of samples in each activity: code generation and its compiler (Janino), task (de)serialization, class
lookups on the jar path, query analysis, optimization and planning, Parquet, shuffle, sort, hash
aggregation, the scheduler, MLlib. Also the run's wall time and the CPU seconds the whole machine spent
meanwhile (``/proc/stat``: run it on a quiet machine).

    python benchmarks/profile_jvm.py --customers 600
    python benchmarks/profile_jvm.py --cmd "python -m segspark run --conf my.yaml"

JFR samples threads running Java code only: the JIT's compiler threads and the garbage collector do
not appear (a ``jcmd <pid> Thread.print`` near the end of a run gives their CPU).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

# the first activity whose marker is in a sample's stack names it (the order settles overlaps)
ACTIVITIES = (
    ("Janino compiling", ("org.codehaus.janino", "org.codehaus.commons")),
    (
        "code generation",
        ("CodeGenerator", "Codegen", "GenerateUnsafe", "GeneratePredicate", "GenerateOrdering"),
    ),
    ("class lookup on the jar path", ("URLClassPath", "ClassLoader.loadClass", "defineClass")),
    (
        "task (de)serialization",
        ("ObjectInputStream", "ObjectOutputStream", "JavaSerializer", "ClosureCleaner"),
    ),
    ("Parquet write", ("ParquetOutputWriter", "InternalParquetRecordWriter", "parquet.column.impl")),
    ("Parquet read", ("VectorizedParquetRecordReader", "ParquetFileFormat", "ParquetFooterReader")),
    ("Arrow / Python exchange", ("arrow", "api.python", "PythonRunner", "EvaluatePython")),
    ("shuffle", ("org.apache.spark.shuffle.",)),
    ("sort", ("UnsafeExternalSorter", "UnsafeInMemorySorter")),
    ("hash aggregation", ("HashAggregate", "UnsafeFixedWidthAggregationMap", "BytesToBytesMap")),
    ("analysis", ("catalyst.analysis", "CheckAnalysis")),
    ("optimization", ("catalyst.optimizer", "SparkOptimizer", "RuleExecutor")),
    ("planning", ("SparkPlanner", "QueryPlanner", "adaptive.", "QueryExecution")),
    ("Delta", ("io.delta.", "org.apache.spark.sql.delta.")),
    ("MLlib", ("org.apache.spark.ml.", "org.apache.spark.mllib.", "breeze.")),
    ("Py4J", ("py4j.",)),
    ("scheduler", ("org.apache.spark.scheduler.",)),
)


def thread_kind(name: str) -> str:
    if name.startswith("Executor task launch worker"):
        return "task threads"
    if re.fullmatch(r"Thread-\d+", name):
        return "Py4J calls"
    return "other threads"


def activity(frames: list[str]) -> str:
    stack = " ".join(frames)
    return next((name for name, markers in ACTIVITIES if any(m in stack for m in markers)), "other")


def samples(recording: Path) -> list[tuple[str, list[str]]]:
    """(thread name, frames leaf first) of every method sample in the recording."""
    jfr = shutil.which("jfr") or str(Path(os.environ.get("JAVA_HOME", "/usr"), "bin", "jfr"))
    printed = subprocess.run(
        [jfr, "print", "--stack-depth", "96", "--events", "jdk.ExecutionSample", str(recording)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = []
    for event in printed.split("jdk.ExecutionSample {")[1:]:
        thread = re.search(r'sampledThread = "([^"]+)"', event)
        out.append((thread.group(1) if thread else "?", re.findall(r"^\s+([\w$.<>]+)\(", event, re.M)))
    return out


def table(found: list[tuple[str, list[str]]]) -> str:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for thread, frames in found:
        counts[thread_kind(thread)][activity(frames)] += 1
    total = sum(sum(c.values()) for c in counts.values()) or 1
    kinds = sorted(counts, key=lambda k: -sum(counts[k].values()))
    names = sorted({a for c in counts.values() for a in c}, key=lambda a: -sum(c[a] for c in counts.values()))
    lines = [
        "| activity | " + " | ".join(f"{k} (% of all)" for k in kinds) + " | all |",
        "|---|" + "---:|" * (len(kinds) + 1),
    ]
    for name in names:
        cells = [f"{100 * counts[k][name] / total:.1f}" for k in kinds]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {100 * sum(c[name] for c in counts.values()) / total:.1f} |"
        )
    cells = [f"{100 * sum(counts[k].values()) / total:.1f}" for k in kinds]
    lines.append("| **all** | " + " | ".join(cells) + " | 100.0 |")
    return "\n".join(lines)


def _cpu_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(x) for i, x in enumerate(fields) if i not in (3, 4))  # all but idle and iowait


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/segspark-bench/profile-jvm")
    p.add_argument("--customers", type=int, default=600, help="demo size (without --cmd)")
    p.add_argument("--cmd", default=None, help="the command to profile (default: segspark demo)")
    args = p.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    recording = out / "driver.jfr"
    command = (
        shlex.split(args.cmd)
        if args.cmd
        else [
            sys.executable,
            "-m",
            "segspark",
            "demo",
            "--customers",
            str(args.customers),
            "--out",
            str(out / "demo"),
        ]
    )
    options = f"-XX:StartFlightRecording=filename={recording},settings=profile,dumponexit=true"
    env = {**os.environ, "JDK_JAVA_OPTIONS": f"{os.environ.get('JDK_JAVA_OPTIONS', '')} {options}".strip()}
    ticks, started = _cpu_ticks(), time.perf_counter()
    with (out / "run.log").open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    wall = time.perf_counter() - started
    cpu = (_cpu_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
    if code != 0 or not recording.is_file():
        print(f"exit {code}, no recording: see {out / 'run.log'}")
        return 1
    found = samples(recording)
    print(f"{shlex.join(command)}: wall {wall:.1f} s, machine CPU {cpu:.1f} s, {len(found)} JVM samples\n")
    print(table(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
