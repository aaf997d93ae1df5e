"""Customer lifetime value: BG/NBD, Pareto/NBD, MBG/NBD or MBG/CNBD-k with Gamma-Gamma spend, fitted on
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

Only a *valid* fit is used (:func:`segspark.clv.validity.assess`): converged, no parameter at a
boundary, finite standard errors with se/|value| <= ``clv.max_relative_se``, and a holdout total
error within ``clv.max_holdout_error``. ``clv.model: auto`` (the default) fits every transaction
model (BG/NBD, Pareto/NBD, MBG/NBD, MBG/CNBD-k) and keeps the valid one with the lowest holdout error
(predicted vs actual holdout purchases on every repeat-purchase band and every RFM segment at the
calibration end, :func:`segspark.clv.validation.holdout_metrics_many`; the lowest BIC when there is
no holdout); a named model that is not valid gives way to the next valid one in the order bgnbd,
pareto_nbd, mbgnbd, mbgcnbd (with a warning). When no model is valid unpenalized (and
``clv.penalizer`` is 0) the round is repeated with the penalizers of ``PENALIZER_FALLBACK``; when
none is valid then either, CLV is the historical spend rate
(:func:`segspark.clv.predict.historical_rate_predictions`) and the reason for every rejection is
recorded (``clv_fit``, MLflow, the run's warnings).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from segspark.clv import bands as B
from segspark.clv import models as M
from segspark.clv import predict as P
from segspark.clv import summary as S
from segspark.clv import validation as V
from segspark.clv.spend_choice import PENALIZER_FALLBACK, SPEND_MODEL, spend_checks, spend_model_for
from segspark.config import ClvConfig
from segspark.errors import ConfigError, SegsparkError
from segspark.schema import CLV_VIEW_HOLDOUT_VALUE_BY_BAND, CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT

log = logging.getLogger(__name__)


# the stated estimate used when no transaction model is valid
HISTORICAL_RATE = "historical_rate"

SEGMENT = "segment"
# customer_id, segment as of the given date (one row per customer)
SegmentsAt = Callable[[dt.date], DataFrame]

# the holdout metrics the choice of ``auto`` reads (segspark.clv.validation): the error over the
# repeat-purchase bands and the segments together, reported with the bands' and segments' own
BAND_ERROR = "holdout_band_error"
SEGMENT_ERROR = "holdout_segment_error"
HOLDOUT_ERROR = "holdout_error"
_NESTED_PREFIX = {"params": "", "se": "se_", "spend_params": "spend_", "spend_se": "spend_se_"}
_VALIDITY_METRICS = ("valid", "holdout_total_error", "max_relative_se", "spend_corr", "spend_corr_ok")


@dataclass
class ClvResult:
    """What the CLV stage hands to the pipeline (nothing written).

    ``fit["validity"]`` holds, per candidate model (and ``gamma_gamma`` for the spend check), the
    verdict of the validity rule; ``warnings`` the degradations the run survived (a named model
    replaced, a penalizer or the historical-rate fallback used), for the run's record.
    """

    customers: DataFrame  # customer_id, p_alive, expected_purchases, expected_avg_value, clv, value_tier
    fit: dict[str, Any]
    validation: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # the persisted predictions ``customers`` is read from (the tier's quantile computed them while
    # the summaries were cached): ``release`` once ``customers`` is written
    held: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        for df in self.held:
            df.unpersist()

    @property
    def fallback(self) -> bool:
        """True when CLV is the historical spend rate (no transaction model was valid)."""
        return self.fit.get("model") == HISTORICAL_RATE

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
        for model, checks in (self.fit.get("validity") or {}).items():
            for key in _VALIDITY_METRICS:
                v = checks.get(key)
                if isinstance(v, bool) or (isinstance(v, int | float) and math.isfinite(float(v))):
                    out[f"clv_validity_{model}_{key}"] = float(v)
        out["clv_fallback_historical_rate"] = float(self.fallback)
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


# ------------------------------------------------------------------------------------------------
# Candidates and the validity rule
# ------------------------------------------------------------------------------------------------
@dataclass
class _Candidate:
    """One model fitted at one penalizer, with its holdout metrics and its verdict."""

    model: str
    penalizer: float
    fit: M.FitResult | None
    error: str | None = None
    holdout: dict[str, float] = field(default_factory=dict)
    validity: M.Validity | None = None

    @property
    def valid(self) -> bool:
        return self.validity is not None and self.validity.valid

    @property
    def reason(self) -> str | None:
        return self.error if self.validity is None else self.validity.reason

    def summary(self) -> dict[str, Any]:
        if self.fit is None:
            return {"error": self.error, "penalizer": self.penalizer}
        return {
            "params": self.fit.params,
            "log_likelihood": self.fit.log_likelihood,
            "bic": self.fit.bic,
            "converged": self.fit.converged,
            "penalizer": self.penalizer,
            **self.holdout,
        }


def _model_order(cfg: ClvConfig) -> list[str]:
    """Candidates in the order they are tried: the named model first, then the others."""
    if cfg.model == "auto":
        return list(M.TRANSACTION_MODELS)
    return [cfg.model, *(m for m in M.TRANSACTION_MODELS if m != cfg.model)]


def _fit(name: str, stats: M.RfmStats, penalizer: float, initial: Any | None = None) -> M.FitResult | str:
    try:
        return M.fit_transactions(name, stats, penalizer, initial=initial, strict=False)
    except SegsparkError as exc:  # no finite likelihood: not a candidate
        return str(exc)


def _judge(
    name: str, res: M.FitResult | str, penalizer: float, holdout: dict[str, float], cfg: ClvConfig
) -> _Candidate:
    if isinstance(res, str):
        return _Candidate(name, penalizer, None, error=res)
    validity = M.assess(
        res, cfg.max_relative_se, cfg.max_holdout_error, holdout.get("holdout_total_error", math.nan)
    )
    return _Candidate(name, penalizer, res, holdout=holdout, validity=validity)


def _fit_round(
    stats: M.RfmStats,
    cal_summary: DataFrame,
    has_holdout: bool,
    penalizer: float,
    cfg: ClvConfig,
    segments: DataFrame | None = None,
) -> tuple[dict[str, _Candidate], str | None, B.BandChoice | None]:
    """Fit the candidates at one penalizer; (candidates tried, the chosen valid one or None, the
    per-band choice when ``auto`` finds one better than the chosen model for everyone).

    ``auto`` fits every model (holdout metrics in one pass), keeps the best valid one and tries the
    valid models per repeat band (:mod:`segspark.clv.bands`); a named model is tried first and the
    others in order only while none is valid.
    """
    order = _model_order(cfg)
    out: dict[str, _Candidate] = {}
    if cfg.model != "auto":
        for name in order:
            res = _fit(name, stats, penalizer)
            holdout = (
                V.holdout_metrics(cal_summary, res, segments)
                if has_holdout and isinstance(res, M.FitResult)
                else {}
            )
            out[name] = _judge(name, res, penalizer, holdout, cfg)
            if out[name].valid:
                return out, name, None
        return out, None, None
    # the holdout check's UDFs run next: their Python workers start while the driver fits
    with P.python_workers_started(cal_summary.sparkSession) if has_holdout else contextlib.nullcontext():
        fits = {name: _fit(name, stats, penalizer) for name in order}
    fitted = {k: v for k, v in fits.items() if isinstance(v, M.FitResult)}
    cells = V.holdout_cells(cal_summary, fitted, segments, SEGMENT) if has_holdout and fitted else None
    metrics = (
        {name: V.cell_metrics(cells, str(i), segments is not None) for i, name in enumerate(fitted)}
        if cells is not None
        else {}
    )
    out = {name: _judge(name, res, penalizer, metrics.get(name, {}), cfg) for name, res in fits.items()}
    valid = [k for k, c in out.items() if c.valid]
    if not valid:
        return out, None, None

    def rank(k: str) -> tuple[float, float, float, str]:
        c = out[k]
        assert c.fit is not None
        if not has_holdout:
            return (_finite(c.fit.bic), 0.0, 0.0, k)
        # equal holdout errors (MBG/CNBD-k at k = 1 is MBG/NBD): the fewer parameters (BIC) win
        return (
            _finite(c.holdout.get(HOLDOUT_ERROR, math.nan)),
            _finite(c.holdout.get("holdout_mae", math.nan)),
            _finite(c.fit.bic),
            k,
        )

    chosen = min(valid, key=rank)
    per_band = (
        B.choose(cells, list(fitted), valid, chosen, segments is not None, HOLDOUT_ERROR)
        if cells is not None and cfg.per_band
        else None
    )
    total = per_band.holdout.get("holdout_total_error", math.nan) if per_band is not None else 0.0
    if per_band is not None and not abs(total) <= cfg.max_holdout_error:  # the validity rule's bound
        log.info("clv: per-band choice %s not used: holdout total error %.3f", per_band.text(), total)
        per_band = None
    return out, chosen, per_band


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.inf


_SEGMENT_RATIO = "holdout_segment_ratio_"


def _band_ratios(holdout: dict[str, Any]) -> dict[str, float]:
    """Predicted / actual holdout purchases per repeat band present in ``holdout``, by band label."""
    keys = {V.band_key(b): b for b, _, _ in V.REPEAT_BANDS}
    return {keys[k]: v for k, v in holdout.items() if k in keys}


def _band_listing(holdout: dict[str, Any]) -> str:
    """``0 13.76x, 1 1.48x, ...``: predicted / actual holdout purchases per repeat band; the worst
    segment's ratio when segments were checked."""
    ratios = _band_ratios(holdout).items()
    out = ", ".join(f"{band} {v:.2f}x" if math.isfinite(v) else f"{band} n/a" for band, v in ratios)
    seg = {
        k.removeprefix(_SEGMENT_RATIO): v
        for k, v in holdout.items()
        if k.startswith(_SEGMENT_RATIO) and isinstance(v, float) and math.isfinite(v) and v > 0
    }
    if seg:
        worst = max(seg, key=lambda k: (abs(math.log(seg[k])), k))
        out += f"; worst segment {worst} {seg[worst]:.2f}x"
    return out


def _choice_reason(
    cands: dict[str, _Candidate], chosen: str, has_holdout: bool, cfg: ClvConfig
) -> tuple[str, str | None]:
    """(why ``chosen`` was chosen, a warning when a named model was replaced)."""
    invalid = [k for k, c in cands.items() if not c.valid]
    rejected = f"; not valid: {', '.join(invalid)} (see validity)" if invalid else ""
    if cfg.model != "auto":
        if chosen == cfg.model:
            return f"configured (clv.model={cfg.model})", None
        why = cands[cfg.model].reason
        reason = (
            f"configured clv.model={cfg.model} is not valid ({why}); {chosen} is the next valid model "
            f"in the order {', '.join(_model_order(cfg))}"
        )
        return reason, f"clv: {reason}"
    valid = {k: c for k, c in cands.items() if c.valid and c.fit is not None}
    if has_holdout:
        listing = "; ".join(
            f"{k} {valid[k].holdout.get(HOLDOUT_ERROR, math.nan):.3f} (predicted/actual by band "
            f"{_band_listing(valid[k].holdout)}; MAE {valid[k].holdout.get('holdout_mae', math.nan):.4f})"
            for k in sorted(valid)
        )
        groups = f"the repeat-purchase bands {', '.join(b for b, _, _ in V.REPEAT_BANDS)}"
        if any(SEGMENT_ERROR in c.holdout for c in valid.values()):
            groups += " and the RFM segments at the calibration end"
        return (
            f"lowest holdout error among valid models: mean over {groups} of "
            f"|ln(predicted/actual holdout purchases)|, ties by MAE per customer ({listing}){rejected}",
            None,
        )
    listing = ", ".join(f"{k} {valid[k].fit.bic:.1f}" for k in sorted(valid))  # type: ignore[union-attr]
    return f"lowest BIC among valid models, no holdout period ({listing}){rejected}", None


def _validity_entry(c: _Candidate) -> dict[str, Any]:
    v = c.validity
    return {
        "valid": c.valid,
        "reason": c.reason,
        "holdout_total_error": v.holdout_total_error if v is not None else math.nan,
        "max_relative_se": v.max_relative_se if v is not None else math.nan,
        "max_relative_se_param": v.max_relative_se_param if v is not None else None,
    }


def run_clv(
    customer_days: DataFrame,
    as_of_date: dt.date,
    cfg: ClvConfig,
    segments_at: SegmentsAt | None = None,
) -> ClvResult:
    """The CLV stage: summary -> compressed fits (+ validity, model choice) -> validation -> scores.

    ``customer_days``: the silver table (customer_id, order_date, purchases, purchase_value); its
    rows with ``purchases > 0`` are the purchase occasions. Returns customers [customer_id, p_alive,
    expected_purchases, expected_avg_value, clv, value_tier] for every customer with a purchase on
    or before ``as_of_date``. ``segments_at(date)``, when given, says each customer's segment as of
    a date (customer_id, :data:`SEGMENT`): the holdout value is also checked by the segment customers
    had at the calibration end, persisted (run_clv releases it).
    """
    cal_end, hold_end = resolve_windows(as_of_date, cfg)
    units_per_month = cfg.days_per_month / S.unit_days(cfg.time_unit)
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
        full: DataFrame | None = None
        if cal_end < as_of_date:  # a holdout: the summaries of both fits from one pass over the days
            persisted, cal_summary, full = S.two_summaries_from_purchase_days(
                days, cal_end, hold_end, as_of_date, cfg.time_unit
            )
        else:
            persisted = cal_summary = S.summary_from_purchase_days(
                days, cal_end, cfg.time_unit, hold_end if has_holdout else None
            )
        persisted.persist()
        segments: DataFrame | None = None
        try:
            # persisted by ``segments_at`` (read by every candidate round and the holdout value
            # check), released here
            segments = segments_at(cal_end) if segments_at is not None and has_holdout else None
            return _run(
                days,
                (cal_summary, full),
                as_of_date,
                cal_end,
                hold_end if has_holdout else None,
                cfg,
                units_per_month,
                segments,
            )
        finally:
            persisted.unpersist()
            if segments is not None:
                segments.unpersist()


def _run(
    days: DataFrame,
    summaries: tuple[DataFrame, DataFrame | None],
    as_of_date: dt.date,
    cal_end: dt.date,
    hold_end: dt.date | None,
    cfg: ClvConfig,
    units_per_month: float,
    segments: DataFrame | None = None,
) -> ClvResult:
    """Choose a valid model on the calibration summary, validate it, and score as of ``as_of_date``
    (or fall back to the historical spend rate when no model is valid). ``summaries``: the
    calibration summary and, when the calibration ends before ``as_of_date``, the one as of it."""
    cal_summary, full = summaries
    unit = cfg.time_unit
    has_holdout = hold_end is not None
    # with the log gaps between purchase days (MBG/CNBD-k's choice of k), from the summary's own pass
    stats = S.compressed_rfm(cal_summary, unit, S.SEARCH_ROWS)  # the scoring fit: _final_fits
    warns: list[str] = []
    tried, chosen, per_band = _search(stats, cal_summary, has_holdout, cfg, segments)
    cands = {name: attempts[-1] for name, attempts in tried.items()}
    per_model = {name: c.summary() for name, c in cands.items()}
    validity = _validity_entries(tried)
    common = _window_entries(unit, as_of_date, cal_end, hold_end)
    if chosen is None:
        return _fallback(
            days, full if full is not None else cal_summary, as_of_date, has_holdout, cfg, common, per_model,
            validity, warns,
        )  # fmt: skip

    cal_fit = cands[chosen].fit
    assert cal_fit is not None
    penalizer = cands[chosen].penalizer
    reason, penalizer_note = _choice(cands, tried, chosen, has_holdout, cfg, warns)
    # the per-band choice: each band's model (every one fitted on everyone), else the chosen for all
    used = per_band.distinct if per_band is not None else [chosen]
    cal_fits = {m: cands[m].fit for m in used}
    cal_scoring: V.Fits = per_band.fits(cal_fits) if per_band is not None else cal_fit  # type: ignore[arg-type]
    if per_band is not None:
        reason = B.reason(per_band, chosen, cands[chosen].holdout, reason)
        log.info("clv: per repeat band: %s", per_band.text())
    validation, figures = _validation(
        days, cal_summary, stats, cands[chosen], chosen, cal_end, hold_end, unit, per_band, cal_scoring
    )
    if has_holdout:
        validation.update(_holdout_value(cal_summary, cal_scoring, penalizer, cfg, segments))
    final_summary, final_stats, final_fits, refit_reason = _final_fits(
        (cal_summary, full), stats, cal_fits, cal_end < as_of_date, penalizer, cfg, warns
    )
    final_fit = final_fits[chosen] if chosen in final_fits else final_fits[used[0]]

    fit: dict[str, Any] = {
        "model": chosen if per_band is None else B.PER_BAND,
        "reason": reason,
        **common,
        "refit_on_full_history": cal_end < as_of_date,
        "refit_valid": refit_reason is None,
        "refit_reason": refit_reason,
        **_fit_entries(final_fit, final_stats),
        "calibration_fit": cal_fit.as_dict(),
        "candidates": per_model,
        "validity": validity,
    }
    if per_band is not None:
        B.record(fit, per_band, chosen, final_fits)
    if penalizer_note is not None:
        fit["penalizer_fallback"] = penalizer_note
    spend_model = spend_model_for(final_summary, cfg, penalizer, fit, warns)
    avg_value = spend_model.column(F.col(S.FREQUENCY), F.col(S.MONETARY_VALUE), F.col(S.FIRST_VALUE))
    horizon = (cfg.horizon_months, cfg.monthly_discount_rate, units_per_month)
    if per_band is None:
        predictions = P.with_predictions(final_summary, final_fit, None, *horizon, avg_value=avg_value)
    else:
        predictions = P.with_band_predictions(
            final_summary, per_band.fits(final_fits), V.by_band, *horizon, avg_value
        )
    held: list[DataFrame] = []
    customers = _with_value_tier(predictions, cfg, fit, held)
    return ClvResult(customers, fit, validation, figures, warns, held)


def _final_fits(
    summaries: tuple[DataFrame, DataFrame | None],
    cal_stats: M.RfmStats,
    cal_fits: dict[str, M.FitResult | None],
    refit: bool,
    penalizer: float,
    cfg: ClvConfig,
    warns: list[str],
) -> tuple[DataFrame, M.RfmStats, dict[str, M.FitResult], str | None]:
    """The summary, statistics and fit(s) that score as of as_of_date: the calibration ones, or, when the
    calibration period ended earlier (``refit``), the chosen model(s) refitted on the full history (the
    holdout is then part of the data: no holdout check); without a holdout, refitted on up to
    ``MAX_FIT_ROWS`` rows when the candidates' fits read a coarser grid. Also the refit's reason(s)
    to distrust it."""
    cal_summary, full = summaries
    if not refit:
        if cal_stats.grid_days == 1 and cal_stats.sample_fraction == 1.0:  # exact: nothing finer
            return cal_summary, cal_stats, {m: f for m, f in cal_fits.items() if f is not None}, None
        # the candidates ran on a coarser grid (SEARCH_ROWS): the scoring fit on the finer one
        full = cal_summary
    assert full is not None  # run_clv builds it whenever the calibration ends earlier
    final_stats = S.compressed_rfm(full, cfg.time_unit)
    final_fits: dict[str, M.FitResult] = {}
    reasons: dict[str, str | None] = {}
    for m, fit_m in cal_fits.items():
        assert fit_m is not None
        final_fits[m], reasons[m] = _refit_on_full_history(final_stats, m, fit_m, penalizer, cfg, warns)
    return full, final_stats, final_fits, "; ".join(f"{m}: {r}" for m, r in reasons.items() if r) or None


def _search(
    stats: M.RfmStats,
    cal_summary: DataFrame,
    has_holdout: bool,
    cfg: ClvConfig,
    segments: DataFrame | None = None,
) -> tuple[dict[str, list[_Candidate]], str | None, B.BandChoice | None]:
    """Fit rounds at ``clv.penalizer``, then (when it is 0) at each of ``PENALIZER_FALLBACK``, until
    one gives a valid model: (every attempt per model, in order; the chosen model or None; the
    per-band choice of that round or None)."""
    penalizers = [cfg.penalizer, *(PENALIZER_FALLBACK if cfg.penalizer == 0 else ())]
    tried: dict[str, list[_Candidate]] = {}
    chosen: str | None = None
    per_band: B.BandChoice | None = None
    for penalizer in penalizers:
        round_cands, chosen, per_band = _fit_round(stats, cal_summary, has_holdout, penalizer, cfg, segments)
        for name, c in round_cands.items():
            tried.setdefault(name, []).append(c)
            if not c.valid:
                log.info("clv: %s at penalizer %g not valid: %s", name, penalizer, c.reason)
        if chosen is not None:
            break
    return tried, chosen, per_band


def _validity_entries(tried: dict[str, list[_Candidate]]) -> dict[str, dict[str, Any]]:
    """Each model's verdict at its last attempt; an invalid model tried at several penalizers gets
    the reason of every attempt."""
    validity: dict[str, dict[str, Any]] = {}
    for name, attempts in tried.items():
        entry = _validity_entry(attempts[-1])
        if not attempts[-1].valid and len(attempts) > 1:
            entry["reason"] = ". ".join(f"penalizer {c.penalizer:g}: {c.reason}" for c in attempts)
        validity[name] = entry
    return validity


def _window_entries(
    unit: str, as_of_date: dt.date, cal_end: dt.date, hold_end: dt.date | None
) -> dict[str, Any]:
    """The time unit and windows, recorded alike by a model fit and the fallback."""
    return {
        "time_unit": unit,
        "as_of_date": as_of_date.isoformat(),
        "calibration_end": cal_end.isoformat(),
        "holdout_end": hold_end.isoformat() if hold_end else None,
    }


def _choice(
    cands: dict[str, _Candidate],
    tried: dict[str, list[_Candidate]],
    chosen: str,
    has_holdout: bool,
    cfg: ClvConfig,
    warns: list[str],
) -> tuple[str, str | None]:
    """(why ``chosen`` was chosen, the note when it needed a fallback penalizer); logs the choice and
    adds the degradations (a named model replaced, a fallback penalizer) to ``warns``."""
    reason, replaced = _choice_reason(cands, chosen, has_holdout, cfg)
    if replaced:
        warns.append(replaced)
    off = {k: v for k, v in _band_ratios(cands[chosen].holdout).items() if not 0.5 <= v <= 2}
    if off and cfg.model != "auto":  # auto already chose by these errors
        listing = ", ".join(f"band {k} {v:.2f}x" for k, v in off.items())
        warns.append(
            f"clv: {chosen} predicts far from the holdout purchases of some repeat-purchase bands "
            f"(predicted/actual: {listing}); clv.model=auto chooses by the error on every band"
        )
    penalizer = cands[chosen].penalizer
    penalizer_note: str | None = None
    if penalizer != cfg.penalizer:
        first = "; ".join(f"{k} ({c[0].reason})" for k, c in tried.items())
        penalizer_note = (
            f"no model valid at penalizer {cfg.penalizer:g} ({first}); used penalizer {penalizer:g}"
        )
        reason = f"{reason}; fitted with penalizer {penalizer:g}"
        warns.append(f"clv: {penalizer_note}")
    log.info("clv: model %s chosen: %s", chosen, reason)
    return reason, penalizer_note


def _fit_entries(final_fit: M.FitResult, final_stats: M.RfmStats) -> dict[str, Any]:
    """The scoring fit's parameters, diagnostics and statistics' size, for ``ClvResult.fit``."""
    return {
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
        # how the fit's statistics were bounded for the driver (summary.MAX_FIT_ROWS): 1 and 1.0 = exact
        "compressed_grid_days": final_stats.grid_days,
        "compressed_sample_fraction": final_stats.sample_fraction,
        "fit_seconds": final_fit.fit_seconds,
    }


def _with_value_tier(
    predictions: DataFrame, cfg: ClvConfig, fit: dict[str, Any], held: list[DataFrame]
) -> DataFrame:
    """The customers with their value tier; the tier's threshold recorded in ``fit``. The
    predictions are persisted (into ``held``) by the quantile's pass, which runs while the summary
    they come from is still cached: writing ``customer_scores`` then reads them, not the days again."""
    predictions = predictions.persist()
    held.append(predictions)
    threshold = P.value_tier_threshold(predictions, cfg.value_tier_top_share)
    fit["value_tier_threshold"] = threshold if threshold is not None else math.nan
    return P.with_value_tier(predictions, threshold)


def _validation(
    days: DataFrame,
    cal_summary: DataFrame,
    stats: M.RfmStats,
    cand: _Candidate,
    chosen: str,
    cal_end: dt.date,
    hold_end: dt.date | None,
    unit: str,
    per_band: B.BandChoice | None = None,
    scoring: V.Fits | None = None,
) -> tuple[dict[str, Any], dict[str, Figure]]:
    """The chosen calibration fit's checks: holdout by frequency, tracking curve, frequency histogram.

    With a per-band choice the holdout checks are those of the band models (``scoring``); the
    tracking curve and the histogram, which follow a cohort across the bands, stay the best single
    model's (``chosen``)."""
    cal_fit = cand.fit
    assert cal_fit is not None
    validation: dict[str, Any] = {"has_holdout": hold_end is not None}
    figures: dict[str, Figure] = {}
    if hold_end is not None:
        holdout = per_band.holdout if per_band is not None else cand.holdout
        validation.update({k: v for k, v in holdout.items() if k.startswith("holdout_")})
        by_freq = V.holdout_by_frequency(cal_summary, scoring if scoring is not None else cal_fit)
        validation["holdout_by_frequency"] = by_freq
        label = f"per band ({per_band.text()})" if per_band is not None else chosen
        figures["clv_conditional_expectation"] = V.conditional_figure(by_freq, label)
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
    return validation, figures


def _holdout_value(
    cal_summary: DataFrame, fits: V.Fits, penalizer: float, cfg: ClvConfig, segments: DataFrame | None
) -> dict[str, Any]:
    """Predicted (calibration fit(s) and spend model) vs actual holdout value, by repeat-purchase band
    and by segment at the calibration end; the calibration spend model's name."""
    record: dict[str, Any] = {}
    spend = spend_model_for(cal_summary, cfg, penalizer, record, [])  # its warnings repeat the final fit's
    by_band, by_segment = V.holdout_value(
        cal_summary,
        fits,
        spend.column(F.col(S.FREQUENCY), F.col(S.MONETARY_VALUE), F.col(S.FIRST_VALUE)),
        segments,
        SEGMENT,
    )
    out: dict[str, Any] = {"holdout_value_spend_model": spend.name, CLV_VIEW_HOLDOUT_VALUE_BY_BAND: by_band}
    if segments is not None:
        out[CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT] = by_segment
    return out


def _refit_on_full_history(
    final_stats: M.RfmStats,
    chosen: str,
    cal_fit: M.FitResult,
    penalizer: float,
    cfg: ClvConfig,
    warns: list[str],
) -> tuple[M.FitResult, str | None]:
    """The chosen model refitted on ``final_stats``, the history up to ``as_of_date`` (from the
    calibration fit's parameters); the calibration fit when the refit is not valid (said in ``warns``)."""
    refit = _fit(chosen, final_stats, penalizer, initial=cal_fit.values)
    if isinstance(refit, M.FitResult):
        refit_reason = M.assess(refit, cfg.max_relative_se, cfg.max_holdout_error).reason
    else:
        refit_reason = refit
    if isinstance(refit, M.FitResult) and refit_reason is None:
        return refit, None
    warns.append(
        f"clv: the {chosen} refit on the full history is not valid ({refit_reason}); "
        "customers are scored with the validated calibration fit's parameters"
    )
    return cal_fit, refit_reason


def _fallback(
    days: DataFrame,
    final_summary: DataFrame,
    as_of_date: dt.date,
    has_holdout: bool,
    cfg: ClvConfig,
    common: dict[str, Any],
    per_model: dict[str, Any],
    validity: dict[str, dict[str, Any]],
    warns: list[str],
) -> ClvResult:
    """No valid transaction model: CLV from each customer's historical spend rate, with the reasons
    (``final_summary``: the summary as of ``as_of_date``, for the spend check)."""
    tried = (
        "" if cfg.penalizer else f" (also with penalizers {', '.join(f'{p:g}' for p in PENALIZER_FALLBACK)})"
    )
    why = f"no transaction model is valid{tried}: " + "; ".join(
        f"{name} ({entry['reason']})" for name, entry in validity.items() if name != SPEND_MODEL
    )
    warns.append(f"clv: CLV is the historical spend rate, {why}")
    fit: dict[str, Any] = {
        "model": HISTORICAL_RATE,
        "reason": "fallback: historical spend rate (net purchase value per day of tenure, over the horizon, "
        "discounted)",
        "fallback_reason": why,
        **common,
        "horizon_months": cfg.horizon_months,
        "monthly_discount_rate": cfg.monthly_discount_rate,
        "candidates": per_model,
        "validity": {**validity, HISTORICAL_RATE: {"valid": True, "reason": None}},
    }
    # the check is reported; the fallback does not use a spend model
    if spend_checks(S.compressed_spend(final_summary, cfg.spend_grid_resolution), cfg, fit, warns):
        reason = fit["validity"][SPEND_MODEL]["spend_corr_reason"]
        warns.append(f"clv: {reason}; treat expected spend with care")
    predictions = P.historical_rate_predictions(
        days, as_of_date, cfg.horizon_months, cfg.monthly_discount_rate, cfg.days_per_month
    )
    held: list[DataFrame] = []
    customers = _with_value_tier(predictions, cfg, fit, held)
    return ClvResult(customers, fit, {"has_holdout": has_holdout}, {}, warns, held)
