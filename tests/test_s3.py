"""The lakehouse on a real S3-compatible object store (issue 27, item 5), on both table engines.

A versitygw server (``tests/s3_server.py``: built once from the Go module proxy, a real S3 server over
a local folder) runs on 127.0.0.1 for the module and is stopped by its pid. The inputs are generated
straight onto the store (``segspark generate --out s3a://...``); ``run``, ``erase`` and ``vacuum`` on
each engine, ``score`` on Delta's own (a Databricks job's weekly score) and ``report`` on the embedded
one (its files go through the store, not the engine), then work with inputs and ``output.path`` on
``s3a://``, in-process on the suite's session
(which loads Hadoop's S3A connector), and the tables are read back by Spark and by delta-rs. Credentials
come from the environment only (the suite's conftest sets the test server's); the endpoint from
``AWS_ENDPOINT_URL``. Wrong credentials and a missing bucket stop a command with exit 2 and one line
naming the path and the problem, before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import s3_server
from deltalake import DeltaTable
from pyarrow import fs
from pyspark.sql import SparkSession

from segspark.cli import main

ENGINES = ("delta-spark", "delta-rs")
BUCKET = "lake"
CUSTOMERS = 150
INPUTS = ("transactions", "customers", "events", "marketing_spend")
# small and quick: the commands and the store are the point, not the models
JOB_SETS = [
    "as_of_date=2025-12-31",
    "quality.currency.rates={EUR: 1.08, GBP: 1.27}",
    "churn.enabled=false",
    "clv.enabled=false",
    "clustering.k_max=3",
    "report.pdf=off",
    "report.min_segment_size=5",
]


@dataclass
class Store:
    server: s3_server.S3Server
    files: fs.S3FileSystem

    def options(self) -> dict[str, str]:
        """delta-rs storage options of a reader that is not segspark (credentials: the environment)."""
        return {"AWS_ENDPOINT_URL": self.server.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}

    def table(self, prefix: str, name: str) -> DeltaTable:
        return DeltaTable(f"s3://{BUCKET}/{prefix}/tables/{name}", storage_options=self.options())

    def keys(self, prefix: str) -> list[str]:
        selector = fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
        return sorted(i.path for i in self.files.get_file_info(selector) if i.type == fs.FileType.File)


@pytest.fixture(scope="module")
def store(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    base = tmp_path_factory.mktemp("s3")
    server = s3_server.start(base)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ENDPOINT_URL", server.endpoint)
            files = fs.S3FileSystem(
                endpoint_override=f"127.0.0.1:{server.port}", scheme="http", allow_bucket_creation=True
            )
            files.create_dir(BUCKET)
            # the inputs, written onto the store by the embedded engine (the delta-spark run reads them)
            generate = ["generate", "--out", f"s3a://{BUCKET}/data", "--customers", str(CUSTOMERS)]
            assert main([*generate, "--seed", "5", "--set", "lakehouse.engine=delta-rs"]) == 0
            yield Store(server=server, files=files)
    finally:
        server.stop()
    assert server.proc.poll() is not None, "the S3 server is still running"


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def job_args(engine: str, out: str, tracking: Path | None) -> list[str]:
    """The job's arguments; ``tracking``: a local folder for the MLflow store (output.path is not one)."""
    inputs = [f"input.{name}.path=s3a://{BUCKET}/data/{name}" for name in INPUTS]
    mlflow = [f"tracking.uri=sqlite:///{tracking}/mlflow.db"] if tracking else []
    return _sets([*JOB_SETS, *inputs, f"output.path={out}", f"lakehouse.engine={engine}", *mlflow])


def _rows(table: DeltaTable, *columns: str) -> list[dict[str, Any]]:
    return pa.table(table.to_pyarrow_table(columns=list(columns) or None)).to_pylist()


def _source_customer(store: Store) -> str:
    tx = DeltaTable(f"s3://{BUCKET}/data/transactions", storage_options=store.options())
    return str(tx.to_pyarrow_dataset().head(1, columns=["customer_id"]).column(0)[0])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_run_score_report_erase_vacuum_with_inputs_and_output_on_s3(
    engine: str, store: Store, spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"out-{engine}"
    out = f"s3a://{BUCKET}/{prefix}"
    args = job_args(engine, out, tmp_path)
    started = time.perf_counter()
    # the report is built once, by the report command below
    assert main(["run", "--run-id", f"s3-{engine}", *args, "--set", "report.enabled=false"]) == 0
    run_s = time.perf_counter() - started
    assert f"tables: {out}/tables" in capsys.readouterr().out

    # the tables, read back by Spark (S3A) and by delta-rs; the report beside them on the store
    segments = store.table(prefix, "customer_segments")
    assert 100 < len(_rows(segments, "customer_id")) <= CUSTOMERS
    spark_count = spark.read.format("delta").load(f"{out}/tables/customer_segments").count()
    assert spark_count == len(_rows(segments, "customer_id"))
    [row] = _rows(store.table(prefix, "runs"), "status", "engine", "duration_s")
    assert (row["status"], row["engine"]) == ("succeeded", engine)
    keys = store.keys(prefix)
    assert not [k for k in keys if "/_staging/" in k or "/_temporary/" in k], "leftovers of the writes"
    print(
        f"\n{engine} on S3, {CUSTOMERS} customers: pipeline {row['duration_s']:.1f} s (command {run_s:.1f} s)"
    )

    if engine == "delta-spark":
        # the weekly score (the registered model) as a Databricks job runs it, on Delta's own engine
        assert main(["score", "--run-id", f"s3-{engine}-score", *args, "--set", "report.enabled=false"]) == 0
        runs = _rows(store.table(prefix, "runs"), "command", "status")
        assert [r["status"] for r in runs if r["command"] == "score"] == ["succeeded"]
    else:
        # the report from the tables, uploaded beside them (its files go through the store, not the
        # table engine: once is enough)
        assert main(["report", *args]) == 0
        printed = capsys.readouterr().out.splitlines()
        [report] = [line.split("report: ", 1)[1] for line in printed if "report: " in line]
        assert report.startswith(f"{out}/reports/")
        keys = store.keys(prefix)
        assert f"{BUCKET}/{prefix}/reports/latest/report.html" in keys
        assert report.removeprefix("s3a://") + "/report.md" in keys

    # erase one customer everywhere, then vacuum their rows out of the replaced files
    before = len(_rows(store.table(prefix, "customer_segments"), "customer_id"))
    assert main(["erase", "--customer-id", _source_customer(store), *args]) == 0
    erased = capsys.readouterr().out
    assert "customer_segments=" in erased, erased
    removed = int(erased.split("customer_segments=")[1].split(",")[0].split()[0])
    assert removed >= 1
    assert len(_rows(store.table(prefix, "customer_segments"), "customer_id")) == before - removed
    # the data files the erase replaced (they still hold the customer) are deleted by the vacuum
    folder = f"{BUCKET}/{prefix}/tables/customer_segments/"
    live = {u.removeprefix("s3://") for u in store.table(prefix, "customer_segments").file_uris()}
    replaced = [k for k in store.keys(prefix) if k.startswith(folder) and k.endswith(".parquet")]
    replaced = [k for k in replaced if "/_delta_log/" not in k and k not in live]
    assert replaced
    vacuum = ["vacuum", "--force", *args, "--set", "lakehouse.vacuum_retention_hours=0"]
    assert main(vacuum) == 0
    assert "file(s) deleted" in capsys.readouterr().out
    assert not set(replaced) & set(store.keys(prefix))
    assert spark.read.format("delta").load(f"{out}/tables/customer_segments").count() == before - removed


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segspark:")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_credentials_stop_with_exit_2_naming_the_path_and_write_nothing(
    engine: str,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = f"bad-credentials-{engine}"
    args = job_args(engine, f"s3a://{BUCKET}/{prefix}", tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    capsys.readouterr()
    assert main(["run", *args]) == 2
    line = _one_line_error(capsys)
    assert f"s3a://{BUCKET}/data/transactions" in line and "access denied" in line, line
    assert "not-the-secret" not in line
    monkeypatch.undo()
    assert store.keys(prefix) == [], "nothing may be written with refused credentials"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_missing_bucket_stops_with_exit_2_naming_the_path(
    engine: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = "s3a://no-such-bucket/segments"
    capsys.readouterr()
    assert main(["run", *job_args(engine, out, tmp_path)]) == 2
    line = _one_line_error(capsys)
    assert f"output.path {out}: the bucket 'no-such-bucket' does not exist" in line, line
    missing_input = [*job_args(engine, f"s3a://{BUCKET}/never", tmp_path), "--set",
                     "input.events.path=s3a://no-such-bucket/events"]  # fmt: skip
    assert main(["run", *missing_input]) == 2
    line = _one_line_error(capsys)
    assert "input.events.path s3a://no-such-bucket/events: the bucket 'no-such-bucket' does not exist" in line
    assert store.keys("never") == []


def test_object_store_settings_refuse_credentials_and_a_local_mlflow_store(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = job_args("delta-rs", f"s3a://{BUCKET}/settings", tmp_path)
    capsys.readouterr()
    assert main(["run", *args, "--set", "lakehouse.s3.delta_rs_options={AWS_SECRET_ACCESS_KEY: x}"]) == 2
    assert "credentials come from the environment" in _one_line_error(capsys)
    assert main(["run", *job_args("delta-rs", f"s3a://{BUCKET}/settings", None)]) == 2
    assert "set tracking.uri" in _one_line_error(capsys)
    assert store.keys("settings") == []
