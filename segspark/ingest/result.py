"""The outcome of validating one input table, and the checks a run makes on it: reconciliation of the
counts, blocking (``fail``) rules and the quarantine share."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame

from segspark.config import ERASED_RULE
from segspark.errors import DataQualityError, SegsparkError

# the package's logger: log lines keep the name they had when ingest was one module
log = logging.getLogger("segspark.ingest")


@dataclass
class IngestResult:
    """The outcome of validating one input table."""

    table: str
    clean: DataFrame | None  # None: the transactions of a ``reuse`` refresh, whose orders stand
    quarantine: DataFrame
    rows_in: int
    rows_clean: int
    rows_quarantined: int
    by_rule: dict[str, int]
    severities: dict[str, str] = field(default_factory=dict)  # severity of every rule that fired
    pseudonymized: bool = False  # clean.customer_id already holds pseudonyms
    flagged: DataFrame | None = field(default=None, repr=False)  # the persisted frame behind both
    # transactions: the clean orders grouped in the validating pass (``silver.order_aggregates``
    # columns; ``silver.order_columns`` makes them the orders table), and the last clean line's time
    orders: DataFrame | None = field(default=None, repr=False)
    last_clean_ts: dt.datetime | None = None
    outlier_bound: float | None = None  # transactions: the amount_outlier rule's bound, when on

    def summary(self) -> dict[str, Any]:
        """Counts for the ``runs`` table and the report."""
        return {
            "table": self.table,
            "rows_in": self.rows_in,
            "rows_clean": self.rows_clean,
            "rows_quarantined": self.rows_quarantined,
            "by_rule": dict(self.by_rule),
        }

    def release(self) -> None:
        """Drop the cached flagged frame once clean and quarantine have been written."""
        if self.flagged is not None:
            self.flagged.unpersist()


def reconcile(result: IngestResult) -> None:
    """Fail when ``rows_in != rows_clean + rows_quarantined`` (rows lost or duplicated)."""
    total = result.rows_clean + result.rows_quarantined
    if result.rows_in != total or sum(result.by_rule.values()) != result.rows_quarantined:
        raise SegsparkError(
            f"{result.table}: reconciliation failed: rows_in={result.rows_in} but "
            f"rows_clean + rows_quarantined = {result.rows_clean} + {result.rows_quarantined} = {total} "
            f"(by rule: {result.by_rule})"
        )


def raise_on_fail(result: IngestResult) -> None:
    """Raise ``DataQualityError`` (exit code 3) if a rule with severity ``fail`` fired."""
    failed = {r: n for r, n in result.by_rule.items() if n and result.severities.get(r) == "fail"}
    if failed:
        rule, n = next(iter(failed.items()))
        more = (
            f" (also: {', '.join(f'{r}={c}' for r, c in list(failed.items())[1:])})"
            if len(failed) > 1
            else ""
        )
        raise DataQualityError(
            f"{result.table}: blocking quality rule '{rule}' failed on {n} row(s){more}; "
            f"see the quarantine table, or set quality.rules.{rule}=quarantine"
        )


def check_quarantine_share(result: IngestResult, max_share: float) -> None:
    """Raise ``DataQualityError`` (exit code 3) when more than ``max_share`` of the table's rows were
    quarantined (``quality.max_quarantine_share``): an absurd share means a broken feed or a wrong
    column mapping, and segments built on the few rows left would mislead."""
    # the rows of erased customers are not a quality finding: not counted against the share
    quarantined = result.rows_quarantined - result.by_rule.get(ERASED_RULE, 0)
    if result.rows_in == 0 or quarantined <= max_share * result.rows_in:
        return
    share = quarantined / result.rows_in
    top = sorted(
        ((r, n) for r, n in result.by_rule.items() if r != ERASED_RULE), key=lambda kv: (-kv[1], kv[0])
    )[:3]
    rules = ", ".join(f"{r}={n}" for r, n in top)
    raise DataQualityError(
        f"table '{result.table}': {quarantined} of {result.rows_in} rows quarantined "
        f"({share:.0%}, above quality.max_quarantine_share={max_share:g}); top rules: {rules}; "
        f"look at the quarantine table's rule, reason and raw columns, and check input.{result.table}"
        f".columns and quality.timestamp_formats"
    )


def log_summary(results: Sequence[IngestResult]) -> None:
    for res in results:
        rules = ", ".join(f"{r}={n}" for r, n in res.by_rule.items()) or "none"
        log.info(
            "%s: %d rows in, %d clean, %d quarantined (%s)",
            res.table,
            res.rows_in,
            res.rows_clean,
            res.rows_quarantined,
            rules,
        )
