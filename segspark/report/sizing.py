"""statsmodels' power equations solved for one unknown, with every way they can fail turned into
:class:`CannotSize` and a reason a reader can follow.

``solve_power`` does not always return a float: when its bracketing root finder does not converge
it falls back to ``scipy.optimize.fsolve`` and returns that solver's one-element array (NumPy 2
refuses ``float()`` of it); when no solver converges it warns and returns NaN; when the bracket
holds no root (too few customers for any effect to reach the power) it raises ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

CANNOT_SIZE = "cannot be sized: do not act on it yet"


class CannotSize(ValueError):
    """A test design whose size or detectable effect the power calculation cannot give."""


def solve(analysis: NormalIndPower | TTestIndPower, what: str, **kwargs: Any) -> float:
    """The one unknown of ``analysis.solve_power(**kwargs)`` (the keyword passed as None) as a
    positive float; :class:`CannotSize` naming ``what`` was solved for when there is none."""
    with warnings.catch_warnings():
        # a failed solve is reported as CannotSize below, not as a warning in the run's log; the
        # root finders' trial points may overflow the power function on the way (RuntimeWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            value = analysis.solve_power(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise CannotSize(f"the power calculation has no {what}: {exc}") from None
    arr = np.asarray(value, dtype=float)
    if arr.size != 1:
        raise CannotSize(f"the power calculation gave {arr.size} values for the {what}")
    x = float(arr.reshape(-1)[0])
    if not (math.isfinite(x) and x > 0):
        raise CannotSize(f"the power calculation found no {what}: it did not converge")
    return x
