"""Columns: conform the source names to the canonical ones, then parse text, numbers and times with
ANSI-safe functions (``try_cast``, ``try_to_timestamp``): a value that does not parse becomes null,
for a rule to catch, never an error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark.errors import InputError


def conform(df: DataFrame, table: str, mapping: Mapping[str, str]) -> DataFrame:
    """Rename source columns to canonical names (``mapping``: canonical -> source); keep the others.

    Raises ``InputError`` naming the table and column when a mapped source column or a required
    canonical column is missing, or when a rename would clash with an existing column.
    """
    if table not in S.INPUT_COLUMNS:
        raise InputError(f"unknown input table '{table}'; expected one of {', '.join(S.INPUT_COLUMNS)}")
    columns = list(df.columns)
    sources: dict[str, str] = {}
    for canonical, source in mapping.items():
        if source not in columns:
            raise InputError(
                f"{table}: column '{source}' (mapped to '{canonical}') not found; columns are {columns}"
            )
        if source in sources:
            raise InputError(
                f"{table}: column '{source}' is mapped to both '{sources[source]}' and '{canonical}'"
            )
        if canonical in columns and canonical != source and canonical not in mapping.values():
            raise InputError(
                f"{table}: column '{canonical}' exists and '{source}' is also mapped to it; "
                f"drop or rename one of them"
            )
        sources[source] = canonical
    out = df.select(*[F.col(c).alias(sources[c]) if c in sources else F.col(c) for c in columns])
    required, _optional = S.INPUT_COLUMNS[table]
    for name in required:
        if name not in out.columns:
            raise InputError(
                f"{table}: required column '{name}' is missing; columns are {columns} "
                f"(map it with input.{table}.columns.{name}=<source column>)"
            )
    return out


# --- parsing helpers (Column -> Column) ------------------------------------------------------------


def blank_to_null(c: Column) -> Column:
    """A value as trimmed text, null when empty (ingest's rule for every text column; the report's too)."""
    trimmed = F.trim(c.cast("string"))
    return F.when(trimmed != "", trimmed)


def parse_timestamp(c: Column, dtype: T.DataType, formats: Sequence[str] = ()) -> Column:
    """A timestamp from a timestamp, date or text column; null where it cannot be parsed."""
    if isinstance(dtype, T.TimestampType):
        return c
    if isinstance(dtype, (T.DateType, T.TimestampNTZType)):
        return c.cast("timestamp")
    text = blank_to_null(c)
    tries = [F.try_to_timestamp(text, F.lit(fmt)) for fmt in formats]
    return F.coalesce(*tries, F.try_to_timestamp(text)) if tries else F.try_to_timestamp(text)


def parse_double(c: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.NumericType):
        return c.cast("double")
    return blank_to_null(c).try_cast("double")


def not_finite(c: Column) -> Column:
    """Null, NaN or +-infinity."""
    return c.isNull() | F.isnan(c) | (F.abs(c) == F.lit(float("inf")))


def is_true(c: Column) -> Column:
    """A condition with null read as false: a rule fires only where its condition holds."""
    return F.coalesce(c, F.lit(False))


def col_or_null(df: DataFrame, name: str, kind: str) -> tuple[Column, T.DataType]:
    """An optional input column and its type; when the input lacks it, a null of ``kind`` typed
    ``NullType`` (so the parsers take it as text)."""
    if name in df.columns:
        return F.col(name), df.schema[name].dataType
    return F.lit(None).cast(kind), T.NullType()
