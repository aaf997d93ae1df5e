"""The only place segspark reads inputs and writes outputs (DESIGN.md, "Table engines")."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pyspark.sql import functions as F

from segspark import schema as S
from segspark.errors import ConfigError, InputError
from segspark.io import delta_rs, delta_spark
from segspark.io.delta_rs import CommitResult

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from segspark.config import InputTable, Settings

log = logging.getLogger(__name__)

Engine = Literal["delta-spark", "delta-rs"]


@dataclass(frozen=True)
class InputInfo:
    """Lineage of one input read: where it came from and which version."""

    name: str
    location: str
    format: str
    version: int | None


def resolve_engine(spark: SparkSession, wanted: str) -> Engine:
    if wanted == "delta-spark":
        return "delta-spark"
    if wanted == "delta-rs":
        return "delta-rs"
    if os.environ.get("DATABRICKS_RUNTIME_VERSION") or delta_spark.delta_available(spark):
        return "delta-spark"
    return "delta-rs"


class Lakehouse:
    """Reads the configured inputs and writes output tables through one Delta engine."""

    def __init__(self, spark: SparkSession, settings: Settings, engine: Engine | None = None) -> None:
        self.spark = spark
        self.settings = settings
        self.engine: Engine = engine or resolve_engine(spark, settings.lakehouse.engine)
        out = settings.output
        if (out.catalog is None) != (out.schema_ is None):
            raise ConfigError("output.catalog and output.schema must be set together (or neither)")
        log.info("lakehouse engine: %s", self.engine)

    # ---- outputs ------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.settings.output.path).resolve()

    def target(self, name: str) -> str:
        out = self.settings.output
        if out.catalog and out.schema_:
            if self.engine != "delta-spark":
                raise ConfigError("output.catalog/output.schema need lakehouse.engine=delta-spark")
            return f"{out.catalog}.{out.schema_}.{name}"
        return str(self.root / "tables" / name)

    def write(
        self,
        df: DataFrame,
        name: str,
        *,
        run_id: str,
        as_of_date: dt.date,
        txn_version: int = 0,
        before_commit: Callable[[], None] | None = None,
    ) -> CommitResult:
        """Write one output table in one commit, stamped with ``run_id`` and ``as_of_date``.

        Snapshot tables replace only their ``as_of_date`` partition; append tables append. A retried
        run (same ``run_id``) commits nothing twice.
        """
        if name not in S.SNAPSHOT_TABLES and name not in S.APPEND_TABLES:
            raise ValueError(f"unknown output table {name!r}: add it to segspark.schema")
        stamped = df.withColumns(
            {S.RUN_ID: F.lit(run_id), S.AS_OF_DATE: F.lit(as_of_date).cast("date")}
        )
        snapshot = name in S.SNAPSHOT_TABLES
        mode: delta_rs.WriteMode = "overwrite_partition" if snapshot else "append"
        spec = {
            "mode": mode,
            "partition_by": [S.AS_OF_DATE] if snapshot else [],
            "partition_value": {S.AS_OF_DATE: as_of_date.isoformat()} if snapshot else None,
            "app_id": f"segspark-{run_id}",
            "txn_version": txn_version,
        }
        target = self.target(name)
        if self.engine == "delta-spark":
            version = delta_spark.write_table(stamped, target, **spec)  # type: ignore[arg-type]
            return CommitResult(version=version, files=-1, rows=-1, skipped=False)
        return delta_rs.write_table(stamped, target, before_commit=before_commit, **spec)  # type: ignore[arg-type]

    def write_dataset(self, df: DataFrame, path: str) -> CommitResult:
        """Write a whole Delta table at ``path`` in one commit, replacing any previous content
        (used by ``segspark generate`` for the synthetic input lakehouse)."""
        if self.engine == "delta-spark":
            df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
            return CommitResult(version=None, files=-1, rows=-1, skipped=False)
        import uuid

        return delta_rs.write_table(
            df,
            path,
            mode="overwrite",
            partition_by=[],
            partition_value=None,
            app_id=f"segspark-generate-{uuid.uuid4().hex[:8]}",
            txn_version=0,
        )

    def exists(self, name: str) -> bool:
        target = self.target(name)
        if self.engine == "delta-rs":
            from deltalake import DeltaTable

            return bool(DeltaTable.is_deltatable(target))
        try:
            delta_spark.read_table(self.spark, target, name)
        except InputError:
            return False
        return True

    def read_output(self, name: str, version: int | None = None) -> DataFrame:
        target = self.target(name)
        if self.engine == "delta-spark":
            return delta_spark.read_table(self.spark, target, name, version)[0]
        return delta_rs.read_table(self.spark, target, name, version)[0]

    def read_snapshot(self, name: str, as_of_date: dt.date) -> DataFrame:
        """One ``as_of_date`` partition of a snapshot table, without the run stamp columns."""
        df = self.read_output(name)
        return df.where(F.col(S.AS_OF_DATE) == F.lit(as_of_date)).drop(S.RUN_ID, S.AS_OF_DATE)

    def read_latest_snapshot(self, name: str, before: dt.date) -> DataFrame | None:
        """The newest ``as_of_date`` partition of a snapshot table strictly before ``before``."""
        if not self.exists(name):
            return None
        df = self.read_output(name)
        last = df.where(F.col(S.AS_OF_DATE) < F.lit(before)).agg(F.max(S.AS_OF_DATE)).first()
        if last is None or last[0] is None:
            return None
        return df.where(F.col(S.AS_OF_DATE) == F.lit(last[0]))

    def delete_keys(self, name: str, column: str, values: list[str]) -> int:
        """Delete the rows whose ``column`` is one of ``values`` (right to erasure); returns rows deleted.

        One commit per table. Old versions keep the rows until ``vacuum`` removes their files.
        """
        if not values or not self.exists(name):
            return 0
        quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
        if self.engine == "delta-spark":
            before = self.read_output(name).where(F.col(column).isin(values)).count()
            if before:
                self.spark.sql(f"DELETE FROM {self._sql_ref(name)} WHERE {column} IN ({quoted})")
            return before
        from deltalake import DeltaTable

        table = DeltaTable(self.target(name))
        if column not in [f.name for f in table.schema().fields]:
            return 0
        metrics = table.delete(f"{column} IN ({quoted})")
        return int(metrics.get("num_deleted_rows", 0) or 0)

    def vacuum(self, name: str) -> list[str]:
        if self.engine != "delta-rs":
            self.spark.sql(f"VACUUM {self._sql_ref(name)}")
            return []
        return delta_rs.vacuum(self.target(name), self.settings.lakehouse.vacuum_retention_hours)

    def _sql_ref(self, name: str) -> str:
        target = self.target(name)
        return target if delta_spark.is_catalog_name(target) else f"delta.`{target}`"

    # ---- inputs -------------------------------------------------------------------------------
    def read_input(self, name: str) -> tuple[DataFrame, InputInfo]:
        """Read input ``name`` (transactions, customers, events, marketing_spend) as configured."""
        cfg: InputTable = getattr(self.settings.input, name)
        if not cfg.configured:
            raise InputError(
                f"input '{name}' is not configured: set input.{name}.path (or input.{name}.table)"
            )
        location = cfg.location
        if cfg.format == "delta":
            if cfg.table:
                if self.engine != "delta-spark":
                    raise InputError(
                        f"input '{name}': catalog table {cfg.table} needs lakehouse.engine=delta-spark; "
                        f"with the embedded engine give input.{name}.path"
                    )
                df, version = delta_spark.read_table(self.spark, cfg.table, name, cfg.version)
            elif self.engine == "delta-spark":
                df, version = delta_spark.read_table(self.spark, location, name, cfg.version)
            else:
                if not Path(location).exists() and "://" not in location:
                    raise InputError(f"input '{name}': no table at {location} (input.{name}.path)")
                df, version = delta_rs.read_table(self.spark, location, name, cfg.version)
            return df, InputInfo(name, location, "delta", version)
        if cfg.version is not None:
            raise ConfigError(f"input.{name}.version applies to Delta tables only, not {cfg.format}")
        if cfg.table:
            df = self.spark.read.table(cfg.table)
            return df, InputInfo(name, location, cfg.format, None)
        if "://" not in location and not Path(location).exists():
            raise InputError(f"input '{name}': no {cfg.format} data at {location} (input.{name}.path)")
        reader = self.spark.read
        if cfg.format == "csv":
            # every column read as a string: ingest casts with ANSI-safe try_cast and quarantines failures
            reader = reader.option("header", "true").option("inferSchema", "false")
        for key, value in cfg.options.items():
            reader = reader.option(key, value)
        df = reader.format(cfg.format).load(location)
        return df, InputInfo(name, location, cfg.format, None)

    def input_configured(self, name: str) -> bool:
        cfg: InputTable = getattr(self.settings.input, name)
        return cfg.configured
