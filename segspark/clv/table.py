"""The CLV fit as the small long-format ``clv_fit`` table (``tables.CLV_FIT_SCHEMA``) and back, and
the validation scalars as a two-column table."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd

from segspark.clv.fit import HISTORICAL_RATE, SPEND_MODEL, ClvResult


def summary_table(result: ClvResult) -> pd.DataFrame:
    """The validation scalars as a two-column table (metric, value), e.g. for a report."""
    rows = [
        (k, float(v))
        for k, v in result.validation.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return pd.DataFrame(rows, columns=["metric", "value"])


# ------------------------------------------------------------------------------------------------
# The fit as a small long-format table (tables.CLV_FIT_SCHEMA) and back
# ------------------------------------------------------------------------------------------------
FIT_COLUMNS = ("model", "chosen", "section", "name", "value", "text")
_PARAM_SECTIONS = ("params", "se", "spend_params", "spend_se")
_SPEND_SECTIONS = ("spend_params", "spend_se")
# fit entries that are tables of their own (candidates) or repeat a candidate (calibration_fit)
_NESTED_FIT = ("candidates", "calibration_fit", "validity", *_PARAM_SECTIONS)
VALIDITY = "validity"
# validity rows whose text is another entry of the model's validity dict (the rest have no text)
_VALIDITY_TEXT = {
    "valid": "reason",
    "max_relative_se": "max_relative_se_param",
    "spend_corr_ok": "spend_corr_reason",
}
_VALIDITY_ROWS = {
    SPEND_MODEL: ("spend_corr", "spend_corr_ok"),
    HISTORICAL_RATE: ("valid",),
}
_MODEL_VALIDITY_ROWS = ("valid", "holdout_total_error", "max_relative_se")
_TRUE, _FALSE, _NAN = "true", "false", "nan"


def _encode(value: Any) -> tuple[float | None, str | None] | None:
    """(value, text) of one scalar; None for what is not a scalar (dicts, frames, lists).

    Booleans are 1/0 with the text true/false, NaN a null value with the text nan (a Delta double
    column would hold NaN, but BI tools and the writer treat it as missing), dates ISO text.
    """
    if value is None:
        return None, None
    if isinstance(value, bool | np.bool_):
        return (1.0, _TRUE) if value else (0.0, _FALSE)
    if isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
        return (None, _NAN) if math.isnan(f) else (f, None)
    if isinstance(value, dt.date):
        return None, value.isoformat()
    if isinstance(value, str):
        return None, value
    return None


def _decode(value: Any, text: Any) -> Any:
    """The scalar :func:`_encode` wrote (integers come back as floats)."""
    has_value = value is not None and not pd.isna(value)
    has_text = text is not None and not (isinstance(text, float) and math.isnan(text))
    if has_value and has_text and text in (_TRUE, _FALSE):
        return text == _TRUE
    if has_value:
        return float(value)
    if has_text and text == _NAN:
        return math.nan
    return str(text) if has_text else None


def _flatten(prefix: str, data: dict[str, Any]) -> list[tuple[str, Any]]:
    """Scalars of a nested dict with dotted names (``params.r``); frames and lists are skipped."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(f"{name}.", value))
        elif _encode(value) is not None:
            out.append((name, value))
    return out


def fit_table(result: ClvResult) -> pd.DataFrame:
    """The fit and its checks as rows of ``clv_fit`` (columns of ``tables.CLV_FIT_SCHEMA``).

    Sections: ``fit`` (every scalar of ``result.fit``: model, reason, time unit, dates,
    log-likelihood, AIC/BIC, convergence and message, penalizer and any penalizer fallback, value
    tier threshold, spend-model scalars), ``params``/``se`` of the chosen model, ``spend_params``/
    ``spend_se`` (model = the spend model), ``validation`` (the holdout metrics and other scalar
    checks; the curves are in ``clv_validation``), and ``candidate`` (each compared model's summary,
    nested entries with dotted names such as ``params.r``; the chosen candidate also carries its
    calibration fit's details). Booleans are 1/0 with text true/false; NaN is a null value with
    text nan.

    Section ``validity`` (the contract the report reads): per candidate model M, (M, "valid", 1|0,
    the reason or null), (M, "holdout_total_error", the signed share or null, null) and
    (M, "max_relative_se", the value or null, the parameter's name); ("gamma_gamma", "spend_corr",
    corr or null, null) and ("gamma_gamma", "spend_corr_ok", 1|0, the reason or null), chosen when
    the chosen CLV uses it; on the fallback ("historical_rate", True, "valid", 1, null), its reason in
    the ``fit`` row ``fallback_reason``.
    """
    fit, chosen = result.fit, str(result.fit.get("model"))
    spend_model = str(fit.get("spend_model") or "spend")
    rows: list[tuple[str, bool, str, str, float | None, str | None]] = []

    def add(model: str, is_chosen: bool, section: str, name: str, value: Any) -> None:
        encoded = _encode(value)
        if encoded is not None:
            rows.append((model, is_chosen, section, name, *encoded))

    for key, value in fit.items():
        if key not in _NESTED_FIT:
            add(chosen, True, "fit", key, value)
    for section in _PARAM_SECTIONS:
        model = spend_model if section in _SPEND_SECTIONS else chosen
        for name, value in (fit.get(section) or {}).items():
            add(model, True, section, str(name), value)
    for key, value in result.validation.items():
        add(chosen, True, "validation", key, value)
    candidates: dict[str, Any] = dict(fit.get("candidates") or {})
    calibration = fit.get("calibration_fit")
    if isinstance(calibration, dict):
        # the chosen candidate is the calibration fit: its summary plus the fit's own details
        candidates[chosen] = {**calibration, **candidates.get(chosen, {})}
    for model, summary in candidates.items():
        for name, value in _flatten("", summary if isinstance(summary, dict) else {"error": summary}):
            add(str(model), model == chosen, "candidate", name, value)
    spend_chosen = chosen != HISTORICAL_RATE and fit.get("spend_model") == SPEND_MODEL
    for model, checks in (fit.get(VALIDITY) or {}).items():
        is_chosen = spend_chosen if model == SPEND_MODEL else model == chosen
        for name in _VALIDITY_ROWS.get(model, _MODEL_VALIDITY_ROWS):
            value = checks.get(name)
            if isinstance(value, bool | np.bool_):
                number: float | None = 1.0 if value else 0.0
            elif isinstance(value, int | float | np.integer | np.floating) and math.isfinite(float(value)):
                number = float(value)
            else:
                number = None  # undefined, or not finite (a standard error): null, as the contract says
            text = checks.get(_VALIDITY_TEXT[name]) if name in _VALIDITY_TEXT else None
            rows.append((str(model), is_chosen, VALIDITY, name, number, None if text is None else str(text)))
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


def fit_from_table(pdf: pd.DataFrame) -> dict[str, Any]:
    """``{"fit": {...}, "validation": {...}}`` from :func:`fit_table` rows (the report reads this).

    ``fit`` holds the scalars, the ``params``/``se``/``spend_params``/``spend_se`` dicts and
    ``candidates`` (model -> summary, dotted names nested again), ``validity`` (model -> its checks:
    ``valid``/``reason``, ``holdout_total_error``, ``max_relative_se``/``max_relative_se_param``;
    ``spend_corr``, ``spend_corr_ok``/``spend_corr_reason``; null numbers as NaN); ``validation``
    the scalar checks.
    """
    fit: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    candidates: dict[str, dict[str, Any]] = {}
    validity: dict[str, dict[str, Any]] = {}
    for r in pdf.itertuples(index=False):
        section, name = str(r.section), str(r.name)
        if section == VALIDITY:
            raw: Any = r.value
            number = None if raw is None or pd.isna(raw) else float(raw)
            text = (
                None if r.text is None or (isinstance(r.text, float) and math.isnan(r.text)) else str(r.text)
            )
            entry = validity.setdefault(str(r.model), {})
            if name in ("valid", "spend_corr_ok"):
                entry[name] = number == 1.0
            else:
                entry[name] = math.nan if number is None else number
            if name in _VALIDITY_TEXT:
                entry[_VALIDITY_TEXT[name]] = text
            continue
        value = _decode(r.value, r.text)
        if section == "fit":
            fit[name] = value
        elif section in _PARAM_SECTIONS:
            fit.setdefault(section, {})[name] = value
        elif section == "validation":
            validation[name] = value
        elif section == "candidate":
            node = candidates.setdefault(str(r.model), {})
            *path, leaf = name.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
    if candidates:
        fit["candidates"] = candidates
    if validity:
        fit[VALIDITY] = validity
    return {"fit": fit, "validation": validation}
