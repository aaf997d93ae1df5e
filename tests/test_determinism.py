"""Reruns on unchanged data and config give the same clusters and persona names.

``segspark run`` twice (two output folders) and ``segspark cluster`` twice on one output, each pair
in two processes (two Spark sessions, task scheduling and file listing), must write identical
``customer_segments`` assignments and personas. The first run is the suite's reference run, in a
process of its own; the second runs in the suite's process, on the suite's session (which also has
another number of shuffle partitions: the clusters do not depend on the layout).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from tests.conftest import REFERENCE_AS_OF, REFERENCE_CUSTOMERS, ReferenceRun, copy_output

# what the clusters do not read is off, to keep the test short: the report and MLflow come after the
# segments are written, and no clustering feature or persona trait is a churn score
OFF = ["--set", "report.enabled=false", "--set", "churn.enabled=false", "--set", "tracking.enabled=false"]


def _cli(ref: ReferenceRun, *args: str) -> None:
    """A command in this process, on the suite's session, with the reference run's key."""
    from segspark.cli import main

    assert os.environ["SEGSPARK_PSEUDO_KEY"] == ref.key
    assert main(list(args)) == 0


def _segments(out: Path) -> dict[str, tuple[int, str]]:
    table = DeltaTable(str(out / "tables" / "customer_segments")).to_pyarrow_table(
        columns=["customer_id", "cluster_id", "persona", "as_of_date"]
    )
    table = table.filter(pc.is_valid(table.column("cluster_id")))
    rows = table.to_pylist()
    assert {str(r["as_of_date"]) for r in rows} == {REFERENCE_AS_OF}  # a rerun replaces the date's partition
    return {r["customer_id"]: (r["cluster_id"], r["persona"]) for r in rows}


def _buyers(out: Path) -> int:
    """Customers with a purchase (``frequency`` > 0): the ones the clustering assigns."""
    table = DeltaTable(str(out / "tables" / "customer_features")).to_pyarrow_table(columns=["frequency"])
    return int(pc.sum(pc.greater(table.column("frequency"), 0)).as_py())


def _profiles(out: Path) -> list[tuple[int, str, int]]:
    rows = DeltaTable(str(out / "tables" / "cluster_profiles")).to_pyarrow_table(
        columns=["cluster_id", "persona", "size"]
    )
    return sorted((r["cluster_id"], r["persona"], r["size"]) for r in rows.to_pylist())


@pytest.fixture(scope="module")
def runs(reference_run: ReferenceRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run "a" is the suite's reference run (its own process); "b" runs again on its data and
    configuration (``OFF`` aside) in this process, into another output folder."""
    root = tmp_path_factory.mktemp("determinism")
    b = root / "b"
    _cli(reference_run, "run", "--run-id", "det-b", *reference_run.job_sets(b), *OFF)
    return {"ref": reference_run, "a": reference_run.out, "b": b, "root": root}


@pytest.mark.slow
def test_two_runs_give_the_same_clusters_and_personas(runs: dict[str, Any]) -> None:
    a, b = _segments(runs["a"]), _segments(runs["b"])
    assert len(a) == _buyers(runs["a"]) > 0.5 * REFERENCE_CUSTOMERS  # every buyer, clustered
    assert len({p for _, p in a.values()}) >= 3
    moved = sum(a[k] != b.get(k) for k in a)
    assert moved == 0 and a.keys() == b.keys(), f"{moved} of {len(a)} customers differ between two runs"
    assert _profiles(runs["a"]) == _profiles(runs["b"])


@pytest.mark.slow
def test_cluster_twice_on_the_same_output_gives_the_same_clusters_and_personas(
    runs: dict[str, Any],
) -> None:
    # on a copy of run "a": the run's own clustering was the first fit, one refit compares two
    out = copy_output(runs["a"], runs["root"] / "a-copy")
    first = _segments(out)
    profiles = _profiles(out)
    ref: ReferenceRun = runs["ref"]
    _cli(ref, "cluster", "--run-id", "det-cluster", *ref.job_sets(out), *OFF)
    again = _segments(out)
    moved = sum(first[k] != again.get(k) for k in first)
    assert moved == 0 and first.keys() == again.keys(), (
        f"cluster: {moved} of {len(first)} customers changed cluster or persona"
    )
    assert _profiles(out) == profiles
    # the refit did rewrite the date's segments (so the comparison compares two fits)
    runs_rows = DeltaTable(str(out / "tables" / "runs")).to_pyarrow_table(columns=["run_id", "status"])
    assert ("det-cluster", "succeeded") in {(r["run_id"], r["status"]) for r in runs_rows.to_pylist()}
    rewritten = DeltaTable(str(out / "tables" / "customer_segments")).to_pyarrow_table(columns=["run_id"])
    assert set(rewritten.column("run_id").to_pylist()) == {"det-cluster"}
