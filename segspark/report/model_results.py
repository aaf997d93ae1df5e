"""Model results for the report, read from their tables: the clustering sweep and profiles
(``clustering_sweep``, ``cluster_profiles``), the CLV fit (``clv_fit``) and the churn model's
metrics (``churn_metrics``). Nothing is refitted or taken from memory."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from segspark import schema as S
from segspark.churn_table import metrics_from_table
from segspark.report.aggregates import drop_stamp, small_table
from segspark.schema import CLUSTER_ID


def _scalars(data: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite numbers of ``data`` as floats; flags and anything else are left out."""
    out: dict[str, float] = {}
    for key, value in (data or {}).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float | np.integer | np.floating) and math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def clustering_info(
    sweep_table: DataFrame | None, profiles_table: DataFrame | None, k: int
) -> dict[str, Any] | None:
    """The sweep, the choice and its features (from ``clustering_sweep``) and the profiles (from
    ``cluster_profiles``; clusters below ``k`` customers dropped and counted)."""
    from segspark.clustering.results import sweep_from_table

    if sweep_table is None and profiles_table is None:
        return None
    result = None
    if sweep_table is not None:
        # a row per candidate: a few dozen rows
        result = sweep_from_table(small_table(drop_stamp(sweep_table), S.CLUSTERING_SWEEP, 5_000))
    profiles = None
    if profiles_table is not None:
        profiles = small_table(drop_stamp(profiles_table), S.CLUSTER_PROFILES)
        if CLUSTER_ID in profiles.columns:
            profiles = profiles.sort_values(CLUSTER_ID, kind="stable").reset_index(drop=True)
    if result is None and profiles is None:
        return None
    chosen = dict((result or {}).get("chosen") or {})
    features = list((result or {}).get("features") or [])
    hidden = 0
    if profiles is not None and "size" in profiles.columns:
        small = profiles["size"] < k
        hidden = int(small.sum())
        profiles = profiles[~small].reset_index(drop=True)
    if not features and profiles is not None:
        features = [c[2:] for c in profiles.columns if c.startswith("z_")]
    sweep = (result or {}).get("sweep")
    return {
        "sweep": sweep if isinstance(sweep, pd.DataFrame) and not sweep.empty else None,
        "profiles": profiles,
        "chosen": chosen,
        "features": features,
        "customers": (result or {}).get("customers"),
        "hidden_clusters": hidden,
    }


def clv_fit_from_table(pdf: pd.DataFrame) -> dict[str, Any]:
    """``{"fit": ..., "validation": ...}`` (the CLV stage's shape) from ``clv_fit`` rows."""
    from segspark.clv import fit_from_table

    return fit_from_table(pdf)


def clv_info(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the report shows of the CLV fit: the model, its parameters, fit and validation scalars."""
    if result is None:
        return None
    fit = dict(result.get("fit") or {})
    validation = result.get("validation") or {}
    return {
        "model": fit.get("model"),
        "reason": fit.get("reason"),
        "time_unit": fit.get("time_unit"),
        "calibration_end": fit.get("calibration_end"),
        "holdout_end": fit.get("holdout_end"),
        "params": {k: float(v) for k, v in (fit.get("params") or {}).items() if isinstance(v, int | float)},
        "spend_model": fit.get("spend_model"),
        "value_tier_threshold": fit.get("value_tier_threshold"),
        "fit": _scalars(
            {k: v for k, v in fit.items() if k in ("log_likelihood", "bic", "n_customers", "fit_seconds")}
        ),
        "validation": _scalars(validation),
    }


def churn_from_table(pdf: pd.DataFrame) -> tuple[dict[str, float] | None, str | None]:
    """The churn model's scalar metrics and, for a skipped model, why (from ``churn_metrics`` rows:
    ``metric`` rows are the scalars; a ``status`` row named ``skipped`` carries the reason)."""
    status = pdf[(pdf["section"] == "status") & (pdf["name"] == "skipped")]
    skipped = next((str(t) for t in status["text"] if t is not None and not pd.isna(t)), None)
    if not status.empty and skipped is None:
        skipped = "no reason recorded"
    metrics = dict(metrics_from_table(pdf))
    return _scalars(metrics) or None, skipped
