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
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

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


def nanos_to_timestamp(c: Column) -> Column:
    """Epoch nanoseconds (int64) -> timestamp, floored to the microsecond (exact: decimal, not double,
    division; a double holds only 53 bits of the ~61 an epoch-nanosecond value needs)."""
    micros = F.floor(c.cast("decimal(20,0)") / F.lit(1000)).cast("long")
    return F.timestamp_micros(micros)


def read_files(spark: SparkSession, name: str, cfg: InputTable) -> DataFrame:
    """Read the Parquet or CSV input ``name`` at ``cfg.path`` with its reader options.

    A path Spark cannot find or read a schema from (a cloud path the preflight could not check) is
    an ``InputError`` naming the input and the path."""
    try:
        return _read_files(spark, name, cfg)
    except Exception as exc:
        text = str(exc)
        for marker, what in (("PATH_NOT_FOUND", "no"), ("UNABLE_TO_INFER_SCHEMA", "no readable")):
            if marker in text:
                raise InputError(
                    f"input '{name}': {what} {cfg.format} data at {cfg.path} (input.{name}.path)"
                ) from None
        raise


def _read_files(spark: SparkSession, name: str, cfg: InputTable) -> DataFrame:
    location = cfg.path
    assert location is not None
    reader = spark.read
    if cfg.format == "csv":
        # every column read as a string: ingest casts with ANSI-safe try_cast and quarantines failures
        reader = reader.option("header", "true").option("inferSchema", "false")
    for key, value in cfg.options.items():
        reader = reader.option(key, value)
    if cfg.format != "parquet":
        return reader.format(cfg.format).load(location)
    return _read_parquet(spark, reader, name, cfg)


def _read_parquet(spark: SparkSession, reader: DataFrameReader, name: str, cfg: InputTable) -> DataFrame:
    location = cfg.path
    assert location is not None
    previous = spark.conf.get(NANOS_AS_LONG, "false") or "false"
    spark.conf.set(NANOS_AS_LONG, "true")
    try:
        schema = reader.format("parquet").load(location).schema
    finally:
        spark.conf.set(NANOS_AS_LONG, previous)
    longs = [f.name for f in schema.fields if isinstance(f.dataType, T.LongType)]
    if not longs:
        return reader.format("parquet").load(location)
    nanos = footer_nanos_columns(location)
    if nanos is None:
        roles = {cfg.columns.get(c, c) for c in TIMESTAMP_ROLES.get(name, ())}
        nanos = {c for c in longs if c in roles}
    nanos &= set(longs)
    if not nanos:
        return reader.format("parquet").load(location)
    log.info("input %s: nanosecond timestamps in %s read to the microsecond", name, sorted(nanos))
    df = reader.schema(schema).format("parquet").load(location)
    return df.select(*[nanos_to_timestamp(F.col(c)).alias(c) if c in nanos else F.col(c) for c in df.columns])


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
