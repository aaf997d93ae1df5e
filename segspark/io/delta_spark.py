"""The native engine: Delta Lake's own Spark data source (Databricks, clusters with the Delta jars).

Kept deliberately thin and standard: ``format("delta")`` with Delta's idempotent-write options
``txnAppId``/``txnVersion``, ``replaceWhere`` for a snapshot table's own partition, ``overwriteSchema``
for a whole-table overwrite, Unity Catalog three-part names or paths. Run a cluster with it via
``spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0
--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog``;
Databricks has it built in.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from segspark.errors import InputError
from segspark.io.delta_log import (
    LOG_RETENTION,
    delta_table,
    expire_log,
    latest_log_version,
    unreferenced_files,
)
from segspark.io.delta_spark_ops import DeltaSparkOperations
from segspark.io.delta_spark_table import (
    CONCURRENT_ERRORS,
    check_conflict,
    history,
    history_version,
    last_commit,
    log_root,
    metric,
    read_table,
    sql_ref,
)
from segspark.io.engine import (
    MIN_SAFE_RETENTION_HOURS,
    Commit,
    CommitResult,
    ConcurrentWriteError,
    EngineName,
    PartitionValue,
    WriteMode,
    is_catalog_name,
    sql_in_list,
    table_location,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession

log = logging.getLogger(__name__)

__all__ = ["DeltaSparkEngine", "delta_available", "is_catalog_name", "is_remote", "read_table", "write_table"]


# an append that loses Delta's commit race to another writer is written again this often
MAX_APPEND_ATTEMPTS = 5


def delta_available(spark: SparkSession) -> bool:
    """True when Delta's Spark data source loads (checked without the JVM gateway)."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" in extensions:
        return True
    if spark.conf.get("spark.databricks.clusterUsageTags.clusterId", None):
        return True  # Databricks (also through Databricks Connect): Delta is built in
    if is_remote(spark):
        return False  # a failed probe would log a server-side stack trace; configure the engine instead
    if not _classpath_may_hold_delta(spark):
        return False
    try:
        spark.read.format("delta").load("/segspark-probe-does-not-exist").schema  # noqa: B018
    except Exception as exc:
        text = str(exc)
        return "DATA_SOURCE_NOT_FOUND" not in text and "Failed to find data source" not in text
    return True


# the settings that put jars beyond Spark's own on a session's class path
_CLASSPATH_SETTINGS = ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath")


def _classpath_may_hold_delta(spark: SparkSession) -> bool:
    """False when nothing can have put Delta's data source on the session's class path: no setting
    adds jars and Spark's own ``jars`` folder holds no Delta jar (a plain ``pip install pyspark``
    session: ``lakehouse.engine: auto`` on the job's own local session). The probe, a data-source
    lookup that loads every registered source, costs 2-4 s on a fresh JVM; with any added jars it
    runs (they may bundle Delta under any name)."""
    if any(spark.conf.get(key, None) for key in _CLASSPATH_SETTINGS):
        return True
    import pyspark

    home = os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__)
    return any(Path(home, "jars").glob("delta*.jar"))


def is_remote(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def write_table(
    df: DataFrame,
    target: str,
    *,
    mode: WriteMode,
    partition_by: list[str],
    partition_value: dict[str, str] | None,
    app_id: str,
    txn_version: int,
    existed: bool = True,
) -> CommitResult:
    """Write with Delta's own writer in one commit; Delta skips a (txnAppId, txnVersion) it has seen."""
    spark = df.sparkSession
    before = history_version(spark, target) if existed else None
    writer = df.write.format("delta").option("txnAppId", app_id).option("txnVersion", txn_version)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if mode == "append":
        # like delta-rs, a declared column added by a newer segspark joins the table's schema
        writer = writer.mode("append").option("mergeSchema", "true")
    elif mode == "overwrite":
        writer = writer.mode("overwrite").option("overwriteSchema", "true")
    else:
        condition = " AND ".join(f"{k} = '{v}'" for k, v in (partition_value or {}).items())
        if not condition:
            raise ValueError("overwrite_partition needs a partition value")
        writer = writer.mode("overwrite").option("replaceWhere", condition).option("mergeSchema", "true")
    try:
        if is_catalog_name(target):
            writer.saveAsTable(target)
        else:
            writer.save(target)
    except Exception as exc:
        if not any(marker in str(exc) for marker in CONCURRENT_ERRORS):
            raise
        lines = str(exc).splitlines()
        detail = next((x.strip() for x in lines if any(m in x for m in CONCURRENT_ERRORS)), lines[0])[:240]
        raise ConcurrentWriteError(
            f"table '{table_name(target)}': concurrent write: another writer committed to it during this "
            f"write, which was not committed ({detail}); rerun when it has finished"
        ) from None
    version, metrics = last_commit(spark, target)
    if before is not None and version == before:
        log.info("%s: already committed by %s (txn %s); skipping", target, app_id, txn_version)
        return CommitResult(version=None, files=0, rows=0, skipped=True)
    return CommitResult(
        version=version,
        files=metric(metrics, "numAddedFiles", "numFiles"),
        rows=metric(metrics, "numOutputRows"),
        skipped=False,
    )


def table_name(target: str) -> str:
    return target.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[-1]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


class DeltaSparkEngine(DeltaSparkOperations):
    """Delta's own Spark data source: paths or catalog names (``catalog.schema.table``); MERGE,
    compaction and table properties come from ``DeltaSparkOperations``."""

    name: EngineName = "delta-spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def locate(self, root: str, catalog: str | None, schema: str | None, table: str) -> str:
        return table_location(root, catalog, schema, table)

    def exists(self, target: str) -> bool:
        root = log_root(target)
        if root is not None:  # the log's files say it, with no Spark job
            return latest_log_version(root) >= 0
        try:
            read_table(self.spark, target, target)
        except InputError:
            return False
        return True

    def read(self, target: str, name: str, version: int | None = None) -> tuple[DataFrame, int]:
        return read_table(self.spark, target, name, version)

    def read_partition(self, target: str, name: str, column: str, value: PartitionValue) -> DataFrame:
        # a filter on a partition column is resolved against the Delta log: one scan of that partition's files
        return self.read(target, name)[0].where(F.col(column) == F.lit(value))

    def latest_partition_before(
        self, target: str, column: str, before: PartitionValue
    ) -> PartitionValue | None:
        # MAX of a partition column under a partition filter is answered from the log's partition values
        # by Delta's metadata-only query rule (spark.databricks.delta.optimizeMetadataQuery.enabled)
        df = self.read(target, target)[0]
        row = df.where(F.col(column) < F.lit(before)).agg(F.max(column)).first()
        found: PartitionValue | None = None if row is None else row[0]
        return found

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
        # a path table's log is checked for another run's commit since this run started (as the
        # embedded engine does); Delta's optimistic concurrency control catches overlapping writes
        if before_commit is not None:
            before_commit()  # Delta writes files and commits in one call: the hook runs before both
        check_conflict(target, since_version, app_id, mode, partition_value)
        for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
            existed = self.exists(target)
            try:
                return write_table(
                    df,
                    target,
                    mode=mode,
                    partition_by=partition_by,
                    partition_value=partition_value,
                    app_id=app_id,
                    txn_version=txn_version,
                    existed=existed,
                )
            except ConcurrentWriteError:
                # appends never conflict (as on the embedded engine): one that lost a race (two
                # runs creating the table at once) is written again; its app transaction makes a
                # second commit of the same rows impossible
                if mode == "append" and attempt < MAX_APPEND_ATTEMPTS:
                    log.info("%s: another writer committed first; appending again", target)
                    continue
                check_conflict(target, since_version, app_id, mode, partition_value)  # names the run
                raise
        raise AssertionError("unreachable")

    def delete_keys(self, target: str, column: str, values: list[str]) -> int:
        # one DELETE, which returns the rows it deleted and commits nothing when none match; a path
        # table's columns come from its log (no Spark job)
        root = log_root(target)
        if root is not None:
            columns = [f.name for f in delta_table(root).schema().fields]
        else:
            columns = self.read(target, target)[0].columns
        if not values or column not in columns:
            return 0
        statement = f"DELETE FROM {sql_ref(target)} WHERE {column} IN ({sql_in_list(values)})"
        rows = self.spark.sql(statement).collect()  # one row: num_affected_rows
        return int(rows[0][0]) if rows else 0

    def current_version(self, target: str) -> int | None:
        # a path table's newest commit from its log's file names (no Spark job); None elsewhere:
        # Delta's own optimistic concurrency control decides there (``check_conflict``)
        root = log_root(target)
        return None if root is None else latest_log_version(root)

    def vacuum(self, target: str, retention_hours: int, *, enforce_retention: bool = True) -> list[str]:
        # A path table's unreferenced files are listed by the driver (no Spark job): with none there
        # is nothing a VACUUM could delete and it is skipped; otherwise ONE VACUUM, the files gone
        # afterwards being what it deleted. Elsewhere a DRY RUN lists them, then the VACUUM.
        root = log_root(target)
        if root is None:
            doomed = [
                str(r[0]) for r in self._vacuum_sql(target, retention_hours, enforce_retention, dry=True)
            ]
            self._vacuum_sql(target, retention_hours, enforce_retention)
        else:
            candidates = unreferenced_files(root)
            if candidates:
                self._vacuum_sql(target, retention_hours, enforce_retention)
            left = set(unreferenced_files(root)) if candidates else set()
            doomed = [path for path in candidates if path not in left]
        self._expire_log(target, retention_hours)
        return doomed

    def _vacuum_sql(
        self, target: str, hours: int, enforce_retention: bool, *, dry: bool = False
    ) -> list[Row]:
        """One VACUUM statement (a DRY RUN returns as many rows as files it would delete). Delta
        refuses a retention under 168 h unless its check is off: off for this call only when forced."""
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        previous = self.spark.conf.get(check, "true")
        if not enforce_retention:
            self.spark.conf.set(check, "false")
        try:
            statement = f"VACUUM {sql_ref(target)} RETAIN {int(hours)} HOURS" + (" DRY RUN" if dry else "")
            return self.spark.sql(statement).collect()
        finally:
            self.spark.conf.set(check, previous or "true")

    def _expire_log(self, target: str, retention_hours: int) -> None:
        """Trim the Delta log to the vacuum's retention: an erase's DELETE commit records the erased
        keys in its predicate, and every commit's file statistics hold the min and max keys of its
        files, for ``delta.logRetentionDuration`` (30 days by default).

        A path table (local, mounted or on an object store) is checkpointed and trimmed now by
        delta-rs, as for its own tables: Delta's Spark engine trims only at its next automatic
        checkpoint, and only entries from before that day. A catalog table gets the vacuum's log
        retention, at least Delta's deleted-file retention (Delta refuses a shorter one), and Delta
        trims at its next checkpoint."""
        if not is_catalog_name(target):
            expire_log(target, retention_hours)
            return
        hours = max(int(retention_hours), MIN_SAFE_RETENTION_HOURS)
        self.spark.sql(
            f"ALTER TABLE {sql_ref(target)} SET TBLPROPERTIES ('{LOG_RETENTION}' = 'interval {hours} hours')"
        )

    def history(self, target: str, limit: int | None = None) -> list[Commit]:
        commits = []
        for row in history(self.spark, target, limit):
            stamp = row["timestamp"]
            commits.append(
                Commit(
                    version=int(row["version"]),
                    timestamp=stamp if isinstance(stamp, dt.datetime) else None,
                    operation=str(row["operation"]),
                    parameters={k: _text(v) for k, v in (row["operationParameters"] or {}).items()},
                    metrics={k: _text(v) for k, v in (row["operationMetrics"] or {}).items()},
                )
            )
        return sorted(commits, key=lambda c: c.version, reverse=True)
