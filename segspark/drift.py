"""Drift versus the previous run: segment mix shifts and feature distribution shifts (PSI).

The population stability index compares shares per bin: PSI = sum((cur - prev) * ln(cur / prev)).
Bins of numeric features are the previous run's deciles, so the previous distribution is the
reference. Everything is aggregated in Spark; only bin shares reach the driver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql import types as T

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# Conventional PSI reading: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 major shift.
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
# An empty bin would make the log ratio infinite; floor shares as is customary.
SHARE_FLOOR = 1e-4

DRIFT_SCHEMA = T.StructType(
    [
        T.StructField("dimension", T.StringType()),
        T.StructField("kind", T.StringType()),
        T.StructField("bucket", T.StringType()),
        T.StructField("previous_share", T.DoubleType()),
        T.StructField("current_share", T.DoubleType()),
        T.StructField("psi", T.DoubleType()),
        T.StructField("status", T.StringType()),
    ]
)


def psi(previous: Sequence[float], current: Sequence[float]) -> float:
    total = 0.0
    for p, c in zip(previous, current, strict=True):
        p, c = max(p, SHARE_FLOOR), max(c, SHARE_FLOOR)
        total += (c - p) * math.log(c / p)
    return total


def status(value: float) -> str:
    if value >= PSI_MAJOR:
        return "major"
    if value >= PSI_MODERATE:
        return "moderate"
    return "stable"


def _shares(df: DataFrame, bucket: F.Column) -> dict[str, float]:
    rows = df.groupBy(bucket.alias("b")).count().collect()
    total = sum(r["count"] for r in rows) or 1
    return {str(r["b"]): r["count"] / total for r in rows}


def _rows(
    dimension: str, kind: str, prev: dict[str, float], cur: dict[str, float]
) -> list[tuple[object, ...]]:
    keys = sorted(set(prev) | set(cur))
    p = [prev.get(k, 0.0) for k in keys]
    c = [cur.get(k, 0.0) for k in keys]
    value = psi(p, c)
    out: list[tuple[object, ...]] = [
        (dimension, kind, k, pk, ck, None, None) for k, pk, ck in zip(keys, p, c, strict=True)
    ]
    out.append((dimension, kind, "__total__", 1.0, 1.0, value, status(value)))
    return out


def segment_drift(
    current: DataFrame,
    previous: DataFrame | None,
    categorical: Sequence[str],
    numeric: Sequence[str],
) -> DataFrame:
    """Drift rows per dimension: one row per bucket with both shares, plus a ``__total__`` row with PSI.

    The first run (no previous snapshot) returns an empty table with the schema.
    """
    spark = current.sparkSession
    if previous is None:
        return spark.createDataFrame([], DRIFT_SCHEMA)
    rows: list[tuple[object, ...]] = []
    for col in categorical:
        if col in current.columns and col in previous.columns:
            bucket = F.coalesce(F.col(col).cast("string"), F.lit("(none)"))
            rows += _rows(col, "categorical", _shares(previous, bucket), _shares(current, bucket))
    for col in numeric:
        if col not in current.columns or col not in previous.columns:
            continue
        edges_row = previous.agg(
            F.percentile_approx(F.col(col).cast("double"), [i / 10 for i in range(1, 10)], 1000).alias("q")
        ).first()
        edges = sorted(set(edges_row["q"] or [])) if edges_row else []
        if not edges:
            continue
        value = F.col(col).cast("double")
        bucket = F.when(value.isNull(), F.lit("(null)"))
        for i, edge in enumerate(edges):
            bucket = bucket.when(value <= F.lit(edge), F.lit(f"{i:02d}: <= {edge:.6g}"))
        bucket = bucket.otherwise(F.lit(f"{len(edges):02d}: > {edges[-1]:.6g}"))
        rows += _rows(col, "numeric", _shares(previous, bucket), _shares(current, bucket))
    return spark.createDataFrame(rows, DRIFT_SCHEMA)
