"""One Delta table through Delta's Spark data source, as both the engine and its MERGE and OPTIMIZE use it.

Its name in SQL (``delta.`path``` or a catalog name), its read (optionally at a version), its history
and newest commit (a path table on a local or mounted file system from its log's files, with no Spark
job), the check for another run's commit since this run started, and the error texts Delta raises for
a missing table and for a lost commit race.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from segspark.errors import InputError
from segspark.io import storage
from segspark.io.delta_log import commit_actions, conflicting_commit, latest_log_version
from segspark.io.engine import TableNotFound, WriteMode, conflict_error, is_catalog_name, table_name

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession


# Spark/Delta error texts that mean "nothing there" rather than "something is wrong with it".
NOT_FOUND = (
    "PATH_NOT_FOUND",
    "DELTA_PATH_DOES_NOT_EXIST",
    "DELTA_MISSING_DELTA_TABLE",
    "is not a Delta table",
    "doesn't exist",
    "TABLE_OR_VIEW_NOT_FOUND",
)


# Delta's optimistic concurrency control: another transaction committed what this one read or wrote
CONCURRENT_ERRORS = (
    "DELTA_CONCURRENT",
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DELTA_METADATA_CHANGED",
    "DELTA_PROTOCOL_CHANGED",
)


def log_root(target: str) -> str | None:
    """Where a path table's log is read as files (``delta_log``, with no Spark job): its folder on a
    local (or mounted) file system, or its location on S3; None for a catalog name or another store."""
    if is_catalog_name(target):
        return None
    if storage.is_s3(target):
        return target.rstrip("/")
    if "://" in target and not target.startswith("file:"):
        return None
    return str(Path(target.removeprefix("file://").removeprefix("file:")))


def sql_ref(target: str) -> str:
    """``target`` as SQL names it: a catalog name as is, a path as ``delta.`path```."""
    return target if is_catalog_name(target) else f"delta.`{target}`"


def history(spark: SparkSession, target: str, limit: int | None = None) -> list[Row]:
    query = f"DESCRIBE HISTORY {sql_ref(target)}" + (f" LIMIT {int(limit)}" if limit else "")
    return spark.sql(query).collect()  # one row per commit, bounded by the limit: small


def history_version(spark: SparkSession, target: str) -> int:
    return last_commit(spark, target)[0]


def last_commit(spark: SparkSession, target: str) -> tuple[int, dict[str, str] | None]:
    """The table's newest version and that commit's operation metrics. A path table on a local or
    mounted file system or on S3: from its log's files, with no Spark job (DESCRIBE HISTORY replays the log
    in one; a small write paid for three); elsewhere DESCRIBE HISTORY."""
    root = log_root(target)
    if root is not None:
        version = latest_log_version(root)
        if version >= 0:
            actions = commit_actions(root, version)
            info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            metrics = info.get("operationMetrics")
            return version, {k: str(v) for k, v in metrics.items()} if metrics else None
    rows = history(spark, target, 1)
    return (int(rows[0]["version"]), rows[0]["operationMetrics"]) if rows else (0, None)


def metric(metrics: dict[str, str] | None, *names: str) -> int:
    for name in names:
        value = (metrics or {}).get(name)
        if value is not None:
            return int(value)
    return -1


def check_conflict(
    target: str,
    since_version: int | None,
    app_id: str,
    mode: WriteMode,
    partition_value: dict[str, str] | None,
) -> None:
    """Raise ``ConcurrentWriteError`` when another run committed rows this overwrite would replace
    after this run started (``since_version``), as the embedded engine does. Only path tables on a
    local or mounted file system or on S3, whose log is read as files; elsewhere Delta's own optimistic
    concurrency control decides (it catches writers whose transactions overlap, not a run that
    committed between this run's start and this write)."""
    root = log_root(target)
    if root is None or since_version is None or mode == "append":
        return
    latest = latest_log_version(root)
    conflict = conflicting_commit(root, since_version, latest, app_id, mode, partition_value)
    if conflict is not None:
        raise conflict_error(table_name(target), conflict, since_version)


def read_table(
    spark: SparkSession, target: str, name: str, version: int | None = None
) -> tuple[DataFrame, int]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    try:
        df = reader.table(target) if is_catalog_name(target) else reader.load(target)
        df.schema  # noqa: B018  (resolves the table now, so a missing one fails here)
        found = version if version is not None else history_version(spark, target)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if version is None and any(marker in str(exc) for marker in NOT_FOUND):
            raise TableNotFound(f"table '{name}': no Delta table at {target}") from None
        raise InputError(f"table '{name}': cannot read Delta table {target}: {first}") from None
    return df, found
