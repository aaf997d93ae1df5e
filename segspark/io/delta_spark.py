"""The native engine: Delta Lake's own Spark data source (Databricks, clusters with the Delta jars).

Kept deliberately thin and standard: ``format("delta")`` with Delta's idempotent-write options
``txnAppId``/``txnVersion``, ``replaceWhere`` for a snapshot table's own partition, Unity Catalog
three-part names or paths. Run a cluster with it via
``spark-submit --packages io.delta:delta-spark_2.13:4.4.1 --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog``;
Databricks has it built in.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from segspark.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from segspark.io.delta_rs import WriteMode

log = logging.getLogger(__name__)


def is_catalog_name(target: str) -> bool:
    return "/" not in target and ":" not in target and target.count(".") >= 1


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


def _history_version(spark: SparkSession, target: str) -> int:
    ref = target if is_catalog_name(target) else f"delta.`{target}`"
    row = spark.sql(f"DESCRIBE HISTORY {ref} LIMIT 1").select("version").first()
    return int(row[0]) if row else 0


def write_table(
    df: DataFrame,
    target: str,
    *,
    mode: WriteMode,
    partition_by: list[str],
    partition_value: dict[str, str] | None,
    app_id: str,
    txn_version: int,
) -> int:
    """Write with Delta's own writer; returns the table version after the write."""
    spark = df.sparkSession
    writer = df.write.format("delta").option("txnAppId", app_id).option("txnVersion", txn_version)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if mode == "append":
        writer = writer.mode("append")
    elif mode == "overwrite":
        writer = writer.mode("overwrite").option("overwriteSchema", "true")
    else:
        condition = " AND ".join(f"{k} = '{v}'" for k, v in (partition_value or {}).items())
        writer = writer.mode("overwrite").option("replaceWhere", condition)
    if is_catalog_name(target):
        writer.saveAsTable(target)
    else:
        writer.save(target)
    return _history_version(spark, target)


def read_table(spark: SparkSession, target: str, name: str, version: int | None = None) -> tuple[DataFrame, int]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    try:
        df = reader.table(target) if is_catalog_name(target) else reader.load(target)
        found = version if version is not None else _history_version(spark, target)
    except Exception as exc:
        raise InputError(f"table '{name}': cannot read Delta table {target}: {str(exc).splitlines()[0]}") from None
    return df, found
