"""One value basis for every play: expected incremental gross margin over the CLV horizon, minus the
play's cost.

For a play on a segment of n customers, over the next ``clv.horizon_months`` months:

- reference value v: what one customer the play succeeds with is expected to spend over the horizon:
  the segment's own mean CLV (retention, cross-sell, onboarding, VIP: the play protects or adds to
  what these customers already spend); for a first-purchase play (prospects), the mean CLV of recent
  first-time buyers (lifecycle stage ``new``); for a win-back play, the mean CLV of customers who
  came back after lapsing (lifecycle stage ``reactivated``);
- incremental margin = n x uplift x v x gross margin, where uplift is the assumed share of the
  reference value the play adds (``report.uplift``; for first-purchase and win-back plays: the share
  of the segment it converts or brings back) and gross margin is ``report.value.gross_margin``;
- cost = n x cost per contact + fixed cost (``report.value.cost_per_contact`` / ``fixed_cost``, else
  the preset's);
- net value = incremental margin - cost. Plays are ranked by net value, highest first; the total
  is the sum over the ranked plays.

A play whose reference value is missing (no CLV in the run, no recent first-time buyers, no
returning customers) is not valued with a default: it is left out of the ranking and the report
says why in one sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from segspark.report.data import ReportData
from segspark.schema import CLV, LIFECYCLE_STAGE

# lifecycle stage whose customers show what a converted prospect / a won-back customer is worth
PEER_STAGE: dict[str, str] = {"first_purchase": "new", "win_back": "reactivated"}


@dataclass(frozen=True)
class Valuation:
    """A play's reference value per customer, in words, or why it has none."""

    per_customer: float  # expected revenue over the horizon of one customer the play succeeds with
    basis: str  # what per_customer is, in plain words
    missing: str = ""  # why the play cannot be valued ("" when it can)

    @property
    def ok(self) -> bool:
        return not self.missing


def mean_clv(row: pd.Series | None) -> float:
    """A segment row's mean CLV (NaN without CLV scores)."""
    if row is None:
        return math.nan
    n = float(row.get(f"n_{CLV}", 0) or 0)
    return float(row[f"sum_{CLV}"]) / n if n > 0 else math.nan


def valuation(row: pd.Series, play: str, data: ReportData, horizon_months: int) -> Valuation:
    """The reference value of one play for one segment row (module docstring)."""
    months = f"the next {horizon_months} months"
    if not data.has.get(CLV):
        return Valuation(math.nan, "", "this run has no lifetime-value estimate to value it with")
    estimate = data.clv_validity is not None and data.clv_validity.fallback
    how = " (estimated from past spending)" if estimate else ""
    stage = PEER_STAGE.get(play)
    if stage is not None:
        life = data.segments.get(LIFECYCLE_STAGE)
        peer = life.row(stage) if life is not None else None
        v = mean_clv(peer)
        if not math.isfinite(v):
            who = "recent first-time buyers" if stage == "new" else "customers who came back after lapsing"
            return Valuation(math.nan, "", f"this run has too few {who} to show what the play would bring")
        what = "a recent first-time buyer" if stage == "new" else "a customer who came back after lapsing"
        return Valuation(v, f"expected spend of {what} over {months}{how}")
    v = mean_clv(row)
    if not math.isfinite(v):
        return Valuation(math.nan, "", "the segment has no lifetime-value estimate")
    return Valuation(v, f"the segment's expected spend per customer over {months}{how}")


def value_fields(
    customers: float, val: Valuation, uplift: float, margin: float, per_contact: float, fixed: float
) -> dict[str, float]:
    """Reference value, incremental margin, cost and net value of a valued play."""
    at_stake = customers * val.per_customer
    margin_gain = at_stake * uplift * margin
    cost = customers * per_contact + fixed
    return {
        "value_per_customer": val.per_customer,
        "value_at_stake": at_stake,
        "impact": margin_gain,
        "play_cost": cost,
        "net_value": margin_gain - cost,
    }
