"""MLflow tracking: one parent run per pipeline run; stages add metrics, figures and nested runs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segspark.errors import SegsparkError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from segspark.config import Settings

log = logging.getLogger(__name__)


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store; the default is SQLite beside the output tables."""
    import mlflow

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("databricks"):
        mlflow.set_registry_uri("databricks-uc")
    else:
        mlflow.set_registry_uri(uri)
    return uri


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value, default=str) if not isinstance(value, str) else value
            out[name] = text[:6000]
    return out


def _ensure_experiment(settings: Settings) -> None:
    """With the default SQLite store, create the experiment with its artifacts beside the database
    (``<output>/mlartifacts``): MLflow's default is ``./mlruns`` in whatever folder the job was
    started from, outside the output that ``erase``/``vacuum`` and its owner manage."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = settings.tracking_uri
    if not uri.startswith("sqlite:///") or mlflow.get_experiment_by_name(settings.tracking.experiment):
        return
    store = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    with contextlib.suppress(MlflowException):  # created meanwhile by a concurrent run: use it
        mlflow.create_experiment(settings.tracking.experiment, artifact_location=store.as_uri())


def _quiet() -> None:
    """MLflow's own chatter (and its store migrations') would drown the job's log."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


# What opening the parent run waits for longest, started early in a thread of its own (``prepare``):
# the tracking URI it prepares and the thread's outcome.
_prepared: tuple[str, Future[None]] | None = None


def prepare(settings: Settings) -> None:
    """Start importing MLflow (~2 s) and creating the default SQLite store (its schema migrations,
    ~2 s) in a background thread, so that they overlap what the driver's Python only waits on: the
    Spark session's JVM start, the demo's data generation. ``parent_run`` waits for it and raises
    its error, at the point of the run where it opened the store itself; nothing but the store's
    creation is done here (no run, no tracking server contacted: ``configure`` only sets the URIs).

    Call it after the configuration checks and before the session starts."""
    global _prepared
    if not settings.tracking.enabled:
        return
    try:
        uri = settings.tracking_uri
    except SegsparkError:  # nowhere to go: parent_run says so, where it always did
        return
    wait_prepared()  # an earlier one (another run's, in this process) ends first
    future: Future[None] = Future()

    def work() -> None:
        try:
            import mlflow  # noqa: F401  (its import sets its loggers' level: quieted after it)

            _quiet()
            configure(settings)
            _ensure_experiment(settings)
        except BaseException as exc:  # raised again by parent_run, in the run's own thread
            future.set_exception(exc)
        else:
            future.set_result(None)

    # not a daemon: a run that fails before its parent run opens still lets the store's creation end
    threading.Thread(target=work, name="segspark-mlflow-prepare").start()
    _prepared = (uri, future)


def wait_prepared(uri: str | None = None) -> None:
    """Wait for ``prepare``'s thread, if one was started. Before this thread uses the store itself (a
    score resolves its registered model before the parent run opens), so that two threads never
    create one SQLite store at once: its error is left for ``parent_run``. With ``uri`` (the parent
    run's store) the thread is done with, and its error raised when it prepared that store (another
    store's error belongs to a run that ended before opening it)."""
    global _prepared
    if _prepared is None:
        return
    prepared, future = _prepared
    error = future.exception()  # waits for the thread
    if uri is None:
        return
    _prepared = None
    if error is not None and prepared == uri:
        raise error


@contextlib.contextmanager
def parent_run(settings: Settings, run_id: str, tags: dict[str, str] | None = None) -> Iterator[str | None]:
    """Open the pipeline's parent MLflow run (or do nothing when tracking is disabled)."""
    if not settings.tracking.enabled:
        yield None
        return
    wait_prepared(settings.tracking_uri)
    import mlflow

    configure(settings)
    _quiet()
    _ensure_experiment(settings)
    mlflow.set_experiment(settings.tracking.experiment)
    with mlflow.start_run(run_name=f"segspark-{run_id}") as run:
        mlflow.set_tags({"segspark.run_id": run_id, **(tags or {})})
        params = flatten(settings.as_dict())
        items = list(params.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        yield run.info.run_id


def active() -> bool:
    try:
        import mlflow
    except ImportError:  # pragma: no cover
        return False
    return mlflow.active_run() is not None


def log_metrics(metrics: dict[str, float], prefix: str = "") -> None:
    if not active():
        return
    import math

    import mlflow

    clean = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            clean[f"{prefix}{key}".replace(" ", "_")] = number
    if clean:
        mlflow.log_metrics(clean)


def log_params(params: dict[str, Any]) -> None:
    """Params of the active run (a choice the job made, e.g. the CLV models); None values skipped."""
    if not active():
        return
    import mlflow

    mlflow.log_params({k: str(v)[:500] for k, v in params.items() if v is not None})


def log_dict(data: dict[str, Any], name: str) -> None:
    if active():
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(data, default=str)), name)


def log_figures(figures: dict[str, Figure], folder: str = "plots") -> None:
    if not active():
        return
    import mlflow

    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{folder}/{name}.png")


def log_artifacts(path: str | os.PathLike[str], folder: str) -> None:
    if active():
        import mlflow

        mlflow.log_artifacts(str(path), folder)


def log_input_lineage(inputs: list[dict[str, Any]]) -> None:
    """Record input tables with their versions (as an artifact and as tags)."""
    if not active():
        return
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inputs.json"
        path.write_text(json.dumps(inputs, indent=2, default=str))
        mlflow.log_artifact(str(path), "lineage")
    for item in inputs:
        mlflow.set_tag(f"input.{item['name']}", f"{item['location']}@{item.get('version')}")
