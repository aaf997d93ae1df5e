"""Customer lifetime value: BG/NBD, Pareto/NBD, MBG/NBD or MBG/CNBD-k with Gamma-Gamma spend, fitted on
compressed sufficient statistics, validated on a holdout, scored per customer in Spark.

The windows, the validity rules and the fallback are described in :mod:`segspark.clv.fit` (the fit and
score), the ``clv_fit`` table's encoding in :mod:`segspark.clv.table`; this package re-exports both.
"""

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
