"""Seeded, partitioning-independent samples of the customer table, and a sample as a matrix.

Only samples reach the driver: ``sample_to_numpy`` is for a few thousand rows, never the table.
"""

from __future__ import annotations

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.clustering import prep

# --- sampling -----------------------------------------------------------------------------------


def hash_fraction(seed: int, salt: int) -> Column:
    """A uniform number in [0, 1) from the customer key: the same rows whatever the partitioning."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), F.col(S.CUSTOMER_ID)), F.lit(1_000_003)) / F.lit(
        1_000_003.0
    )


def seeded_sample(df: DataFrame, total: int, size: int, seed: int, salt: int = 0) -> DataFrame:
    """About ``size`` rows of ``df`` (all of them when smaller), chosen by a keyed hash."""
    if total <= size:
        return df
    return df.where(hash_fraction(seed, salt) < F.lit(size / total))


def in_key_order(df: DataFrame) -> DataFrame:
    """A (sample-sized) frame as one partition sorted by customer key.

    MLlib's initializations (k-means||, random splits) and the approximate quantiles of the imputer
    draw per partition and in row order: the same rows in another layout (file order, join, cache)
    give other centres. One sorted partition makes every fit on the sample a function of its rows.
    """
    return df.repartition(1).sortWithinPartitions(S.CUSTOMER_ID)


def in_hash_layout(df: DataFrame, partitions: int) -> DataFrame:
    """A customer-level frame in a layout fixed by the customer key: hash partitions, each sorted."""
    return df.repartition(partitions, F.col(S.CUSTOMER_ID)).sortWithinPartitions(S.CUSTOMER_ID)


def sample_to_numpy(df: DataFrame, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """A (sample) DataFrame's vector column as a matrix, ordered by customer key for determinism."""
    # a sample, sorted on the driver: a Spark sort of a few thousand rows costs a shuffle job
    pdf = (
        df.select(S.CUSTOMER_ID, vector_to_array(F.col(prep.FEATURES_COL)).alias("x"))
        .toPandas()
        .sort_values(S.CUSTOMER_ID, kind="stable", ignore_index=True)
    )
    x = np.vstack(pdf["x"].to_numpy()) if len(pdf) else np.zeros((0, len(columns)))
    return x.astype(float), pdf[S.CUSTOMER_ID].tolist()
