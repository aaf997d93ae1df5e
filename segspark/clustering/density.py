"""Density clusters at scale: scikit-learn DBSCAN/HDBSCAN on a seeded sample, nearest-core assignment for all.

MLlib has no density clustering, so this is an approximation, documented here:

1. A seeded sample of ``clustering.density_sample`` prepared customers (stratified, with proportional
   allocation and a floor per stratum, when ``clustering.density_strata`` names a column) goes to the
   driver.
2. DBSCAN (``eps`` from config, or the ``density_eps_quantile`` of the distance to the
   ``density_min_samples``-th neighbour) or HDBSCAN is fitted there. The "core" set is DBSCAN's core
   samples; for HDBSCAN, which has no core samples, it is every sample point given a cluster.
3. Every customer is assigned in parallel (``mapInPandas``; the fitted nearest-neighbour index travels
   inside the function's closure, which is how Spark ships it to the workers) to the cluster of its
   nearest core point if that point is within ``eps``, else to noise (-1), the "Outliers" persona.
   This equals DBSCAN's own rule for border and noise points, but judged against the sample's core
   points only: a customer in a region too sparse to hold a sampled core point becomes noise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from threadpoolctl import threadpool_limits

from segspark import schema as S
from segspark.clustering import prep
from segspark.clustering.sample import hash_fraction, sample_to_numpy
from segspark.config import ClusteringConfig
from segspark.errors import InputError

log = logging.getLogger(__name__)

NOISE = -1
_XA = "_xa"


@dataclass
class DensityModel:
    """The fitted density model: core points in the prepared feature space and their labels."""

    algorithm: str
    eps: float
    core_points: np.ndarray
    core_labels: np.ndarray
    n_clusters: int
    sample_rows: int
    sample_noise_share: float

    def describe(self) -> str:
        return (
            f"{self.algorithm} on a {self.sample_rows:,}-row sample: {self.n_clusters} clusters, "
            f"{self.sample_noise_share:.1%} of the sample noise; customers join the cluster of the nearest "
            f"of {len(self.core_points):,} core points within eps={self.eps:.3f}, else Outliers"
        )


def density_sample(sample: DataFrame, cfg: ClusteringConfig) -> DataFrame:
    """A seeded (optionally stratified) sample of about ``density_sample`` rows."""

    strata = cfg.density_strata
    if strata and strata in sample.columns:
        counts = {r[strata]: r["count"] for r in sample.groupBy(strata).count().collect()}
        total = sum(counts.values())
        base = min(1.0, cfg.density_sample / max(total, 1))
        floor = 5 * cfg.density_min_samples
        fractions = {k: min(1.0, max(base, min(c, floor) / c)) for k, c in counts.items()}
        fmap = F.create_map(*[x for k, f in fractions.items() if k is not None for x in (F.lit(k), F.lit(f))])
        frac = F.coalesce(F.element_at(fmap, F.col(strata)), F.lit(fractions.get(None, base)))
        return sample.where(hash_fraction(cfg.seed, 11) < frac)
    if strata:
        log.warning("clustering.density_strata '%s' is not a column; using an unstratified sample", strata)
    total = sample.count()
    if total <= cfg.density_sample:
        return sample
    return sample.where(hash_fraction(cfg.seed, 11) < F.lit(cfg.density_sample / total))


def fit_density(sample: DataFrame, cfg: ClusteringConfig, algorithm: str) -> DensityModel:
    """Fit DBSCAN or HDBSCAN on a driver-side sample of the prepared ``features`` vectors."""

    x, _ = sample_to_numpy(density_sample(sample, cfg), [])
    with threadpool_limits(limits=1):  # see sweep.sweep_local: avoid oversubscribing Spark's cores
        return _fit_density(x, cfg, algorithm)


def _fit_density(x: np.ndarray, cfg: ClusteringConfig, algorithm: str) -> DensityModel:
    from sklearn.cluster import DBSCAN, HDBSCAN
    from sklearn.neighbors import NearestNeighbors

    m = cfg.density_min_samples
    if len(x) <= m:
        raise InputError(
            f"customer_features: density clustering needs more than density_min_samples={m} sampled "
            f"customers, got {len(x)}"
        )
    kdist = NearestNeighbors(n_neighbors=m).fit(x).kneighbors(x)[0][:, -1]
    if algorithm == "dbscan":
        eps = cfg.density_eps or float(np.quantile(kdist, cfg.density_eps_quantile))
        fitted = DBSCAN(eps=eps, min_samples=m).fit(x)
        labels = fitted.labels_
        core = fitted.core_sample_indices_
    else:
        fitted = HDBSCAN(min_cluster_size=m, min_samples=m, copy=True).fit(x)
        labels = fitted.labels_
        core = np.flatnonzero(labels >= 0)
        eps = (
            cfg.density_eps or float(np.quantile(kdist[core], cfg.density_eps_quantile)) if len(core) else 0.0
        )
    if len(core) == 0:
        raise InputError(
            f"customer_features: {algorithm} found no dense region in the sample (eps={eps:.3g}, "
            f"min_samples={m}); raise clustering.density_eps or use kmeans"
        )
    n_clusters = int(labels[labels >= 0].max() + 1) if (labels >= 0).any() else 0
    model = DensityModel(
        algorithm=algorithm,
        eps=eps,
        core_points=x[core],
        core_labels=labels[core].astype(np.int32),
        n_clusters=n_clusters,
        sample_rows=len(x),
        sample_noise_share=float((labels < 0).mean()),
    )
    log.info("density: %s", model.describe())
    return model


def assign_density(prepared: DataFrame, model: DensityModel) -> DataFrame:
    """Every row of ``prepared`` plus ``prediction`` (int): its nearest core point's cluster, or -1."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(model.core_points)
    labels, eps = model.core_labels, model.eps
    others = [c for c in prepared.columns if c != prep.FEATURES_COL]
    inp = prepared.select(*others, vector_to_array(F.col(prep.FEATURES_COL)).alias(_XA))
    schema = T.StructType([*inp.schema.fields, T.StructField(prep.PREDICTION_COL, T.IntegerType(), False)])

    # mapInPandas: a nearest-neighbour query against a fitted index has no built-in equivalent
    def assign(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if len(pdf) == 0:
                yield pdf.assign(**{prep.PREDICTION_COL: pd.Series([], dtype="int32")})
                continue
            dist, idx = index.kneighbors(np.vstack(list(pdf[_XA].to_numpy())), n_neighbors=1)
            pred = np.where(dist[:, 0] <= eps, labels[idx[:, 0]], NOISE).astype("int32")
            yield pdf.assign(**{prep.PREDICTION_COL: pred})

    out = inp.mapInPandas(assign, schema)
    return out.select(
        *others, array_to_vector(F.col(_XA)).alias(prep.FEATURES_COL), F.col(prep.PREDICTION_COL)
    ).select(
        S.CUSTOMER_ID, *[c for c in others if c != S.CUSTOMER_ID], prep.FEATURES_COL, prep.PREDICTION_COL
    )
