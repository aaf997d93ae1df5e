"""Cluster validity indices: WCSS, Calinski-Harabasz, Davies-Bouldin, silhouette, adjusted Rand index.

MLlib's ``ClusteringEvaluator`` only has the silhouette, so the others are computed here in Spark from
per-cluster aggregates (two passes: counts and vector sums give the centroids; then each row's distance
to its centroid gives the within-cluster dispersion), with the definitions scikit-learn uses, and the
tests check each against scikit-learn. The ``local_*`` functions do the same on a driver-side sample
(numpy); the silhouette there uses squared Euclidean distances, like MLlib's evaluator, so both sweep
engines report the same quantity.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score

_ARR = "_x"


def _as_array(col: str, df: DataFrame) -> Column:
    """The features column as array<double> (vectors are converted, arrays passed through)."""
    dtype = dict(df.dtypes)[col]
    return F.col(col) if dtype.startswith("array") else vector_to_array(F.col(col))


def centroid_stats(
    df: DataFrame, features_col: str, prediction_col: str, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cluster (labels, counts, centroids) from one grouped aggregate; small, so it goes to the driver."""
    x = _as_array(features_col, df)
    rows = (
        df.select(F.col(prediction_col).cast("int").alias("k"), x.alias(_ARR))
        .groupBy("k")
        .agg(F.count(F.lit(1)).alias("n"), *[F.sum(F.col(_ARR)[j]).alias(f"s{j}") for j in range(dim)])
        .orderBy("k")
        .collect()
    )
    labels = np.array([r["k"] for r in rows], dtype=int)
    counts = np.array([r["n"] for r in rows], dtype=float)
    sums = np.array([[r[f"s{j}"] for j in range(dim)] for r in rows], dtype=float).reshape(len(rows), dim)
    return labels, counts, sums / counts[:, None]


def _dispersion(
    df: DataFrame, features_col: str, prediction_col: str, labels: np.ndarray, centroids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster mean Euclidean distance to the centroid and sum of squared distances (second pass)."""
    cmap = F.create_map(
        *[
            item
            for lab, c in zip(labels, centroids, strict=True)
            for item in (F.lit(int(lab)), F.array(*[F.lit(float(v)) for v in c]))
        ]
    )
    x = _as_array(features_col, df)
    k = F.col(prediction_col).cast("int")
    sq = F.aggregate(
        F.zip_with(x, F.element_at(cmap, k), lambda a, b: (a - b) * (a - b)),
        F.lit(0.0),
        lambda acc, v: acc + v,
    )
    rows = (
        df.select(k.alias("k"), sq.alias("d2"))
        .groupBy("k")
        .agg(F.avg(F.sqrt("d2")).alias("s"), F.sum("d2").alias("w"))
        .collect()
    )
    by_label = {r["k"]: (r["s"], r["w"]) for r in rows}
    s = np.array([by_label[int(lab)][0] for lab in labels], dtype=float)
    w = np.array([by_label[int(lab)][1] for lab in labels], dtype=float)
    return s, w


def calinski_harabasz_from_stats(counts: np.ndarray, centroids: np.ndarray, wcss: float) -> float:
    """Calinski-Harabasz from per-cluster counts and centroids and the total within-cluster SS."""
    n, k = counts.sum(), len(counts)
    if k < 2 or k >= n:
        return math.nan
    grand = (counts[:, None] * centroids).sum(axis=0) / n
    between = float((counts * ((centroids - grand) ** 2).sum(axis=1)).sum())
    if wcss == 0.0:
        return 1.0  # scikit-learn's convention for zero within-cluster dispersion
    return between * (n - k) / (wcss * (k - 1))


def davies_bouldin_from_stats(scatter: np.ndarray, centroids: np.ndarray) -> float:
    """Davies-Bouldin from per-cluster mean distance to the centroid and the centroids."""
    k = len(scatter)
    if k < 2:
        return math.nan
    dist = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(scatter, 0) or np.allclose(dist, 0):
        return 0.0
    dist[dist == 0] = np.inf  # coinciding centroids contribute nothing (scikit-learn's convention)
    ratio = (scatter[:, None] + scatter[None, :]) / dist
    np.fill_diagonal(ratio, -np.inf)
    return float(np.max(ratio, axis=1).mean())


def spark_indices(df: DataFrame, features_col: str, prediction_col: str, dim: int) -> dict[str, float]:
    """WCSS, Calinski-Harabasz, Davies-Bouldin and cluster shares, computed in Spark."""
    labels, counts, centroids = centroid_stats(df, features_col, prediction_col, dim)
    scatter, within = _dispersion(df, features_col, prediction_col, labels, centroids)
    wcss = float(within.sum())
    return {
        "wcss": wcss,
        "calinski_harabasz": calinski_harabasz_from_stats(counts, centroids, wcss),
        "davies_bouldin": davies_bouldin_from_stats(scatter, centroids),
        "clusters": float(len(labels)),
        "rows": float(counts.sum()),
        "min_cluster_share": float(counts.min() / counts.sum()) if len(counts) else math.nan,
    }


def spark_silhouette(
    df: DataFrame,
    features_col: str,
    prediction_col: str,
    sample: int | None = None,
    seed: int = 42,
    *,
    rows: int | None = None,
    clusters: int | None = None,
) -> float:
    """Squared-Euclidean silhouette from MLlib's evaluator, on a seeded sample when ``df`` is larger.

    ``rows`` and ``clusters`` (when known) save a pass each.
    """
    data = df.select(features_col, F.col(prediction_col).cast("double").alias(prediction_col))
    if sample is not None:
        n = data.count() if rows is None else rows
        if n > sample:
            # a hash of the point, not ``sample().limit()``: Bernoulli draws and a limit depend on the
            # partitioning and row order, so a rerun on the same data would report another silhouette
            u = F.pmod(F.xxhash64(F.lit(seed), _as_array(features_col, df)), F.lit(1_000_003))
            data = data.where(u < F.lit(1_000_003.0 * sample / n))
    if clusters is None:
        clusters = data.select(prediction_col).distinct().limit(2).count()
    if clusters < 2:
        return math.nan
    evaluator = ClusteringEvaluator(
        featuresCol=features_col,
        predictionCol=prediction_col,
        metricName="silhouette",
        distanceMeasure="squaredEuclidean",
    )
    return float(evaluator.evaluate(data))


def adjusted_rand_from_contingency(table: np.ndarray) -> float:
    """Adjusted Rand index from a contingency table of two labelings (pair-counting form).

    Python integers keep the pair counts exact at millions of customers (they overflow int64).
    """
    t = [[int(v) for v in row] for row in np.asarray(table)]
    n = sum(sum(row) for row in t)
    sum_sq = sum(v * v for row in t for v in row)
    a = [sum(row) for row in t]
    b = [sum(col) for col in zip(*t, strict=True)] if t else []
    tp = sum_sq - n
    fp = sum(x * x for x in a) - sum_sq
    fn = sum(x * x for x in b) - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def spark_adjusted_rand(df: DataFrame, col_a: str, col_b: str) -> float:
    """Adjusted Rand index between two label columns; only the contingency table reaches the driver."""
    rows = df.groupBy(col_a, col_b).count().collect()
    ra = sorted({r[col_a] for r in rows}, key=str)
    rb = sorted({r[col_b] for r in rows}, key=str)
    ia, ib = {v: i for i, v in enumerate(ra)}, {v: i for i, v in enumerate(rb)}
    table = np.zeros((len(ra), len(rb)), dtype=np.int64)
    for r in rows:
        table[ia[r[col_a]], ib[r[col_b]]] = r["count"]
    return adjusted_rand_from_contingency(table)


# --- driver-side sample -------------------------------------------------------------------------


def local_silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Exact squared-Euclidean silhouette in O(n k d) (the decomposition MLlib's evaluator uses).

    Hand-written because scikit-learn's is O(n^2) in time: sum_j |x_i - x_j|^2 over a cluster C is
    n_C |x_i|^2 - 2 x_i . S_C + Q_C with S_C, Q_C the cluster's vector sum and sum of squared norms.
    """
    uniq, inv = np.unique(labels, return_inverse=True)
    n, k = len(labels), len(uniq)
    if k < 2 or k >= n:
        return math.nan
    x = x - x.mean(axis=0)  # centring keeps the decomposition numerically tame
    sq = (x * x).sum(axis=1)
    counts = np.bincount(inv, minlength=k).astype(float)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, inv, x)
    qs = np.bincount(inv, weights=sq, minlength=k)
    total = counts[None, :] * sq[:, None] - 2.0 * x @ sums.T + qs[None, :]
    total = np.maximum(total, 0.0)
    own = inv
    own_n = counts[own]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = total[np.arange(n), own] / (own_n - 1)
        mean_other = total / counts[None, :]
    mean_other[np.arange(n), own] = np.inf
    b = mean_other.min(axis=1)
    denom = np.maximum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > 0, (b - a) / denom, 0.0)
    s[own_n == 1] = 0.0  # scikit-learn's convention for singleton clusters
    return float(s.mean())


def local_indices(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The same indices as :func:`spark_indices` plus the silhouette, for a driver-side sample."""
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    centroids = np.zeros((len(uniq), x.shape[1]))
    np.add.at(centroids, inv, x)
    centroids /= counts[:, None]
    wcss = float(((x - centroids[inv]) ** 2).sum())
    several = 2 <= len(uniq) < len(labels)
    return {
        "wcss": wcss,
        "calinski_harabasz": float(calinski_harabasz_score(x, labels)) if several else math.nan,
        "davies_bouldin": float(davies_bouldin_score(x, labels)) if several else math.nan,
        "silhouette": local_silhouette(x, labels),
        "clusters": float(len(uniq)),
        "min_cluster_share": float(counts.min() / counts.sum()),
    }


def local_adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    return float(adjusted_rand_score(a, b))
