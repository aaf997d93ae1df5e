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

from segspark import schema as S
from segspark.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from segspark.context import RunContext

# Conventional PSI reading: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 major shift.
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
# An empty bin would make the log ratio infinite; floor shares as is customary.
SHARE_FLOOR = 1e-4
# Buckets per dimension that may reach the driver: segment labels and deciles are a few dozen; a
# column with more distinct values (an id, a raw amount) is no segment dimension and is refused.
MAX_BUCKETS = 1_000

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


def _shares(
    df: DataFrame, bucket: F.Column, dimension: str, max_buckets: int = MAX_BUCKETS
) -> dict[str, float]:
    """Share of rows per bucket; at most ``max_buckets`` rows reach the driver (else InputError)."""
    rows = df.groupBy(bucket.alias("b")).count().limit(max_buckets + 1).collect()
    if len(rows) > max_buckets:
        raise InputError(
            f"drift: column '{dimension}' has more than {max_buckets} distinct values; drift compares "
            "low-cardinality segment labels and binned numeric features"
        )
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
    max_buckets: int = MAX_BUCKETS,
) -> DataFrame:
    """Drift rows per dimension: one row per bucket with both shares, plus a ``__total__`` row with PSI.

    The first run (no previous snapshot) returns an empty table with the schema. Numeric columns
    have at most 11 buckets (deciles and null); a categorical one with more than ``max_buckets``
    values raises ``InputError`` rather than bring them to the driver.
    """
    spark = current.sparkSession
    if previous is None:
        return spark.createDataFrame([], DRIFT_SCHEMA)
    rows: list[tuple[object, ...]] = []
    for col in categorical:
        if col in current.columns and col in previous.columns:
            bucket = F.coalesce(F.col(col).cast("string"), F.lit("(none)"))
            rows += _rows(
                col,
                "categorical",
                _shares(previous, bucket, col, max_buckets),
                _shares(current, bucket, col, max_buckets),
            )
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
        rows += _rows(col, "numeric", _shares(previous, bucket, col), _shares(current, bucket, col))
    return spark.createDataFrame(rows, DRIFT_SCHEMA)


# the dimensions ``segspark monitor`` and the aggregates stage compare between two snapshots
DRIFT_CATEGORICAL = (S.RFM_SEGMENT, S.LIFECYCLE_STAGE, S.PERSONA, S.VALUE_TIER, "churn_band")
DRIFT_NUMERIC = (S.RECENCY_DAYS, S.FREQUENCY, S.MONETARY, S.CLV, S.CHURN_RISK)


def monitor(ctx: RunContext) -> DataFrame:
    """Drift of the latest customer_segments snapshot against the one before; writes ``drift``."""
    from segspark.context import latest_date, recorded

    with recorded(ctx):
        if not ctx.lake.exists(S.CUSTOMER_SEGMENTS):
            raise InputError("no customer_segments table yet: run the pipeline first")
        ctx.as_of_date = latest_date(ctx, S.CUSTOMER_SEGMENTS)
        current = ctx.read(S.CUSTOMER_SEGMENTS)
        previous = ctx.lake.read_latest_snapshot(S.CUSTOMER_SEGMENTS, before=ctx.as_of_date)
        out = segment_drift(current, previous, DRIFT_CATEGORICAL, DRIFT_NUMERIC)
        ctx.write(out, S.DRIFT)
    return out.where(F.col("bucket") == "__total__")
