"""Closed-form predictions of the fitted models, vectorized (usable from pandas and inside
``pandas_udf``): P(alive), expected purchases for new and existing customers, expected average
spend, discounted CLV, P(X(t) = n).

Time is in whatever unit the parameters were fitted in (``clv.time_unit``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special

from segspark.clv import cnbd
from segspark.clv.likelihood import pareto_log_a0
from segspark.clv.stats import BGNBD, MBGCNBD, MBGNBD, PARETO_NBD, FloatArray
from segspark.errors import SegsparkError


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
    if model == MBGCNBD:
        return cnbd.expected_purchases_new(params, t)
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
            + pareto_log_a0(np.asarray(params, dtype=np.float64), x, t_x, T)
        )
    if model == MBGCNBD:
        return cnbd.log_odds_dead(params, x, t_x, T)
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
    if model == MBGCNBD:
        return cnbd.alive_purchases(params, t, x, T)
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
