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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from segspark.errors import InputError
from segspark.io.delta_spark_ops import DeltaSparkOperations
from segspark.io.engine import (
    Commit,
    CommitResult,
    EngineName,
    PartitionValue,
    TableNotFound,
    WriteMode,
    is_catalog_name,
    sql_in_list,
    table_location,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession

log = logging.getLogger(__name__)

__all__ = ["DeltaSparkEngine", "delta_available", "is_catalog_name", "is_remote", "read_table", "write_table"]

# Spark/Delta error texts that mean "nothing there" rather than "something is wrong with it".
_NOT_FOUND = (
    "PATH_NOT_FOUND",
    "DELTA_PATH_DOES_NOT_EXIST",
    "DELTA_MISSING_DELTA_TABLE",
    "is not a Delta table",
    "doesn't exist",
    "TABLE_OR_VIEW_NOT_FOUND",
)


def delta_available(spark: SparkSession) -> bool:
    """True when Delta's Spark data source loads (checked without the JVM gateway)."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" in extensions:
        return True
    if spark.conf.get("spark.databricks.clusterUsageTags.clusterId", None):
        return True  # Databricks (also through Databricks Connect): Delta is built in
    if is_remote(spark):
        return False  # a failed probe would log a server-side stack trace; configure the engine instead
    try:
        spark.read.format("delta").load("/segspark-probe-does-not-exist").schema  # noqa: B018
    except Exception as exc:
        text = str(exc)
        return "DATA_SOURCE_NOT_FOUND" not in text and "Failed to find data source" not in text
    return True


def is_remote(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def sql_ref(target: str) -> str:
    """``target`` as SQL names it: a catalog name as is, a path as ``delta.`path```."""
    return target if is_catalog_name(target) else f"delta.`{target}`"


def _history(spark: SparkSession, target: str, limit: int | None = None) -> list[Row]:
    query = f"DESCRIBE HISTORY {sql_ref(target)}" + (f" LIMIT {int(limit)}" if limit else "")
    return spark.sql(query).collect()  # one row per commit, bounded by the limit: small


def _history_version(spark: SparkSession, target: str) -> int:
    rows = _history(spark, target, 1)
    return int(rows[0]["version"]) if rows else 0


def _metric(metrics: dict[str, str] | None, *names: str) -> int:
    for name in names:
        value = (metrics or {}).get(name)
        if value is not None:
            return int(value)
    return -1


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
    before = _history_version(spark, target) if existed else None
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
    if is_catalog_name(target):
        writer.saveAsTable(target)
    else:
        writer.save(target)
    last = _history(spark, target, 1)[0]
    version = int(last["version"])
    if before is not None and version == before:
        log.info("%s: already committed by %s (txn %s); skipping", target, app_id, txn_version)
        return CommitResult(version=None, files=0, rows=0, skipped=True)
    metrics = last["operationMetrics"]
    return CommitResult(
        version=version,
        files=_metric(metrics, "numAddedFiles", "numFiles"),
        rows=_metric(metrics, "numOutputRows"),
        skipped=False,
    )


def read_table(
    spark: SparkSession, target: str, name: str, version: int | None = None
) -> tuple[DataFrame, int]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    try:
        df = reader.table(target) if is_catalog_name(target) else reader.load(target)
        df.schema  # noqa: B018  (resolves the table now, so a missing one fails here)
        found = version if version is not None else _history_version(spark, target)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if version is None and any(marker in str(exc) for marker in _NOT_FOUND):
            raise TableNotFound(f"table '{name}': no Delta table at {target}") from None
        raise InputError(f"table '{name}': cannot read Delta table {target}: {first}") from None
    return df, found


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


class DeltaSparkEngine(DeltaSparkOperations):
    """Delta's own Spark data source: paths or catalog names (``catalog.schema.table``); MERGE,
    compaction and table properties come from ``DeltaSparkOperations``."""

    name: EngineName = "delta-spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def locate(self, root: Path, catalog: str | None, schema: str | None, table: str) -> str:
        return table_location(root, catalog, schema, table)

    def exists(self, target: str) -> bool:
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
        # ``since_version`` is always None here (``current_version``): Delta's own optimistic
        # concurrency control decides conflicts (a concurrent replaceWhere of the same partition
        # fails with a ConcurrentAppend/ConcurrentDeleteRead exception)
        existed = self.exists(target)
        if before_commit is not None:
            before_commit()  # Delta writes files and commits in one call: the hook runs before both
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

    def delete_keys(self, target: str, column: str, values: list[str]) -> int:
        df = self.read(target, target)[0]
        if not values or column not in df.columns:
            return 0
        found = df.where(F.col(column).isin(values)).count()
        if found:
            self.spark.sql(f"DELETE FROM {sql_ref(target)} WHERE {column} IN ({sql_in_list(values)})")
        return found

    def current_version(self, target: str) -> int | None:
        return None  # Delta Spark checks concurrent writers itself

    def vacuum(self, target: str, retention_hours: int, *, enforce_retention: bool = True) -> list[str]:
        # Delta refuses a retention under 168 h unless the check is off (forced, for this call only)
        ref = sql_ref(target)
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        previous = self.spark.conf.get(check, "true")
        if not enforce_retention:
            self.spark.conf.set(check, "false")
        try:
            doomed = [
                str(r[0])
                for r in self.spark.sql(
                    f"VACUUM {ref} RETAIN {int(retention_hours)} HOURS DRY RUN"
                ).collect()  # the paths to delete: as many rows as files, listed for the caller
            ]
            self.spark.sql(f"VACUUM {ref} RETAIN {int(retention_hours)} HOURS").collect()
        finally:
            self.spark.conf.set(check, previous or "true")
        return doomed

    def history(self, target: str, limit: int | None = None) -> list[Commit]:
        commits = []
        for row in _history(self.spark, target, limit):
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
