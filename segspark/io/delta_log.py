"""A Delta table's log, shared by both engines: opened through delta-rs, read as files, checked and trimmed.

- where a table lives (``location``: a local folder or ``s3a://``) and its delta-rs handle (``delta_table``,
  ``open_table``, which refuses reader features the embedded engine cannot read);
- the log read as files, with no log replay and no Spark job: the newest version, one commit's actions,
  and whether another run committed rows a write would replace since a version (``conflicting_commit``);
- the log trimmed after a vacuum (``expire_log``, ``drop_stale_checksums``), so an erased key survives
  in no log entry or checksum file.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from segspark.errors import InputError
from segspark.io import storage
from segspark.io.engine import FileLayout, TableNotFound, WriteMode, is_catalog_name

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType


# the folder under a table where writes stage their files before they are committed
STAGING = "_staging"
LOG_RETENTION = "delta.logRetentionDuration"
FEED = "delta.enableChangeDataFeed"
# a write re-checks and retries its commit this often when racing writers keep committing first
MAX_COMMIT_ATTEMPTS = 20
UNSUPPORTED_READER_FEATURES = {
    "deletionVectors": "deletion vectors",
    "columnMapping": "column mapping",
}


def local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urllib.parse.urlparse(uri).path)
    if "://" in uri:
        raise InputError(
            f"the embedded delta-rs engine writes to local paths and S3 (s3a://) only, not {uri}; "
            "use lakehouse.engine=delta-spark on a cluster"
        )
    return Path(uri)


def location(table_uri: str) -> str:
    """A table's location: an object-store URI as given, a local path (or ``file://`` URI) absolute."""
    if storage.is_s3(table_uri):
        return table_uri.rstrip("/")
    return str(local_path(table_uri).resolve())


def delta_table(where: str, version: int | None = None) -> DeltaTable:
    """The delta-rs table at ``where`` (``s3a://`` as delta-rs names it, with the store's options)."""
    from deltalake import DeltaTable

    return DeltaTable(
        storage.delta_rs_uri(where), version=version, storage_options=storage.delta_rs_options(where)
    )


def is_delta_table(where: str) -> bool:
    from deltalake import DeltaTable

    uri, options = storage.delta_rs_uri(where), storage.delta_rs_options(where)
    return bool(DeltaTable.is_deltatable(uri, storage_options=options))


def arrow_schema_for(df: DataFrame) -> pa.Schema:
    """The Arrow (and so Delta) schema of a Spark DataFrame: timestamps as UTC microseconds."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema, timezone="UTC")


def committed_txn_version(table_path: str, app_id: str) -> int | None:
    if not is_delta_table(table_path):
        return None
    version = delta_table(table_path).transaction_version(app_id)
    return None if version is None else int(version)


def latest_log_version(root: Path | str) -> int:
    """The newest commit in ``_delta_log`` (from the file names: no log replay), -1 without a table."""
    from pyarrow import fs

    files, base = storage.filesystem(str(root))
    listed = files.get_file_info(fs.FileSelector(f"{base}/_delta_log", allow_not_found=True))
    versions = [
        int(i.base_name[:-5]) for i in listed if i.base_name.endswith(".json") and i.base_name[:-5].isdigit()
    ]
    return max(versions, default=-1)


def commit_actions(root: Path | str, version: int) -> list[dict[str, Any]]:
    from pyarrow import fs

    files, base = storage.filesystem(str(root))
    path = f"{base}/_delta_log/{version:020d}.json"
    if files.get_file_info(path).type == fs.FileType.NotFound:
        return []  # cleaned up after a checkpoint: older than any run still writing
    with files.open_input_stream(path) as handle:
        text = handle.read().decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def first_row_change(
    root: Path | str, since: int, upto: int, kinds: tuple[str, ...] = ("add", "remove")
) -> int | None:
    """The first commit in (``since``, ``upto``] with an action of ``kinds`` that changes rows
    (``dataChange``: ``remove`` alone finds an overwrite, DELETE, UPDATE or MERGE; with ``add``,
    any new rows too); None when no commit does (an OPTIMIZE, a VACUUM, a property change). A
    commit file already cleaned up counts as one that did: what it did is unknown."""
    for version in range(since + 1, upto + 1):
        actions = commit_actions(root, version)
        if not actions:
            return version
        for action in actions:
            change = next((action[k] for k in kinds if k in action), None)
            if change is not None and change.get("dataChange", True):
                return version
    return None


def conflicting_commit(
    root: Path | str,
    since: int,
    upto: int,
    app_id: str,
    mode: WriteMode,
    partition_value: dict[str, str] | None,
) -> str | None:
    """The first commit in (``since``, ``upto``] by another writer that changed the rows a write of
    ``mode`` replaces (any data file for ``overwrite``, files of ``partition_value`` for
    ``overwrite_partition``), described for the error; None when there is none.

    Commits of the same ``app_id`` (an earlier attempt of this run) and commits without data changes
    (vacuum, a compaction's ``dataChange=false`` files: the replacing write's removes are derived
    from the latest version, so they remove the compacted files) never conflict.
    """
    for version in range(since + 1, upto + 1):
        actions = commit_actions(root, version)
        apps = {a["txn"].get("appId") for a in actions if "txn" in a}
        if app_id in apps:
            continue
        files = [a.get("add") or a.get("remove") for a in actions if "add" in a or "remove" in a]
        files = [f for f in files if f and f.get("dataChange", True)]
        if mode == "overwrite_partition":
            wanted = partition_value or {}
            files = [
                f
                for f in files
                if f and all((f.get("partitionValues") or {}).get(k) == v for k, v in wanted.items())
            ]
        if files:
            other = next(iter(sorted(a for a in apps if a)), None)
            who = f"run {other.removeprefix('segspark-')}" if other else "another writer"
            return f"{who} committed version {version}"
    return None


def check_readable(table: Any, name: str) -> None:
    """Refuse tables whose features the embedded engine cannot read correctly."""
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    config = table.metadata().configuration or {}
    if config.get("delta.columnMapping.mode", "none") != "none":
        features.add("columnMapping")
    bad = [label for key, label in UNSUPPORTED_READER_FEATURES.items() if key in features]
    if bad:
        raise InputError(
            f"table '{name}' uses {', '.join(bad)}, which the embedded delta-rs engine cannot read; "
            "run with lakehouse.engine=delta-spark (Delta jars on the classpath) or rewrite the table "
            "without them"
        )


def open_table(table_uri: str, name: str, version: int | None = None) -> DeltaTable:
    from deltalake.exceptions import TableNotFoundError

    if is_catalog_name(table_uri):
        raise InputError(
            f"table '{name}': catalog table {table_uri} needs lakehouse.engine=delta-spark; "
            "with the embedded engine give a path"
        )
    try:
        table = delta_table(table_uri, version=version)
    except TableNotFoundError:
        raise TableNotFound(f"table '{name}': no Delta table at {table_uri}") from None
    except Exception as exc:  # delta-rs raises plain errors for a missing version
        raise InputError(f"table '{name}' at {table_uri}: cannot open version {version}: {exc}") from None
    check_readable(table, name)
    return table


def spark_schema(table: DeltaTable) -> StructType:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema(table.schema().to_arrow()), prefer_timestamp_ntz=False)


def expire_log(table_uri: str, retention_hours: int) -> None:
    """Delete the Delta log entries older than ``retention_hours`` that precede a new checkpoint.

    An erase's DELETE commit records its predicate, the erased keys included, in the log, which Delta
    keeps for ``delta.logRetentionDuration`` (30 days by default) and only trims when it writes a
    checkpoint. Setting that retention to the vacuum's (the versions older than it are unreadable
    once their files are gone anyway), checkpointing and cleaning up removes those entries; time
    travel keeps the versions within the retention.
    """
    table = delta_table(table_uri)
    wanted = f"interval {int(retention_hours)} hours"
    if (table.metadata().configuration or {}).get(LOG_RETENTION) != wanted:
        table.alter.set_table_properties({LOG_RETENTION: wanted})
        table = delta_table(table_uri)
    table.create_checkpoint()
    table.cleanup_metadata()
    drop_stale_checksums(location(table_uri))


def drop_stale_checksums(root: Path | str) -> None:
    """Delete the version checksum files (``<version>.crc``) of versions whose log entry is gone.

    Delta's Spark engine writes one per commit, holding the table's whole file list with each file's
    statistics (the min and max customer keys too); delta-rs's log cleanup knows only the files it
    writes itself, so after an erase these would keep the erased keys."""
    from pyarrow import fs

    files, base = storage.filesystem(str(root))
    listed = files.get_file_info(fs.FileSelector(f"{base}/_delta_log", allow_not_found=True))
    kept = [
        int(i.base_name[:-5]) for i in listed if i.base_name.endswith(".json") and i.base_name[:-5].isdigit()
    ]
    if not kept:
        return
    for info in listed:
        stem = info.base_name.removesuffix(".crc")
        if info.base_name.endswith(".crc") and stem.isdigit() and int(stem) < min(kept):
            for path in (
                info.path,
                f"{base}/_delta_log/.{info.base_name}.crc",
            ):  # and Hadoop's checksum of it
                with contextlib.suppress(FileNotFoundError):
                    files.delete_file(path)


def file_layout(table: DeltaTable) -> FileLayout:
    """The latest snapshot's data files, their bytes and the most files in one partition, from the
    log's add actions (no Spark job)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return FileLayout(0, 0, 0)
    columns = [c for c in actions.column_names if c.startswith("partition.")]
    counts = actions.group_by(columns).aggregate([([], "count_all")]) if columns else None
    most = actions.num_rows if counts is None else int(pc.max(counts.column("count_all")).as_py() or 0)
    return FileLayout(actions.num_rows, int(pc.sum(actions.column("size_bytes")).as_py() or 0), most)


def logged_rows(where: str, version: int | None) -> int | None:
    """The rows of a Delta table's snapshot from its log: the sum of its data files' ``numRecords``
    statistic (no Spark job). None when a file was committed without it (the statistic is optional)."""
    actions = pa.table(delta_table(where, version=version).get_add_actions(flatten=True))
    if "num_records" not in actions.column_names:
        return None
    records = actions.column("num_records")
    if records.null_count:
        return None
    return int(pc.sum(records).as_py() or 0)


def unreferenced_files(where: str) -> list[str]:
    """The files under the table that its latest snapshot does not reference and that a vacuum may
    delete: data files of replaced versions or of writes never committed, and change data files.
    Hidden entries (``.`` or ``_`` first, as Delta's vacuum skips them, the change data folder apart)
    are left out; locations as the table's are written."""
    from pyarrow import fs

    root = location(where)
    files, base = storage.filesystem(root)
    live = set(delta_table(root).file_uris())
    found = []
    for info in files.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True)):
        rel = info.path[len(base) + 1 :]
        parts = rel.split("/")
        hidden = any(p.startswith((".", "_")) for p in parts) and parts[0] != "_change_data"
        if info.type != fs.FileType.File or hidden or parts[0] == "_delta_log":
            continue
        path = storage.join(root, rel)
        if storage.delta_rs_uri(path) not in live and path not in live:
            found.append(path)
    return found


def check_feed_recorded(where: str, name: str, start: int, end: int) -> None:
    """``InputError`` unless the table recorded its change data feed at every version from ``start``
    to ``end``: the property as of ``start``, then as each commit's metadata in the range leaves it
    (a version no longer in the log is an error too)."""
    root = location(where)
    config = open_table(where, name, start).metadata().configuration or {}
    recording = config.get(FEED) == "true"
    for version in range(start, end + 1):
        actions = commit_actions(root, version)
        if not actions:
            raise InputError(f"table '{name}': version {version} is not in its log")
        meta = next((a["metaData"] for a in actions if "metaData" in a), None)
        if meta is not None:
            recording = (meta.get("configuration") or {}).get(FEED) == "true"
        if not recording:
            raise InputError(f"table '{name}' does not record its changes at version {version} ({FEED})")
