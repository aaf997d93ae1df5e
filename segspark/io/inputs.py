"""Reading file inputs (Parquet, CSV), including the Parquet that pandas writes by default.

pandas writes timestamps as ``INT64 TIMESTAMP(NANOS)``, a type Spark's Parquet reader refuses
(``PARQUET_TYPE_ILLEGAL``). Spark's supported way in is ``spark.sql.legacy.parquet.nanosAsLong``,
which reads such a column as its raw int64 (nanoseconds since the epoch). Every Parquet input's
schema is read with that flag (a plain file's schema is the same either way), the data with that
schema given explicitly (so no setting needs to stay on while it executes), and each nanosecond
column becomes a timestamp truncated to the microsecond, Spark's precision.

Which int64 columns held nanoseconds is read from one file's footer with pyarrow where this process
can open the path (local, or a cloud URI pyarrow has a filesystem and credentials for). Where it
cannot (a path only the cluster sees, e.g. over Spark Connect), the int64 columns in a timestamp
role of the input (``order_ts``, ``signup_ts``, ``event_ts``, ``month``, after the column mapping)
are taken as nanoseconds, since an integer in a timestamp role is what such a file reads as.

A folder input is read for the data files of its format only (by extension: ``*.parquet``, ``*.csv``
and compressed ``*.csv.gz`` and the like): a stray ``meta.json`` or ``README.txt`` next to the part
files is left out with one log line naming it (Spark would otherwise fail to read a schema from it,
or read it as CSV rows). Spark's own rule still applies first (names starting with ``_`` or ``.``
are hidden). A folder with no data file of its format is an ``InputError`` naming the folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, DataFrameReader, SparkSession

    from segspark.config import InputTable

log = logging.getLogger(__name__)

NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
TIMESTAMP_ROLES: dict[str, tuple[str, ...]] = {
    "transactions": (S.ORDER_TS,),
    "customers": (S.SIGNUP_TS,),
    "events": (S.EVENT_TS,),
    "marketing_spend": (S.MONTH,),
}
# the names a format's data files end with (Spark's writers and the usual compressions)
CSV_COMPRESSIONS = ("", ".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst", ".xz")
DATA_SUFFIXES: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet",),
    "csv": tuple(f".csv{c}" for c in CSV_COMPRESSIONS),
}
SHOWN_IGNORED = 5  # stray files named in the log line


def nanos_to_timestamp(c: Column) -> Column:
    """Epoch nanoseconds (int64) -> timestamp, floored to the microsecond (exact: decimal, not double,
    division; a double holds only 53 bits of the ~61 an epoch-nanosecond value needs)."""
    micros = F.floor(c.cast("decimal(20,0)") / F.lit(1000)).cast("long")
    return F.timestamp_micros(micros)


def read_files(
    spark: SparkSession, name: str, cfg: InputTable, files: Sequence[str] | None = None
) -> DataFrame:
    """Read the Parquet or CSV input ``name`` at ``cfg.path`` with its reader options; ``files``:
    only these of its data files (paths relative to ``cfg.path``: an incremental refresh's new ones),
    with partition columns found from ``cfg.path`` as for the whole folder.

    A path Spark cannot find or read a schema from (a cloud path the preflight could not check) is
    an ``InputError`` naming the input and the path."""
    try:
        return _read_files(spark, name, cfg, files)
    except Exception as exc:
        text = str(exc)
        for marker, what in (("PATH_NOT_FOUND", "no"), ("UNABLE_TO_INFER_SCHEMA", "no readable")):
            if marker in text:
                raise InputError(
                    f"input '{name}': {what} {cfg.format} data at {cfg.path} (input.{name}.path)"
                ) from None
        raise


def _read_files(spark: SparkSession, name: str, cfg: InputTable, files: Sequence[str] | None) -> DataFrame:
    assert cfg.path is not None
    location: str | list[str] = cfg.path
    reader = spark.read
    if cfg.format == "csv":
        # every column read as a string: ingest casts with ANSI-safe try_cast and quarantines failures
        reader = reader.option("header", "true").option("inferSchema", "false")
    for key, value in cfg.options.items():
        reader = reader.option(key, value)
    if files is not None:
        reader = reader.option("basePath", cfg.path)
        location = [f"{cfg.path.rstrip('/')}/{f}" for f in files]
    else:
        glob = data_file_glob(name, cfg)
        if glob is not None:
            reader = reader.option("pathGlobFilter", glob)
    if cfg.format != "parquet":
        return reader.format(cfg.format).load(location)
    return _read_parquet(spark, reader, name, cfg, location)


def _read_parquet(
    spark: SparkSession, reader: DataFrameReader, name: str, cfg: InputTable, location: str | list[str]
) -> DataFrame:
    previous = spark.conf.get(NANOS_AS_LONG, "false") or "false"
    spark.conf.set(NANOS_AS_LONG, "true")
    try:
        schema = reader.format("parquet").load(location).schema
    finally:
        spark.conf.set(NANOS_AS_LONG, previous)
    longs = [f.name for f in schema.fields if isinstance(f.dataType, T.LongType)]
    if not longs:
        return reader.format("parquet").load(location)
    nanos = footer_nanos_columns(location if isinstance(location, str) else location[0])
    if nanos is None:
        roles = {cfg.columns.get(c, c) for c in TIMESTAMP_ROLES.get(name, ())}
        nanos = {c for c in longs if c in roles}
    nanos &= set(longs)
    if not nanos:
        return reader.format("parquet").load(location)
    log.info("input %s: nanosecond timestamps in %s read to the microsecond", name, sorted(nanos))
    df = reader.schema(schema).format("parquet").load(location)
    return df.select(*[nanos_to_timestamp(F.col(c)).alias(c) if c in nanos else F.col(c) for c in df.columns])


def data_file_glob(name: str, cfg: InputTable) -> str | None:
    """The ``pathGlobFilter`` that keeps a folder input to the data files of its format, None where
    no filter is needed (a file, a folder of data files only, a folder not listable from here, a
    format without a known extension, or a filter the user set in ``input.<name>.options``).

    Raises ``InputError`` naming the folder when it holds no data file of its format."""
    suffixes = DATA_SUFFIXES.get(cfg.format)
    if suffixes is None or cfg.path is None or "pathGlobFilter" in cfg.options:
        return None
    files = visible_files(cfg.path)
    if files is None:
        return None
    data = [f for f in files if f.lower().endswith(suffixes)]
    if not data:
        raise InputError(
            f"input '{name}': no {cfg.format} file (*{', *'.join(suffixes[:2])}) in the folder "
            f"{cfg.path} (input.{name}.path)"
        )
    others = sorted(set(files) - set(data))
    if not others:
        return None
    shown = ", ".join(others[:SHOWN_IGNORED]) + (", ..." if len(others) > SHOWN_IGNORED else "")
    log.warning(
        "input %s: %d file(s) in %s are not %s data files and are ignored: %s",
        name, len(others), cfg.path, cfg.format, shown,
    )  # fmt: skip
    return "*{" + ",".join(suffixes) + "}"


def visible_files(location: str) -> list[str] | None:
    """Paths (relative to ``location``) of the files in the folder ``location`` that Spark would read
    (none under a name starting with ``_`` or ``.``); None when ``location`` is not a folder or
    cannot be listed from this process (a path only the cluster sees)."""
    listed = listed_files(location)
    return None if listed is None else [relative for relative, _ in listed]


def listed_files(location: str) -> list[tuple[str, Any]] | None:
    """``visible_files`` with each file's pyarrow ``FileInfo`` (size, modification time)."""
    try:
        from pyarrow import fs

        from segspark.io import storage

        filesystem, path = storage.filesystem(location)
        if filesystem.get_file_info(path).type != fs.FileType.Directory:
            return None
        listed = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except Exception as exc:  # no filesystem, no credentials, not reachable from this process
        log.debug("input folder %s not listable here (%s): every file is read", location, exc)
        return None
    root = path.rstrip("/") + "/"
    files = []
    for info in listed:
        relative = info.path[len(root) :] if info.path.startswith(root) else info.base_name
        if info.type == fs.FileType.File and not any(p.startswith(("_", ".")) for p in relative.split("/")):
            files.append((relative, info))
    return files


def footer_nanos_columns(location: str) -> set[str] | None:
    """Top-level columns stored as ``TIMESTAMP(NANOS)``, from the footer of one Parquet file under
    ``location``; None when pyarrow cannot open the path from here."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyarrow import fs

        from segspark.io import storage

        filesystem, path = storage.filesystem(location)  # S3 (s3a://) as pyarrow names it
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            files = [
                f.path
                for f in filesystem.get_file_info(fs.FileSelector(path, recursive=True))
                if f.type == fs.FileType.File
                and f.base_name.endswith(".parquet")
                and not f.base_name.startswith(("_", "."))
            ]
            if not files:
                return None
            path = sorted(files)[0]
        with filesystem.open_input_file(path) as handle:
            arrow = pq.read_schema(handle)
    except Exception as exc:  # no filesystem, no credentials, not reachable from this process
        log.debug("parquet footer of %s not readable here (%s): timestamp roles decide", location, exc)
        return None
    return {f.name for f in arrow if pa.types.is_timestamp(f.type) and f.type.unit == "ns"}
