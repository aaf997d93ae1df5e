"""One plan per input table: its parsed columns, the condition of each of its rules and its clean
output columns. ``table_plan`` picks the table's; ``validation.validate`` runs it.

A rule's condition reads the parsed frame (and the helper columns ``keys.with_row_keys`` adds:
``_dup``, ``_row_min`` / ``_row_max``); the first rule a row breaks, in the table's precedence
(``rules.TABLE_RULES``), is the row's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark.config import QualityConfig
from segspark.ingest.checks import base_rates, order_conflicts, outlier_bound_value
from segspark.ingest.columns import (
    blank_to_null,
    col_or_null,
    is_true,
    not_finite,
    parse_double,
    parse_timestamp,
)
from segspark.ingest.rules import severity

Rules = dict[str, Callable[[DataFrame], Column]]
# transactions, an incremental refresh: the line copies a clean line an earlier run ingested
SEEN = "_dq_seen"
Extra = Callable[[DataFrame, Mapping[str, int]], DataFrame]


@dataclass
class Plan:
    """What ``validate`` does to one table: parse its columns, flag rows by its rules, keep its output."""

    parsed: dict[str, Column]  # canonical output columns, computed on the input (+ key columns)
    rules: Rules  # rule id -> condition on the parsed frame
    output: list[tuple[str, str]]  # clean output columns and types, in order
    keyed: bool = True  # partition by customer id (all tables but marketing_spend)
    # adds helper columns before the rules; gets the values of ``counts``
    extra: Extra | None = None
    counts: dict[str, Column] = field(default_factory=dict)  # aggregates over the input, by name
    held: list[DataFrame] = field(default_factory=list)  # persisted by ``extra``, released after the counts
    found: dict[str, float | None] = field(default_factory=dict)  # what ``extra`` computed: the outlier bound


def table_plan(
    df: DataFrame,
    table: str,
    cfg: QualityConfig,
    processing_ts: dt.datetime,
    currency_rates: DataFrame | None,
    pid: Column,
    whole: DataFrame | None = None,
) -> Plan:
    """The plan of ``table`` (a key of ``rules.TABLE_RULES``); ``pid`` is its customer id column.
    For transactions the currency rates are read first (``checks.base_rates``). ``whole``: the
    whole input when ``df`` is a batch of its new rows (an incremental refresh): the outlier bound
    is the whole input's, as a full refresh computes it."""
    if table == "transactions":
        rates = base_rates(cfg, currency_rates)
        return _transactions_plan(df, cfg, processing_ts, rates, pid, whole)
    if table == "customers":
        return _customers_plan(df, cfg, processing_ts, pid)
    if table == "events":
        return _events_plan(df, cfg, processing_ts, pid)
    return _spend_plan(df, cfg)


def _time_rules(ts: str, cfg: QualityConfig, processing_ts: dt.datetime) -> Rules:
    when = processing_ts if processing_ts.tzinfo else processing_ts.replace(tzinfo=dt.timezone.utc)
    latest = when + dt.timedelta(hours=cfg.future_tolerance_hours)
    earliest = dt.datetime.combine(cfg.earliest_date, dt.time(0), tzinfo=dt.timezone.utc)
    return {
        "future_timestamp": lambda d: F.col(ts) > F.lit(latest),
        "too_early_timestamp": lambda d: F.col(ts) < F.lit(earliest),
    }


# --- transactions -------------------------------------------------------------------------------------


def _transactions_plan(
    df: DataFrame,
    cfg: QualityConfig,
    processing_ts: dt.datetime,
    rates: dict[str, float] | None,
    pid: Column,
    whole: DataFrame | None = None,
) -> Plan:
    """Lines with amounts in the base currency; the order-id conflicts and the outlier bound are
    joined on by ``extra`` once the input has been counted."""
    parsed, amount, rate = _transactions_parsed(df, cfg, rates, pid)
    finite_amount = ~not_finite(F.abs(amount * rate))
    held: list[DataFrame] = []
    found: dict[str, float | None] = {}
    outliers = severity("amount_outlier", cfg) != "off"
    counts = {"_n_amounts": F.count_if(finite_amount)} if outliers and whole is None else {}
    # the bound's amounts: the input's, or with ``whole`` the whole input's
    amounts = transaction_amounts(whole if whole is not None else df, cfg, rates)
    extra = _transactions_extra(df, cfg, amounts, found, held)
    output = [
        (S.CUSTOMER_ID, "string"),
        (S.ORDER_ID, "string"),
        (S.ORDER_TS, "timestamp"),
        (S.AMOUNT, "double"),
        (S.QUANTITY, "int"),
        (S.PRODUCT_CATEGORY, "string"),
        (S.CHANNEL, "string"),
        (S.CURRENCY, "string"),
    ]
    rules = _transactions_rules(cfg, processing_ts)
    return Plan(parsed, rules, output, extra=extra, counts=counts, held=held, found=found)


def transaction_amounts(df: DataFrame, cfg: QualityConfig, rates: dict[str, float] | None) -> DataFrame:
    """The |amount| in the base currency (column ``_a``) of every line of a conformed input with a
    finite one: what the outlier bound is computed on."""
    _, amount, rate = _transactions_parsed(df, cfg, rates, F.lit(None).cast("string"))
    value = F.abs(amount * rate)
    return df.select(value.alias("_a")).where(~not_finite(value))


def _currency_rate(
    df: DataFrame, cfg: QualityConfig, rates: dict[str, float] | None
) -> tuple[Column, Column]:
    """(rate of the line's currency to the base, null when unknown; the clean rows' currency)."""
    cur, _ = col_or_null(df, S.CURRENCY, "string")
    base = cfg.currency.base.strip().upper()
    currency = F.coalesce(F.upper(blank_to_null(cur)), F.lit(base))
    if rates is None:  # no rates configured: amounts are taken as they are, in their own currency
        return F.lit(1.0), currency
    rate_map = F.create_map(*[F.lit(x) for kv in sorted(rates.items()) for x in kv])
    return F.try_element_at(rate_map, currency), F.lit(base)


def _transactions_parsed(
    df: DataFrame, cfg: QualityConfig, rates: dict[str, float] | None, pid: Column
) -> tuple[dict[str, Column], Column, Column]:
    """The parsed line columns, the source amount and its rate to the base currency."""
    ts, ts_type = col_or_null(df, S.ORDER_TS, "string")
    amt, amt_type = col_or_null(df, S.AMOUNT, "string")
    qty, qty_type = col_or_null(df, S.QUANTITY, "string")
    rate, out_currency = _currency_rate(df, cfg, rates)
    amount = parse_double(amt, amt_type)
    quantity = (
        qty.cast("int")
        if isinstance(qty_type, T.IntegralType)
        else parse_double(qty, qty_type).try_cast("int")
    )
    parsed = {
        S.CUSTOMER_ID: pid,
        S.ORDER_ID: blank_to_null(F.col(S.ORDER_ID)),
        S.ORDER_TS: parse_timestamp(ts, ts_type, cfg.timestamp_formats),
        "_amount_src": amount,
        S.AMOUNT: amount * rate,
        S.QUANTITY: quantity,
        S.PRODUCT_CATEGORY: blank_to_null(col_or_null(df, S.PRODUCT_CATEGORY, "string")[0]),
        S.CHANNEL: F.lower(blank_to_null(col_or_null(df, S.CHANNEL, "string")[0])),
        S.CURRENCY: out_currency,
        "_rate": rate,
    }
    return parsed, amount, rate


def _transactions_extra(
    df: DataFrame,
    cfg: QualityConfig,
    amounts: DataFrame,
    found: dict[str, float | None],
    held: list[DataFrame],
) -> Extra:
    """Adds ``_conflict_order`` and ``_bound`` (nulls when their rule is off); the bound (over
    ``amounts``, column ``_a``) is also kept in ``found["outlier_bound"]``."""

    def extra(d: DataFrame, counted: Mapping[str, int]) -> DataFrame:
        # Both helpers read the source again (only the columns they need) rather than the
        # pseudonymized, repartitioned frame: cheaper than hashing or shuffling those rows twice.
        if severity("order_id_conflict", cfg) != "off":
            conflicts, few = order_conflicts(df, held)
            d = d.join(
                F.broadcast(conflicts) if few else conflicts,
                on=F.col(S.ORDER_ID) == F.col("_conflict_order"),
                how="left",
            )
        else:
            d = d.withColumn("_conflict_order", F.lit(None).cast("string"))
        if severity("amount_outlier", cfg) != "off":
            bound = found["outlier_bound"] = outlier_bound_value(amounts, cfg, counted.get("_n_amounts"))
            d = d.withColumn("_bound", F.lit(bound).cast("double"))
        else:
            d = d.withColumn("_bound", F.lit(None).cast("double"))
        return d

    return extra


def _transactions_rules(cfg: QualityConfig, processing_ts: dt.datetime) -> Rules:
    cap = cfg.outlier_abs_cap
    return {
        "missing_customer_id": lambda d: F.col(S.CUSTOMER_ID).isNull(),
        "missing_order_id": lambda d: F.col(S.ORDER_ID).isNull(),
        "bad_timestamp": lambda d: F.col(S.ORDER_TS).isNull(),
        **_time_rules(S.ORDER_TS, cfg, processing_ts),
        "bad_amount": lambda d: not_finite(F.col("_amount_src")),
        "unknown_currency": lambda d: F.col("_rate").isNull(),
        "order_id_conflict": lambda d: F.col("_conflict_order").isNotNull(),
        # a copy of a line of this input, or (an incremental refresh) of one ingested before
        "duplicate_line": lambda d: F.col("_dup") | (F.col(SEEN) if SEEN in d.columns else F.lit(False)),
        "amount_outlier": lambda d: (
            (F.abs(F.col(S.AMOUNT)) > F.col("_bound"))
            | (F.lit(cap is not None) & (F.abs(F.col(S.AMOUNT)) > F.lit(cap if cap is not None else 0.0)))
        ),
    }


# --- customers, events, marketing spend ---------------------------------------------------------------


def _number_rule(raw: Column, dtype: T.DataType) -> tuple[Column, Column]:
    """(value as double, "present but not a finite number")."""
    value = parse_double(raw, dtype)
    present = blank_to_null(raw).isNotNull()
    return value, present & not_finite(value)


def _customers_plan(df: DataFrame, cfg: QualityConfig, processing_ts: dt.datetime, pid: Column) -> Plan:
    signup, signup_type = col_or_null(df, S.SIGNUP_TS, "string")
    age_raw, age_type = col_or_null(df, S.AGE, "string")
    by_raw, by_type = col_or_null(df, S.BIRTH_YEAR, "string")
    signup_ts = parse_timestamp(signup, signup_type, cfg.timestamp_formats)
    age, age_bad = _number_rule(age_raw, age_type)
    birth_year, by_bad = _number_rule(by_raw, by_type)
    year = processing_ts.year
    malformed = (
        (blank_to_null(signup).isNotNull() & signup_ts.isNull())
        | age_bad
        | is_true((age < cfg.min_age) | (age > cfg.max_age))
        | by_bad
        | is_true((birth_year < year - cfg.max_age) | (birth_year > year - cfg.min_age))
    )
    text = [S.ACQUISITION_CHANNEL, S.COUNTRY, S.GENDER, S.INCOME_BAND, S.INDUSTRY, S.COMPANY_SIZE]
    parsed = {
        S.CUSTOMER_ID: pid,
        S.SIGNUP_TS: signup_ts,
        **{c: blank_to_null(col_or_null(df, c, "string")[0]) for c in text},
        S.AGE: F.when(~not_finite(age), F.floor(age)).cast("int"),
        S.BIRTH_YEAR: F.when(~not_finite(birth_year), F.floor(birth_year)).cast("int"),
        "_malformed": malformed,
    }
    parsed[S.ACQUISITION_CHANNEL] = F.lower(parsed[S.ACQUISITION_CHANNEL])
    rules: Rules = {
        "missing_customer_id": lambda d: F.col(S.CUSTOMER_ID).isNull(),
        **_time_rules(S.SIGNUP_TS, cfg, processing_ts),
        "malformed_customer": lambda d: F.col("_malformed"),
        "customer_id_conflict": lambda d: F.col("_row_min") != F.col("_row_max"),
        "duplicate_line": lambda d: F.col("_dup"),
    }
    output = [
        (S.CUSTOMER_ID, "string"),
        (S.SIGNUP_TS, "timestamp"),
        (S.ACQUISITION_CHANNEL, "string"),
        (S.COUNTRY, "string"),
        (S.AGE, "int"),
        (S.BIRTH_YEAR, "int"),
        (S.GENDER, "string"),
        (S.INCOME_BAND, "string"),
        (S.INDUSTRY, "string"),
        (S.COMPANY_SIZE, "string"),
    ]
    return Plan(parsed, rules, output)


def _events_plan(df: DataFrame, cfg: QualityConfig, processing_ts: dt.datetime, pid: Column) -> Plan:
    ts, ts_type = col_or_null(df, S.EVENT_TS, "string")
    event_type = F.lower(blank_to_null(F.col(S.EVENT_TYPE)))
    parsed = {
        S.CUSTOMER_ID: pid,
        S.EVENT_TS: parse_timestamp(ts, ts_type, cfg.timestamp_formats),
        S.EVENT_TYPE: event_type,
        S.CHANNEL: F.lower(blank_to_null(col_or_null(df, S.CHANNEL, "string")[0])),
        S.DEVICE: F.lower(blank_to_null(col_or_null(df, S.DEVICE, "string")[0])),
    }
    rules: Rules = {
        "missing_customer_id": lambda d: F.col(S.CUSTOMER_ID).isNull(),
        "bad_timestamp": lambda d: F.col(S.EVENT_TS).isNull(),
        **_time_rules(S.EVENT_TS, cfg, processing_ts),
        "unknown_event_type": lambda d: ~is_true(F.col(S.EVENT_TYPE).isin(*S.EVENT_TYPES)),
        "duplicate_line": lambda d: F.col("_dup"),
    }
    output = [
        (S.CUSTOMER_ID, "string"),
        (S.EVENT_TS, "timestamp"),
        (S.EVENT_TYPE, "string"),
        (S.CHANNEL, "string"),
        (S.DEVICE, "string"),
    ]
    return Plan(parsed, rules, output)


def _spend_plan(df: DataFrame, cfg: QualityConfig) -> Plan:
    month, month_type = col_or_null(df, S.MONTH, "string")
    spend, spend_type = col_or_null(df, S.SPEND, "string")
    parsed = {
        S.MONTH: F.trunc(F.to_date(parse_timestamp(month, month_type, cfg.timestamp_formats)), "month"),
        S.CHANNEL: F.lower(blank_to_null(F.col(S.CHANNEL))),
        S.SPEND: parse_double(spend, spend_type),
    }
    rules: Rules = {
        "missing_channel": lambda d: F.col(S.CHANNEL).isNull(),
        "bad_timestamp": lambda d: F.col(S.MONTH).isNull(),
        "bad_amount": lambda d: not_finite(F.col(S.SPEND)) | (F.col(S.SPEND) < 0),
        "duplicate_line": lambda d: F.col("_dup"),
    }
    output = [(S.MONTH, "date"), (S.CHANNEL, "string"), (S.SPEND, "double")]
    return Plan(parsed, rules, output, keyed=False)
