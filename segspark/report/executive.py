"""The executive part of the report, in plain words: headline figures with their horizon and
definition, the one caveat on lifetime value (said once, as what it does to the numbers), the
primary segmentation (segment x lifecycle x value tier x persona), personas with their channel mix
and offer, the demographic conclusion, and the play ranking with its rule and assumptions.

Nothing here names a configuration key, a file, a table or a model's internals: those are in the
technical annex (:mod:`segspark.report.context`), and :mod:`segspark.report.audience` checks it.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from segspark.config import Settings
from segspark.report.data import OTHER, UNASSIGNED, ReportData
from segspark.report.fmt import TYPE_LABELS, WORDS, Fmt, Table, _as_float, _finite
from segspark.report.recommend import dominant_stage, play_for, play_settings
from segspark.schema import (
    CHURN_RISK,
    CLV,
    CUSTOMERS,
    LIFECYCLE_STAGE,
    PERSONA,
    REVENUE,
    RFM_SEGMENT,
    SEGMENT,
)

CROSS_TAB_TYPES: tuple[str, ...] = (RFM_SEGMENT, LIFECYCLE_STAGE, "value_tier", PERSONA)
CROSS_TAB_LABELS: dict[str, str] = {
    RFM_SEGMENT: "RFM segment",
    LIFECYCLE_STAGE: "Lifecycle",
    "value_tier": "Value tier",
    PERSONA: "Persona",
}
# a demographic attribute separates customers when its groups differ at least this much
SEPARATES_VALUE = 0.25  # relative difference of spend per customer between the extreme groups
SEPARATES_CHURN = 0.05  # difference of mean churn risk (probability) between the extreme groups


# lifecycle stages that stand alone as a segment of plays read as a group of customers
SEGMENT_WORDS: dict[str, str] = {"prospect": "Prospects", UNASSIGNED: "No purchase yet"}


def words(text: Any) -> str:
    """A label as a reader writes it: ``at_risk`` -> ``at risk``, ``prospect`` -> ``Prospects``."""
    return SEGMENT_WORDS.get(str(text), str(text).replace("_", " "))


def value_label(data: ReportData, months: int) -> str:
    """What the CLV figures are called on the executive pages."""
    fallback = data.clv_validity is not None and data.clv_validity.fallback
    return f"{'Estimated' if fallback else 'Expected'} spend, next {months} months"


def headline(data: ReportData, settings: Settings, fmt: Fmt) -> list[tuple[str, str, str]]:
    """Page 1's figures as (value, label, definition with its horizon)."""
    t, w = data.totals, WORDS[settings.report.preset]
    as_of = data.as_of_date.isoformat() if data.as_of_date else "the data's last day"
    months, days = settings.clv.horizon_months, settings.churn.horizon_days
    cards = [
        (fmt.count(t[CUSTOMERS]), w["Customers"], f"all known {w['customers']}, buyers and prospects"),
        (fmt.count(t["buyers"]), "Buyers", f"{w['customers']} with at least one purchase up to {as_of}"),
        (fmt.money(t[REVENUE]), "Net revenue to date", f"all orders up to {as_of}, net of returns"),
    ]
    if t[f"n_{CLV}"] > 0:
        how = (
            "projected from each customer's past spending"
            if "Estimated" in value_label(data, 1)
            else ("predicted customer lifetime value")
        )
        cards.append((fmt.money(t[f"sum_{CLV}"]), value_label(data, months), f"all {w['customers']}; {how}"))
    if t[f"n_{CHURN_RISK}"] > 0:
        avg = t[f"sum_{CHURN_RISK}"] / t[f"n_{CHURN_RISK}"]
        cards.append(
            (fmt.pct(avg, 0), "Churn risk", f"average probability of no purchase in the next {days} days")
        )
    return cards


def clv_caveat(data: ReportData, settings: Settings) -> str | None:
    """The one caveat on the lifetime-value figures, as what it does to the numbers (None: none)."""
    if not data.has.get(CLV):
        return None
    months = settings.clv.horizon_months
    figures = f"The {months}-month spend figures"
    v = data.clv_validity
    if v is None or not v.recorded:
        return f"{figures} come without a recorded accuracy check for this run: treat them as rough."
    if v.fallback:
        return (
            f"{figures} project each customer's past spending rate forward (no forecasting model passed "
            "its accuracy checks), so they do not allow for customers who have stopped buying: they "
            "overstate lapsed and occasional customers."
        )
    parts = []
    err = _as_float(v.chosen.get("holdout_total_error"))
    if v.valid is False:
        parts.append("the forecasting model failed its accuracy check on recent months held back from it")
    elif _finite(err) and abs(err) >= 0.10:
        more = "more" if err > 0 else "fewer"
        parts.append(
            f"on recent months held back from it, the forecast expected {abs(err):.0%} {more} "
            "purchases than customers made"
        )
    if v.spend_corr_ok is False and v.spend_model in (None, "gamma_gamma"):
        parts.append(
            "the forecast assumes a customer's order size does not depend on how often they buy, which "
            "does not hold here (frequent buyers also place larger orders), so customers with one or two "
            "orders are credited with larger orders than they are likely to place: their figures are "
            "overstated most"
        )
    if not parts:
        return None
    return f"{figures} are forecasts to read with care: " + "; ".join(parts) + "."


def segment_table(data: ReportData, settings: Settings, fmt: Fmt) -> tuple[str, Table] | None:
    """The primary segment type at a glance: size, revenue, spend per customer, expected spend and
    churn risk with their horizons, and the play (fits an A4 page: eight short columns)."""
    primary = data.primary_type()
    if primary is None or data.segments[primary].table.empty:
        return None
    view = data.segments[primary]
    plays = play_settings(settings)
    months, days = settings.clv.horizon_months, settings.churn.horizon_days
    header = ["Segment", "% of customers", "% of revenue", "Revenue per customer to date"]
    has_clv, has_churn = bool(data.has.get(CLV)), bool(data.has.get(CHURN_RISK))
    header += [f"Expected spend per customer, next {months} months"] * has_clv
    header += [f"Churn risk (no purchase in {days} days)"] * has_churn
    header.append("Play")
    rows = []
    for _, r in view.table.iterrows():
        pid = play_for(primary, r, settings.rfm.bins, dominant_stage(view, str(r[SEGMENT])))
        if str(r[SEGMENT]) == UNASSIGNED and primary != LIFECYCLE_STAGE:
            pid = "first_purchase"  # no RFM segment without a purchase: the prospects' play
        row = [words(r[SEGMENT]), fmt.pct(r["customer_share"]), fmt.pct(r["revenue_share"])]
        row.append(fmt.money(r[REVENUE] / r[CUSTOMERS] if r[CUSTOMERS] else None))
        row += [fmt.money(r.get(f"mean_{CLV}"))] * has_clv + [
            fmt.pct(r.get(f"mean_{CHURN_RISK}"), 0)
        ] * has_churn
        row.append(plays[pid].name if pid else "–")
        rows.append(row)
    return CROSS_TAB_LABELS.get(primary, words(primary)), Table(header, rows)


def cross_tab(data: ReportData, fmt: Fmt, months: int, limit: int = 10) -> Table | None:
    """RFM segment x lifecycle x value tier x persona (the types present), long format: customers,
    revenue and expected spend of each combination with at least the minimum segment size, largest
    revenue first; the rest pooled in one row so nothing below the minimum shows on its own."""
    cells = data.cells
    types = [t for t in CROSS_TAB_TYPES if cells is not None and f"seg__{t}" in cells.columns]
    if cells is None or len(types) < 2:
        return None
    keys = [f"seg__{t}" for t in types]
    sums = [c for c in (CUSTOMERS, REVENUE, f"sum_{CLV}", f"n_{CLV}") if c in cells.columns]
    g = cells.groupby(keys, as_index=False)[sums].sum().sort_values(REVENUE, ascending=False)
    shown = g[g[CUSTOMERS] >= data.k].head(limit)
    rest = g.drop(index=shown.index)
    has_clv = bool(data.has.get(CLV)) and f"sum_{CLV}" in g.columns
    total_rev = float(g[REVENUE].sum()) or math.nan
    header = [*(CROSS_TAB_LABELS[t] for t in types), "Customers", "% of revenue"]
    header += [f"Expected spend, next {months} months (total)"] * has_clv

    def line(labels: list[str], part: pd.DataFrame) -> list[str]:
        out = [*labels, fmt.count(part[CUSTOMERS].sum()), fmt.pct(float(part[REVENUE].sum()) / total_rev)]
        return out + [fmt.money(part[f"sum_{CLV}"].sum() if part[f"n_{CLV}"].sum() else None)] * has_clv

    rows = [line([words(r[k]) for k in keys], pd.DataFrame([r])) for _, r in shown.iterrows()]
    if not rest.empty:
        rows.append(line([f"all other combinations ({len(rest):,})", *[""] * (len(types) - 1)], rest))
    return Table(header, rows)


def _channel_text(data: ReportData, persona: str) -> str:
    mix = data.persona_channels
    if mix is None or persona not in mix.index:
        return "not recorded"
    row = mix.loc[persona].dropna().sort_values(ascending=False)
    parts = [f"{words(ch)} {share:.0%}" for ch, share in row.items() if share >= 0.05]
    return ", ".join(parts[:3]) or "not recorded"


def persona_cards(data: ReportData, settings: Settings, fmt: Fmt) -> list[dict[str, Any]]:
    """Each persona: size and revenue share, expected spend, preferred channels and the offer."""
    view = data.segments.get(PERSONA)
    if view is None:
        return []
    plays = play_settings(settings)
    months = settings.clv.horizon_months
    cards = []
    for _, r in view.table.iterrows():
        name = str(r[SEGMENT])
        if name in (UNASSIGNED, OTHER):
            continue
        pid = play_for(PERSONA, r, settings.rfm.bins, dominant_stage(view, name))
        facts = [
            ("Customers", f"{fmt.pct(r['customer_share'])} of all, {fmt.pct(r['revenue_share'])} of revenue"),
            (
                "Buying pattern",
                f"{fmt.num(r.get('mean_frequency'), 1)} orders, last one "
                f"{fmt.count(r.get('mean_recency_days'))} days ago on average",
            ),
        ]
        if data.has.get(CLV):
            facts.append((f"Expected spend ({months} months)", f"{fmt.money(r.get(f'mean_{CLV}'))} each"))
        channels = _channel_text(data, name)
        main = ""
        if channels != "not recorded":  # the executive part says once that channels are not recorded
            facts.append(("Orders by channel", channels))
            main = channels.split(" ")[0]
        offer = (
            (plays[pid].name + (f", sent through {main}, their main channel" if main else "")) if pid else "–"
        )
        cards.append({"name": name, "facts": facts, "offer": offer})
    return cards


def _spread(t: pd.DataFrame, col: str) -> tuple[float, str, str]:
    """(spread, highest group, lowest group) of ``col`` over the named groups of a demographic table."""
    named = t[~t[SEGMENT].isin([OTHER, "unknown"])].dropna(subset=[col])
    if len(named) < 2:
        return math.nan, "", ""
    hi, lo = named.loc[named[col].idxmax()], named.loc[named[col].idxmin()]
    return float(hi[col]) - float(lo[col]), str(hi[SEGMENT]), str(lo[SEGMENT])


def demographic_conclusion(data: ReportData, settings: Settings, fmt: Fmt) -> str | None:
    """One sentence computed from the demographic tables: which attribute separates spend per
    customer (by at least 25% between groups) or churn risk (by 5 points), or that none does."""
    if not data.demographics:
        return None
    found, checked = [], []
    for attr, t in data.demographics.items():
        label = words(attr).replace("age band", "age")
        checked.append(label)
        per = t.assign(_spend=t[REVENUE] / t[CUSTOMERS].where(t[CUSTOMERS] > 0))
        d, hi, lo = _spread(per, "_spend")
        base = float(per.loc[per[SEGMENT] == lo, "_spend"].iloc[0]) if lo else math.nan
        if _finite(d) and base > 0 and d / base >= SEPARATES_VALUE:
            found.append(
                f"{label} separates spend ({hi} {fmt.money(base + d)} vs {lo} {fmt.money(base)} per "
                "customer to date)"
            )
        if f"mean_{CHURN_RISK}" in t.columns:
            d, hi, lo = _spread(t, f"mean_{CHURN_RISK}")
            if _finite(d) and d >= SEPARATES_CHURN:
                low = float(t.loc[t[SEGMENT] == lo, f"mean_{CHURN_RISK}"].iloc[0])
                found.append(
                    f"{label} separates churn risk ({hi} {fmt.pct(low + d, 0)} vs {lo} {fmt.pct(low, 0)})"
                )
    if found:
        return "Demographics matter here: " + "; ".join(found) + "."
    return (
        f"Demographics do not separate customers here: groups by {', '.join(checked)} differ by less than "
        f"{SEPARATES_VALUE:.0%} in spend per customer and less than {SEPARATES_CHURN * 100:.0f} points in "
        "churn risk, so the plays target behaviour (recency, frequency, spend), not demographics."
    )


def ranking_table(recs: pd.DataFrame, fmt: Fmt) -> Table:
    """The ranked plays with their value and cost, and a total row."""
    header = [
        "#",
        "Play",
        "Segment",
        "Customers",
        "Extra margin",
        "Cost",
        "Net value",
        "Effort (1-5)",
        "Measured by",
    ]
    rows = [
        [
            str(r["rank"]),
            str(r["play_name"]),
            words(r["segment"]),
            fmt.count(r["customers"]),
            fmt.money(r["impact"]),
            fmt.money(r["play_cost"]),
            fmt.money(r["net_value"]),
            str(r["effort"]),
            str(r["test_design"]) if r["testable"] else "cannot be measured yet",
        ]
        for _, r in recs.iterrows()
    ]
    total = ["", "Total", "", fmt.count(recs["customers"].sum()), fmt.money(recs["impact"].sum())]
    rows.append([*total, fmt.money(recs["play_cost"].sum()), fmt.money(recs["net_value"].sum()), "", ""])
    return Table(header, rows)


def value_assumptions(settings: Settings, recs: pd.DataFrame, fmt: Fmt) -> list[str]:
    """The assumptions behind the net values, in words (the annex names the settings)."""
    v = settings.report.value
    plays = play_settings(settings)
    shown = list(dict.fromkeys(recs["play"])) if not recs.empty else []
    margin_default = " (the default)" if v.gross_margin == 0.4 else ""
    out = [
        f"Gross margin: {v.gross_margin:.0%} of net revenue{margin_default}.",
    ]
    for pid in shown:
        p = plays[pid]
        configured = pid in v.cost_per_contact or pid in v.fixed_cost
        effect = {
            "first_purchase": f"turns {p.uplift:.0%} of prospects into first-time buyers, each worth what a "
            "recent first-time buyer is expected to spend",
            "win_back": f"brings back {p.uplift:.0%} of lapsed customers, each worth what a returning "
            "customer is expected to spend",
        }.get(pid, f"raises its segment's expected spend by {p.uplift:.0%}")
        out.append(
            f"{p.name}: {effect}; costs {fmt.sym}{p.cost_per_contact:,.2f} per customer contacted plus "
            f"{fmt.money(p.fixed_cost)} to run" + ("." if configured else " (default costs).")
        )
    return out


def _merged_sentences(data: ReportData, w: dict[str, str]) -> list[str]:
    out = []
    for st, view in data.segments.items():
        if view.merged_segments:
            label = TYPE_LABELS.get(st, words(st))
            where = "are not shown" if view.suppressed_customers else "are grouped as Other"
            out.append(
                f"{view.merged_segments} {label} group(s) with fewer than {data.k} {w['customers']} each "
                f"({view.merged_customers:,} {w['customers']} in all) {where}, to protect privacy."
            )
    return out


def not_shown_plainly(data: ReportData, settings: Settings) -> list[str]:
    """What the executive pages cannot show because an input is missing or too small, one plain
    sentence each (the technical annex gives the details)."""
    w = WORDS[settings.report.preset]
    out: list[str] = []
    n = data.totals[CUSTOMERS]
    if n < data.k:
        out.append(
            f"Only {n:,.0f} {w['customers']} in this run, fewer than the minimum segment size of {data.k}: "
            f"no group of {w['customers']} can be shown on its own."
        )
    if not data.has.get(CLV):
        out.append("Lifetime value was not estimated in this run, so no play can be valued or ranked.")
    if not data.has.get(CHURN_RISK):
        out.append("Churn risk was not estimated in this run.")
    if not any("engaged_share_30d" in t.columns for t in data.kpis.values()):
        out.append(
            "There is no website or app activity in this run: conversion and engagement are not measured."
        )
    ltv = data.ltv_cac
    if ltv is None or not ltv["cac"].notna().any():
        out.append(
            "Marketing spend is missing, so acquisition cost and its payback (LTV to CAC) are not shown; "
            "no cost is assumed."
        )
    elif (ltv["level"] == "channel").any():
        known = ltv[ltv["level"] == "channel"]["cac_status"] == "known"
        if not known.all():
            out.append(
                f"Acquisition cost and its payback are shown only for the {int(known.sum())} channel(s) "
                f"whose marketing spend is recorded for every month they brought in {w['customers']}; "
                f"{int((~known).sum())} other channel(s) have gaps in their spend records."
            )
    if data.cohorts is None or data.cohorts_hidden:
        n = data.cohorts_hidden
        out.append(
            f"{n} monthly group(s) of new {w['customers']} have fewer than {data.k} {w['customers']} and are "
            "left out of the retention view."
            if n
            else "Retention by month of first purchase is not available."
        )
    out += _merged_sentences(data, w)
    primary = data.primary_type()
    if primary is not None:  # a pooled group gets no play: say so when it carries material revenue
        t = data.segments[primary].table
        material = t[
            (t[SEGMENT] == OTHER) & (t["revenue_share"] >= settings.report.value.material_revenue_share)
        ]
        for _, r in material.iterrows():
            out.append(
                f"The pooled group Other holds {r['revenue_share']:.0%} of revenue but gets no play of its "
                "own: its small segments have too few customers to target and test."
            )
    if data.clustering is None:
        out.append("Behavioural personas were not built in this run.")
    elif data.persona_channels is None:
        out.append("Orders by channel are not recorded, so the personas show no preferred channel.")
    if not data.demographics:
        out.append(f"No demographic data on {w['customers']}: no demographic view.")
    if data.first_run:
        out.append("This is the first run: movement between segments is shown from the next run on.")
    return out
