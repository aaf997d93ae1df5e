"""Customer lifetime value: BG/NBD, Pareto/NBD, MBG/NBD or MBG/CNBD-k with Gamma-Gamma spend, fitted on
compressed sufficient statistics, validated on a holdout, scored per customer in Spark.

The windows, the validity rules and the fallback are described in :mod:`segspark.clv.fit` (the fit and
score), the ``clv_fit`` table's encoding in :mod:`segspark.clv.table`; this package re-exports both.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segspark.clv.fit import (
        HISTORICAL_RATE,
        PENALIZER_FALLBACK,
        SEGMENT,
        SPEND_MODEL,
        ClvResult,
        resolve_windows,
        run_clv,
    )
    from segspark.clv.table import FIT_COLUMNS, fit_from_table, fit_table, summary_table

# The re-exports are imported on first use: a Python worker that unpickles one of the predictions'
# pandas_udfs imports the models only (this package's __init__ runs first), not the fit with
# matplotlib and statsmodels, about a second of imports in every worker of a run.
_HOMES = {
    **dict.fromkeys(
        (
            "HISTORICAL_RATE",
            "PENALIZER_FALLBACK",
            "SEGMENT",
            "SPEND_MODEL",
            "ClvResult",
            "resolve_windows",
            "run_clv",
        ),
        "fit",
    ),
    **dict.fromkeys(("FIT_COLUMNS", "fit_from_table", "fit_table", "summary_table"), "table"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "FIT_COLUMNS",
    "HISTORICAL_RATE",
    "PENALIZER_FALLBACK",
    "SEGMENT",
    "SPEND_MODEL",
    "ClvResult",
    "fit_from_table",
    "fit_table",
    "resolve_windows",
    "run_clv",
    "summary_table",
]
