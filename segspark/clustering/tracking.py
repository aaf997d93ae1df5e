"""MLflow for the clustering stage: plots, nested runs per candidate, the registered model, and scoring.

The pipeline opens one parent run per pipeline run; :func:`log_to_mlflow` adds one nested run per
(algorithm, k) candidate, logs the chosen model's metrics, plots and profiles on the parent run, and
registers the fitted ``PipelineModel`` (preparation + clustering) under ``tracking.registered_model``
with the alias ``clustering.model_alias``. :func:`score_segments` reloads it for the weekly scoring job.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.feature import ImputerModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.clustering import prep
from segspark.errors import InputError
from segspark.io import storage
from segspark.schema import CLUSTER_ID, PERSONA

if TYPE_CHECKING:
    from segspark.clustering.density import DensityModel
    from segspark.clustering.sweep import ClusterResult
    from segspark.config import TrackingConfig

log = logging.getLogger(__name__)

ARTIFACT_DIR = "clustering"
MODEL_NAME = "clustering_model"
PROFILES_ARTIFACT = "profiles.json"
DENSITY_ARTIFACT = "density_core.npz"


# --- logging and registration -------------------------------------------------------------------


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float | np.floating | np.integer) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def _registry_uri(name: str, tracking_uri: str) -> str:
    # Unity Catalog names are catalog.schema.model; everything else uses the tracking store's registry.
    return "databricks-uc" if name.count(".") == 2 else tracking_uri


# What MLflow's requirement inference finds for the PipelineModel (the modules that loading it imports).
MODEL_PACKAGES = ("mlflow", "numpy", "pandas", "pyspark", "scipy")


def model_requirements() -> list[str] | None:
    """The logged model's pip requirements: ``MODEL_PACKAGES`` pinned to the installed versions.

    Given explicitly because MLflow's inference (``pip_requirements=None``) reloads the logged model
    in a new Python process with its own local Spark session, a second JVM, on every run, only to
    find this same list: seconds of every run's fixed time. ``None`` (MLflow infers) where one of
    them is not an installed distribution, e.g. a runtime's own PySpark."""
    from importlib import metadata

    try:
        return [f"{name}=={metadata.version(name)}" for name in MODEL_PACKAGES]
    except metadata.PackageNotFoundError:
        return None


def model_signature(features: list[str]) -> Any:
    """The registered model's MLflow signature: the feature columns in, the cluster id out.

    Unity Catalog's model registry refuses a model version without one; the feature columns may
    hold nulls (the pipeline's imputer fills them), hence not required."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", name, required=False) for name in features]),
        outputs=Schema([ColSpec("integer", prep.PREDICTION_COL)]),
    )


def _log_candidates(result: ClusterResult) -> list[str]:
    """One nested run per (algorithm, k) candidate of the sweep, tagged whether it was chosen; their ids."""
    import mlflow

    chosen = result.chosen
    nested: list[str] = []
    for row in result.sweep.to_dict("records"):
        is_chosen = row["algorithm"] == chosen["algorithm"] and int(row["k"]) == chosen["k"]
        with mlflow.start_run(run_name=f"{row['algorithm']}-k{int(row['k'])}", nested=True) as run:
            mlflow.log_params({"algorithm": row["algorithm"], "k": int(row["k"]), "engine": row["engine"]})
            mlflow.log_metrics(
                _finite({str(k): v for k, v in row.items() if k not in ("algorithm", "k", "engine")})
            )
            mlflow.set_tag("segspark.chosen", str(is_chosen).lower())
            nested.append(run.info.run_id)
    return nested


def _log_chosen(result: ClusterResult) -> None:
    """The choice on the parent run: its params, reason, metrics and timings, the figures, the sweep,
    the profiles and the choice as artifacts (and the density model's core points)."""
    import mlflow

    chosen = result.chosen
    mlflow.log_params(
        {
            "clustering.chosen_algorithm": chosen["algorithm"],
            "clustering.chosen_k": chosen["k"],
            "clustering.features_used": ",".join(result.features),
        }
    )
    mlflow.set_tag("clustering.reason", chosen["reason"][:5000])
    mlflow.log_metrics({f"clustering.{k}": v for k, v in _finite(chosen.get("final_metrics", {})).items()})
    mlflow.log_metrics({f"clustering.{k}": v for k, v in _finite(chosen.get("timings", {})).items()})
    for name, fig in result.figures.items():
        mlflow.log_figure(fig, f"{ARTIFACT_DIR}/{name}.png")
    mlflow.log_text(result.sweep.to_csv(index=False), f"{ARTIFACT_DIR}/sweep.csv")
    mlflow.log_text(result.profiles.to_json(orient="records"), f"{ARTIFACT_DIR}/{PROFILES_ARTIFACT}")
    mlflow.log_text(json.dumps(chosen, default=str, indent=2), f"{ARTIFACT_DIR}/chosen.json")
    if result.density is not None:
        _log_density(result.density)


def _register_model(
    result: ClusterResult,
    tracking: TrackingConfig,
    registry_uri: str,
    parent_run_id: str,
    alias: str,
    staging_dir: str | None,
) -> tuple[str, str]:
    """Log the PipelineModel on the active run, register it, point ``alias`` at the new version and
    tag it with the parent run; returns (model URI, version)."""
    import mlflow
    import mlflow.spark
    from mlflow import MlflowClient

    if _connect_client():
        version = _log_model_through_folder(
            result.model,
            f"{ARTIFACT_DIR}/{MODEL_NAME}",
            tracking.registered_model,
            staging_dir,
            model_signature(result.features),
        )
    else:
        info = mlflow.spark.log_model(
            result.model,
            f"{ARTIFACT_DIR}/{MODEL_NAME}",
            registered_model_name=tracking.registered_model,
            pip_requirements=model_requirements(),
            signature=model_signature(result.features),
        )
        version = str(info.registered_model_version)
    client = MlflowClient(registry_uri=registry_uri)
    client.set_registered_model_alias(tracking.registered_model, alias, version)
    client.set_model_version_tag(tracking.registered_model, version, "segspark.run_id", parent_run_id)
    model_uri = f"models:/{tracking.registered_model}/{version}"
    log.info("registered %s (alias %s)", model_uri, alias)
    return model_uri, version


def log_to_mlflow(
    result: ClusterResult,
    tracking: TrackingConfig,
    tracking_uri: str,
    *,
    params: dict[str, Any] | None = None,
    input_tables: dict[str, str] | None = None,
    alias: str = "champion",
    staging_dir: str | None = None,
) -> dict[str, Any]:
    """Nested runs per candidate, chosen metrics/plots/profiles, and the registered PipelineModel.

    Uses the active run as parent (the pipeline opens it); opens one itself when none is active.
    ``staging_dir``: a folder the Spark Connect server and this client share (see
    :func:`_log_model_through_folder`); the system's temporary folder when None.
    Returns {"parent_run_id", "nested_run_ids", "model_uri", "model_version"}.
    """
    import mlflow
    import mlflow.spark  # before any run is opened: a flavor that cannot load leaves no half-logged run

    own_parent = mlflow.active_run() is None
    if own_parent:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(tracking.experiment)
        mlflow.start_run(run_name="segspark-clustering")
    registry_uri = _registry_uri(tracking.registered_model, mlflow.get_tracking_uri())
    mlflow.set_registry_uri(registry_uri)
    parent = mlflow.active_run()
    assert parent is not None
    try:
        if params:
            mlflow.log_params({f"clustering.{k}": str(v)[:500] for k, v in params.items()})
        if input_tables:
            mlflow.set_tags({f"input.{k}": str(v) for k, v in input_tables.items()})
        nested = _log_candidates(result)
        _log_chosen(result)
        model_uri, version = _register_model(
            result, tracking, registry_uri, parent.info.run_id, alias, staging_dir
        )
    finally:
        if own_parent:
            mlflow.end_run()
    return {
        "parent_run_id": parent.info.run_id,
        "nested_run_ids": nested,
        "model_uri": model_uri,
        "model_version": version,
    }


# --- the model over Spark Connect -----------------------------------------------------------------
# MLflow's spark flavor moves a PipelineModel between Spark's Hadoop file system and the local disk
# through the driver's JVM gateway (mlflow.spark._HadoopFileSystem), which a Spark Connect client does
# not have: log_model and load_model fail there with "'NoneType' object has no attribute 'jvm'". On
# Connect the server saves and loads the model itself (Spark 4 ML over Connect), so the model goes
# through a folder both see, in the spark flavor's own layout (MLmodel + sparkml/), and a model
# logged either way loads either way.
SPARK_MODEL_DATA = "sparkml"  # the spark flavor's folder for the Spark ML model


def staging_dir(output_path: str | None) -> str | None:
    """The folder a Spark Connect server and its client share for the model: the job's output
    location (they share it already: the server writes the tables' files, the client commits them),
    a local or mounted folder or an S3 location (the client copies the model through pyarrow); None
    (the system's temporary folder, same machine only) otherwise."""
    if output_path and storage.is_s3(output_path):
        return storage.root_of(output_path)
    if output_path and "://" not in output_path and os.path.isdir(output_path):
        return output_path
    return None


@contextlib.contextmanager
def _model_folders(staging_dir: str | None) -> Iterator[tuple[str, str]]:
    """``(shared, local)``: the folder the Spark Connect server saves or loads the Spark ML model in,
    and the client's local folder of the MLflow model. One folder where both see the same file
    system; on an object store a prefix there (removed afterwards) and a local temporary folder."""
    if staging_dir is None or not storage.is_uri(staging_dir):
        with tempfile.TemporaryDirectory(prefix=".segspark-model-", dir=staging_dir) as tmp:
            local = os.path.join(tmp, "model")
            yield local, local
        return
    shared = storage.join(staging_dir, f".segspark-model-{uuid.uuid4().hex[:12]}")
    try:
        with tempfile.TemporaryDirectory(prefix="segspark-model-") as tmp:
            yield storage.spark_uri(storage.join(shared, "model")), os.path.join(tmp, "model")
    finally:
        storage.delete_tree(shared)


def _connect_client() -> bool:
    from pyspark.sql.utils import is_remote

    return is_remote()


def _log_model_through_folder(
    model: PipelineModel,
    artifact_path: str,
    registered_model: str,
    staging_dir: str | None,
    signature: Any = None,
) -> str:
    """Log ``model`` as a spark-flavor MLflow model on the active run and register it; the version."""
    import mlflow
    import pyspark
    from mlflow.models import Model

    run = mlflow.active_run()
    assert run is not None
    with _model_folders(staging_dir) as (shared, local):
        model.write().save(storage.join(shared, SPARK_MODEL_DATA))  # written by the server
        if shared != local:
            storage.copy_tree(storage.join(shared, SPARK_MODEL_DATA), os.path.join(local, SPARK_MODEL_DATA))
        mlmodel = Model(artifact_path=artifact_path, run_id=run.info.run_id, signature=signature)
        mlmodel.add_flavor(
            "spark",
            pyspark_version=pyspark.__version__,
            model_data=SPARK_MODEL_DATA,
            model_class=f"{type(model).__module__}.{type(model).__name__}",
        )
        mlflow.pyfunc.add_to_model(mlmodel, loader_module="mlflow.spark", data=SPARK_MODEL_DATA)
        mlmodel.save(os.path.join(local, "MLmodel"))
        with open(os.path.join(local, "requirements.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(model_requirements() or ["mlflow", "pyspark"]))
        mlflow.log_artifacts(local, artifact_path)
    registered = mlflow.register_model(f"runs:/{run.info.run_id}/{artifact_path}", registered_model)
    return str(registered.version)


def _load_model_through_folder(uri: str, staging_dir: str | None) -> PipelineModel:
    """The PipelineModel of a spark-flavor MLflow model, loaded by the Spark Connect server."""
    import mlflow
    from mlflow.models import Model

    with _model_folders(staging_dir) as (shared, local):
        os.makedirs(local)
        downloaded = mlflow.artifacts.download_artifacts(uri, dst_path=local)
        data = Model.load(downloaded).flavors["spark"]["model_data"]
        if shared == local:
            # the server reads the files while loading; the model then lives in the server's session
            return PipelineModel.load(os.path.join(downloaded, data))
        storage.copy_tree(os.path.join(downloaded, data), storage.join(shared, data))
        return PipelineModel.load(storage.join(shared, data))


def _log_density(model: DensityModel) -> None:
    import mlflow

    buf = io.BytesIO()
    np.savez(
        buf,
        core_points=model.core_points,
        core_labels=model.core_labels,
        eps=np.array([model.eps]),
        algorithm=np.array([model.algorithm]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, DENSITY_ARTIFACT)
        with open(path, "wb") as fh:
            fh.write(buf.getvalue())
        mlflow.log_artifact(path, ARTIFACT_DIR)


# --- loading and scoring ------------------------------------------------------------------------


def resolve_model(
    model_uri_or_name: str, tracking_uri: str | None = None, alias: str = "champion"
) -> tuple[str, str | None]:
    """(model URI, logging run id if known) for a URI or a registered name (its alias, else latest)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if "/" in model_uri_or_name or ":" in model_uri_or_name:
        return model_uri_or_name, None
    name = model_uri_or_name
    client = MlflowClient(registry_uri=_registry_uri(name, mlflow.get_tracking_uri()))
    where = tracking_uri or mlflow.get_tracking_uri()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        try:
            versions = list(client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            versions = []
        if not versions:
            raise InputError(
                f"no registered model '{name}' in the MLflow registry at {where}; "
                "run 'segspark run' (which fits and registers it) before 'segspark score'"
            ) from None
        version = max(versions, key=lambda v: int(v.version))
    return f"models:/{name}/{version.version}", version.run_id


def load_registered(
    model_uri_or_name: str,
    tracking_uri: str | None = None,
    alias: str = "champion",
    staging_dir: str | None = None,
) -> tuple[PipelineModel, pd.DataFrame | None, DensityModel | None]:
    """The registered PipelineModel plus the profiles and density core points logged next to it.

    ``staging_dir``: on Spark Connect, a folder the server and this client share (see
    :func:`_load_model_through_folder`)."""
    uri, run_id = resolve_model(model_uri_or_name, tracking_uri, alias)
    return load_resolved(uri, run_id, staging_dir)


def load_resolved(
    uri: str, run_id: str | None, staging_dir: str | None = None
) -> tuple[PipelineModel, pd.DataFrame | None, DensityModel | None]:
    """:func:`load_registered` for a model :func:`resolve_model` already resolved: a caller that
    records the version it applies loads that very version, even if the alias moves meanwhile."""
    import mlflow
    import mlflow.spark
    from mlflow.exceptions import MlflowException

    try:
        if _connect_client():
            model = _load_model_through_folder(uri, staging_dir)
        else:
            model = mlflow.spark.load_model(uri)
    except MlflowException as exc:
        raise InputError(f"cannot load clustering model {uri}: {exc.message}") from None
    profiles, density = None, None
    if run_id:
        try:
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/{ARTIFACT_DIR}/{PROFILES_ARTIFACT}")
            profiles = pd.read_json(io.StringIO(text), orient="records")
        except (MlflowException, OSError):
            log.warning("no profiles logged with %s", uri)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(
                    f"runs:/{run_id}/{ARTIFACT_DIR}/{DENSITY_ARTIFACT}", dst_path=tmp
                )
                density = _read_density(path)
        except (MlflowException, OSError):
            density = None
    return model, profiles, density


def _read_density(path: str) -> DensityModel:
    from segspark.clustering.density import DensityModel

    with np.load(path) as z:
        return DensityModel(
            algorithm=str(z["algorithm"][0]),
            eps=float(z["eps"][0]),
            core_points=z["core_points"],
            core_labels=z["core_labels"],
            n_clusters=int(z["core_labels"].max() + 1),
            sample_rows=0,
            sample_noise_share=float("nan"),
        )


def model_features(model: PipelineModel) -> list[str]:
    """The raw feature columns a fitted clustering PipelineModel reads."""
    for stage in model.stages:
        if isinstance(stage, ImputerModel):
            return [c[len(prep.TRANSFORMED_PREFIX) :] for c in stage.getInputCols()]
    raise InputError("the clustering model has no Imputer stage; it was not fitted by segspark")


def score_segments(
    features: DataFrame,
    model_uri_or_name: str | PipelineModel,
    profiles: pd.DataFrame | None = None,
    *,
    tracking_uri: str | None = None,
    alias: str = "champion",
    staging_dir: str | None = None,
    density: DensityModel | None = None,
) -> DataFrame:
    """Assign clusters and personas to fresh features with the registered model, without refitting.

    Returns customer_id, cluster_id (int) and persona. ``profiles`` defaults to the ones logged with
    the model; a cluster missing from them gets the persona "Cluster <id>". ``density``: the density
    model's core points when a loaded density model is passed as a PipelineModel.
    """
    if isinstance(model_uri_or_name, PipelineModel):
        model = model_uri_or_name
    else:
        model, logged, density = load_registered(model_uri_or_name, tracking_uri, alias, staging_dir)
        profiles = profiles if profiles is not None else logged
    needed = model_features(model)
    missing = [c for c in needed if c not in features.columns]
    if missing:
        raise InputError(f"customer_features: columns {missing} needed by the clustering model are missing")
    if density is not None:
        from segspark.clustering.density import assign_density

        prep_cols = [S.CUSTOMER_ID, prep.FEATURES_COL]
        scored = assign_density(
            model.transform(features.select(S.CUSTOMER_ID, *needed)).select(*prep_cols), density
        )
    else:
        scored = model.transform(features.select(S.CUSTOMER_ID, *needed))
    cid = F.col(prep.PREDICTION_COL).cast("int")
    names: dict[int, str] = {}
    if profiles is not None and not profiles.empty:
        names = {int(c): str(p) for c, p in zip(profiles[CLUSTER_ID], profiles[PERSONA], strict=True)}
    fallback = F.concat(F.lit("Cluster "), cid.cast("string"))
    persona = (
        F.coalesce(
            F.element_at(F.create_map(*[x for c, p in names.items() for x in (F.lit(c), F.lit(p))]), cid),
            fallback,
        )
        if names
        else fallback
    )
    return scored.select(S.CUSTOMER_ID, cid.alias(CLUSTER_ID), persona.alias(PERSONA))
