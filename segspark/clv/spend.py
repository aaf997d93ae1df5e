"""Spend models: Gamma-Gamma, and Gamma-Gamma fitted per stratum of purchase frequency.

Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV", spend note) assumes that how much a customer
spends per purchase is independent of how often she buys. Where it is not (|corr(frequency, mean
spend)| above ``clv.spend_corr_warn``), the one population of repeat buyers mixes frequent, high
spenders with occasional, small ones, and the expected spend of a customer with little or no repeat
history shrinks toward a population mean that the frequent buyers pull up: a one-purchase
customer is then valued like an average regular.

``gamma_gamma_by_frequency`` conditions spend on frequency by fitting one Gamma-Gamma per stratum of
repeat purchases x (lower bounds :data:`STRATUM_STARTS`: 1, 2-3, 4-7, 8-15, 16+); a stratum with
fewer than ``clv.spend_min_stratum_buyers`` repeat buyers is merged into its lower neighbour (the
lowest into the next). Within a stratum frequency varies little, so the independence assumption is
local. A repeat buyer is scored with her stratum's parameters (the usual Gamma-Gamma posterior mean
of her observed mean spend); a customer with no repeat purchase (x = 0, no repeat spend observed)
gets the lowest stratum's posterior mean given her first purchase's value v, p (gamma + v) / (p +
q - 1) (the population mean p * gamma / (q - 1) when v is not positive): the spend of her nearest
peers whose repeat spend is seen, moved toward what she spent, not that of every repeat buyer. One
small purchase is then valued as a small spender's.

Every fit is scipy's (:func:`segspark.clv.models.fit_gamma_gamma`); only the compressed (x,
spend-bin) statistics are on the driver. ``clv.spend_model`` chooses: ``auto`` (the default) uses
the stratified model when the independence check fails and plain Gamma-Gamma otherwise;
``gamma_gamma`` and ``gamma_gamma_by_frequency`` name one. A stratified model that cannot be fitted
(fewer than two strata of enough buyers, or a stratum's fit fails) gives way to Gamma-Gamma, and the
reason is recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

from segspark.clv import models as M
from segspark.clv.predict import expected_avg_value_col
from segspark.clv.stats import SpendStats
from segspark.errors import SegsparkError

GAMMA_GAMMA = "gamma_gamma"
BY_FREQUENCY = "gamma_gamma_by_frequency"
MEAN_VALUE = "mean_value"
STRATUM_STARTS = (1, 2, 4, 8, 16)


def stratum_label(lo: int, hi: int | None) -> str:
    """``1``, ``2-3``, ``16+``."""
    if hi is None:
        return f"{lo}+"
    return str(lo) if hi == lo else f"{lo}-{hi}"


@dataclass(frozen=True)
class Stratum:
    """Repeat purchases ``lo``..``hi`` (inclusive; ``hi`` None: no upper bound) and its fit."""

    lo: int
    hi: int | None
    fit: M.FitResult

    @property
    def label(self) -> str:
        return stratum_label(self.lo, self.hi)

    @property
    def key(self) -> str:
        """The label as a name part (``x1``, ``x2_3``, ``x16plus``) for params and tracking."""
        return "x" + self.label.replace("-", "_").replace("+", "plus")

    @property
    def population_mean(self) -> float:
        p, q, g = (self.fit.params[k] for k in ("p", "q", "gamma"))
        return p * g / (q - 1.0)


@dataclass(frozen=True)
class SpendModel:
    """The spend model a run uses: strata of Gamma-Gamma fits (one, unbounded, for plain
    Gamma-Gamma), or none and a constant ``mean_value``."""

    name: str
    strata: tuple[Stratum, ...] = ()
    mean_value: float = 0.0

    def column(self, x: Column, m: Column, first_value: Column | None = None) -> Column:
        """E[mean spend per purchase | x, m] as a column (x: repeat purchases, m: their mean value).

        Stratified, a customer without a repeat purchase with a positive ``first_value`` (her first
        purchase's value) gets the lowest stratum's Gamma-Gamma posterior mean given that one
        purchase, p (gamma + v) / (p + q - 1); without it, the stratum's population mean. Plain
        Gamma-Gamma keeps the population mean, as ``lifetimes`` does.
        """
        if not self.strata:
            return F.lit(float(self.mean_value))
        if len(self.strata) == 1:
            return expected_avg_value_col(self.strata[0].fit.values, x, m)
        first = self.strata[0]
        zero = F.lit(first.population_mean)
        if first_value is not None:
            # Gamma-Gamma leaves the first purchase out (it may be an acquisition offer); where spend
            # follows frequency, it is the one sign of a new customer's level of spend we have, and the
            # same prior shrinks it toward her peers'
            seen = expected_avg_value_col(first.fit.values, F.lit(1), first_value)
            zero = F.when(F.coalesce(first_value, F.lit(0.0)) > 0, seen).otherwise(zero)
        out = F.when(x <= F.lit(0), zero)
        for s in self.strata:
            inside = x <= F.lit(s.hi) if s.hi is not None else F.lit(True)
            out = out.when(inside, expected_avg_value_col(s.fit.values, x, m))
        return out

    def strata_text(self) -> str:
        return ", ".join(s.label for s in self.strata)


def strata_bounds(stats: SpendStats, min_buyers: int) -> list[tuple[int, int | None]]:
    """Strata of x (lower bounds :data:`STRATUM_STARTS`) with at least ``min_buyers`` repeat buyers
    each; a short stratum is merged into its lower neighbour, the lowest into the next."""
    starts = list(STRATUM_STARTS)
    bounds: list[list[float]] = []  # [lo, hi, buyers]
    for i, lo in enumerate(starts):
        hi = starts[i + 1] - 1 if i + 1 < len(starts) else math.inf
        buyers = float(stats.weight[(stats.x >= lo) & (stats.x <= hi)].sum())
        bounds.append([lo, hi, buyers])
    merged: list[list[float]] = []
    for b in bounds:
        if merged and (b[2] < min_buyers or merged[-1][2] < min_buyers):
            merged[-1][1], merged[-1][2] = b[1], merged[-1][2] + b[2]
        else:
            merged.append(b)
    if len(merged) > 1 and merged[-1][2] < min_buyers:  # a short top stratum joins the one below
        last = merged.pop()
        merged[-1][1], merged[-1][2] = last[1], merged[-1][2] + last[2]
    return [(int(lo), None if math.isinf(hi) else int(hi)) for lo, hi, _ in merged]


def subset(stats: SpendStats, lo: int, hi: int | None) -> SpendStats:
    """The statistics of the repeat buyers with lo <= x <= hi."""
    keep = (stats.x >= lo) & (stats.x <= (np.inf if hi is None else hi))
    return SpendStats(stats.x[keep], stats.weight[keep], stats.sum_log_m[keep], stats.mean_m[keep])


def fit_with_penalizers(stats: SpendStats, penalizers: list[float]) -> tuple[M.FitResult, list[str]]:
    """The first Gamma-Gamma fit that succeeds along ``penalizers``, and the failures before it;
    :class:`SegsparkError` with every failure when none does."""
    errors: list[str] = []
    for pen in penalizers:
        try:
            return M.fit_gamma_gamma(stats, pen), errors
        except SegsparkError as exc:
            errors.append(f"penalizer {pen:g}: {exc}")
    raise SegsparkError("; ".join(errors))


def fit_by_frequency(stats: SpendStats, penalizers: list[float], min_buyers: int) -> SpendModel:
    """One Gamma-Gamma per frequency stratum (module docstring); :class:`SegsparkError` when fewer
    than two strata hold ``min_buyers`` repeat buyers or a stratum's fit fails."""
    bounds = strata_bounds(stats, min_buyers)
    if len(bounds) < 2:
        raise SegsparkError(
            f"fewer than two frequency strata with {min_buyers} repeat buyers (clv.spend_min_stratum_buyers)"
        )
    strata: list[Stratum] = []
    for lo, hi in bounds:
        label = stratum_label(lo, hi)
        try:
            fit, _ = fit_with_penalizers(subset(stats, lo, hi), penalizers)
        except SegsparkError as exc:
            raise SegsparkError(f"the Gamma-Gamma fit of stratum x={label} failed ({exc})") from None
        strata.append(Stratum(lo, hi, fit))
    return SpendModel(BY_FREQUENCY, tuple(strata))
