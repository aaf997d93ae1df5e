"""How the report writes numbers and words: formatters, the table shape the templates draw, and the
vocabulary (labels, presets) shared by every section."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from segspark import schema as S
from segspark.schema import LIFECYCLE_STAGE, PERSONA, RFM_SEGMENT

if TYPE_CHECKING:
    pass

SUMMARY_COLUMNS: tuple[str, ...] = ("metric", "value", "unit", "text")


MAX_TABLE_COLUMNS = 9  # wider tables print as column groups (Table.parts): A4 fits about nine


# written after the report from what it returns: their versions cannot be in the runs row it reads
REPORT_TABLES: tuple[str, ...] = (S.REPORT_SUMMARY, S.RECOMMENDATIONS)


WORDS: dict[str, dict[str, str]] = {
    "retail": {
        "customers": "customers",
        "customer": "customer",
        "Customers": "Customers",
        "orders": "orders",
        "business": "B2C e-commerce",
    },
    "saas": {
        "customers": "accounts",
        "customer": "account",
        "Customers": "Accounts",
        "orders": "renewals and expansions",
        "business": "B2B SaaS",
    },
}


TYPE_LABELS: dict[str, str] = {
    RFM_SEGMENT: "RFM segment",
    LIFECYCLE_STAGE: "lifecycle stage",
    PERSONA: "persona",
    "value_tier": "value tier",
    "all": "all customers",
}


ENGAGEMENT_KPIS: tuple[str, ...] = ("conversion_rate_90d", "engaged_share_30d", "sessions_per_customer_30d")


FALLBACK_LABEL = "Estimated CLV (historical spend rate)"


def _finite(x: Any) -> bool:
    try:
        return x is not None and not pd.isna(x) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _as_float(x: Any) -> float:
    return float(x) if _finite(x) else math.nan


def fmt_int(x: Any) -> str:
    return f"{round(float(x)):,}" if _finite(x) else "–"


def fmt_money(x: Any, sym: str) -> str:
    if not _finite(x):
        return "–"
    v = float(x)
    return f"-{sym}{-v:,.0f}" if v < 0 else f"{sym}{v:,.0f}"


def fmt_pct(x: Any, digits: int = 1) -> str:
    return f"{float(x) * 100:.{digits}f}%" if _finite(x) else "–"


def fmt_num(x: Any, digits: int = 2) -> str:
    return f"{float(x):,.{digits}f}" if _finite(x) else "–"


def fmt_signed_pct(x: Any, digits: int = 1) -> str:
    """A signed share as a percentage: +23.7%, -3.1%."""
    return f"{float(x) * 100:+.{digits}f}%" if _finite(x) else "–"


def fmt_metric(x: Any) -> str:
    """A model metric: whole numbers as counts (e.g. customers), the rest with three decimals."""
    if not _finite(x):
        return "–"
    v = float(x)
    return fmt_int(v) if v.is_integer() and abs(v) >= 10 else fmt_num(v, 3)


class Fmt:
    """Formatters bound to the report's currency symbol (also used by the templates)."""

    def __init__(self, sym: str) -> None:
        self.sym = sym

    def count(self, x: Any) -> str:
        return fmt_int(x)

    def money(self, x: Any) -> str:
        return fmt_money(x, self.sym)

    def pct(self, x: Any, digits: int = 1) -> str:
        return fmt_pct(x, digits)

    def num(self, x: Any, digits: int = 2) -> str:
        return fmt_num(x, digits)

    def metric(self, x: Any) -> str:
        return fmt_metric(x)


@dataclass
class Table:
    """A table ready for both templates: header and rows of strings."""

    header: list[str]
    rows: list[list[str]]
    swatches: list[str] | None = None  # a colour per row (segment tables)

    def parts(self, max_cols: int = MAX_TABLE_COLUMNS) -> list[Table]:
        """The table as column groups of at most ``max_cols`` columns, each repeating the first
        (the key), so a wide table fits an A4 page instead of wrapping every cell."""
        if len(self.header) <= max_cols:
            return [self]
        step = max_cols - 1
        out = []
        for start in range(1, len(self.header), step):
            cols = [0, *range(start, min(start + step, len(self.header)))]
            out.append(
                Table(
                    [self.header[c] for c in cols], [[r[c] for c in cols] for r in self.rows], self.swatches
                )
            )
        return out
