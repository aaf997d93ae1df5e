"""Customer lifetime value: BG/NBD, Pareto/NBD or MBG/NBD with Gamma-Gamma spend, fitted on
compressed sufficient statistics, validated on a holdout, scored per customer in Spark.

Time windows (all dates inclusive):

- ``calibration_end`` = ``clv.calibration_end``, or ``as_of_date - clv.holdout_days`` when null;
- ``holdout_end`` = ``clv.holdout_end``, or ``as_of_date`` when null; orders after ``as_of_date``
  may serve as holdout only when ``clv.holdout_end`` says so explicitly;
- the model is fitted and validated on (.., calibration_end] vs (calibration_end, holdout_end];
- when the holdout window holds no purchases, the model is fitted on everything up to
  ``as_of_date`` and holdout validation is skipped (logged);
- customer predictions are always as of ``as_of_date``: when calibration_end is earlier, the chosen
  model is refitted on the full history up to ``as_of_date`` (starting from the validated
  parameters) before scoring, and both fits are reported.

``clv.model: auto`` fits all three transaction models and keeps the one with the lowest holdout MAE
(or the lowest BIC when there is no holdout); the reason is recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from segspark.clv import models as M
from segspark.clv import predict as P
from segspark.clv import summary as S
from segspark.clv import validation as V
from segspark.config import ClvConfig
from segspark.errors import ConfigError, SegsparkError

log = logging.getLogger(__name__)

__all__ = ["ClvResult", "fit_from_table", "fit_table", "resolve_windows", "run_clv"]

_NESTED_PREFIX = {"params": "", "se": "se_", "spend_params": "spend_", "spend_se": "spend_se_"}


@dataclass
class ClvResult:
    """What the CLV stage hands to the pipeline (nothing written)."""

    customers: DataFrame  # customer_id, p_alive, expected_purchases, expected_avg_value, clv, value_tier
    fit: dict[str, Any]
    validation: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for experiment tracking (names prefixed ``clv_``)."""
        out: dict[str, float] = {}
        for section in (self.fit, self.validation):
            for key, value in section.items():
                finite = isinstance(value, int | float) and math.isfinite(float(value))
                if isinstance(value, bool) or finite:
                    out[f"clv_{key}"] = float(value)
                elif isinstance(value, dict) and key in _NESTED_PREFIX:
                    prefix = _NESTED_PREFIX[key]
                    for k, v in value.items():
                        if isinstance(v, int | float) and math.isfinite(float(v)):
                            out[f"clv_{prefix}{k}"] = float(v)
        return out


def resolve_windows(as_of_date: dt.date, cfg: ClvConfig) -> tuple[dt.date, dt.date]:
    """(calibration_end, holdout_end) from the config and the as-of date (see the module doc)."""
    cal_end = cfg.calibration_end or (as_of_date - dt.timedelta(days=cfg.holdout_days))
    if cal_end > as_of_date:
        raise ConfigError(
            f"clv.calibration_end {cal_end} is after as_of_date {as_of_date}; it must be on or before it"
        )
    hold_end = cfg.holdout_end or as_of_date
    if hold_end < cal_end:
        raise ConfigError(f"clv.holdout_end {hold_end} is before clv.calibration_end {cal_end}")
    return cal_end, hold_end


def _fit_candidates(stats: M.RfmStats, cfg: ClvConfig) -> dict[str, M.FitResult | str]:
    if cfg.model != "auto":
        return {cfg.model: M.fit_transactions(cfg.model, stats, cfg.penalizer)}
    out: dict[str, M.FitResult | str] = {}
    for name in M.TRANSACTION_MODELS:
        try:
            out[name] = M.fit_transactions(name, stats, cfg.penalizer)
        except SegsparkError as exc:
            log.warning("clv: %s not usable for model choice: %s", name, exc)
            out[name] = str(exc)
    if not any(isinstance(v, M.FitResult) for v in out.values()):
        raise SegsparkError(f"clv: no transaction model converged; {M._FAIL_HINT}")
    return out


def _spend_fit(summary: DataFrame, cfg: ClvConfig, fit: dict[str, Any]) -> tuple[Any | None, float]:
    """Gamma-Gamma fit (or a mean-value fallback); fills the spend entries of ``fit``."""
    spend = S.compressed_spend(summary, cfg.spend_grid_resolution)
    fit["spend_repeat_buyers"] = spend.n_repeat_buyers
    fit["spend_excluded_nonpositive"] = spend.n_excluded_nonpositive
    fit["spend_freq_corr"] = spend.freq_spend_corr
    fit["spend_compressed_rows"] = spend.n_rows
    warn = math.isfinite(spend.freq_spend_corr) and abs(spend.freq_spend_corr) > cfg.spend_corr_warn
    fit["spend_independence_warning"] = warn
    if warn:
        log.warning(
            "clv: correlation between frequency and mean spend is %.3f (|corr| > %.2f): the Gamma-Gamma "
            "independence assumption looks violated; treat expected spend with care",
            spend.freq_spend_corr,
            cfg.spend_corr_warn,
        )
    if spend.n_excluded_nonpositive:
        log.info(
            "clv: %d repeat buyers with zero or negative mean spend excluded from the spend fit",
            spend.n_excluded_nonpositive,
        )
    usable = spend.stats is not None and spend.stats.n_customers >= cfg.min_repeat_buyers
    if usable:
        assert spend.stats is not None
        gg = M.fit_gamma_gamma(spend.stats, cfg.penalizer)
        fit.update(
            spend_model="gamma_gamma",
            spend_params=gg.params,
            spend_se=gg.se,
            spend_log_likelihood=gg.log_likelihood,
            spend_converged=gg.converged,
            spend_iterations=gg.iterations,
            spend_grad_norm=gg.grad_norm,
            spend_fit_seconds=gg.fit_seconds,
        )
        return gg.values, 0.0
    row = summary.agg(F.avg(F.col(S.MONETARY_VALUE)).alias("m")).first()
    mean_value = float(row["m"]) if row is not None and row["m"] is not None else 0.0
    log.warning(
        "clv: only %d repeat buyers with positive spend (clv.min_repeat_buyers=%d): no Gamma-Gamma fit, "
        "every purchase valued at the mean repeat purchase value %.2f",
        spend.n_repeat_buyers - spend.n_excluded_nonpositive,
        cfg.min_repeat_buyers,
        mean_value,
    )
    fit.update(spend_model="mean_value", spend_params={}, spend_se={}, spend_mean_value=mean_value)
    return None, mean_value


def run_clv(customer_days: DataFrame, as_of_date: dt.date, cfg: ClvConfig) -> ClvResult:
    """The CLV stage: summary -> compressed fit (+ model choice) -> validation -> per-customer scores.

    ``customer_days``: the silver table (customer_id, order_date, purchases, purchase_value); its
    rows with ``purchases > 0`` are the purchase occasions. Returns customers [customer_id, p_alive,
    expected_purchases, expected_avg_value, clv, value_tier] for every customer with a purchase on
    or before ``as_of_date``.
    """
    cal_end, hold_end = resolve_windows(as_of_date, cfg)
    unit = cfg.time_unit
    units_per_month = cfg.days_per_month / S.unit_days(unit)
    # a filter over the silver table: the few scans below (holdout check, summaries, tracking
    # curve) read its three columns again rather than caching them
    days = S.purchase_days(customer_days, max(as_of_date, hold_end))
    # the fits run on the driver next to Spark's own threads: one BLAS thread each
    with threadpool_limits(limits=1):
        has_holdout = hold_end > cal_end and (
            days.where(
                (F.col(S.PURCHASE_DATE) > F.lit(cal_end)) & (F.col(S.PURCHASE_DATE) <= F.lit(hold_end))
            )
            .limit(1)
            .count()
            > 0
        )
        if not has_holdout:
            log.info(
                "clv: no purchases in the holdout window (%s, %s]: fitting on everything up to %s, "
                "holdout validation skipped",
                cal_end,
                hold_end,
                as_of_date,
            )
            cal_end = as_of_date
        cal_summary = S.summary_from_purchase_days(
            days, cal_end, unit, hold_end if has_holdout else None
        ).persist()
        try:
            return _run(
                days,
                cal_summary,
                as_of_date,
                cal_end,
                hold_end if has_holdout else None,
                cfg,
                units_per_month,
            )
        finally:
            cal_summary.unpersist()


def _run(
    days: DataFrame,
    cal_summary: DataFrame,
    as_of_date: dt.date,
    cal_end: dt.date,
    hold_end: dt.date | None,
    cfg: ClvConfig,
    units_per_month: float,
) -> ClvResult:
    unit = cfg.time_unit
    stats = S.compressed_rfm(cal_summary, unit)
    candidates = _fit_candidates(stats, cfg)
    fitted = {k: v for k, v in candidates.items() if isinstance(v, M.FitResult)}
    validation: dict[str, Any] = {"has_holdout": hold_end is not None}
    per_model: dict[str, dict[str, Any]] = {}
    for name, res in candidates.items():
        per_model[name] = (
            {
                "params": res.params,
                "log_likelihood": res.log_likelihood,
                "bic": res.bic,
                "converged": res.converged,
            }
            if isinstance(res, M.FitResult)
            else {"error": res}
        )
    if hold_end is not None:
        for name, metrics in V.holdout_metrics_many(cal_summary, fitted).items():
            per_model[name].update(metrics)

    chosen: str
    if cfg.model != "auto":
        chosen = cfg.model
        reason = f"configured (clv.model={cfg.model})"
    elif hold_end is not None:
        chosen = min(fitted, key=lambda k: (per_model[k]["holdout_mae"], k))
        listing = ", ".join(f"{k} {per_model[k]['holdout_mae']:.4f}" for k in sorted(fitted))
        reason = f"lowest holdout MAE per customer ({listing})"
    else:
        chosen = min(fitted, key=lambda k: (fitted[k].bic, k))
        listing = ", ".join(f"{k} {fitted[k].bic:.1f}" for k in sorted(fitted))
        reason = f"lowest BIC, no holdout period ({listing})"
    cal_fit = fitted[chosen]
    log.info("clv: model %s chosen: %s", chosen, reason)

    figures: dict[str, Figure] = {}
    if hold_end is not None:
        chosen_metrics = (
            per_model[chosen]
            if "holdout_mae" in per_model[chosen]
            else V.holdout_metrics(cal_summary, cal_fit)
        )
        validation.update({k: v for k, v in chosen_metrics.items() if k.startswith("holdout_")})
        by_freq = V.holdout_by_frequency(cal_summary, cal_fit)
        validation["holdout_by_frequency"] = by_freq
        figures["clv_conditional_expectation"] = V.conditional_figure(by_freq, chosen)
    curve = V.tracking_curve(days, cal_summary, cal_fit, cal_end, hold_end or cal_end, unit)
    hist = V.frequency_histogram(stats, cal_fit)
    validation["tracking_curve"] = curve
    validation["frequency_histogram"] = hist
    validation["histogram_chi2"] = V.histogram_chi2(hist)
    if len(curve):
        last = curve.iloc[-1]
        validation["tracking_final_actual"] = float(last["actual_cum"])
        validation["tracking_final_expected"] = float(last["expected_cum"])
        cal_rows = curve[curve["calibration"]]
        if len(cal_rows):
            validation["tracking_calibration_expected"] = float(cal_rows["expected_cum"].iloc[-1])
            validation["tracking_calibration_actual"] = float(cal_rows["actual_cum"].iloc[-1])
    figures["clv_tracking"] = V.tracking_figure(curve, chosen, cal_end)
    figures["clv_frequency_histogram"] = V.histogram_figure(hist, chosen)

    # Scoring is as of as_of_date: refit the chosen model on the full history when the
    # calibration period ended earlier.
    if cal_end < as_of_date:
        final_summary = S.summary_from_purchase_days(days, as_of_date, unit)
        final_stats = S.compressed_rfm(final_summary, unit)
        final_fit = M.fit_transactions(chosen, final_stats, cfg.penalizer, initial=cal_fit.values)
    else:
        final_summary, final_stats, final_fit = cal_summary, stats, cal_fit

    fit: dict[str, Any] = {
        "model": chosen,
        "reason": reason,
        "time_unit": unit,
        "as_of_date": as_of_date.isoformat(),
        "calibration_end": cal_end.isoformat(),
        "holdout_end": hold_end.isoformat() if hold_end else None,
        "refit_on_full_history": cal_end < as_of_date,
        "params": final_fit.params,
        "se": final_fit.se,
        "log_likelihood": final_fit.log_likelihood,
        "aic": final_fit.aic,
        "bic": final_fit.bic,
        "converged": final_fit.converged,
        "iterations": final_fit.iterations,
        "function_evals": final_fit.function_evals,
        "grad_norm": final_fit.grad_norm,
        "message": final_fit.message,
        "penalizer": final_fit.penalizer,
        "n_customers": final_fit.n_customers,
        "compressed_rows": final_stats.n_rows,
        "fit_seconds": final_fit.fit_seconds,
        "calibration_fit": cal_fit.as_dict(),
        "candidates": per_model,
    }
    gg_params, fallback = _spend_fit(final_summary, cfg, fit)
    predictions = P.with_predictions(
        final_summary,
        final_fit,
        gg_params,
        cfg.horizon_months,
        cfg.monthly_discount_rate,
        units_per_month,
        fallback,
    )
    threshold = P.value_tier_threshold(predictions, cfg.value_tier_top_share)
    fit["value_tier_threshold"] = threshold if threshold is not None else math.nan
    customers = P.with_value_tier(predictions, threshold)
    return ClvResult(customers=customers, fit=fit, validation=validation, figures=figures)


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
_NESTED_FIT = ("candidates", "calibration_fit", *_PARAM_SECTIONS)
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
    return pd.DataFrame(rows, columns=list(FIT_COLUMNS))


def fit_from_table(pdf: pd.DataFrame) -> dict[str, Any]:
    """``{"fit": {...}, "validation": {...}}`` from :func:`fit_table` rows (the report reads this).

    ``fit`` holds the scalars, the ``params``/``se``/``spend_params``/``spend_se`` dicts and
    ``candidates`` (model -> summary, dotted names nested again); ``validation`` the scalar checks.
    """
    fit: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    candidates: dict[str, dict[str, Any]] = {}
    for r in pdf.itertuples(index=False):
        section, name, value = str(r.section), str(r.name), _decode(r.value, r.text)
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
    return {"fit": fit, "validation": validation}
