"""A refit on unchanged data and config gives the same clusters and persona names.

``segspark cluster`` on a copy of the suite's reference run's output, in the suite's process and
session (another process than the run's, another number of shuffle partitions: the clusters do not
depend on the layout), must write the run's ``customer_segments`` assignments and personas again.
Two whole runs in two processes (two Spark sessions, other shuffle partitions) giving the same
segments, clusters, personas and cluster profiles: ``tests/test_connect_server.py`` (the demo in the
suite's session, the same job over a Spark Connect server).
"""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.mark.slow
def test_cluster_twice_on_the_same_output_gives_the_same_clusters_and_personas(
    reference_run: ReferenceRun, tmp_path: Path
) -> None:
    # on a copy of the run's output: the run's own clustering was the first fit, one refit compares two
    out = copy_output(reference_run.out, tmp_path / "copy")
    first = _segments(out)
    assert len(first) == _buyers(out) > 0.5 * REFERENCE_CUSTOMERS  # every buyer, clustered
    assert len({p for _, p in first.values()}) >= 3
    profiles = _profiles(out)
    _cli(reference_run, "cluster", "--run-id", "det-cluster", *reference_run.job_sets(out), *OFF)
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
