"""Clustering stage: planted archetypes recovered, determinism, bad input, density, MLflow and scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T
from sklearn.metrics import adjusted_rand_score

from segspark.clustering import fit_segments, log_to_mlflow, score_segments
from segspark.clustering.sweep import choose_candidate, knee
from segspark.config import ClusteringConfig, TrackingConfig
from segspark.errors import ConfigError, InputError

SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), False),
        T.StructField("recency_days", T.IntegerType(), True),
        T.StructField("frequency", T.LongType(), True),
        T.StructField("monetary", T.DoubleType(), True),
        T.StructField("avg_order_value", T.DoubleType(), True),
        T.StructField("tenure_days", T.IntegerType(), True),
        T.StructField("return_rate", T.DoubleType(), True),
        T.StructField("sessions_90d", T.LongType(), True),
        T.StructField("country", T.StringType(), True),  # not a feature: must be ignored
    ]
)

# Four well-separated archetypes: (recency, orders, aov, tenure, return rate, sessions)
ARCHETYPES = {
    "champions": (5, 20, 150.0, 600, 0.02, 25),
    "lapsed_one_timers": (500, 1, 35.0, 520, 0.10, 0),
    "new_customers": (15, 1, 60.0, 25, 0.04, 8),
    "bargain_occasionals": (90, 4, 18.0, 300, 0.30, 3),
}


def archetype_features(n_per: int = 60, seed: int = 7) -> pd.DataFrame:
    """A small feature table with planted archetypes, one null and one edge row (negative net spend)."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, (rec, freq, aov, ten, ret, ses) in ARCHETYPES.items():
        for i in range(n_per):
            f = max(1, round(freq * rng.uniform(0.8, 1.25)))
            a = aov * rng.uniform(0.85, 1.15)
            rows.append(
                {
                    "customer_id": f"{name[:3]}{i:04d}",
                    "recency_days": int(rec * rng.uniform(0.8, 1.2)),
                    "frequency": f,
                    "monetary": f * a,
                    "avg_order_value": a,
                    "tenure_days": int(ten * rng.uniform(0.85, 1.15)),
                    "return_rate": float(np.clip(ret + rng.normal(0, 0.01), 0, 1)),
                    "sessions_90d": int(ses * rng.uniform(0.8, 1.2)),
                    "country": "US",
                    "archetype": name,
                }
            )
    df = pd.DataFrame(rows)
    df.loc[0, "avg_order_value"] = np.nan  # a null feature value: imputed
    df.loc[1, "monetary"] = -12.5  # edge: net spend negative after returns (signed log1p)
    return df


def _spark_df(spark, pdf: pd.DataFrame):  # type: ignore[no-untyped-def]
    records = [
        tuple(None if (isinstance(v, float) and np.isnan(v)) else v for v in r)
        for r in pdf[[f.name for f in SCHEMA.fields]].itertuples(index=False)
    ]
    return spark.createDataFrame(records, SCHEMA)


@pytest.fixture(scope="module")
def planted(spark):  # type: ignore[no-untyped-def]
    pdf = archetype_features()
    return pdf, _spark_df(spark, pdf).cache()


@pytest.fixture(scope="module")
def fitted(planted):  # type: ignore[no-untyped-def]
    _, df = planted
    return fit_segments(df, ClusteringConfig(k_max=6, seed=3))


def test_recovers_planted_archetypes(planted, fitted) -> None:  # type: ignore[no-untyped-def]
    pdf, _ = planted
    got = fitted.assignments.toPandas().merge(pdf[["customer_id", "archetype"]], on="customer_id")
    assert len(got) == len(pdf)
    ari = adjusted_rand_score(got["archetype"], got["cluster_id"])
    assert ari >= 0.8, (ari, fitted.chosen["reason"])
    assert fitted.chosen["k"] == 4
    assert "silhouette" in fitted.chosen["reason"] and "knee" in fitted.chosen["reason"]
    assert fitted.assignments.columns == ["customer_id", "cluster_id", "persona"]
    assert dict(fitted.assignments.dtypes)["cluster_id"] == "int"
    assert set(fitted.sweep["k"]) == {2, 3, 4, 5, 6}
    assert set(fitted.sweep["algorithm"]) == {"kmeans", "bisecting_kmeans"}
    assert fitted.sweep["stability"].notna().all()
    prof = fitted.profiles
    assert prof["persona"].is_unique and prof["size"].sum() == len(pdf)
    assert {"elbow", "indices_by_k", "profile_heatmap", "cluster_sizes"} <= set(fitted.figures)
    assert fitted.features == [
        "recency_days",
        "frequency",
        "monetary",
        "avg_order_value",
        "tenure_days",
        "return_rate",
        "sessions_90d",
    ]
    # The champions' cluster is named from its traits, and its description quotes numbers.
    champ = got[got["archetype"] == "champions"]["persona"].mode()[0]
    lapsed = got[got["archetype"] == "lapsed_one_timers"]["persona"].mode()[0]
    assert "Lapsed" in lapsed or "one-timers" in lapsed.lower(), lapsed
    assert any(w in champ for w in ("Frequent", "regulars", "High-spending", "big spenders", "Engaged")), (
        champ
    )
    desc = prof.loc[prof["persona"] == lapsed, "persona_description"].iloc[0]
    assert "days ago" in desc or "orders" in desc


def test_deterministic_for_a_seed_and_names_stable(planted, fitted) -> None:  # type: ignore[no-untyped-def]
    _, df = planted
    again = fit_segments(df, ClusteringConfig(k_max=6, seed=3), previous_profiles=fitted.profiles)
    a = fitted.assignments.toPandas().sort_values("customer_id").reset_index(drop=True)
    b = again.assignments.toPandas().sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(
        fitted.sweep.drop(columns="fit_seconds"), again.sweep.drop(columns="fit_seconds")
    )
    assert again.chosen["reason"] == fitted.chosen["reason"]
    again.release()


def test_forced_k_on_spark_engine_matches_local_indices(planted) -> None:  # type: ignore[no-untyped-def]
    _, df = planted
    cfg = ClusteringConfig(sweep_engine="spark", algorithm="kmeans", k=4, stability=False, seed=3)
    res = fit_segments(df, cfg)
    row = res.sweep.iloc[0]
    assert (row["algorithm"], row["k"], row["engine"]) == ("kmeans", 4, "spark")
    assert "configured" in res.chosen["reason"]
    # The whole table is the sample here, so the sweep fit and the final fit see the same data.
    assert row["silhouette"] == pytest.approx(res.chosen["final_metrics"]["silhouette"], rel=1e-9)
    assert row["davies_bouldin"] == pytest.approx(res.chosen["final_metrics"]["davies_bouldin"], rel=1e-9)
    res.release()


def test_bad_input(spark, planted) -> None:  # type: ignore[no-untyped-def]
    pdf, df = planted
    with pytest.raises(ConfigError, match=r"clustering\.k=500"):
        fit_segments(df, ClusteringConfig(k=500))
    with pytest.raises(InputError, match="1 customer"):
        fit_segments(df.limit(1), ClusteringConfig())
    same = pdf.head(5).copy()
    for c in (
        "recency_days",
        "frequency",
        "monetary",
        "avg_order_value",
        "tenure_days",
        "return_rate",
        "sessions_90d",
    ):
        same[c] = same[c].iloc[2]
    with pytest.raises(InputError, match="constant or null"):
        fit_segments(_spark_df(spark, same), ClusteringConfig())
    with pytest.raises(ConfigError, match="not_a_column"):
        fit_segments(df, ClusteringConfig(features=["recency_days", "not_a_column"]))


def test_choice_rule_rejects_tiny_and_unstable() -> None:
    sweep = pd.DataFrame(
        {
            "algorithm": ["kmeans"] * 4,
            "k": [2, 3, 4, 5],
            "clusters": [2, 3, 4, 5],
            "wcss": [100.0, 40.0, 30.0, 25.0],
            "silhouette": [0.5, 0.6, 0.7, 0.2],
            "calinski_harabasz": [1.0, 2.0, 3.0, 1.0],
            "davies_bouldin": [1.0, 0.8, 0.6, 1.2],
            "min_cluster_share": [0.4, 0.3, 0.01, 0.1],  # k=4 has a tiny cluster
            "stability": [0.9, 0.95, 0.9, 0.3],
            "fit_seconds": [0.0] * 4,
            "engine": ["local"] * 4,
        }
    )
    assert knee([2, 3, 4, 5], [100.0, 40.0, 30.0, 25.0]) == 3
    chosen = choose_candidate(sweep, ClusteringConfig())
    assert chosen["k"] == 3 and "knee" in chosen["reason"]


def test_density_outliers(spark) -> None:  # type: ignore[no-untyped-def]
    pdf = archetype_features(n_per=40, seed=11)
    far = pdf.iloc[[5]].copy()
    far["customer_id"], far["monetary"], far["frequency"], far["sessions_90d"] = "zzz0000", 9e6, 900, 5000
    pdf = pd.concat([pdf, far], ignore_index=True)
    cfg = ClusteringConfig(algorithm="dbscan", density_min_samples=5, seed=3)
    res = fit_segments(_spark_df(spark, pdf), cfg)
    got = res.assignments.toPandas().merge(pdf[["customer_id", "archetype"]], on="customer_id")
    assert got.loc[got["customer_id"] == "zzz0000", "persona"].iloc[0] == "Outliers"
    assert got.loc[got["customer_id"] == "zzz0000", "cluster_id"].iloc[0] == -1
    dense = got[got["cluster_id"] >= 0]
    assert len(dense) >= 0.9 * len(got)
    assert adjusted_rand_score(dense["archetype"], dense["cluster_id"]) >= 0.8
    res.release()


@pytest.mark.slow
def test_mlflow_runs_registration_and_scoring(tmp_path, planted, fitted) -> None:  # type: ignore[no-untyped-def]
    import mlflow
    from mlflow import MlflowClient

    _, df = planted
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = TrackingConfig(experiment="clustering-test", registered_model="seg-test")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("clustering-test")
    with mlflow.start_run(run_name="pipeline") as parent:
        out = log_to_mlflow(
            fitted, tracking, uri, params={"k_max": 6}, input_tables={"customer_features": "v3"}
        )
    assert out["parent_run_id"] == parent.info.run_id
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(runs) == len(fitted.sweep) == 10
    assert all("silhouette" in r.data.metrics and "davies_bouldin" in r.data.metrics for r in runs)
    assert sum(r.data.tags["segspark.chosen"] == "true" for r in runs) == 1
    top = client.get_run(parent.info.run_id)
    assert top.data.params["clustering.chosen_k"] == str(fitted.chosen["k"])
    assert "clustering.calinski_harabasz" in top.data.metrics
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "clustering")}
    assert {"clustering/elbow.png", "clustering/profiles.json"} <= arts
    # a registry such as Unity Catalog refuses a version without a signature: features in, cluster out
    from mlflow.models import get_model_info

    signature = get_model_info(out["model_uri"]).signature
    assert signature is not None
    assert signature.inputs.input_names() == fitted.features
    assert signature.outputs.input_names() == ["prediction"]

    scored = score_segments(df, "seg-test", tracking_uri=uri)
    a = fitted.assignments.toPandas().sort_values("customer_id").reset_index(drop=True)
    b = scored.toPandas().sort_values("customer_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)

    with pytest.raises(InputError, match="no registered model 'missing-model'"):
        score_segments(df, "missing-model", tracking_uri=uri)


@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting_kmeans"])
def test_the_driver_fitted_model_is_an_mllib_model_as_good_as_mllibs_own(spark, fitted, algorithm) -> None:  # type: ignore[no-untyped-def]
    """The default final fit of (bisecting) k-means (local sweep, final_fit: sample): scikit-learn on
    the driver, handed to MLlib as its centres; MLlib assigns every row to the nearest of them, at a
    cost no higher than MLlib's own best of four starts on the same rows."""
    from pyspark.ml.functions import array_to_vector

    from segspark.clustering.sweep import _local_estimator, fit_best_of, fit_centres_on_driver

    assert "on the driver" in fitted.chosen["sizing"]["final_fit"]  # the default path took it
    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(c, 0.4, size=(80, 3)) for c in ((0, 0, 0), (4, 0, 1), (0, 5, 2), (3, 3, -3))])
    # and points between the blobs, where the tree's leaf and the nearest centre may differ
    x = np.vstack([x, rng.uniform(-2, 6, size=(40, 3))])
    cfg = ClusteringConfig(seed=3)
    model = fit_centres_on_driver(spark, x, 4, cfg, algorithm)
    assert model is not None
    fits = [_local_estimator(algorithm, 4, cfg, 3 + i).fit(x) for i in range(4)]
    best = min(fits, key=lambda f: f.inertia_)
    centres = np.asarray(model.clusterCenters())
    assert sorted(map(tuple, centres.round(9))) == sorted(map(tuple, best.cluster_centers_.round(9)))
    rows = spark.createDataFrame(
        [(i, [float(v) for v in r]) for i, r in enumerate(x)], "i int, a array<double>"
    )
    frame = rows.select("i", array_to_vector("a").alias("features")).orderBy("i")
    labels = [r.prediction for r in model.transform(frame).orderBy("i").select("prediction").collect()]
    distances = ((x[:, None, :] - best.cluster_centers_[None, :, :]) ** 2).sum(axis=2)
    nearest = distances.argmin(axis=1)
    assert adjusted_rand_score(labels, nearest) == 1.0
    cost = float(distances.min(axis=1).sum())
    assert cost <= best.inertia_ * (1 + 1e-9)  # never worse than scikit-learn's own labels
    mllib, _ = fit_best_of(algorithm, 4, cfg, frame.select("features").repartition(1))
    assert cost <= mllib.summary.trainingCost * (1 + 1e-9)


def test_starts_fitted_side_by_side_choose_what_one_by_one_chooses(spark) -> None:  # type: ignore[no-untyped-def]
    """The final fit's MLlib starts run side by side (threads), yet the model is the one the
    one-by-one rule picks from the same seeds: the lowest cost (the earlier seed on a tie), and with
    the sweep's reference cost the first start that reaches it ends the search."""
    from pyspark.ml.functions import array_to_vector

    from segspark.clustering.sweep import FINAL_FIT_STARTS, fit_best_of, mllib_estimator

    rng = np.random.default_rng(11)  # no clear structure: the starts settle in different optima
    x = rng.uniform(0, 1, size=(150, 3))
    rows = spark.createDataFrame(
        [(i, [float(v) for v in r]) for i, r in enumerate(x)], "i int, a array<double>"
    )
    frame = rows.select(array_to_vector("a").alias("features")).repartition(1).cache()
    cfg = ClusteringConfig(seed=3, max_iter=5)
    costs = [
        float(mllib_estimator("bisecting_kmeans", 5, cfg, cfg.seed + i).fit(frame).summary.trainingCost)
        for i in range(FINAL_FIT_STARTS)
    ]

    def one_by_one(reference: float | None) -> tuple[float, int]:
        best = float("inf")
        for n, cost in enumerate(costs, start=1):
            best = min(best, cost)
            if reference is not None and best <= reference * (1 + 1e-4):
                return best, n
        return best, len(costs)

    for reference in (None, costs[0], min(costs), min(costs) * 0.5):
        model, starts = fit_best_of("bisecting_kmeans", 5, cfg, frame, reference)
        assert (float(model.summary.trainingCost), starts) == one_by_one(reference), (reference, costs)
    frame.unpersist()
