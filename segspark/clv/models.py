"""Buy-till-you-die transaction models and the Gamma-Gamma spend model, in numpy/scipy: the
maximum-likelihood fits, and the models' API in one namespace (``from segspark.clv import models as M``).

Everything works on arrays (driver side, or inside a vectorized ``pandas_udf``). The parts live in:

- :mod:`segspark.clv.stats`: model and parameter names, the compressed sufficient statistics
  (distinct ``(x, t_x, T)`` rows with a count each: a fit costs per distinct row, not per customer);
- :mod:`segspark.clv.cnbd`: MBG/CNBD-k (MBG/NBD with Erlang-k gaps between purchases);
- :mod:`segspark.clv.likelihood`: log-likelihoods of BG/NBD, MBG/NBD, Pareto/NBD and Gamma-Gamma,
  with analytic gradients where the algebra is short (BG/NBD, MBG/NBD, Gamma-Gamma);
- :mod:`segspark.clv.validity`: :class:`FitResult` and the validity rule (:func:`assess`): a fit is
  usable only when the optimizer converged, no parameter sits at a boundary, every standard error is
  finite and small relative to its estimate, and (given a holdout) the predicted holdout total is
  within a bound of the actual one;
- :mod:`segspark.clv.closed_form`: P(alive), expected purchases for new and existing customers,
  expected average spend, discounted CLV;
- :mod:`segspark.clv.simulation`: simulation from known parameters (for tests and benchmarks);
- here: maximum likelihood with ``scipy.optimize`` on log-parameters (positivity for free), standard
  errors from the Hessian, an optional L2 penalizer with the objective of the ``lifetimes`` package
  (see :func:`penalty_divisors`): the penalty is on time-free parameters, so a fit does not depend
  on ``clv.time_unit``.

Time is in whatever unit the statistics are in (``clv.time_unit``); ``alpha`` and ``beta`` carry
that unit.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

from segspark.clv import cnbd
from segspark.clv.closed_form import (
    alive_purchase_horizon,
    alive_purchases,
    discounted_clv,
    expected_avg_value,
    expected_purchases,
    expected_purchases_new,
    log_odds_dead,
    p_alive,
    pareto_alive_core,
    prob_n_purchases,
)
from segspark.clv.likelihood import (
    _bg_family_nll_grad,
    _bg_family_terms,
    _gamma_gamma_nll_grad,
    _pareto_terms,
    gamma_gamma_log_likelihood,
    gamma_gamma_log_likelihood_terms,
    log_likelihood,
    log_likelihood_terms,
)
from segspark.clv.likelihood import _log_mix as _log_mix  # re-exported for the gradient tests
from segspark.clv.simulation import simulate, simulate_spend
from segspark.clv.stats import (
    BGNBD,
    MBGCNBD,
    MBGNBD,
    PARAM_NAMES,
    PARETO_NBD,
    TRANSACTION_MODELS,
    FloatArray,
    RfmStats,
    SpendStats,
)
from segspark.clv.validity import (
    BOUNDARY_HIGH,
    BOUNDARY_LOW,
    FitResult,
    Validity,
    assess,
    boundary_rule,
    relative_se,
)
from segspark.errors import SegsparkError

__all__ = [
    "BGNBD",
    "BOUNDARY_HIGH",
    "BOUNDARY_LOW",
    "HESSIAN_RTOL",
    "MBGCNBD",
    "MBGNBD",
    "PARAM_NAMES",
    "PARETO_NBD",
    "TRANSACTION_MODELS",
    "FitResult",
    "FloatArray",
    "RfmStats",
    "SpendStats",
    "Validity",
    "alive_purchase_horizon",
    "alive_purchases",
    "assess",
    "boundary_rule",
    "discounted_clv",
    "expected_avg_value",
    "expected_purchases",
    "expected_purchases_new",
    "fit_gamma_gamma",
    "fit_transactions",
    "gamma_gamma_log_likelihood",
    "gamma_gamma_log_likelihood_terms",
    "log_likelihood",
    "log_likelihood_terms",
    "log_odds_dead",
    "p_alive",
    "pareto_alive_core",
    "penalty_divisors",
    "prob_n_purchases",
    "relative_se",
    "simulate",
    "simulate_spend",
]

# The fits look the likelihoods up in this module's namespace at call time, so patching
# ``M._bg_family_nll_grad`` reaches them (tests/test_clv_models.py checks the BLAS threads so): why
# the fits live here rather than in a module of their own.

_FAIL_HINT = (
    "try a small penalizer (e.g. --set clv.penalizer=0.001), another model (--set clv.model=...), "
    "a longer calibration period, or check the summary statistics for outliers"
)

# Relative tolerance below which a negative Hessian eigenvalue counts as zero (see ``_finish``): the
# central differences of the gradient are accurate to about 1e-6 of the largest curvature.
HESSIAN_RTOL = 1e-6


def penalty_divisors(model: str, max_age: float) -> FloatArray:
    """Divisors that put the parameters on ``lifetimes``' scale before the L2 penalty.

    ``lifetimes`` fits BG/NBD, MBG/NBD and Pareto/NBD on ages divided by the longest one
    (``utils._scale_time``: the maximum T is 1), so the penalty sees alpha/max(T) (and beta/max(T)),
    not alpha in days or weeks; Gamma-Gamma is penalized on its natural scale.
    """
    t = max(float(max_age), 1e-12)
    if model == MBGCNBD:  # k is not fitted: (r, alpha, a, b) as MBG/NBD
        return np.array([1.0, t, 1.0, 1.0])
    if model in (BGNBD, MBGNBD):
        return np.array([1.0, t, 1.0, 1.0])
    if model == PARETO_NBD:
        return np.array([1.0, t, 1.0, t])
    return np.ones(len(PARAM_NAMES[model]))


def _minimize(
    name: str,
    n: float,
    nll: Callable[[FloatArray], float],
    nll_grad: Callable[[FloatArray], tuple[float, FloatArray]] | None,
    theta0: FloatArray,
    penalizer: float,
    divisors: FloatArray,
) -> tuple[optimize.OptimizeResult, Callable[[FloatArray], float], Callable[[FloatArray], FloatArray]]:
    """Minimize mean negative log-likelihood + penalizer * sum((params / divisors)**2) over log-params.

    ``nll_grad`` (total negative log-likelihood and its gradient in the natural parameters, from
    one pass over the data) is used where given; otherwise central differences of ``nll``.
    """
    inv2 = 1.0 / divisors**2

    def objective(theta: FloatArray) -> float:
        p = np.exp(theta)
        try:
            with np.errstate(all="ignore"):
                val = nll(p) / n + penalizer * float(np.sum(p**2 * inv2))
        except (ValueError, OverflowError, ZeroDivisionError):  # a parameter under/overflowed
            return 1e300
        return val if np.isfinite(val) else 1e300

    def numeric_grad(theta: FloatArray) -> FloatArray:
        return central_differences(theta, objective)

    fun: Callable[[FloatArray], Any]
    jac_arg: Callable[[FloatArray], FloatArray] | bool
    if nll_grad is None:
        fun, jac, jac_arg = objective, numeric_grad, numeric_grad
    else:
        fg = nll_grad

        def objective_and_jac(theta: FloatArray) -> tuple[float, FloatArray]:
            p = np.exp(theta)
            try:
                with np.errstate(all="ignore"):
                    f, g = fg(p)
                    val = f / n + penalizer * float(np.sum(p**2 * inv2))
                    out = g * p / n + penalizer * 2.0 * p**2 * inv2
            except (ValueError, OverflowError, ZeroDivisionError):  # a parameter under/overflowed
                return 1e300, np.zeros_like(theta)
            return (val if np.isfinite(val) else 1e300), np.where(np.isfinite(out), out, 0.0)

        def jac(theta: FloatArray) -> FloatArray:
            return objective_and_jac(theta)[1]

        fun, jac_arg = objective_and_jac, True  # one pass gives both
    res = optimize.minimize(
        fun, theta0, jac=jac_arg, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-9, "ftol": 1e-14}
    )
    if not np.isfinite(res.fun) or res.fun >= 1e299:
        raise SegsparkError(f"clv: the {name} fit did not reach a finite likelihood; {_FAIL_HINT}")
    return res, objective, jac


def central_differences(theta: FloatArray, f: Callable[[FloatArray], Any]) -> FloatArray:
    """statsmodels' central-difference derivative of ``f`` at ``theta`` (a gradient, or a Jacobian).

    statsmodels is imported here, not with this module: the predictions' pandas_udfs import this
    module in every Python worker of a run, and only the fits on the driver differentiate."""
    from statsmodels.tools.numdiff import approx_fprime

    return np.asarray(approx_fprime(theta, f, centered=True), dtype=np.float64)


def _finish(
    model: str,
    res: optimize.OptimizeResult,
    jac: Callable[[FloatArray], FloatArray],
    ll: float,
    n: float,
    n_rows: int,
    penalizer: float,
    started: float,
    scale: dict[str, float],
) -> FitResult:
    names = PARAM_NAMES[model]
    theta = np.asarray(res.x)
    p = np.exp(theta)
    params = {kk: float(v) for kk, v in zip(names, p, strict=True)}
    at_boundary = boundary_rule(params, scale)
    grad = jac(theta)
    grad_norm = float(np.max(np.abs(grad))) * n  # of the total (not mean) negative log-likelihood
    # Hessian of the total negative log-likelihood in log-parameters, by central differences of the
    # gradient; covariance = inverse; delta method back to the natural scale: se(p) = p * se(log p).
    hess = central_differences(theta, jac) * n
    hess = 0.5 * (hess + hess.T)
    se: dict[str, float]
    try:
        cov = np.linalg.inv(hess)
        diag = np.diag(cov)
        se = {
            k: float(pk * math.sqrt(dk)) if dk > 0 else float("nan")
            for k, pk, dk in zip(names, p, diag, strict=True)
        }
    except np.linalg.LinAlgError:
        se = {k: float("nan") for k in names}
    # Positive definite over the interior parameters, up to the noise of the finite differences: along
    # a parameter at its boundary the curvature is rounding noise of either sign (see BOUNDARY_LOW), and
    # such a fit is rejected by ``assess`` on the value itself.
    free = np.array([k not in at_boundary for k in names])
    sub = hess[np.ix_(free, free)]
    if not free.any():
        hess_ok = True  # nothing interior to check; assess() rejects the boundaries
    elif np.all(np.isfinite(sub)):
        eig = np.linalg.eigvalsh(sub)
        hess_ok = bool(np.all(eig > -HESSIAN_RTOL * max(float(np.max(np.abs(eig))), 1.0)))
    else:
        hess_ok = False
    # L-BFGS-B reports "ABNORMAL" when the line search cannot improve at machine precision; at a
    # point with a tiny gradient that is a stationary point all the same.
    converged = (bool(res.success) or float(np.max(np.abs(grad))) < 1e-5) and hess_ok
    k = len(names)
    return FitResult(
        model=model,
        params=params,
        log_likelihood=ll,
        n_customers=round(n),
        n_rows=n_rows,
        converged=converged,
        iterations=int(res.nit),
        function_evals=int(res.nfev),
        grad_norm=grad_norm,
        message=str(res.message)
        + ("" if hess_ok else "; Hessian not positive definite")
        + "".join(f"; {why}" for why in at_boundary.values()),
        penalizer=penalizer,
        se=se,
        aic=2 * k - 2 * ll,
        bic=k * math.log(max(n, 1.0)) - 2 * ll,
        fit_seconds=time.perf_counter() - started,
        scale=scale,
        at_boundary=at_boundary,
    )


def fit_transactions(
    model: str,
    stats: RfmStats,
    penalizer: float = 0.0,
    initial: Any | None = None,
    strict: bool = True,
) -> FitResult:
    """Maximum-likelihood fit of a transaction model on (compressed) statistics.

    ``penalizer`` is ``lifetimes``' ``penalizer_coef``, with its objective: BG/NBD and MBG/NBD
    minimize the mean negative log-likelihood per customer + penalizer * sum(params**2) with time
    parameters on ages scaled to a maximum of 1; Pareto/NBD divides the total by the mean weight
    (1 per customer), so its penalty weighs ``n_customers`` times less. ``strict``: raise
    ``SegsparkError`` (with what to try) when the optimizer does not converge or a parameter runs to
    its boundary.
    """
    if model not in TRANSACTION_MODELS:
        raise SegsparkError(f"clv: unknown model {model!r}; allowed: {', '.join(TRANSACTION_MODELS)}")
    started = time.perf_counter()
    if model == MBGCNBD:
        out = _fit_cnbd(stats, penalizer, initial, started)
        if strict and (not out.converged or out.at_boundary):
            raise SegsparkError(f"clv: the {model} fit did not converge ({out.message}); " + _FAIL_HINT)
        return out
    n = stats.n_customers
    max_age = float(stats.T.max())
    divisors = penalty_divisors(model, max_age)
    scale = dict(zip(PARAM_NAMES[model], (float(d) for d in divisors), strict=True))
    # lifetimes' Pareto/NBD objective is the total, not the mean: the same argmin as the mean with
    # the penalizer divided by the number of customers
    pen = penalizer / n if model == PARETO_NBD else penalizer
    # Start at 1 for shape parameters and a tenth of the longest age for the time scales: the
    # likelihood is then evaluated on a well-scaled problem whatever the time unit.
    scale0 = max(max_age / 10.0, 1e-3)
    if initial is not None:
        theta0 = np.log(np.asarray(initial, dtype=np.float64))
    elif model == PARETO_NBD:
        theta0 = np.log(np.array([1.0, scale0, 1.0, scale0]))
    else:
        theta0 = np.log(np.array([1.0, scale0, 1.0, 1.0]))

    nll_grad: Callable[[FloatArray], tuple[float, FloatArray]] | None
    if model in (BGNBD, MBGNBD):
        modified = model == MBGNBD

        def nll(p: FloatArray) -> float:
            return -float(np.dot(stats.weight, _bg_family_terms(p, stats, modified)))

        def nll_grad_fn(p: FloatArray) -> tuple[float, FloatArray]:
            return _bg_family_nll_grad(p, stats, modified)

        nll_grad = nll_grad_fn
    else:

        def nll(p: FloatArray) -> float:
            return -float(np.dot(stats.weight, _pareto_terms(p, stats)))

        nll_grad = None  # central differences: the analytic hyp2f1 derivatives are not worth their bugs

    # one BLAS/OpenMP thread: the reductions over all rows are small, and on a loaded machine a
    # multi-threaded BLAS next to Spark's threads is many times slower than one thread
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", RuntimeWarning)
        res, _, jac = _minimize(model, n, nll, nll_grad, theta0, pen, divisors)
        ll = -nll(np.exp(res.x))
        out = _finish(model, res, jac, ll, n, stats.n_rows, penalizer, started, scale)
    if strict and (not out.converged or out.at_boundary):
        raise SegsparkError(
            f"clv: the {model} fit did not converge ({out.message}; gradient norm {out.grad_norm:.3g}); "
            + _FAIL_HINT
        )
    return out


def _fit_cnbd_k(k: int, stats: RfmStats, penalizer: float, theta0: FloatArray, started: float) -> FitResult:
    """MBG/CNBD-k at one k: (r, alpha, a, b) by maximum likelihood, k recorded with se 0 (chosen
    on a grid, not estimated); the log-likelihood includes the term in k alone, so that ks compare."""
    n = stats.n_customers
    divisors = penalty_divisors(MBGCNBD, float(stats.T.max()))
    scale = dict(zip(PARAM_NAMES[MBGNBD], (float(d) for d in divisors), strict=True))

    def nll(p: FloatArray) -> float:
        return -float(np.dot(stats.weight, cnbd.log_likelihood_terms(np.r_[float(k), p], stats)))

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", RuntimeWarning)
        res, _, jac = _minimize(f"{MBGCNBD} (k={k})", n, nll, None, theta0, penalizer, divisors)
        ll = -nll(np.exp(res.x)) + cnbd.regularity_term(k, stats.litt_sum, stats.n_gaps)
        out = _finish(MBGNBD, res, jac, ll, n, stats.n_rows, penalizer, started, scale)
    return replace(
        out,
        model=MBGCNBD,
        params={"k": float(k), **out.params},
        se={"k": 0.0, **out.se},
        scale={"k": 1.0, **out.scale},
        aic=out.aic + 2.0,
        bic=out.bic + math.log(max(n, 1.0)),
    )


def _fit_cnbd(stats: RfmStats, penalizer: float, initial: Any | None, started: float) -> FitResult:
    """MBG/CNBD-k: k by the profile likelihood over 1..``cnbd.K_MAX`` (stopping when it falls twice
    in a row, as BTYDplus does), each k warm-started from the previous one; ``initial`` (k, r, alpha,
    a, b) fixes k (the refit on the full history keeps the validated k)."""
    if initial is not None:
        init = np.asarray(initial, dtype=np.float64)
        return _fit_cnbd_k(round(float(init[0])), stats, penalizer, np.log(init[1:]), started)
    if not (math.isfinite(stats.litt_sum) and math.isfinite(stats.n_gaps)):
        raise SegsparkError(
            f"clv: {MBGCNBD} needs the sum of the log gaps between purchase days to choose k (not given)"
        )
    theta0 = np.log(np.array([1.0, max(float(stats.T.max()) / 10.0, 1e-3), 1.0, 1.0]))
    best: FitResult | None = None
    lls: list[float] = []
    for k in range(1, cnbd.K_MAX + 1):
        try:
            fit = _fit_cnbd_k(k, stats, penalizer, theta0, started)
        except SegsparkError:
            break
        lls.append(fit.log_likelihood)
        if best is None or fit.log_likelihood > best.log_likelihood:
            best = fit
        # the next k splits each gap into one more phase: alpha scaled by k / (k + 1) keeps the
        # purchase rate of the start where this fit ended
        theta0 = np.log(fit.values[1:] * np.array([1.0, k / (k + 1.0), 1.0, 1.0]))
        if len(lls) > 2 and lls[-1] < lls[-2] < lls[-3]:
            break
    if best is None:
        raise SegsparkError(f"clv: the {MBGCNBD} fit did not reach a finite likelihood; {_FAIL_HINT}")
    profile = ", ".join(f"k={i + 1} {v:.1f}" for i, v in enumerate(lls))
    return replace(
        best,
        message=f"{best.message}; k={best.params['k']:.0f} by profile log-likelihood ({profile})",
        fit_seconds=time.perf_counter() - started,
    )


def fit_gamma_gamma(stats: SpendStats, penalizer: float = 0.0, strict: bool = True) -> FitResult:
    """Maximum-likelihood Gamma-Gamma fit on repeat buyers' mean spend (compressed).

    ``penalizer`` as ``lifetimes``' GammaGammaFitter: mean negative log-likelihood per repeat
    buyer + penalizer * (p**2 + q**2 + gamma**2).
    """
    started = time.perf_counter()
    n = stats.n_customers
    mean_m = float(np.dot(stats.weight, stats.mean_m) / n)
    theta0 = np.log(np.array([1.0, 1.0, max(mean_m, 1e-3)]))
    scale = {"p": 1.0, "q": 1.0, "gamma": max(mean_m, 1e-12)}

    def nll(p: FloatArray) -> float:
        return -gamma_gamma_log_likelihood(p, stats)

    def nll_grad(p: FloatArray) -> tuple[float, FloatArray]:
        return _gamma_gamma_nll_grad(p, stats)

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", RuntimeWarning)
        res, _, jac = _minimize(
            "gamma_gamma", n, nll, nll_grad, theta0, penalizer, penalty_divisors("gamma_gamma", 1.0)
        )
        out = _finish(
            "gamma_gamma", res, jac, -nll(np.exp(res.x)), n, int(stats.x.size), penalizer, started, scale
        )
    if strict and not out.converged:
        raise SegsparkError(
            f"clv: the Gamma-Gamma fit did not converge ({out.message}; gradient norm {out.grad_norm:.3g}); "
            + _FAIL_HINT
        )
    if out.params["q"] <= 1.0:
        raise SegsparkError(
            f"clv: the Gamma-Gamma fit gave q={out.params['q']:.3f} <= 1, so expected spend is infinite; "
            "try a penalizer (--set clv.penalizer=0.001) or cap extreme order values upstream"
        )
    return out
