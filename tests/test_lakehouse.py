from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import tables
from segspark.config import Settings
from segspark.errors import ConfigError, InputError
from segspark.io import Lakehouse
from segspark.io.engine import ConcurrentWriteError

D1 = dt.date(2024, 1, 31)
D2 = dt.date(2024, 2, 29)
# the test tables: declared columns of customer_features (a snapshot table) include these
SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("monetary", T.DoubleType()),
        T.StructField("last_order_ts", T.TimestampType()),
        T.StructField("rfm_segment", T.StringType()),
    ]
)


def _lake(spark: SparkSession, tmp_path: Path) -> Lakehouse:
    return Lakehouse(
        spark,
        Settings.model_validate({"output": {"path": str(tmp_path)}, "lakehouse": {"engine": "delta-rs"}}),
    )


def _rows(spark: SparkSession, n: int, tag: str, table: str = "customer_features") -> DataFrame:
    """``n`` rows of ``table``'s declared schema (SCHEMA's columns set, the others null) and a null row."""
    data = [
        (f"{tag}{i}", float(i), dt.datetime(2024, 1, 1, 12, 0, i % 60), "x" * (40 if i == 0 else 3))
        for i in range(n)
    ]
    data.append((None, None, None, None))  # a null edge row
    declared = tables.SCHEMAS[table]
    given = spark.createDataFrame(data, SCHEMA)
    return given.select(
        *[
            (F.col(f.name) if f.name in SCHEMA.names else F.lit(None)).cast(f.dataType).alias(f.name)
            for f in declared.fields
        ]
    )


def test_round_trip_is_readable_by_spark_deltalake_polars_and_duckdb(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    res = lake.write(_rows(spark, 5, "a"), "customer_features", run_id="r1", as_of_date=D1)
    assert (res.version, res.rows, res.skipped) == (0, 6, False)
    path = lake.target("customer_features")

    back = lake.read_output("customer_features")
    assert back.count() == 6
    assert back.schema["last_order_ts"].dataType == T.TimestampType()
    assert back.schema["as_of_date"].dataType == T.DateType()
    assert {r.run_id for r in back.select("run_id").distinct().collect()} == {"r1"}
    assert back.where(F.col("customer_id").isNull()).count() == 1

    table = DeltaTable(path)
    assert table.protocol().min_reader_version == 1
    assert table.metadata().partition_columns == ["as_of_date"]
    assert table.to_pyarrow_table().num_rows == 6

    frame = pl.read_delta(path)
    assert frame.height == 6
    assert frame.schema["last_order_ts"] == pl.Datetime("us", "UTC")

    con = duckdb.connect()
    files = [f.replace("file://", "") for f in table.file_uris()]
    total = con.execute(f"SELECT count(*), sum(monetary) FROM read_parquet({files!r})").fetchone()
    assert total == (6, 10.0)


def test_add_actions_carry_footer_stats(spark: SparkSession, tmp_path: Path) -> None:
    lake = _lake(spark, tmp_path)
    lake.write(_rows(spark, 5, "a").coalesce(1), "customer_features", run_id="r1", as_of_date=D1)
    actions = pa.table(DeltaTable(lake.target("customer_features")).get_add_actions(flatten=True)).to_pydict()
    assert actions["num_records"] == [6]
    assert actions["null_count.customer_id"] == [1]
    assert actions["min.monetary"] == [0.0]
    assert actions["max.monetary"] == [4.0]
    assert actions["min.customer_id"] == ["a0"]
    # a string longer than 32 characters has no min/max rather than a wrongly truncated one
    assert actions["max.rfm_segment"] == [None]


def test_same_run_twice_adds_nothing(spark: SparkSession, tmp_path: Path) -> None:
    lake = _lake(spark, tmp_path)
    lake.write(_rows(spark, 3, "a"), "customer_features", run_id="r1", as_of_date=D1)
    again = lake.write(_rows(spark, 3, "a"), "customer_features", run_id="r1", as_of_date=D1)
    assert again.skipped
    assert DeltaTable(lake.target("customer_features")).version() == 0
    assert lake.read_output("customer_features").count() == 4
    lake.write(_rows(spark, 1, "q", "quarantine"), "quarantine", run_id="r1", as_of_date=D1)
    lake.write(_rows(spark, 1, "q", "quarantine"), "quarantine", run_id="r1", as_of_date=D1)
    assert lake.read_output("quarantine").count() == 2


def test_partition_replace_is_one_commit_and_leaves_other_dates(spark: SparkSession, tmp_path: Path) -> None:
    lake = _lake(spark, tmp_path)
    lake.write(_rows(spark, 3, "a", "customer_segments"), "customer_segments", run_id="r1", as_of_date=D1)
    lake.write(_rows(spark, 4, "b", "customer_segments"), "customer_segments", run_id="r2", as_of_date=D2)
    before = DeltaTable(lake.target("customer_segments")).version()
    lake.write(_rows(spark, 1, "c", "customer_segments"), "customer_segments", run_id="r3", as_of_date=D1)
    table = DeltaTable(lake.target("customer_segments"))
    assert table.version() == before + 1
    counts = {
        (r.as_of_date, r.run_id): r["count"]
        for r in lake.read_output("customer_segments").groupBy("as_of_date", "run_id").count().collect()
    }
    assert counts == {(D1, "r3"): 2, (D2, "r2"): 5}
    # time travel still sees the replaced partition
    old = lake.read_output("customer_segments", version=before)
    assert old.where(F.col("run_id") == "r1").count() == 4


def test_crash_before_commit_leaves_table_unchanged_and_rerun_succeeds(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    lake.write(_rows(spark, 3, "a", "customer_segments"), "customer_segments", run_id="r1", as_of_date=D1)

    def crash() -> None:
        raise RuntimeError("simulated crash between data files and commit")

    with pytest.raises(RuntimeError, match="simulated crash"):
        lake.write(
            _rows(spark, 7, "b", "customer_segments"),
            "customer_segments",
            run_id="r2",
            as_of_date=D1,
            before_commit=crash,
        )
    path = Path(lake.target("customer_segments"))
    assert DeltaTable(str(path)).version() == 0
    assert lake.read_output("customer_segments").count() == 4
    live = {u.replace("file://", "") for u in DeltaTable(str(path)).file_uris()}
    orphans = [p for p in path.rglob("*.parquet") if str(p) not in live]
    assert orphans, "the crashed write should have left uncommitted files behind"

    res = lake.write(
        _rows(spark, 7, "b", "customer_segments"), "customer_segments", run_id="r2", as_of_date=D1
    )
    assert res.version == 1
    assert lake.read_output("customer_segments").count() == 8

    # vacuum removes the crashed write's files and the replaced ones
    lake.settings.lakehouse.vacuum_retention_hours = 0
    removed = lake.vacuum("customer_segments", force=True)
    assert {Path(p).name for p in removed} >= {p.name for p in orphans}
    assert lake.read_output("customer_segments").count() == 8


def _pinned(spark: SparkSession, tmp_path: Path) -> Lakehouse:
    lake = _lake(spark, tmp_path)
    lake.pin_versions()  # what open_context does when a run starts
    return lake


def test_an_overwrite_after_another_runs_commit_is_a_conflict_and_commits_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    name = "customer_segments"
    _lake(spark, tmp_path).write(_rows(spark, 2, "old", name), name, run_id="r0", as_of_date=D1)
    first, second = _pinned(spark, tmp_path), _pinned(spark, tmp_path)  # two runs start together
    first.write(_rows(spark, 3, "a", name), name, run_id="rA", as_of_date=D1)
    files_before = sorted(p.name for p in Path(first.target(name)).rglob("*.parquet"))
    with pytest.raises(ConcurrentWriteError, match=r"table 'customer_segments': concurrent write: run rA"):
        second.write(_rows(spark, 5, "b", name), name, run_id="rB", as_of_date=D1)
    assert DeltaTable(first.target(name)).version() == 1
    counts = first.read_output(name).groupBy("run_id").count().collect()
    assert {r["run_id"]: r["count"] for r in counts} == {"rA": 4}  # the winner's rows, whole, once
    # the loser's data files were discarded, not left for vacuum
    assert sorted(p.name for p in Path(first.target(name)).rglob("*.parquet")) == files_before
    # the same run retried (an earlier attempt committed) and another date do not conflict
    second.write(_rows(spark, 1, "c", name), name, run_id="rB", as_of_date=D2)
    assert first.write(_rows(spark, 3, "a", name), name, run_id="rA", as_of_date=D1).skipped
    # appends never conflict: their rows are keyed by run
    second.write(_rows(spark, 1, "q", "quarantine"), "quarantine", run_id="rB", as_of_date=D1)
    first.write(_rows(spark, 1, "q", "quarantine"), "quarantine", run_id="rA", as_of_date=D1)
    assert first.read_output("quarantine").count() == 4
    # a run started after the winner committed replaces the partition normally
    later = _pinned(spark, tmp_path)
    assert later.write(_rows(spark, 1, "d", name), name, run_id="rC", as_of_date=D1).version == 3
    counts = later.read_output(name).groupBy("run_id").count().collect()
    assert {r["run_id"]: r["count"] for r in counts} == {"rC": 2, "rB": 2}


def test_a_silver_overwrite_after_another_runs_commit_is_a_conflict(
    spark: SparkSession, tmp_path: Path
) -> None:
    orders = spark.createDataFrame([], tables.SCHEMAS["orders"])
    first, second = _pinned(spark, tmp_path), _pinned(spark, tmp_path)
    first.write(orders, "orders", run_id="rA", as_of_date=D1)  # creates the table
    with pytest.raises(ConcurrentWriteError, match="table 'orders': concurrent write"):
        second.write(orders, "orders", run_id="rB", as_of_date=D1)
    assert DeltaTable(first.target("orders")).version() == 0
    # a write of a run that did not pin (a test, ``generate``) is not checked
    assert _lake(spark, tmp_path).write(orders, "orders", run_id="rB", as_of_date=D1).version == 1


def test_a_merge_after_another_runs_commit_is_a_conflict_and_commits_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    name, keys = "orders", ["customer_id"]
    _lake(spark, tmp_path).write(_rows(spark, 2, "a", name), name, run_id="r0", as_of_date=D1)
    first, second = _pinned(spark, tmp_path), _pinned(spark, tmp_path)  # two runs start together
    assert first.merge(_rows(spark, 1, "a", name), name, keys, run_id="rA", as_of_date=D1).updated == 1
    with pytest.raises(
        ConcurrentWriteError, match=r"table 'orders': concurrent write: run rA committed version 1"
    ):
        second.merge(_rows(spark, 1, "b", name), name, keys, run_id="rB", as_of_date=D1)
    root = Path(first.target(name))
    assert DeltaTable(str(root)).version() == 1
    assert not (root / "_staging").exists()  # the refused MERGE's staged source is gone
    counts = first.read_output(name).groupBy("run_id").count().collect()
    assert {r["run_id"]: r["count"] for r in counts} == {"r0": 2, "rA": 2}  # a0 updated, a null added
    # the same run retried merges nothing; a run started after the winner merges normally
    assert first.merge(_rows(spark, 1, "a", name), name, keys, run_id="rA", as_of_date=D1).skipped
    later = _pinned(spark, tmp_path).merge(_rows(spark, 1, "b", name), name, keys, run_id="rC", as_of_date=D1)
    assert (later.version, later.inserted) == (2, 2)


def test_a_compaction_during_a_run_does_not_make_its_writes_conflict(
    spark: SparkSession, tmp_path: Path
) -> None:
    name = "customer_segments"
    _lake(spark, tmp_path).write(_rows(spark, 5, "a", name).repartition(3), name, run_id="r0", as_of_date=D1)
    run = _pinned(spark, tmp_path)  # a run starts
    vacuum = _lake(spark, tmp_path)
    vacuum.settings.lakehouse.compact_min_files = 3  # the partition's 3 files are worth compacting
    done = vacuum.compact(name)  # a vacuum compacts meanwhile
    assert done is not None and (done.files_before, done.files_after) == (3, 1)
    assert run.write(_rows(spark, 1, "b", name), name, run_id="rB", as_of_date=D1).version == 2
    counts = run.read_output(name).groupBy("run_id").count().collect()
    assert {r["run_id"]: r["count"] for r in counts} == {"rB": 2}  # the compacted files were replaced


def test_vacuum_refuses_a_retention_under_the_safety_minimum_unless_forced(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    name = "customer_segments"
    lake.write(_rows(spark, 2, "a", name), name, run_id="r1", as_of_date=D1)
    lake.write(_rows(spark, 2, "b", name), name, run_id="r2", as_of_date=D1)
    lake.settings.lakehouse.vacuum_retention_hours = 167
    with pytest.raises(ConfigError, match=r"below Delta's safety minimum of 168 h.*--force"):
        lake.vacuum(name)
    lake.settings.lakehouse.vacuum_retention_hours = 168
    assert lake.vacuum(name) == []  # the replaced files are younger than a week
    # a killed write's staging folder (Spark was still writing) and an uncommitted moved file
    root = Path(lake.target(name))
    staged = root / "_staging" / "deadbeef" / "as_of_date=2024-01-31" / "part-0.parquet"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"PAR1")
    orphan = root / "as_of_date=2024-01-31" / "part-00000-deadbeef.parquet"
    orphan.write_bytes(b"PAR1")
    lake.settings.lakehouse.vacuum_retention_hours = 0
    removed = {Path(p).name for p in lake.vacuum(name, force=True)}
    assert {"part-0.parquet", orphan.name} <= removed
    assert not (root / "_staging").exists() and not orphan.exists()
    live = {Path(u.removeprefix("file://")).resolve() for u in DeltaTable(str(root)).file_uris()}
    data_files = {p.resolve() for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}
    assert data_files == live  # only the latest version's files
    # the log entries before the new checkpoint are expired too (an erase's DELETE names its keys)
    latest = DeltaTable(str(root)).version()
    assert [p.name for p in (root / "_delta_log").glob("*.json")] == [f"{latest:020d}.json"]
    assert DeltaTable(str(root)).metadata().configuration["delta.logRetentionDuration"] == "interval 0 hours"
    assert lake.read_output(name).count() == 3


def test_empty_dataframe_creates_a_table_with_its_schema(spark: SparkSession, tmp_path: Path) -> None:
    lake = _lake(spark, tmp_path)
    res = lake.write(spark.createDataFrame([], tables.SCHEMAS["drift"]), "drift", run_id="r1", as_of_date=D1)
    assert res.rows == 0
    back = lake.read_output("drift")
    assert back.count() == 0
    assert "psi" in back.columns


def test_inputs_in_parquet_csv_and_delta_with_version(spark: SparkSession, tmp_path: Path) -> None:
    pq_path = tmp_path / "tx_parquet"
    _rows(spark, 3, "p").write.parquet(str(pq_path))
    csv_path = tmp_path / "tx.csv"
    csv_path.write_text("customer_id,amount\nc1,1.5\nc2,oops\n")
    delta_path = tmp_path / "tx_delta"
    write_deltalake(str(delta_path), pl.DataFrame({"customer_id": ["d1"], "amount": [1.0]}).to_arrow())
    write_deltalake(
        str(delta_path), pl.DataFrame({"customer_id": ["d2"], "amount": [2.0]}).to_arrow(), mode="append"
    )
    base = {"output": {"path": str(tmp_path / "out")}, "lakehouse": {"engine": "delta-rs"}}
    for fmt, path, version, expected in [
        ("parquet", pq_path, None, 4),
        ("csv", csv_path, None, 2),
        ("delta", delta_path, 0, 1),
        ("delta", delta_path, None, 2),
    ]:
        cfg = Settings.model_validate(
            {**base, "input": {"transactions": {"path": str(path), "format": fmt, "version": version}}}
        )
        lake = Lakehouse(spark, cfg)
        df, info = lake.read_input("transactions")
        assert df.count() == expected, (fmt, version)
        # the run's shuffle partitions are sized from a Delta input's log: the rows of the version read
        logged = lake.logged_input_rows("transactions", info.version)
        assert logged == (expected if fmt == "delta" else None), (fmt, version)
        if fmt == "csv":
            assert dict(df.dtypes)["amount"] == "string"  # cast later by ingest with try_cast
        if fmt == "delta":
            assert info.version == (0 if version == 0 else 1)
    # a commit without the optional statistic: not known from the log (counted instead)
    commit = delta_path / "_delta_log" / f"{1:020d}.json"
    actions = [json.loads(line) for line in commit.read_text().splitlines()]
    for action in actions:
        action.get("add", {}).pop("stats", None)
    commit.write_text("".join(json.dumps(a) + "\n" for a in actions))
    cfg = Settings.model_validate(
        {**base, "input": {"transactions": {"path": str(delta_path), "format": "delta"}}}
    )
    assert Lakehouse(spark, cfg).logged_input_rows("transactions", 1) is None
    assert Lakehouse(spark, cfg).logged_input_rows("transactions", 0) == 1


def test_missing_input_and_unsupported_features_are_clear_errors(spark: SparkSession, tmp_path: Path) -> None:
    base = {"output": {"path": str(tmp_path / "out")}, "lakehouse": {"engine": "delta-rs"}}
    cfg = Settings.model_validate({**base, "input": {"transactions": {"path": str(tmp_path / "missing")}}})
    with pytest.raises(InputError, match=r"input 'transactions': no table at .*missing"):
        Lakehouse(spark, cfg).read_input("transactions")
    with pytest.raises(InputError, match="input 'transactions' is not configured"):
        Lakehouse(spark, Settings.model_validate(base)).read_input("transactions")

    dv = tmp_path / "dv"
    write_deltalake(
        str(dv),
        pl.DataFrame({"customer_id": ["a"]}).to_arrow(),
        configuration={"delta.enableDeletionVectors": "true"},
    )
    assert "deletionVectors" in (DeltaTable(str(dv)).protocol().reader_features or [])
    cfg = Settings.model_validate({**base, "input": {"transactions": {"path": str(dv)}}})
    with pytest.raises(
        InputError, match=r"table 'transactions' uses deletion vectors.*lakehouse\.engine=delta-spark"
    ):
        Lakehouse(spark, cfg).read_input("transactions")


def test_an_append_to_a_table_from_before_an_optional_column_keeps_its_schema(
    spark: SparkSession, tmp_path: Path
) -> None:
    """``runs.choices`` came later: a runs table written without it takes new rows without it (the
    table's schema holds; delta-rs alone would drop the column silently), a new table has it."""
    row = (
        "run",
        "succeeded",
        None,
        dt.datetime(2026, 1, 1),
        dt.datetime(2026, 1, 1),
        1.0,
        "h",
        "v",
        "delta-rs",
    )
    full = spark.createDataFrame(
        [(*row, None, [], [], {"stage_ingest": 1.0}, [], {"spark.shuffle_partitions": "8"})],
        tables.RUNS_SCHEMA,
    )
    old_lake, new_lake = _lake(spark, tmp_path / "old"), _lake(spark, tmp_path / "new")
    old_lake.write(full.drop("choices"), "runs", run_id="r0", as_of_date=dt.date(2026, 1, 1))
    old_lake.write(full, "runs", run_id="r1", as_of_date=dt.date(2026, 1, 2))
    old = DeltaTable(str(tmp_path / "old" / "tables" / "runs"))
    assert "choices" not in old.schema().to_arrow().names
    assert sorted(old.to_pyarrow_table(columns=["run_id"]).column(0).to_pylist()) == ["r0", "r1"]
    # what was written matches the table: no data file carries a column its schema does not know
    names = set(old.schema().to_arrow().names)
    for uri in old.file_uris():
        assert set(pq.read_schema(uri.removeprefix("file://")).names) <= names, uri
    new_lake.write(full, "runs", run_id="r1", as_of_date=dt.date(2026, 1, 2))
    (got,) = DeltaTable(str(tmp_path / "new" / "tables" / "runs")).to_pyarrow_table().to_pylist()
    assert dict(got["choices"]) == {"spark.shuffle_partitions": "8"}
