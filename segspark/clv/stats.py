"""Model names, parameter names and the compressed sufficient statistics every CLV model is fitted on.

The statistics are arrays with a customer count per row (distinct ``(x, t_x, T)`` triples for the
transaction models, ``(x, spend bin)`` for Gamma-Gamma), so the cost of a fit depends on the number
of distinct rows, not customers. Spark builds them in :mod:`segspark.clv.summary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from segspark.errors import SegsparkError

BGNBD = "bgnbd"
MBGNBD = "mbgnbd"
PARETO_NBD = "pareto_nbd"
# MBG/NBD with Erlang-k inter-purchase times (segspark.clv.cnbd); k is chosen, not estimated
MBGCNBD = "mbgcnbd"
TRANSACTION_MODELS = (BGNBD, PARETO_NBD, MBGNBD, MBGCNBD)

PARAM_NAMES: dict[str, tuple[str, ...]] = {
    BGNBD: ("r", "alpha", "a", "b"),
    MBGNBD: ("r", "alpha", "a", "b"),
    PARETO_NBD: ("r", "alpha", "s", "beta"),
    MBGCNBD: ("k", "r", "alpha", "a", "b"),
    "gamma_gamma": ("p", "q", "gamma"),
}

FloatArray = np.ndarray


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
    the rows (1 and 1.0: exact distinct triples on the day grid, every customer). ``litt_sum`` and
    ``n_gaps``: the sum of the log gaps between purchase days (in the time unit) over every customer,
    and the number of gaps: what MBG/CNBD-k's choice of k needs beyond (x, t_x, T); NaN when not known.
    """

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray
    grid_days: int = 1
    sample_fraction: float = 1.0
    litt_sum: float = float("nan")
    n_gaps: float = float("nan")

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
