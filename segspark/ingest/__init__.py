"""Ingest: conform source columns, apply the data-quality rules, split clean rows from quarantine.

``validate`` parses every input with ANSI-safe functions (``try_cast``, ``try_to_timestamp``), trims
strings, converts amounts to the base currency and flags each row with the first rule it breaks, in
the precedence of ``segspark.config.QUALITY_RULE_IDS``. The flagged frame is persisted once (the
transactions' as one row per order, grouped in the same pass: the lines are never materialized); one
aggregation counts clean rows and rows per rule, one count reads the input size, and
``reconcile`` checks ``rows_in == rows_clean + rows_quarantined``.

``check_quarantine_share`` stops a run (exit code 3) when more than ``quality.max_quarantine_share``
of a table's rows were quarantined: a broken feed or a wrong column mapping, not data to segment.

Quarantined rows keep their raw values as JSON, without the ``privacy.pii_columns`` fields and with
the customer id replaced by its pseudonym (or left out when no key is given), so no PII reaches the
quarantine table.

Rules (rule id: which tables, what it catches):

- ``missing_customer_id`` (all keyed tables): null or blank customer id.
- ``missing_order_id`` (transactions): null or blank order id.
- ``missing_channel`` (marketing_spend): null or blank channel.
- ``bad_timestamp``: order/event time or spend month missing or unparseable.
- ``future_timestamp``: a time later than the processing time plus ``future_tolerance_hours``.
  Orders after ``as_of_date`` are NOT flagged: they are holdout data.
- ``too_early_timestamp``: a time before ``earliest_date``.
- ``bad_amount``: amount/spend missing, non-numeric, NaN or infinite (spend also negative).
  Negative transaction amounts are returns and are kept.
- ``unknown_currency``: a currency other than the base without a rate, when rates are configured
  (``quality.currency.rates`` or a rate table). Without any rate, amounts are kept as they are.
- ``unknown_event_type``: an event type outside ``schema.EVENT_TYPES``.
- ``malformed_customer``: an unparseable signup time, or an age / birth year that is not a number
  or lies outside ``[min_age, max_age]``.
- ``order_id_conflict``: an order id seen with two or more customers (all its lines).
- ``customer_id_conflict``: a customer id on two or more different CRM rows (all of them).
- ``duplicate_line``: a row identical to an earlier one in its trimmed customer id and every other
  source column (the extra copies).
- ``amount_outlier``: ``|amount|`` above ``outlier_multiple`` x its ``outlier_quantile`` (exact from
  the top values, or ``percentile_approx`` on a sample for a very large tail: ``outlier_bound``), or
  above ``outlier_abs_cap`` when set. Below about
  1 / (1 - outlier_quantile) rows the quantile is the maximum itself: use the cap on tiny inputs.

The package, each module importing only those before it: ``columns`` (conform, parse), ``rules``
(which rules run on which table, severities, reasons), ``result`` (``IngestResult`` and the checks on
it), ``checks`` (the look-ups over the whole input: order-id conflicts, outlier bound, currency rates),
``plans`` (one plan per table: parsed columns, rule conditions, output), ``keys`` (row hash, copies,
CRM conflicts, pseudonyms), ``quarantine`` (the quarantine rows), ``orders`` (the transactions
grouped into orders in the validating pass), ``validation`` (``validate``) and ``increment`` (an
incremental refresh's batch of new lines, judged against what earlier runs ingested).
"""

from __future__ import annotations

from segspark.ingest.checks import (
    CONFLICTS_BROADCAST_ROWS,
    OUTLIER_SAMPLE_ROWS,
    OUTLIER_TOP_K,
    base_rates,
    order_conflicts,
    outlier_bound,
)
from segspark.ingest.columns import blank_to_null, conform, not_finite, parse_double, parse_timestamp
from segspark.ingest.increment import combined, history, why_full
from segspark.ingest.plans import transaction_amounts
from segspark.ingest.result import IngestResult, check_quarantine_share, log_summary, raise_on_fail, reconcile
from segspark.ingest.rules import DEFAULT_SEVERITY, TABLE_RULES, rule_reasons, severity
from segspark.ingest.validation import History, validate, validate_inputs
from segspark.schema import SOURCE_KEY

__all__ = [
    "CONFLICTS_BROADCAST_ROWS",
    "DEFAULT_SEVERITY",
    "OUTLIER_SAMPLE_ROWS",
    "OUTLIER_TOP_K",
    "SOURCE_KEY",
    "TABLE_RULES",
    "History",
    "IngestResult",
    "base_rates",
    "blank_to_null",
    "check_quarantine_share",
    "combined",
    "conform",
    "history",
    "log_summary",
    "not_finite",
    "order_conflicts",
    "outlier_bound",
    "parse_double",
    "parse_timestamp",
    "raise_on_fail",
    "reconcile",
    "rule_reasons",
    "severity",
    "transaction_amounts",
    "validate",
    "validate_inputs",
    "why_full",
]
