"""The report's charts read as printed: no label over another, values in the cohort cells, counts
rounded, a first run's transitions chart replaced by the baseline. Pure matplotlib on small frames."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from segspark.report import charts as C
from segspark.report.print_check import PRINT_WIDTH_IN, print_problems, printed_scale
from segspark.schema import CUSTOMERS, FROM_SEGMENT, TO_SEGMENT


def _texts(fig: Figure) -> list[tuple[str, object]]:
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    return [(t.get_text(), C.text_box(t, renderer)) for ax in fig.axes for t in ax.texts]


def _crowded_plays() -> pd.DataFrame:
    """Eleven plays, several on one spot (same effort and impact), as the demo's #8/#9 and #10/#11."""
    rows = [
        ("Champions", 1, 9.0e5, 3464),
        ("Loyal", 2, 7.5e5, 9000),
        ("At Risk", 3, 7.4e5, 5000),
        ("Cannot Lose Them", 2, 5.0e5, 1200),
        ("Need Attention", 3, 3.0e5, 8000),
        ("Promising", 1, 2.0e5, 4000),
        ("New Customers", 1, 2.0e5, 4100),
        ("Hibernating", 4, 1.0e5, 7000),
        ("Lost", 4, 1.0e5, 7000),
        ("About to Sleep", 2, 0.9e5, 2500),
        ("Potential Loyalist", 2, 0.9e5, 2600),
    ]
    return pd.DataFrame(
        [
            {
                "rank": i + 1,
                "segment_type": "rfm_segment",
                "segment": s,
                "effort": e,
                "impact": v,
                "net_value": v,
                "horizon_months": 12,
                "customers": n,
            }
            for i, (s, e, v, n) in enumerate(rows)
        ]
    )


def test_impact_effort_labels_overlap_no_other_text_and_stay_inside(tmp_path: Path) -> None:
    plays = _crowded_plays()
    fig = C.impact_effort_chart(plays, {"rfm_segment": C.palette(plays["segment"])}, "$")
    C.to_png(fig, tmp_path / "impact_effort.png", dpi=110)  # the report's own rendering
    texts = _texts(fig)
    labels = {t for t, _ in texts}
    assert {f"#{r} {s}" for r, s in zip(plays["rank"], plays["segment"], strict=True)} <= labels
    overlapping = [(a, b) for (a, ba), (b, bb) in combinations(texts, 2) if ba.overlaps(bb)]  # type: ignore[attr-defined]
    assert overlapping == []
    assert print_problems(fig, 110, "impact_effort", laid_out=True) == []  # every text, as printed
    frame = fig.axes[0].get_window_extent(fig.canvas.get_renderer())  # type: ignore[attr-defined]
    for text, box in texts:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text  # type: ignore[attr-defined]
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1, text  # type: ignore[attr-defined]


def test_labels_on_one_point_without_placement_would_overlap(tmp_path: Path) -> None:
    """The check above can fail: the same labels at one fixed offset (the former drawing) overlap."""
    fig = C._fig(7.5, 5.0)
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    for label in ("#8 Hibernating", "#9 Lost"):
        ax.annotate(label, (0.5, 0.5), textcoords="offset points", xytext=(8, 4), fontsize=7)
    C.to_png(fig, tmp_path / "naive.png", dpi=110)
    (_, a), (_, b) = _texts(fig)
    assert a.overlaps(b)  # type: ignore[attr-defined]


def test_every_cohort_cell_shows_its_value_even_in_a_large_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cohorts, months = 24, 25
    values = rng.uniform(0.02, 0.6, size=(cohorts, months))
    values[:, 0] = 1.0
    for i in range(cohorts):  # the newest cohorts have the fewest months behind them
        values[i, cohorts - i + 1 :] = np.nan
    cohort_names = [f"2024-{i:02d}" for i in range(cohorts)]
    matrix = pd.DataFrame(values, index=cohort_names, columns=list(range(months)))
    fig = C.cohort_chart(matrix)
    C.to_png(fig, tmp_path / "cohorts.png", dpi=110)
    shown = [t.get_text() for t in fig.axes[0].texts]
    expected = [f"{v * 100:.0f}" for v in values[:, 1:].ravel() if np.isfinite(v)]  # whole percent
    assert sorted(shown) == sorted(expected)
    assert matrix.size > 400 and len(shown) == 300  # the former drawing dropped every value above 400 cells
    # ... and each prints at 7 pt or more on A4 without touching its neighbour (the former 5-6 pt
    # type in a 13-inch figure printed at about 3 pt)
    assert print_problems(fig, 110, "cohorts", laid_out=True) == []


def test_the_print_check_can_fail(tmp_path: Path) -> None:
    """A figure wider than the page shrinks in print (7 pt type falls under 7 pt); crowded texts overlap."""
    fig = Figure(figsize=(13.0, 4.0))  # the former cohort heatmap's width (charts now cap it)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "12%", fontsize=7)
    ax.text(0.505, 0.5, "34%", fontsize=7)
    C.to_png(fig, tmp_path / "wide.png", dpi=110)
    problems = print_problems(fig, 110, "wide", laid_out=True)  # as the report checks a saved chart
    assert any("'12%' prints at" in p for p in problems)
    assert "wide: '12%' overlaps '34%'" in problems
    assert printed_scale(fig, 110) == pytest.approx(PRINT_WIDTH_IN / fig.get_tightbbox().width, rel=1e-3)


def test_flow_labels_round_the_band_sizes() -> None:
    # float sums just under a whole number: 0.1 * 30 = 2.9999999999999996 customers
    flows = pd.DataFrame(
        {FROM_SEGMENT: ["A"] * 30 + ["B"], TO_SEGMENT: ["B"] * 30 + ["A"], CUSTOMERS: [0.1] * 30 + [1000.0]}
    )
    fig = C.transitions_chart(flows, {"A": "#1b7837", "B": "#2166ac"}, "rfm_segment", first_run=False)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert "A (3)" in texts and "B (3)" in texts
    assert "A (2)" not in texts


def test_a_first_runs_baseline_shows_counts_and_shares() -> None:
    flows = pd.DataFrame(
        {FROM_SEGMENT: [None] * 3, TO_SEGMENT: ["Champions", "Lost", "Loyal"], CUSTOMERS: [300, 600, 100]}
    )
    fig = C.baseline_chart(flows, {}, "rfm_segment")
    texts = [t.get_text().strip() for t in fig.axes[0].texts]
    assert texts == ["100 (10%)", "300 (30%)", "600 (60%)"]  # smallest at the bottom, largest on top
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["Loyal", "Champions", "Lost"]


def test_every_kpi_the_sql_can_emit_has_a_label_and_a_definition() -> None:
    import re

    from segspark.report import section_tables

    sql = (Path(section_tables.__file__).parents[1] / "sql" / "segment_kpis.sql").read_text()
    emitted = re.search(r"FOR kpi IN \((.*?)\)\)", sql, re.S)
    assert emitted
    names = {n.strip() for n in emitted.group(1).split(",")}
    shown = set(section_tables.KPI_LABELS)
    assert shown <= names and shown == set(section_tables.KPI_DEFINITIONS)
    wide = {"rfm_segment": pd.DataFrame(columns=["customers", "churn_rate", "not_a_kpi"])}
    assert section_tables.kpi_definitions(wide) == [
        ("Customers", section_tables.KPI_DEFINITIONS["customers"]),
        ("Churned", section_tables.KPI_DEFINITIONS["churn_rate"]),
    ]


def test_ltv_to_cac_only_where_the_channels_spend_is_complete() -> None:
    from segspark.report import fmt as fmt_module
    from segspark.report import section_tables

    fmt = fmt_module.Fmt("$")
    ltv = pd.DataFrame(
        {
            "level": ["channel", "channel", "channel", "segment"],
            "segment_type": ["acquisition_channel"] * 3 + ["rfm_segment"],
            "segment": ["email", "referral", "search", "Champions"],
            "new_customers": [500, 300, 800, 3532],
            "spend": [4_000.0, 100.0, None, None],
            "cac": [8.0, 0.5, None, 12.0],
            "cac_status": ["known", "partial_spend", "unknown_spend", "known"],
            "ltv_realized": [600.0, 75.0, 90.0, 900.0],
            "ltv_predicted": [700.0, 80.0, 95.0, 1000.0],
            "ltv_to_cac": [75.0, 150.0, None, 75.0],
            "ltv_predicted_to_cac": [87.5, 160.0, None, 83.3],
        }
    )
    ((label, table),) = section_tables.ltv_cac_tables(ltv, fmt, "rfm_segment", ["Champions"])
    assert label == "By acquisition channel"  # never by segment: every member counted as new
    rows = {r[0]: r for r in table.rows}
    assert set(rows) == {"email", "referral", "search"}
    assert (
        rows["email"][3:5] == ["$8", "complete"] and rows["email"][7] == "75.00"
    )  # a real ratio, not capped
    assert rows["referral"][3] == "–" and rows["referral"][7:] == ["–", "–"]  # partial spend: no ratio
    assert "no ratio" in rows["referral"][4] and "no spend recorded" in rows["search"][4]
    assert "every month in which the channel acquired customers" in section_tables.LTV_CAC_RULE
    fig = C.ltv_cac_chart(ltv, {}, "rfm_segment", 3.0)
    assert fig is not None
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["email"]
    assert len(fig.axes) == 1


def test_model_metrics_read_as_words_not_raw_dumps() -> None:
    from segspark.report import fmt as fmt_module
    from segspark.report import section_tables

    fmt = fmt_module.Fmt("$")
    assert section_tables.metric_words("clusters", 6.0, fmt) == "6 clusters"
    assert section_tables.metric_words("histogram_chi2", 133.981, fmt).startswith(
        "chi-square of the purchase-count histogram 134.0 (predicted vs. actual"
    )
    calinski = section_tables.metric_words("calinski_harabasz", 1234.56, fmt)
    assert calinski.startswith("Calinski-Harabasz index 1,235")
    assert section_tables.metric_words("some_new_metric", 0.5, fmt) == f"some new metric {fmt.metric(0.5)}"


def test_what_changed_since_the_last_run_compares_headline_figures() -> None:
    from segspark.report import fmt as fmt_module
    from segspark.report import sections

    fmt = fmt_module.Fmt("$")
    summary = pd.DataFrame(
        {
            "metric": ["customers", "revenue", "avg_churn_risk", "finding_1", "plays"],
            "value": [1100.0, 50_000.0, 0.25, 1.0, 5.0],
            "unit": ["customers", "currency", "share", "count", "count"],
            "text": [""] * 5,
        }
    )
    previous = pd.DataFrame(
        {
            "metric": ["customers", "revenue", "avg_churn_risk", "finding_1"],
            "value": [1000.0, 40_000.0, 0.20, 2.0],
        }
    )
    table = sections.changes_since_previous(summary, previous, fmt)
    assert table is not None
    rows = {r[0]: r[1:] for r in table.rows}
    assert set(rows) == {"Customers", "Revenue", "Avg churn risk"}  # plays: no previous value
    assert rows["Customers"] == [fmt.count(1000), fmt.count(1100), f"+{fmt.count(100)} (+10.0%)"]
    assert rows["Revenue"][2] == f"+{fmt.money(10_000)} (+25.0%)"
    assert rows["Avg churn risk"][2] == "+5.0 pts"
    assert sections.changes_since_previous(summary, None, fmt) is None


def test_pdf_printing_follows_report_pdf_and_fails_clearly(tmp_path: Path, monkeypatch: Any) -> None:
    from segspark.errors import EnvironmentProblem
    from segspark.report import pdf, render

    (tmp_path / "report.html").write_text("<html><body><h1>r</h1></body></html>")
    assert render._print_pdf(tmp_path, "off") is False and not (tmp_path / "report.pdf").exists()
    missing = str(tmp_path / "no-such-browser")
    monkeypatch.setenv("SEGSPARK_CHROMIUM", missing)
    assert pdf.find_chromium() == missing
    with pytest.raises(EnvironmentProblem, match="could not print"):
        pdf.print_pdf(tmp_path / "report.html", tmp_path / "report.pdf", missing)
    assert render._print_pdf(tmp_path, "auto") is False  # auto: logged, the run goes on
    with pytest.raises(EnvironmentProblem):
        render._print_pdf(tmp_path, "on")
