"""The job against a real Spark Connect server, from a separate client process (issue 15, item 2).

A ``SparkConnectServer`` is started with the pyspark package's own ``spark-submit`` on 127.0.0.1, as
README's "Deploy -> Spark Connect" tells a user to. The demo runs classically (generated data, local
Spark: the suite's session, in the test's process; its printed follow-up commands); ``segspark run
--conf <the demo's config> --set spark.remote=sc://...`` then runs on the same data in a process that
starts no JVM of its own, on another number of shuffle partitions, and its ``customer_segments``
(clusters and personas included), ``cluster_profiles`` and ``segment_kpis`` equal the classic run's:
two whole runs in two processes and sessions give the same segments.
That run keeps its lakehouse on an S3 object store (``output.path`` on ``s3a://``, a versitygw server
from ``tests/s3_server.py``; the Connect server started with Hadoop's S3A connector and its settings, as
README's "Deploy" tells): the server writes the Parquet files there, the client commits them with the
embedded Delta engine, and the clustering model goes between them through a staging prefix on the store.
The demo's printed erase then runs over the server on the local lakehouse.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import s3_server
from chispa import assert_approx_df_equality
from deltalake import DeltaTable
from deploy_procs import LOOPBACK, QUICK_JIT, alive, free_port, spark_home
from pyarrow import fs
from pyspark.sql import DataFrame, SparkSession

from segspark import cli, delta_jars
from segspark.config import S3Config
from segspark.io import storage

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# the job's settings besides the data (the demo's config file holds the inputs and the output folder):
# the same on both runs; small, so that two pipeline runs stay within the suite's budget
JOB_SETS = [
    "spark.shuffle_partitions=2",
    "clustering.k_max=4",
    "churn.enabled=false",
    "report.enabled=false",
]
# the classic run is the demo in the suite's session: the engine a local run gets by default, not the
# Delta jars' engine that session loads for the engine tests
CLASSIC_SETS = ["lakehouse.engine=delta-rs"]
# run-specific columns: everything else of a table must be equal between the two runs
RUN_COLUMNS = ["run_id"]
BUCKET = "lake"


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def server_command(port: int, s3a: dict[str, str] | None = None) -> list[str]:
    """The server start line of README's "Deploy -> Spark Connect" (SPARK_HOME = the pyspark package);
    ``s3a``: the ``fs.s3a`` settings of a lakehouse on S3, with Hadoop's S3A connector's jars (README
    names them with ``--packages``; here the cached files the suite's session loads)."""
    s3 = []
    if s3a is not None:
        s3 = ["--jars", ",".join(delta_jars.resolve_s3a()[1])]
        s3 += [x for key, value in s3a.items() for x in ("--conf", f"spark.hadoop.{key}={value}")]
    return [
        str(spark_home() / "bin" / "spark-submit"),
        "--class",
        SERVER_CLASS,
        "--master",
        "local[2]",
        "--driver-memory",
        "2g",
        "--conf",
        f"spark.connect.grpc.binding.address={LOOPBACK}",
        "--conf",
        f"spark.connect.grpc.binding.port={port}",
        "--conf",
        "spark.ui.enabled=false",
        *s3,
    ]


def _group(pgid: int) -> list[int]:
    """Live pids of the process group ``pgid`` (the server's JVM and the Python workers it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return found


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> list[int]:
    """Stop a process started in its own session and everything in its group, by the group's id:
    SIGTERM (Spark's shutdown hooks run), SIGKILL after ``timeout``. Returns the pids still alive."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group(pgid):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
        if not _group(pgid):
            break
    return _group(pgid)


@dataclass
class ConnectServer:
    """A started server: :meth:`ready` waits until it accepts connections (it boots while the classic
    run works, which uses the time the JVM start takes)."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    ready_after_s: float | None = None

    @property
    def remote(self) -> str:
        return f"sc://{LOOPBACK}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def ready(self, timeout: float = 300) -> ConnectServer:
        """Wait until the server accepts connections; ``ready_after_s``: seconds from its start until
        this call saw it listening (its boot time when this is called right after the start)."""
        deadline = time.monotonic() + timeout
        while self.ready_after_s is None:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"the Connect server exited with {code}:\n{self.log_tail()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    self.ready_after_s = time.perf_counter() - self.started
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no Connect server on {self.port}:\n{self.log_tail()}") from None
                time.sleep(0.25)
        return self


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3_server.S3Server]:
    """An S3 server on 127.0.0.1 with an empty bucket, its endpoint in ``$AWS_ENDPOINT_URL`` (the
    credentials: the suite's, in the environment) for the module; stopped by its pid."""
    with s3_server.running(tmp_path_factory.mktemp("s3")) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        _files(server).create_dir(BUCKET)
        yield server
    assert server.proc.poll() is not None, "the S3 server is still running"


def _files(server: s3_server.S3Server) -> fs.S3FileSystem:
    return fs.S3FileSystem(
        endpoint_override=f"{LOOPBACK}:{server.port}", scheme="http", allow_bucket_creation=True
    )


@pytest.fixture(scope="module")
def connect_server(
    store: s3_server.S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConnectServer]:
    """A Spark Connect server on 127.0.0.1 (local[2], 2g) that reaches ``store`` through S3A, stopped
    by its pid after the module's tests (also when they fail); no process of it may be left."""
    base = tmp_path_factory.mktemp("connect-server")
    port = free_port()
    storage.configure(S3Config())  # the job's default S3 settings: the endpoint from the environment
    s3a = storage.hadoop_conf()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_"))}
    # the server's Python workers run segspark's pandas UDFs: the interpreter segspark is installed in
    env.update(
        SPARK_HOME=str(spark_home()),
        SPARK_LOCAL_IP=LOOPBACK,
        PYSPARK_PYTHON=sys.executable,
        SPARK_LOG_DIR=str(base),
        JAVA_TOOL_OPTIONS=QUICK_JIT,  # a short job: the client compiler only (spark.jit: quick)
    )
    log = base / "server.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(port, s3a),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=base,
            start_new_session=True,  # its own process group: teardown stops the JVM and its workers
        )
    try:
        yield ConnectServer(port=port, proc=proc, log=log, started=started)
    finally:
        left = stop_group(proc)
        assert not left, f"processes of the Connect server still running: {left}"
        assert not alive(proc.pid)


def _delta(root: Path | str, name: str) -> DeltaTable:
    """A table of the lakehouse at ``root`` (a local folder or ``s3://`` on the test store), by delta-rs
    as a reader that is not segspark opens it."""
    if isinstance(root, Path):
        return DeltaTable(str(root / "tables" / name))
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": s3_server.REGION}
    return DeltaTable(f"{root}/tables/{name}", storage_options=options)


def _table(spark: SparkSession, root: Path | str, name: str) -> DataFrame:
    """A Delta table's current snapshot as a DataFrame of the suite's session (read by delta-rs)."""
    return spark.createDataFrame(pa.table(_delta(root, name).to_pyarrow_table())).drop(*RUN_COLUMNS)


def _runs(root: Path | str) -> list[dict[str, object]]:
    return pa.table(_delta(root, "runs").to_pyarrow_table()).to_pylist()


def _no_java(folder: Path) -> dict[str, str]:
    """A JAVA_HOME whose ``bin/java`` records that it was called and fails: the client must start no JVM."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    java = bin_dir / "java"
    java.write_text(f'#!/bin/sh\necho "$@" >> {folder / "called"}\nexit 1\n')
    java.chmod(0o755)
    return {"JAVA_HOME": str(folder), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _segspark(
    argv: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "segspark", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=1200,
    )
    return proc, time.perf_counter() - started


@pytest.mark.slow
def test_job_over_a_spark_connect_server_equals_the_classic_run_and_the_demos_commands_work(
    spark: SparkSession,
    store: s3_server.S3Server,
    connect_server: ConnectServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the classic run: the demo (no key set: it pseudonymizes with its public demo key and prints it),
    # in the suite's own session (a local one, as the demo starts): its process is not what is tested
    monkeypatch.delenv("SEGSPARK_PSEUDO_KEY")
    env = {**os.environ, "SPARK_LOCAL_IP": LOOPBACK}
    classic = tmp_path / "classic"
    started = time.perf_counter()
    capsys.readouterr()
    demo = ["demo", "--out", str(classic), "--customers", "300", *_sets(CLASSIC_SETS + JOB_SETS)]
    assert cli.main(demo) == 0
    demo_s, demo_out = time.perf_counter() - started, capsys.readouterr().out
    conf = classic / "segspark-demo.yaml"
    assert conf.is_file() and f"config for follow-up commands: {conf}" in demo_out
    # every printed command carries the demo's key and its config file: a user copies the prefix
    erase_line = next(line for line in demo_out.splitlines() if " segspark erase " in line)
    words = shlex.split(erase_line.split("#")[0])
    key = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    assert key.keys() == {"SEGSPARK_PSEUDO_KEY"}

    # the same job on the same data against the server, from a separate process that starts no JVM,
    # its lakehouse on the S3 store (the MLflow store in a local folder: a SQLite file is no object)
    waited = time.perf_counter()
    server = connect_server.ready()
    print(f"\nSpark Connect server on {server.remote}: waited {time.perf_counter() - waited:.1f} s for it")
    connect = f"s3://{BUCKET}/connect"
    client_env = {**env, **key, **_no_java(tmp_path / "no-java")}
    run_argv = ["run", "--conf", str(conf), "--set", f"output.path=s3a://{BUCKET}/connect"]
    tracking = f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"
    # another number of shuffle partitions than the classic run's: the results do not depend on the layout
    run_argv += _sets(
        [f"spark.remote={connect_server.remote}", tracking, *JOB_SETS, "spark.shuffle_partitions=3"]
    )
    run, run_s = _segspark(run_argv, client_env, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:] + "\n--- server log\n" + connect_server.log_tail()
    assert f"connecting to Spark Connect at {connect_server.remote}" in run.stderr
    assert not (tmp_path / "no-java" / "called").exists(), "the Connect client tried to start a JVM"

    [classic_run] = _runs(classic)
    [connect_run] = _runs(connect)
    assert (classic_run["status"], connect_run["status"]) == ("succeeded", "succeeded")
    assert connect_run["engine"] == "delta-rs" and connect_run["command"] == "run"
    print(
        f"\nsame data, 300 customers: classic pipeline {classic_run['duration_s']:.1f} s "
        f"(demo command {demo_s:.1f} s, with generation), Spark Connect pipeline "
        f"{connect_run['duration_s']:.1f} s (client process {run_s:.1f} s)"
    )

    # the same tables and numbers: every segment, cluster, persona, score and band exactly; the model
    # figures (CLV, P(alive)) and the KPIs are sums over rows whose order of addition follows the
    # partitioning (the suite's session reads with other partition settings than the server), so they
    # agree to the last bits, not bit for bit
    segments = _table(spark, connect, "customer_segments")
    assert segments.count() > 250
    # (chispa's approximate equality compares every column that is not a float exactly)
    classic_segments = _table(spark, classic, "customer_segments")
    assert_approx_df_equality(classic_segments, segments, 1e-6, ignore_row_order=True, ignore_nullable=True)
    # two whole runs in two processes and sessions: the same clusters and personas (above, with every
    # segment) from the same cluster profiles
    profiles = {
        root: sorted(
            (r["cluster_id"], r["persona"], r["size"])
            for r in pa.table(_delta(root, "cluster_profiles").to_pyarrow_table()).to_pylist()
        )
        for root in (classic, connect)
    }
    assert profiles[classic] == profiles[connect] and len({p for _, p, _ in profiles[classic]}) >= 2
    kpis = _table(spark, connect, "segment_kpis")
    assert kpis.count() > 50
    assert_approx_df_equality(
        _table(spark, classic, "segment_kpis"), kpis, 1e-6, ignore_row_order=True, ignore_nullable=True
    )
    # the clustering model was registered through a prefix on the store, and is gone from it
    assert "Created version '1' of model" in run.stdout + run.stderr
    listed = _files(store).get_file_info(fs.FileSelector(f"{BUCKET}/connect", recursive=True))
    keys = [i.path for i in listed]
    assert any(k.startswith(f"{BUCKET}/connect/tables/customer_segments/") for k in keys)
    assert not [k for k in keys if "/.segspark-model-" in k]

    # the demo's printed erase works as printed (its key, its config), here over the Connect server
    argv = words[words.index("segspark") + 1 :]
    erased, _ = _segspark([*argv, *_sets([f"spark.remote={connect_server.remote}"])], client_env, tmp_path)
    assert erased.returncode == 0, erased.stderr[-3000:]
    assert "customer_segments=1" in erased.stdout, erased.stdout
    assert not (tmp_path / "no-java" / "called").exists()
    assert _table(spark, classic, "customer_segments").count() == segments.count() - 1
