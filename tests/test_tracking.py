"""The parent MLflow run's store, made ready in a background thread while the session starts.

Real SQLite stores on disk, MLflow's own client reading them back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from segspark import tracking
from segspark.config import Settings


def _settings(out: Path, uri: str | None = None) -> Settings:
    return Settings.model_validate({"output": {"path": str(out)}, "tracking": {"uri": uri}})


def _open(settings: Settings, run_id: str) -> str:
    with tracking.parent_run(settings, run_id) as mlflow_id:
        tracking.log_metrics({"seconds_stage_ingest": 1.5})
    assert mlflow_id is not None
    return mlflow_id


def test_the_prepared_store_is_the_one_the_parent_run_opens(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "out")
    tracking.prepare(settings)
    mlflow_id = _open(settings, "r1")
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(mlflow_id)
    assert run.data.tags["segspark.run_id"] == "r1"
    assert run.data.metrics["seconds_stage_ingest"] == 1.5
    assert run.data.params["output.path"] == str(tmp_path / "out")
    # created as the parent run creates it: the artifacts beside the database, not in ./mlruns
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == settings.tracking.experiment
    assert experiment.artifact_location == (tmp_path / "out" / "mlartifacts").as_uri()
    # a second run of the same output: prepared again, the same experiment
    tracking.prepare(settings)
    again = client.get_run(_open(settings, "r2"))
    assert again.info.experiment_id == run.info.experiment_id


def test_a_store_that_cannot_be_made_fails_its_own_parent_run_only(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # where the store's folder would be
    bad = _settings(tmp_path / "bad", f"sqlite:///{blocked}/store/mlflow.db")
    with pytest.raises(OSError) as unprepared:  # the error the parent run raised before
        _open(bad, "r0")
    tracking.prepare(bad)
    with pytest.raises(OSError) as prepared:
        _open(bad, "r1")
    assert type(prepared.value) is type(unprepared.value)
    assert str(prepared.value) == str(unprepared.value)
    # a run that failed before its parent run opened: its prepared error is not the next run's
    tracking.prepare(bad)
    good = _settings(tmp_path / "good")
    tracking.prepare(good)
    assert MlflowClient(good.tracking_uri).get_run(_open(good, "r2")).data.tags["segspark.run_id"] == "r2"
    tracking.prepare(bad)
    other = _settings(tmp_path / "other")  # not prepared: the pending error is someone else's
    assert _open(other, "r3")


def test_a_score_waits_for_the_store_before_it_reads_the_registry(tmp_path: Path) -> None:
    """A score resolves its registered model before its parent run opens: it waits for the store the
    background thread is creating (never two threads migrating one SQLite file), and the thread's
    error stays for the parent run to raise."""
    good = _settings(tmp_path / "good")
    tracking.prepare(good)
    tracking.wait_prepared()
    experiment = MlflowClient(good.tracking_uri).get_experiment_by_name(good.tracking.experiment)
    assert experiment is not None  # created by the thread, which had ended
    assert experiment.artifact_location == (tmp_path / "good" / "mlartifacts").as_uri()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    bad = _settings(tmp_path / "bad", f"sqlite:///{blocked}/store/mlflow.db")
    tracking.prepare(bad)
    tracking.wait_prepared()  # no error here
    with pytest.raises(OSError):
        _open(bad, "r1")
