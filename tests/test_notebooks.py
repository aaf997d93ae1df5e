"""The notebooks in ``notebooks/``: the quickstart and the exploration notebook run headlessly (nbclient,
a real ``python3`` ipykernel, a real local Spark in the kernel) on small generated data; the Databricks
notebook compiles and the arguments it builds from its widgets pass the CLI's own parser and config
validation (no Databricks workspace is reachable here: its job-running path runs without one).

The quickstart generates the data and runs the pipeline once; the exploration notebook reads that run's
output. Executed copies go to the test's temporary folder, never back into ``notebooks/``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import html
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest
import s3_server
import yaml
from deltalake import DeltaTable
from pyarrow import fs
from pyspark.sql import SparkSession

from segspark import cli
from segspark import notebook as nbh
from segspark import schema as S
from segspark.config import load_settings
from segspark.errors import ConfigError
from segspark.io import storage
from segspark.session import QUICK_JIT_OPTIONS
from tests.test_engine_contract import rows_for

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
EXPLORE = NOTEBOOKS / "02_explore.ipynb"
DATABRICKS = NOTEBOOKS / "03_databricks_job.py"
CUSTOMERS = 300
CELL_TIMEOUT = 900  # the run cell is the whole pipeline; on a loaded 2-core machine minutes, not seconds
MARKER = "SEGSPARK_NOTEBOOK_TEST"  # in the kernels' environment, inherited by their Spark JVMs
# small and quick: the suite's Spark sizes, one clustering algorithm over few k, no MLflow store
SMALL_CONF: dict[str, Any] = {
    "spark": {
        "master": "local[2]",
        "shuffle_partitions": 2,
        "driver_memory": "1g",
        "conf": {"spark.default.parallelism": "2", "spark.sql.adaptive.coalescePartitions.enabled": "false"},
    },
    "lakehouse": {"engine": "delta-rs"},
    "clustering": {"algorithms": ["kmeans"], "k_max": 4, "stability": False},
    "churn": {"model": "logistic"},
    "tracking": {"enabled": False},
    "report": {"min_segment_size": 5},
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marked_pids(marker: str) -> list[int]:
    """Processes started with ``MARKER=marker`` in their environment (the kernels and their JVMs)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _wait_gone(marker: str, seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _marked_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _tagged(nb: Any, tag: str) -> Any:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected, found {len(cells)}"
    return cells[0]


def _html(cell: Any) -> str:
    return "".join(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))


def _stream(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def _pngs(cell: Any) -> list[bytes]:
    images = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
    return [base64.b64decode(png) for png in images]


def _body_rows(table_html: str) -> int:
    body = table_html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return body.count("<tr")


def _table(out: Path, name: str) -> list[dict[str, Any]]:
    return DeltaTable(str(out / "tables" / name)).to_pyarrow_table().to_pylist()  # small aggregate tables


@dataclass(frozen=True)
class Quickstart:
    nb: Any  # the executed notebook
    workdir: Path
    output: Path
    conf: Path
    seconds: float


def _execute(path: Path, cwd: Path, dest: Path) -> Any:
    """Execute a notebook in a fresh ``python3`` kernel started in ``cwd``; a failing cell raises
    ``CellExecutionError`` with its traceback. The executed copy is written to ``dest``."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, dest)
    return nb


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment the kernels inherit (small data, small Spark); at teardown every process that
    carries this module's marker, kernels and Spark JVMs, is stopped by pid (the test also asserts
    that none was left)."""
    marker = tmp_path_factory.mktemp("marker").name
    conf = tmp_path_factory.mktemp("conf") / "small.yaml"
    conf.write_text(yaml.safe_dump(SMALL_CONF))
    env = {
        MARKER: marker,
        "SEGSPARK_CONF": str(conf),
        "SEGSPARK_CUSTOMERS": str(CUSTOMERS),
        "SEGSPARK_PSEUDO_KEY": "notebook-test-key-not-secret",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "MPLBACKEND": "Agg",
        # C1 only: the kernels' JVMs live for one small run, where C2's compile threads cost more CPU
        # than they save (measured: the two notebooks' CPU time 194 s -> 109 s); C1 alone gets a 48 MB code
        # cache by default, which Spark's generated code fills
        "JAVA_TOOL_OPTIONS": QUICK_JIT_OPTIONS,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for pid in _marked_pids(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def quickstart(notebook_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Quickstart:
    root = tmp_path_factory.mktemp("quickstart")
    cwd, workdir = root / "cwd", root / "work"
    cwd.mkdir()
    os.environ["SEGSPARK_WORKDIR"] = str(workdir)
    before = {p.name: _digest(p) for p in NOTEBOOKS.iterdir()}
    started = time.perf_counter()
    try:
        nb = _execute(QUICKSTART, cwd, root / "01_quickstart.executed.ipynb")
    finally:
        os.environ.pop("SEGSPARK_WORKDIR", None)
    seconds = time.perf_counter() - started
    assert {p.name: _digest(p) for p in NOTEBOOKS.iterdir()} == before, "notebooks/ must stay untouched"
    return Quickstart(nb, workdir, workdir / "output", Path(notebook_env["SEGSPARK_CONF"]), seconds)


@pytest.mark.slow
def test_quickstart_generates_runs_and_shows_tables_and_charts(
    quickstart: Quickstart, notebook_env: dict[str, str]
) -> None:
    nb, out = quickstart.nb, quickstart.output
    print(f"quickstart notebook: {quickstart.seconds:.1f} s")
    # the run the notebook made is on disk, succeeded, on the generated data
    runs = [r for r in _table(out, "runs") if r["command"] == "run"]
    assert [r["status"] for r in runs] == ["succeeded"]
    assert (quickstart.workdir / "data" / "transactions" / "_delta_log").is_dir()
    assert "customer_segments" in _html(_tagged(nb, "tables"))

    # segment sizes: one table row per persona of segment_kpis, with every persona named
    kpis = _table(out, "segment_kpis")
    personas = {r["segment"] for r in kpis if r["segment_type"] == "persona"}
    assert len(personas) >= 2
    sizes = _html(_tagged(nb, "segment-sizes"))
    assert _body_rows(sizes) == len(personas)
    for persona in personas:
        assert html.escape(persona) in sizes
    total = sum(r["value"] for r in kpis if r["segment_type"] == "persona" and r["kpi"] == "customers")
    assert 0 < total <= CUSTOMERS

    # the report's key charts, inline: as many PNG outputs as key charts the report drew, byte-equal
    drawn = [out / "reports" / "latest" / "figures" / f"{name}.png" for name in nbh.KEY_CHARTS]
    drawn = [p for p in drawn if p.is_file()]
    assert len(drawn) >= 4
    shown = _pngs(_tagged(nb, "key-charts"))
    assert shown == [p.read_bytes() for p in drawn]
    assert all(png.startswith(b"\x89PNG") for png in shown)

    # the last cell stopped Spark; once nbclient shut the kernel down no kernel or JVM is left
    assert _wait_gone(notebook_env[MARKER]) == []


@pytest.mark.slow
def test_explore_reads_the_quickstart_output(
    quickstart: Quickstart, notebook_env: dict[str, str], tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    os.environ["SEGSPARK_OUTPUT"] = str(quickstart.output)
    started = time.perf_counter()
    try:
        nb = _execute(EXPLORE, cwd, tmp_path / "02_explore.executed.ipynb")
    finally:
        os.environ.pop("SEGSPARK_OUTPUT", None)
    print(f"explore notebook: {time.perf_counter() - started:.1f} s")
    out = quickstart.output
    kpis = _table(out, "segment_kpis")

    rfm = {r["segment"] for r in kpis if r["segment_type"] == "rfm_segment"}
    assert _body_rows(_html(_tagged(nb, "rfm"))) == len(rfm) >= 3
    personas = _html(_tagged(nb, "personas"))
    for persona in {r["segment"] for r in kpis if r["segment_type"] == "persona"}:
        assert html.escape(persona) in personas
    assert "avg_clv" in personas and "churn_rate" in personas

    heatmap = _pngs(_tagged(nb, "cohort-heatmap"))
    assert len(heatmap) == 1 and heatmap[0].startswith(b"\x89PNG")

    validity = _html(_tagged(nb, "clv-validity"))
    models = {r["model"] for r in _table(out, "clv_fit") if r["section"] == "validity"}
    assert models and all(model in validity for model in models)

    # one run: no earlier snapshot, and the notebook says so instead of showing drift
    assert "no customer_segments snapshot before" in _stream(_tagged(nb, "drift"))
    assert _table(out, "drift") == []
    assert _wait_gone(notebook_env[MARKER]) == []


def test_committed_notebooks_carry_no_outputs() -> None:
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in notebooks] == ["01_quickstart.ipynb", "02_explore.ipynb"]
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"


# ---- the Databricks notebook ---------------------------------------------------------------------
def _databricks_cells() -> list[str]:
    text = DATABRICKS.read_text(encoding="utf-8")
    header, *rest = text.split("\n# COMMAND ----------\n")
    assert header.startswith("# Databricks notebook source\n")
    return [header, *rest]


def _validated(argv: list[str]) -> Any:
    """``argv`` through the CLI's parser (as ``segspark-job`` would get it) and config validation."""
    args = cli.build_parser().parse_args(argv)
    return args, load_settings(args.conf, args.overrides)


def test_databricks_notebook_widgets_build_valid_job_arguments() -> None:
    source = DATABRICKS.read_text(encoding="utf-8")
    compile(source, str(DATABRICKS), "exec")  # the whole file is Python (MAGIC lines are comments)
    cells = _databricks_cells()
    assert "\n# MAGIC %md\n" in cells[0]  # the first cell: the notebook's markdown header
    run_cell = next(i for i, c in enumerate(cells) if "# DBTITLE 1,Run the job" in c)
    assert "dbutils.notebook.exit(status)" in cells[run_cell]

    # the cells before the run, outside Databricks (no dbutils): the widgets' defaults
    namespace: dict[str, Any] = {"__name__": "databricks_notebook"}
    for cell in cells[:run_cell]:
        exec(compile(cell, str(DATABRICKS), "exec"), namespace)
    assert namespace["dbutils"] is None
    argv = namespace["argv"]
    assert argv == nbh.job_args(**{k: d for k, (d, _) in nbh.JOB_WIDGETS.items()})
    args, _settings = _validated(argv)
    assert args.command == "run"

    # every widget filled, as a job's base_parameters would: each value lands in the settings
    filled = nbh.job_args(
        command="score",
        conf=f" {REPO / 'conf' / 'databricks.yaml'} , {REPO / 'conf' / 'retail.yaml'}",
        as_of_date="2025-12-31",
        catalog="main",
        schema="segments",
        output_path="/Volumes/main/segments/segspark",
    )
    args, settings = _validated(filled)
    assert args.command == "score"
    assert args.conf == [str(REPO / "conf" / "databricks.yaml"), str(REPO / "conf" / "retail.yaml")]
    assert str(settings.as_of_date) == "2025-12-31"
    assert (settings.output.catalog, settings.output.schema_) == ("main", "segments")
    assert settings.output.path == "/Volumes/main/segments/segspark"
    assert settings.lakehouse.engine == "delta-spark"  # from conf/databricks.yaml
    for command in nbh.JOB_COMMANDS:  # the dropdown's choices are commands of segspark-job
        assert command in cli.COMMANDS
        _validated(nbh.job_args(command=command))
    with pytest.raises(ConfigError, match="as_of_date"):
        _validated(nbh.job_args(as_of_date="2025-13-45"))


def test_databricks_notebook_runs_the_entry_point_without_databricks(tmp_path: Path) -> None:
    """Run as a plain Python file: the real ``jobs.run_pipeline.main`` with the widgets' defaults. No
    input is configured, so the job stops before Spark starts (exit code 2) and the notebook fails
    the task with the status, as a Databricks notebook task would show it."""
    env = {**os.environ, "SEGSPARK_PSEUDO_KEY": "notebook-test-key-not-secret"}
    env.pop("DATABRICKS_RUNTIME_VERSION", None)
    proc = subprocess.run(
        [sys.executable, str(DATABRICKS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"command": "run", "exit_code": 2, "status": "failed"}
    assert "input 'transactions' is not configured" in proc.stderr
    assert "RuntimeError: segspark run failed" in proc.stderr
    assert not (tmp_path / "segspark-output").exists()  # nothing written


def test_a_notebook_opens_a_lakehouse_on_s3_with_the_stores_settings(
    spark: SparkSession, tmp_path: Path
) -> None:
    """``RunOutput.open("s3a://...")`` in a notebook whose session is already running (the suite's,
    which loads Hadoop's S3A connector): the store's S3A settings reach that session, so Spark writes
    and reads the tables there, and the helpers read them back."""
    with s3_server.running(tmp_path) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        bucket = "notebook"  # a bucket no other test used: Hadoop caches a file system per bucket
        files = fs.S3FileSystem(
            endpoint_override=server.endpoint.split("//")[1], scheme="http", allow_bucket_creation=True
        )
        files.create_dir(bucket)
        for key in storage.hadoop_conf():  # another test's store settings would hide missing ones
            spark.conf.unset(key)
        opened = nbh.RunOutput.open(
            f"s3a://{bucket}/out/", overrides=["lakehouse.engine=delta-rs", "tracking.enabled=false"]
        )
        assert opened.spark is spark and opened.lake.location == f"s3a://{bucket}/out"
        assert spark.conf.get("fs.s3a.endpoint", None) == server.endpoint
        name = S.CUSTOMER_SEGMENTS
        opened.lake.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=dt.date(2025, 12, 31))
        assert opened.tables().to_dict("records") == [{"table": name, "version": 0}]
        assert opened.latest_as_of() == dt.date(2025, 12, 31)
        assert opened.snapshot(name).count() == 4  # 3 rows and the all-null edge row
        assert any(i.path.startswith(f"{bucket}/out/tables/{name}/_delta_log/") for i in _keys(files, bucket))
        for key in storage.hadoop_conf():
            spark.conf.unset(key)


def _keys(files: fs.S3FileSystem, bucket: str) -> list[fs.FileInfo]:
    return list(files.get_file_info(fs.FileSelector(bucket, recursive=True)))
