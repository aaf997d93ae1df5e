"""Behavioural clustering: feature preparation, (algorithm, k) sweep with validity indices, density
clusters, data-driven personas, MLflow tracking and scheduled scoring.

Pipeline entry points: :func:`fit_segments` (monthly refit), :func:`log_to_mlflow` (nested runs and the
registered model) and :func:`score_segments` (weekly scoring with the registered model).
"""

from __future__ import annotations

from segspark.clustering.sweep import CLUSTER_ID, PERSONA, ClusterResult, fit_segments
from segspark.clustering.tracking import load_registered, log_to_mlflow, score_segments

__all__ = [
    "CLUSTER_ID",
    "PERSONA",
    "ClusterResult",
    "fit_segments",
    "load_registered",
    "log_to_mlflow",
    "score_segments",
]
