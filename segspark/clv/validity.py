"""What a fit found (:class:`FitResult`) and whether it may be used (:func:`assess`).

A fit is usable only when the optimizer converged, no parameter sits at a boundary
(:func:`boundary_rule`), every standard error is finite and small relative to its estimate, and
(given a holdout) the predicted holdout total is within a bound of the actual one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from segspark.clv.stats import PARAM_NAMES, FloatArray


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


# A parameter whose unit-free value (``FitResult.scale``) is at or below BOUNDARY_LOW, or at or above
# BOUNDARY_HIGH, has run to a boundary of the parameter space: the fit is unconstrained in log space,
# so it never reaches 0 or infinity itself, and where it stops on the flat ridge toward it depends on
# rounding (BG/NBD without dropout: a -> 0 and b -> infinity together). A decision on the value, not on
# the curvature there (rounding noise of either sign), keeps the verdict deterministic. Interior
# estimates are of order 1 on this scale (CDNOW: 0.06 to 2.4); 1e-4 and 1e4 leave four decades.
BOUNDARY_LOW = 1e-4
BOUNDARY_HIGH = 1e4


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
