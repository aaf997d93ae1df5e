"""Shared fixtures: one session-scoped local SparkSession for the whole suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SEGSPARK_PSEUDO_KEY", "test-key-not-secret")


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
            conf={
                "spark.default.parallelism": "2",
                "spark.sql.adaptive.coalescePartitions.enabled": "false",
            },
        ),
        owned=False,  # the CLI tests run in-process and must not stop the suite's session
    )
    yield session
    session.stop()


def orders_of(lines):  # type: ignore[no-untyped-def]
    """The silver orders of some transaction lines, as the pipeline's silver stage builds them."""
    from segspark import silver
    from segspark.config import PurchaseConfig

    return silver.orders(lines, PurchaseConfig())
