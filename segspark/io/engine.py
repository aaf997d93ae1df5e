"""The table-engine protocol: what ``Lakehouse`` asks of a Delta engine (docs/architecture.md).

Two implementations: ``segspark.io.delta_rs.DeltaRsEngine`` (embedded: Spark writes Parquet, delta-rs
commits) and ``segspark.io.delta_spark.DeltaSparkEngine`` (Delta's own Spark data source). ``Lakehouse``
picks one with ``lakehouse.make_engine`` and never asks which one it holds.

A *target* is where a table lives: a path, or (delta-spark only) a catalog name ``catalog.schema.table``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from segspark.errors import InputError, SegsparkError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

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


def table_location(root: Path, catalog: str | None, schema: str | None, name: str) -> str:
    """``catalog.schema.name`` when both are configured, else ``<root>/tables/<name>``."""
    if catalog and schema:
        return f"{catalog}.{schema}.{name}"
    return str(root / "tables" / name)


@runtime_checkable
class TableEngine(Protocol):
    """Reads and writes Delta tables; every write is one atomic commit, idempotent per ``app_id``."""

    name: EngineName

    def locate(self, root: Path, catalog: str | None, schema: str | None, table: str) -> str:
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


def sql_in_list(values: list[str]) -> str:
    """``'a', 'b'`` with quotes doubled: the IN list of a delete predicate."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
