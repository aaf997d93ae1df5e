"""The stakeholder report: executive summary, methodology, segment profiles and personas, KPIs,
visuals, ranked plays with A/B test plans, implementation plan, governance and appendix.

Entry point: :func:`build_report` (HTML + Markdown + PNG charts, plus the ``report_summary`` and
``recommendations`` tables for BI). It reads only the run's tables (and :class:`RunInfo`, which run
and which command), so a report rebuilt from a run's tables is that run's report.
"""

from __future__ import annotations

from segspark.report.data import RunInfo
from segspark.report.fmt import SUMMARY_COLUMNS
from segspark.report.recommend import RECOMMENDATION_COLUMNS, TOO_SMALL, sample_size_per_arm
from segspark.report.render import ReportResult, build_report

__all__ = [
    "RECOMMENDATION_COLUMNS",
    "SUMMARY_COLUMNS",
    "TOO_SMALL",
    "ReportResult",
    "RunInfo",
    "build_report",
    "sample_size_per_arm",
]
