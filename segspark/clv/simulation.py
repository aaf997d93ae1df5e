"""Simulation from known parameters (for tests, benchmarks and the validation's expected histograms)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segspark.clv import cnbd
from segspark.clv.stats import BGNBD, MBGCNBD, MBGNBD, PARETO_NBD, FloatArray
from segspark.errors import SegsparkError


def simulate(model: str, params: Any, T: Any, seed: int = 42) -> tuple[FloatArray, FloatArray]:
    """Draw (x, t_x) for customers of ages T under a model (exact, O(n), no event loop).

    Purchases follow a Poisson process with rate lambda ~ Gamma(r, 1/alpha). Given n events in
    (0, T], the k-th event time is T * Beta(k, n - k + 1). BG/NBD: the customer leaves after the
    K-th repeat purchase, K ~ Geometric(p), p ~ Beta(a, b); MBG/NBD also allows leaving right after
    the first purchase (K - 1); Pareto/NBD: lifetime ~ Exp(mu), mu ~ Gamma(s, 1/beta).
    """
    rng = np.random.default_rng(seed)
    T = np.asarray(T, dtype=np.float64)
    if model == MBGCNBD:
        return cnbd.simulate(params, T, rng)
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
    x = np.asarray(x, dtype=np.float64)
    nu = rng.gamma(q, 1.0 / g, x.shape)
    out = np.full_like(x, np.nan)
    pos = x > 0
    out[pos] = rng.gamma(p * x[pos], 1.0 / (nu[pos] * x[pos]))
    return out
