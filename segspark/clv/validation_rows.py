"""The CLV checks as rows of the ``clv_validation`` table (the scores stage writes them)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from segspark import schema as S


def clv_validation_rows(validation: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The CLV checks as one long table: tracking curve, frequency histogram, holdout by frequency."""

    def num(v: Any) -> float | None:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return f if f == f else None

    rows: list[tuple[Any, ...]] = []
    curve = validation.get("tracking_curve")
    if isinstance(curve, pd.DataFrame):
        for r in curve.itertuples(index=False):
            label = f"{r.week_end} ({'calibration' if r.calibration else 'holdout'})"
            rows.append(
                (S.CLV_VIEW_TRACKING, num(r.week), label, num(r.actual_cum), num(r.expected_cum), None)
            )
    hist = validation.get("frequency_histogram")
    if isinstance(hist, pd.DataFrame):
        for i, r in enumerate(hist.itertuples(index=False)):
            rows.append(
                (
                    S.CLV_VIEW_HISTOGRAM,
                    float(i),
                    str(r.repeat_purchases),
                    num(r.actual),
                    num(r.expected),
                    None,
                )
            )
    by_freq = validation.get("holdout_by_frequency")
    if isinstance(by_freq, pd.DataFrame):
        for r in by_freq.itertuples(index=False):
            rows.append(
                (
                    S.CLV_VIEW_HOLDOUT_BY_FREQUENCY,
                    num(r.frequency),
                    str(r.frequency),
                    num(r.actual),
                    num(r.predicted),
                    int(r.customers),  # type: ignore[arg-type]
                )
            )
    for view in (S.CLV_VIEW_HOLDOUT_VALUE_BY_BAND, S.CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT):
        frame = validation.get(view)
        if isinstance(frame, pd.DataFrame):
            for i, r in enumerate(frame.itertuples(index=False)):
                rows.append(
                    (view, float(i), str(r.label), num(r.actual), num(r.predicted), int(r.customers))  # type: ignore[arg-type]
                )
    return rows
