"""The embedded Delta engine: Spark writes Parquet, ``deltalake`` (delta-rs) commits it in ONE commit.

Write protocol, per table write:
1. If the table already records ``app_id`` at ``txn_version`` or later, the write was done by an
   earlier attempt of the same run: nothing is written (idempotent retry).
2. Spark writes the data files into ``<table>/_staging/<write_id>/`` (hive-style partition folders).
3. The driver moves each file to ``<table>/<partition folders>/part-<write_id>-NNNNN.parquet`` and reads
   its Parquet footer for the ``AddAction`` stats (numRecords, minValues, maxValues, nullCount).
4. One commit with the adds (and, for a partition overwrite, the removes of that partition's files,
   derived by delta-rs from the partition filter), plus the ``app_transactions`` entry.
Files moved in step 3 but never committed (a crash before step 4) are not in the log, so readers
never see them; ``vacuum`` deletes them.

Concurrent runs: a run pins every table's version when it starts (``Lakehouse.pin_versions``). Before
committing an overwrite, the write reads the commits made since then; one by another run that added or
removed files of the rows it replaces (the whole table for a silver overwrite, the partition for a
snapshot) is a conflict: the write's files are deleted and ``ConcurrentWriteError`` names the table.
The commit itself is made as exactly the next version of what was checked (no retry inside delta-rs),
so a racing commit in between sends the write back to the check. Appends never conflict.

Tables may live in a local folder or on S3 (``s3a://bucket/prefix``, ``segspark.io.storage``): Spark
writes through Hadoop's S3A connector, the driver moves and reads files with pyarrow and commits with
delta-rs, whose commit is safe against a concurrent writer through a conditional put (or a DynamoDB
lock: ``lakehouse.s3.commit``). On S3 the move of step 3 is a server-side copy and a delete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import urllib.parse
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segspark.errors import ConfigError, InputError
from segspark.io import storage
from segspark.io.delta_log import (
    MAX_COMMIT_ATTEMPTS,
    STAGING,
    arrow_schema_for,
    committed_txn_version,
    conflicting_commit,
    delta_table,
    expire_log,
    is_delta_table,
    latest_log_version,
    location,
    open_table,
    spark_schema,
)
from segspark.io.delta_rs_ops import DeltaRsOperations
from segspark.io.engine import (
    Commit,
    CommitResult,
    ConcurrentWriteError,
    EngineName,
    PartitionValue,
    WriteMode,
    conflict_error,
    is_catalog_name,
    sql_in_list,
    table_location,
)

if TYPE_CHECKING:
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, CommitProperties, RemoveAction
    from pyarrow import fs as pafs
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

__all__ = ["CommitResult", "DeltaRsEngine", "WriteMode", "read_table", "vacuum", "write_table"]

# Delta readers compare string stats by prefix; longer values are left out rather than truncated,
# because a truncated max would be smaller than the real one and wrongly skip files.
MAX_STRING_STAT = 32


def _stat_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING_STAT else None
    if isinstance(value, bytes | bytearray):
        return None
    return value


def parquet_stats(path: Path | str, filesystem: pafs.FileSystem | None = None) -> tuple[int, str]:
    """numRecords, minValues, maxValues and nullCount from a Parquet footer, as Delta stats JSON
    (``path`` in ``filesystem`` when given: a file on an object store)."""
    if filesystem is None:
        meta = pq.read_metadata(path)
    else:
        with filesystem.open_input_file(str(path)) as handle:
            meta = pq.read_metadata(handle)
    names = meta.schema.to_arrow_schema().names
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    usable = {name: True for name in names}
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for ci in range(group.num_columns):
            col = group.column(ci)
            name = col.path_in_schema
            if name not in usable:  # nested field: no top-level stats
                continue
            st = col.statistics
            if st is None or not st.has_null_count:
                usable[name] = False
                continue
            nulls[name] = nulls.get(name, 0) + int(st.null_count)
            if not st.has_min_max:
                if group.num_rows > st.null_count:
                    usable[name] = False
                continue
            lo, hi = _stat_value(st.min), _stat_value(st.max)
            if lo is None or hi is None:
                usable[name] = False
                continue
            mins[name] = lo if name not in mins else min(mins[name], lo)
            maxs[name] = hi if name not in maxs else max(maxs[name], hi)
    stats = {
        "numRecords": meta.num_rows,
        "minValues": {k: v for k, v in mins.items() if usable.get(k)},
        "maxValues": {k: v for k, v in maxs.items() if usable.get(k)},
        "nullCount": {k: v for k, v in nulls.items() if k in usable},
    }
    return meta.num_rows, json.dumps(stats, separators=(",", ":"))


def _partition_values(rel_dir: PurePath) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for part in rel_dir.parts:
        key, sep, raw = part.partition("=")
        if not sep:
            continue
        value = urllib.parse.unquote(raw)
        values[urllib.parse.unquote(key)] = None if value == "__HIVE_DEFAULT_PARTITION__" else value
    return values


def write_table(
    df: DataFrame,
    table_uri: str,
    *,
    mode: WriteMode,
    partition_by: list[str],
    partition_value: dict[str, str] | None,
    app_id: str,
    txn_version: int,
    before_commit: Callable[[], None] | None = None,
    since_version: int | None = None,
) -> CommitResult:
    """Write ``df`` as one Delta commit; see the module docstring for the protocol.

    ``since_version``: the table's version when the run started; an overwrite that another run's
    commit since then would clobber raises ``ConcurrentWriteError`` (the commit is checked and made
    atomically: a commit lost to a racing writer is re-checked, never blindly retried).
    """
    from deltalake import Schema
    from deltalake.transaction import CommitProperties, Transaction

    root = location(table_uri)
    uri = root
    done = committed_txn_version(uri, app_id)
    if done is not None and done >= txn_version:
        log.info("%s: already committed by %s (txn %s); skipping", uri, app_id, done)
        return CommitResult(version=None, files=0, rows=0, skipped=True)

    write_id = uuid.uuid4().hex[:16]
    adds, total_rows = _write_files(df, root, write_id, partition_by)

    if before_commit is not None:
        before_commit()  # tests use this to simulate a crash between data files and commit

    schema = Schema.from_arrow(arrow_schema_for(df))
    props = CommitProperties(
        app_transactions=[Transaction(app_id=app_id, version=txn_version)],
        custom_metadata={"segspark.app_id": app_id, "segspark.write_id": write_id},
        # a lost race must come back here, not be resolved by delta-rs: whether another run's
        # commit conflicts with this one is decided against the run's start (``since_version``)
        max_commit_retries=0,
    )
    _commit_checked(
        root,
        schema,
        adds,
        mode,
        partition_by,
        partition_value,
        props,
        app_id=app_id,
        since_version=since_version,
    )
    version = delta_table(uri).version()
    log.info("%s: committed version %s (%d files, %d rows)", uri, version, len(adds), total_rows)
    return CommitResult(version=version, files=len(adds), rows=total_rows, skipped=False)


def _write_files(
    df: DataFrame, root: str, write_id: str, partition_by: list[str]
) -> tuple[list[AddAction], int]:
    """Steps 2 and 3 of the protocol: Spark writes the files into the staging folder, each moves to
    its partition folder and becomes an add with its footer's stats. Returns the adds and their rows."""
    from deltalake.transaction import AddAction

    writer = df.write.mode("error")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.parquet(storage.spark_uri(storage.join(root, STAGING, write_id)))

    files, base = storage.filesystem(root)
    staging = f"{base}/{STAGING}/{write_id}"
    adds: list[AddAction] = []
    total_rows = 0
    try:
        for n, src in enumerate(storage.data_files(files, staging, ".parquet")):
            rel_dir = PurePosixPath(src).parent.relative_to(staging)
            rel = (rel_dir / f"part-{n:05d}-{write_id}.parquet").as_posix()
            dest = f"{base}/{rel}"
            if storage.is_local(files):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
            files.move(src, dest)  # a rename; on S3 a server-side copy and a delete
            rows, stats = parquet_stats(dest, files)
            total_rows += rows
            info = files.get_file_info(dest)
            adds.append(
                AddAction(
                    path=rel,
                    size=int(info.size or 0),
                    partition_values=_partition_values(rel_dir),
                    modification_time=(info.mtime_ns or 0) // 1_000_000,
                    data_change=True,
                    stats=stats,
                )
            )
    finally:
        with contextlib.suppress(OSError):
            files.delete_dir(staging)
        if storage.is_local(files):
            with contextlib.suppress(OSError):  # other writes may still be staging
                os.rmdir(f"{base}/{STAGING}")
    return adds, total_rows


def _commit_checked(
    root: str,
    schema: Schema,
    adds: list[AddAction],
    mode: WriteMode,
    partition_by: list[str],
    partition_value: dict[str, str] | None,
    props: CommitProperties,
    *,
    app_id: str,
    since_version: int | None,
) -> None:
    """Step 4: check the commits since ``since_version`` for a conflict (overwrites only), then commit
    as the next version; a commit lost to a racing writer goes back to the check."""
    from deltalake.exceptions import CommitFailedError, DeltaError

    uri = root
    name = storage.basename(root)
    for _attempt in range(MAX_COMMIT_ATTEMPTS):
        latest = latest_log_version(root)
        if since_version is not None and mode != "append":
            conflict = conflicting_commit(root, since_version, latest, app_id, mode, partition_value)
            if conflict is not None:
                _discard(root, adds)
                raise conflict_error(name, conflict, since_version)
        try:
            _commit(uri, latest, schema, adds, mode, partition_by, partition_value, props)
        except (CommitFailedError, DeltaError) as exc:
            if latest_log_version(root) == latest:
                raise  # not a lost race: a real failure
            log.info("%s: another writer committed first (%s); checking for a conflict", uri, exc)
            continue
        return
    raise ConcurrentWriteError(
        f"table '{name}': concurrent write: lost the commit race {MAX_COMMIT_ATTEMPTS} times"
    )


def _commit(
    uri: str,
    latest: int,
    schema: Schema,
    adds: list[AddAction],
    mode: WriteMode,
    partition_by: list[str],
    partition_value: dict[str, str] | None,
    props: CommitProperties,
) -> None:
    """One commit of ``adds`` (plus the removes the mode implies) as version ``latest + 1`` exactly:
    when another writer took that version first, delta-rs raises instead of committing."""
    from deltalake.transaction import create_table_with_add_actions

    rs_uri, options = storage.delta_rs_uri(uri), storage.delta_rs_options(uri)
    if latest < 0:
        # creates the table; fails when another writer created it first
        create_table_with_add_actions(
            rs_uri,
            schema,
            adds,
            mode="error",
            partition_by=partition_by or None,
            storage_options=options,
            commit_properties=props,
        )
        return
    table = delta_table(uri, version=latest)
    if mode == "overwrite" and (
        table.schema() != schema or list(table.metadata().partition_columns) != list(partition_by)
    ):
        # a new schema or partitioning (a silver table after an upgrade): creating "over" the table
        # replaces its files, schema and partitioning in one commit, which a plain overwrite
        # transaction cannot; it commits on the latest version (the race check above still ran).
        # It would also reset the table's properties (and so its protocol): they are carried over.
        create_table_with_add_actions(
            rs_uri,
            schema,
            adds,
            mode="overwrite",
            partition_by=partition_by or None,
            storage_options=options,
            configuration=table.metadata().configuration or None,
            commit_properties=props,
        )
        return
    filters = None
    delta_mode = "overwrite" if mode == "overwrite" else "append"
    if mode == "overwrite_partition":
        delta_mode = "overwrite"
        filters = [(k, "=", v) for k, v in (partition_value or {}).items()]
        if not filters:
            raise ValueError("overwrite_partition needs a partition value")
    actions: list[AddAction | RemoveAction] = [*adds]
    table.create_write_transaction(
        actions,
        delta_mode,
        schema,
        partition_by=partition_by or None,
        partition_filters=filters,
        commit_properties=props,
    )


def _discard(root: str, adds: list[AddAction]) -> None:
    """Delete this write's never-committed data files (vacuum would, later)."""
    files, base = storage.filesystem(root)
    for add in adds:
        with contextlib.suppress(OSError):
            files.delete_file(f"{base}/{add.path}")


def _add_actions(table: DeltaTable) -> pa.Table:
    """The snapshot's add actions: ``path`` (relative) and typed ``partition.<column>`` values."""
    return pa.table(table.get_add_actions(flatten=True))


def _partition_text(value: Any) -> str | None:
    """A partition value as Hive-style folder names spell it."""
    if value is None:
        return None
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)


def _hive_consistent(actions: pa.Table, partition_cols: list[str]) -> bool:
    """True when every file sits under ``col=value`` folders matching its partition values from the
    log, so Spark's partition discovery (with the table root as base path) yields the same values."""
    paths = actions.column("path").to_pylist()
    columns = {c: actions.column(f"partition.{c}").to_pylist() for c in partition_cols}
    for i, path in enumerate(paths):
        found = _partition_values(PurePosixPath(path).parent)
        expected = {c: _partition_text(columns[c][i]) for c in partition_cols}
        if found != expected:
            return False
    return True


def _scan(spark: SparkSession, table: DeltaTable, actions: pa.Table) -> DataFrame:
    """ONE Spark scan of the files of ``actions`` with the table's columns in the table's order.

    Partition columns are not in the data files: a constant column when all files share one partition,
    otherwise Spark's partition discovery from the Hive-style folders (checked against the log first);
    only tables whose folders do not match the log fall back to one scan per partition.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    schema = spark_schema(table)
    partition_cols = list(table.metadata().partition_columns)
    root = storage.spark_uri(table.table_uri.rstrip("/"))
    if actions.num_rows == 0:
        return spark.createDataFrame([], schema)
    files = [f"{root}/{p}" for p in actions.column("path").to_pylist()]
    ordered = [F.col(f.name) for f in schema.fields]
    if not partition_cols:
        return spark.read.schema(schema).parquet(*files)
    data_schema = StructType([f for f in schema.fields if f.name not in partition_cols])
    rows = list(zip(*[actions.column(f"partition.{c}").to_pylist() for c in partition_cols], strict=True))

    def constants(values: tuple[Any, ...]) -> list[Any]:
        return [
            F.lit(_partition_text(v)).cast(schema[c].dataType).alias(c)
            for c, v in zip(partition_cols, values, strict=True)
        ]

    distinct = sorted(set(rows), key=str)
    if len(distinct) == 1:
        part = spark.read.schema(data_schema).parquet(*files)
        return part.select(*[F.col(f.name) for f in data_schema.fields], *constants(distinct[0]))
    if _hive_consistent(actions, partition_cols):
        # the declared schema fixes the partition columns' types; discovery only parses the folder names
        return spark.read.schema(schema).option("basePath", root).parquet(*files).select(*ordered)
    frames = []
    for values in distinct:
        chosen = [f for f, key in zip(files, rows, strict=True) if key == values]
        part = spark.read.schema(data_schema).parquet(*chosen)
        frames.append(part.select(*[F.col(f.name) for f in data_schema.fields], *constants(values)))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out.select(*ordered)


def read_table(
    spark: SparkSession, table_uri: str, name: str, version: int | None = None
) -> tuple[DataFrame, int]:
    """Read a Delta table's snapshot (optionally at ``version``) with Spark; returns (df, version)."""
    table = open_table(table_uri, name, version)
    return _scan(spark, table, _add_actions(table)), table.version()


def read_files_of(
    spark: SparkSession, table_uri: str, name: str, files: list[str], version: int | None = None
) -> DataFrame:
    """Only the data files ``files`` (paths relative to the root, decoded) of a Delta table's
    snapshot: the new commits' files of an incremental refresh. Read as the whole table is (one
    scan, the partition columns from the log), by either engine: a path table's files are Parquet.
    A file no longer in the snapshot (compacted or removed since the run decided) is an
    ``InputError``: the next run decides again."""
    from urllib.parse import unquote

    table = open_table(table_uri, name, version)
    actions = _add_actions(table)
    wanted = set(files)
    keep = pa.array([unquote(p) in wanted for p in actions.column("path").to_pylist()], pa.bool_())
    chosen = actions.filter(keep)
    if chosen.num_rows != len(wanted):
        raise InputError(
            f"input '{name}': {len(wanted) - chosen.num_rows} of its {len(wanted)} new Delta file(s) "
            f"are no longer in version {table.version()} of {table_uri}: the table changed while the run "
            "read it; run again"
        )
    return _scan(spark, table, chosen)


def _partition_column(table: DeltaTable, name: str, column: str, actions: pa.Table) -> pa.ChunkedArray:
    if column not in table.metadata().partition_columns:
        raise InputError(f"table '{name}' is not partitioned by {column}")
    return actions.column(f"partition.{column}")


def read_partition(
    spark: SparkSession, table_uri: str, name: str, column: str, value: PartitionValue
) -> DataFrame:
    """The latest snapshot's rows of partition ``column == value``: the log picks the files, Spark
    scans only those, once."""
    table = open_table(table_uri, name)
    actions = _add_actions(table)
    if actions.num_rows:
        values = _partition_column(table, name, column, actions)
        actions = actions.filter(pc.equal(values, pa.scalar(value).cast(values.type)))
    return _scan(spark, table, actions)


def latest_partition_before(table_uri: str, column: str, before: PartitionValue) -> PartitionValue | None:
    """The largest partition value of ``column`` below ``before``, from the add actions in the log."""
    table = open_table(table_uri, table_uri)
    actions = _add_actions(table)
    if actions.num_rows == 0:
        return None
    values = _partition_column(table, table_uri, column, actions)
    earlier = values.filter(pc.less(values, pa.scalar(before).cast(values.type)))
    if len(earlier) == 0:
        return None
    found: PartitionValue | None = pc.max(earlier).as_py()
    return found


def vacuum(table_uri: str, retention_hours: int, *, enforce_retention: bool = True) -> list[str]:
    """Delete the files the latest version does not reference and older than ``retention_hours``:
    replaced versions, and never-committed files of crashed or conflicting writes (Delta's "full"
    vacuum lists the folder, not only the log's tombstones), plus staging folders a killed write
    left behind. ``enforce_retention``: delta-rs refuses a retention under the table's
    ``delta.deletedFileRetentionDuration`` (168 h by default)."""
    root = location(table_uri)
    deleted = delta_table(root).vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=enforce_retention,
        full=True,
    )
    deleted += _vacuum_staging(root, retention_hours)
    expire_log(root, retention_hours)
    return list(deleted)


def _vacuum_staging(root: str, retention_hours: int) -> list[str]:
    """delta-rs skips folders starting with "_" (the log's convention); a SIGKILL during Spark's write
    leaves its staging folder there. A staging folder younger than the retention may be a live write.
    Returns the files deleted, relative to the table."""
    import time

    from pyarrow import fs

    files, base = storage.filesystem(root)
    staging = f"{base}/{STAGING}"
    cutoff_ns = int((time.time() - retention_hours * 3600) * 1e9)
    folders: dict[str, list[fs.FileInfo]] = {}
    for info in files.get_file_info(fs.FileSelector(staging, recursive=True, allow_not_found=True)):
        folders.setdefault(info.path[len(staging) + 1 :].split("/", 1)[0], []).append(info)
    deleted: list[str] = []
    for folder, infos in sorted(folders.items()):
        found = [i for i in infos if i.type == fs.FileType.File]
        newest = max((i.mtime_ns or 0 for i in found or infos), default=0)
        if newest <= cutoff_ns:
            deleted += [i.path[len(base) + 1 :] for i in found]
            with contextlib.suppress(OSError):
                files.delete_dir(f"{staging}/{folder}")
    if storage.is_local(files):
        with contextlib.suppress(OSError):  # only when empty
            os.rmdir(staging)
    return deleted


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


class DeltaRsEngine(DeltaRsOperations):
    """The embedded engine: Spark writes Parquet files, delta-rs commits them (module docstring);
    MERGE, compaction and table properties come from ``DeltaRsOperations``."""

    name: EngineName = "delta-rs"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def locate(self, root: str, catalog: str | None, schema: str | None, table: str) -> str:
        if catalog and schema:
            raise ConfigError("output.catalog/output.schema need lakehouse.engine=delta-spark")
        return table_location(root, None, None, table)

    def exists(self, target: str) -> bool:
        return not is_catalog_name(target) and is_delta_table(target)

    def current_version(self, target: str) -> int | None:
        return latest_log_version(location(target))

    def read(self, target: str, name: str, version: int | None = None) -> tuple[DataFrame, int]:
        return read_table(self.spark, target, name, version)

    def read_partition(self, target: str, name: str, column: str, value: PartitionValue) -> DataFrame:
        return read_partition(self.spark, target, name, column, value)

    def latest_partition_before(
        self, target: str, column: str, before: PartitionValue
    ) -> PartitionValue | None:
        return latest_partition_before(target, column, before)

    def write(
        self,
        df: DataFrame,
        target: str,
        *,
        mode: WriteMode,
        partition_by: list[str],
        partition_value: dict[str, str] | None,
        app_id: str,
        txn_version: int,
        before_commit: Callable[[], None] | None = None,
        since_version: int | None = None,
    ) -> CommitResult:
        return write_table(
            df,
            target,
            mode=mode,
            partition_by=partition_by,
            partition_value=partition_value,
            app_id=app_id,
            txn_version=txn_version,
            before_commit=before_commit,
            since_version=since_version,
        )

    def delete_keys(self, target: str, column: str, values: list[str]) -> int:
        table = delta_table(target)
        if not values or column not in [f.name for f in table.schema().fields]:
            return 0
        metrics = table.delete(f"{column} IN ({sql_in_list(values)})")
        return int(metrics.get("num_deleted_rows", 0) or 0)

    def vacuum(self, target: str, retention_hours: int, *, enforce_retention: bool = True) -> list[str]:
        return vacuum(target, retention_hours, enforce_retention=enforce_retention)

    def history(self, target: str, limit: int | None = None) -> list[Commit]:
        commits = []
        for entry in delta_table(target).history(limit):
            millis = entry.get("timestamp")
            commits.append(
                Commit(
                    version=int(entry["version"]),
                    timestamp=None
                    if millis is None
                    else dt.datetime.fromtimestamp(int(millis) / 1000, tz=dt.timezone.utc),
                    operation=str(entry.get("operation", "")),
                    parameters={k: _text(v) for k, v in (entry.get("operationParameters") or {}).items()},
                    metrics={k: _text(v) for k, v in (entry.get("operationMetrics") or {}).items()},
                )
            )
        return sorted(commits, key=lambda c: c.version, reverse=True)
