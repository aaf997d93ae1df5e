"""Customer lifetime value: BG/NBD, Pareto/NBD or MBG/NBD with Gamma-Gamma spend, fitted on
compressed sufficient statistics, validated on a holdout, scored per customer in Spark.

Time windows (all dates inclusive):

- ``calibration_end`` = ``clv.calibration_end``, or ``as_of_date - clv.holdout_days`` when null;
- ``holdout_end`` = ``clv.holdout_end``, or ``as_of_date`` when null; orders after ``as_of_date``
  may serve as holdout only when ``clv.holdout_end`` says so explicitly;
- the model is fitted and validated on (.., calibration_end] vs (calibration_end, holdout_end];
- when the holdout window holds no purchases, the model is fitted on everything up to
  ``as_of_date`` and holdout validation is skipped (logged);
- customer predictions are always as of ``as_of_date``: when calibration_end is earlier, the chosen
  model is refitted on the full history up to ``as_of_date`` (starting from the validated
  parameters) before scoring, and both fits are reported.

Only a *valid* fit is used (:func:`segspark.clv.models.assess`): converged, no parameter at a
boundary, finite standard errors with se/|value| <= ``clv.max_relative_se``, and a holdout total
error within ``clv.max_holdout_error``. ``clv.model: auto`` fits all three transaction models and
keeps the valid one with the lowest holdout MAE (or the lowest BIC when there is no holdout); a
named model that is not valid gives way to the next valid one in the order bgnbd, pareto_nbd,
mbgnbd (with a warning). When no model is valid unpenalized (and ``clv.penalizer`` is 0) the round
is repeated with the penalizers of ``PENALIZER_FALLBACK``; when none is valid then either, CLV is the
historical spend rate (:func:`segspark.clv.predict.historical_rate_predictions`) and the reason for
every rejection is recorded (``clv_fit``, MLflow, the run's warnings).
"""

from segspark.clv.fit import (
    HISTORICAL_RATE,
    PENALIZER_FALLBACK,
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
    "SPEND_MODEL",
    "ClvResult",
    "fit_from_table",
    "fit_table",
    "resolve_windows",
    "run_clv",
    "summary_table",
]
