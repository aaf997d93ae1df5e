"""The spend model of a run: the Gamma-Gamma independence check, the choice by ``clv.spend_model``
(see :mod:`segspark.clv.spend` for the models and the rule) and its record in the fit's dictionary.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark.clv import spend as SP
from segspark.clv import summary as S
from segspark.config import ClvConfig
from segspark.errors import SegsparkError

log = logging.getLogger(__name__)

# penalizers tried, in order, when no model is valid unpenalized (lifetimes' scale, see models)
PENALIZER_FALLBACK = (0.001, 0.01)
# the spend model whose independence check is recorded under ``fit["validity"]``
SPEND_MODEL = "gamma_gamma"


def spend_checks(spend: S.SpendSummary, cfg: ClvConfig, fit: dict[str, Any], warns: list[str]) -> bool:
    """Record the spend statistics' size and the independence check in ``fit`` (the check under
    ``fit["validity"]["gamma_gamma"]``); True when the check fails."""
    fit["spend_repeat_buyers"] = spend.n_repeat_buyers
    fit["spend_excluded_nonpositive"] = spend.n_excluded_nonpositive
    fit["spend_freq_corr"] = spend.freq_spend_corr
    fit["spend_compressed_rows"] = spend.n_rows
    # how the spend statistics were bounded for the driver (summary.MAX_FIT_ROWS)
    fit["spend_resolution_used"] = spend.resolution
    fit["spend_sample_fraction"] = spend.sample_fraction
    corr = spend.freq_spend_corr
    warn = math.isfinite(corr) and abs(corr) > cfg.spend_corr_warn
    fit["spend_independence_warning"] = warn
    if warn:
        corr_reason: str | None = (
            f"|corr(frequency, mean spend)| {abs(corr):.3f} > clv.spend_corr_warn {cfg.spend_corr_warn:g}: "
            "the Gamma-Gamma independence assumption looks violated"
        )
    elif not math.isfinite(corr):
        corr_reason = (
            "corr(frequency, mean spend) undefined: fewer than two repeat buyers with positive spend, "
            "or frequency or mean spend the same for all of them"
        )
    else:
        corr_reason = None
    fit.setdefault("validity", {})[SPEND_MODEL] = {
        "spend_corr": corr,
        "spend_corr_ok": not warn,
        "spend_corr_reason": corr_reason,
    }
    if spend.n_excluded_nonpositive:
        log.info(
            "clv: %d repeat buyers with zero or negative mean spend excluded from the spend fit",
            spend.n_excluded_nonpositive,
        )
    return warn


def _choose_spend(
    spend: S.SpendSummary, summary: DataFrame, cfg: ClvConfig, corr_failed: bool, penalizer: float
) -> tuple[SP.SpendModel, str, list[str]]:
    """(the spend model, why it was chosen, the degradations to warn about): see
    :mod:`segspark.clv.spend` for the rule."""
    penalizers = [penalizer, *(p for p in PENALIZER_FALLBACK if p > penalizer)]
    notes: list[str] = []
    usable = spend.stats is not None and spend.stats.n_customers >= cfg.min_repeat_buyers
    if not usable:
        mean_value = _mean_value(summary)
        why = (
            f"only {spend.n_repeat_buyers - spend.n_excluded_nonpositive} repeat buyers with positive spend "
            f"(clv.min_repeat_buyers={cfg.min_repeat_buyers}): no Gamma-Gamma fit"
        )
        notes.append(f"clv: {why}; every purchase valued at the mean repeat purchase value {mean_value:.2f}")
        return SP.SpendModel(SP.MEAN_VALUE, (), mean_value), why, notes
    assert spend.stats is not None
    want: str = cfg.spend_model
    if want == "auto":
        want = SP.BY_FREQUENCY if corr_failed else SP.GAMMA_GAMMA
        why = (
            "the independence check failed (validity of gamma_gamma): spend conditioned on frequency"
            if corr_failed
            else "the independence check passed"
        )
        why = f"clv.spend_model=auto; {why}"
    else:
        why = f"configured (clv.spend_model={want})"
    if want == SP.BY_FREQUENCY:
        try:
            model = SP.fit_by_frequency(spend.stats, penalizers, cfg.spend_min_stratum_buyers)
            return model, f"{why}; strata of repeat purchases {model.strata_text()}", notes
        except SegsparkError as exc:
            why = f"{why}, but the stratified fit is not possible ({exc}): one Gamma-Gamma instead"
            notes.append(f"clv: spend model: {why}")
    try:
        gg, errors = SP.fit_with_penalizers(spend.stats, penalizers)
    except SegsparkError as exc:
        mean_value = _mean_value(summary)
        why = f"the Gamma-Gamma fit failed ({exc})"
        notes.append(f"clv: {why}; every purchase valued at the mean repeat purchase value {mean_value:.2f}")
        return SP.SpendModel(SP.MEAN_VALUE, (), mean_value), why, notes
    if errors:
        notes.append(f"clv: Gamma-Gamma fitted with penalizer {gg.penalizer:g} ({errors[0]})")
        why = f"{why}; {'; '.join(errors)}; used penalizer {gg.penalizer:g}"
    return SP.SpendModel(SP.GAMMA_GAMMA, (SP.Stratum(1, None, gg),)), why, notes


def _mean_value(summary: DataFrame) -> float:
    """The mean repeat purchase value of the customers with one (one aggregate)."""
    row = summary.agg(F.avg(F.col(S.MONETARY_VALUE)).alias("m")).first()
    return float(row["m"]) if row is not None and row["m"] is not None else 0.0


def _record_spend(model: SP.SpendModel, why: str, fit: dict[str, Any]) -> None:
    """The chosen spend model's name, reason, parameters and fit diagnostics in ``fit``."""
    fits = [(s.key, s.fit) for s in model.strata]
    if model.name == SP.GAMMA_GAMMA:
        fits = [("", model.strata[0].fit)]
    fit.update(
        spend_model=model.name,
        spend_reason=why,
        spend_params={f"{k}.{n}" if k else n: v for k, f in fits for n, v in f.params.items()},
        spend_se={f"{k}.{n}" if k else n: v for k, f in fits for n, v in f.se.items()},
    )
    if model.name == SP.MEAN_VALUE:
        fit["spend_mean_value"] = model.mean_value
        return
    if model.name == SP.BY_FREQUENCY:
        fit["spend_strata"] = model.strata_text()
        fit["spend_zero_repeat_value"] = model.strata[0].population_mean
    fit.update(
        spend_log_likelihood=sum(f.log_likelihood for _, f in fits),
        spend_converged=all(f.converged for _, f in fits),
        spend_iterations=sum(f.iterations for _, f in fits),
        spend_grad_norm=max(f.grad_norm for _, f in fits),
        spend_fit_seconds=sum(f.fit_seconds for _, f in fits),
        spend_penalizer=max(f.penalizer for _, f in fits),
    )


def spend_model_for(
    summary: DataFrame, cfg: ClvConfig, penalizer: float, fit: dict[str, Any], warns: list[str]
) -> SP.SpendModel:
    """The spend model of ``summary``'s repeat buyers, chosen by ``clv.spend_model`` and recorded in
    ``fit`` (with the independence check); degradations appended to ``warns``."""
    spend = S.compressed_spend(summary, cfg.spend_grid_resolution)
    corr_failed = spend_checks(spend, cfg, fit, warns)
    model, why, notes = _choose_spend(spend, summary, cfg, corr_failed, penalizer)
    if corr_failed and model.name != SP.BY_FREQUENCY:
        reason = fit["validity"][SPEND_MODEL]["spend_corr_reason"]
        warns.append(f"clv: {reason}; treat expected spend with care")
    warns.extend(notes)
    _record_spend(model, why, fit)
    used = max((s.fit.penalizer for s in model.strata), default=penalizer)
    if used > penalizer:  # a spend fit needed a fallback penalizer: said as for the transaction models
        fit["spend_penalizer_fallback"] = f"{why}; used penalizer {used:g}"
    log.info("clv: spend model %s chosen: %s", model.name, why)
    return model
