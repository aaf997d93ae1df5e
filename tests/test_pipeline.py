"""The declared stage list is the wiring: a stage touches exactly what ``PIPELINE`` names.

The runner hands each stage a ``StageIO``; a read or write the declaration does not name raises
``WiringError`` (here on a real session and lakehouse). The list itself is checked for order: every
table a stage reads is written by an earlier stage, every declared write is a table of the output
contract, and every command's selection is a part of the list in its order.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from segspark import pipeline, tables
from segspark import schema as S
from segspark.config import load_settings
from segspark.context import open_context
from segspark.pipeline import PIPELINE, SELECTIONS, Stage, StageIO, WiringError


def _ctx(spark: SparkSession, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(
        [], [f"output.path={tmp_path}", "lakehouse.engine=delta-rs", "tracking.enabled=false"]
    )
    ctx = open_context(settings, "run", spark=spark)
    ctx.as_of_date = dt.date(2025, 12, 31)
    return ctx


def test_an_undeclared_read_or_write_fails_loudly(spark: SparkSession, tmp_path: Path) -> None:
    ctx = _ctx(spark, tmp_path)
    frame = spark.createDataFrame([("c1", 1.0)], "customer_id string, value double")

    def body(io: StageIO) -> None:
        io.read(S.ORDERS)  # not among its reads

    stage = Stage("probe", reads=(S.CUSTOMER_FEATURES,), writes=(S.RFM_GRID,), run=body)
    with pytest.raises(WiringError, match=r"stage 'probe' reads 'orders'.*PIPELINE"):
        pipeline.run_stage(ctx, stage)

    io = StageIO(ctx, stage)
    with pytest.raises(WiringError, match="stage 'probe' writes 'customer_segments'"):
        io.write(frame, S.CUSTOMER_SEGMENTS)
    with pytest.raises(WiringError, match="reads 'clean:customers'"):
        io.clean("customers")
    with pytest.raises(WiringError, match="reads 'previous:cluster_profiles'"):
        io.previous(S.CLUSTER_PROFILES)
    with pytest.raises(WiringError, match="reads 'input:transactions'"):
        io.input("transactions")
    with pytest.raises(WiringError, match="reads 'runs'"):
        io.run_rows(S.RUNS)
    assert not (tmp_path / "tables" / S.CUSTOMER_SEGMENTS).exists()  # nothing was written


def test_a_stage_may_read_back_what_it_wrote(spark: SparkSession, tmp_path: Path) -> None:
    ctx = _ctx(spark, tmp_path)
    grid = spark.createDataFrame([], tables.SCHEMAS[S.RFM_GRID])
    io = StageIO(ctx, Stage("probe", reads=(), writes=(S.RFM_GRID,), run=lambda io: None))
    with pytest.raises(WiringError):
        io.read(S.RFM_GRID)  # not declared as a read, not written yet
    io.write(grid, S.RFM_GRID)
    assert io.read(S.RFM_GRID).count() == 0
    assert ctx.outputs[S.RFM_GRID] == 0


def test_every_read_is_written_earlier_and_every_write_is_a_contract_table() -> None:
    written: set[str] = set()
    for stage in PIPELINE:
        for name in stage.reads:
            kind, _, table = name.rpartition(":")
            if kind == "input":
                continue
            if kind in ("previous", "earlier"):  # an earlier run's table (a snapshot, or as left)
                assert table in tables.SCHEMAS, (stage.name, name)
                continue
            if name in (S.RUNS, S.QUARANTINE) and stage.own_runs_row:  # this run's rows, recorded before it
                continue
            assert name in written, f"stage '{stage.name}' reads '{name}' before any stage writes it"
        for name in stage.writes:
            assert name.startswith("clean:") or name in tables.SCHEMAS, (stage.name, name)
        written.update(stage.writes)
    # every output table but the run's own record and the erasures (``segspark erase`` writes them,
    # ingest reads them) comes out of exactly one stage
    producers = [name for stage in PIPELINE for name in stage.writes if not name.startswith("clean:")]
    assert len(producers) == len(set(producers))
    assert set(tables.SCHEMAS) - set(producers) == {S.RUNS, S.ERASURES}


def test_every_command_runs_a_part_of_the_list_in_its_order() -> None:
    order = [s.name for s in PIPELINE]
    for command, names in SELECTIONS.items():
        positions = [order.index(n) for n in names]
        assert positions == sorted(positions), command
        assert [s.name for s in pipeline.select(command)] == list(names)
    assert SELECTIONS["run"] == tuple(order) and order[-1] == "report"
    with pytest.raises(ValueError, match="vacuum"):
        pipeline.select("vacuum")  # not a pipeline command


def test_profiles_take_the_declared_schema_and_their_pattern_columns(spark: SparkSession) -> None:
    import pandas as pd

    from segspark.context import declared_frame

    pdf = pd.DataFrame(
        {
            S.CLUSTER_ID: [0, 1],
            S.PERSONA: ["Recent big spenders", None],
            S.PERSONA_DESCRIPTION: ["a", "b"],
            S.PROFILE_SIZE: [10, 5],
            S.PROFILE_SHARE: [2 / 3, 1 / 3],
            "recency_days": [3, 40],  # whole numbers, as JSON gives a logged profile back
            "median_recency_days": [3.0, float("nan")],
        }
    )
    frame = declared_frame(spark, pdf, S.CLUSTER_PROFILES)
    types = {f.name: f.dataType.typeName() for f in frame.schema.fields}
    assert types[S.CLUSTER_ID] == "long" and types["recency_days"] == types["median_recency_days"] == "double"
    assert [r["median_recency_days"] for r in frame.orderBy(S.CLUSTER_ID).collect()] == [3.0, None]
    with pytest.raises(tables.SchemaMismatch, match="not_a_feature"):
        declared_frame(spark, pdf.assign(not_a_feature=1), S.CLUSTER_PROFILES)
