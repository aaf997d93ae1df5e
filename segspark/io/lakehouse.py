"""The only place segspark reads inputs and writes outputs (docs/architecture.md, "The table engines")."""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from segspark import schema as S
from segspark import tables
from segspark.errors import ConfigError, InputError
from segspark.io import delta_log, delta_rs, delta_spark, delta_spark_table, inputs, storage
from segspark.io.engine import (
    CHANGE_DATA_FEED,
    MIN_SAFE_RETENTION_HOURS,
    Commit,
    CommitResult,
    Compaction,
    EngineName,
    MergeResult,
    TableEngine,
    TableNotFound,
    WriteMode,
    is_catalog_name,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from segspark.config import InputTable, Settings

log = logging.getLogger(__name__)

Engine = EngineName
# every table a run writes under the output location
OUTPUT_TABLES: frozenset[str] = S.SNAPSHOT_TABLES | S.APPEND_TABLES | S.SILVER_TABLES


def make_engine(spark: SparkSession, name: EngineName) -> TableEngine:
    """The engine called ``name`` bound to ``spark`` (here, not in ``engine``: the implementations
    import the protocol module, so it must not import them)."""
    if name == "delta-spark":
        return delta_spark.DeltaSparkEngine(spark)
    return delta_rs.DeltaRsEngine(spark)


def check_vacuum_retention(hours: int, force: bool) -> None:
    """Refuse a vacuum retention below Delta's safety minimum unless forced (a ``ConfigError``)."""
    if hours < MIN_SAFE_RETENTION_HOURS and not force:
        raise ConfigError(
            f"lakehouse.vacuum_retention_hours={hours} is below Delta's safety minimum of "
            f"{MIN_SAFE_RETENTION_HOURS} h: files a running job or a reader of an older version may still "
            "need would be deleted; pass --force to vacuum anyway"
        )


@dataclass(frozen=True)
class InputInfo:
    """Lineage of one input read: where it came from and which version."""

    name: str
    location: str
    format: str
    version: int | None


def resolve_engine(spark: SparkSession, wanted: str) -> tuple[Engine, str]:
    """The engine for ``lakehouse.engine`` on ``spark`` and why (one phrase, for the log line)."""
    if wanted == "delta-rs":
        return "delta-rs", "lakehouse.engine: delta-rs"
    if wanted == "delta-spark":
        if not delta_spark.is_remote(spark) and not delta_spark.delta_available(spark):
            raise ConfigError(
                "lakehouse.engine: delta-spark, but this Spark session cannot load Delta's Spark data "
                "source (io.delta:delta-spark): start it with Delta's jars, or set lakehouse.engine: auto"
            )
        return "delta-spark", "lakehouse.engine: delta-spark"
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "delta-spark", "auto: Databricks has Delta built in"
    if delta_spark.delta_available(spark):
        return "delta-spark", "auto: Delta's Spark jars are loaded in this session"
    return "delta-rs", (
        "auto: Delta's Spark jars are not loaded in this session; a local session loads them only "
        "for lakehouse.engine: delta-spark"
    )


@dataclass(frozen=True)
class _Layout:
    """How a kind of output table is written: its write mode and partitioning."""

    mode: WriteMode
    partitioned: bool


def _layout(name: str) -> _Layout:
    if name in S.SNAPSHOT_TABLES:
        return _Layout("overwrite_partition", partitioned=True)  # replace own as_of_date partition
    if name in S.APPEND_TABLES:
        return _Layout("append", partitioned=False)
    if name in S.SILVER_TABLES:
        return _Layout("overwrite", partitioned=False)  # the whole table, schema included
    raise ValueError(f"unknown output table {name!r}: add it to segspark.schema")


class Lakehouse:
    """Reads the configured inputs and writes output tables through one Delta engine."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        engine: Engine | None = None,
    ) -> None:
        self.spark = spark
        self.settings = settings
        storage.configure(settings.lakehouse.s3)
        why = "chosen by the caller"
        if engine is None:
            engine, why = resolve_engine(spark, settings.lakehouse.engine)
        self.engine: Engine = engine
        self._engine: TableEngine = make_engine(spark, self.engine)
        # output table -> its version when the run started (``pin_versions``): an overwrite fails
        # rather than replace what another run committed since
        self._since: dict[str, int | None] = {}
        # output tables whose change data feed property was checked against the setting (once a run)
        self._feed_checked: set[str] = set()
        out = settings.output
        if (out.catalog is None) != (out.schema_ is None):
            raise ConfigError("output.catalog and output.schema must be set together (or neither)")
        log.info("lakehouse engine: %s (%s)", self.engine, why)

    # ---- outputs ------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The output folder (a local ``output.path``; ``location`` names any)."""
        return Path(self.settings.output.path).resolve()

    @property
    def location(self) -> str:
        """``output.path`` as a location: an absolute local path or an object-store URI."""
        return storage.root_of(self.settings.output.path)

    def target(self, name: str) -> str:
        out = self.settings.output
        return self._engine.locate(self.location, out.catalog, out.schema_, name)

    def pin_versions(self) -> None:
        """Remember every output table's current version (the start of a run): from then on a write
        that would replace rows another run committed after that version fails with
        ``ConcurrentWriteError`` instead of silently overwriting them."""
        self._since = {name: self._engine.current_version(self.target(name)) for name in OUTPUT_TABLES}

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

        The frame must match the table's declared schema (``segspark.tables.check_schema``; narrower
        integers are widened to the declared type). Snapshot tables replace only their ``as_of_date``
        partition, append tables append, silver tables are replaced whole. A retried run (same
        ``run_id``) commits nothing twice.
        """
        layout = _layout(name)
        widen = tables.conform_schema(name, df.schema)
        if layout.mode == "append" and self.exists(name):
            df = self._within_existing(df, name)
        stamped = df.withColumns(
            {
                **{column: F.col(column).cast(type_) for column, type_ in widen.items()},
                S.RUN_ID: F.lit(run_id),
                S.AS_OF_DATE: F.lit(as_of_date).cast("date"),
            }
        )
        self._align_change_data_feed(name, stamped, layout)
        return self._engine.write(
            stamped,
            self.target(name),
            mode=layout.mode,
            partition_by=[S.AS_OF_DATE] if layout.partitioned else [],
            partition_value={S.AS_OF_DATE: as_of_date.isoformat()} if layout.partitioned else None,
            app_id=f"segspark-{run_id}",
            txn_version=txn_version,
            before_commit=before_commit,
            since_version=self._since.get(name),
        )

    def merge(
        self,
        df: DataFrame,
        name: str,
        keys: list[str],
        *,
        run_id: str,
        as_of_date: dt.date,
        txn_version: int = 0,
        delete_column: str | None = None,
    ) -> MergeResult:
        """Upsert ``df`` into output table ``name`` by ``keys`` in one commit (``TableEngine.merge``):
        matched rows are replaced, the others inserted (rows flagged in ``delete_column`` delete their
        match); merged rows are stamped with ``run_id`` and ``as_of_date``, the others keep theirs.

        The frame (without ``delete_column``) must match the table's declared schema, as for ``write``.
        No table yet: the rows (less the flagged ones) are written as its first commit. A retried run
        (same ``run_id``) merges nothing twice; a data commit by another run since this run started is
        a ``ConcurrentWriteError``.
        """
        layout = _layout(name)
        widen = tables.conform_schema(name, df.drop(delete_column).schema if delete_column else df.schema)
        stamped = df.withColumns(
            {
                **{column: F.col(column).cast(type_) for column, type_ in widen.items()},
                S.RUN_ID: F.lit(run_id),
                S.AS_OF_DATE: F.lit(as_of_date).cast("date"),
            }
        )
        target, app_id = self.target(name), f"segspark-{run_id}"
        self._align_change_data_feed(name, stamped.drop(delete_column) if delete_column else stamped, layout)
        if not self._engine.exists(target):
            rows = stamped
            if delete_column:
                rows = stamped.where(~F.coalesce(F.col(delete_column), F.lit(False))).drop(delete_column)
            first = self._engine.write(
                rows,
                target,
                mode="append",
                partition_by=[S.AS_OF_DATE] if layout.partitioned else [],
                partition_value=None,
                app_id=app_id,
                txn_version=txn_version,
                since_version=self._since.get(name),
            )
            return MergeResult(first.version, first.files, first.rows, first.skipped, inserted=first.rows)
        return self._engine.merge(
            stamped,
            target,
            keys,
            app_id=app_id,
            txn_version=txn_version,
            delete_column=delete_column,
            since_version=self._since.get(name),
        )

    def _align_change_data_feed(self, name: str, df: DataFrame, layout: _Layout) -> None:
        """Make the table's change data feed what ``lakehouse.change_data_feed`` says, once a run: a
        new table is created empty with the property (so the feed covers its first data commit), an
        existing one gets one property commit when it differs."""
        if name in self._feed_checked:
            return
        wanted = self.settings.lakehouse.change_data_feed
        target = self.target(name)
        try:
            properties = self._engine.table_properties(target)
        except TableNotFound:
            if wanted:
                partition_by = [S.AS_OF_DATE] if layout.partitioned else []
                self._engine.create_table(target, df.schema, partition_by, {CHANGE_DATA_FEED: "true"})
                log.info("%s: created with the change data feed on (lakehouse.change_data_feed)", name)
        else:
            on = properties.get(CHANGE_DATA_FEED, "false").lower() == "true"
            if on != wanted:
                self._engine.set_table_properties(target, {CHANGE_DATA_FEED: str(wanted).lower()})
                state = "on" if wanted else "off"
                log.info("%s: change data feed turned %s (lakehouse.change_data_feed)", name, state)
        self._feed_checked.add(name)

    def _within_existing(self, df: DataFrame, name: str) -> DataFrame:
        """An append to a table written before an optional column was declared (``runs.choices``)
        leaves the column out: the table's schema holds, where an append with an extra column would
        fail (delta-spark) or lose it without a word (delta-rs)."""
        have = set(self.read_output(name).columns)
        optional = {f.name for f in tables.SCHEMAS[name].fields if tables.is_optional(f)}
        newer = [c for c in df.columns if c not in have and c in optional]
        if newer:
            log.info("%s: written before column(s) %s: appended without them", name, ", ".join(newer))
        return df.drop(*newer)

    def write_dataset(self, df: DataFrame, path: str) -> CommitResult:
        """Write a whole Delta table at ``path`` in one commit, replacing any previous content
        (used by ``segspark generate`` for the synthetic input lakehouse)."""
        return self._engine.write(
            df,
            path,
            mode="overwrite",
            partition_by=[],
            partition_value=None,
            app_id=f"segspark-generate-{uuid.uuid4().hex[:8]}",
            txn_version=0,
        )

    def exists(self, name: str) -> bool:
        return self._engine.exists(self.target(name))

    def read_output(self, name: str, version: int | None = None) -> DataFrame:
        return self._engine.read(self.target(name), name, version)[0]

    def read_snapshot(self, name: str, as_of_date: dt.date) -> DataFrame:
        """One ``as_of_date`` partition of a snapshot table (one pruned scan), without the stamp columns."""
        df = self._engine.read_partition(self.target(name), name, S.AS_OF_DATE, as_of_date)
        return df.drop(S.RUN_ID, S.AS_OF_DATE)

    def read_latest_snapshot(self, name: str, before: dt.date) -> DataFrame | None:
        """The newest ``as_of_date`` partition of a snapshot table strictly before ``before`` (with the
        stamp columns), chosen from the Delta log; None when there is none."""
        target = self.target(name)
        if not self._engine.exists(target):
            return None
        last = self._engine.latest_partition_before(target, S.AS_OF_DATE, before)
        if last is None:
            return None
        return self._engine.read_partition(target, name, S.AS_OF_DATE, last)

    def delete_keys(self, name: str, column: str, values: list[str]) -> int:
        """Delete the rows whose ``column`` is one of ``values`` (right to erasure); returns rows deleted.

        One commit per table. Old versions keep the rows until ``vacuum`` removes their files.
        """
        if not values or not self.exists(name):
            return 0
        return self._engine.delete_keys(self.target(name), column, values)

    def vacuum(self, name: str, *, force: bool = False) -> list[str]:
        """Delete the table's files that its latest version does not reference and older than
        ``lakehouse.vacuum_retention_hours``; returns them. Below Delta's safety minimum (168 h) only
        with ``force``: a shorter retention can break a concurrent reader or writer."""
        hours = self.settings.lakehouse.vacuum_retention_hours
        check_vacuum_retention(hours, force)
        if not self.exists(name):
            return []
        return self._engine.vacuum(self.target(name), hours, enforce_retention=not force)

    def compact(self, name: str) -> Compaction | None:
        """Rewrite the table's small files into larger ones (OPTIMIZE; one commit that changes no
        rows) when a partition holds ``lakehouse.compact_min_files`` files or more; the live files and
        bytes before and after (and why it was not compacted), None when there is no table."""
        if not self.exists(name):
            return None
        return self._engine.compact(self.target(name), self.settings.lakehouse.compact_min_files)

    def rows_changed(self, name: str, since: int, upto: int) -> bool:
        """Whether table ``name``'s commits in (``since``, ``upto``] added or removed rows, read from
        a path table's log (``delta_log.first_row_change``: an OPTIMIZE or a VACUUM changes none);
        True where the log cannot be read as files (a catalog table): nothing is known of them."""
        root = delta_spark_table.log_root(self.target(name))
        return root is None or delta_log.first_row_change(root, since, upto) is not None

    def version(self, name: str) -> int | None:
        """The table's latest version (None when it does not exist)."""
        if not self.exists(name):
            return None
        # from the log's file names where the engine reads them (no Spark job), else the history
        version = self._engine.current_version(self.target(name))
        if version is not None:
            return version
        history = self._engine.history(self.target(name), 1)
        return history[0].version if history else None

    def history(self, name: str, limit: int | None = None) -> list[Commit]:
        """The table's commits, newest first."""
        return self._engine.history(self.target(name), limit)

    def read_changes(self, name: str, start: int, end: int) -> DataFrame:
        """Output table ``name``'s change data feed of versions ``start`` to ``end`` (both included;
        ``TableEngine.read_changes``): recorded with ``lakehouse.change_data_feed`` on."""
        return self._engine.read_changes(self.target(name), name, start, end)

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
            try:
                df, version = self._engine.read(cfg.table or location, name, cfg.version)
            except TableNotFound:
                raise InputError(f"input '{name}': no table at {location} (input.{name}.path)") from None
            return df, InputInfo(name, location, "delta", version)
        if cfg.version is not None:
            raise ConfigError(f"input.{name}.version applies to Delta tables only, not {cfg.format}")
        if cfg.table:
            df = self.spark.read.table(cfg.table)
            return df, InputInfo(name, location, cfg.format, None)
        if "://" not in location and not Path(location).exists():
            raise InputError(f"input '{name}': no {cfg.format} data at {location} (input.{name}.path)")
        df = inputs.read_files(self.spark, name, cfg)  # Parquet from pandas (nanoseconds) included
        return df, InputInfo(name, location, cfg.format, None)

    def logged_input_rows(self, name: str, version: int | None) -> int | None:
        """The rows of the Delta path input ``name`` at ``version`` (as read) from its log, where its
        files carry the statistic; None otherwise (catalog tables, Parquet, CSV): count them."""
        cfg: InputTable = getattr(self.settings.input, name)
        if cfg.format != "delta" or cfg.table or not cfg.path or is_catalog_name(cfg.path):
            return None
        try:
            return delta_log.logged_rows(cfg.path, version)
        except Exception as exc:  # a hint for sizing only: counted instead
            log.debug("input %s: rows not read from its Delta log (%s); counted", name, exc)
            return None

    def read_input_files(self, name: str, files: list[str]) -> DataFrame:
        """Only ``files`` (relative to its path) of the Parquet or CSV input ``name``, or of the Delta
        path table ``name`` (data files of its log, at ``input.<name>.version`` or the newest)."""
        cfg: InputTable = getattr(self.settings.input, name)
        if cfg.format == "delta":
            assert cfg.path is not None
            return delta_rs.read_files_of(self.spark, cfg.path, name, files, cfg.version)
        return inputs.read_files(self.spark, name, cfg, files)

    def input_configured(self, name: str) -> bool:
        cfg: InputTable = getattr(self.settings.input, name)
        return cfg.configured
