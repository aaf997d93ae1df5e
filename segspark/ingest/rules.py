"""Which quality rules run on which input table, how severe each is, and the reason a quarantined row
carries (the rule ids and their precedence: ``segspark.config.QUALITY_RULE_IDS``)."""

from __future__ import annotations

from segspark import schema as S
from segspark.config import ERASED_RULE, QUALITY_RULE_IDS, QualityConfig

# Rules evaluated per input table (each list in precedence order, a sub-sequence of QUALITY_RULE_IDS).
TABLE_RULES: dict[str, tuple[str, ...]] = {
    "transactions": (
        "missing_customer_id",
        ERASED_RULE,
        "missing_order_id",
        "bad_timestamp",
        "future_timestamp",
        "too_early_timestamp",
        "bad_amount",
        "unknown_currency",
        "order_id_conflict",
        "duplicate_line",
        "amount_outlier",
    ),
    "customers": (
        "missing_customer_id",
        ERASED_RULE,
        "future_timestamp",
        "too_early_timestamp",
        "malformed_customer",
        "customer_id_conflict",
        "duplicate_line",
    ),
    "events": (
        "missing_customer_id",
        ERASED_RULE,
        "bad_timestamp",
        "future_timestamp",
        "too_early_timestamp",
        "unknown_event_type",
        "duplicate_line",
    ),
    "marketing_spend": ("missing_channel", "bad_timestamp", "bad_amount", "duplicate_line"),
}
# The column that dates a row of each keyed input: a row of an erased customer dated after the
# erasure (a purchase, event or signup since) is new and taken; one dated up to it, or undated, not.
DATED_BY: dict[str, str] = {"transactions": S.ORDER_TS, "customers": S.SIGNUP_TS, "events": S.EVENT_TS}
DEFAULT_SEVERITY = "quarantine"
ERASED_REASON = "the customer was erased (segspark erase) and the row is dated up to the erasure"
for _rules in TABLE_RULES.values():  # each table's rules keep the global precedence order
    assert list(_rules) == sorted(_rules, key=QUALITY_RULE_IDS.index), _rules


def rule_reasons(cfg: QualityConfig) -> dict[str, str]:
    """Human reasons per rule id, with the thresholds of ``cfg`` filled in."""
    cap = f" or above the cap {cfg.outlier_abs_cap:g}" if cfg.outlier_abs_cap else ""
    return {
        "missing_customer_id": "customer id is missing or blank",
        ERASED_RULE: ERASED_REASON,
        "missing_order_id": "order id is missing or blank",
        "missing_channel": "channel is missing or blank",
        "bad_timestamp": "timestamp is missing or cannot be parsed",
        "future_timestamp": (
            f"timestamp is more than {cfg.future_tolerance_hours:g} h after the processing time"
        ),
        "too_early_timestamp": f"timestamp is before the earliest plausible date {cfg.earliest_date}",
        "bad_amount": "amount is missing, not a number, NaN or infinite (spend: or negative)",
        "unknown_currency": f"currency has no rate to the base currency {cfg.currency.base}",
        "unknown_event_type": f"event type is not one of {', '.join(S.EVENT_TYPES)}",
        "malformed_customer": (
            f"signup time unparseable, or age/birth year not a number or outside "
            f"{cfg.min_age}..{cfg.max_age} years"
        ),
        "order_id_conflict": "the same order id belongs to more than one customer",
        "customer_id_conflict": "the same customer id appears on different CRM rows",
        "duplicate_line": "exact copy of an earlier row",
        "amount_outlier": (
            f"|amount| above {cfg.outlier_multiple:g} x its {cfg.outlier_quantile:g} quantile{cap}"
        ),
    }


def severity(rule: str, cfg: QualityConfig) -> str:
    if rule == ERASED_RULE:
        return DEFAULT_SEVERITY
    return cfg.rules.get(rule, DEFAULT_SEVERITY)
