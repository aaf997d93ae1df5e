"""Faults: two runs writing one output at once (two ``ingest`` commands: the commits of a run's first
stages), and a run killed (SIGKILL) in the middle of a table write then retried with its run id. Each
compares every table it writes, per run_id and as_of_date, with a clean reference run of the same data
and configuration."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from segspark import generate
from segspark.cli import main
from segspark.config import load_settings

REPO = Path(__file__).resolve().parents[1]
# small and quick: transactions only, no model fits, no report, no MLflow (the table writes are the point)
SETS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "as_of_date=2025-12-31",
    "quality.currency.rates={EUR: 1.08, GBP: 1.27}",
    "clv.enabled=false",
    "churn.enabled=false",
    "clustering.enabled=false",
    "report.enabled=false",
    "tracking.enabled=false",
]
APPEND = {"quarantine", "runs", "input_manifest"}
# the tables `segspark ingest` writes (runs aside): the two concurrent commands are ingests, whose
# commits are those of a run's first two stages (the same writes; a run's later stages only add tables)
INGESTED = {"quarantine", "input_manifest", "orders", "customer_days", "customer_state", "customer_months"}
# both table engines: the embedded one, and Delta's own Spark data source (jars in the suite's cache)
ENGINES = ("delta-rs", "delta-spark")


def _args(
    cmd: str, out: Path, data: dict[str, str], *extra: str, spark: bool = True, engine: str = "delta-rs"
) -> list[str]:
    sets = [
        f"lakehouse.engine={engine}",
        *SETS,
        f"output.path={out}",
        f"input.transactions.path={data['transactions']}",
    ]
    sets = [s for s in sets if spark or not s.startswith("spark.")]
    return [cmd, *extra, *[x for s in sets for x in ("--set", s)]]


def _command(cmd: str, out: Path, data: dict[str, str], *extra: str, engine: str) -> list[str]:
    return [sys.executable, "-m", "segspark", *_args(cmd, out, data, *extra, engine=engine)]


def _env() -> dict[str, str]:
    return {**os.environ, "SEGSPARK_PSEUDO_KEY": "faults-key", "SPARK_LOCAL_IP": "127.0.0.1"}


def has_commit(path: Path) -> bool:
    """A table folder with a commit (a write killed before its first commit may leave an empty log)."""
    return any((path / "_delta_log").glob("*.json"))


def counts(out: Path) -> dict[str, Counter[tuple[str, str]]]:
    """Rows per (run_id, as_of_date) of every table under ``out``, from the latest versions."""
    found = {}
    for path in sorted((out / "tables").iterdir()):
        if not has_commit(path):
            continue
        table = pa.table(DeltaTable(str(path)).to_pyarrow_table(columns=["run_id", "as_of_date"]))
        found[path.name] = Counter((r["run_id"], str(r["as_of_date"])) for r in table.to_pylist())
    return found


def versions(out: Path) -> dict[str, int]:
    tables = (out / "tables").iterdir()
    return {p.name: DeltaTable(str(p)).version() for p in tables if has_commit(p)}


def renamed(tables: dict[str, Counter[tuple[str, str]]], run_id: str, to: str) -> dict[str, Counter[Any]]:
    return {
        name: Counter({(to if r == run_id else r, d): n for (r, d), n in c.items()})
        for name, c in tables.items()
    }


@pytest.fixture(scope="module")
def data(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("faults")
    settings = load_settings([], ["spark.shuffle_partitions=2"])
    generated = generate.write_lakehouse(settings, str(root / "data"), 300, seed=3, dirty=True, spark=spark)
    # the clean reference: one run alone on its own output. In-process on the suite's session (no
    # second JVM to start): only its row counts are compared, and those do not depend on the session.
    ref = root / "reference"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEGSPARK_PSEUDO_KEY", _env()["SEGSPARK_PSEUDO_KEY"])
        # no spark.* items: the suite's session is used as it is
        assert main(_args("run", ref, generated["paths"], "--run-id", "ref", spark=False)) == 0
    reference = counts(ref)
    reference.pop("runs")
    assert reference["quarantine"], "the dirty data should quarantine rows"
    return {"root": root, "paths": generated["paths"], "reference": reference, "ref": ref}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_two_runs_on_one_output_one_commits_the_other_fails_with_a_conflict(
    data: dict[str, Any], engine: str
) -> None:
    out = data["root"] / f"concurrent-{engine}"
    procs = {
        run_id: subprocess.Popen(
            _command("ingest", out, data["paths"], "--run-id", run_id, engine=engine),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=REPO,
        )
        for run_id in ("cA", "cB")
    }
    results = {run_id: (p.wait(timeout=900), *p.communicate()) for run_id, p in procs.items()}
    codes = {run_id: r[0] for run_id, r in results.items()}
    assert sorted(codes.values()) == [0, 1], {k: r[2][-2000:] for k, r in results.items()}
    winner = next(k for k, c in codes.items() if c == 0)
    loser = next(k for k, c in codes.items() if c == 1)
    # one clear line naming the table and the conflict
    errors = [line for line in results[loser][2].splitlines() if line.startswith("segspark:")]
    assert len(errors) == 1, results[loser][2][-2000:]
    match = re.match(rf"segspark: error: table '(\w+)': concurrent write: run {winner} committed", errors[0])
    assert match, errors[0]
    conflicted = match.group(1)

    runs = pa.table(DeltaTable(str(out / "tables" / "runs")).to_pyarrow_table()).to_pylist()
    status = {(r["run_id"], r["command"]): r["status"] for r in runs}
    assert status == {(winner, "ingest"): "succeeded", (loser, "ingest"): "failed"}
    failed = next(r for r in runs if r["run_id"] == loser)
    assert "concurrent" in failed["error"] and conflicted in failed["error"]

    # every table holds the winner's rows exactly as a run alone writes them; the loser's rows are
    # only in the append tables (its quarantine rows, written before the conflict) and never twice
    found = counts(out)
    runs_counts = found.pop("runs")
    assert sum(runs_counts.values()) == 2
    reference = {name: rows for name, rows in data["reference"].items() if name in INGESTED}
    assert set(found) == set(reference) == INGESTED
    for name, ref in reference.items():
        mine = Counter({k: n for k, n in found[name].items() if k[0] == winner})
        assert mine == renamed({name: ref}, "ref", winner)[name], name
        theirs = Counter({k: n for k, n in found[name].items() if k[0] == loser})
        if name in APPEND:
            assert theirs in (Counter(), renamed({name: ref}, "ref", loser)[name]), name
        else:
            assert not theirs, f"{name} holds rows of the failed run"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_a_run_killed_mid_write_then_retried_commits_every_table_once(
    data: dict[str, Any], engine: str
) -> None:
    out = data["root"] / f"killed-{engine}"
    victim = out / "tables" / "customer_state"
    proc = subprocess.Popen(
        _command("run", out, data["paths"], "--run-id", "k1", engine=engine),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        cwd=REPO,
        start_new_session=True,  # its own process group: the kill takes the JVM down with it
    )
    try:
        deadline = time.monotonic() + 600
        # Spark is writing customer_state's data files (in its staging folder), not yet committed
        while not any(".parquet" in p.name for p in victim.rglob("*") if p.is_file()):
            assert proc.poll() is None, "the run ended before its customer_state write was seen"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1)
    # partly written: data files in the table folder, no commit of them
    assert not has_commit(victim) or DeltaTable(str(victim)).version() == 0
    left_behind = [p for p in victim.rglob("*") if p.is_file()]
    assert left_behind
    committed = versions(out)
    assert {"quarantine", "orders", "customer_days"} <= set(committed)
    assert "runs" not in committed  # the killed attempt recorded nothing

    # the retry in-process (the suite's session): what it commits after the kill is the point, not its
    # process (the killed attempt and the concurrent runs are processes of their own)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEGSPARK_PSEUDO_KEY", _env()["SEGSPARK_PSEUDO_KEY"])
        assert main(_args("run", out, data["paths"], "--run-id", "k1", spark=False, engine=engine)) == 0
    # the tables committed before the kill were not written again
    after = versions(out)
    for name in ("quarantine", "orders", "customer_days"):
        assert after[name] == committed[name], name
    found = counts(out)
    runs = found.pop("runs")
    assert runs == Counter({("k1", "2025-12-31"): 1})
    assert found == renamed(data["reference"], "ref", "k1")

    # the killed write's files are invisible and harmless; vacuum removes them
    live = {Path(u.removeprefix("file://")).resolve() for u in DeltaTable(str(victim)).file_uris()}
    orphans = [p for p in left_behind if p.exists() and p.resolve() not in live]
    assert orphans
    # in-process (the suite's session): the vacuum's effect on the folder is the point, not its process
    forced = ("--force", "--set", "lakehouse.vacuum_retention_hours=0")
    assert main(_args("vacuum", out, data["paths"], *forced, spark=False, engine=engine)) == 0
    assert not any(p.exists() for p in orphans)
    assert not (victim / "_staging").exists()
    files = {p.resolve() for p in victim.rglob("*.parquet") if "_delta_log" not in p.parts}
    # only the latest version's files are left (the vacuum's compaction may have replaced them)
    assert files == {Path(u.removeprefix("file://")).resolve() for u in DeltaTable(str(victim)).file_uris()}
    found = counts(out)
    runs = found.pop("runs")
    assert sum(runs.values()) == 2 and runs[("k1", "2025-12-31")] == 1  # the retry, then the vacuum
    assert found == renamed(data["reference"], "ref", "k1")


@pytest.mark.slow
def test_a_retry_of_a_succeeded_run_commits_nothing_but_its_runs_row(data: dict[str, Any]) -> None:
    """Retrying a run that succeeded (same run id, same data and configuration) recomputes every stage
    and commits none of its tables again: only the attempt's lineage row is appended."""
    ref = data["ref"]
    before = versions(ref)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEGSPARK_PSEUDO_KEY", _env()["SEGSPARK_PSEUDO_KEY"])
        assert main(_args("run", ref, data["paths"], "--run-id", "ref", spark=False)) == 0
    after = versions(ref)
    assert after.keys() == before.keys()
    assert {k for k in after if after[k] != before[k]} == {"runs"}
    runs = pa.table(DeltaTable(str(ref / "tables" / "runs")).to_pyarrow_table()).to_pylist()
    assert [(r["run_id"], r["command"], r["status"]) for r in runs] == [("ref", "run", "succeeded")] * 2
    found = counts(ref)
    found.pop("runs")
    assert found == data["reference"]
