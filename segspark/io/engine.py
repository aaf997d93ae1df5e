"""The table-engine protocol: what ``Lakehouse`` asks of a Delta engine (docs/architecture.md).

Two implementations: ``segspark.io.delta_rs.DeltaRsEngine`` (embedded: Spark writes Parquet, delta-rs
commits) and ``segspark.io.delta_spark.DeltaSparkEngine`` (Delta's own Spark data source). ``Lakehouse``
picks one with ``lakehouse.make_engine`` and never asks which one it holds.

A *target* is where a table lives: a path, or (delta-spark only) a catalog name ``catalog.schema.table``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from segspark.errors import InputError, SegsparkError
from segspark.io import storage

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

EngineName = Literal["delta-spark", "delta-rs"]
ENGINE_NAMES: tuple[EngineName, ...] = ("delta-rs", "delta-spark")
WriteMode = Literal["append", "overwrite", "overwrite_partition"]
# A partition value as readers see it (a date for as_of_date); engines compare it in the column's type.
PartitionValue = dt.date | dt.datetime | str | int


@dataclass(frozen=True)
class CommitResult:
    """What one write did: the new table version (None when skipped), files and rows added (-1: unknown)."""

    version: int | None
    files: int
    rows: int
    skipped: bool


@dataclass(frozen=True)
class MergeResult(CommitResult):
    """What one MERGE did, from the engine's commit metrics: target rows inserted, updated and deleted
    (0 each when skipped)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class Compaction:
    """Live data files (and their bytes) of a table's latest version before and after compaction;
    ``skipped``: why the table was left as it was (``compaction_skipped``), empty when compacted."""

    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    skipped: str = ""

    def describe(self) -> str:
        files = f"files {self.files_before} -> {self.files_after}"
        figures = f"{files}, bytes {self.bytes_before} -> {self.bytes_after}"
        return f"{figures} (not compacted: {self.skipped})" if self.skipped else figures


@dataclass(frozen=True)
class FileLayout:
    """A table's live data files from its latest snapshot: how many, their bytes, and the most files
    any one partition holds (the whole table's count where only that is known)."""

    files: int
    bytes: int
    most_in_a_partition: int


def compaction_skipped(layout: FileLayout, min_files: int) -> Compaction | None:
    """The compaction rule: a table is compacted only when one of its partitions holds at least
    ``min_files`` data files (``lakehouse.compact_min_files``, by default 50 as Delta's own
    auto-compaction, ``spark.databricks.delta.autoCompact.minNumFiles``). Fewer files cost readers
    next to nothing, while an OPTIMIZE costs a commit and, on Delta's Spark engine, seconds of Spark
    jobs per table. Returns the unchanged figures with the reason, or None: compact."""
    if layout.most_in_a_partition >= min_files:
        return None
    return Compaction(
        layout.files,
        layout.files,
        layout.bytes,
        layout.bytes,
        skipped=f"at most {layout.most_in_a_partition} file(s) in a partition, under {min_files}",
    )


@dataclass(frozen=True)
class Commit:
    """One entry of a table's history, newest first in ``TableEngine.history``."""

    version: int
    timestamp: dt.datetime | None
    operation: str
    parameters: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)


class TableNotFound(InputError):
    """No Delta table at the target (``Lakehouse.read_input`` turns it into an input error)."""


class ConcurrentWriteError(SegsparkError):
    """Another run committed to the same table (or partition) after this run started: this run's
    write is not committed (exit code 1; the other run's data stays whole)."""


def conflict_error(name: str, conflict: str, since_version: int) -> ConcurrentWriteError:
    """The error of a write that another run's commit (``conflict``, described) got ahead of."""
    started = "no table yet" if since_version < 0 else f"at version {since_version}"
    return ConcurrentWriteError(
        f"table '{name}': concurrent write: {conflict} after this run started ({started}); this run's "
        "write was not committed, the table keeps the other run's data; rerun when it has finished"
    )


# Delta's safety minimum for vacuum (``delta.deletedFileRetentionDuration``, 7 days): a shorter
# retention can delete files a concurrent reader or writer still needs.
MIN_SAFE_RETENTION_HOURS = 168


def is_catalog_name(target: str) -> bool:
    """True for ``catalog.schema.table`` (or ``schema.table``), False for a path or URI."""
    return "/" not in target and ":" not in target and target.count(".") >= 1


def table_location(root: str, catalog: str | None, schema: str | None, name: str) -> str:
    """``catalog.schema.name`` when both are configured, else ``<root>/tables/<name>`` (``root`` a
    local folder or a URI such as ``s3a://bucket/prefix``)."""
    if catalog and schema:
        return f"{catalog}.{schema}.{name}"
    return storage.join(str(root), "tables", name)


@runtime_checkable
class TableEngine(Protocol):
    """Reads and writes Delta tables; every write is one atomic commit, idempotent per ``app_id``."""

    name: EngineName

    def locate(self, root: str, catalog: str | None, schema: str | None, table: str) -> str:
        """The target of output ``table``; raises ``ConfigError`` for a location the engine cannot use."""
        ...

    def exists(self, target: str) -> bool:
        """True when ``target`` holds a Delta table."""
        ...

    def read(self, target: str, name: str, version: int | None = None) -> tuple[DataFrame, int]:
        """The table's snapshot (at ``version``, or the latest) and that version. ``name`` is for errors."""
        ...

    def read_partition(self, target: str, name: str, column: str, value: PartitionValue) -> DataFrame:
        """The latest snapshot's rows with partition ``column == value``: ONE scan of only that
        partition's files, chosen from the Delta log."""
        ...

    def latest_partition_before(
        self, target: str, column: str, before: PartitionValue
    ) -> PartitionValue | None:
        """The largest value of partition ``column`` strictly below ``before`` in the latest snapshot,
        from the Delta log (no data scan); None when there is none."""
        ...

    def current_version(self, target: str) -> int | None:
        """The table's latest version, -1 when there is no table yet; None when the engine does not
        check concurrent writers itself (then ``write`` ignores ``since_version``)."""
        ...

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
        """Write ``df`` in ONE commit.

        ``append`` adds; ``overwrite`` replaces the whole table, its schema and partitioning included;
        ``overwrite_partition`` replaces only the rows of ``partition_value`` (the other partitions stay).
        When the table already records ``app_id`` at ``txn_version`` or later, nothing is written and the
        result says ``skipped``. ``before_commit`` runs just before the commit (tests simulate a crash).
        ``since_version`` (the table's version when the run started): an overwrite raises
        ``ConcurrentWriteError`` instead of committing when another writer changed the rows it replaces
        after that version (appends never conflict: their rows are keyed by run).
        """
        ...

    def delete_keys(self, target: str, column: str, values: list[str]) -> int:
        """Delete the rows whose ``column`` is in ``values`` in one commit; returns the rows deleted
        (0 without a commit when none match or the table lacks the column)."""
        ...

    def vacuum(self, target: str, retention_hours: int, *, enforce_retention: bool = True) -> list[str]:
        """Delete files the latest snapshot does not reference and older than ``retention_hours``
        (replaced versions, never-committed files of crashed writes); returns the files deleted.
        ``enforce_retention``: refuse a retention under Delta's safety minimum."""
        ...

    def history(self, target: str, limit: int | None = None) -> list[Commit]:
        """The table's commits, newest first."""
        ...

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
        """Upsert ``df`` into the existing table ``target`` by ``keys`` in ONE commit (MERGE).

        A source row whose keys match a target row replaces it (every column); the others are
        inserted. ``delete_column`` (a boolean source column, not a table column): matched rows
        flagged true are deleted instead, and flagged rows without a match are dropped. A null key
        never matches (SQL MERGE): such rows are inserted. Each key may occur once in the source.
        Idempotent per ``app_id``/``txn_version`` like ``write``; ``since_version``: a data commit by
        another writer after it is a ``ConcurrentWriteError`` (the MERGE commits nothing). A source
        column the table lacks, a table column the source lacks, or another type: ``SchemaMismatch``
        naming the table and the column; no table: ``TableNotFound``.
        """
        ...

    def compact(self, target: str, min_files: int = 1) -> Compaction:
        """Rewrite small data files into larger ones in one commit that changes no data (OPTIMIZE);
        returns the live files and bytes before and after. A table none of whose partitions holds
        ``min_files`` files is left alone (``compaction_skipped``)."""
        ...

    def read_changes(self, target: str, name: str, start: int, end: int) -> DataFrame:
        """The table's change data feed of versions ``start`` to ``end`` (both included), as Delta
        defines it: the table's columns, then ``_change_type`` (insert, delete, update_preimage,
        update_postimage), ``_commit_version`` and ``_commit_timestamp``. ``InputError`` for a table
        that does not record its changes (``lakehouse.change_data_feed``) or a version not in its log."""
        ...

    def table_properties(self, target: str) -> dict[str, str]:
        """The table's properties (``delta.*`` configuration); ``TableNotFound`` without a table (one
        look-up answers both, where ``exists`` and a read of the properties would take two)."""
        ...

    def set_table_properties(self, target: str, properties: dict[str, str]) -> None:
        """Set table properties in one metadata commit (Delta raises the protocol a property needs)."""
        ...

    def create_table(
        self, target: str, schema: StructType, partition_by: list[str], properties: dict[str, str]
    ) -> None:
        """Create an empty table with ``schema``, ``partition_by`` and ``properties`` (one commit)."""
        ...


def sql_in_list(values: list[str]) -> str:
    """``'a', 'b'`` with quotes doubled: the IN list of a delete predicate."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


# ---- MERGE ------------------------------------------------------------------------------------------
CHANGE_DATA_FEED = "delta.enableChangeDataFeed"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_merge_schema(
    name: str, table: StructType, source: StructType, keys: list[str], delete_column: str | None
) -> None:
    """Refuse a MERGE whose source does not match the table column for column (``SchemaMismatch``
    naming the table and each column; an all-null source column is cast to the table's type)."""
    from pyspark.sql import types as T

    from segspark.tables import SchemaMismatch

    problems: list[str] = []
    given = {f.name: f.dataType for f in source.fields if f.name != delete_column}
    have = {f.name: f.dataType for f in table.fields}
    for column in [*keys, *([delete_column] if delete_column else [])]:
        if not _IDENTIFIER.fullmatch(column):
            problems.append(f"MERGE column name {column!r} is not a plain identifier")
    for key in keys:
        if key not in have:
            problems.append(f"MERGE key '{key}' is not a column of the table")
    if not keys:
        problems.append("MERGE needs at least one key column")
    if delete_column and not isinstance(source[delete_column].dataType, T.BooleanType):
        problems.append(f"MERGE delete column '{delete_column}' must be boolean")
    for column, type_ in have.items():
        if column not in given:
            problems.append(f"column '{column}' is missing from the MERGE source")
        elif given[column].simpleString() != type_.simpleString() and not isinstance(
            given[column], T.NullType
        ):  # nullability aside (an array's containsNull differs between Spark and delta-rs)
            problems.append(
                f"column '{column}' has type {given[column].simpleString()} in the MERGE source, "
                f"{type_.simpleString()} in the table"
            )
    problems += [f"column '{c}' of the MERGE source is not in the table" for c in given if c not in have]
    if problems:
        raise SchemaMismatch(f"table '{name}': " + "; ".join(problems))


def table_name(target: str) -> str:
    """The table's name in messages: the last part of a path or of a catalog name."""
    if is_catalog_name(target):
        return target.rsplit(".", 1)[-1]
    return target.rstrip("/").rsplit("/", 1)[-1]
