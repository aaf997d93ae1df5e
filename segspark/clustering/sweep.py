"""The (algorithm, k) sweep, the documented choice rule, and ``fit_segments`` that ties the stage together.

The sweep runs on a seeded sample of the prepared features, with one of two engines:

* ``local`` (default): the sample (``clustering.sample_size`` rows, a sample, never the table) goes to
  the driver and each candidate is fitted with scikit-learn's KMeans / BisectingKMeans /
  GaussianMixture. On a small machine a Spark job costs far more in scheduling than in arithmetic, so
  this is what keeps the stage within seconds.
* ``spark``: each candidate is an MLlib fit on the cached sample, with the indices computed in Spark
  (``indices.spark_*``). Use it on a cluster when the sample is large.

Either way the chosen algorithm and k are then fitted on the sample (default,
``clustering.final_fit: sample``; measured 5-25x faster at 2.5M customers) or on every customer
(``final_fit: all``) as an MLlib model (k-means or bisecting k-means of the local engine's sample:
fitted on the driver and handed to MLlib as the centres of a ``KMeansModel``), appended to the
preparation pipeline, and every customer is assigned by it: that ``PipelineModel`` is what gets
registered and what ``score`` reuses. Its indices are computed in Spark on the sample. The
preparation statistics (imputation medians, scaling) are estimated on the sample too.

Choice rule (recorded in ``chosen["reason"]``):
1. a candidate is admissible if its smallest cluster holds at least ``min_cluster_share`` of the sample
   and, when measured, its stability (adjusted Rand index between fits on two seeded half-samples,
   both predicting the whole sample) is at least ``min_stability``;
2. per algorithm, the knee of the WCSS curve is the k farthest below the chord joining the curve's ends
   (Kneedle on the normalised curve);
3. among admissible candidates within ``knee_window`` of their algorithm's knee, the highest silhouette
   wins (ties: higher Calinski-Harabasz, then smaller k); if none is near a knee, the best admissible
   silhouette overall; if nothing is admissible, the best silhouette overall, and the reason says so.
``clustering.algorithm`` and ``clustering.k`` restrict the candidates (both set: no choice is made).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml import Estimator, PipelineModel
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from segspark import schema as S
from segspark.clustering import indices as ix
from segspark.clustering import personas as P
from segspark.clustering import prep
from segspark.clustering.figures import cluster_figures
from segspark.clustering.sample import (
    hash_fraction,
    in_hash_layout,
    in_key_order,
    sample_to_numpy,
    seeded_sample,
)
from segspark.config import ClusteringConfig
from segspark.errors import ConfigError, InputError
from segspark.schema import CLUSTER_ID, PERSONA
from segspark.session import finalizers_at_safe_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

    from segspark.clustering.density import DensityModel

log = logging.getLogger(__name__)

DENSITY_ALGORITHMS = ("dbscan", "hdbscan")
SWEEP_COLUMNS = [
    "algorithm",
    "k",
    "clusters",
    "wcss",
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "min_cluster_share",
    "stability",
    "fit_seconds",
    "engine",
]


@dataclass
class ClusterResult:
    """Everything the clustering stage produced.

    ``assignments`` (customer_id, cluster_id int, persona string) is backed by a cached DataFrame:
    call :meth:`release` once it has been written.
    """

    assignments: DataFrame
    profiles: pd.DataFrame
    model: PipelineModel
    sweep: pd.DataFrame
    chosen: dict[str, Any]
    features: list[str]
    figures: dict[str, Figure] = field(default_factory=dict)
    density: DensityModel | None = None
    _cached: list[DataFrame] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()


# --- estimators ---------------------------------------------------------------------------------


def mllib_estimator(algorithm: str, k: int, cfg: ClusteringConfig, seed: int | None = None) -> Estimator:
    """The MLlib estimator for one candidate, reading ``features`` and writing ``prediction``."""
    common: dict[str, Any] = {"featuresCol": prep.FEATURES_COL, "predictionCol": prep.PREDICTION_COL, "k": k}
    s = cfg.seed if seed is None else seed
    if algorithm == "kmeans":
        return KMeans(**common, seed=s, maxIter=cfg.max_iter, tol=cfg.tol)
    if algorithm == "bisecting_kmeans":
        return BisectingKMeans(**common, seed=s, maxIter=cfg.max_iter)
    if algorithm == "gmm":
        return GaussianMixture(**common, seed=s, maxIter=max(cfg.max_iter, 100), tol=cfg.tol)
    raise ConfigError(f"clustering.algorithm: '{algorithm}' has no MLlib estimator")


# MLlib's k-means|| (and the random splits of bisecting k-means and the GMM's start) can settle in a
# poor local optimum: the final model is the best of this many seeded starts (seed, seed + 1, ...),
# as scikit-learn's n_init does. Measured on the demo: one start merged two planted archetypes
# (silhouette 0.36 where the sweep's fit of the same k had 0.50).
FINAL_FIT_STARTS = 4


def _fit_cost(model: Any) -> float:
    """What the fit minimises: WCSS for (bisecting) k-means, minus the log-likelihood for a GMM."""
    summary = model.summary
    if hasattr(summary, "trainingCost"):
        return float(summary.trainingCost)
    return -float(summary.logLikelihood)


# Two fits that settle in the same local optimum differ in cost only by their convergence residue
# (k-means stops when no centre moves more than tol): measured on the demo, MLlib's kmeans k=5 cost
# 114046 against the sweep's 114046, equal to 6 digits but not to 9, so 1e-9 fitted 3 starts for nothing
SAME_OPTIMUM_RTOL = 1e-4


# MLlib's fits are hundreds of small Spark jobs each, one after another: their time is the jobs'
# latency (scheduling, the driver's planning between them), which fits running side by side from
# threads of their own overlap (Spark schedules the jobs of several threads of one session). Measured
# on the 2,000-customer demo (bisecting k-means, k=6, 1,896 customers): its 4 starts took 39.2 s one
# after another, 24.3 s side by side, with the same four costs.
def _fitted_in_seed_order(
    fit: Callable[[int], Any], seeds: list[int], batch: int
) -> Generator[Any, None, None]:
    """``fit(seed)`` for each seed, ``batch`` of them at a time side by side, yielded in seed order;
    closing the iterator fits no further batch."""
    with ThreadPoolExecutor(max_workers=batch, thread_name_prefix="final-fit") as pool:
        for first in range(0, len(seeds), batch):
            yield from pool.map(fit, seeds[first : first + batch])


def fit_best_of(
    algorithm: str, k: int, cfg: ClusteringConfig, data: DataFrame, reference_cost: float | None = None
) -> tuple[Any, int]:
    """The chosen candidate fitted with MLlib from up to ``FINAL_FIT_STARTS`` seeds; the lowest cost
    wins (ties: the earlier seed, so the choice is deterministic). Returns the model and the starts
    the choice read.

    ``reference_cost``: the sweep's cost of the same candidate on the same rows (its scikit-learn
    fit). The starts exist to escape a poor local optimum; a start whose cost is at most the
    reference is not in one, so the later starts are not read. The starts are fitted side by side
    (all at once; with a reference two at a time, so that at most one fit is spent after the start
    that reaches it) and read in seed order: the model is the one a one-by-one loop picks."""
    batch = 2 if reference_cost is not None else FINAL_FIT_STARTS
    seeds = [cfg.seed + i for i in range(FINAL_FIT_STARTS)]
    fitted = _fitted_in_seed_order(
        lambda seed: mllib_estimator(algorithm, k, cfg, seed).fit(data), seeds, batch
    )
    best, best_cost, starts = None, math.inf, 0
    for model in fitted:  # in seed order
        starts += 1
        cost = _fit_cost(model)
        if best is None or cost < best_cost - 1e-9 * abs(best_cost):
            best, best_cost = model, cost
        if reference_cost is not None and best_cost <= reference_cost * (1 + SAME_OPTIMUM_RTOL):
            break
    fitted.close()
    log.info(
        "final %s k=%d: best of %d start(s), cost %.6g (sweep's cost %s)",
        algorithm,
        k,
        starts,
        best_cost,
        "not comparable" if reference_cost is None else f"{reference_cost:.6g}",
    )
    return best, starts


def _local_estimator(algorithm: str, k: int, cfg: ClusteringConfig, seed: int) -> Any:
    from sklearn.cluster import BisectingKMeans as SkBisecting
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGMM

    if algorithm == "kmeans":
        return SkKMeans(n_clusters=k, n_init=1, max_iter=cfg.max_iter, tol=cfg.tol, random_state=seed)
    if algorithm == "bisecting_kmeans":
        return SkBisecting(n_clusters=k, max_iter=cfg.max_iter, random_state=seed)
    if algorithm == "gmm":
        return SkGMM(n_components=k, max_iter=max(cfg.max_iter, 100), tol=cfg.tol, random_state=seed)
    raise ConfigError(f"clustering.algorithm: '{algorithm}' cannot be swept")


# --- sweep engines ------------------------------------------------------------------------------


def sweep_local(x: np.ndarray, algorithms: list[str], ks: list[int], cfg: ClusteringConfig) -> pd.DataFrame:
    """Fit every candidate on the driver-side sample ``x`` and measure it."""
    # One BLAS/OpenMP thread: Spark already occupies the cores, and oversubscribed OpenMP threads
    # spin-wait (measured 10-20x slower on a busy 2-core machine).
    with threadpool_limits(limits=1):
        return _sweep_local(x, algorithms, ks, cfg)


def _sweep_local(x: np.ndarray, algorithms: list[str], ks: list[int], cfg: ClusteringConfig) -> pd.DataFrame:
    rng = np.random.default_rng(cfg.seed)
    half = rng.permutation(len(x))
    part_a, part_b = half[: len(x) // 2], half[len(x) // 2 :]
    rows = []
    for algorithm in algorithms:
        for k in ks:
            t0 = time.perf_counter()
            labels = _local_estimator(algorithm, k, cfg, cfg.seed).fit(x).predict(x)
            metrics = ix.local_indices(x, labels)
            stability = math.nan
            if cfg.stability and min(len(part_a), len(part_b)) > k:
                la = _local_estimator(algorithm, k, cfg, cfg.seed + 1).fit(x[part_a]).predict(x)
                lb = _local_estimator(algorithm, k, cfg, cfg.seed + 2).fit(x[part_b]).predict(x)
                stability = ix.local_adjusted_rand(la, lb)
            rows.append(
                {
                    "algorithm": algorithm,
                    "k": k,
                    **metrics,
                    "stability": stability,
                    "fit_seconds": time.perf_counter() - t0,
                    "engine": "local",
                }
            )
            log.info("sweep %s k=%d: %s", algorithm, k, {m: round(v, 4) for m, v in metrics.items()})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def sweep_spark(
    sample: DataFrame, algorithms: list[str], ks: list[int], cfg: ClusteringConfig, dim: int
) -> pd.DataFrame:
    """Fit every candidate with MLlib on the cached ``sample``; indices computed in Spark."""
    halves = sample.select("*", (hash_fraction(cfg.seed, 7) < F.lit(0.5)).alias("_half"))
    part_a, part_b = halves.where(F.col("_half")), halves.where(~F.col("_half"))
    rows = []
    for algorithm in algorithms:
        for k in ks:
            t0 = time.perf_counter()
            scored = mllib_estimator(algorithm, k, cfg).fit(sample).transform(sample)
            metrics = ix.spark_indices(scored, prep.FEATURES_COL, prep.PREDICTION_COL, dim)
            metrics["silhouette"] = ix.spark_silhouette(
                scored,
                prep.FEATURES_COL,
                prep.PREDICTION_COL,
                cfg.silhouette_sample,
                cfg.seed,
                rows=int(metrics.pop("rows")),
                clusters=int(metrics["clusters"]),
            )
            stability = math.nan
            if cfg.stability:
                ma = mllib_estimator(algorithm, k, cfg, cfg.seed + 1).fit(part_a)
                mb = mllib_estimator(algorithm, k, cfg, cfg.seed + 2).fit(part_b)
                both = mb.transform(
                    ma.transform(sample).withColumnRenamed(prep.PREDICTION_COL, "_a").drop("probability")
                ).withColumnRenamed(prep.PREDICTION_COL, "_b")
                stability = ix.spark_adjusted_rand(both, "_a", "_b")
            rows.append(
                {
                    "algorithm": algorithm,
                    "k": k,
                    **metrics,
                    "stability": stability,
                    "fit_seconds": time.perf_counter() - t0,
                    "engine": "spark",
                }
            )
            log.info("sweep %s k=%d: %s", algorithm, k, {m: round(v, 4) for m, v in metrics.items()})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


# --- the choice ---------------------------------------------------------------------------------


def knee(ks: list[int], wcss: list[float]) -> int:
    """The k farthest below the chord of the normalised, decreasing WCSS curve (Kneedle)."""
    if len(ks) <= 2:
        return ks[0]
    x = (np.asarray(ks, float) - ks[0]) / (ks[-1] - ks[0])
    y = np.asarray(wcss, float)
    span = y.max() - y.min()
    if span <= 0:
        return ks[0]
    y = (y - y.min()) / span
    return int(ks[int(np.argmax((1.0 - x) - y))])


def choose_candidate(sweep: pd.DataFrame, cfg: ClusteringConfig) -> dict[str, Any]:
    """Apply the documented rule to the sweep table; return algorithm, k, reason and its metrics."""
    if sweep.empty:
        raise InputError("customer_features: no clustering candidate could be fitted")
    df = sweep.copy()
    stable = df["stability"].isna() | (df["stability"] >= cfg.min_stability)
    big = df["min_cluster_share"] >= cfg.min_cluster_share
    df["admissible"] = stable & big
    knees = {a: knee(g["k"].tolist(), g["wcss"].tolist()) for a, g in df.groupby("algorithm", sort=True)}
    df["knee"] = df["algorithm"].map(knees)
    df["near_knee"] = (df["k"] - df["knee"]).abs() <= cfg.knee_window
    order = ["silhouette", "calinski_harabasz", "k"]
    asc = [False, False, True]

    def best(frame: pd.DataFrame) -> pd.Series:
        return (
            frame.fillna({"silhouette": -1.0, "calinski_harabasz": 0.0})
            .sort_values(order, ascending=asc)
            .iloc[0]
        )

    forced = cfg.algorithm is not None and cfg.k is not None
    pool = df[df["admissible"] & df["near_knee"]]
    if forced:
        row, why = best(df), "configured clustering.algorithm and clustering.k"
    elif not pool.empty:
        row = best(pool)
        why = (
            f"best silhouette among admissible candidates within {cfg.knee_window} of the WCSS knee "
            f"(knee at k={knees[row['algorithm']]} for {row['algorithm']})"
        )
    elif df["admissible"].any():
        row = best(df[df["admissible"]])
        why = "no admissible candidate near a WCSS knee; best admissible silhouette"
    else:
        row = best(df)
        why = (
            "fallback: no candidate met min_cluster_share "
            f"{cfg.min_cluster_share:.0%} and min_stability {cfg.min_stability}; best silhouette overall"
        )
    stab = "not measured" if pd.isna(row["stability"]) else f"{row['stability']:.2f}"
    reason = (
        f"{row['algorithm']} k={int(row['k'])}: {why}; silhouette {row['silhouette']:.3f}, "
        f"Davies-Bouldin {row['davies_bouldin']:.3f}, Calinski-Harabasz {row['calinski_harabasz']:.1f}, "
        f"smallest cluster {row['min_cluster_share']:.1%}, stability ARI {stab}"
    )
    return {
        "algorithm": str(row["algorithm"]),
        "k": int(row["k"]),
        "reason": reason,
        "knees": {a: int(v) for a, v in knees.items()},
        "sample_metrics": {m: float(row[m]) for m in SWEEP_COLUMNS[2:-1]},
    }


# --- the stage ----------------------------------------------------------------------------------


def _sweep_size(engine: str, algorithms: list[str], ks: list[int], rows: int, cfg: ClusteringConfig) -> str:
    fits = len(algorithms) * len(ks) * (3 if cfg.stability else 1)
    return f"{fits} {engine} fits on {rows} sampled customers (k {ks[0]}..{ks[-1]})"


def _reference_cost(sweep: pd.DataFrame, chosen: dict[str, Any]) -> float | None:
    """The sweep's WCSS of the chosen (bisecting) k-means candidate, when the sweep fitted it on the
    driver over the same prepared sample as the final fit (a GMM's cost is not a WCSS)."""
    if chosen["algorithm"] == "gmm" or sweep.empty:
        return None
    row = sweep[(sweep["algorithm"] == chosen["algorithm"]) & (sweep["k"] == chosen["k"])]
    if row.empty or (row["engine"] != "local").any():
        return None
    cost = float(row["wcss"].iloc[0])
    return cost if math.isfinite(cost) else None


def _k_range(cfg: ClusteringConfig, n: int, sampled: int) -> list[int]:
    """The k values to sweep; k_max is lowered (with a warning) when the sample has too few customers."""
    if cfg.k is not None:
        if cfg.k > min(n, sampled):
            raise ConfigError(
                f"clustering.k={cfg.k} but customer_features has only {n} customers ({sampled} sampled)"
            )
        if cfg.k < 2:
            raise ConfigError("clustering.k must be at least 2 (one cluster is no segmentation)")
        return [cfg.k]
    hi = min(cfg.k_max, sampled - 1)
    if hi < cfg.k_min:
        raise InputError(
            f"customer_features: {sampled} sampled customers cannot be split into "
            f"clustering.k_min={cfg.k_min} clusters"
        )
    if hi < cfg.k_max:
        log.warning(
            "clustering: k_max lowered from %d to %d (only %d customers sampled)", cfg.k_max, hi, sampled
        )
    return list(range(cfg.k_min, hi + 1))


def fit_segments(
    features: DataFrame,
    cfg: ClusteringConfig,
    previous_profiles: pd.DataFrame | None = None,
    *,
    input_cached: bool | None = None,
) -> ClusterResult:
    """Prepare features, sweep, choose, fit on everyone, profile and name the clusters.

    ``features``: one row per customer_id with numeric feature columns. Returns a :class:`ClusterResult`;
    its ``assignments`` has customer_id, cluster_id (int; -1 = density noise) and persona, and stays
    valid until ``release()``. ``input_cached``: the caller keeps ``features`` cached (or
    checkpointed) until then; None asks Spark whether that frame itself is cached.
    """
    t_start = time.perf_counter()
    names = prep.candidate_features(features, cfg)
    density = cfg.algorithm in DENSITY_ALGORITHMS
    strata = cfg.density_strata
    extras = [strata] if density and strata and strata in features.columns and strata not in names else []
    base = features.select(S.CUSTOMER_ID, *names, *extras)
    cached: list[DataFrame] = []
    # Several passes read the features (checks, sample, assignment): a cached input (the pipeline
    # materializes its model table) is read from its cache; anything else is cached here once.
    if not (input_cached if input_cached is not None else features.storageLevel != StorageLevel.NONE):
        base = base.persist()
        cached.append(base)
    try:
        with finalizers_at_safe_points():
            return _fit(base, names, extras, cfg, previous_profiles, cached, t_start)
    except BaseException:
        for df in cached:
            df.unpersist()
        raise


@dataclass
class _FinalFit:
    """The final model and what it assigned (:func:`_fit_final_centroids` or :func:`_fit_final_density`)."""

    model: PipelineModel
    chosen: dict[str, Any]
    assigned: DataFrame  # every customer with its prediction
    sample_scored: DataFrame  # the sample with its prediction (density noise included)
    scored_sample: DataFrame  # the rows the final indices are measured on (density noise left out)
    density: DensityModel | None = None


def _checked_features(base: DataFrame, names: list[str]) -> prep.FeatureCheck:
    """Count the customers and drop unusable features; refuse input with nothing to cluster."""
    check = prep.check_features(base, names)
    n = check.customers
    if n == 0:
        raise InputError("customer_features is empty: nothing to cluster")
    if n < 2:
        raise InputError(f"customer_features has {n} customer; clustering needs at least 2")
    if not check.features:
        raise InputError(
            f"customer_features: every clustering feature is constant or null ({check.dropped}); "
            "all customers look alike, so there is nothing to cluster"
        )
    return check


def _prepare(
    base: DataFrame,
    used: list[str],
    extras: list[str],
    cfg: ClusteringConfig,
    n: int,
    cached: list[DataFrame],
) -> tuple[PipelineModel, DataFrame, DataFrame, list[str]]:
    """The fitted preparation, the prepared sample (cached), every customer prepared (lazy) and the
    columns kept."""
    keep = [*used, *extras, *prep.prepared_columns(used)]
    # The preparation statistics (medians, means, scales) are estimated on the seeded sample: at
    # clustering.sample_size rows they match the full-table figures to well within the noise, and
    # this saves two passes over every customer.
    # one sorted partition: every fit on the sample (imputer, scaler, MLlib's seeded init) sees the
    # same rows in the same order, whatever the layout of the input (reruns give the same clusters)
    raw_sample = in_key_order(seeded_sample(base, n, cfg.sample_size, cfg.seed)).persist()
    cached.append(raw_sample)
    prep_model = prep.build_prep_pipeline(used, cfg).fit(raw_sample)
    sample = prep_model.transform(raw_sample).select(*keep).persist()
    cached.append(sample)
    everyone = prep_model.transform(base).select(*keep)
    return prep_model, sample, everyone, keep


def _sweep(
    sample: DataFrame, used: list[str], n: int, dim: int, cfg: ClusteringConfig, sizing: dict[str, str]
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The sweep table with the configured engine (empty for a density algorithm, which has no
    sweep) and, with the local engine, the sample as the driver-side matrix it fitted; its size goes
    to ``sizing["sweep"]``."""
    if cfg.algorithm in DENSITY_ALGORITHMS:
        return pd.DataFrame(columns=SWEEP_COLUMNS), None
    algorithms: list[str] = list(cfg.algorithms) if cfg.algorithm is None else [cfg.algorithm]
    if cfg.sweep_engine == "local":
        x, _ = sample_to_numpy(sample, used)
        ks = _k_range(cfg, n, len(x))
        sweep_table = sweep_local(x, algorithms, ks, cfg)
        sizing["sweep"] = _sweep_size("local", algorithms, ks, len(x), cfg)
        return sweep_table, x
    sampled = sample.count()
    ks = _k_range(cfg, n, sampled)
    sweep_table = sweep_spark(sample, algorithms, ks, cfg, dim)
    sizing["sweep"] = _sweep_size("spark", algorithms, ks, sampled, cfg)
    return sweep_table, None


def _fit_final_density(
    sample: DataFrame, everyone: DataFrame, prep_model: PipelineModel, cfg: ClusteringConfig
) -> _FinalFit:
    """The configured density algorithm fitted on the sample; customers go to their nearest core."""
    from segspark.clustering import density as D

    assert cfg.algorithm is not None
    dens_model = D.fit_density(sample, cfg, cfg.algorithm)
    assigned = D.assign_density(everyone, dens_model)
    sample_scored = D.assign_density(sample, dens_model)
    scored_sample = sample_scored.where(F.col(prep.PREDICTION_COL) >= 0)
    chosen: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "k": dens_model.n_clusters,
        "reason": f"configured clustering.algorithm={cfg.algorithm}; {dens_model.describe()}",
    }
    return _FinalFit(prep_model, chosen, assigned, sample_scored, scored_sample, dens_model)


def _fit_final_centroids(
    sweep_table: pd.DataFrame,
    sample: DataFrame,
    x: np.ndarray | None,
    everyone: DataFrame,
    prep_model: PipelineModel,
    cfg: ClusteringConfig,
    cached: list[DataFrame],
    sizing: dict[str, str],
) -> _FinalFit:
    """The chosen candidate fitted (on the sample or on everyone) as an MLlib model and appended to
    the preparation; its fit goes to ``sizing["final_fit"]``."""
    chosen = choose_candidate(sweep_table, cfg)
    cluster_model = None
    if cfg.final_fit == "sample" and chosen["algorithm"] in DRIVER_FITS and x is not None:
        cluster_model = fit_centres_on_driver(sample.sparkSession, x, chosen["k"], cfg, chosen["algorithm"])
        if cluster_model is not None:
            sizing["final_fit"] = (
                f"{chosen['algorithm']} k={chosen['k']} on sample, best of {FINAL_FIT_STARTS} scikit-learn "
                f"starts on the driver{DRIVER_FITS[chosen['algorithm']]}"
            )
    if cluster_model is None:
        if cfg.final_fit == "all":
            # MLlib iterates over it; a layout fixed by the key keeps its seeded init reproducible
            parts = int(everyone.sparkSession.conf.get("spark.sql.shuffle.partitions") or "8")
            everyone = in_hash_layout(everyone, parts).persist()
            cached.append(everyone)
            cluster_model, starts = fit_best_of(chosen["algorithm"], chosen["k"], cfg, everyone)
        else:
            cluster_model, starts = fit_best_of(
                chosen["algorithm"], chosen["k"], cfg, sample, _reference_cost(sweep_table, chosen)
            )
        sizing["final_fit"] = (
            f"{chosen['algorithm']} k={chosen['k']} on {cfg.final_fit}, {starts} of {FINAL_FIT_STARTS} starts"
        )
    model = PipelineModel(stages=[*prep_model.stages, cluster_model])
    assigned = cluster_model.transform(everyone)
    scored_sample = sample_scored = cluster_model.transform(sample)
    return _FinalFit(model, chosen, assigned, sample_scored, scored_sample)


# The chosen candidates fitted on the driver-side sample and handed to MLlib as a KMeansModel's centres,
# with what the recorded choice adds for each. Bisecting k-means: its leaf centres, every customer
# assigned to the nearest one (MLlib's and scikit-learn's bisecting models descend their tree of
# splits instead, which can put a point in a leaf whose centre is not its nearest; the nearest-centre
# assignment's within-cluster sum of squares is never larger). At 1M lines (83,000 customers) MLlib's
# bisecting starts were 252 Spark jobs and 30 s of the run.
DRIVER_FITS = {"kmeans": "", "bisecting_kmeans": ", each customer in the cluster of the nearest leaf centre"}


def fit_centres_on_driver(
    spark: SparkSession, x: np.ndarray, k: int, cfg: ClusteringConfig, algorithm: str = "kmeans"
) -> Any | None:
    """``algorithm`` (k-means or bisecting k-means, :data:`DRIVER_FITS`) of the driver-side sample
    ``x``: the best of ``FINAL_FIT_STARTS`` seeded scikit-learn fits, returned as an MLlib
    ``KMeansModel`` with exactly those centres (None if MLlib did not take them: the caller then fits
    with MLlib).

    The sample is on the driver already (the local sweep fitted it), where a fit costs milliseconds;
    each of MLlib's starts is a hundred small Spark jobs (13-16 s of the demo). The model must still
    be MLlib's: it is what the preparation pipeline is registered and scored with. MLlib's DataFrame
    ``KMeans`` takes no initial model, so it is fitted with random initialisation on exactly the k
    distinct centres: it samples all k of them (a sample of k rows without replacement) and Lloyd's
    step leaves each where it is."""
    with threadpool_limits(limits=1):
        fits = [_local_estimator(algorithm, k, cfg, cfg.seed + i).fit(x) for i in range(FINAL_FIT_STARTS)]
    best = min(fits, key=lambda f: float(f.inertia_))  # ties: the earlier seed
    centres = np.asarray(best.cluster_centers_, dtype=float)
    if len(np.unique(centres, axis=0)) < k:
        return None
    frame = spark.createDataFrame([(Vectors.dense(c),) for c in centres], [prep.FEATURES_COL]).repartition(1)
    estimator = KMeans(
        featuresCol=prep.FEATURES_COL,
        predictionCol=prep.PREDICTION_COL,
        k=k,
        initMode="random",
        maxIter=2,
        seed=cfg.seed,
    )
    model = estimator.fit(frame)
    got = np.asarray(model.clusterCenters(), dtype=float)
    scale = max(1.0, float(np.abs(centres).max()))
    if got.shape != centres.shape:
        return None
    nearest = np.linalg.norm(got[:, None, :] - centres[None, :, :], axis=2)
    if sorted(nearest.argmin(axis=1).tolist()) != list(range(k)) or nearest.min(axis=1).max() > 1e-9 * scale:
        log.warning("final %s k=%d: MLlib did not take the driver's centres; MLlib fits it", algorithm, k)
        return None
    log.info(
        "final %s k=%d: best of %d start(s) on the driver, cost %.6g", algorithm, k, len(fits), best.inertia_
    )
    return model


def _slim_assignments(
    assigned: DataFrame, keep: list[str], density: bool, cached: list[DataFrame]
) -> DataFrame:
    """Every customer's prepared columns (without the model vector) and integer prediction."""
    slim = [c for c in keep if c != prep.FEATURES_COL]
    assigned = assigned.select(*slim, F.col(prep.PREDICTION_COL).cast("int"))
    if density:
        # the nearest-core assignment runs in Python workers: computed once, cached
        assigned = assigned.persist()
        cached.append(assigned)
    # A centroid assignment is cheap JVM arithmetic: the profile pass and the one downstream read
    # (customer_segments) each recompute it from the cached features, which costs less than writing
    # the wide frame to the cache and reading it back (measured at 2.5M customers: 6.1 s to cache,
    # 3.0 s to recompute).
    return assigned


def _timings(t_start: float, t_prep: float, t_sweep: float, t_fit: float, t_end: float) -> dict[str, float]:
    """Seconds per step of the stage, from the clock readings between them."""
    return {
        "prepare_seconds": t_prep - t_start,
        "sweep_seconds": t_sweep - t_prep,
        "fit_seconds": t_fit - t_sweep,
        "profile_seconds": t_end - t_fit,
        "total_seconds": t_end - t_start,
    }


def _final_indices(scored_sample: DataFrame, cfg: ClusteringConfig, dim: int) -> dict[str, float]:
    """Indices of the final model, computed in Spark on the seeded sample (silhouette on a sub-sample)."""
    final = ix.spark_indices(scored_sample, prep.FEATURES_COL, prep.PREDICTION_COL, dim)
    final["silhouette"] = ix.spark_silhouette(
        scored_sample,
        prep.FEATURES_COL,
        prep.PREDICTION_COL,
        cfg.silhouette_sample,
        cfg.seed,
        rows=int(final.pop("rows")),
        clusters=int(final["clusters"]),
    )
    return final


def _density_sweep(cfg: ClusteringConfig, k: int, final: dict[str, float], seconds: float) -> pd.DataFrame:
    """The density fit has no sweep: its one row holds the indices of the non-noise sample."""
    row = {"algorithm": cfg.algorithm, "k": k, **final, "stability": math.nan}
    sweep_table = pd.DataFrame([{**row, "fit_seconds": seconds, "engine": "density"}])
    return sweep_table.reindex(columns=SWEEP_COLUMNS)


def _personas(
    assigned: DataFrame,
    sample_scored: DataFrame,
    used: list[str],
    cfg: ClusteringConfig,
    previous_profiles: pd.DataFrame | None,
) -> tuple[pd.DataFrame, DataFrame]:
    """The cluster profiles with their persona names, and every customer's cluster and persona."""
    medians_from = sample_scored.select(*used, F.col(prep.PREDICTION_COL).cast("int"))
    profiles, population = P.profile_clusters(assigned, used, prep.PREDICTION_COL, medians_from)
    profiles = P.name_personas(profiles, population, used, cfg, previous_profiles)
    persona_of = F.create_map(
        *[
            item
            for cid, name in zip(profiles[CLUSTER_ID], profiles[PERSONA], strict=True)
            for item in (F.lit(int(cid)), F.lit(str(name)))
        ]
    )
    assignments = assigned.select(
        S.CUSTOMER_ID,
        F.col(prep.PREDICTION_COL).alias(CLUSTER_ID),
        F.element_at(persona_of, F.col(prep.PREDICTION_COL)).alias(PERSONA),
    )
    return profiles, assignments


def _release_samples(cached: list[DataFrame], assigned: DataFrame, base: DataFrame) -> None:
    """Unpersist every frame cached here except the ones the assignments are read from."""
    # Assignments are read from the features (base) or, for density, from their own cache: every
    # other frame cached here (the samples) is no longer needed.
    alive = [df for df in cached if df is assigned or df is base]
    for df in cached:
        if not any(df is a for a in alive):
            df.unpersist()
    cached[:] = alive


def _fit(
    base: DataFrame,
    names: list[str],
    extras: list[str],
    cfg: ClusteringConfig,
    previous_profiles: pd.DataFrame | None,
    cached: list[DataFrame],
    t_start: float,
) -> ClusterResult:
    """Check, prepare, sweep, fit the final model, measure it and name its clusters; every frame
    cached on the way is appended to ``cached``, and each step's time is logged."""
    density = cfg.algorithm in DENSITY_ALGORITHMS
    check = _checked_features(base, names)
    n, used = check.customers, check.features
    dim = cfg.pca_components or len(used)
    prep_model, sample, everyone, keep = _prepare(base, used, extras, cfg, n, cached)
    t_prep = time.perf_counter()
    log.info("clustering_prepare took %.1f s", t_prep - t_start)

    sizing: dict[str, str] = {}
    sweep_table, x = _sweep(sample, used, n, dim, cfg, sizing)
    t_sweep = time.perf_counter()
    log.info("clustering_sweep took %.1f s", t_sweep - t_prep)

    if density:
        fitted = _fit_final_density(sample, everyone, prep_model, cfg)
    else:
        fitted = _fit_final_centroids(sweep_table, sample, x, everyone, prep_model, cfg, cached, sizing)
    chosen = fitted.chosen
    assigned = _slim_assignments(fitted.assigned, keep, density, cached)
    t_fit = time.perf_counter()
    log.info("clustering_final_fit took %.1f s", t_fit - t_sweep)

    final = _final_indices(fitted.scored_sample, cfg, dim)
    chosen["final_metrics"] = final
    if density:
        sweep_table = _density_sweep(cfg, chosen["k"], final, t_fit - t_sweep)
    chosen["customers"] = n
    chosen["sizing"] = sizing
    chosen["features"] = used
    chosen["dropped_features"] = check.dropped

    profiles, assignments = _personas(assigned, fitted.sample_scored, used, cfg, previous_profiles)
    _release_samples(cached, assigned, base)
    t_end = time.perf_counter()
    log.info("clustering_indices_and_profiles took %.1f s", t_end - t_fit)
    chosen["timings"] = _timings(t_start, t_prep, t_sweep, t_fit, t_end)
    log.info("clustering chose %s", chosen["reason"])
    result = ClusterResult(
        assignments=assignments,
        profiles=profiles,
        model=fitted.model,
        sweep=sweep_table,
        chosen=chosen,
        features=used,
        density=fitted.density,
        _cached=list(cached),
    )
    result.figures = cluster_figures(result.sweep, result.chosen, result.profiles, result.features)
    return result
