"""Delta Spark's MERGE, OPTIMIZE and table properties for ``delta_spark.DeltaSparkEngine``.

Everything goes through SQL (``MERGE INTO``, ``OPTIMIZE``, ``DESCRIBE DETAIL``, ``ALTER TABLE``) rather
than the ``delta.tables`` Python API: over Spark Connect that API needs Delta's Connect plugin on the
server (the ``delta-connect-server`` jar and ``spark.connect.extensions.*`` settings), where SQL needs
only Delta's SQL extension, which the engine requires anyway; the MERGE source is the DataFrame as a
temporary view, so nothing reaches the driver. MERGE is idempotent through Delta's idempotent-DML
settings (``spark.databricks.delta.write.txnAppId``/``txnVersion``, set for the one statement): Delta
skips a MERGE whose (app id, version) the table has already recorded.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from segspark.errors import InputError
from segspark.io import delta_log
from segspark.io import delta_spark_table as ds
from segspark.io.engine import (
    Compaction,
    ConcurrentWriteError,
    FileLayout,
    MergeResult,
    TableNotFound,
    check_merge_schema,
    compaction_skipped,
    is_catalog_name,
    table_name,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"


def _q(column: str) -> str:
    return f"`{column}`"


def merge_sql(target: str, view: str, columns: list[str], keys: list[str], delete_column: str | None) -> str:
    """The MERGE statement of ``TableEngine.merge`` (source ``view`` as ``s``, the table as ``t``)."""
    on = " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in keys)
    sets = ", ".join(f"t.{_q(c)} = s.{_q(c)}" for c in columns)
    insert = f"({', '.join(map(_q, columns))}) VALUES ({', '.join(f's.{_q(c)}' for c in columns)})"
    clauses = [f"WHEN MATCHED THEN UPDATE SET {sets}", f"WHEN NOT MATCHED THEN INSERT {insert}"]
    if delete_column is not None:
        flagged = f"coalesce(s.{_q(delete_column)}, false)"
        clauses = [
            f"WHEN MATCHED AND {flagged} THEN DELETE",
            clauses[0],
            f"WHEN NOT MATCHED AND NOT {flagged} THEN INSERT {insert}",
        ]
    return f"MERGE INTO {ds.sql_ref(target)} AS t USING {view} AS s ON {on} " + " ".join(clauses)


def merge_table(
    df: DataFrame, target: str, keys: list[str], *, app_id: str, txn_version: int, delete_column: str | None
) -> MergeResult:
    """``TableEngine.merge`` with Delta's own MERGE (module docstring); Delta's optimistic concurrency
    control decides conflicts, and its concurrent-modification errors become ``ConcurrentWriteError``."""
    spark = df.sparkSession
    name = table_name(target)
    table, before = ds.read_table(spark, target, name)  # TableNotFound when there is none
    check_merge_schema(name, table.schema, df.schema, keys, delete_column)
    view = f"segspark_merge_{uuid.uuid4().hex[:12]}"
    df.createOrReplaceTempView(view)
    statement = merge_sql(target, view, table.columns, keys, delete_column)
    try:
        with _session_conf(spark, {TXN_APP_ID: app_id, TXN_VERSION: str(txn_version)}):
            spark.sql(statement).collect()  # one row of counts
    except Exception as exc:
        text = str(exc)
        if any(marker in text for marker in ds.CONCURRENT_ERRORS):
            first = text.splitlines()[0] if text else type(exc).__name__
            raise ConcurrentWriteError(
                f"table '{name}': concurrent write: another writer changed the rows this MERGE read "
                f"({first[:300]}); this run's MERGE was not committed; rerun when it has finished"
            ) from None
        raise
    finally:
        spark.catalog.dropTempView(view)
    version, metrics = ds.last_commit(spark, target)  # a path table's from its log: no Spark job
    if version == before:
        log.info("%s: already merged by %s (txn %s); skipping", target, app_id, txn_version)
        return MergeResult(version=None, files=0, rows=0, skipped=True)
    result = MergeResult(
        version=version,
        files=ds.metric(metrics, "numTargetFilesAdded"),
        rows=ds.metric(metrics, "numOutputRows"),
        skipped=False,
        inserted=ds.metric(metrics, "numTargetRowsInserted"),
        updated=ds.metric(metrics, "numTargetRowsUpdated"),
        deleted=ds.metric(metrics, "numTargetRowsDeleted"),
    )
    log.info(
        "%s: merged as version %s (%d inserted, %d updated, %d deleted)",
        target,
        version,
        result.inserted,
        result.updated,
        result.deleted,
    )
    return result


@contextlib.contextmanager
def _session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """SQL settings for one statement, the previous values put back after it (Connect-safe)."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def _detail(spark: SparkSession, target: str) -> Any:
    row = spark.sql(f"DESCRIBE DETAIL {ds.sql_ref(target)}").first()  # one row
    assert row is not None
    return row


def file_layout(spark: SparkSession, target: str) -> FileLayout:
    """A path table's live files from its log read by the driver (no Spark job); a catalog table's
    from ``DESCRIBE DETAIL``, whose file count stands for the most in a partition too."""
    root = ds.log_root(target)
    if root is not None:
        return delta_log.file_layout(delta_log.delta_table(root))
    detail = _detail(spark, target)
    files = int(detail["numFiles"])
    return FileLayout(files, int(detail["sizeInBytes"]), files)


def compact(spark: SparkSession, target: str, min_files: int) -> Compaction:
    """``OPTIMIZE``: small files of each partition binned into files of up to
    ``spark.databricks.delta.optimize.maxFileSize`` (1 GB), written by the executors, one commit with
    ``dataChange=false``; a table under ``min_files`` files in every partition is left alone."""
    before = file_layout(spark, target)
    skipped = compaction_skipped(before, min_files)
    if skipped is not None:
        return skipped
    spark.sql(f"OPTIMIZE {ds.sql_ref(target)}").collect()  # one row of metrics
    after = file_layout(spark, target)
    return Compaction(before.files, after.files, before.bytes, after.bytes)


def table_properties(spark: SparkSession, target: str) -> dict[str, str]:
    """The table's properties: a path table's from its log read by the driver (no Spark job), a
    catalog table's from one ``DESCRIBE DETAIL``; ``TableNotFound`` without a Delta table."""
    root = ds.log_root(target)
    if root is not None:
        if delta_log.latest_log_version(root) < 0:
            raise TableNotFound(f"table '{table_name(target)}': no Delta table at {target}")
        config = delta_log.delta_table(root).metadata().configuration or {}
        return {str(k): str(v) for k, v in config.items() if v is not None}
    try:
        detail = _detail(spark, target)
    except Exception as exc:
        if any(marker in str(exc) for marker in ds.NOT_FOUND):
            raise TableNotFound(f"table '{table_name(target)}': no Delta table at {target}") from None
        raise
    if str(detail["format"]).lower() != "delta":
        raise TableNotFound(f"table '{table_name(target)}': no Delta table at {target}")
    return {str(k): str(v) for k, v in (detail["properties"] or {}).items()}


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_table_properties(spark: SparkSession, target: str, properties: dict[str, str]) -> None:
    pairs = ", ".join(f"{_literal(k)} = {_literal(v)}" for k, v in properties.items())
    spark.sql(f"ALTER TABLE {ds.sql_ref(target)} SET TBLPROPERTIES ({pairs})")


def create_table(
    spark: SparkSession, target: str, schema: StructType, partition_by: list[str], properties: dict[str, str]
) -> None:
    """An empty table: an empty frame written with Delta's writer, the ``delta.*`` properties given as
    writer options (Delta stores them as table properties when it creates the table)."""
    writer = spark.createDataFrame([], schema).write.format("delta").mode("error")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    for key, value in properties.items():
        writer = writer.option(key, value)
    if is_catalog_name(target):
        writer.saveAsTable(target)
    else:
        writer.save(target)


def read_changes(spark: SparkSession, target: str, name: str, start: int, end: int) -> DataFrame:
    """Delta's change data feed of versions ``start`` to ``end`` (both included): the table's columns,
    then ``_change_type``, ``_commit_version`` and ``_commit_timestamp``; ``InputError`` where the
    table does not record its changes over that range (a path table: checked from its log, as Delta's
    reader finds out only when the scan runs)."""
    root = ds.log_root(target)
    if root is not None:  # a path table: the same check from its log as on the embedded engine
        delta_log.check_feed_recorded(root, name, start, end)
    reader = spark.read.format("delta").option("readChangeFeed", "true")
    reader = reader.option("startingVersion", start).option("endingVersion", end)
    try:
        df = reader.table(target) if is_catalog_name(target) else reader.load(target)
        df.schema  # noqa: B018  (resolves the range now, so a table without the feed fails here)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"table '{name}': cannot read its changes {start}..{end}: {first[:300]}") from None
    return df


class DeltaSparkOperations:
    """``TableEngine``'s MERGE, compaction and property methods for ``delta_spark.DeltaSparkEngine``."""

    spark: SparkSession

    def merge(
        self,
        df: DataFrame,
        target: str,
        keys: list[str],
        *,
        app_id: str,
        txn_version: int,
        delete_column: str | None = None,
        since_version: int | None = None,
    ) -> MergeResult:
        # a path table's log is checked for another run's commit since this run started, as for
        # writes (any data change conflicts, as on the embedded engine); elsewhere Delta's own control
        ds.check_conflict(target, since_version, app_id, "overwrite", None)
        return merge_table(
            df, target, keys, app_id=app_id, txn_version=txn_version, delete_column=delete_column
        )

    def compact(self, target: str, min_files: int = 1) -> Compaction:
        return compact(self.spark, target, min_files)

    def read_changes(self, target: str, name: str, start: int, end: int) -> DataFrame:
        return read_changes(self.spark, target, name, start, end)

    def table_properties(self, target: str) -> dict[str, str]:
        return table_properties(self.spark, target)

    def set_table_properties(self, target: str, properties: dict[str, str]) -> None:
        set_table_properties(self.spark, target, properties)

    def create_table(
        self, target: str, schema: StructType, partition_by: list[str], properties: dict[str, str]
    ) -> None:
        create_table(self.spark, target, schema, partition_by, properties)
