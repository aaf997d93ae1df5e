"""A real standalone Spark cluster: the job packaged and submitted exactly as README's Deploy section says.

A master and two workers (1 core, 1.5 GB each) start from the pyspark package's own jars on 127.0.0.1.
``deploy/pack_executor_env.sh`` builds the wheel and packs a virtual environment with it and its
dependencies (Spark's packaging guide's venv-pack recipe: numpy, pandas, pyarrow and scipy hold compiled
modules that cannot travel as ``--py-files`` zips). ``spark-submit --deploy-mode client`` runs
``jobs/run_pipeline.py run`` on generated data with that environment as the driver's Python and, shipped
with ``--archives``, the executors'. The test checks the tables, the runs row, that every task ran on the
two workers' executors (the application's event log) and that the executors imported segspark from the
shipped environment; teardown stops every process by pid and checks that none is left.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import deploy_procs as dp
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from segspark.cli import main

REPO = Path(__file__).resolve().parents[1]
CUSTOMERS = 300
AS_OF = "2025-12-31"
RUN_ID = "cluster-run-1"
ENV_NAME = "environment"  # the archive's folder in each executor's working directory (#environment)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what a Spark or PySpark process set here (a user's shell)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYSPARK_", "SPARK_", "_SPARK")) and k != "PYTHONPATH"
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The wheel and the packed environment, built by the script README gives cluster users."""
    out = tmp_path_factory.mktemp("pack")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(REPO / "deploy" / "pack_executor_env.sh"), str(out)],
        # the environment's Python is this interpreter: the cluster's (here: local) nodes have it
        env=_clean_env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = sorted((out / "dist").glob("segspark-*.whl"))
    archive = out / "segspark-env.tar.gz"
    assert len(wheels) == 1 and archive.is_file()
    return {
        "env": out / "segspark-env",
        "archive": archive,
        "wheel": wheels[0],
        "steps": {n: float(s) for n, s in re.findall(r"^pack: (\w+) ([\d.]+) s$", proc.stdout, re.M)},
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A standalone master and two workers on 127.0.0.1; stopped by pid, and checked gone, at teardown."""
    base = tmp_path_factory.mktemp("cluster")
    started = time.perf_counter()
    master, workers = dp.start_standalone_cluster(base, workers=2, cores=1, memory="1536m")
    up_s = time.perf_counter() - started
    try:
        yield {"base": base, "master": master, "workers": workers, "up_s": up_s}
    finally:
        dp.stop([master, *workers])
        # the workers stop their executors (and those their Python workers); stop_pid also ends any
        # descendant still running: nothing whose command line or working directory is ours is left
        deadline = time.monotonic() + 30
        while (left := dp.processes_under(base)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, "processes left after teardown:\n" + "\n".join(left)
        assert not any(dp.alive(sp.pid) for sp in (master, *workers))


@pytest.fixture(scope="module")
def lake(spark: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cluster-lake") / "data"
    assert main(["generate", "--out", str(data), "--customers", str(CUSTOMERS), "--seed", "7"]) == 0
    return data


def _job_config(path: Path, data: Path, output: Path) -> Path:
    """The job's YAML as a cluster user writes it: inputs, output folder, small models."""
    inputs = "\n".join(
        f"  {name}: {{path: {data / name}, format: delta}}"
        for name in ("transactions", "customers", "events", "marketing_spend")
    )
    path.write_text(
        f'as_of_date: "{AS_OF}"\n'
        f"input:\n{inputs}\n"
        f"output: {{path: {output}}}\n"
        "lakehouse: {engine: delta-rs}\n"
        "spark: {shuffle_partitions: 4}\n"
        # the models' own tests cover their choices; here they only need to run on the executors. The
        # report is built on the driver from the written tables (tests/test_report.py): not here
        "clustering: {k_max: 4, algorithms: [kmeans], stability: false}\n"
        "churn: {model: logistic}\n"
        "report: {enabled: false}\n",
        encoding="utf-8",
    )
    return path


def submit_command(master: str, packed: dict[str, Any], events: Path, conf: Path) -> list[str]:
    """README's spark-submit line, with this test's master, files and event log."""
    return [
        str(dp.spark_home() / "bin" / "spark-submit"),
        "--master",
        master,
        "--deploy-mode",
        "client",
        "--archives",
        f"{packed['archive']}#{ENV_NAME}",
        "--conf",
        f"spark.pyspark.python=./{ENV_NAME}/bin/python",
        "--conf",
        f"spark.pyspark.driver.python={packed['env'] / 'bin' / 'python'}",
        "--conf",
        f"spark.driver.host={dp.LOOPBACK}",
        "--conf",
        f"spark.driver.bindAddress={dp.LOOPBACK}",
        "--conf",
        "spark.eventLog.enabled=true",
        "--conf",
        f"spark.eventLog.dir={events.as_uri()}",
        "--conf",
        "spark.eventLog.compress=false",  # plain JSON lines for the checks below
        "--driver-memory",
        "1g",
        "--executor-memory",
        "1g",
        str(REPO / "jobs" / "run_pipeline.py"),
        "run",
        "--conf",
        str(conf),
        "--run-id",
        RUN_ID,
    ]


def read_event_log(events: Path) -> list[dict[str, Any]]:
    """Every event of the one application logged under ``events`` (a rolling v2 folder or one file)."""
    (app_log,) = list(events.iterdir())
    if app_log.is_dir():  # eventlog_v2_<app>/events_<n>_<app>, in order
        parts = sorted(app_log.glob("events_*"), key=lambda p: int(p.name.split("_")[1]))
    else:
        parts = [app_log]
    return [json.loads(line) for part in parts for line in part.read_text("utf-8").splitlines() if line]


class PythonWorkerWatch:
    """Samples, while a job runs, the Python processes the cluster's executors start (below ``base``).

    Spark starts its Python workers with PYTHONDONTWRITEBYTECODE=1 and they exit with their
    executor, so what they ran and imported is seen live: their command line (the interpreter),
    working directory (the executor's, in a worker's work dir) and the shared objects they mapped
    (a compiled module's ``.so`` shows the folder it was imported from).
    """

    def __init__(self, base: Path, interval: float = 0.5) -> None:
        self.base = base.resolve()
        self.interval = interval
        self.seen: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PythonWorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    self._sample(entry)

    def _sample(self, entry: Path) -> None:
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
            if b"pyspark.daemon" not in argv and b"pyspark.worker" not in argv:
                return
            if not cwd.is_relative_to(self.base):
                return
            maps = (entry / "maps").read_text(errors="replace")
        except (OSError, ValueError):  # gone meanwhile
            return
        libs = {line.split()[-1] for line in maps.splitlines() if ".so" in line.rsplit("/", 1)[-1]}
        rec = self.seen.setdefault(int(entry.name), {"argv0": argv[0].decode(), "cwd": cwd, "libs": set()})
        rec["libs"] |= libs


def tasks_per_worker(log: list[dict[str, Any]], workers: list[dp.SparkProcess]) -> dict[str, int]:
    """Finished tasks per worker name ('driver' if any ran in the driver).

    All workers share the host 127.0.0.1: an executor's worker is told by its log URLs, served by
    that worker's web UI on its own port.
    """
    by_port = {sp.ports["webui"]: sp.name for sp in workers}
    where = {"driver": "driver"}
    for event in log:
        if event["Event"] == "SparkListenerExecutorAdded":
            info = event["Executor Info"]
            assert info["Host"] == dp.LOOPBACK
            ports = {urlparse(url).port for url in info["Log Urls"].values()}
            (port,) = ports
            where[event["Executor ID"]] = by_port[port]
    counts = Counter(
        where[event["Task Info"]["Executor ID"]] for event in log if event["Event"] == "SparkListenerTaskEnd"
    )
    return dict(counts)


@pytest.mark.slow
def test_spark_submit_on_a_standalone_cluster_runs_the_job_on_the_workers(
    packed: dict[str, Any], lake: Path, cluster: dict[str, Any], tmp_path: Path
) -> None:
    """Fixtures in this order: the cluster starts last, just before the submit, and waits for nothing."""
    master, workers = cluster["master"], cluster["workers"]
    output, events = tmp_path / "out", tmp_path / "events"
    events.mkdir()
    conf = _job_config(tmp_path / "job.yaml", lake, output)
    cmd = submit_command(dp.master_url(master), packed, events, conf)
    started = time.perf_counter()
    with PythonWorkerWatch(cluster["base"]) as watch:
        proc = subprocess.run(
            cmd,
            env=_clean_env(SPARK_LOCAL_IP=dp.LOOPBACK, SPARK_HOME=str(dp.spark_home())),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    submit_s = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # the tables: one segment row per generated customer, the buyers among them, a succeeded runs row
    segments = DeltaTable(str(output / "tables" / "customer_segments")).to_pyarrow_table(
        columns=["customer_id", "lifecycle_stage", "run_id"]
    )
    tx = DeltaTable(str(lake / "transactions")).to_pyarrow_table(columns=["customer_id"])
    buyers = len(pc.unique(tx.column("customer_id")))
    assert segments.num_rows == CUSTOMERS == len(pc.unique(segments.column("customer_id")))
    stages = segments.column("lifecycle_stage").to_pylist()
    assert sum(stage != "prospect" for stage in stages) == buyers
    assert set(segments.column("run_id").to_pylist()) == {RUN_ID}
    runs = DeltaTable(str(output / "tables" / "runs")).to_pyarrow_table().to_pylist()
    run_rows = [r for r in runs if r["run_id"] == RUN_ID and r["command"] == "run"]
    assert [r["status"] for r in run_rows] == ["succeeded"]
    tx_input = next(i for i in run_rows[0]["inputs"] if i["name"] == "transactions")
    assert tx_input["rows_in"] == tx.num_rows
    assert (output / "tables" / "segment_kpis").is_dir()

    # the cluster ran it: the master saw the application finish on its workers' cores, and every task
    # of it ran on an executor of one of the two workers, none in the driver
    log = read_event_log(events)
    (app_id,) = {e["App ID"] for e in log if e["Event"] == "SparkListenerApplicationStart"}
    status = dp.http_json(dp.master_json_url(master))
    (app,) = [a for a in status["completedapps"] if a["id"] == app_id]
    assert app["state"] == "FINISHED" and app["cores"] == 2, app
    tasks = tasks_per_worker(log, workers)
    assert "driver" not in tasks, tasks
    assert set(tasks) == {sp.name for sp in workers} and min(tasks.values()) > 0, tasks

    # the executors' Python was the shipped environment: every Python worker of theirs ran the
    # archive's interpreter in its executor's working directory, and the compiled modules the job
    # needs there (numpy, pandas, pyarrow, scipy: the pandas UDFs of the CLV stage) were loaded
    # from the unpacked archive, not from this machine's Python
    work = (cluster["base"] / "work").resolve()
    assert watch.seen, "no Python worker seen on the executors"
    for pid, rec in watch.seen.items():
        assert rec["argv0"] == f"./{ENV_NAME}/bin/python", (pid, rec["argv0"])
        assert rec["cwd"].is_relative_to(work), (pid, rec["cwd"])
        site = sys.prefix + os.sep
        assert not any(lib.startswith(site) and "site-packages" in lib for lib in rec["libs"]), rec
    shipped = {
        lib.split("/site-packages/")[1].split("/")[0]
        for rec in watch.seen.values()
        for lib in rec["libs"]
        if lib.startswith(str(rec["cwd"] / ENV_NAME) + os.sep) and "/site-packages/" in lib
    }
    # scipy: only segspark's CLV pandas UDFs import it (hyp2f1), PySpark never does
    assert {"numpy", "pandas", "pyarrow", "scipy"} <= shipped, shipped
    python_workers = Counter(rec["cwd"].relative_to(work).parts[0] for rec in watch.seen.values())

    figures = {
        "submit_wall_s": round(submit_s, 1),
        "tasks_per_worker": tasks,
        "python_workers_per_worker": dict(python_workers),
        "shipped_modules_loaded": sorted(shipped),
        "cluster_up_s": round(cluster["up_s"], 1),
        "pack_steps_s": packed["steps"],
        "pack_wall_s": round(packed["wall_s"], 1),
        "pack_cpu_s": round(packed["cpu_s"], 1),
        "wheel_bytes": packed["wheel"].stat().st_size,
        "archive_bytes": packed["archive"].stat().st_size,
    }
    print("cluster submit figures:", json.dumps(figures))
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "cluster_submit.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
