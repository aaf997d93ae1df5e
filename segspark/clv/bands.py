"""The purchase model chosen per repeat band: ``clv.model: auto`` with ``clv.per_band: true`` may give
each repeat-purchase band of :data:`segspark.clv.validation.REPEAT_BANDS` its own transaction model.

Off by default: on the demo it brings band 0 to its holdout value (0.15x -> 0.98x) but the one-time
buyers' higher CLV moves the clustering off the planted archetypes (adjusted Rand index 0.850 ->
0.681, under the 0.8 the demo keeps), the error over the RFM segments rises (0.519 -> 0.617: Lost,
with no holdout purchase, gets some) and band 1 goes 0.75x -> 1.68x in value (its spend, not its
purchases, is over-predicted). README's CLV section has the figures.

Why: one model for everyone trades the bands against each other. On the demo MBG/CNBD-k (regular
buyers, whose long silence it reads as a departure) is the best single model, but it under-predicts
the irregular buyers with no or one repeat purchase (band 0 at 0.15x, band 1 at 0.75x their holdout
value), where a Poisson model (Pareto/NBD) is close; and the reverse for the regular buyers who
stopped.

How: every candidate is fitted on everyone (a band is not a sample to fit on: which band a customer
is in depends on the purchases the model explains). The holdout cells that rank the single models
(:func:`segspark.clv.validation.holdout_cells`, sums per (band, segment)) also give, with no other
Spark pass, the error of any assignment of the valid models to the bands: a band's cells take the
sums of its model. Every assignment is scored by the same error as the single models (the mean
|ln(predicted / actual)| over the bands and the segments) and the best is kept when it beats the
best single model by :data:`MIN_GAIN` (without segments, which cut across the bands, one model is
kept: the bands alone are the groups an assignment is chosen on). Customers are then scored with
their band's model (a Spark when-chain per column). A band with no customer at the calibration end
takes the best single model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from segspark.clv import models as M
from segspark.clv import validation as V

# the name of the per-band choice where a model's name is recorded (clv_fit, MLflow, runs.choices)
PER_BAND = "per_band"
# the per-band choice replaces the best single model only when its holdout error is lower by this
# share: an assignment picked among many on one holdout wins a little by chance alone
MIN_GAIN = 0.05
_COMPOSITE = "c"  # the cell-sum suffix of an assignment (holdout_cells' models are 0, 1, ...)


@dataclass(frozen=True)
class BandChoice:
    """The transaction model of each repeat band, with the holdout metrics of that assignment."""

    models: dict[str, str]  # band label -> model name, every band of REPEAT_BANDS
    holdout: dict[str, float] = field(default_factory=dict)

    @property
    def distinct(self) -> list[str]:
        """The models used, in band order."""
        return list(dict.fromkeys(self.models.values()))

    def text(self) -> str:
        """``0 pareto_nbd, 1 pareto_nbd, 2-3 mbgcnbd, 4+ mbgcnbd``."""
        return ", ".join(f"{band} {model}" for band, model in self.models.items())

    def fits(self, by_model: Mapping[str, M.FitResult]) -> dict[str, M.FitResult]:
        """Band label -> the fit of its model, from ``by_model`` (model name -> fit)."""
        return {band: by_model[model] for band, model in self.models.items()}

    def entries(self) -> dict[str, str]:
        """Flat ``band_model_<band>`` entries for the fit record (``band_model_2_3``, ``_4plus``)."""
        return {
            V.band_key(b).replace("holdout_band_ratio_", "band_model_"): m for b, m in self.models.items()
        }


def composite_cells(cells: pd.DataFrame, models: Mapping[str, str], index: Mapping[str, int]) -> pd.DataFrame:
    """``cells`` with the sums of an assignment (suffix ``_c``): each (band, segment) cell takes the
    sums of its band's model (``index``: model name -> its suffix in ``cells``)."""
    out = cells.copy()
    for stat in V.CELL_SUMS:
        col = np.zeros(len(cells))
        for band, model in models.items():
            mask = (cells["band"] == band).to_numpy()
            col[mask] = cells.loc[mask, f"{stat}_{index[model]}"].to_numpy(np.float64)
        out[f"{stat}_{_COMPOSITE}"] = col
    return out


def choose(
    cells: pd.DataFrame,
    names: list[str],
    valid: list[str],
    single: str,
    by_segment: bool,
    error_key: str,
) -> BandChoice | None:
    """The best assignment of the ``valid`` models to the repeat bands, by the holdout error
    ``error_key`` of :func:`segspark.clv.validation.cell_metrics` (ties: the lower MAE, then the fewer
    models, then the names); None when none beats ``single`` by :data:`MIN_GAIN` or there are no
    segments.
    ``names``: the models in the order of ``cells``' suffixes."""
    index = {name: i for i, name in enumerate(names)}
    present = [b for b, _, _ in V.REPEAT_BANDS if b in set(cells["band"])]
    # Without segments the error is the bands' alone, the very groups an assignment is chosen on:
    # each band would take its closest model and the error fall by construction. The segments cut
    # across the bands.
    if not by_segment or len(valid) < 2 or len(present) < 2:
        return None
    base = V.cell_metrics(cells, str(index[single]), by_segment)
    base_error = base.get(error_key, math.nan)
    if not math.isfinite(base_error):
        return None
    best: tuple[tuple[float, float, int, tuple[str, ...]], dict[str, str], dict[str, float]] | None = None
    for combo in itertools.product(sorted(valid), repeat=len(present)):
        if len(set(combo)) == 1:  # a single model: ranked by the candidates' own round
            continue
        models = dict(zip(present, combo, strict=True))
        metrics = V.cell_metrics(composite_cells(cells, models, index), _COMPOSITE, by_segment)
        error = metrics.get(error_key, math.nan)
        if not math.isfinite(error):
            continue
        key = (error, metrics.get("holdout_mae", math.inf), len(set(combo)), combo)
        if best is None or key < best[0]:
            best = (key, models, metrics)
    if best is None or best[0][0] > (1.0 - MIN_GAIN) * base_error:
        return None
    _, models, metrics = best
    every = {b: models.get(b, single) for b, _, _ in V.REPEAT_BANDS}
    return BandChoice(every, metrics)


def reason(choice: BandChoice, single: str, single_holdout: Mapping[str, float], single_reason: str) -> str:
    """Why the per-band choice: its holdout error against the best single model's, band by band."""

    def ratios(holdout: Mapping[str, float]) -> str:
        out = []
        for band, _, _ in V.REPEAT_BANDS:
            v = holdout.get(V.band_key(band), math.nan)
            out.append(f"{band} {v:.2f}x" if math.isfinite(v) else f"{band} n/a")
        return ", ".join(out)

    err, base = choice.holdout.get(V.HOLDOUT_ERROR, math.nan), single_holdout.get(V.HOLDOUT_ERROR, math.nan)
    return (
        f"per repeat band ({choice.text()}): holdout error {err:.3f} against {base:.3f} for {single} "
        f"for everyone, lower by more than {MIN_GAIN:.0%} (predicted/actual holdout purchases by band "
        f"{ratios(choice.holdout)}, against {ratios(single_holdout)}); the models compared: {single_reason}"
    )


def record(
    fit: dict[str, object],
    choice: BandChoice,
    single: str,
    final_fits: Mapping[str, M.FitResult],
) -> None:
    """Record the per-band choice in the stage's fit dict (``clv_fit`` rows, MLflow): the model of each
    band (``band_models`` and ``band_model_<band>``), the best single model (``primary_model``, whose
    fit statistics the dict's scalars are), every used model's parameters as ``<model>.<name>``, the
    assignment's holdout metrics as candidate :data:`PER_BAND` and its validity (valid: every model
    in it is; its holdout total error; the largest relative standard error of its models)."""
    fit["primary_model"] = single
    fit["band_models"] = choice.text()
    fit.update(choice.entries())
    for section in ("params", "se"):
        fit[section] = {
            f"{m}.{name}": value for m, f in final_fits.items() for name, value in getattr(f, section).items()
        }
    fit["calibration_fit"] = {"band_models": choice.text()}
    candidates = fit.get("candidates")
    if isinstance(candidates, dict):
        candidates[PER_BAND] = {**choice.holdout, "band_models": choice.text()}
    validity = fit.get("validity")
    if isinstance(validity, dict):
        used = [validity[m] for m in choice.distinct if isinstance(validity.get(m), dict)]
        empty: dict[str, object] = {}
        worst = max(used, key=lambda v: _finite_or(v.get("max_relative_se")), default=empty)
        validity[PER_BAND] = {
            "valid": True,
            "reason": None,
            "holdout_total_error": choice.holdout.get("holdout_total_error", math.nan),
            "max_relative_se": worst.get("max_relative_se", math.nan),
            "max_relative_se_param": worst.get("max_relative_se_param"),
        }


def _finite_or(v: object, default: float = -math.inf) -> float:
    return float(v) if isinstance(v, int | float) and math.isfinite(float(v)) else default
