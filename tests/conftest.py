"""Shared fixtures: one session-scoped local SparkSession for the whole suite, and one reference
pipeline run (generated dirty data, the whole pipeline in its own process) that the end-to-end,
erasure and determinism tests read or copy instead of each running the pipeline again."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import s3_server

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SEGSPARK_PSEUDO_KEY", "test-key-not-secret")
# The S3 tests' object store (tests/s3_server.py) and its credentials. Spark's S3A connector reads them
# from its JVM's environment, which is fixed when the suite's session starts: they are set before it,
# in place of any real account's (no test may reach a real store), and no lookup of an instance role.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)
os.environ.update(
    AWS_ACCESS_KEY_ID=s3_server.ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY=s3_server.SECRET_KEY,
    AWS_REGION=s3_server.REGION,
    AWS_EC2_METADATA_DISABLED="true",
)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from segspark.config import SparkConfig
    from segspark.session import get_spark

    session = get_spark(
        SparkConfig(
            master="local[2]",
            shuffle_partitions=2,
            # not the job's machine-sized heap: CI runs the suite beside other work (1g ran out
            # late in the whole suite, analysing the generator's plan)
            driver_memory="2g",
            jit="quick",  # HotSpot's client compiler only: every run of the suite is a short one
            conf={
                "spark.default.parallelism": "2",
                "spark.sql.adaptive.coalescePartitions.enabled": "false",
            },
        ),
        owned=False,  # the CLI tests run in-process and must not stop the suite's session
        delta="require",  # Delta's Spark jars: both table engines are tested (.ci/run fetches them)
        s3a={},  # Hadoop's S3A connector, for tests/test_s3.py (its settings come with each job)
    )
    yield session
    session.stop()


def orders_of(lines):  # type: ignore[no-untyped-def]
    """The silver orders of some transaction lines, as the pipeline's silver stage builds them."""
    from segspark import silver
    from segspark.config import PurchaseConfig

    return silver.orders(lines, PurchaseConfig())


# ---- the shared reference run ------------------------------------------------------------------------
REFERENCE_CUSTOMERS = 600
REFERENCE_SEED = 11
REFERENCE_AS_OF = "2025-12-31"
REFERENCE_RUN_ID = "reference-run"
INPUTS = ("transactions", "customers", "events", "marketing_spend")
# The engine a local run gets by default (lakehouse.engine: auto loads no Delta jars in a local session):
# the end-to-end and determinism tests read its tables. Delta's own Spark engine runs the whole job in
# test_s3 (run, score, report, erase, vacuum on an object store) and here erases and vacuums a copy of
# these tables (test_erasure, both engines: tables one engine wrote, changed by the other). The reference
# run on delta-spark cost 491 s against 282 s on delta-rs (392 Spark jobs against 250: Delta's snapshot
# and file-filtering jobs on every read of a small table), on the critical path of the suite.
REFERENCE_ENGINE = "delta-rs"


@dataclass(frozen=True)
class ReferenceRun:
    """``segspark run`` (everything on: churn, clustering, report, MLflow) over generated dirty data."""

    out: Path  # a pristine copy of its output, taken when it ended: read it, or ``copy_output`` it
    live: Path  # the folder it wrote (its config's output.path): only test_end_to_end works there
    data: Path  # the generated input lakehouse (read only)
    cwd: Path  # the empty folder the run was started from
    key: str  # the pseudonymization key of the run
    log: Path  # its stdout and stderr

    def job_sets(self, out: Path) -> list[str]:
        """The run's ``--set`` arguments (without the Spark ones) for an output folder ``out``."""
        sets = [
            f"output.path={out}",
            f"lakehouse.engine={REFERENCE_ENGINE}",
            f"as_of_date={REFERENCE_AS_OF}",
            "quality.currency.rates={EUR: 1.08, GBP: 1.27}",
            "clustering.k_max=6",
            "report.min_segment_size=5",
            *[f"input.{name}.path={self.data / name}" for name in INPUTS],
        ]
        return [x for s in sets for x in ("--set", s)]

    def sets(self, out: Path) -> list[str]:
        """``job_sets`` plus the Spark settings of a job in its own process (as the reference ran)."""
        spark = ["spark.master=local[2]", "spark.shuffle_partitions=3", "spark.driver_memory=1g"]
        return [*self.job_sets(out), *[x for s in spark for x in ("--set", s)]]

    def env(self) -> dict[str, str]:
        return {**os.environ, "SEGSPARK_PSEUDO_KEY": self.key, "SPARK_LOCAL_IP": "127.0.0.1"}


@pytest.fixture(scope="session")
def reference_run(spark: object, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """One whole pipeline run for the suite (the slowest thing the suite does; once, not per module).
    ``out`` is a copy taken before any test runs a command in ``live``.

    The data is generated by the CLI in-process (the suite's session); the run is ``python -m segspark
    run`` in its own process started from an empty folder, as a user runs it."""
    from segspark.cli import main

    root = tmp_path_factory.mktemp("reference")
    data, cwd = root / "data", root / "cwd"
    cwd.mkdir()
    generate = ["generate", "--out", str(data), "--customers", str(REFERENCE_CUSTOMERS)]
    assert main([*generate, "--seed", str(REFERENCE_SEED), "--dirty"]) == 0
    ref = ReferenceRun(
        out=root / "pristine",
        live=root / "out",
        data=data,
        cwd=cwd,
        key=os.environ["SEGSPARK_PSEUDO_KEY"],
        log=root / "run.log",
    )
    with ref.log.open("w", encoding="utf-8") as log:
        code = subprocess.run(
            [sys.executable, "-m", "segspark", "run", "--run-id", REFERENCE_RUN_ID, *ref.sets(ref.live)],
            stdout=log,
            stderr=log,
            env=ref.env(),
            cwd=cwd,
            timeout=1500,
        ).returncode
    assert code == 0, ref.log.read_text(encoding="utf-8")[-3000:]
    # commands on a copy run with another output.path, so another configuration hash: the report
    # command's check that it builds with the run's own configuration needs the run's own folder
    copy_output(ref.live, ref.out)
    return ref


def copy_output(src: Path, dest: Path) -> Path:
    """A copy of a run's output folder that is a store of its own, for a test that changes it.

    The Delta tables hold relative paths; MLflow's SQLite store holds absolute artifact locations,
    rewritten here to the copy so that a command on the copy logs and reads there (never in ``src``)."""
    shutil.copytree(src, dest)
    db = dest / "mlflow.db"
    if db.is_file():
        con = sqlite3.connect(db)
        try:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                columns = [
                    r[1]
                    for r in con.execute(f"PRAGMA table_info('{table}')")
                    if any(t in str(r[2]).upper() for t in ("CHAR", "TEXT"))
                ]
                for col in columns:
                    con.execute(
                        f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE instr("{col}", ?) > 0',
                        (str(src), str(dest), str(src)),
                    )
            con.commit()
            con.execute("VACUUM")  # no page of the file keeps the old locations
        finally:
            con.close()
        assert str(src).encode() not in db.read_bytes()
    return dest


# ---- running the suite on several workers ------------------------------------------------------------
# The suite runs on two worker processes (pytest-xdist, ``-n 2`` in pyproject.toml): much of its time is
# one process waiting on a Spark job's latency or on a subprocess (spark-submit, a Connect server, a
# whole-job run), which the other worker fills. Each module goes to one worker, so its fixtures are built
# once; the modules that read the shared reference run go to one worker, so it runs once. (A scheduler of
# our own rather than ``--dist loadgroup``: with pytest 9, xdist's group suffix on the test ids is lost.)
REFERENCE_MODULES = frozenset({"test_determinism", "test_end_to_end", "test_erasure"})
# the slowest groups first (minutes each on 2 cores), so the workers start on them and end together
SLOWEST_FIRST = (
    "reference-run",
    "test_s3",
    "test_cluster_submit",
    "test_connect_server",
    "test_faults",
    "test_bad_inputs",
    "test_notebooks",
    "test_refresh_outputs",
    "test_lifecycle",
    "test_engine_features",
    "test_engine_contract",
)


def _group(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return "reference-run" if module in REFERENCE_MODULES else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {group: i for i, group in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))  # stable: file order otherwise


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):  # type: ignore[misc]
        """xdist's scope scheduling with a module (or the reference run's modules) as the scope."""

        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return ModuleGroups(config, log)
