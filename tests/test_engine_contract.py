"""One contract for both table engines: every test runs on delta-rs and on delta-spark.

The delta-spark parameter needs Delta's Spark jars and SQL extension in the test session; where they are
missing it is skipped with that reason. Frames are built from the declared schemas (``segspark.tables``),
so the tests write what the pipeline writes.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark import tables
from segspark.config import Settings
from segspark.errors import ConfigError
from segspark.io import Lakehouse, TableEngine, make_engine
from segspark.io.delta_spark import delta_available
from segspark.kpis import SEGMENT
from segspark.tables import SchemaMismatch, check_schema

D1 = dt.date(2024, 1, 31)
D2 = dt.date(2024, 2, 29)
D3 = dt.date(2024, 3, 31)


def _value(field: T.StructField, i: int, tag: str) -> Any:
    """A deterministic value of the field's type for row ``i`` (complex types stay null)."""
    t = field.dataType
    if isinstance(t, T.StringType):
        if field.name == S.CUSTOMER_ID:
            return f"{tag}{i}"
        return "x" * (40 if i == 0 else 3)  # row 0: longer than the string stats keep
    if isinstance(t, T.DoubleType):
        return float(i)
    if isinstance(t, T.IntegerType | T.LongType):
        return i
    if isinstance(t, T.BooleanType):
        return i % 2 == 0
    if isinstance(t, T.DateType):
        return dt.date(2024, 1, 1) + dt.timedelta(days=i)
    if isinstance(t, T.TimestampType):
        return dt.datetime(2024, 1, 1, 12, 0, i % 60)
    return None


def rows_for(spark: SparkSession, name: str, n: int, tag: str) -> DataFrame:
    """``n`` rows of table ``name``'s declared schema plus an all-null edge row."""
    schema = tables.SCHEMAS[name]
    data = [tuple(_value(f, i, tag) for f in schema.fields) for i in range(n)]
    data.append(tuple(None for _ in schema.fields))
    return spark.createDataFrame(data, schema)


def _delta_spark_missing(spark: SparkSession) -> str | None:
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    on_databricks = bool(spark.conf.get("spark.databricks.clusterUsageTags.clusterId", None))
    if not delta_available(spark):
        return "Delta's Spark jars (io.delta:delta-spark) are not on this session's classpath"
    if "DeltaSparkSessionExtension" not in extensions and not on_databricks:
        return "the session lacks spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension"
    return None


@pytest.fixture(params=["delta-rs", "delta-spark"])
def lake(request: pytest.FixtureRequest, spark: SparkSession, tmp_path: Path) -> Lakehouse:
    engine = request.param
    if engine == "delta-spark":
        reason = _delta_spark_missing(spark)
        if reason:
            pytest.skip(reason)
        # the contract vacuums with a zero retention
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    settings = Settings.model_validate({"output": {"path": str(tmp_path)}, "lakehouse": {"engine": engine}})
    made = Lakehouse(spark, settings)
    assert made.engine == engine
    return made


def _counts(df: DataFrame) -> dict[tuple[Any, str], int]:
    grouped = df.groupBy(S.AS_OF_DATE, S.RUN_ID).count().collect()
    return {(r[S.AS_OF_DATE], r[S.RUN_ID]): r["count"] for r in grouped}


def _scans(df: DataFrame) -> int:
    """The number of file scans in ``df``'s physical plan."""
    plan = "\n".join(r[0] for r in df.sparkSession.sql("EXPLAIN " + _view(df)).collect()).lower()
    return plan.count("scan parquet") + plan.count("scan delta")


def _local(uri: str) -> Path:
    """A local file as a path, from a plain path or a ``file:`` URI."""
    return Path(urllib.parse.urlparse(uri).path) if uri.startswith("file:") else Path(uri)


def _view(df: DataFrame) -> str:
    name = "contract_scan"
    df.createOrReplaceTempView(name)
    return f"SELECT * FROM {name}"


# ---- writes ----------------------------------------------------------------------------------
def test_snapshot_write_stamps_rows_and_partitions_by_date(spark: SparkSession, lake: Lakehouse) -> None:
    assert not lake.exists(S.CUSTOMER_SEGMENTS)
    res = lake.write(
        rows_for(spark, S.CUSTOMER_SEGMENTS, 5, "a"), S.CUSTOMER_SEGMENTS, run_id="r1", as_of_date=D1
    )
    assert (res.version, res.skipped) == (0, False)
    assert res.rows in (6, -1)
    assert lake.exists(S.CUSTOMER_SEGMENTS)
    assert not lake.exists(S.CUSTOMER_FEATURES)

    back = lake.read_output(S.CUSTOMER_SEGMENTS)
    assert _counts(back) == {(D1, "r1"): 6}
    assert back.schema[S.AS_OF_DATE].dataType == T.DateType()
    declared = [f.name for f in tables.SCHEMAS[S.CUSTOMER_SEGMENTS].fields]
    assert back.columns == [*declared, S.RUN_ID, S.AS_OF_DATE]
    assert back.where(F.col(S.CUSTOMER_ID).isNull()).count() == 1
    assert [c.version for c in lake.history(S.CUSTOMER_SEGMENTS)] == [0]


def test_snapshot_write_replaces_only_its_own_partition_in_one_commit(
    spark: SparkSession, lake: Lakehouse
) -> None:
    name = S.CUSTOMER_SEGMENTS
    lake.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=D1)
    lake.write(rows_for(spark, name, 4, "b"), name, run_id="r2", as_of_date=D2)
    res = lake.write(rows_for(spark, name, 1, "c"), name, run_id="r3", as_of_date=D1)
    assert res.version == 2
    assert _counts(lake.read_output(name)) == {(D1, "r3"): 2, (D2, "r2"): 5}
    assert _counts(lake.read_output(name, version=1)) == {(D1, "r1"): 4, (D2, "r2"): 5}  # time travel


def test_append_table_appends(spark: SparkSession, lake: Lakehouse) -> None:
    lake.write(rows_for(spark, S.QUARANTINE, 2, "q"), S.QUARANTINE, run_id="r1", as_of_date=D1)
    lake.write(rows_for(spark, S.QUARANTINE, 1, "q"), S.QUARANTINE, run_id="r2", as_of_date=D1)
    assert _counts(lake.read_output(S.QUARANTINE)) == {(D1, "r1"): 3, (D1, "r2"): 2}
    assert len(lake.history(S.QUARANTINE)) == 2


def test_silver_write_replaces_the_whole_table_and_its_schema_in_one_commit(
    spark: SparkSession, lake: Lakehouse
) -> None:
    target = lake.target(S.ORDERS)
    # a table left by an older layout: partitioned, with a column the declaration no longer has
    legacy = spark.createDataFrame([("old", D1)], "legacy string, as_of_date date")
    engine = make_engine(spark, lake.engine)
    engine.write(
        legacy,
        target,
        mode="overwrite_partition",
        partition_by=[S.AS_OF_DATE],
        partition_value={S.AS_OF_DATE: D1.isoformat()},
        app_id="legacy",
        txn_version=0,
    )
    lake.write(rows_for(spark, S.ORDERS, 3, "a"), S.ORDERS, run_id="r1", as_of_date=D1)
    res = lake.write(rows_for(spark, S.ORDERS, 2, "b"), S.ORDERS, run_id="r2", as_of_date=D2)
    assert res.version == 2  # one commit per write
    back = lake.read_output(S.ORDERS)
    assert back.columns == [*(f.name for f in tables.ORDERS_SCHEMA.fields), S.RUN_ID, S.AS_OF_DATE]
    assert _counts(back) == {(D2, "r2"): 3}
    assert back.schema[S.CATEGORIES].dataType == T.ArrayType(T.StringType(), True)
    assert lake.read_output(S.ORDERS, version=0).columns == ["legacy", S.AS_OF_DATE]


def test_a_retried_run_commits_nothing_twice(spark: SparkSession, lake: Lakehouse) -> None:
    for name in (S.CUSTOMER_SEGMENTS, S.QUARANTINE, S.ORDERS):
        first = lake.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=D1)
        again = lake.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=D1)
        assert (first.version, first.skipped) == (0, False), name
        assert (again.version, again.skipped) == (None, True), name
        assert [c.version for c in lake.history(name)] == [0], name
        assert lake.read_output(name).count() == 4, name
    # a later attempt of the same run (higher txn_version, as the runs table uses) does commit
    later = lake.write(
        rows_for(spark, S.QUARANTINE, 1, "z"), S.QUARANTINE, run_id="r1", as_of_date=D1, txn_version=1
    )
    assert (later.version, later.skipped) == (1, False)


def test_a_crash_before_the_commit_leaves_the_table_unchanged(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.CUSTOMER_SEGMENTS
    lake.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=D1)

    def crash() -> None:
        raise RuntimeError("simulated crash before the commit")

    with pytest.raises(RuntimeError, match="simulated crash"):
        lake.write(rows_for(spark, name, 7, "b"), name, run_id="r2", as_of_date=D1, before_commit=crash)
    assert _counts(lake.read_output(name)) == {(D1, "r1"): 4}
    assert len(lake.history(name)) == 1
    assert lake.write(rows_for(spark, name, 7, "b"), name, run_id="r2", as_of_date=D1).version == 1
    assert _counts(lake.read_output(name)) == {(D1, "r2"): 8}


# ---- reads -----------------------------------------------------------------------------------
def test_read_snapshot_is_one_scan_of_that_partition(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.CUSTOMER_SEGMENTS
    for n, (day, run) in enumerate([(D1, "r1"), (D2, "r2"), (D3, "r3")]):
        lake.write(rows_for(spark, name, n + 2, run).repartition(2), name, run_id=run, as_of_date=day)
    snap = lake.read_snapshot(name, D2)
    assert snap.columns == [f.name for f in tables.SCHEMAS[name].fields]  # no stamp columns
    ids = {r[S.CUSTOMER_ID] for r in snap.select(S.CUSTOMER_ID).collect()}
    assert ids == {"r20", "r21", "r22", None}
    assert _scans(snap) == 1
    assert lake.read_snapshot(name, dt.date(2023, 12, 31)).count() == 0
    if lake.engine == "delta-rs":
        from deltalake import DeltaTable

        table = DeltaTable(lake.target(name))
        wanted = {_local(u) for u in table.file_uris([(S.AS_OF_DATE, "=", D2.isoformat())])}
        scanned = {_local(u) for u in snap.inputFiles()}
        assert scanned == wanted
        assert all(p.parent.name == f"{S.AS_OF_DATE}={D2.isoformat()}" for p in scanned)
        assert len(table.file_uris()) > len(wanted)


def test_full_read_of_a_partitioned_table_is_one_scan(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.SEGMENT_KPIS
    for day, run in [(D1, "r1"), (D2, "r2"), (D3, "r3")]:
        lake.write(rows_for(spark, name, 2, run), name, run_id=run, as_of_date=day)
    full = lake.read_output(name)
    assert _counts(full) == {(D1, "r1"): 3, (D2, "r2"): 3, (D3, "r3"): 3}
    assert _scans(full) == 1


def test_read_latest_snapshot_picks_the_newest_date_before(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.CUSTOMER_SEGMENTS
    assert lake.read_latest_snapshot(name, before=D3) is None  # no table yet
    lake.write(rows_for(spark, name, 2, "a"), name, run_id="r1", as_of_date=D1)
    lake.write(rows_for(spark, name, 3, "c"), name, run_id="r3", as_of_date=D3)
    latest = lake.read_latest_snapshot(name, before=D3)
    assert latest is not None
    assert _counts(latest) == {(D1, "r1"): 3}  # keeps the stamp columns
    newest = lake.read_latest_snapshot(name, before=D3 + dt.timedelta(days=1))
    assert newest is not None and _counts(newest) == {(D3, "r3"): 4}
    assert lake.read_latest_snapshot(name, before=D1) is None


def test_latest_partition_comes_from_the_log_not_the_data(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.SEGMENT_KPIS
    for day in (D1, D2, D3):
        lake.write(rows_for(spark, name, 1, "k"), name, run_id=f"r{day}", as_of_date=day)
    engine = make_engine(spark, lake.engine)
    target = lake.target(name)
    assert engine.latest_partition_before(target, S.AS_OF_DATE, D3) == D2
    assert engine.latest_partition_before(target, S.AS_OF_DATE, D1) is None
    if lake.engine == "delta-rs":
        # with every data file gone, only the log can answer
        for folder in Path(target).glob(f"{S.AS_OF_DATE}=*"):
            shutil.rmtree(folder)
        assert engine.latest_partition_before(target, S.AS_OF_DATE, D3 + dt.timedelta(days=1)) == D3


# ---- maintenance -----------------------------------------------------------------------------
def test_delete_keys_removes_rows_in_every_partition_in_one_commit(
    spark: SparkSession, lake: Lakehouse
) -> None:
    name = S.CUSTOMER_SEGMENTS
    lake.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=D1)
    lake.write(rows_for(spark, name, 3, "a"), name, run_id="r2", as_of_date=D2)
    before = lake.history(name)[0].version
    assert lake.delete_keys(name, S.CUSTOMER_ID, ["a1", "a2", "nobody", "it's"]) == 4
    assert lake.history(name)[0].version == before + 1
    left = {r[S.CUSTOMER_ID] for r in lake.read_output(name).select(S.CUSTOMER_ID).collect()}
    assert left == {"a0", None}
    assert lake.delete_keys(name, S.CUSTOMER_ID, []) == 0
    assert lake.delete_keys(S.DRIFT, S.CUSTOMER_ID, ["a0"]) == 0  # no such table
    assert lake.delete_keys(S.RUNS, S.CUSTOMER_ID, ["a0"]) == 0  # no such table
    lake.write(rows_for(spark, S.QUARANTINE, 2, "q"), S.QUARANTINE, run_id="r1", as_of_date=D1)
    # quarantined rows carry the pseudonymous key: erasure reaches them
    assert lake.delete_keys(S.QUARANTINE, S.CUSTOMER_ID, ["q1"]) == 1
    left = {r[S.CUSTOMER_ID] for r in lake.read_output(S.QUARANTINE).select(S.CUSTOMER_ID).collect()}
    assert left == {"q0", None}
    assert len(lake.history(S.QUARANTINE)) == 2
    lake.write(rows_for(spark, S.SEGMENT_KPIS, 1, "k"), S.SEGMENT_KPIS, run_id="r1", as_of_date=D1)
    assert lake.delete_keys(S.SEGMENT_KPIS, S.CUSTOMER_ID, ["a0"]) == 0  # a table without the column
    assert len(lake.history(S.SEGMENT_KPIS)) == 1


def test_vacuum_deletes_replaced_files_and_keeps_the_live_ones(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.CUSTOMER_SEGMENTS
    lake.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=D1)
    replaced = set(lake.read_output(name).inputFiles())
    lake.write(rows_for(spark, name, 2, "b"), name, run_id="r2", as_of_date=D1)
    lake.settings.lakehouse.vacuum_retention_hours = 0
    with pytest.raises(ConfigError, match="safety minimum"):
        lake.vacuum(name)
    removed = lake.vacuum(name, force=True)
    assert {_local(p).name for p in removed} >= {_local(p).name for p in replaced}
    assert not any(_local(p).exists() for p in replaced)
    assert _counts(lake.read_output(name)) == {(D1, "r2"): 3}


def test_history_lists_commits_newest_first(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.SEGMENT_KPIS
    for day in (D1, D2):
        lake.write(rows_for(spark, name, 1, "k"), name, run_id=f"r{day}", as_of_date=day)
    assert lake.delete_keys(name, SEGMENT, ["x" * 40]) == 2  # row 0 of each date
    history = lake.history(name)
    assert [c.version for c in history] == [2, 1, 0]
    assert history[0].operation.upper() == "DELETE"
    assert all(c.timestamp is not None for c in history)
    assert [c.version for c in lake.history(name, limit=1)] == [2]


# ---- declared schemas ------------------------------------------------------------------------
def test_write_refuses_a_frame_that_breaks_the_declaration(spark: SparkSession, lake: Lakehouse) -> None:
    name = S.SEGMENT_KPIS
    good = rows_for(spark, name, 2, "k")
    cases = {
        "column 'value' is missing": good.drop("value"),
        "column 'value' has type string, declared double": good.withColumn("value", F.lit("1")),
        "column 'extra' is not declared": good.withColumn("extra", F.lit(1)),
    }
    for message, frame in cases.items():
        with pytest.raises(SchemaMismatch, match=f"table 'segment_kpis': {message}"):
            lake.write(frame, name, run_id="r1", as_of_date=D1)
    assert not lake.exists(name)  # refused before anything was written
    with pytest.raises(ValueError, match="unknown output table 'nope'"):
        lake.write(good, "nope", run_id="r1", as_of_date=D1)


def test_write_widens_narrow_integers_and_void_columns_to_the_declared_type(
    spark: SparkSession, lake: Lakehouse
) -> None:
    name = S.RFM_GRID  # r_score int, customers long, revenue double
    frame = rows_for(spark, name, 2, "g").select(
        F.col("r_score").cast("short").alias("r_score"),
        "f_score",
        F.col("customers").cast("int").alias("customers"),
        F.lit(None).alias("revenue"),  # void: all null
    )
    lake.write(frame, name, run_id="r1", as_of_date=D1)
    back = lake.read_output(name)
    types = {f.name: f.dataType for f in back.schema.fields}
    assert types["r_score"] == T.IntegerType()
    assert types["customers"] == T.LongType()
    assert types["revenue"] == T.DoubleType()
    assert back.agg(F.sum("customers")).first()[0] == 1


def _retyped(schema: T.StructType, types: dict[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(f.name, types.get(f.name, f.dataType)) for f in schema.fields])


def test_check_schema_rules() -> None:
    declared = tables.SCHEMAS[S.CUSTOMER_FEATURES]
    check_schema(S.CUSTOMER_FEATURES, declared)  # the declaration itself passes
    stamped = T.StructType([*declared.fields, T.StructField(S.RUN_ID, T.StringType())])
    check_schema(S.CUSTOMER_FEATURES, stamped)  # the writer's own columns are not checked
    with_channels = T.StructType(
        [
            *declared.fields,
            T.StructField("orders_web", T.LongType()),
            T.StructField("channel_share_web", T.DoubleType()),
        ]
    )
    check_schema(S.CUSTOMER_FEATURES, with_channels)  # rfm.channels columns match the table's patterns
    bad_channel = T.StructType([*declared.fields, T.StructField("orders_web", T.DoubleType())])
    with pytest.raises(SchemaMismatch, match="column 'orders_web' has type double, declared by pattern"):
        check_schema(S.CUSTOMER_FEATURES, bad_channel)
    # narrower integers and void columns widen; a wider integer or timestamp_ntz is refused
    narrow = _retyped(declared, {"frequency": T.IntegerType(), "country": T.NullType()})
    widened = {"frequency": T.LongType(), "country": T.StringType()}
    assert tables.conform_schema(S.CUSTOMER_FEATURES, narrow) == widened  # the writer casts these
    shrunk = _retyped(declared, {"recency_days": T.LongType(), "last_order_ts": T.TimestampNTZType()})
    with pytest.raises(SchemaMismatch) as err:
        check_schema(S.CUSTOMER_FEATURES, shrunk)
    assert str(err.value) == (
        "table 'customer_features': column 'recency_days' has type long, declared integer; "
        "column 'last_order_ts' has type timestamp_ntz, declared timestamp"
    )
    # optional columns may be absent; required ones may not
    segments = tables.SCHEMAS[S.CUSTOMER_SEGMENTS]
    check_schema(
        S.CUSTOMER_SEGMENTS,
        T.StructType([f for f in segments.fields if f.name not in ("cluster_id", "persona")]),
    )
    with pytest.raises(SchemaMismatch, match="table 'customer_segments': column 'clv' is missing"):
        check_schema(S.CUSTOMER_SEGMENTS, T.StructType([f for f in segments.fields if f.name != "clv"]))
    with pytest.raises(SchemaMismatch, match="table 'nope' has no declared schema"):
        check_schema("nope", declared)


def test_every_output_table_is_declared() -> None:
    assert set(tables.SCHEMAS) == set(S.SNAPSHOT_TABLES | S.APPEND_TABLES | S.SILVER_TABLES)
    assert not {S.RUN_ID, S.AS_OF_DATE} & {f.name for s in tables.SCHEMAS.values() for f in s.fields}


def test_names_spelt_in_tables_equal_their_owners_constants() -> None:
    from segspark import churn
    from segspark.clustering import personas
    from segspark.clv import predict

    assert tables.P_ALIVE == predict.P_ALIVE
    assert tables.EXPECTED_PURCHASES == predict.EXPECTED_PURCHASES
    assert tables.EXPECTED_AVG_VALUE == predict.EXPECTED_AVG_VALUE
    assert tables.CHURN_BAND == churn.CHURN_BAND
    assert tables.CLUSTER_ID == personas.CLUSTER_ID
    assert tables.PERSONA_DESCRIPTION == personas.PERSONA_DESCRIPTION
    assert (tables.PROFILE_SIZE, tables.PROFILE_SHARE) == (personas.SIZE, personas.SHARE)
    assert (tables.MEDIAN_PREFIX, tables.Z_PREFIX) == (personas.MEDIAN_PREFIX, personas.Z_PREFIX)


def test_both_engines_implement_the_protocol_and_place_tables(spark: SparkSession, tmp_path: Path) -> None:
    root = tmp_path / "out"
    for name in ("delta-rs", "delta-spark"):
        engine = make_engine(spark, name)  # type: ignore[arg-type]
        assert isinstance(engine, TableEngine)
        assert engine.name == name
        assert engine.locate(root, None, None, S.ORDERS) == str(root / "tables" / S.ORDERS)
    assert make_engine(spark, "delta-spark").locate(root, "main", "crm", S.ORDERS) == "main.crm.orders"
    with pytest.raises(
        ConfigError, match=re.escape("output.catalog/output.schema need lakehouse.engine=delta-spark")
    ):
        make_engine(spark, "delta-rs").locate(root, "main", "crm", S.ORDERS)
    settings = Settings.model_validate(
        {
            "output": {"path": str(root), "catalog": "main", "schema": "crm"},
            "lakehouse": {"engine": "delta-rs"},
        }
    )
    with pytest.raises(ConfigError, match=re.escape("need lakehouse.engine=delta-spark")):
        Lakehouse(spark, settings).target(S.ORDERS)


# ---- the two engines on one table ------------------------------------------------------------------
@pytest.mark.parametrize("first", ["delta-rs", "delta-spark"])
def test_a_table_written_by_one_engine_is_read_and_written_by_the_other_and_by_readers(
    spark: SparkSession, tmp_path: Path, first: str
) -> None:
    """A run on a laptop (delta-rs) and one on a cluster (delta-spark) share an output folder: each
    engine reads, appends to and replaces a partition of the other's tables, and delta-rs, Polars and
    DuckDB (the snapshot's Parquet files) read the result (reader 1 / writer 2: no table feature those
    readers lack)."""
    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    reason = _delta_spark_missing(spark)
    if reason:
        pytest.fail(reason)  # the suite's session loads Delta's jars: both engines must run here
    second = "delta-spark" if first == "delta-rs" else "delta-rs"

    def lake_of(engine: str) -> Lakehouse:
        return Lakehouse(spark, Settings.model_validate({"output": {"path": str(tmp_path)}}), engine)  # type: ignore[arg-type]

    a, b = lake_of(first), lake_of(second)
    name = S.CUSTOMER_SEGMENTS
    a.write(rows_for(spark, name, 3, "a"), name, run_id="r1", as_of_date=D1)
    b.write(rows_for(spark, name, 4, "b"), name, run_id="r2", as_of_date=D2)  # a new partition
    b.write(rows_for(spark, name, 1, "c"), name, run_id="r3", as_of_date=D1)  # replaces a's partition
    b.write(rows_for(spark, S.QUARANTINE, 2, "q"), S.QUARANTINE, run_id="r1", as_of_date=D1)
    a.write(rows_for(spark, S.QUARANTINE, 1, "q"), S.QUARANTINE, run_id="r2", as_of_date=D1)
    for lake in (a, b):
        assert _counts(lake.read_output(name)) == {(D1, "r3"): 2, (D2, "r2"): 5}, lake.engine
        assert _counts(lake.read_output(S.QUARANTINE)) == {(D1, "r1"): 3, (D1, "r2"): 2}, lake.engine
        assert [c.version for c in lake.history(name)] == [2, 1, 0], lake.engine

    target = a.target(name)
    table = DeltaTable(target)
    assert (table.protocol().min_reader_version, table.protocol().min_writer_version) == (1, 2)
    assert table.to_pyarrow_table().num_rows == 7
    assert pl.read_delta(target).height == 7
    files = [_local(f) for f in table.file_uris()]  # the snapshot's files, as DuckDB is pointed at them
    query = f"SELECT count(*) FROM read_parquet({[str(f) for f in files]!r})"
    assert duckdb.connect().execute(query).fetchone() == (7,)
