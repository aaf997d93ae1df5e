"""Right to erasure end to end: after ``segspark erase`` and ``segspark vacuum`` the erased customer's
pseudonym is in no file under the output folder (every Parquet file decoded, every other file as bytes)
and nowhere in the MLflow store (its SQLite database and every artifact)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from segspark import drift, maintenance, pipeline
from segspark.cli import main
from segspark.config import load_settings
from segspark.context import open_context
from tests.conftest import ReferenceRun, copy_output

REPO = Path(__file__).resolve().parents[1]
KEY = os.environ["SEGSPARK_PSEUDO_KEY"]  # the suite's, which the reference run pseudonymized with


def _segspark(*args: str, cwd: Path, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGSPARK_PSEUDO_KEY": KEY, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run(
        [sys.executable, "-m", "segspark", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    return pa.table(DeltaTable(str(path)).to_pyarrow_table()).to_pylist()


def _parquet_text(path: Path) -> str:
    """Every value of every column (nested ones and JSON strings included) of a Parquet file, as text."""
    table = pq.read_table(path)
    return json.dumps(table.to_pylist(), default=str)


def find(root: Path, needle: str) -> list[str]:
    """The files under ``root`` that hold ``needle``: Parquet files decoded (compressed pages hide
    it from a byte search), every file also as raw bytes (logs, reports, SQLite, footers)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        parquet = path.suffix == ".parquet" and data[:4] == b"PAR1"
        if needle.encode() in data or (parquet and needle in _parquet_text(path)):
            found.append(str(path.relative_to(root)))
    return found


@pytest.fixture(scope="module", params=["delta-rs", "delta-spark"])
def lake(
    reference_run: ReferenceRun, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """A copy of the suite's reference run (600 dirty generated customers, the whole pipeline with its
    report and MLflow store, started from an empty folder): erase and vacuum change the copy, with
    each table engine (the run wrote the tables with ``REFERENCE_ENGINE``)."""
    assert reference_run.key == KEY
    root = tmp_path_factory.mktemp(f"erasure-{request.param}")
    out = copy_output(reference_run.out, root / "out")
    cwd = root / "cwd"
    cwd.mkdir()
    return {
        "out": out,
        "data": reference_run.data,
        "run_cwd": reference_run.cwd,
        "cwd": cwd,
        "args": [*reference_run.sets(out), "--set", f"lakehouse.engine={request.param}"],
        # in the suite's process and session (its Spark settings as they are): what the erase and the
        # vacuum do to the files is the point here, not a process of their own (test_s3 and the
        # Connect-server test run them as commands too)
        "job_args": [*reference_run.job_sets(out), "--set", f"lakehouse.engine={request.param}"],
    }


def _pseudonym(source_id: str) -> str:
    return hmac.new(KEY.encode(), source_id.encode(), hashlib.sha256).hexdigest()


@pytest.mark.slow
def test_erase_and_vacuum_leave_the_pseudonym_in_no_file_and_no_mlflow_artifact(
    lake: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, cwd = lake["out"], lake["cwd"]
    tables = out / "tables"
    # a customer with a quarantined row as well as segments: erasure must reach both
    source_ids = {r["customer_id"] for r in _rows(lake["data"] / "transactions") if r["customer_id"]}
    quarantined = {r["customer_id"] for r in _rows(tables / "quarantine")} - {None}
    segmented = {r["customer_id"] for r in _rows(tables / "customer_segments")}
    both = sorted(s for s in source_ids if _pseudonym(s.strip()) in quarantined & segmented)
    assert both, "the dirty data should quarantine a row of a segmented customer"
    victim = both[0]
    pid = _pseudonym(victim.strip())

    # the MLflow store lives beside the tables (nothing in the folder the job was started from)
    assert (out / "mlflow.db").is_file() and (out / "mlartifacts").is_dir()
    run_cwd = lake["run_cwd"]
    assert not any(run_cwd.iterdir()), f"the run wrote into its working folder: {list(run_cwd.iterdir())}"
    artifacts = [p for p in (out / "mlartifacts").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in artifacts)  # the Spark model's data files are scanned
    assert any(p.name.endswith(".html") for p in artifacts)  # and the logged report

    before = find(out, pid)
    # the scan can fail: the pseudonym is in the customer tables and the quarantine before the erase
    for name in ("customer_segments", "customer_features", "customer_scores", "orders", "quarantine"):
        assert any(f.startswith(f"tables/{name}/") for f in before), (name, before)
    other = _pseudonym(sorted(source_ids - {victim})[0].strip())
    assert find(out / "mlartifacts", other) == [] and other.encode() not in (out / "mlflow.db").read_bytes()

    caplog.set_level(logging.INFO)
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    assert main(["erase", "--customer-id", victim, *lake["job_args"]]) == 0
    printed = capsys.readouterr()
    assert "quarantine=" in printed.out and "customer_segments=1" in printed.out
    logged = printed.out + printed.err + caplog.text
    assert "erased 1 customer key(s)" in caplog.text  # the command's log was captured
    assert pid not in logged and victim not in printed.err + caplog.text  # logs name no one
    # the latest versions no longer hold it; the files of earlier versions still do
    for name in ("customer_segments", "quarantine", "orders"):
        assert all(r["customer_id"] != pid for r in _rows(tables / name))
    assert find(out, pid), "earlier table versions keep the rows until vacuum"

    # refused under Delta's safety minimum without --force: one line, exit 2, before Spark starts
    refused = _segspark("vacuum", *lake["args"], "--set", "lakehouse.vacuum_retention_hours=0", cwd=cwd)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "below Delta's safety minimum of 168 h" in refused.stderr and "--force" in refused.stderr

    vacuum = ["vacuum", "--force", *lake["job_args"], "--set", "lakehouse.vacuum_retention_hours=0"]
    assert main(vacuum) == 0
    assert "file(s) deleted" in capsys.readouterr().out

    assert find(out, pid) == []
    assert find(out, pid[:32]) == []  # not even a truncated statistic in a Delta log
    assert find(cwd, pid) == []
    # the other customers are all still there
    assert len({r["customer_id"] for r in _rows(tables / "customer_segments")}) == len(segmented) - 1

    runs = [r for r in _rows(tables / "runs") if r["command"] in ("erase", "vacuum")]
    runs.sort(key=lambda r: r["started_at"])
    assert [(r["command"], r["status"]) for r in runs] == [("erase", "succeeded"), ("vacuum", "succeeded")]
    erase_row, vacuum_row = runs
    touched = {o["table"] for o in erase_row["outputs"]}
    assert {"customer_segments", "customer_features", "quarantine", "orders", "customer_days"} <= touched
    assert "customer_segments" in {o["table"] for o in vacuum_row["outputs"]}
    assert any("168 h" in w for w in vacuum_row["warnings"])
    assert all(pid not in json.dumps(r, default=str) for r in runs)


def test_monitor_report_erase_and_vacuum_record_a_runs_row_failed_ones_too(
    spark: SparkSession, tmp_path: Path
) -> None:
    from segspark.errors import ConfigError, InputError

    def settings(*extra: str) -> Any:
        base = [f"output.path={tmp_path}", "lakehouse.engine=delta-rs", "tracking.enabled=false"]
        return load_settings([], [*base, *extra])

    def attempt(command: str, call: Any, *extra: str) -> None:
        ctx = open_context(settings(*extra), command, spark=spark)
        call(ctx)

    # nothing written yet: monitor and report fail, and say so in runs
    with pytest.raises(InputError, match="customer_segments"):
        attempt("monitor", drift.monitor)
    with pytest.raises(InputError, match="customer_segments"):
        attempt("report", pipeline.run)  # the report stage alone
    attempt("erase", lambda ctx: maintenance.erase(ctx, ["C1"]))
    with pytest.raises(ConfigError, match="safety minimum"):
        attempt("vacuum", maintenance.vacuum, "lakehouse.vacuum_retention_hours=0")
    attempt("vacuum", lambda ctx: maintenance.vacuum(ctx, force=True), "lakehouse.vacuum_retention_hours=0")
    rows = sorted(_rows(tmp_path / "tables" / "runs"), key=lambda r: r["started_at"])
    assert [(r["command"], r["status"]) for r in rows] == [
        ("monitor", "failed"),
        ("report", "failed"),
        ("erase", "succeeded"),
        ("vacuum", "failed"),
        ("vacuum", "succeeded"),
    ]
    assert "InputError" in rows[0]["error"] and "ConfigError" in rows[3]["error"]
    # the tables there were to vacuum: runs, and the erasure recorded for later runs (no data yet)
    assert {o["table"] for o in rows[4]["outputs"]} == {"erasures", "runs"}
