"""What an input is now, without reading its rows: its data files (path, size, modification time) or
its Delta version. A run records it in ``input_manifest``; the next run compares (``segspark.refresh``).

Listing, not reading: a folder of Parquet or CSV files is listed through the same filesystem layer
the preflight uses (local folders and object stores), keeping only the files the reader takes (the
format's data files, none under a ``_`` or ``.`` name); a Delta path table is its newest commit
number, read from the log's file names (no log replay). A catalog table, or a path this process
cannot list, has no fingerprint: a refresh then cannot tell it unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from segspark.config import InputTable
from segspark.io.inputs import DATA_SUFFIXES, listed_files

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class InputFile:
    """One data file of a file input, as listed: its path (relative to the input's path) and the
    size and modification time that tell a rewritten file from the one a run took."""

    path: str
    size: int
    modified_us: int  # microseconds since the epoch (what a Delta timestamp holds exactly)


@dataclass(frozen=True)
class Fingerprint:
    """An input as listed now: ``files`` (a Parquet/CSV input), ``version`` (a Delta path table),
    or neither (``known`` False: a catalog table, or a location not listable from here)."""

    name: str
    location: str
    files: tuple[InputFile, ...] | None = None
    version: int | None = None

    @property
    def known(self) -> bool:
        return self.files is not None or self.version is not None


def fingerprint(name: str, cfg: InputTable) -> Fingerprint:
    """Input ``name`` as it is now (see the module docstring)."""
    if cfg.table or cfg.path is None:
        return Fingerprint(name, cfg.location)
    if cfg.format == "delta":
        from segspark.io.delta_log import latest_log_version

        try:
            latest = latest_log_version(cfg.path)
        except Exception as exc:  # not reachable from this process
            log.debug("input %s: Delta log at %s not readable here (%s)", name, cfg.path, exc)
            return Fingerprint(name, cfg.location)
        pinned = cfg.version if cfg.version is not None else latest
        return Fingerprint(name, cfg.location, version=pinned if latest >= 0 else None)
    files = _data_files(cfg)
    return Fingerprint(name, cfg.location, files=None if files is None else tuple(sorted(files)))


def _data_files(cfg: InputTable) -> list[InputFile] | None:
    """The data files the reader takes (a single file is itself), None when not listable here."""
    from pyarrow import fs

    from segspark.io import storage

    assert cfg.path is not None
    try:
        filesystem, path = storage.filesystem(cfg.path)
        info = filesystem.get_file_info(path)
    except Exception as exc:  # no filesystem, no credentials, not reachable from this process
        log.debug("input %s not listable here (%s)", cfg.path, exc)
        return None
    if info.type == fs.FileType.File:
        return [_entry(info, info.base_name)]
    listed = listed_files(cfg.path)  # the folder's files the reader sees
    if listed is None:
        return None
    suffixes = DATA_SUFFIXES.get(cfg.format)
    if suffixes is None or "pathGlobFilter" in cfg.options:  # no data-file filter: every file
        return [_entry(f, relative) for relative, f in listed]
    return [_entry(f, relative) for relative, f in listed if relative.lower().endswith(suffixes)]


def _entry(info: object, relative: str) -> InputFile:
    size = int(getattr(info, "size", 0) or 0)
    ns = getattr(info, "mtime_ns", None)  # an object store without modification times: 0
    return InputFile(relative, size, int(ns or 0) // 1000)


def compare(now: Fingerprint, taken: list[InputFile] | None, taken_version: int | None) -> tuple[str, str]:
    """(state, why) of input ``now`` against what the last run took: ``unchanged``; ``appended``
    (new files only, or Delta commits after the version taken); ``changed`` (a file rewritten or
    removed, a Delta version before the one taken); ``unknown`` (no fingerprint on either side)."""
    if not now.known or (taken is None and taken_version is None):
        return "unknown", f"input '{now.name}' cannot be listed from here ({now.location})"
    if now.version is not None or taken_version is not None:
        if now.version is None or taken_version is None:
            return "changed", f"input '{now.name}' changed kind (Delta table vs files)"
        if now.version == taken_version:
            return "unchanged", f"input '{now.name}': Delta version {now.version}, as taken"
        if now.version > taken_version:
            new = f"{taken_version + 1}..{now.version}"
            rewrite = _first_rewrite(now.location, taken_version, now.version)
            if rewrite is not None:
                return "changed", f"input '{now.name}': Delta version {rewrite} removed or rewrote rows"
            return "appended", f"input '{now.name}': Delta versions {new} are new"
        return "changed", f"input '{now.name}': Delta version {now.version}, before the {taken_version} taken"
    assert now.files is not None and taken is not None
    have = {f.path: f for f in now.files}
    gone = [f.path for f in taken if f.path not in have]
    rewritten = [f.path for f in taken if f.path in have and have[f.path] != f]
    if gone or rewritten:
        what = f"removed: {', '.join(gone[:3])}" if gone else f"rewritten: {', '.join(rewritten[:3])}"
        return "changed", f"input '{now.name}': file(s) {what}"
    added = len(now.files) - len(taken)
    if added:
        return "appended", f"input '{now.name}': {added} new file(s)"
    return "unchanged", f"input '{now.name}': {len(now.files)} file(s), as taken"


def _first_rewrite(location: str, since: int, upto: int) -> int | None:
    """The first commit in (``since``, ``upto``] that removes data (an overwrite, DELETE, UPDATE or
    MERGE: a ``remove`` with ``dataChange``), from the log's commit files; None when every commit
    only adds rows or changes no data (OPTIMIZE, properties). A commit file already cleaned up is
    taken for a rewrite: what it did is unknown."""
    from segspark.io.delta_log import first_row_change

    return first_row_change(location, since, upto, kinds=("remove",))


def delta_batch(location: str, since: int, upto: int) -> tuple[tuple[str, ...] | None, str]:
    """The data files a Delta path table's commits in (``since``, ``upto``] added with new rows
    (``add`` actions with ``dataChange``; an OPTIMIZE's rewrites of rows already taken are not new),
    relative to the table's root and decoded, with what they are; ``(None, why)`` when they cannot
    be read apart: one of them is no longer in version ``upto`` (compacted with rows taken before, or
    removed). Call only on commits ``compare`` found to add rows and remove none."""
    from urllib.parse import unquote

    import pyarrow as pa

    from segspark.io.delta_log import commit_actions, delta_table

    added: list[str] = []
    for version in range(since + 1, upto + 1):
        for action in commit_actions(location, version):
            add = action.get("add")
            if add is not None and add.get("dataChange", True):
                added.append(unquote(add["path"]))
    live = pa.table(delta_table(location, upto).get_add_actions(flatten=True)).column("path").to_pylist()
    gone = sorted(set(added) - {unquote(p) for p in live})
    what = f"Delta versions {since + 1}..{upto}"
    if gone:
        return None, f"{what}: {len(gone)} new file(s) no longer in version {upto} (compacted or removed)"
    return tuple(added), f"{what}, {len(added)} new file(s)"
