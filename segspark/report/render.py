"""Build the report: collect -> recommend -> charts -> HTML + Markdown + PNGs, and the BI tables.

:func:`build_report` is the one entry point. It writes ``<out_dir>/<run_id>/`` (``report.html``,
``report.md``, ``figures/*.png``) and copies the folder to ``<out_dir>/latest/``; it returns the
``report_summary`` and ``recommendations`` tables as pandas DataFrames for the pipeline to write.

The HTML is self-contained: inline CSS, the PNGs embedded as base64 data URIs, no script and no
network resource, so it opens offline and prints. The Markdown has the same text with the PNGs
beside it. Every number shown is formatted from the collected aggregates.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from segspark.config import Settings
from segspark.errors import EnvironmentProblem, SegsparkError
from segspark.report import charts as C
from segspark.report.collect import collect
from segspark.report.context import report_context
from segspark.report.data import ReportData, RunInfo
from segspark.report.fmt import Fmt
from segspark.report.print_check import print_problems
from segspark.report.recommend import plays_and_gaps
from segspark.report.section_tables import Validity
from segspark.report.sections import clv_validity, findings, not_shown, summary_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)


LATEST = "latest"


FIGURES = "figures"


# charts drawing CLV: their captions carry the CLV validity line
# (annex charts only: the executive part states the caveat once, on page 1)
CLV_CHARTS: tuple[str, ...] = ("clv_distribution", "ltv_cac")


@dataclass
class ReportResult:
    """What :func:`build_report` produced."""

    html_path: Path
    md_path: Path
    pdf_path: Path | None  # None when report.pdf is off, or auto and no Chromium was found
    figures_dir: Path
    latest_dir: Path
    summary: pd.DataFrame  # report_summary: metric, value, unit, text
    recommendations: pd.DataFrame  # see recommend.RECOMMENDATION_COLUMNS
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    data: ReportData | None = field(default=None, repr=False)  # the collected aggregates
    # what the report could not show (too small, skipped, absent), one plain sentence each; the
    # pipeline may record them as the run's warnings
    not_shown: list[str] = field(default_factory=list)
    # chart texts under 7 pt or overlapping at A4 print size (report.print_check); empty when legible
    print_problems: list[str] = field(default_factory=list)


def _print_pdf(folder: Path, mode: str) -> bool:
    """``report.pdf`` from ``report.html`` in ``folder`` (see :mod:`segspark.report.pdf`)."""
    from segspark.report import pdf

    if mode == "off":
        return False
    exe = pdf.find_chromium()
    if exe is None:
        if mode == "on":
            raise EnvironmentProblem(
                "report.pdf is on but no Chromium was found: install chromium or set SEGSPARK_CHROMIUM"
            )
        log.info("report PDF not written: no Chromium found (install chromium or set SEGSPARK_CHROMIUM)")
        return False
    started = time.perf_counter()
    try:
        pdf.print_pdf(folder / "report.html", folder / "report.pdf", exe)
    except EnvironmentProblem as exc:
        if mode == "on":
            raise
        # auto: the HTML and Markdown are the report; a browser that cannot print does not fail the run
        log.warning("report PDF not written: %s", exc)
        (folder / "report.pdf").unlink(missing_ok=True)
        return False
    log.info("report PDF printed in %.1f s", time.perf_counter() - started)
    return True


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("segspark.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["mdcell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


def _palettes(data: ReportData) -> dict[str, dict[str, str]]:
    out = {st: C.palette(v.names()) for st, v in data.segments.items()}
    if data.transitions is not None:
        for dim, g in data.transitions.groupby("dimension"):
            names = [*out.get(str(dim), {}), *g["from_segment"].dropna(), *g["to_segment"].dropna()]
            out[str(dim)] = {**C.palette(names), **out.get(str(dim), {})}
    return out


def _draw_charts(
    data: ReportData,
    recs: pd.DataFrame,
    palettes: dict[str, dict[str, str]],
    validity: Validity | None,
    figures_dir: Path,
    settings: Settings,
) -> list[dict[str, Any]]:
    """Draw every chart to ``figures_dir`` as PNG; the templates' chart entries (CLV charts carry
    the CLV validity line in their caption)."""
    cfg = settings.report
    chart_list = C.make_charts(
        data, recs, palettes, cfg.currency_symbol, settings.rfm.bins, cfg.ltv_cac_target
    )
    charts = []
    for ch in chart_list:
        png = C.to_png(ch.figure, figures_dir / f"{ch.name}.png", cfg.figure_dpi)
        problems = print_problems(ch.figure, cfg.figure_dpi, ch.name, laid_out=True)
        for text in problems:
            log.warning("chart not legible at A4: %s", text)
        caption = ch.caption
        if validity is not None and ch.name in CLV_CHARTS:
            caption = f"{caption} {validity.text}"
        charts.append(
            {
                "name": ch.name,
                "title": ch.title,
                "caption": caption,
                "validity": validity.status if validity is not None and ch.name in CLV_CHARTS else None,
                "file": f"{FIGURES}/{ch.name}.png",
                "uri": C.data_uri(png),
                "print_problems": problems,
            }
        )
    return charts


def _render_templates(context: dict[str, Any], folder: Path) -> None:
    """``report.html`` and ``report.md`` in ``folder``, from the same context."""
    env = _env()
    (folder / "report.html").write_text(
        env.get_template("report.html.j2").render(**context), encoding="utf-8"
    )
    (folder / "report.md").write_text(env.get_template("report.md.j2").render(**context), encoding="utf-8")


def _publish(staging: Path, run_dir: Path, out_dir: Path) -> Path:
    """Move the staged report to ``run_dir`` and copy it to ``latest/``; returns ``latest/``."""
    # replace this run's folder and latest/ in one step each, so readers never see half a report
    shutil.rmtree(run_dir, ignore_errors=True)
    staging.rename(run_dir)
    latest = out_dir / LATEST
    latest_tmp = out_dir / f".{LATEST}.tmp"
    shutil.rmtree(latest_tmp, ignore_errors=True)
    shutil.copytree(run_dir, latest_tmp)
    shutil.rmtree(latest, ignore_errors=True)
    latest_tmp.rename(latest)
    return latest


def build_report(
    tables: Mapping[str, DataFrame | None], run: RunInfo, out_dir: Path, settings: Settings
) -> ReportResult:
    """Build the report of one run from its tables and return where it is plus the
    ``report_summary`` and ``recommendations`` tables (pandas; the pipeline writes them).

    ``tables``: Spark DataFrames read from the lakehouse by table name, restricted to the run
    (snapshot tables: its ``as_of_date`` partition; ``quarantine`` and ``runs``: its ``run_id``
    rows); ``customer_segments`` is required, the others optional (see :func:`collect`). ``run``:
    the run described and the command building the report. ``out_dir``: the reports root,
    normally ``<output.path>/reports``. Nothing comes from memory: the same tables give the same
    report.
    """
    started = time.perf_counter()
    run_id = str(run.run_id or "")
    if not run_id or not all(ch.isalnum() or ch in "-_" for ch in run_id):
        raise SegsparkError(f"report: run id {run_id!r} cannot name a report folder")
    cfg = settings.report
    data = collect(run, tables, settings)
    recs, gaps = plays_and_gaps(data, settings)
    fmt = Fmt(cfg.currency_symbol)
    found = findings(data, settings, fmt)
    validity = clv_validity(data)
    missing = not_shown(data, recs, settings) + gaps
    summary = summary_table(data, recs, found, settings, validity, missing)
    palettes = _palettes(data)

    out_dir = Path(out_dir)
    run_dir = out_dir / run_id
    staging = out_dir / f".{run_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    figures_dir = staging / FIGURES
    figures_dir.mkdir(parents=True)
    charts = _draw_charts(data, recs, palettes, validity, figures_dir, settings)
    context = report_context(data, recs, charts, found, palettes, settings, missing, summary, gaps)
    _render_templates(context, staging)
    pdf_written = _print_pdf(staging, cfg.pdf)
    latest = _publish(staging, run_dir, out_dir)
    seconds = time.perf_counter() - started
    log.info("report written to %s in %.1f s (%d charts)", run_dir, seconds, len(charts))
    return ReportResult(
        html_path=run_dir / "report.html",
        md_path=run_dir / "report.md",
        pdf_path=run_dir / "report.pdf" if pdf_written else None,
        figures_dir=run_dir / FIGURES,
        latest_dir=latest,
        summary=summary,
        recommendations=recs,
        figures=[str(c["name"]) for c in charts],
        seconds=seconds,
        data=data,
        not_shown=missing,
        print_problems=[p for c in charts for p in c["print_problems"]],
    )
