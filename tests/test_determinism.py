"""Reruns on unchanged data and config give the same clusters and persona names.

``segspark run`` twice (two output folders) and ``segspark cluster`` twice on one output, each in its
own process (its own Spark session, task scheduling and file listing), must write identical
``customer_segments`` assignments and personas.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from segspark import pipeline
from segspark.config import Settings

CUSTOMERS = 1200
SEED = 23
AS_OF = "2025-12-31"


def _cli(log: Path, *args: str) -> None:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.setdefault("SEGSPARK_PSEUDO_KEY", "test-key-not-secret")
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.run(
            [sys.executable, "-m", "segspark", *args], env=env, stdout=out, stderr=out, timeout=1200
        ).returncode
    assert code == 0, log.read_text(encoding="utf-8")[-3000:]


def _sets(data: dict[str, str], out: Path) -> list[str]:
    sets = [
        f"output.path={out}",
        "lakehouse.engine=delta-rs",
        f"as_of_date={AS_OF}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=3",
        "spark.driver_memory=1g",
        # what the clusters do not read is off, to keep the test short
        "report.enabled=false",
        "churn.enabled=false",
        "tracking.enabled=false",
        "clustering.k_max=7",
        *pipeline.demo_overrides(data),
    ]
    return [x for s in sets for x in ("--set", s)]


def _segments(out: Path) -> dict[str, tuple[int, str]]:
    table = DeltaTable(str(out / "tables" / "customer_segments")).to_pyarrow_table(
        columns=["customer_id", "cluster_id", "persona", "as_of_date"]
    )
    table = table.filter(pc.is_valid(table.column("cluster_id")))
    rows = table.to_pylist()
    assert {str(r["as_of_date"]) for r in rows} == {AS_OF}  # a rerun replaces the date's partition
    return {r["customer_id"]: (r["cluster_id"], r["persona"]) for r in rows}


def _profiles(out: Path) -> list[tuple[int, str, int]]:
    rows = DeltaTable(str(out / "tables" / "cluster_profiles")).to_pyarrow_table(
        columns=["cluster_id", "persona", "size"]
    )
    return sorted((r["cluster_id"], r["persona"], r["size"]) for r in rows.to_pylist())


@pytest.fixture(scope="module")
def runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("determinism")
    settings = Settings.model_validate({"output": {"path": str(root)}, "lakehouse": {"engine": "delta-rs"}})
    data = pipeline.generate(settings, str(root / "data"), CUSTOMERS, seed=SEED, spark=spark)["paths"]
    outs = {name: root / name for name in ("a", "b")}
    for name, out in outs.items():
        _cli(root / f"run-{name}.log", "run", "--run-id", f"det-{name}", *_sets(data, out))
    return {"data": data, **outs}


@pytest.mark.slow
def test_two_runs_give_the_same_clusters_and_personas(runs: dict[str, Any]) -> None:
    a, b = _segments(runs["a"]), _segments(runs["b"])
    assert len(a) > 0.8 * CUSTOMERS  # the buyers, clustered
    assert len({p for _, p in a.values()}) >= 3
    moved = sum(a[k] != b.get(k) for k in a)
    assert moved == 0 and a.keys() == b.keys(), f"{moved} of {len(a)} customers differ between two runs"
    assert _profiles(runs["a"]) == _profiles(runs["b"])


@pytest.mark.slow
def test_cluster_twice_on_the_same_output_gives_the_same_clusters_and_personas(
    runs: dict[str, Any],
) -> None:
    out = runs["a"]
    first = _segments(out)
    profiles = _profiles(out)
    for attempt in (1,):  # the run's own clustering was the first fit: one refit compares two
        log = out.parent / f"cluster-{attempt}.log"
        _cli(log, "cluster", "--run-id", f"det-cluster-{attempt}", *_sets(runs["data"], out))
        again = _segments(out)
        moved = sum(first[k] != again.get(k) for k in first)
        assert moved == 0 and first.keys() == again.keys(), (
            f"cluster #{attempt}: {moved} of {len(first)} customers changed cluster or persona"
        )
        assert _profiles(out) == profiles
