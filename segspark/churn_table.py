"""The churn model's metrics as ``churn_metrics`` rows (a small long-format table,
``tables.CHURN_METRICS_SCHEMA``) and back: :func:`metrics_table` / :func:`skipped_table` write them,
:func:`metrics_from_table` and :func:`curves_from_table` read them. :mod:`segspark.churn` re-exports
all four.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from segspark.churn import ChurnResult

METRICS_COLUMNS = ("section", "name", "x", "value", "text")
STATUS_FITTED, STATUS_SKIPPED = "fitted", "skipped"
_CURVES = {  # section -> (metrics key, abscissa column, value columns)
    "lift": ("lift_by_decile", "decile", ("customers", "churn_rate", "mean_risk", "lift")),
    "calibration": ("calibration", "bin", ("customers", "mean_predicted", "observed_rate")),
    "roc": ("roc", "fpr", ("tpr",)),
}
_NAN = "nan"


def _num(v: Any) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def metrics_table(result: ChurnResult) -> pd.DataFrame:
    """The model's metrics as rows of ``churn_metrics`` (columns of ``tables.CHURN_METRICS_SCHEMA``).

    Sections: ``status`` (name ``fitted``, text: which model scored), ``metric`` (every scalar:
    AUC, PR-AUC, Brier, lift, ECE, churn rates, customer counts; model, cutoffs and the like as
    text; NaN as a null value with text nan), ``importance`` (one row per feature), and the curves
    ``roc`` (x = false positive rate, value = true positive rate), ``lift`` (x = decile) and
    ``calibration`` (x = probability bin), named by their column.
    """
    m = result.metrics
    rows: list[tuple[str, str, float | None, float | None, str | None]] = [
        ("status", STATUS_FITTED, None, None, str(m.get("scored_with", "")))
    ]
    for key, value in m.items():
        if isinstance(value, bool):
            rows.append(("metric", key, None, float(value), "true" if value else "false"))
        elif isinstance(value, int | float | np.integer | np.floating):
            f = float(value)
            nan = math.isnan(f)
            rows.append(("metric", key, None, None if nan else f, _NAN if nan else None))
        elif isinstance(value, str):
            rows.append(("metric", key, None, None, value))
    for name, value in (m.get("feature_importances") or {}).items():
        rows.append(("importance", str(name), None, float(value), None))
    for section, (key, x_col, value_cols) in _CURVES.items():
        curve = m.get(key)
        if not isinstance(curve, pd.DataFrame):
            continue
        for r in curve.to_dict("records"):
            rows += [(section, col, _num(r[x_col]), _num(r[col]), None) for col in value_cols]
    return pd.DataFrame(rows, columns=list(METRICS_COLUMNS))


def skipped_table(reason: str) -> pd.DataFrame:
    """``churn_metrics`` rows of a model that did not run: one ``status`` row named skipped, with why."""
    return pd.DataFrame([("status", STATUS_SKIPPED, None, None, reason)], columns=list(METRICS_COLUMNS))


def metrics_from_table(pdf: pd.DataFrame) -> dict[str, Any]:
    """The scalar metrics (``metric`` rows) from :func:`metrics_table` rows; numbers as floats, text
    as text. A skipped model gives ``{"skipped": reason}``."""
    out: dict[str, Any] = {}
    for r in pdf.itertuples(index=False):
        raw: Any = r.text
        text = None if raw is None or pd.isna(raw) else str(raw)
        if r.section == "status" and r.name == STATUS_SKIPPED:
            out["skipped"] = text or "no reason recorded"
        elif r.section == "metric":
            value = _num(r.value)
            if text in ("true", "false") and value is not None:
                out[str(r.name)] = text == "true"
            elif value is not None:
                out[str(r.name)] = value
            else:
                out[str(r.name)] = math.nan if text == _NAN else text
    return out


def curves_from_table(pdf: pd.DataFrame) -> dict[str, Any]:
    """The importances (dict) and the curves (``lift_by_decile``, ``calibration``, ``roc`` frames,
    as ``run_churn`` returns them) from ``churn_metrics`` rows, e.g. to redraw the figures."""
    out: dict[str, Any] = {}
    imp = pdf[pdf["section"] == "importance"]
    if len(imp):
        pairs = zip(imp["name"], imp["value"], strict=True)
        out["feature_importances"] = {str(n): float(v) for n, v in pairs}
    for section, (key, x_col, value_cols) in _CURVES.items():
        part = pdf[pdf["section"] == section]
        if part.empty:
            continue
        if section == "roc":  # the curve rises in both coordinates: sorted points are its order
            points = part.sort_values(["x", "value"], kind="stable")
            out[key] = pd.DataFrame(
                {x_col: points["x"].to_numpy(float), "tpr": points["value"].to_numpy(float)}
            )
            continue
        wide = part.pivot_table(index="x", columns="name", values="value", sort=False, dropna=False)
        frame = wide.reindex(columns=list(value_cols)).rename_axis(columns=None).reset_index(names=x_col)
        out[key] = frame.sort_values(x_col).reset_index(drop=True)
    return out
