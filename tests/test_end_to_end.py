from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from segspark.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end(spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--out", str(tmp_path), "--customers", "400", "--set", "lakehouse.engine=delta-rs"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "succeeded" in out
    runs = DeltaTable(str(tmp_path / "tables" / "runs")).to_pyarrow_table().to_pylist()
    assert len(runs) == 1
    assert runs[0]["status"] == "succeeded"
    inputs = {i["name"]: i for i in runs[0]["inputs"]}
    assert set(inputs) == {"transactions", "customers", "events", "marketing_spend"}
    assert inputs["transactions"]["version"] == 0
    assert inputs["transactions"]["rows_in"] == inputs["transactions"]["rows_clean"] + inputs["transactions"]["rows_quarantined"]
    assert (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_smoke_over_spark_connect(tmp_path: Path) -> None:
    env = {**os.environ, "SEGSPARK_PSEUDO_KEY": "connect-test-key"}
    proc = subprocess.run(
        [sys.executable, "-m", "segspark", "demo", "--out", str(tmp_path), "--customers", "300",
         "--set", "spark.remote=local[2]", "--set", "spark.shuffle_partitions=2"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert DeltaTable(str(tmp_path / "tables" / "runs")).version() == 0
