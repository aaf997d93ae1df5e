"""The executive part's words and tables, from small hand-made aggregates (pandas only): the one
CLV caveat, the headline definitions, the primary cross-tab, the demographic conclusion."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import pytest

from segspark.config import load_settings
from segspark.report.audience import executive_problems
from segspark.report.data import ClvValidity, ReportData
from segspark.report.executive import clv_caveat, cross_tab, demographic_conclusion, headline
from segspark.report.fmt import Fmt

FMT = Fmt("$")
SETTINGS = load_settings([], [])


def data(**extra: Any) -> ReportData:
    totals = {"customers": 1000.0, "buyers": 900.0, "revenue": 50_000.0}
    totals |= {"sum_clv": 40_000.0, "n_clv": 900.0, "sum_churn_risk": 450.0, "n_churn_risk": 900.0}
    base: dict[str, Any] = {
        "run_id": "r",
        "as_of_date": dt.date(2025, 12, 31),
        "k": 50,
        "totals": totals,
        "segments": {},
        "has": {"clv": True, "churn_risk": True},
    }
    return ReportData(**(base | extra))


def validity(**kw: Any) -> ClvValidity:
    chosen = {"valid": kw.pop("valid", True), "holdout_total_error": kw.pop("err", 0.02), "chosen": True}
    return ClvValidity(recorded=True, model="bgnbd", models={"bgnbd": chosen}, **kw)


def test_the_clv_caveat_says_what_the_check_does_to_the_numbers() -> None:
    # nothing to say: a valid model, a small holdout error, the spend check passed
    assert clv_caveat(data(clv_validity=validity(spend_corr_ok=True)), SETTINGS) is None
    # the spend check failed for Gamma-Gamma: occasional buyers are overstated, said in words
    text = clv_caveat(data(clv_validity=validity(spend_corr_ok=False, spend_model="gamma_gamma")), SETTINGS)
    assert text is not None and "customers with one or two orders" in text and "12-month" in text
    assert executive_problems(text) == []
    # a spend model that conditions on frequency does not make that assumption: no such sentence
    other = validity(spend_corr_ok=False, spend_model="frequency_conditioned")
    assert clv_caveat(data(clv_validity=other), SETTINGS) is None
    # a large holdout error is said with its direction and size
    text = clv_caveat(data(clv_validity=validity(err=-0.31, spend_corr_ok=True)), SETTINGS)
    assert text is not None and "31% fewer purchases than customers made" in text
    fallback = ClvValidity(recorded=True, model="historical_rate", fallback=True)
    text = clv_caveat(data(clv_validity=fallback), SETTINGS)
    assert text is not None and "past spending rate" in text and executive_problems(text) == []


def test_every_headline_figure_carries_its_horizon_and_definition() -> None:
    cards = {label: (value, d) for value, label, d in headline(data(), SETTINGS, FMT)}
    assert cards["Churn risk"] == ("50%", "average probability of no purchase in the next 90 days")
    assert cards["Expected spend, next 12 months"][0] == "$40,000"
    assert cards["Net revenue to date"][1] == "all orders up to 2025-12-31, net of returns"


def cells() -> pd.DataFrame:
    rows = [
        ("Champions", "active", "high", "Big spenders", 300, 30_000.0, 24_000.0),
        ("Loyal", "active", "standard", "Regulars", 400, 12_000.0, 10_000.0),
        ("At Risk", "at_risk", "standard", "Regulars", 200, 6_000.0, 2_000.0),
        ("At Risk", "at_risk", "high", "Big spenders", 30, 1_500.0, 900.0),  # below k = 50
        ("Lost", "churned", "standard", "Lapsed", 20, 500.0, 100.0),  # below k
    ]
    cols = ["seg__rfm_segment", "seg__lifecycle_stage", "seg__value_tier", "seg__persona"]
    df = pd.DataFrame(rows, columns=[*cols, "customers", "revenue", "sum_clv"])
    return df.assign(n_clv=df["customers"])


def test_the_cross_tab_ties_the_four_views_and_hides_small_combinations() -> None:
    table = cross_tab(data(cells=cells()), FMT, 12)
    assert table is not None
    assert table.header[:4] == ["RFM segment", "Lifecycle", "Value tier", "Persona"]
    assert table.rows[0] == ["Champions", "active", "high", "Big spenders", "300", "60.0%", "$24,000"]
    assert [r[0] for r in table.rows] == ["Champions", "Loyal", "At Risk", "all other combinations (2)"]
    assert table.rows[-1][4:] == ["50", "4.0%", "$1,000"]  # 30 + 20 customers pooled, never shown alone
    assert sum(int(r[4]) for r in table.rows) == 950


def demo_table(spend: list[float], churn: list[float]) -> pd.DataFrame:
    groups = ["18-24", "25-34", "35-44", "unknown"]
    customers = [200.0, 300.0, 250.0, 250.0]
    return pd.DataFrame(
        {
            "segment": groups,
            "customers": customers,
            "revenue": [c * s for c, s in zip(customers, spend, strict=True)],
            "mean_churn_risk": churn,
        }
    )


def test_the_demographic_conclusion_is_computed_from_the_groups() -> None:
    flat = {
        "age_band": demo_table([50, 52, 48, 10], [0.40, 0.42, 0.41, 0.9]),
        "gender": demo_table([50, 51, 50, 50], [0.4, 0.4, 0.41, 0.4]),
    }
    text = demographic_conclusion(data(demographics=flat), SETTINGS, FMT)
    # 'unknown' is not a group: its low spend and high churn separate nothing
    assert text is not None and text.startswith("Demographics do not separate customers here")
    assert "age, gender" in text
    apart = {"age_band": demo_table([30, 52, 80, 50], [0.55, 0.42, 0.30, 0.4])}
    text = demographic_conclusion(data(demographics=apart), SETTINGS, FMT)
    assert text == (
        "Demographics matter here: age separates spend (35-44 $80 vs 18-24 $30 per customer to date); "
        "age separates churn risk (18-24 55% vs 35-44 30%)."
    )
    assert demographic_conclusion(data(), SETTINGS, FMT) is None


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("Champions are 17.7% of customers and 70.8% of net revenue.", True),
        ("See report.value.gross_margin.", False),
        ("The spend status is unknown_spend.", False),
        ("Saved under s3://bucket/reports/latest.", False),
    ],
)
def test_the_audience_check_on_single_sentences(text: str, clean: bool) -> None:
    assert (executive_problems(text) == []) == clean
