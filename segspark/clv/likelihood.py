"""Log-likelihoods of BG/NBD, MBG/NBD, Pareto/NBD and Gamma-Gamma on compressed statistics, with the
analytic gradients the fits use where the algebra is short (BG/NBD, MBG/NBD, Gamma-Gamma).

BG/NBD: Fader, Hardie & Lee 2005; MBG/NBD: Batislam, Denizel & Filiztekin 2007; Pareto/NBD:
Schmittlein, Morrison & Colombo 1987, in the form of Fader & Hardie's 2005 derivation note.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from segspark.clv import cnbd
from segspark.clv.stats import (
    BGNBD,
    MBGCNBD,
    MBGNBD,
    PARETO_NBD,
    TRANSACTION_MODELS,
    FloatArray,
    RfmStats,
    SpendStats,
)
from segspark.errors import SegsparkError


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


def pareto_log_a0(params: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
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
    second = np.log(sh) - np.log(r + sh + x) + pareto_log_a0(params, x, t_x, T)
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
    if model == MBGCNBD:  # without the term in k alone (cnbd.regularity_term)
        return cnbd.log_likelihood_terms(p, stats)
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
