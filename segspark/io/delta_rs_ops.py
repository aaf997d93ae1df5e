"""The embedded engine's table operations beyond writes: MERGE, compaction, table properties and
reading the change data feed.

MERGE, scalable without the driver holding the source: Spark writes the source DataFrame as Parquet
into ``<table>/_staging/merge-<id>/`` (the executors write, nothing is collected), then delta-rs merges
it read as a pyarrow dataset through a ``RecordBatchReader`` of ``MERGE_BATCH_ROWS`` rows, with its
streamed execution (the source is consumed batch by batch, never whole). Memory: delta-rs reads and
rewrites the target files that hold matched keys (streamed execution turns off the source-statistics
pruning, so with keys spread over the table that is every file) and joins them with the source in
DataFusion; with ``delta.enableChangeDataFeed`` on, delta-rs materializes the source in memory (the
change rows need it twice). For tables of tens of millions of rows per MERGE, the ``delta-spark``
engine does the same MERGE on the executors. The staging folder is deleted after the MERGE; a killed
MERGE leaves it to ``vacuum``.

Conflicts and retries follow ``delta_rs.write_table``: a commit by another writer since the run
started (``since_version``) that changed data is a ``ConcurrentWriteError``; the MERGE commits as
exactly the next version of what was checked, so a racing commit sends it back to the check; the
commit records ``app_transactions=(app_id, txn_version)``, so a retried run merges nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import urllib.parse
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from segspark.errors import InputError
from segspark.io import delta_log, storage
from segspark.io.engine import (
    Compaction,
    ConcurrentWriteError,
    MergeResult,
    check_merge_schema,
    compaction_skipped,
)

if TYPE_CHECKING:
    from deltalake.transaction import CommitProperties
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

# rows per Arrow batch handed to delta-rs: a few MB for the job's widest tables
MERGE_BATCH_ROWS = 65_536


def merge_table(
    df: DataFrame,
    table_uri: str,
    keys: list[str],
    *,
    app_id: str,
    txn_version: int,
    delete_column: str | None = None,
    since_version: int | None = None,
) -> MergeResult:
    """MERGE ``df`` into the table by ``keys`` in one commit (``TableEngine.merge``; module docstring)."""
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties, Transaction

    if storage.is_s3(table_uri):
        raise InputError(
            f"MERGE into {table_uri}: the embedded delta-rs engine merges into local folders only; "
            "use lakehouse.engine=delta-spark for tables on S3"
        )
    root = delta_log.local_path(table_uri).resolve()
    uri = str(root)
    table = delta_log.open_table(uri, root.name)
    check_merge_schema(root.name, delta_log.spark_schema(table), df.schema, keys, delete_column)
    done = delta_log.committed_txn_version(uri, app_id)
    if done is not None and done >= txn_version:
        log.info("%s: already merged by %s (txn %s); skipping", uri, app_id, done)
        return MergeResult(version=None, files=0, rows=0, skipped=True)

    write_id = uuid.uuid4().hex[:16]
    staging = root / delta_log.STAGING / f"merge-{write_id}"
    df.write.mode("error").parquet(str(staging))
    props = CommitProperties(
        app_transactions=[Transaction(app_id=app_id, version=txn_version)],
        custom_metadata={"segspark.app_id": app_id, "segspark.write_id": write_id},
        max_commit_retries=0,  # a lost race comes back to the conflict check (module docstring)
    )
    try:
        metrics = _merge_checked(
            root, staging, delta_log.arrow_schema_for(df), keys, delete_column, props, app_id, since_version
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # other writes may still be staging
            (root / delta_log.STAGING).rmdir()
    version = DeltaTable(uri).version()
    result = MergeResult(
        version=version,
        files=_count(metrics, "num_target_files_added"),
        rows=_count(metrics, "num_output_rows"),
        skipped=False,
        inserted=_count(metrics, "num_target_rows_inserted"),
        updated=_count(metrics, "num_target_rows_updated"),
        deleted=_count(metrics, "num_target_rows_deleted"),
    )
    log.info(
        "%s: merged as version %s (%d inserted, %d updated, %d deleted)",
        uri,
        version,
        result.inserted,
        result.updated,
        result.deleted,
    )
    return result


def _count(metrics: dict[str, Any], name: str) -> int:
    value = metrics.get(name)
    return -1 if value is None else int(value)


def _merge_checked(
    root: Path,
    staging: Path,
    schema: pa.Schema,
    keys: list[str],
    delete_column: str | None,
    props: CommitProperties,
    app_id: str,
    since_version: int | None,
) -> dict[str, Any]:
    """Check the commits since ``since_version`` for another writer's data change, then MERGE as the
    next version; a MERGE that lost the commit race goes back to the check."""
    from deltalake.exceptions import CommitFailedError, DeltaError

    for _attempt in range(delta_log.MAX_COMMIT_ATTEMPTS):
        latest = delta_log.latest_log_version(root)
        if since_version is not None:
            conflict = delta_log.conflicting_commit(root, since_version, latest, app_id, "overwrite", None)
            if conflict is not None:
                started = "no table yet" if since_version < 0 else f"at version {since_version}"
                raise ConcurrentWriteError(
                    f"table '{root.name}': concurrent write: {conflict} after this run started "
                    f"({started}); this run's MERGE was not committed; rerun when it has finished"
                )
        try:
            return _merge_once(str(root), latest, staging, schema, keys, delete_column, props)
        except (CommitFailedError, DeltaError) as exc:
            if delta_log.latest_log_version(root) == latest:
                raise  # not a lost race: a real failure
            log.info("%s: another writer committed first (%s); checking for a conflict", root, exc)
    raise ConcurrentWriteError(
        f"table '{root.name}': concurrent write: lost the commit race {delta_log.MAX_COMMIT_ATTEMPTS} times"
    )


def _merge_once(
    uri: str,
    latest: int,
    staging: Path,
    schema: pa.Schema,
    keys: list[str],
    delete_column: str | None,
    props: CommitProperties,
) -> dict[str, Any]:
    """One delta-rs MERGE of the staged source on version ``latest``, committed as ``latest + 1``."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    table = DeltaTable(uri, version=latest)
    # files named _SUCCESS or .crc are skipped by the dataset's default ignore prefixes
    source = ds.dataset(str(staging), format="parquet", schema=schema)
    reader = source.scanner(batch_size=MERGE_BATCH_ROWS).to_reader()
    predicate = " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in keys)
    merger = table.merge(
        reader,
        predicate,
        source_alias="s",
        target_alias="t",
        streamed_exec=True,
        commit_properties=props,
    )
    if delete_column is None:
        merger = merger.when_matched_update_all().when_not_matched_insert_all()
    else:
        flagged = f"coalesce(s.{_q(delete_column)}, false)"
        columns = {f.name: f"s.{_q(f.name)}" for f in table.schema().fields}
        merger = (
            merger.when_matched_delete(predicate=flagged)
            .when_matched_update(updates=columns)
            .when_not_matched_insert(updates=columns, predicate=f"NOT {flagged}")
        )
    metrics: dict[str, Any] = merger.execute()
    return metrics


def _q(column: str) -> str:
    """A column as delta-rs's SQL parser reads it (quoted: no case folding)."""
    return f'"{column}"'


# ---- compaction and properties ------------------------------------------------------------------------
def compact(table_uri: str, min_files: int) -> Compaction:
    """delta-rs ``optimize.compact()``: small files of each partition binned into files of the table's
    ``delta.targetFileSize`` (100 MB by default), one commit with ``dataChange=false``; delta-rs reads
    and writes a bin at a time (as many bins at once as the machine has cores). A table under
    ``min_files`` files in every partition is left alone."""
    uri = delta_log.location(table_uri)  # a local folder or S3
    table = delta_log.delta_table(uri)
    before = delta_log.file_layout(table)
    skipped = compaction_skipped(before, min_files)
    if skipped is not None:
        return skipped
    metrics = table.optimize.compact()
    after = delta_log.file_layout(delta_log.delta_table(uri))
    log.info(
        "%s: compacted %s files into %s", uri, metrics.get("numFilesRemoved"), metrics.get("numFilesAdded")
    )
    return Compaction(before.files, after.files, before.bytes, after.bytes)


def table_properties(table_uri: str) -> dict[str, str]:
    """The table's properties from its log; ``TableNotFound`` without a table."""
    config = delta_log.open_table(table_uri, storage.basename(table_uri)).metadata().configuration or {}
    return {k: str(v) for k, v in config.items() if v is not None}


def set_table_properties(table_uri: str, properties: dict[str, str]) -> None:
    delta_log.delta_table(table_uri).alter.set_table_properties(properties)


def create_table(
    table_uri: str, schema: StructType, partition_by: list[str], properties: dict[str, str]
) -> None:
    from deltalake import DeltaTable, Schema
    from pyspark.sql.pandas.types import to_arrow_schema

    uri = delta_log.location(table_uri)  # a local folder or S3
    arrow = to_arrow_schema(schema, timezone="UTC")
    DeltaTable.create(
        storage.delta_rs_uri(uri),
        Schema.from_arrow(arrow),
        mode="error",
        partition_by=partition_by or None,
        configuration=properties,
        storage_options=storage.delta_rs_options(uri),
    )


# ---- the change data feed ------------------------------------------------------------------------------
CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP = "_change_type", "_commit_version", "_commit_timestamp"
FEED_COLUMNS = {CHANGE_TYPE: "string", COMMIT_VERSION: "bigint", COMMIT_TIMESTAMP: "timestamp"}


def read_changes(spark: SparkSession, table_uri: str, name: str, start: int, end: int) -> DataFrame:
    """The change data feed of versions ``start`` to ``end`` (both included) as Delta's Spark reader
    gives it: the table's columns, then ``_change_type``, ``_commit_version`` and ``_commit_timestamp``.

    The driver reads only the commits' actions from the log; Spark scans the files, as the Delta
    protocol defines the feed: a commit's change data files (``cdc`` actions, which carry the change
    type: a DELETE's or a MERGE's rows), else the files it added (inserts) and removed (deletes) with
    ``dataChange``. A version without the feed on, or no longer in the log: ``InputError``
    (``delta_log.check_feed_recorded``). Read with the schema at ``end``."""
    from pyspark.sql import functions as F

    delta_log.check_feed_recorded(table_uri, name, start, end)
    root = delta_log.location(table_uri)
    table = delta_log.open_table(table_uri, name, end)
    schema = delta_log.spark_schema(table)
    partition_cols = list(table.metadata().partition_columns)
    frames = []
    for version in range(start, end + 1):
        actions = delta_log.commit_actions(root, version)
        info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        stamp = F.timestamp_millis(F.lit(int(info.get("timestamp") or 0))).alias(COMMIT_TIMESTAMP)
        for (kind, values), paths in _change_files(actions).items():
            scan = _change_scan(spark, root, schema, partition_cols, kind, values, paths)
            frames.append(scan.select("*", F.lit(version).cast("long").alias(COMMIT_VERSION), stamp))
    if not frames:  # an empty range: no rows, the feed's columns
        nothing = [F.lit(None).cast(t).alias(c) for c, t in FEED_COLUMNS.items()]
        return spark.createDataFrame([], schema).select("*", *nothing)
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _change_files(actions: list[dict[str, Any]]) -> dict[tuple[str, tuple[tuple[str, Any], ...]], list[str]]:
    """A commit's files of the feed by (kind, partition values): ``cdc`` files where the commit has
    them, else its added (``insert``) and removed (``delete``) data files."""
    cdc = [("cdc", a["cdc"]) for a in actions if "cdc" in a]
    picked = cdc or [
        ("insert" if key == "add" else "delete", a[key])
        for a in actions
        for key in ("add", "remove")
        if key in a and a[key].get("dataChange", True)
    ]
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[str]] = {}
    for kind, entry in picked:
        values = tuple(sorted((entry.get("partitionValues") or {}).items()))
        groups.setdefault((kind, values), []).append(urllib.parse.unquote(entry["path"]))
    return groups


def _change_scan(
    spark: SparkSession,
    root: str,
    schema: StructType,
    partition_cols: list[str],
    kind: str,
    values: tuple[tuple[str, Any], ...],
    paths: list[str],
) -> DataFrame:
    """One Spark scan of change files of one kind and partition: the table's columns (partition
    columns as constants) and the change type (the files' own column for ``cdc`` files)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    fields = [f for f in schema.fields if f.name not in partition_cols]
    if kind == "cdc":
        fields.append(StructField(CHANGE_TYPE, StringType()))
    base = storage.spark_uri(root)
    df = spark.read.schema(StructType(fields)).parquet(*[f"{base}/{p}" for p in paths])
    given = dict(values)
    columns = [
        F.lit(given.get(f.name)).cast(f.dataType).alias(f.name) if f.name in partition_cols else F.col(f.name)
        for f in schema.fields
    ]
    change = F.col(CHANGE_TYPE) if kind == "cdc" else F.lit(kind)
    return df.select(*columns, change.alias(CHANGE_TYPE))


class DeltaRsOperations:
    """``TableEngine``'s MERGE, compaction, property and change feed methods for
    ``delta_rs.DeltaRsEngine``."""

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
        return merge_table(
            df,
            target,
            keys,
            app_id=app_id,
            txn_version=txn_version,
            delete_column=delete_column,
            since_version=since_version,
        )

    def compact(self, target: str, min_files: int = 1) -> Compaction:
        return compact(target, min_files)

    def read_changes(self, target: str, name: str, start: int, end: int) -> DataFrame:
        return read_changes(self.spark, target, name, start, end)

    def table_properties(self, target: str) -> dict[str, str]:
        return table_properties(target)

    def set_table_properties(self, target: str, properties: dict[str, str]) -> None:
        set_table_properties(target, properties)

    def create_table(
        self, target: str, schema: StructType, partition_by: list[str], properties: dict[str, str]
    ) -> None:
        create_table(target, schema, partition_by, properties)
