"""Does CLV hold per segment: the CLV model's predicted vs actual holdout value per customer, by
repeat-purchase band and by the RFM segment at the calibration end (``clv_validation`` rows of the
views ``holdout_value_by_band`` and ``holdout_value_by_segment``), as one report table."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.report.aggregates import drop_stamp, small_table
from segspark.report.fmt import Fmt, Table

VIEWS = (S.CLV_VIEW_HOLDOUT_VALUE_BY_BAND, S.CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT)
HEADER = [
    "Group at the calibration end",
    "Customers",
    "Predicted value per customer",
    "Actual value per customer",
    "Predicted / actual",
]


def holdout_value_rows(validation: DataFrame) -> pd.DataFrame | None:
    """The holdout-value rows of a run's ``clv_validation`` (a few dozen); None when it has none."""
    rows = small_table(
        drop_stamp(validation).where(F.col("view").isin(*VIEWS)), S.CLV_VALIDATION, limit=1_000
    )
    return None if rows.empty else rows


def _money(x: Any, sym: str) -> str:
    """Cents shown: a holdout window's value per customer is often a few dollars or less."""
    v = float(x)
    return "–" if not math.isfinite(v) else f"{'-' if v < 0 else ''}{sym}{abs(v):,.2f}"


def _ratio(predicted: Any, actual: Any) -> str:
    p, a = float(predicted), float(actual)
    if not (math.isfinite(p) and math.isfinite(a)) or a <= 0:
        return "–"
    return f"{p / a:.2f}"


def holdout_window(clv_fit: dict[str, Any] | None) -> str:
    """ "the N days from <calibration end> to <holdout end>" of the run's CLV fit, or "" unknown."""
    fit = clv_fit or {}
    try:
        cal = dt.date.fromisoformat(str(fit.get("calibration_end")))
        end = dt.date.fromisoformat(str(fit.get("holdout_end")))
    except ValueError:
        return ""
    return f"the {(end - cal).days} days from {cal.isoformat()} to {end.isoformat()}"


def holdout_value_table(rows: pd.DataFrame | None, fmt: Fmt, segment_order: list[str]) -> Table | None:
    """Bands (0, 1, 2-3, 4+ repeat purchases) then RFM segments in ``segment_order`` (others after,
    by name): customers, predicted and actual holdout value per customer, their ratio."""
    if rows is None or rows.empty:
        return None
    out: list[list[str]] = []
    bands = rows[rows["view"] == S.CLV_VIEW_HOLDOUT_VALUE_BY_BAND].sort_values("x")
    segments = rows[rows["view"] == S.CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT].copy()
    rank = {name: i for i, name in enumerate(segment_order)}
    segments["_o"] = [rank.get(str(label), len(rank)) for label in segments["label"]]
    segments = segments.sort_values(["_o", "label"])
    for prefix, part in (("repeat purchases ", bands), ("", segments)):
        for r in part.itertuples(index=False):
            out.append(
                [
                    f"{prefix}{r.label}",
                    fmt.count(r.customers),
                    _money(r.predicted, fmt.sym),
                    _money(r.actual, fmt.sym),
                    _ratio(r.predicted, r.actual),
                ]
            )
    return Table(HEADER, out)
