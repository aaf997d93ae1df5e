"""The stakeholder report built from small, explicit run tables.

Known answers come from the Python rows the tables are built from (plain sums and counts), never
from the report code. The browser test opens the HTML in a real headless Chromium.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import types as T

from segspark.config import Settings, load_settings
from segspark.report import RECOMMENDATION_COLUMNS, SUMMARY_COLUMNS, ReportResult, build_report

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
K = 25
AS_OF = dt.date(2025, 12, 31)
RUN_ID = "20260105T080000Z-abc123"
CHROMIUM_HINT = (
    "headless Chromium is needed for the report browser test: install it with "
    "`apt-get update && apt-get install -y chromium` (Debian package, /usr/bin/chromium), "
    "or point SEGSPARK_CHROMIUM at a Chromium binary"
)

# (rfm_segment, customers, lifecycle, r, f, m, monetary, frequency, recency, clv, churn, p_alive, persona,
#  value tier)
SPECS: list[tuple[Any, ...]] = [
    ("Champions", 60, "active", 5, 5, 5, 900.0, 12, 5, 1200.0, 0.05, 0.97, "Frequent big spenders", "high"),
    ("Loyal", 70, "active", 4, 4, 4, 400.0, 6, 30, 500.0, 0.15, 0.90, "Steady regulars", "standard"),
    (
        "Potential Loyalist",
        40,
        "active",
        4,
        2,
        3,
        150.0,
        2,
        20,
        200.0,
        0.25,
        0.85,
        "Steady regulars",
        "standard",
    ),
    ("New Customers", 40, "new", 5, 1, 1, 50.0, 1, 10, 90.0, 0.40, 0.95, "Recent one-timers", "standard"),
    ("At Risk", 60, "at_risk", 2, 4, 4, 500.0, 7, 200, 300.0, 0.62, 0.50, "Lapsed big spenders", "standard"),
    (
        "Cannot Lose Them",
        30,
        "at_risk",
        1,
        5,
        5,
        1100.0,
        10,
        300,
        450.0,
        0.70,
        0.40,
        "Lapsed big spenders",
        "high",
    ),
    ("Hibernating", 50, "churned", 2, 1, 2, 80.0, 1, 250, 20.0, 0.80, 0.30, "Lapsed one-timers", "standard"),
    ("Lost", 40, "churned", 1, 1, 1, 40.0, 1, 500, 5.0, 0.95, 0.10, "Lapsed one-timers", "standard"),
    ("Promising", 6, "new", 4, 1, 1, 45.0, 1, 40, 60.0, 0.45, 0.90, "Recent one-timers", "standard"),
    ("Need Attention", 4, "active", 3, 3, 3, 200.0, 3, 60, 150.0, 0.35, 0.80, "Steady regulars", "standard"),
]
PROSPECTS = 20
SMALL_SEGMENTS = ("Promising", "Need Attention")  # below K: merged into Other with the 20 unassigned

SEGMENTS_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType(), False),
        T.StructField("email", T.StringType()),  # must never reach the report
        T.StructField("recency_days", T.IntegerType()),
        T.StructField("frequency", T.LongType()),
        T.StructField("monetary", T.DoubleType()),
        T.StructField("r_score", T.IntegerType()),
        T.StructField("f_score", T.IntegerType()),
        T.StructField("m_score", T.IntegerType()),
        T.StructField("rfm_code", T.StringType()),
        T.StructField("rfm_segment", T.StringType()),
        T.StructField("lifecycle_stage", T.StringType()),
        T.StructField("cluster_id", T.IntegerType()),
        T.StructField("persona", T.StringType()),
        T.StructField("clv", T.DoubleType()),
        T.StructField("p_alive", T.DoubleType()),
        T.StructField("churn_risk", T.DoubleType()),
        T.StructField("value_tier", T.StringType()),
    ]
)


def pseudo(i: int) -> str:
    return hashlib.sha256(f"customer-{i}".encode()).hexdigest()[:24]


def customer_rows() -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    personas = sorted({s[12] for s in SPECS})
    i = 0
    for seg, n, stage, r, f, m, mon, freq, rec, clv, churn, alive, persona, tier in SPECS:
        for j in range(n):
            rows.append(
                (
                    pseudo(i),
                    f"person{i}@example.com",
                    rec + j % 7,
                    freq + j % 3,
                    mon + 5.0 * (j % 11),
                    r,
                    f,
                    m,
                    f"{r}{f}{m}",
                    seg,
                    stage,
                    personas.index(persona),
                    persona,
                    clv + 3.0 * (j % 13),
                    alive,
                    min(0.99, churn + 0.01 * (j % 5)),
                    tier,
                )
            )
            i += 1
    # edge rows: the last Lost customer returned more than it bought (no purchase, negative revenue,
    # CLV 0); the first Loyal customer has no churn score (null)
    lost = max(n for n, r in enumerate(rows) if r[9] == "Lost")
    edge = list(rows[lost])
    edge[3], edge[4], edge[13] = 0, -20.0, 0.0
    rows[lost] = tuple(edge)
    loyal = next(n for n, r in enumerate(rows) if r[9] == "Loyal")
    rows[loyal] = (*rows[loyal][:15], None, rows[loyal][16])
    for _ in range(PROSPECTS):
        rows.append(
            (
                pseudo(i),
                f"person{i}@example.com",
                *([None] * 8),
                "prospect",
                None,
                None,
                None,
                None,
                None,
                None,
            )
        )
        i += 1
    return rows


def pdf_rows() -> pd.DataFrame:
    return pd.DataFrame(customer_rows(), columns=SEGMENTS_SCHEMA.fieldNames())


def run_tables(spark: Any, rows: pd.DataFrame) -> dict[str, Any]:
    """The run's tables, built by hand in the shape of the real ones."""
    segs = spark.createDataFrame(customer_rows(), SEGMENTS_SCHEMA)
    # segment_kpis (long): customers, shares, revenue and avg_clv per RFM segment, computed here in pandas
    buyers = rows[rows["rfm_segment"].notna()]
    total_c, total_r = len(rows), rows["monetary"].fillna(0).sum()
    kpi_rows = []
    for seg, g in rows.assign(rfm_segment=rows["rfm_segment"].fillna("unassigned")).groupby("rfm_segment"):
        rev = float(g["monetary"].fillna(0).sum())
        purchases = float(g["frequency"].fillna(0).sum())
        for kpi, v in (
            ("customers", float(len(g))),
            ("customer_share", len(g) / total_c),
            ("revenue", rev),
            ("revenue_share", rev / total_r),
            ("orders_per_customer", purchases / len(g)),
            ("avg_order_value", rev / purchases if purchases else None),
            ("avg_clv", float(g["clv"].mean()) if g["clv"].notna().any() else None),
        ):
            kpi_rows.append(("rfm_segment", seg, kpi, None if v is None else float(v)))
    kpis = spark.createDataFrame(
        kpi_rows,
        "segment_type string, segment string, kpi string, value double",
    )
    grid = (
        buyers.groupby(["r_score", "f_score"])
        .agg(customers=("customer_id", "size"), revenue=("monetary", "sum"))
        .reset_index()
    )
    rfm_grid = spark.createDataFrame(
        [(int(a), int(b), int(c), float(d)) for a, b, c, d in grid.itertuples(index=False)],
        "r_score int, f_score int, customers long, revenue double",
    )
    cohort_rows = []
    for month, size, rates in (
        (dt.date(2025, 9, 1), 100, [1.0, 0.30, 0.22, 0.15]),
        (dt.date(2025, 10, 1), 120, [1.0, 0.25, 0.18]),
        (dt.date(2025, 11, 1), 10, [1.0, 0.5]),  # below K: hidden
        (dt.date(2025, 12, 1), 90, [1.0]),
    ):
        for m, rate in enumerate(rates):
            cohort_rows.append(
                (month, "all", "all", m, size, round(size * rate), rate, 1000.0 * rate, 10.0 * (m + 1))
            )
            cohort_rows.append(
                (month, "acquisition_channel", "email", m, size // 2, round(size * rate / 2), rate, 1.0, 1.0)
            )
    cohorts = spark.createDataFrame(
        cohort_rows,
        "cohort_month date, dimension string, dimension_value string, months_since_first int, "
        "cohort_size long, active_customers long, retention_rate double, revenue double, "
        "cumulative_revenue_per_customer double",
    )
    ltv_schema = (
        "level string, segment_type string, segment string, month date, new_customers long, spend double, "
        "cac double, cac_status string, cac_coverage double, ltv_customers long, ltv_realized double, "
        "ltv_predicted double, ltv_to_cac double, ltv_predicted_to_cac double, window_months int"
    )
    ltv = spark.createDataFrame(
        [
            (
                "channel",
                "acquisition_channel",
                "email",
                None,
                100,
                2000.0,
                20.0,
                "known",
                1.0,
                80,
                120.0,
                150.0,
                6.0,
                7.5,
                12,
            ),
            (
                "channel",
                "acquisition_channel",
                "paid_search",
                None,
                150,
                6000.0,
                40.0,
                "known",
                1.0,
                90,
                100.0,
                110.0,
                2.5,
                2.75,
                12,
            ),
            (
                "channel",
                "acquisition_channel",
                "social",
                None,
                10,
                500.0,
                50.0,
                "known",
                1.0,
                5,
                60.0,
                70.0,
                1.2,
                1.4,
                12,
            ),
            (
                "channel",
                "acquisition_channel",
                "organic",
                None,
                60,
                None,
                None,
                "unknown_spend",
                0.0,
                40,
                90.0,
                95.0,
                None,
                None,
                12,
            ),
            (
                "segment",
                "rfm_segment",
                "Champions",
                None,
                60,
                None,
                30.0,
                "known",
                1.0,
                50,
                400.0,
                1200.0,
                13.3,
                40.0,
                12,
            ),
            (
                "segment",
                "rfm_segment",
                "Lost",
                None,
                40,
                None,
                35.0,
                "known",
                1.0,
                40,
                40.0,
                5.0,
                1.1,
                0.14,
                12,
            ),
            (
                "channel_month",
                "acquisition_channel",
                "email",
                dt.date(2025, 11, 1),
                9,
                200.0,
                22.2,
                "known",
                1.0,
                0,
                None,
                140.0,
                None,
                6.3,
                12,
            ),
        ],
        ltv_schema,
    )
    transitions = spark.createDataFrame(
        [
            ("rfm_segment", "Champions", "Champions", 50),
            ("rfm_segment", "Loyal", "Champions", 10),
            ("rfm_segment", "Loyal", "Loyal", 60),
            ("rfm_segment", "At Risk", "At Risk", 55),
            ("rfm_segment", "At Risk", "Lost", 5),
            ("rfm_segment", "Lost", "Lost", 35),
            ("rfm_segment", None, "New Customers", 40),
            ("lifecycle_stage", "active", "active", 150),
            ("lifecycle_stage", "active", "at_risk", 30),
        ],
        "dimension string, from_segment string, to_segment string, customers long",
    )
    quarantine = spark.createDataFrame(
        [
            (RUN_ID, "transactions", "bad_amount", "amount is missing", '{"email": "leak@example.com"}'),
            (RUN_ID, "transactions", "bad_amount", "amount is missing", '{"amount": "x"}'),
            (RUN_ID, "transactions", "duplicate_line", "exact copy", '{"order_id": "o1"}'),
            ("older-run", "transactions", "bad_amount", "amount is missing", "{}"),
        ],
        "run_id string, source_table string, rule string, reason string, raw string",
    )
    return {
        "customer_segments": segs,
        "segment_kpis": kpis,
        "rfm_grid": rfm_grid,
        "cohort_retention": cohorts,
        "ltv_cac": ltv,
        "segment_transitions": transitions,
        "quarantine": quarantine,
    }


def stage_results() -> dict[str, Any]:
    ks = [2, 3, 4, 5, 6]
    sweep = pd.DataFrame(
        [
            {
                "algorithm": a,
                "k": k,
                "clusters": k,
                "wcss": 1000.0 / k + (50 if a == "bisecting_kmeans" else 0),
                "silhouette": 0.30 + (0.1 if k == 4 else 0.0),
                "calinski_harabasz": 200.0 + 10 * k,
                "davies_bouldin": 1.2 - 0.05 * k,
                "min_cluster_share": 0.05,
                "stability": 0.8,
                "fit_seconds": 0.1,
                "engine": "local",
            }
            for a in ("kmeans", "bisecting_kmeans")
            for k in ks
        ]
    )
    names = [
        "Frequent big spenders",
        "Lapsed big spenders",
        "Lapsed one-timers",
        "Recent one-timers",
        "Tiny cluster",
    ]
    profiles = pd.DataFrame(
        {
            "cluster_id": list(range(5)),
            "persona": names,
            "persona_description": [f"{n}: described in numbers." for n in names],
            "size": [60, 90, 90, 86, 5],
            "share": [0.14, 0.21, 0.21, 0.2, 0.01],
            "z_recency_days": [-1.0, 1.2, 1.5, -0.8, 0.0],
            "z_frequency": [1.8, 0.9, -0.9, -1.0, 0.0],
            "z_monetary": [1.9, 1.1, -1.0, -0.9, 0.0],
        }
    )
    chosen = {
        "algorithm": "kmeans",
        "k": 4,
        "reason": "kmeans k=4: best silhouette near the knee",
        "final_metrics": {"silhouette": 0.41, "davies_bouldin": 0.93},
    }
    clustering = SimpleNamespace(
        sweep=sweep, profiles=profiles, chosen=chosen, features=["recency_days", "frequency", "monetary"]
    )
    clv = {
        "fit": {
            "model": "bgnbd",
            "reason": "configured (clv.model=bgnbd)",
            "params": {"r": 0.5, "alpha": 4.0},
            "spend_model": "gamma_gamma",
            "calibration_end": "2025-10-01",
            "holdout_end": "2025-12-31",
            "value_tier_threshold": 800.0,
        },
        "validation": {"has_holdout": True, "holdout_mae": 0.42, "holdout_total_error_pct": -3.1},
    }
    return {"clustering": clustering, "clv": clv, "churn": {"auc": 0.83, "brier": 0.17}}


def context(results: dict[str, Any] | None = None) -> SimpleNamespace:
    info = SimpleNamespace(location="/data/transactions", format="delta", version=7)
    stats = SimpleNamespace(
        info=info,
        rows_in=5003,
        rows_clean=5000,
        rows_quarantined=3,
        by_rule={"bad_amount": 2, "duplicate_line": 1},
    )
    return SimpleNamespace(
        run_id=RUN_ID,
        as_of_date=AS_OF,
        inputs={"transactions": stats},
        outputs={"customer_segments": 3, "segment_kpis": 3},
        results=results or {},
    )


def settings(**report: Any) -> Settings:
    items = [f"report.min_segment_size={K}", *[f"report.{k}={v}" for k, v in report.items()]]
    return load_settings([], items)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pdf_rows()


@pytest.fixture(scope="module")
def built(
    spark: Any, rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ReportResult, Path, float]:
    out = tmp_path_factory.mktemp("reports")
    tables = run_tables(spark, rows)
    started = time.perf_counter()
    result = build_report(context(stage_results()), tables, out, settings())
    return result, out, time.perf_counter() - started


def summary_value(result: ReportResult, metric: str) -> float:
    s = result.summary.set_index("metric")
    return float(s.loc[metric, "value"])


def section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start : html.index("</section>", start)]


# --- tests ------------------------------------------------------------------------------------------


def test_files_are_written_and_copied_to_latest(built: tuple[ReportResult, Path, float]) -> None:
    result, out, seconds = built
    assert result.html_path == out / RUN_ID / "report.html"
    assert result.md_path.is_file() and result.html_path.is_file()
    pngs = sorted(p.name for p in result.figures_dir.glob("*.png"))
    expected = {
        "rfm_grid",
        "cohort_retention",
        "elbow",
        "indices_by_k",
        "cluster_profiles",
        "clv_distribution",
        "lifecycle_funnel",
        "segment_transitions",
        "revenue_by_segment",
        "ltv_cac",
        "impact_effort",
    }
    assert set(result.figures) == expected
    assert pngs == sorted(f"{n}.png" for n in expected)
    for p in result.figures_dir.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = out / "latest"
    assert (latest / "report.html").read_bytes() == result.html_path.read_bytes()
    assert sorted(p.name for p in (latest / "figures").glob("*.png")) == pngs
    md = result.md_path.read_text()
    for n in expected:  # Markdown shows the PNGs that sit beside it
        assert f"](figures/{n}.png)" in md
    assert list(result.summary.columns) == list(SUMMARY_COLUMNS)
    assert list(result.recommendations.columns) == list(RECOMMENDATION_COLUMNS)
    assert not list(out.glob(".*tmp"))  # no staging folder left behind
    print(f"report build on the test tables: {seconds:.2f} s")


def test_executive_summary_numbers_equal_the_tables(
    built: tuple[ReportResult, Path, float], rows: pd.DataFrame
) -> None:
    result, _, _ = built
    customers = len(rows)
    revenue = float(rows["monetary"].fillna(0).sum())
    buyers = int((rows["frequency"].fillna(0) > 0).sum())
    assert summary_value(result, "customers") == customers == 420
    assert summary_value(result, "buyers") == buyers
    assert summary_value(result, "revenue") == pytest.approx(revenue, abs=1e-6)
    assert summary_value(result, "total_clv") == pytest.approx(float(rows["clv"].sum()), abs=1e-6)
    champions = rows[rows["rfm_segment"] == "Champions"]
    assert summary_value(result, "top_segment_revenue_share") == pytest.approx(
        champions["monetary"].sum() / revenue
    )
    at_risk = rows[rows["rfm_segment"].isin(["At Risk", "Cannot Lose Them"])]
    assert summary_value(result, "value_at_risk") == pytest.approx(float(at_risk["clv"].sum()))
    scored = rows["churn_risk"].dropna()
    assert summary_value(result, "high_churn_risk_share") == pytest.approx(float((scored >= 0.6).mean()))
    # month-1 retention: size-weighted over the complete cells (Sep and Oct; Nov is below K, Dec is partial)
    assert summary_value(result, "retention_month_1") == pytest.approx((100 * 0.30 + 120 * 0.25) / 220)
    assert summary_value(result, "quarantined_rows") == 3  # this run's rows only
    assert summary_value(result, "moved_share_rfm_segment") == pytest.approx(15 / 215)

    html = section(result.html_path.read_text(), "summary")
    assert f">{customers:,}<" in html
    assert f">${revenue:,.0f}<" in html
    champions_share = 100 * champions["monetary"].sum() / revenue
    share = 100 * 60 / customers
    assert f"Champions are {share:.1f}% of customers and {champions_share:.1f}% of net revenue" in html
    assert (
        f"${float(at_risk['clv'].sum()):,.0f} of predicted CLV sits in At Risk and Cannot Lose Them "
        "(90 customers" in html
    )
    top = result.recommendations.head(3)
    for name, seg in zip(top["play_name"], top["segment"], strict=True):
        assert f"<b>{name}</b> for <b>{seg}</b>" in html


def test_small_segments_are_merged_into_other(
    built: tuple[ReportResult, Path, float], rows: pd.DataFrame
) -> None:
    result, _, _ = built
    html = result.html_path.read_text()
    md = result.md_path.read_text()
    profiles = section(html, "profiles")
    for seg in SMALL_SEGMENTS:
        assert f"{seg}</td>" not in profiles and f"| {seg} |" not in md
        assert seg not in set(result.recommendations["segment"])
    # Other = the two small segments + the unassigned prospects
    other = 6 + 4 + PROSPECTS
    assert result.data is not None
    view = result.data.segments["rfm_segment"]
    assert view.merged_segments == 3 and view.merged_customers == other
    assert view.row("Other")["customers"] == other
    assert view.row("Other")["revenue"] == pytest.approx(
        float(rows[rows["rfm_segment"].isin(SMALL_SEGMENTS)]["monetary"].sum())
    )
    assert view.table["customers"].min() >= K
    assert "3 RFM segment(s) with 30 customers merged into &ldquo;Other&rdquo;" in profiles
    # the same rule for the other groupings: small cohort, acquisition channel, flow and cluster are hidden
    data = result.data
    assert data.cohorts is not None and list(data.cohorts.index) == ["2025-09", "2025-10", "2025-12"]
    assert data.cohorts_hidden == 1
    assert "social" not in section(html, "kpis") and ">paid_search<" in section(html, "kpis")
    assert data.clustering is not None and "Tiny cluster" not in set(data.clustering["profiles"]["persona"])
    assert data.transitions is not None and (data.transitions["customers"] >= K).all()
    assert data.rfm_grid is not None and data.rfm_grid["customers"].dropna().min() >= K
    # lifecycle mix of Other: every stage has fewer than K customers in it, so only the pooled share shows
    assert "other stages 100%" in profiles
    assert summary_value(result, "segments_merged") >= 3


def test_no_personal_data_reaches_any_output(
    built: tuple[ReportResult, Path, float], rows: pd.DataFrame
) -> None:
    result, out, _ = built
    texts = [
        result.html_path.read_text(),
        result.md_path.read_text(),
        result.summary.to_csv(),
        result.recommendations.to_csv(),
    ]
    for text in texts:
        assert "@example.com" not in text
        assert not any(cid in text for cid in rows["customer_id"])
    for p in out.rglob("*"):
        assert p.suffix in {".html", ".md", ".png"} or p.is_dir()


def test_absent_stages_are_reported_not_fatal(spark: Any, rows: pd.DataFrame, tmp_path: Path) -> None:
    segs = run_tables(spark, rows)["customer_segments"].drop(
        "clv", "p_alive", "churn_risk", "value_tier", "persona", "cluster_id"
    )
    result = build_report(
        SimpleNamespace(run_id="bare-run", as_of_date=AS_OF),
        {"customer_segments": segs},
        tmp_path,
        settings(preset="saas"),
    )
    html = result.html_path.read_text()
    assert "No cohort retention table in this run" in html
    assert "CAC and LTV:CAC are unknown" in html
    assert "CLV was not modelled" in html
    assert "Behavioural clustering did not run" in html
    assert {"rfm_grid", "revenue_by_segment", "lifecycle_funnel", "impact_effort"} <= set(result.figures)
    assert "cohort_retention" not in result.figures and "clv_distribution" not in result.figures
    # saas wording and plays; without CLV the plays value revenue
    assert "accounts" in section(html, "summary")
    assert "Executive sponsor programme" in set(result.recommendations["play_name"])
    assert set(result.recommendations["value_basis"]) <= {
        "net revenue to date",
        "prospects x net revenue per buyer",
    }
    assert summary_value(result, "customers") == len(rows)


def _chromium() -> str:
    exe = os.environ.get("SEGSPARK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail(CHROMIUM_HINT)
    return exe


PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && e.target.src) || e.type).slice(0, 120));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) {
    return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  }).map(function (i) { return i.alt; });
  var out = document.createElement('pre');
  out.id = '__probe';
  var sizes = imgs.map(function (i) { return [i.alt, i.naturalWidth, i.naturalHeight]; });
  var probe = {images: imgs.length, broken: broken, errors: window.__errors, sizes: sizes};
  out.textContent = JSON.stringify(probe);
  document.body.appendChild(out);
});
</script>"""


def test_html_renders_in_headless_chromium(built: tuple[ReportResult, Path, float]) -> None:
    result, _, _ = built
    exe = _chromium()
    html = result.html_path.read_text()
    assert "<script" not in html.lower()  # the report itself runs no script ...
    assert not re.search(r'(src|href)="(https?:)?//', html)  # ... and loads nothing from the network
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(html.replace("<head>", "<head>" + PROBE, 1))
        dom = subprocess.run(
            [exe, *flags, f"--user-data-dir={tmp}/profile", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dom.returncode == 0, dom.stderr[-2000:]
        found = re.search(r'<pre id="__probe">(.*?)</pre>', dom.stdout, re.S)
        assert found, "the probe did not run: " + dom.stderr[-2000:]
        report = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        assert report["images"] == len(result.figures), report
        assert report["broken"] == [], report
        assert report["errors"] == [], report
        assert all(w > 100 and h > 100 for _, w, h in report["sizes"]), report
        assert "Uncaught" not in dom.stderr
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report.png"
        shot.unlink(missing_ok=True)
        cap = subprocess.run(
            [
                exe,
                *flags,
                f"--user-data-dir={tmp}/profile2",
                "--window-size=1280,6000",
                f"--screenshot={shot}",
                result.html_path.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cap.returncode == 0, cap.stderr[-2000:]
        assert (
            shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
        )
