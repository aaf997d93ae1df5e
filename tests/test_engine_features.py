"""The engine contract, continued: MERGE, the change data feed setting and compaction, each on delta-rs
and on delta-spark (``tests/test_engine_contract.py`` holds the reads and writes).

Tables are read back with both engines' own readers where it matters: a change feed written by one
engine is read by Delta Spark (``readChangeFeed``) and by delta-rs (``load_cdf``), and the protocol
each setting leaves is read from the Delta log.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segspark import maintenance, tables
from segspark import schema as S
from segspark.config import Settings
from segspark.context import open_context
from segspark.errors import InputError
from segspark.io import Lakehouse, make_engine
from segspark.tables import SchemaMismatch
from tests.test_engine_contract import _delta_spark_missing, _local, rows_for

D1 = dt.date(2024, 1, 31)
D2 = dt.date(2024, 2, 29)
KEYS = [S.CUSTOMER_ID, S.ORDER_ID]
CDF = "delta.enableChangeDataFeed"


def _settings(path: Path, engine: str, **lakehouse: Any) -> Settings:
    return Settings.model_validate(
        {
            "output": {"path": str(path)},
            "lakehouse": {"engine": engine, **lakehouse},
            "tracking": {"enabled": False},
        }
    )


@pytest.fixture(params=["delta-rs", "delta-spark"])
def engine(request: pytest.FixtureRequest, spark: SparkSession) -> str:
    name: str = request.param
    if name == "delta-spark":
        reason = _delta_spark_missing(spark)
        if reason:
            pytest.fail(reason)  # the suite's session loads Delta's jars: both engines must run here
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    return name


def _orders(spark: SparkSession, rows: list[tuple[str | None, str | None, float]], **extra: Any) -> DataFrame:
    """Orders of the declared schema with the given keys and net amounts (the other columns null)."""
    given = spark.createDataFrame(rows, "customer_id string, order_id string, net_amount double")
    return given.select(
        *[
            (F.col(f.name) if f.name in given.columns else F.lit(None)).cast(f.dataType).alias(f.name)
            for f in tables.ORDERS_SCHEMA.fields
        ],
        *[F.lit(v).alias(k) for k, v in extra.items()],
    )


def _content(lake: Lakehouse) -> dict[tuple[Any, Any], tuple[float, str]]:
    rows = lake.read_output(S.ORDERS).select(*KEYS, S.NET_AMOUNT, S.RUN_ID).collect()  # a handful of rows
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


BASE = [("c1", "o1", 1.0), ("c2", "o2", 2.0), ("c3", "o3", 3.0)]
UPSERT = [("c2", "o2", 20.0), ("c4", "o4", 4.0), (None, "o9", 9.0)]  # one update, two inserts
AFTER_UPSERT = {
    ("c1", "o1"): (1.0, "r1"),
    ("c2", "o2"): (20.0, "r2"),
    ("c3", "o3"): (3.0, "r1"),
    ("c4", "o4"): (4.0, "r2"),
    (None, "o9"): (9.0, "r2"),  # a null key never matches: inserted, as SQL MERGE does
}


# ---- MERGE ----------------------------------------------------------------------------------------
def test_merge_updates_and_inserts_in_one_commit_and_a_retry_merges_nothing(
    spark: SparkSession, engine: str, tmp_path: Path
) -> None:
    lake = Lakehouse(spark, _settings(tmp_path, engine))
    lake.write(_orders(spark, BASE), S.ORDERS, run_id="r1", as_of_date=D1)
    res = lake.merge(_orders(spark, UPSERT), S.ORDERS, KEYS, run_id="r2", as_of_date=D2)
    assert (res.version, res.skipped) == (1, False)
    assert (res.inserted, res.updated, res.deleted) == (2, 1, 0)
    assert res.files >= 1
    assert _content(lake) == AFTER_UPSERT
    history = lake.history(S.ORDERS)
    assert [c.version for c in history] == [1, 0]
    assert history[0].operation.upper() == "MERGE"
    # the same run again: nothing merged, nothing committed
    again = lake.merge(_orders(spark, [("c1", "o1", 100.0)]), S.ORDERS, KEYS, run_id="r2", as_of_date=D2)
    assert (again.version, again.skipped, again.inserted, again.updated) == (None, True, 0, 0)
    assert len(lake.history(S.ORDERS)) == 2
    assert _content(lake) == AFTER_UPSERT
    # a later attempt of the same run (a higher txn version) does merge
    later = lake.merge(
        _orders(spark, [("c1", "o1", 100.0)]), S.ORDERS, KEYS, run_id="r2", as_of_date=D2, txn_version=1
    )
    assert (later.version, later.updated, later.inserted) == (2, 1, 0)
    assert _content(lake)[("c1", "o1")] == (100.0, "r2")


def test_merge_with_a_delete_column_and_into_a_missing_table(
    spark: SparkSession, engine: str, tmp_path: Path
) -> None:
    lake = Lakehouse(spark, _settings(tmp_path, engine))
    # no table yet: the rows not flagged are its first commit
    first = lake.merge(
        _orders(spark, BASE).withColumn("gone", F.col(S.ORDER_ID) == "o3"),
        S.ORDERS,
        KEYS,
        run_id="r1",
        as_of_date=D1,
        delete_column="gone",
    )
    assert (first.version, first.inserted) == (0, 2)
    assert set(_content(lake)) == {("c1", "o1"), ("c2", "o2")}
    flagged = _orders(spark, [("c1", "o1", 0.0), ("c2", "o2", 22.0), ("c5", "o5", 5.0), ("c6", "o6", 6.0)])
    gone = F.when(F.col(S.ORDER_ID).isin("o1", "o5"), True).when(F.col(S.ORDER_ID) == "o2", False)
    res = lake.merge(
        flagged.withColumn("gone", gone), S.ORDERS, KEYS, run_id="r2", as_of_date=D2, delete_column="gone"
    )
    # o1 deleted, o2 updated (flag false), o5 flagged without a match: dropped, o6 (flag null) inserted
    assert (res.deleted, res.updated, res.inserted) == (1, 1, 1)
    assert _content(lake) == {("c2", "o2"): (22.0, "r2"), ("c6", "o6"): (6.0, "r2")}
    assert "gone" not in lake.read_output(S.ORDERS).columns


def test_merge_refuses_a_source_that_does_not_match_the_table(
    spark: SparkSession, engine: str, tmp_path: Path
) -> None:
    lake = Lakehouse(spark, _settings(tmp_path, engine))
    lake.write(_orders(spark, BASE), S.ORDERS, run_id="r1", as_of_date=D1)
    stamped = lake.read_output(S.ORDERS)  # the table's own columns, run_id and as_of_date included
    table = make_engine(spark, engine)  # type: ignore[arg-type]
    target = lake.target(S.ORDERS)
    cases = {
        "column 'net_amount' has type string in the MERGE source, double in the table": stamped.withColumn(
            S.NET_AMOUNT, F.col(S.NET_AMOUNT).cast("string")
        ),
        "column 'channel' is missing from the MERGE source": stamped.drop(S.CHANNEL),
        "column 'extra' of the MERGE source is not in the table": stamped.withColumn("extra", F.lit(1)),
        "MERGE key 'nope' is not a column of the table": stamped,
    }
    for message, frame in cases.items():
        keys = ["nope"] if "nope" in message else KEYS
        with pytest.raises(SchemaMismatch, match=f"^table 'orders': {message}$"):
            table.merge(frame, target, keys, app_id="segspark-r2", txn_version=0)
    # through the lakehouse, the declared schema is checked first
    with pytest.raises(SchemaMismatch, match="table 'orders': column 'net_amount' has type string, declared"):
        lake.merge(
            _orders(spark, UPSERT).withColumn(S.NET_AMOUNT, F.lit("1")),
            S.ORDERS,
            KEYS,
            run_id="r2",
            as_of_date=D2,
        )
    assert [c.version for c in lake.history(S.ORDERS)] == [0]  # refused before anything was committed


@pytest.mark.parametrize("first", ["delta-rs", "delta-spark"])
def test_one_engine_merges_into_the_others_table_and_readers_follow(
    spark: SparkSession, tmp_path: Path, first: str
) -> None:
    import duckdb
    import polars as pl

    reason = _delta_spark_missing(spark)
    if reason:
        pytest.fail(reason)
    second = "delta-spark" if first == "delta-rs" else "delta-rs"
    a, b = (Lakehouse(spark, _settings(tmp_path, e)) for e in (first, second))
    a.write(_orders(spark, BASE), S.ORDERS, run_id="r1", as_of_date=D1)
    res = b.merge(_orders(spark, UPSERT), S.ORDERS, KEYS, run_id="r2", as_of_date=D2)
    assert (res.inserted, res.updated) == (2, 1)
    back = a.merge(_orders(spark, [("c4", "o4", 40.0)]), S.ORDERS, KEYS, run_id="r3", as_of_date=D2)
    assert (back.inserted, back.updated, back.version) == (0, 1, 2)
    expected = {**AFTER_UPSERT, ("c4", "o4"): (40.0, "r3")}
    assert _content(a) == _content(b) == expected
    target = a.target(S.ORDERS)
    table = DeltaTable(target)
    assert (table.protocol().min_reader_version, table.protocol().min_writer_version) == (1, 2)
    assert table.to_pyarrow_table().num_rows == 5
    assert pl.read_delta(target).filter(pl.col("order_id") == "o4")["net_amount"].to_list() == [40.0]
    files = [str(_local(f)) for f in table.file_uris()]
    assert duckdb.connect().execute(f"SELECT sum(net_amount) FROM read_parquet({files!r})").fetchone() == (
        1.0 + 20.0 + 3.0 + 40.0 + 9.0,
    )


# ---- change data feed -------------------------------------------------------------------------------
# what turning the feed on leaves: delta-rs the legacy writer 4, Delta Spark writer 7 with table features
FEED_PROTOCOL = {
    "delta-rs": (1, 4, ()),
    "delta-spark": (1, 7, ("appendOnly", "changeDataFeed", "invariants")),
}


def _protocol(target: str) -> tuple[int, int, tuple[str, ...]]:
    p = DeltaTable(target).protocol()
    return p.min_reader_version, p.min_writer_version, tuple(sorted(p.writer_features or []))


def _changes_by_spark(spark: SparkSession, target: str, version: int) -> set[tuple[Any, ...]]:
    feed = spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", version)
    rows = feed.load(target).select(S.ORDER_ID, S.NET_AMOUNT, "_change_type", "_commit_version").collect()
    return {tuple(r) for r in rows}


def _changes_by_delta_rs(
    target: str, version: int, columns: tuple[str, ...] = (S.ORDER_ID, S.NET_AMOUNT)
) -> list[tuple[Any, ...]]:
    wanted = [*columns, "_change_type", "_commit_version"]
    feed = pa.table(DeltaTable(target).load_cdf(starting_version=version, columns=wanted))
    return [tuple(r.values()) for r in feed.select(wanted).to_pylist()]


def test_change_data_feed_setting_records_a_merges_changes_for_both_readers(
    spark: SparkSession, engine: str, tmp_path: Path
) -> None:
    lake = Lakehouse(spark, _settings(tmp_path, engine, change_data_feed=True))
    lake.write(_orders(spark, BASE), S.ORDERS, run_id="r1", as_of_date=D1)
    target = lake.target(S.ORDERS)
    assert DeltaTable(target).metadata().configuration[CDF] == "true"
    res = lake.merge(_orders(spark, UPSERT), S.ORDERS, KEYS, run_id="r2", as_of_date=D2)
    assert res.version is not None
    expected = {
        ("o2", 2.0, "update_preimage", res.version),
        ("o2", 20.0, "update_postimage", res.version),
        ("o4", 4.0, "insert", res.version),
        ("o9", 9.0, "insert", res.version),
    }
    assert _changes_by_spark(spark, target, res.version) == expected
    assert sorted(_changes_by_delta_rs(target, res.version)) == sorted(expected)
    # the table's first data commit is in the feed too (created empty with the property)
    assert {c[2] for c in _changes_by_delta_rs(target, 0) if c[3] < res.version} == {"insert"}
    on = _protocol(target)
    # reader 1, no reader feature: delta-rs, Polars, DuckDB and Power BI read it as before
    assert on == FEED_PROTOCOL[engine]
    # the other engine merges into the table this one raised, and its changes are in the feed too
    other = "delta-spark" if engine == "delta-rs" else "delta-rs"
    more = Lakehouse(spark, _settings(tmp_path, other, change_data_feed=True))
    res = more.merge(_orders(spark, [("c4", "o4", 44.0)]), S.ORDERS, KEYS, run_id="r3", as_of_date=D2)
    assert res.version is not None
    later = {("o4", 4.0, "update_preimage", res.version), ("o4", 44.0, "update_postimage", res.version)}
    assert _changes_by_spark(spark, target, res.version) == later
    assert sorted(_changes_by_delta_rs(target, res.version)) == sorted(later)
    if engine == "delta-rs":
        # delta-rs declares the array's elements non-null, Delta Spark writes them nullable: delta-rs's
        # feed reader refuses that column of Delta Spark's change files (projected away above; README)
        with pytest.raises(Exception, match="Cannot cast nullable struct field 'element' to non-nullable"):
            pa.table(DeltaTable(target).load_cdf(starting_version=res.version))
    # the setting off: the property goes off in one commit on the next write; the protocol stays
    off = Lakehouse(spark, _settings(tmp_path, engine))
    before = len(off.history(S.ORDERS))
    off.write(_orders(spark, BASE), S.ORDERS, run_id="r4", as_of_date=D2)
    assert DeltaTable(target).metadata().configuration[CDF] == "false"
    assert len(off.history(S.ORDERS)) == before + 2
    assert _protocol(target) == on


def test_change_data_feed_turned_on_for_an_existing_table(
    spark: SparkSession, engine: str, tmp_path: Path
) -> None:
    name = S.CUSTOMER_SEGMENTS
    Lakehouse(spark, _settings(tmp_path, engine)).write(
        rows_for(spark, name, 2, "a"), name, run_id="r1", as_of_date=D1
    )
    assert _protocol(str(tmp_path / "tables" / name))[:2] == (1, 2)
    lake = Lakehouse(spark, _settings(tmp_path, engine, change_data_feed=True))
    lake.write(rows_for(spark, name, 1, "b"), name, run_id="r2", as_of_date=D1)  # replaces D1
    target = lake.target(name)
    assert DeltaTable(target).metadata().configuration[CDF] == "true"
    assert _protocol(target) == FEED_PROTOCOL[engine]
    assert [c.version for c in lake.history(name)] == [2, 1, 0]  # the property commit, then the data
    changes = _changes_by_delta_rs(target, 2, (S.CUSTOMER_ID,))
    kinds = sorted((c[1], c[2]) for c in changes)
    assert kinds == [("delete", 2)] * 3 + [("insert", 2)] * 2  # the replaced partition's rows, then the new
    # an erasure's deleted rows in the feed's files are purged by vacuum, like earlier versions' files
    assert lake.delete_keys(name, S.CUSTOMER_ID, ["b0"]) == 1
    assert _changes_by_delta_rs(target, 3, (S.CUSTOMER_ID,)) == [("b0", "delete", 3)]
    feed_files = [p for p in (Path(target) / "_change_data").rglob("*.parquet")]
    assert feed_files  # the DELETE wrote the deleted row into the feed
    # the engine's own reader of the feed, over a version range: what delta-rs's reader finds
    feed = lake.read_changes(name, 2, 3)
    assert feed.columns == [
        *lake.read_output(name).columns,
        "_change_type",
        "_commit_version",
        "_commit_timestamp",
    ]
    picked = feed.select(S.CUSTOMER_ID, "_change_type", "_commit_version")
    assert sorted((tuple(r) for r in picked.collect()), key=repr) == sorted(
        [*changes, ("b0", "delete", 3)], key=repr
    )
    one = lake.read_changes(name, 3, 3).select(
        S.CUSTOMER_ID, "_change_type", "_commit_version", "_commit_timestamp"
    )
    [(key, kind, version, stamp)] = [tuple(r) for r in one.collect()]
    assert (key, kind, version) == ("b0", "delete", 3) and isinstance(stamp, dt.datetime)
    with pytest.raises(InputError, match=f"table '{name}'"):
        lake.read_changes(name, 0, 2)  # version 0 was written before the feed was turned on
    lake.settings.lakehouse.vacuum_retention_hours = 0
    lake.vacuum(name, force=True)
    assert not any(p.exists() for p in feed_files)


# ---- compaction (segspark vacuum) -------------------------------------------------------------------
def _log_files(target: str) -> tuple[int, int]:
    actions = pa.table(DeltaTable(target).get_add_actions(flatten=True))
    return actions.num_rows, sum(actions.column("size_bytes").to_pylist())


def test_vacuum_compacts_small_files_and_records_files_before_and_after(
    spark: SparkSession, engine: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, engine, vacuum_retention_hours=0, compact_min_files=5)
    lake = Lakehouse(spark, settings)
    name = S.CUSTOMER_SEGMENTS
    for day, run in ((D1, "r1"), (D2, "r2")):
        lake.write(rows_for(spark, name, 7, run).repartition(4), name, run_id=run, as_of_date=day)
    target = lake.target(name)
    files, size = _log_files(target)
    assert files == 8  # 4 per date
    small = {_local(u) for u in DeltaTable(target).file_uris()}
    counts = lake.read_output(name).groupBy(S.AS_OF_DATE, S.RUN_ID).count().collect()

    # 4 files in each partition, under compact_min_files=5: left alone, and the report says why
    ctx = open_context(settings, "vacuum", spark=spark)
    skipped = maintenance.vacuum(ctx, force=True)
    assert skipped[name] == 0 and _log_files(target) == (files, size)
    left_alone = (
        f"files 8 -> 8, bytes {size} -> {size} (not compacted: at most 4 file(s) in a partition, under 5)"
    )
    assert ctx.choices[f"compaction.{name}"] == left_alone
    settings.lakehouse.compact_min_files = 4
    ctx = open_context(settings, "vacuum", spark=spark)
    maintenance.vacuum(ctx, force=True)
    after, after_size = _log_files(target)
    assert after == 2  # one per date
    compacted = f"files 8 -> 2, bytes {size} -> {after_size}"
    assert ctx.choices[f"compaction.{name}"] == compacted
    assert sorted(lake.read_output(name).groupBy(S.AS_OF_DATE, S.RUN_ID).count().collect()) == sorted(counts)
    assert not any(p.exists() for p in small)  # replaced, then vacuumed (0 h retention, forced)
    runs = lake.read_output(S.RUNS).where(F.col("command") == "vacuum").select("choices").collect()
    recorded = {(r[0] or {}).get(f"compaction.{name}") for r in runs}
    assert recorded == {left_alone, compacted}
