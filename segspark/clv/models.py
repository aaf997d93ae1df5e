"""Buy-till-you-die transaction models and the Gamma-Gamma spend model, in numpy/scipy.

Everything here works on arrays (driver side, or inside a vectorized ``pandas_udf``):

- log-likelihoods of BG/NBD (Fader, Hardie & Lee 2005), MBG/NBD (Batislam, Denizel & Filiztekin
  2007) and Pareto/NBD (Schmittlein, Morrison & Colombo 1987, in the form of Fader & Hardie's 2005
  derivation note), evaluated on *compressed* sufficient statistics: distinct ``(x, t_x, T)`` rows
  with a count each, so the cost of a fit depends on the number of distinct rows, not customers;
- maximum likelihood with ``scipy.optimize`` on log-parameters (positivity for free), analytic
  gradients where the algebra is short (BG/NBD, MBG/NBD, Gamma-Gamma), standard errors from the
  Hessian, an optional L2 penalizer with the objective of the ``lifetimes`` package (see
  :func:`penalty_divisors`): the penalty is on time-free parameters, so a fit does not depend on
  ``clv.time_unit``;
- validity (:func:`assess`): a fit is usable only when the optimizer converged, no parameter sits at
  a boundary, every standard error is finite and small relative to its estimate, and (given a
  holdout) the predicted holdout total is within a bound of the actual one;
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
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special
from statsmodels.tools.numdiff import approx_fprime
from threadpoolctl import threadpool_limits

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
class _ByFrequency:
    """Per-x bookkeeping shared by the compressed statistics: terms in x alone (gammaln, betaln,
    digamma of shifted parameters) are evaluated once per distinct x, not once per row."""

    x: FloatArray
    weight: FloatArray

    @cached_property
    def x_index(self) -> tuple[FloatArray, np.ndarray]:
        """(distinct x, index of each row's x in it)."""
        ux, inv = np.unique(self.x, return_inverse=True)
        return ux, inv.ravel()

    @cached_property
    def x_weights(self) -> FloatArray:
        """Customer count per distinct x (in the order of ``x_index``)."""
        ux, inv = self.x_index
        return np.bincount(inv, weights=self.weight, minlength=ux.size)


@dataclass(frozen=True)
class RfmStats(_ByFrequency):
    """Compressed BTYD statistics: one row per distinct (x, t_x, T) with its customer count.

    ``grid_days`` and ``sample_fraction`` say how :func:`segspark.clv.summary.compressed_rfm` bounded
    the rows (1 and 1.0: exact distinct triples on the day grid, every customer).
    """

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray
    grid_days: int = 1
    sample_fraction: float = 1.0

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
        """Merge equal (x, t_x, T) rows (what Spark's group-by does before the driver sees them).

        Rows come out sorted by (x, t_x, T). A hash group-by: sorting the rows themselves
        (``np.unique(axis=0)``) is about 20 times slower at a million customers.
        """
        frame = pd.DataFrame({"x": self.x, "t_x": self.t_x, "T": self.T, "w": self.weight}, copy=False)
        g = frame.groupby(["x", "t_x", "T"], sort=True, dropna=False)["w"].sum()
        idx = g.index
        return RfmStats(
            idx.get_level_values(0).to_numpy(np.float64),
            idx.get_level_values(1).to_numpy(np.float64),
            idx.get_level_values(2).to_numpy(np.float64),
            g.to_numpy(np.float64),
        )

    @property
    def n_customers(self) -> float:
        return float(self.weight.sum())

    @property
    def n_rows(self) -> int:
        return int(self.x.size)


@dataclass(frozen=True)
class SpendStats(_ByFrequency):
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

    @cached_property
    def x_sum_log_m(self) -> float:
        """sum over customers of x * log(m)."""
        return float(self.x @ self.sum_log_m)


# --------------------------------------------------------------------------------------------------
# Log-likelihoods
# --------------------------------------------------------------------------------------------------
def _bg_family_x_terms(
    params: FloatArray, ux: FloatArray, modified: bool
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Terms of BG/NBD (modified=False) or MBG/NBD in x alone, per distinct x.

    Returns (A1 + A2, log(a) - log(denominator of the dropout term), 1 / that denominator). Where
    BG/NBD has no dropout term (x == 0) the log is -inf and the reciprocal 0.
    """
    r, alpha, a, b = params
    shift = 1.0 if modified else 0.0
    c = (
        special.gammaln(r + ux)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.betaln(a, b + ux + shift)
        - special.betaln(a, b)
    )
    denom = b + ux if modified else np.where(ux > 0, b + ux - 1.0, np.inf)
    return c, np.log(a) - np.log(denom), 1.0 / denom


def _log_mix(a3: FloatArray, a4: FloatArray) -> tuple[FloatArray, FloatArray]:
    """log(exp(a3) + exp(a4)) and exp(a4) / (exp(a3) + exp(a4)), sharing one exp.

    Same result as ``np.logaddexp``, which costs about 20 times an exp on x86 (it guards every
    element separately); this is the hot loop of the BG/NBD fit.
    """
    z = a4 - a3
    e = np.exp(-np.abs(z))
    one_e = 1.0 + e
    lse = np.maximum(a3, a4) + np.log1p(e)
    share = np.where(z > 0, 1.0, e) / one_e
    return lse, share


def _bg_family_terms(params: FloatArray, s: RfmStats, modified: bool) -> FloatArray:
    """Per-row log-likelihood of BG/NBD (modified=False) or MBG/NBD.

    Hand-written because no library ships these likelihoods; written as
    ll = A1 + A2 + log(exp(A3) + d*exp(A4)) (FHL 2005, eq. 6; Batislam et al. 2007).
    """
    r, alpha = params[0], params[1]
    ux, inv = s.x_index
    c, log_d, _ = _bg_family_x_terms(params, ux, modified)
    rx = r + s.x
    a3 = -rx * np.log(alpha + s.T)
    a4 = log_d[inv] - rx * np.log(alpha + s.t_x)
    return c[inv] + _log_mix(a3, a4)[0]


def _bg_family_nll_grad(params: FloatArray, s: RfmStats, modified: bool) -> tuple[float, FloatArray]:
    """Total (count-weighted) negative log-likelihood of BG/NBD or MBG/NBD and its gradient.

    One pass for both, since L-BFGS-B asks for them together. Terms in x alone are summed with the
    per-x customer counts; only A3, A4 and their mixing weight are evaluated per row.
    """
    r, alpha, a, b = params
    ux, inv = s.x_index
    wx = s.x_weights
    w = s.weight
    shift = 1.0 if modified else 0.0
    c, log_d, inv_d = _bg_family_x_terms(params, ux, modified)
    rx = r + s.x
    log_at = np.log(alpha + s.T)
    log_atx = np.log(alpha + s.t_x)
    a3 = -rx * log_at
    a4 = log_d[inv] - rx * log_atx
    lse, w4 = _log_mix(a3, a4)
    ll = float(c @ wx + lse @ w)
    # weight of the dropout term in the mixture, times the customer count
    w4w = w4 * w
    psi_ab = special.digamma(a + b)
    psi_abx = special.digamma(a + b + ux + shift)
    dr = (
        (special.digamma(r + ux) - special.digamma(r) + np.log(alpha)) @ wx
        - log_at @ w
        + w4w @ (log_at - log_atx)
    )
    # d/d alpha of -(r+x) [log(alpha+T) (1-w4) + log(alpha+t_x) w4]
    dalpha = (
        r / alpha * s.n_customers
        - (rx / (alpha + s.T)) @ w
        + (rx * w4w) @ (1.0 / (alpha + s.T) - 1.0 / (alpha + s.t_x))
    )
    w4_total = float(w4w.sum())
    da = (psi_ab - psi_abx) @ wx + w4_total / a
    db = (psi_ab + special.digamma(b + ux + shift) - special.digamma(b) - psi_abx) @ wx - w4w @ inv_d[inv]
    return -ll, -np.array([dr, dalpha, da, db])


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
        return _bg_family_terms(p, stats, modified=False)
    if model == MBGNBD:
        return _bg_family_terms(p, stats, modified=True)
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
        special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(g) + px * np.log(s.x)
    )
    return s.weight * (const - (px + q) * np.log(s.x * s.mean_m + g)) + (px - 1.0) * s.sum_log_m


def gamma_gamma_log_likelihood(params: Any, s: SpendStats) -> float:
    return float(gamma_gamma_log_likelihood_terms(params, s).sum())


def _gamma_gamma_nll_grad(params: FloatArray, s: SpendStats) -> tuple[float, FloatArray]:
    """Total negative Gamma-Gamma log-likelihood and its gradient, in one pass.

    Terms in x alone are evaluated once per distinct x; only log(x*m + gamma) is per row.
    """
    p, q, g = params
    ux, _ = s.x_index
    wx = s.x_weights
    w = s.weight
    pux = p * ux
    log_ux = np.log(ux)
    lg_pxq = special.gammaln(pux + q)
    const = lg_pxq - special.gammaln(pux) - special.gammaln(q) + q * np.log(g) + pux * log_ux
    xm_g = s.x * s.mean_m + g
    lx = np.log(xm_g)
    pxq_w = (p * s.x + q) * w
    ll = float(const @ wx - pxq_w @ lx + p * s.x_sum_log_m - s.sum_log_m.sum())
    dig = special.digamma(pux + q)
    xw = s.x * w
    dp = (ux * (dig - special.digamma(pux) + log_ux)) @ wx - xw @ lx + s.x_sum_log_m
    dq = (dig - special.digamma(q) + np.log(g)) @ wx - lx @ w
    dg = q / g * s.n_customers - pxq_w @ (1.0 / xm_g)
    return -ll, -np.array([dp, dq, dg])


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What a fit found, and how well the optimizer converged.

    ``converged`` is the optimizer's verdict (a stationary point, positive curvature over the
    interior parameters); whether the fit is *usable* is :func:`assess`'s (boundaries, standard
    errors, holdout). ``scale`` holds each parameter's divisor to a unit-free value (the longest
    customer age for time parameters, the mean spend for Gamma-Gamma's gamma, 1 for shapes);
    ``at_boundary`` the parameters :func:`boundary_rule` flags on that scale.
    """

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
    scale: dict[str, float] = field(default_factory=dict)
    at_boundary: dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> FloatArray:
        return np.array([self.params[k] for k in PARAM_NAMES[self.model]])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FAIL_HINT = (
    "try a small penalizer (e.g. --set clv.penalizer=0.001), another model (--set clv.model=...), "
    "a longer calibration period, or check the summary statistics for outliers"
)

# A parameter whose unit-free value (``FitResult.scale``) is at or below BOUNDARY_LOW, or at or above
# BOUNDARY_HIGH, has run to a boundary of the parameter space: the fit is unconstrained in log space,
# so it never reaches 0 or infinity itself, and where it stops on the flat ridge toward it depends on
# rounding (BG/NBD without dropout: a -> 0 and b -> infinity together). A decision on the value, not on
# the curvature there (rounding noise of either sign), keeps the verdict deterministic. Interior
# estimates are of order 1 on this scale (CDNOW: 0.06 to 2.4); 1e-4 and 1e4 leave four decades.
BOUNDARY_LOW = 1e-4
BOUNDARY_HIGH = 1e4
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
    if model in (BGNBD, MBGNBD):
        return np.array([1.0, t, 1.0, 1.0])
    if model == PARETO_NBD:
        return np.array([1.0, t, 1.0, t])
    return np.ones(len(PARAM_NAMES[model]))


def boundary_rule(params: dict[str, float], scale: dict[str, float]) -> dict[str, str]:
    """Parameters at a boundary (unit-free value <= BOUNDARY_LOW or >= BOUNDARY_HIGH), with the rule."""
    out: dict[str, str] = {}
    for name, value in params.items():
        v = value / scale.get(name, 1.0)
        shown = f"{value:.3g}" if scale.get(name, 1.0) == 1.0 else f"{value:.3g} ({v:.3g} unit-free)"
        if not math.isfinite(v) or v >= BOUNDARY_HIGH:
            out[name] = f"{name}={shown} at its upper boundary (>= {BOUNDARY_HIGH:g})"
        elif v <= BOUNDARY_LOW:
            out[name] = f"{name}={shown} at its boundary 0 (<= {BOUNDARY_LOW:g})"
    return out


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
        return np.asarray(approx_fprime(theta, objective, centered=True), dtype=np.float64)

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


# --------------------------------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Validity:
    """Whether a fit may be used, and why not (each failed rule, naming the parameters)."""

    valid: bool
    reasons: tuple[str, ...]
    holdout_total_error: float  # (predicted - actual) / actual holdout purchases; NaN without holdout
    max_relative_se: float  # the largest se/|value| (inf where a standard error is not finite)
    max_relative_se_param: str | None

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) or None


def relative_se(fit: FitResult) -> dict[str, float]:
    """se/|value| per parameter; inf where the standard error is not finite."""
    out: dict[str, float] = {}
    for k, v in fit.params.items():
        se = fit.se.get(k, math.nan)
        out[k] = abs(se) / abs(v) if math.isfinite(se) and v != 0 else math.inf
    return out


def assess(
    fit: FitResult,
    max_relative_se: float,
    max_holdout_error: float,
    holdout_total_error: float = math.nan,
) -> Validity:
    """The validity rule: converged, no parameter at a boundary (:func:`boundary_rule`), every
    standard error finite with se/|value| <= ``max_relative_se``, and, when a holdout error is given,
    |(predicted - actual) / actual| <= ``max_holdout_error``."""
    reasons: list[str] = []
    if not fit.converged:
        reasons.append(f"the optimizer did not converge ({fit.message.split(';')[0]})")
    reasons.extend(fit.at_boundary.values())
    rel = relative_se(fit)
    worst = max(rel, key=lambda k: (rel[k], k)) if rel else None
    bad_se = [k for k, v in rel.items() if not math.isfinite(v)]
    if bad_se:
        reasons.append(f"standard error of {', '.join(bad_se)} not finite")
    big = [k for k, v in rel.items() if math.isfinite(v) and v > max_relative_se]
    if big:
        listing = ", ".join(f"{k} {rel[k]:.3g}" for k in big)
        reasons.append(
            f"relative standard error (se/|value|) {listing} > clv.max_relative_se {max_relative_se:g}"
        )
    if math.isfinite(holdout_total_error) and abs(holdout_total_error) > max_holdout_error:
        reasons.append(
            f"holdout total error {holdout_total_error:+.1%} beyond clv.max_holdout_error "
            f"{max_holdout_error:.0%}"
        )
    return Validity(
        valid=not reasons,
        reasons=tuple(reasons),
        holdout_total_error=holdout_total_error,
        max_relative_se=rel[worst] if worst is not None else math.nan,
        max_relative_se_param=worst,
    )


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
    x, t_x, T = _arr(x), _arr(t_x), _arr(T)
    return alive_purchases(model, params, t, x, T) * p_alive(model, params, x, t_x, T)


def alive_purchases(model: str, params: Any, t: Any, x: Any, T: Any) -> FloatArray:
    """Expected purchases in (T, T+t] of a customer known to be alive at T.

    E[Y(t) | x, t_x, T] = this * P(alive): the hypergeometric part depends on (x, T) only, not on
    t_x, which lets Spark evaluate it once per distinct (x, T) instead of once per customer.
    """
    if model == BGNBD:
        r, alpha, a, b = params
        t, x, T = _arr(t), _arr(x), _arr(T)
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        return (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    if model == MBGNBD:
        r, alpha, a, b = params
        t, x, T = _arr(t), _arr(x), _arr(T)
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x + 1, a + b + x, z)
        return (a + b + x) / (a - 1) * (1 - hyp * ((alpha + T) / (alpha + t + T)) ** (r + x))
    if model == PARETO_NBD:
        return pareto_alive_core(params, t, x, T)
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


def alive_purchase_horizon(
    model: str,
    params: Any,
    x: Any,
    T: Any,
    months: int,
    monthly_rate: float,
    units_per_month: float,
) -> tuple[FloatArray, FloatArray]:
    """For a customer alive at T: (expected purchases in the next ``months``, the same discounted).

    Month i (1-based) is discounted by (1+rate)^i at its end, as in :func:`discounted_clv`; both
    figures are multiplied by P(alive) to give a customer's expectation.
    """
    x, T = _arr(x), _arr(T)
    total = np.zeros(np.broadcast(x, T).shape)
    prev = np.zeros_like(total)
    cur = prev
    for i in range(1, months + 1):
        cur = alive_purchases(model, params, i * units_per_month, x, T)
        total += (cur - prev) / (1.0 + monthly_rate) ** i
        prev = cur
    return cur, total


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
    _, discounted = alive_purchase_horizon(model, params, x, T, months, monthly_rate, units_per_month)
    return discounted * p_alive(model, params, x, t_x, T) * _arr(avg_value)


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
