"""Validity indices checked against scikit-learn on the same small data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors
from pyspark.sql import types as T
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

from segspark.clustering import indices as ix

SCHEMA = T.StructType(
    [
        T.StructField("features", T.ArrayType(T.DoubleType()), False),
        T.StructField("prediction", T.IntegerType(), False),
    ]
)


def _blobs(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [1.0, 5.0, 3.0]])
    sizes = [17, 9, 4]  # unequal, includes a small cluster
    parts = zip(centres, sizes, strict=True)
    x = np.vstack([c + rng.normal(scale=0.8 + i * 0.3, size=(n, 3)) for i, (c, n) in enumerate(parts)])
    labels = np.repeat([0, 1, 2], sizes)
    return x, labels


@pytest.fixture(scope="module")
def blobs_df(spark):  # type: ignore[no-untyped-def]
    x, labels = _blobs()
    rows = [(list(map(float, r)), int(lab)) for r, lab in zip(x, labels, strict=True)]
    return spark.createDataFrame(rows, SCHEMA)


def test_spark_indices_match_sklearn(blobs_df) -> None:  # type: ignore[no-untyped-def]
    x, labels = _blobs()
    got = ix.spark_indices(blobs_df, "features", "prediction", 3)
    assert got["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-9)
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(x, labels), rel=1e-9)
    centroids = np.vstack([x[labels == k].mean(axis=0) for k in range(3)])
    assert got["wcss"] == pytest.approx(((x - centroids[labels]) ** 2).sum(), rel=1e-9)
    assert got["min_cluster_share"] == pytest.approx(4 / 30)


def test_spark_silhouette_matches_sklearn_sqeuclidean(spark) -> None:  # type: ignore[no-untyped-def]
    x, labels = _blobs()
    df = spark.createDataFrame(
        [(Vectors.dense(r), float(lab)) for r, lab in zip(x, labels, strict=True)], ["features", "prediction"]
    )
    got = ix.spark_silhouette(df, "features", "prediction")
    assert got == pytest.approx(silhouette_score(x, labels, metric="sqeuclidean"), rel=1e-6)


def test_local_silhouette_matches_sklearn_including_singleton() -> None:
    x, labels = _blobs()
    labels = labels.copy()
    labels[-1] = 3  # a singleton cluster: silhouette 0 for that point by convention
    assert ix.local_silhouette(x, labels) == pytest.approx(
        silhouette_score(x, labels, metric="sqeuclidean"), rel=1e-9
    )
    assert math.isnan(ix.local_silhouette(x, np.zeros(len(x), dtype=int)))


def test_local_indices_match_spark(blobs_df) -> None:  # type: ignore[no-untyped-def]
    x, labels = _blobs()
    loc = ix.local_indices(x, labels)
    spk = ix.spark_indices(blobs_df, "features", "prediction", 3)
    for key in ("wcss", "calinski_harabasz", "davies_bouldin", "min_cluster_share"):
        assert loc[key] == pytest.approx(spk[key], rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0, 0, 1, 1, 2, 2, 2], [1, 1, 0, 0, 2, 2, 0]),
        ([0, 0, 0, 0], [0, 1, 2, 3]),
        ([0, 1, 0, 1, 0, 1], [0, 0, 0, 1, 1, 1]),
        ([5, 5, 5], [1, 1, 1]),
    ],
)
def test_ari_from_contingency_matches_sklearn(a: list[int], b: list[int]) -> None:
    ua, ub = sorted(set(a)), sorted(set(b))
    table = np.zeros((len(ua), len(ub)), dtype=np.int64)
    for p, q in zip(a, b, strict=True):
        table[ua.index(p), ub.index(q)] += 1
    assert ix.adjusted_rand_from_contingency(table) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_spark_ari_matches_sklearn_with_null_label(spark) -> None:  # type: ignore[no-untyped-def]
    a = [0, 0, 1, 1, 2, 2, None, 1]
    b = [1, 1, 0, 2, 2, 2, 3, 0]
    schema = T.StructType(
        [T.StructField("a", T.IntegerType(), True), T.StructField("b", T.IntegerType(), False)]
    )
    df = spark.createDataFrame(list(zip(a, b, strict=True)), schema)
    ref = adjusted_rand_score([-9 if v is None else v for v in a], b)  # a null label is its own group
    assert ix.spark_adjusted_rand(df, "a", "b") == pytest.approx(ref, abs=1e-12)


def test_degenerate_partitions() -> None:
    x, _ = _blobs()
    one = ix.local_indices(x, np.zeros(len(x), dtype=int))
    assert math.isnan(one["calinski_harabasz"]) and math.isnan(one["davies_bouldin"])
    assert ix.davies_bouldin_from_stats(np.zeros(2), np.array([[0.0], [1.0]])) == 0.0
