"""Buy-till-you-die transaction models and the Gamma-Gamma spend model, in numpy/scipy.

Everything here works on arrays (driver side, or inside a vectorized ``pandas_udf``):

- log-likelihoods of BG/NBD (Fader, Hardie & Lee 2005), MBG/NBD (Batislam, Denizel & Filiztekin
  2007) and Pareto/NBD (Schmittlein, Morrison & Colombo 1987, in the form of Fader & Hardie's 2005
  derivation note), evaluated on *compressed* sufficient statistics: distinct ``(x, t_x, T)`` rows
  with a count each, so the cost of a fit depends on the number of distinct rows, not customers;
- maximum likelihood with ``scipy.optimize`` on log-parameters (positivity for free), analytic
  gradients where the algebra is short (BG/NBD, MBG/NBD, Gamma-Gamma), standard errors from the
  Hessian, an optional L2 penalizer (same scale as the ``lifetimes`` package: the mean negative
  log-likelihood per customer plus ``penalizer * sum(params**2)``);
- closed-form predictions: P(alive), expected purchases for new and existing customers, expected
  average spend, discounted CLV; and simulation from known parameters (for tests and benchmarks).

Time is in whatever unit the statistics are in (``clv.time_unit``); ``alpha`` and ``beta`` carry
that unit.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special
from statsmodels.tools.numdiff import approx_fprime

from segspark.errors import SegsparkError

BGNBD = "bgnbd"
MBGNBD = "mbgnbd"
PARETO_NBD = "pareto_nbd"
TRANSACTION_MODELS = (BGNBD, PARETO_NBD, MBGNBD)

PARAM_NAMES: dict[str, tuple[str, ...]] = {
    BGNBD: ("r", "alpha", "a", "b"),
    MBGNBD: ("r", "alpha", "a", "b"),
    PARETO_NBD: ("r", "alpha", "s", "beta"),
    "gamma_gamma": ("p", "q", "gamma"),
}

FloatArray = np.ndarray


# --------------------------------------------------------------------------------------------------
# Sufficient statistics
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RfmStats:
    """Compressed BTYD statistics: one row per distinct (x, t_x, T) with its customer count."""

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        t_x: Any,
        T: Any,
        weight: Any | None = None,
    ) -> RfmStats:
        xa = np.asarray(x, dtype=np.float64)
        ta = np.asarray(t_x, dtype=np.float64)
        Ta = np.asarray(T, dtype=np.float64)
        wa = np.ones_like(xa) if weight is None else np.asarray(weight, dtype=np.float64)
        if not (xa.shape == ta.shape == Ta.shape == wa.shape) or xa.ndim != 1:
            raise SegsparkError("clv: x, t_x, T and weight must be 1-d arrays of one length")
        if xa.size == 0 or wa.sum() <= 0:
            raise SegsparkError("clv: no customers to fit (the summary statistics are empty)")
        if np.any(xa < 0) or np.any(ta < 0) or np.any(ta > Ta + 1e-9) or np.any(wa < 0):
            raise SegsparkError("clv: summary statistics must satisfy x >= 0 and 0 <= t_x <= T")
        if np.any(np.isnan(xa) | np.isnan(ta) | np.isnan(Ta) | np.isnan(wa)):
            raise SegsparkError("clv: summary statistics contain nulls")
        return cls(xa, ta, Ta, wa)

    def compress(self) -> RfmStats:
        """Merge equal (x, t_x, T) rows (what Spark's group-by does before the driver sees them)."""
        keys = np.stack([self.x, self.t_x, self.T], axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        w = np.bincount(inverse.ravel(), weights=self.weight, minlength=len(uniq))
        return RfmStats(uniq[:, 0].copy(), uniq[:, 1].copy(), uniq[:, 2].copy(), w)

    @property
    def n_customers(self) -> float:
        return float(self.weight.sum())

    @property
    def n_rows(self) -> int:
        return int(self.x.size)


@dataclass(frozen=True)
class SpendStats:
    """Compressed Gamma-Gamma statistics: per (x, spend bin) the count, sum of log spend, mean spend.

    The likelihood needs sum(log m) exactly (kept per bin) and log(x*m + gamma) per customer,
    which is evaluated at the bin mean: on a relative grid of width ``delta`` the error of that
    term is of order delta**2, far below the optimizer's tolerance.
    """

    x: FloatArray
    weight: FloatArray
    sum_log_m: FloatArray
    mean_m: FloatArray

    @classmethod
    def from_arrays(cls, x: Any, m: Any, weight: Any | None = None) -> SpendStats:
        xa = np.asarray(x, dtype=np.float64)
        ma = np.asarray(m, dtype=np.float64)
        wa = np.ones_like(xa) if weight is None else np.asarray(weight, dtype=np.float64)
        if xa.size == 0:
            raise SegsparkError("clv: no repeat buyers with positive spend to fit the Gamma-Gamma model")
        if np.any(xa <= 0) or np.any(ma <= 0):
            raise SegsparkError("clv: Gamma-Gamma needs x > 0 and mean spend > 0 for every row")
        return cls(xa, wa, wa * np.log(ma), ma)

    @property
    def n_customers(self) -> float:
        return float(self.weight.sum())


# --------------------------------------------------------------------------------------------------
# Log-likelihoods
# --------------------------------------------------------------------------------------------------
def _bg_family_terms(
    params: FloatArray, s: RfmStats, modified: bool, with_grad: bool
) -> tuple[FloatArray, FloatArray | None]:
    """Per-row log-likelihood of BG/NBD (modified=False) or MBG/NBD, and its gradient in params.

    Hand-written because no library ships these likelihoods; written as
    ll = A1 + A2 + log(exp(A3) + d*exp(A4)) (FHL 2005, eq. 6; Batislam et al. 2007).
    """
    r, alpha, a, b = params
    x, t_x, T = s.x, s.t_x, s.T
    shift = 1.0 if modified else 0.0
    # terms in x only: evaluated once per distinct x
    ux, inv = np.unique(x, return_inverse=True)
    a1 = special.gammaln(r + ux) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.betaln(a, b + ux + shift) - special.betaln(a, b)
    log_at = np.log(alpha + T)
    log_atx = np.log(alpha + t_x)
    a3 = -(r + x) * log_at
    if modified:
        d = np.ones_like(x, dtype=bool)
        denom = b + x
    else:
        d = x > 0
        denom = np.where(d, b + x - 1.0, 1.0)
    a4 = np.where(d, np.log(a) - np.log(denom) - (r + x) * log_atx, -np.inf)
    lse = np.logaddexp(a3, a4)
    ll = (a1 + a2)[inv] + lse
    if not with_grad:
        return ll, None
    w3 = np.exp(a3 - lse)
    w4 = 1.0 - w3
    dr = (special.digamma(r + ux) - special.digamma(r) + np.log(alpha))[inv] - w3 * log_at - w4 * log_atx
    dalpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
    psi_ab_x = special.digamma(a + b + ux + shift)
    da = (special.digamma(a + b) - psi_ab_x)[inv] + w4 / a
    db = (special.digamma(a + b) + special.digamma(b + ux + shift) - special.digamma(b) - psi_ab_x)[
        inv
    ] - w4 / denom
    return ll, np.stack([dr, dalpha, da, db])


def _pareto_log_a0(params: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    """log A0 of the Pareto/NBD likelihood (Fader & Hardie 2005 note, eqs. 19-20), in log space."""
    r, alpha, s, beta = params
    if alpha >= beta:
        lo, hi, b2 = beta, alpha, s + 1.0
    else:
        lo, hi, b2 = alpha, beta, r + x
    rsx = r + s + x
    q1 = hi + t_x
    q2 = hi + T
    f1 = special.hyp2f1(rsx, b2, rsx + 1.0, (hi - lo) / q1)
    f2 = special.hyp2f1(rsx, b2, rsx + 1.0, (hi - lo) / q2)
    u = np.log(f1) - rsx * np.log(q1)
    v = np.log(f2) - rsx * np.log(q2)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A0 = exp(u) - exp(v) >= 0, and exactly 0 when t_x == T
        out = u + np.log1p(-np.exp(v - u))
    return np.where(t_x >= T, -np.inf, out)


def _pareto_terms(params: FloatArray, s: RfmStats) -> FloatArray:
    r, alpha, sh, beta = params
    x, t_x, T = s.x, s.t_x, s.T
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha) + sh * np.log(beta)
    first = -(r + x) * np.log(alpha + T) - sh * np.log(beta + T)
    second = np.log(sh) - np.log(r + sh + x) + _pareto_log_a0(params, x, t_x, T)
    return a1 + np.logaddexp(first, second)


def log_likelihood_terms(model: str, params: Any, stats: RfmStats) -> FloatArray:
    """Per-row (per distinct triple) log-likelihood of one customer with that (x, t_x, T)."""
    p = np.asarray(params, dtype=np.float64)
    if model == BGNBD:
        return _bg_family_terms(p, stats, modified=False, with_grad=False)[0]
    if model == MBGNBD:
        return _bg_family_terms(p, stats, modified=True, with_grad=False)[0]
    if model == PARETO_NBD:
        return _pareto_terms(p, stats)
    raise SegsparkError(f"clv: unknown model {model!r}; allowed: {', '.join(TRANSACTION_MODELS)}")


def log_likelihood(model: str, params: Any, stats: RfmStats) -> float:
    """Total (count-weighted) log-likelihood."""
    return float(np.dot(stats.weight, log_likelihood_terms(model, params, stats)))


def gamma_gamma_log_likelihood_terms(params: Any, s: SpendStats) -> FloatArray:
    """Per-row weighted Gamma-Gamma log-likelihood (Fader, Hardie & Lee 2005 spend note, eq. 5)."""
    p, q, g = np.asarray(params, dtype=np.float64)
    px = p * s.x
    const = (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(g)
        + px * np.log(s.x)
    )
    return s.weight * (const - (px + q) * np.log(s.x * s.mean_m + g)) + (px - 1.0) * s.sum_log_m


def gamma_gamma_log_likelihood(params: Any, s: SpendStats) -> float:
    return float(gamma_gamma_log_likelihood_terms(params, s).sum())


def _gamma_gamma_grad(params: FloatArray, s: SpendStats) -> FloatArray:
    p, q, g = params
    x = s.x
    px = p * x
    lx = np.log(x * s.mean_m + g)
    dig = special.digamma(px + q)
    dp = (s.weight * x * (dig - special.digamma(px) + np.log(x) - lx) + x * s.sum_log_m).sum()
    dq = (s.weight * (dig - special.digamma(q) + np.log(g) - lx)).sum()
    dg = (s.weight * (q / g - (px + q) / (x * s.mean_m + g))).sum()
    return np.array([dp, dq, dg])


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What a fit found, and how well the optimizer converged."""

    model: str
    params: dict[str, float]
    log_likelihood: float
    n_customers: int
    n_rows: int
    converged: bool
    iterations: int
    function_evals: int
    grad_norm: float
    message: str
    penalizer: float
    se: dict[str, float] = field(default_factory=dict)
    aic: float = float("nan")
    bic: float = float("nan")
    fit_seconds: float = 0.0

    @property
    def values(self) -> FloatArray:
        return np.array([self.params[k] for k in PARAM_NAMES[self.model]])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FAIL_HINT = (
    "try a small penalizer (e.g. --set clv.penalizer=0.001), another model (--set clv.model=...), "
    "a longer calibration period, or check the summary statistics for outliers"
)


def _minimize(
    name: str,
    n: float,
    nll: Callable[[FloatArray], float],
    grad: Callable[[FloatArray], FloatArray] | None,
    theta0: FloatArray,
    penalizer: float,
) -> tuple[optimize.OptimizeResult, Callable[[FloatArray], float], Callable[[FloatArray], FloatArray]]:
    """Minimize mean negative log-likelihood + penalty over log-parameters."""

    def objective(theta: FloatArray) -> float:
        p = np.exp(theta)
        try:
            with np.errstate(all="ignore"):
                val = nll(p) / n + penalizer * float(np.sum(p**2))
        except (ValueError, OverflowError, ZeroDivisionError):  # a parameter under/overflowed
            return 1e300
        return val if np.isfinite(val) else 1e300

    def numeric_grad(theta: FloatArray) -> FloatArray:
        return np.asarray(approx_fprime(theta, objective, centered=True), dtype=np.float64)

    if grad is not None:
        g_fn = grad

        def jac(theta: FloatArray) -> FloatArray:
            p = np.exp(theta)
            with np.errstate(all="ignore"):
                out = g_fn(p) * p / n + penalizer * 2.0 * p**2
            return np.where(np.isfinite(out), out, 0.0)

    else:
        jac = numeric_grad
    res = optimize.minimize(
        objective,
        theta0,
        jac=jac,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-9, "ftol": 1e-14},
    )
    if not np.isfinite(res.fun) or res.fun >= 1e299:
        raise SegsparkError(f"clv: the {name} fit did not reach a finite likelihood; {_FAIL_HINT}")
    return res, objective, jac


def _finish(
    model: str,
    res: optimize.OptimizeResult,
    objective: Callable[[FloatArray], float],
    jac: Callable[[FloatArray], FloatArray],
    ll: float,
    n: float,
    n_rows: int,
    penalizer: float,
    started: float,
) -> FitResult:
    names = PARAM_NAMES[model]
    theta = np.asarray(res.x)
    p = np.exp(theta)
    grad = jac(theta)
    grad_norm = float(np.max(np.abs(grad))) * n  # of the total (not mean) negative log-likelihood
    # Hessian of the total negative log-likelihood in log-parameters, by central differences of the
    # gradient; covariance = inverse; delta method back to the natural scale: se(p) = p * se(log p).
    hess = np.asarray(approx_fprime(theta, jac, centered=True), dtype=np.float64) * n
    hess = 0.5 * (hess + hess.T)
    se: dict[str, float]
    try:
        cov = np.linalg.inv(hess)
        diag = np.diag(cov)
        se = {
            k: float(pk * math.sqrt(dk)) if dk > 0 else float("nan")
            for k, pk, dk in zip(names, p, diag, strict=True)
        }
        hess_ok = bool(np.all(np.linalg.eigvalsh(hess) > 0))
    except np.linalg.LinAlgError:
        se = {k: float("nan") for k in names}
        hess_ok = False
    # L-BFGS-B reports "ABNORMAL" when the line search cannot improve at machine precision; at a
    # point with a tiny gradient and a positive-definite Hessian that is a converged optimum.
    converged = bool(res.success) or (hess_ok and float(np.max(np.abs(grad))) < 1e-5)
    k = len(names)
    return FitResult(
        model=model,
        params={kk: float(v) for kk, v in zip(names, p, strict=True)},
        log_likelihood=ll,
        n_customers=int(round(n)),
        n_rows=n_rows,
        converged=converged and hess_ok,
        iterations=int(res.nit),
        function_evals=int(res.nfev),
        grad_norm=grad_norm,
        message=str(res.message) + ("" if hess_ok else "; Hessian not positive definite"),
        penalizer=penalizer,
        se=se,
        aic=2 * k - 2 * ll,
        bic=k * math.log(max(n, 1.0)) - 2 * ll,
        fit_seconds=time.perf_counter() - started,
    )


def fit_transactions(
    model: str,
    stats: RfmStats,
    penalizer: float = 0.0,
    initial: Any | None = None,
    strict: bool = True,
) -> FitResult:
    """Maximum-likelihood fit of a transaction model on (compressed) statistics.

    ``strict``: raise ``SegsparkError`` (with what to try) when the optimizer does not converge.
    """
    if model not in TRANSACTION_MODELS:
        raise SegsparkError(f"clv: unknown model {model!r}; allowed: {', '.join(TRANSACTION_MODELS)}")
    started = time.perf_counter()
    n = stats.n_customers
    # Start at 1 for shape parameters and a tenth of the longest age for the time scales: the
    # likelihood is then evaluated on a well-scaled problem whatever the time unit.
    scale0 = max(float(stats.T.max()) / 10.0, 1e-3)
    if initial is not None:
        theta0 = np.log(np.asarray(initial, dtype=np.float64))
    elif model == PARETO_NBD:
        theta0 = np.log(np.array([1.0, scale0, 1.0, scale0]))
    else:
        theta0 = np.log(np.array([1.0, scale0, 1.0, 1.0]))

    grad: Callable[[FloatArray], FloatArray] | None
    if model in (BGNBD, MBGNBD):
        modified = model == MBGNBD

        def nll(p: FloatArray) -> float:
            return -float(np.dot(stats.weight, _bg_family_terms(p, stats, modified, False)[0]))

        def grad_fn(p: FloatArray) -> FloatArray:
            g = _bg_family_terms(p, stats, modified, True)[1]
            assert g is not None
            return -(g @ stats.weight)

        grad = grad_fn
    else:

        def nll(p: FloatArray) -> float:
            return -float(np.dot(stats.weight, _pareto_terms(p, stats)))

        grad = None  # central differences: the analytic hyp2f1 derivatives are not worth their bugs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res, objective, jac = _minimize(model, n, nll, grad, theta0, penalizer)
        ll = -nll(np.exp(res.x))
        out = _finish(model, res, objective, jac, ll, n, stats.n_rows, penalizer, started)
    if strict and not out.converged:
        raise SegsparkError(
            f"clv: the {model} fit did not converge ({out.message}; gradient norm {out.grad_norm:.3g}); {_FAIL_HINT}"
        )
    return out


def fit_gamma_gamma(stats: SpendStats, penalizer: float = 0.0, strict: bool = True) -> FitResult:
    """Maximum-likelihood Gamma-Gamma fit on repeat buyers' mean spend (compressed)."""
    started = time.perf_counter()
    n = stats.n_customers
    mean_m = float(np.dot(stats.weight, stats.mean_m) / n)
    theta0 = np.log(np.array([1.0, 1.0, max(mean_m, 1e-3)]))

    def nll(p: FloatArray) -> float:
        return -gamma_gamma_log_likelihood(p, stats)

    def grad_fn(p: FloatArray) -> FloatArray:
        return -_gamma_gamma_grad(p, stats)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res, objective, jac = _minimize("gamma_gamma", n, nll, grad_fn, theta0, penalizer)
        out = _finish(
            "gamma_gamma", res, objective, jac, -nll(np.exp(res.x)), n, int(stats.x.size), penalizer, started
        )
    if strict and not out.converged:
        raise SegsparkError(
            f"clv: the Gamma-Gamma fit did not converge ({out.message}; gradient norm {out.grad_norm:.3g}); {_FAIL_HINT}"
        )
    if out.params["q"] <= 1.0:
        raise SegsparkError(
            f"clv: the Gamma-Gamma fit gave q={out.params['q']:.3f} <= 1, so expected spend is infinite; "
            "try a penalizer (--set clv.penalizer=0.001) or cap extreme order values upstream"
        )
    return out


# --------------------------------------------------------------------------------------------------
# Predictions (vectorized; usable from pandas and inside pandas_udf)
# --------------------------------------------------------------------------------------------------
def _arr(v: Any) -> FloatArray:
    return np.asarray(v, dtype=np.float64)


def expected_purchases_new(model: str, params: Any, t: Any) -> FloatArray:
    """E[X(t)]: expected repeat purchases in (0, t] of a customer who made a first purchase at 0."""
    t = _arr(t)
    if model == BGNBD:
        r, alpha, a, b = params
        z = t / (alpha + t)
        return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * special.hyp2f1(r, b, a + b - 1, z))
    if model == MBGNBD:
        r, alpha, a, b = params
        z = t / (alpha + t)
        return b / (a - 1) * (1 - special.hyp2f1(r, b + 1, a + b, z) * (alpha / (alpha + t)) ** r)
    if model == PARETO_NBD:
        r, alpha, s, beta = params
        if abs(s - 1.0) < 1e-9:
            return r * beta / alpha * np.log((beta + t) / beta)
        return r * beta / (alpha * (s - 1)) * (1 - (beta / (beta + t)) ** (s - 1))
    raise SegsparkError(f"clv: unknown model {model!r}")


def log_odds_dead(model: str, params: Any, x: Any, t_x: Any, T: Any) -> FloatArray:
    """log(P(dead)/P(alive)) given history: P(alive) = expit(-this). Stable for large x."""
    x, t_x, T = _arr(x), _arr(t_x), _arr(T)
    if model in (BGNBD, MBGNBD):
        r, alpha, a, b = params
        denom = b + x if model == MBGNBD else b + x - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            val = math.log(a) - np.log(denom) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        if model == BGNBD:
            val = np.where(x > 0, val, -np.inf)  # BG/NBD: no dropout before the first repeat purchase
        return val
    if model == PARETO_NBD:
        r, alpha, s, beta = params
        return (
            math.log(s)
            - np.log(r + s + x)
            + (r + x) * np.log(alpha + T)
            + s * np.log(beta + T)
            + _pareto_log_a0(np.asarray(params, dtype=np.float64), x, t_x, T)
        )
    raise SegsparkError(f"clv: unknown model {model!r}")


def p_alive(model: str, params: Any, x: Any, t_x: Any, T: Any) -> FloatArray:
    """P(alive at T | x, t_x, T)."""
    return special.expit(-log_odds_dead(model, params, x, t_x, T))


def expected_purchases(model: str, params: Any, t: Any, x: Any, t_x: Any, T: Any) -> FloatArray:
    """E[Y(t) | x, t_x, T]: expected purchases in (T, T+t] for a customer with that history."""
    t, x, t_x, T = _arr(t), _arr(x), _arr(t_x), _arr(T)
    alive = p_alive(model, params, x, t_x, T)
    if model == BGNBD:
        r, alpha, a, b = params
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        core = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        return core * alive
    if model == MBGNBD:
        r, alpha, a, b = params
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x + 1, a + b + x, z)
        core = (a + b + x) / (a - 1) * (1 - hyp * ((alpha + T) / (alpha + t + T)) ** (r + x))
        return core * alive
    if model == PARETO_NBD:
        return pareto_alive_core(params, t, x, T) * alive
    raise SegsparkError(f"clv: unknown model {model!r}")


def pareto_alive_core(params: Any, t: Any, x: Any, T: Any) -> FloatArray:
    """Pareto/NBD expected purchases in (T, T+t] of a customer known to be alive at T."""
    r, alpha, s, beta = params
    t, x, T = _arr(t), _arr(x), _arr(T)
    lead = (r + x) * (beta + T) / (alpha + T)
    if abs(s - 1.0) < 1e-9:
        return lead * np.log((beta + T + t) / (beta + T))
    return lead / (s - 1) * (1 - ((beta + T) / (beta + T + t)) ** (s - 1))


def expected_avg_value(gg_params: Any, x: Any, m: Any) -> FloatArray:
    """Gamma-Gamma E[mean spend | x, m]; the population mean p*gamma/(q-1) where x == 0."""
    p, q, g = gg_params
    x, m = _arr(x), _arr(m)
    m = np.where(x > 0, np.nan_to_num(m, nan=0.0), 0.0)
    return p * (g + x * m) / (p * x + q - 1)


def discounted_clv(
    model: str,
    params: Any,
    x: Any,
    t_x: Any,
    T: Any,
    avg_value: Any,
    months: int,
    monthly_rate: float,
    units_per_month: float,
) -> FloatArray:
    """Sum over months i=1..M of value * (E[Y(i)] - E[Y(i-1)]) / (1+rate)^i (end-of-month discounting)."""
    total = np.zeros_like(_arr(x))
    prev = np.zeros_like(total)
    for i in range(1, months + 1):
        cur = expected_purchases(model, params, i * units_per_month, x, t_x, T)
        total += (cur - prev) / (1.0 + monthly_rate) ** i
        prev = cur
    return total * _arr(avg_value)


def prob_n_purchases(model: str, params: Any, t: Any, n: int) -> FloatArray:
    """P(X(t) = n) for a new customer (BG/NBD: FHL 2005 eq. 8; MBG/NBD: Batislam et al. 2007)."""
    t = _arr(t)
    r, alpha, a, b = params
    shift = 1.0 if model == MBGNBD else 0.0
    if model not in (BGNBD, MBGNBD):
        raise SegsparkError(f"clv: closed-form P(X(t)=n) is implemented for BG/NBD and MBG/NBD, not {model}")
    lp = np.log(alpha / (alpha + t))
    lq = np.log(t / (alpha + t)) if n > 0 else np.zeros_like(t)
    log_nb = special.gammaln(r + n) - special.gammaln(r) - special.gammaln(n + 1) + r * lp + n * lq
    first = np.exp(special.betaln(a, b + n + shift) - special.betaln(a, b) + log_nb)
    if n == 0 and not shift:
        return first
    j = np.arange(n)[:, None]
    with np.errstate(divide="ignore"):
        terms = np.exp(
            special.gammaln(r + j)
            - special.gammaln(r)
            - special.gammaln(j + 1)
            + r * lp[None, :]
            + j * np.log(t / (alpha + t))[None, :]
        )
    tail = 1.0 - terms.sum(axis=0)  # an empty sum (n == 0, MBG/NBD only) leaves 1: dropped at once
    second = np.exp(special.betaln(a + 1, b + n - 1 + shift) - special.betaln(a, b)) * tail
    return first + second


# --------------------------------------------------------------------------------------------------
# Simulation from known parameters
# --------------------------------------------------------------------------------------------------
def simulate(model: str, params: Any, T: Any, seed: int = 42) -> tuple[FloatArray, FloatArray]:
    """Draw (x, t_x) for customers of ages T under a model (exact, O(n), no event loop).

    Purchases follow a Poisson process with rate lambda ~ Gamma(r, 1/alpha). Given n events in
    (0, T], the k-th event time is T * Beta(k, n - k + 1). BG/NBD: the customer leaves after the
    K-th repeat purchase, K ~ Geometric(p), p ~ Beta(a, b); MBG/NBD also allows leaving right after
    the first purchase (K - 1); Pareto/NBD: lifetime ~ Exp(mu), mu ~ Gamma(s, 1/beta).
    """
    rng = np.random.default_rng(seed)
    T = _arr(T)
    size = T.shape
    r, alpha = params[0], params[1]
    lam = rng.gamma(r, 1.0 / alpha, size)
    if model in (BGNBD, MBGNBD):
        a, b = params[2], params[3]
        p = rng.beta(a, b, size)
        k = rng.geometric(np.clip(p, 1e-12, 1.0), size).astype(np.float64)
        if model == MBGNBD:
            k -= 1.0
        n = rng.poisson(lam * T).astype(np.float64)
        x = np.minimum(n, k)
        horizon = T
    elif model == PARETO_NBD:
        s, beta = params[2], params[3]
        mu = rng.gamma(s, 1.0 / beta, size)
        horizon = np.minimum(rng.exponential(1.0 / mu), T)
        n = rng.poisson(lam * horizon).astype(np.float64)
        x = n
    else:
        raise SegsparkError(f"clv: unknown model {model!r}")
    t_x = np.zeros_like(T)
    pos = x > 0
    t_x[pos] = horizon[pos] * rng.beta(x[pos], n[pos] - x[pos] + 1.0)
    return x, t_x


def simulate_spend(gg_params: Any, x: Any, seed: int = 42) -> FloatArray:
    """Mean spend of x transactions: nu ~ Gamma(q, 1/gamma), mean ~ Gamma(p*x, 1/(nu*x))."""
    p, q, g = gg_params
    rng = np.random.default_rng(seed)
    x = _arr(x)
    nu = rng.gamma(q, 1.0 / g, x.shape)
    out = np.full_like(x, np.nan)
    pos = x > 0
    out[pos] = rng.gamma(p * x[pos], 1.0 / (nu[pos] * x[pos]))
    return out
