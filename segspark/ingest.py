"""Ingest: conform source columns, apply the data-quality rules, split clean rows from quarantine.

``validate`` parses every input with ANSI-safe functions (``try_cast``, ``try_to_timestamp``), trims
strings, converts amounts to the base currency and flags each row with the first rule it breaks, in
the precedence of ``segspark.config.QUALITY_RULE_IDS``. The flagged frame is persisted once; one
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
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark.config import QUALITY_RULE_IDS, PrivacyConfig, QualityConfig
from segspark.errors import DataQualityError, InputError, SegsparkError
from segspark.privacy import mark_pseudonymized, pseudonym_of

log = logging.getLogger(__name__)

# Rules evaluated per input table (each list in precedence order, a sub-sequence of QUALITY_RULE_IDS).
TABLE_RULES: dict[str, tuple[str, ...]] = {
    "transactions": (
        "missing_customer_id",
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
        "future_timestamp",
        "too_early_timestamp",
        "malformed_customer",
        "customer_id_conflict",
        "duplicate_line",
    ),
    "events": (
        "missing_customer_id",
        "bad_timestamp",
        "future_timestamp",
        "too_early_timestamp",
        "unknown_event_type",
        "duplicate_line",
    ),
    "marketing_spend": ("missing_channel", "bad_timestamp", "bad_amount", "duplicate_line"),
}
DEFAULT_SEVERITY = "quarantine"
for _rules in TABLE_RULES.values():  # each table's rules keep the global precedence order
    assert list(_rules) == sorted(_rules, key=QUALITY_RULE_IDS.index), _rules

# Internal column names of the flagged frame.
_RULE = "_dq_rule"
_RAW = "_dq_raw"
_HASH = "_dq_hash"
_PSEUDONYM = "_dq_pseudonym"
SOURCE_KEY = S.SOURCE_KEY
# The outlier quantile is exact while the tail above it has at most OUTLIER_TOP_K rows; beyond, it is
# estimated on a seeded sample of OUTLIER_SAMPLE_ROWS rows.
OUTLIER_TOP_K = 100_000
OUTLIER_SAMPLE_ROWS = 2_000_000
# Conflicting order ids broadcast from the driver up to this many (about 100 MB as a hash relation of
# ids); more (a feed whose order id is not an order key) join by a shuffle of the lines instead.
CONFLICTS_BROADCAST_ROWS = 1_000_000


def rule_reasons(cfg: QualityConfig) -> dict[str, str]:
    """Human reasons per rule id, with the thresholds of ``cfg`` filled in."""
    cap = f" or above the cap {cfg.outlier_abs_cap:g}" if cfg.outlier_abs_cap else ""
    return {
        "missing_customer_id": "customer id is missing or blank",
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
    return cfg.rules.get(rule, DEFAULT_SEVERITY)


@dataclass
class IngestResult:
    """The outcome of validating one input table."""

    table: str
    clean: DataFrame
    quarantine: DataFrame
    rows_in: int
    rows_clean: int
    rows_quarantined: int
    by_rule: dict[str, int]
    severities: dict[str, str] = field(default_factory=dict)  # severity of every rule that fired
    pseudonymized: bool = False  # clean.customer_id already holds pseudonyms
    flagged: DataFrame | None = field(default=None, repr=False)  # the persisted frame behind both

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
    if result.rows_in == 0 or result.rows_quarantined <= max_share * result.rows_in:
        return
    share = result.rows_quarantined / result.rows_in
    top = sorted(result.by_rule.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    rules = ", ".join(f"{r}={n}" for r, n in top)
    raise DataQualityError(
        f"table '{result.table}': {result.rows_quarantined} of {result.rows_in} rows quarantined "
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


# --- conform ------------------------------------------------------------------------------------------


def conform(df: DataFrame, table: str, mapping: Mapping[str, str]) -> DataFrame:
    """Rename source columns to canonical names (``mapping``: canonical -> source); keep the others.

    Raises ``InputError`` naming the table and column when a mapped source column or a required
    canonical column is missing, or when a rename would clash with an existing column.
    """
    if table not in S.INPUT_COLUMNS:
        raise InputError(f"unknown input table '{table}'; expected one of {', '.join(S.INPUT_COLUMNS)}")
    columns = list(df.columns)
    sources: dict[str, str] = {}
    for canonical, source in mapping.items():
        if source not in columns:
            raise InputError(
                f"{table}: column '{source}' (mapped to '{canonical}') not found; columns are {columns}"
            )
        if source in sources:
            raise InputError(
                f"{table}: column '{source}' is mapped to both '{sources[source]}' and '{canonical}'"
            )
        if canonical in columns and canonical != source and canonical not in mapping.values():
            raise InputError(
                f"{table}: column '{canonical}' exists and '{source}' is also mapped to it; "
                f"drop or rename one of them"
            )
        sources[source] = canonical
    out = df.select(*[F.col(c).alias(sources[c]) if c in sources else F.col(c) for c in columns])
    required, _optional = S.INPUT_COLUMNS[table]
    for name in required:
        if name not in out.columns:
            raise InputError(
                f"{table}: required column '{name}' is missing; columns are {columns} "
                f"(map it with input.{table}.columns.{name}=<source column>)"
            )
    return out


# --- parsing helpers (Column -> Column) ------------------------------------------------------------


def blank_to_null(c: Column) -> Column:
    """A value as trimmed text, null when empty (ingest's rule for every text column; the report's too)."""
    trimmed = F.trim(c.cast("string"))
    return F.when(trimmed != "", trimmed)


def parse_timestamp(c: Column, dtype: T.DataType, formats: Sequence[str] = ()) -> Column:
    """A timestamp from a timestamp, date or text column; null where it cannot be parsed."""
    if isinstance(dtype, T.TimestampType):
        return c
    if isinstance(dtype, (T.DateType, T.TimestampNTZType)):
        return c.cast("timestamp")
    text = blank_to_null(c)
    tries = [F.try_to_timestamp(text, F.lit(fmt)) for fmt in formats]
    return F.coalesce(*tries, F.try_to_timestamp(text)) if tries else F.try_to_timestamp(text)


def parse_double(c: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.NumericType):
        return c.cast("double")
    return blank_to_null(c).try_cast("double")


def not_finite(c: Column) -> Column:
    """Null, NaN or +-infinity."""
    return c.isNull() | F.isnan(c) | (F.abs(c) == F.lit(float("inf")))


def _true(c: Column) -> Column:
    return F.coalesce(c, F.lit(False))


# --- validate -----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    parsed: dict[str, Column]  # canonical output columns, computed on the input (+ key columns)
    rules: dict[str, Callable[[DataFrame], Column]]  # rule id -> condition on the parsed frame
    output: list[tuple[str, str]]  # clean output columns and types, in order
    keyed: bool = True  # partition by customer id (all tables but marketing_spend)
    # adds helper columns before the rules; gets the values of ``counts``
    extra: Callable[[DataFrame, Mapping[str, int]], DataFrame] | None = None
    counts: dict[str, Column] = field(default_factory=dict)  # aggregates over the input, by name
    held: list[DataFrame] = field(default_factory=list)  # persisted by ``extra``, released after the counts


def _col_or_null(df: DataFrame, name: str, kind: str) -> tuple[Column, T.DataType]:
    if name in df.columns:
        return F.col(name), df.schema[name].dataType
    return F.lit(None).cast(kind), T.NullType()


def _rates(cfg: QualityConfig, currency_rates: DataFrame | None) -> dict[str, float] | None:
    """Units of the base currency per unit of each currency; None when no rate is configured."""
    if not cfg.currency.rates and currency_rates is None:
        return None
    rates = {k.strip().upper(): float(v) for k, v in cfg.currency.rates.items()}
    if currency_rates is not None:
        missing = {"currency", "rate"} - set(currency_rates.columns)
        if missing:
            raise InputError(f"currency rate table lacks column(s) {sorted(missing)}; needs currency, rate")
        # a reference table of currencies: small, so it is read to the driver and validated there
        rows = currency_rates.select(
            F.upper(F.trim(F.col("currency"))).alias("c"), F.col("rate").try_cast("double").alias("r")
        ).collect()
        seen: set[str] = set()
        for row in rows:
            if row["c"] in seen:
                raise InputError(f"currency rate table: currency '{row['c']}' appears more than once")
            seen.add(row["c"])
            if row["c"] is None or row["r"] is None or not row["r"] > 0:
                raise InputError(f"currency rate table: bad row currency={row['c']!r} rate={row['r']!r}")
            rates[row["c"]] = float(row["r"])
    for cur, rate in rates.items():
        if not rate > 0:
            raise InputError(f"quality.currency.rates.{cur}: rate must be > 0, got {rate}")
    rates[cfg.currency.base.strip().upper()] = 1.0
    return rates


def _time_rules(
    ts: str, cfg: QualityConfig, processing_ts: dt.datetime
) -> dict[str, Callable[[DataFrame], Column]]:
    when = processing_ts if processing_ts.tzinfo else processing_ts.replace(tzinfo=dt.timezone.utc)
    latest = when + dt.timedelta(hours=cfg.future_tolerance_hours)
    earliest = dt.datetime.combine(cfg.earliest_date, dt.time(0), tzinfo=dt.timezone.utc)
    return {
        "future_timestamp": lambda d: F.col(ts) > F.lit(latest),
        "too_early_timestamp": lambda d: F.col(ts) < F.lit(earliest),
    }


def order_conflicts(df: DataFrame, held: list[DataFrame] | None = None) -> tuple[DataFrame, bool]:
    """Order ids carried by two or more customers (column ``_conflict_order``), exactly, and whether
    they are few enough to broadcast (at most ``CONFLICTS_BROADCAST_ROWS``).

    Grouping 10M string order ids costs as much as the main shuffle, so the search runs in two
    passes: first over 64-bit hashes (order hash -> min and max customer hash, partially aggregated
    before its shuffle), which finds every conflicting order plus rare hash collisions between
    orders; then the string ids of just those candidate orders are grouped and checked exactly.
    A conflict is missed only if two different customer ids of one order share their xxhash64
    (probability about 2**-64 per pair). The candidates are persisted and counted (appended to
    ``held`` for the caller to release): their number is the source's, not the configuration's, so
    above the limit both steps join by shuffling instead of broadcasting them from the driver.
    """
    pairs = df.select(
        blank_to_null(F.col(S.ORDER_ID)).alias("_o"), blank_to_null(F.col(S.CUSTOMER_ID)).alias("_c")
    ).where(F.col("_o").isNotNull() & F.col("_c").isNotNull())
    candidates = (
        pairs.groupBy(F.xxhash64("_o").alias("_oh"))
        .agg(F.min(F.xxhash64("_c")).alias("_lo"), F.max(F.xxhash64("_c")).alias("_hi"))
        .where(F.col("_lo") != F.col("_hi"))
        .select("_oh")
        .persist()
    )
    if held is not None:
        held.append(candidates)
    few = candidates.count() <= CONFLICTS_BROADCAST_ROWS
    shipped = F.broadcast(candidates) if few else candidates
    conflicts = (
        pairs.join(shipped, on=F.xxhash64("_o") == F.col("_oh"), how="left_semi")
        .groupBy("_o")
        .agg(F.min("_c").alias("_lo"), F.max("_c").alias("_hi"))
        .where(F.col("_lo") != F.col("_hi"))
        .select(F.col("_o").alias("_conflict_order"))
    )
    return conflicts, few


def outlier_bound(values: DataFrame, cfg: QualityConfig, n: int | None = None) -> Column:
    """``outlier_multiple`` x the ``outlier_quantile`` of column ``_a`` (finite |amounts|), as a literal.

    Exact when the tail above the quantile is at most ``OUTLIER_TOP_K`` rows (every input up to
    100M lines at the default p99.9): the k = n - ceil(q n) + 1 largest values reach the driver (a
    per-partition top-k, then a merge) and the smallest of them is the quantile, the value
    ``percentile_approx`` approximates. Feeding 2M values to a sketch accurate enough for that tail
    costs ~10 s of CPU; the count and the top-k cost ~2 s at 10M lines. Larger tails fall back to
    the sketch on a seeded sample of about ``OUTLIER_SAMPLE_ROWS`` rows. ``n``: the number of rows of
    ``values`` when the caller has counted them already (``validate`` does, in its input count).
    """
    q = cfg.outlier_quantile
    if n is None:
        n = values.count()
    if n == 0:
        return F.lit(None).cast("double")
    k = n - math.ceil(q * n) + 1
    if k <= OUTLIER_TOP_K:
        top = values.orderBy(F.col("_a").desc()).limit(k).collect()  # k numbers, no customer data
        return F.lit(float(top[-1]["_a"]) * cfg.outlier_multiple).cast("double")
    # rank error (relative_error x n) must stay well inside the tail above the quantile
    acc = max(round(1.0 / cfg.relative_error), round(10.0 / (1.0 - q)))
    if n > OUTLIER_SAMPLE_ROWS:
        # a seeded sample of ~2M rows leaves ~2,000 rows above p99.9: the bound moves by well
        # under 1% while the sketch's cost stops growing with the input
        values = values.sample(fraction=OUTLIER_SAMPLE_ROWS / n, seed=20_241_124)
    row = values.agg(F.percentile_approx(F.col("_a"), q, acc).alias("_q")).first()
    if row is None or row["_q"] is None:
        return F.lit(None).cast("double")
    return F.lit(float(row["_q"]) * cfg.outlier_multiple).cast("double")


def _transactions_plan(
    df: DataFrame,
    cfg: QualityConfig,
    processing_ts: dt.datetime,
    rates: dict[str, float] | None,
    pid: Column,
) -> _Plan:
    ts, ts_type = _col_or_null(df, S.ORDER_TS, "string")
    amt, amt_type = _col_or_null(df, S.AMOUNT, "string")
    qty, qty_type = _col_or_null(df, S.QUANTITY, "string")
    cur, _ = _col_or_null(df, S.CURRENCY, "string")
    base = cfg.currency.base.strip().upper()
    currency = F.coalesce(F.upper(blank_to_null(cur)), F.lit(base))
    if rates is None:  # no rates configured: amounts are taken as they are, in their own currency
        rate = F.lit(1.0)
        out_currency = currency
    else:
        rate_map = F.create_map(*[F.lit(x) for kv in sorted(rates.items()) for x in kv])
        rate = F.try_element_at(rate_map, currency)
        out_currency = F.lit(base)
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
        S.PRODUCT_CATEGORY: blank_to_null(_col_or_null(df, S.PRODUCT_CATEGORY, "string")[0]),
        S.CHANNEL: F.lower(blank_to_null(_col_or_null(df, S.CHANNEL, "string")[0])),
        S.CURRENCY: out_currency,
        "_rate": rate,
    }

    finite_amount = ~not_finite(F.abs(amount * rate))
    held: list[DataFrame] = []
    counts = {"_n_amounts": F.count_if(finite_amount)} if severity("amount_outlier", cfg) != "off" else {}

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
            values = df.select(F.abs(amount * rate).alias("_a")).where(finite_amount)
            d = d.withColumn("_bound", outlier_bound(values, cfg, counted.get("_n_amounts")))
        else:
            d = d.withColumn("_bound", F.lit(None).cast("double"))
        return d

    cap = cfg.outlier_abs_cap
    rules: dict[str, Callable[[DataFrame], Column]] = {
        "missing_customer_id": lambda d: F.col(S.CUSTOMER_ID).isNull(),
        "missing_order_id": lambda d: F.col(S.ORDER_ID).isNull(),
        "bad_timestamp": lambda d: F.col(S.ORDER_TS).isNull(),
        **_time_rules(S.ORDER_TS, cfg, processing_ts),
        "bad_amount": lambda d: not_finite(F.col("_amount_src")),
        "unknown_currency": lambda d: F.col("_rate").isNull(),
        "order_id_conflict": lambda d: F.col("_conflict_order").isNotNull(),
        "duplicate_line": lambda d: F.col("_dup"),
        "amount_outlier": lambda d: (
            (F.abs(F.col(S.AMOUNT)) > F.col("_bound"))
            | (F.lit(cap is not None) & (F.abs(F.col(S.AMOUNT)) > F.lit(cap if cap is not None else 0.0)))
        ),
    }
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
    return _Plan(parsed, rules, output, extra=extra, counts=counts, held=held)


def _number_rule(raw: Column, dtype: T.DataType) -> tuple[Column, Column]:
    """(value as double, "present but not a finite number")."""
    value = parse_double(raw, dtype)
    present = blank_to_null(raw).isNotNull()
    return value, present & not_finite(value)


def _customers_plan(df: DataFrame, cfg: QualityConfig, processing_ts: dt.datetime, pid: Column) -> _Plan:
    signup, signup_type = _col_or_null(df, S.SIGNUP_TS, "string")
    age_raw, age_type = _col_or_null(df, S.AGE, "string")
    by_raw, by_type = _col_or_null(df, S.BIRTH_YEAR, "string")
    signup_ts = parse_timestamp(signup, signup_type, cfg.timestamp_formats)
    age, age_bad = _number_rule(age_raw, age_type)
    birth_year, by_bad = _number_rule(by_raw, by_type)
    year = processing_ts.year
    malformed = (
        (blank_to_null(signup).isNotNull() & signup_ts.isNull())
        | age_bad
        | _true((age < cfg.min_age) | (age > cfg.max_age))
        | by_bad
        | _true((birth_year < year - cfg.max_age) | (birth_year > year - cfg.min_age))
    )
    text = [S.ACQUISITION_CHANNEL, S.COUNTRY, S.GENDER, S.INCOME_BAND, S.INDUSTRY, S.COMPANY_SIZE]
    parsed = {
        S.CUSTOMER_ID: pid,
        S.SIGNUP_TS: signup_ts,
        **{c: blank_to_null(_col_or_null(df, c, "string")[0]) for c in text},
        S.AGE: F.when(~not_finite(age), F.floor(age)).cast("int"),
        S.BIRTH_YEAR: F.when(~not_finite(birth_year), F.floor(birth_year)).cast("int"),
        "_malformed": malformed,
    }
    parsed[S.ACQUISITION_CHANNEL] = F.lower(parsed[S.ACQUISITION_CHANNEL])
    rules: dict[str, Callable[[DataFrame], Column]] = {
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
    return _Plan(parsed, rules, output)


def _events_plan(df: DataFrame, cfg: QualityConfig, processing_ts: dt.datetime, pid: Column) -> _Plan:
    ts, ts_type = _col_or_null(df, S.EVENT_TS, "string")
    event_type = F.lower(blank_to_null(F.col(S.EVENT_TYPE)))
    parsed = {
        S.CUSTOMER_ID: pid,
        S.EVENT_TS: parse_timestamp(ts, ts_type, cfg.timestamp_formats),
        S.EVENT_TYPE: event_type,
        S.CHANNEL: F.lower(blank_to_null(_col_or_null(df, S.CHANNEL, "string")[0])),
        S.DEVICE: F.lower(blank_to_null(_col_or_null(df, S.DEVICE, "string")[0])),
    }
    rules: dict[str, Callable[[DataFrame], Column]] = {
        "missing_customer_id": lambda d: F.col(S.CUSTOMER_ID).isNull(),
        "bad_timestamp": lambda d: F.col(S.EVENT_TS).isNull(),
        **_time_rules(S.EVENT_TS, cfg, processing_ts),
        "unknown_event_type": lambda d: ~_true(F.col(S.EVENT_TYPE).isin(*S.EVENT_TYPES)),
        "duplicate_line": lambda d: F.col("_dup"),
    }
    output = [
        (S.CUSTOMER_ID, "string"),
        (S.EVENT_TS, "timestamp"),
        (S.EVENT_TYPE, "string"),
        (S.CHANNEL, "string"),
        (S.DEVICE, "string"),
    ]
    return _Plan(parsed, rules, output)


def _spend_plan(df: DataFrame, cfg: QualityConfig) -> _Plan:
    month, month_type = _col_or_null(df, S.MONTH, "string")
    spend, spend_type = _col_or_null(df, S.SPEND, "string")
    parsed = {
        S.MONTH: F.trunc(F.to_date(parse_timestamp(month, month_type, cfg.timestamp_formats)), "month"),
        S.CHANNEL: F.lower(blank_to_null(F.col(S.CHANNEL))),
        S.SPEND: parse_double(spend, spend_type),
    }
    rules: dict[str, Callable[[DataFrame], Column]] = {
        "missing_channel": lambda d: F.col(S.CHANNEL).isNull(),
        "bad_timestamp": lambda d: F.col(S.MONTH).isNull(),
        "bad_amount": lambda d: not_finite(F.col(S.SPEND)) | (F.col(S.SPEND) < 0),
        "duplicate_line": lambda d: F.col("_dup"),
    }
    output = [(S.MONTH, "date"), (S.CHANNEL, "string"), (S.SPEND, "double")]
    return _Plan(parsed, rules, output, keyed=False)


def _raw_fields(src_cols: list[str], privacy: PrivacyConfig, pseudo: bool) -> list[Column]:
    """The quarantine's raw JSON: source columns minus PII, the customer id as its pseudonym (left
    out when pseudonymization is on but no key is given)."""
    raw_fields: list[Column] = []
    pii = {c.lower() for c in privacy.pii_columns}
    for c in src_cols:
        if c.lower() in pii:
            continue
        if c == S.CUSTOMER_ID:
            if pseudo:
                raw_fields.append(F.col(S.CUSTOMER_ID).alias(c))  # the parsed column: the pseudonym
            elif not privacy.pseudonymize:
                raw_fields.append(F.col(f"_src_{c}").alias(c))
            continue
        raw_fields.append(F.col(f"_src_{c}").alias(c))
    return raw_fields


def _with_row_keys(
    stage: DataFrame, table: str, plan: _Plan, rules: list[str], src_kept: list[str], key: bytes | None
) -> DataFrame:
    """The row hash, the copy flag (``_dup``), the CRM conflict bounds and, with ``key``, the keyed
    pseudonym: one window per customer over the shuffled lines."""
    # ``customer_id`` is the trimmed source id until the pseudonym replaces it below
    part = [F.col(S.CUSTOMER_ID)] if plan.keyed else []
    within = [F.col(S.ORDER_ID)] if plan.keyed and table == "transactions" else []
    # the row's other source columns; the customer is compared as ``part`` (trimmed)
    src_refs = [F.col(f"_src_{c}") for c in src_kept if not (plan.keyed and c == S.CUSTOMER_ID)]
    # A 64-bit hash of the whole row (trimmed customer and every other source column) stands for
    # it: copies are adjacent rows of equal (customer, [order,] hash) in the sort below, so the sort
    # and the window compare three keys rather than every column. Two different lines of one
    # customer (and order) are taken for copies only if their xxhash64 collide: about 2**-64 per
    # pair of such lines.
    stage = stage.withColumn(_HASH, F.xxhash64(*part, *src_refs))
    order = [*within, F.col(_HASH)]
    helpers: dict[str, Column] = {}
    per_customer = None
    if plan.keyed:
        # ONE window per customer, sorted by ([order,] hash): Spark copies every row into a buffer
        # once per window node, so the copies, the CRM conflicts and the line numbers share this one.
        # The transactions leave it sorted by (customer, order), as the silver orders want them.
        per_customer = Window.partitionBy(*part).orderBy(*order)
        if "duplicate_line" in rules:
            helpers["_prev"] = F.lag(F.struct(*order)).over(per_customer)
        if "customer_id_conflict" in rules:
            whole = per_customer.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
            helpers["_row_min"] = F.min(F.struct(*src_refs)).over(whole)
            helpers["_row_max"] = F.max(F.struct(*src_refs)).over(whole)
        if key is not None:
            helpers["_line_no"] = F.row_number().over(per_customer)
    elif "duplicate_line" in rules:
        helpers["_dup"] = F.row_number().over(Window.partitionBy(F.col(_HASH)).orderBy(F.col(_HASH))) > 1
    if helpers:
        stage = stage.withColumns(helpers)
    if "_prev" in helpers:  # a copy: the same (customer, [order,] hash) as the row before it
        prev = F.col("_prev")
        stage = stage.withColumn("_dup", prev.isNotNull() & prev.eqNullSafe(F.struct(*order)))
    if "_line_no" in helpers:
        assert key is not None and per_customer is not None
        # The keyed pseudonym once per customer, not per line: the HMAC runs on each customer's
        # first line and a second pass over the same sorted partition carries it to the others
        # (no shuffle, no sort). At 10M lines that is ~0.8M HMACs instead of 10M. The former design
        # hashed the distinct ids apart (a second scan and shuffle) and joined them back: this one
        # measured the same time at 10M lines, 4% more at 100M, and 18-23% less peak memory.
        # (``first(hmac)`` over the window would read simpler, but Spark evaluates it on every row.)
        first = F.when(F.col("_line_no") == 1, pseudonym_of(F.col(S.CUSTOMER_ID), stage.sparkSession, key))
        growing = per_customer.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        stage = (
            stage.withColumn(_PSEUDONYM, F.last(first, ignorenulls=True).over(growing))
            .withColumns({SOURCE_KEY: F.col(S.CUSTOMER_ID), S.CUSTOMER_ID: F.col(_PSEUDONYM)})
            .drop(_PSEUDONYM, "_line_no")
        )
    return stage


def _quarantine(flagged: DataFrame, table: str, cfg: QualityConfig, with_id: bool) -> DataFrame:
    """The flagged rows as quarantine rows: table, customer key (``with_id``), rule, reason, raw JSON."""
    reasons = rule_reasons(cfg)
    reason_map = F.create_map(*[F.lit(x) for r in TABLE_RULES[table] for x in (r, reasons[r])])
    return flagged.where(F.col(_RULE).isNotNull()).select(
        F.lit(table).alias(S.Q_SOURCE_TABLE),
        (F.col(S.CUSTOMER_ID).cast("string") if with_id else F.lit(None).cast("string")).alias(S.CUSTOMER_ID),
        F.col(_RULE).alias(S.Q_RULE),
        F.try_element_at(reason_map, F.col(_RULE)).alias(S.Q_REASON),
        F.col(_RAW).alias(S.Q_RAW),
    )


def validate(
    df: DataFrame,
    table: str,
    cfg: QualityConfig,
    processing_ts: dt.datetime,
    currency_rates: DataFrame | None = None,
    *,
    key: bytes | None = None,
    privacy: PrivacyConfig | None = None,
) -> IngestResult:
    """Apply the quality rules of ``table`` to a conformed input; return clean rows, quarantine and counts.

    ``key``: when given (and ``privacy.pseudonymize``), ``clean.customer_id`` and the customer id in
    the quarantine JSON are HMAC pseudonyms (``result.pseudonymized`` is True and
    ``privacy.pseudonymize`` leaves the column alone). The HMAC runs once per customer (on its first
    line in the duplicate window) and is carried to its other lines. The clean rows come partitioned
    and sorted by the trimmed source id (``schema.SOURCE_KEY``), so ``silver.orders`` groups them
    with no further shuffle. Without a key the clean ids are the trimmed source ids and the
    quarantine JSON omits them.
    ``currency_rates``: optional table (currency, rate = units of the base currency per unit), on top
    of ``quality.currency.rates``. Clean amounts are in the base currency.

    Clean columns: transactions: customer_id, order_id, order_ts, amount, quantity, product_category,
    channel, currency; customers: customer_id, signup_ts, acquisition_channel, country, age,
    birth_year, gender, income_band, industry, company_size (PII dropped; ``privacy.minimize`` makes
    the age band); events: customer_id, event_ts, event_type, channel, device; marketing_spend:
    month (first of month), channel, spend. Quarantine columns: source_table, rule, reason, raw.
    """
    if table not in TABLE_RULES:
        raise InputError(f"unknown input table '{table}'; expected one of {', '.join(TABLE_RULES)}")
    required, _ = S.INPUT_COLUMNS[table]
    for name in required:
        if name not in df.columns:
            raise InputError(f"{table}: required column '{name}' is missing; columns are {df.columns}")
    privacy = privacy or PrivacyConfig()
    src_cols = list(df.columns)
    pseudo = key is not None and privacy.pseudonymize

    keyed_table = S.CUSTOMER_ID in src_cols
    # The source columns that travel through the one shuffle; the customer id goes trimmed, as the
    # shuffle key. Its pseudonym is computed after the shuffle, once per customer (see below).
    src_kept = [c for c in src_cols if not (pseudo and c == S.CUSTOMER_ID)]
    base = df
    if keyed_table:
        base = df.select(*[F.col(c) for c in src_kept], blank_to_null(F.col(S.CUSTOMER_ID)).alias(SOURCE_KEY))
    pid = F.col(SOURCE_KEY) if keyed_table else F.lit(None).cast("string")

    if table == "transactions":
        plan = _transactions_plan(df, cfg, processing_ts, _rates(cfg, currency_rates), pid)
    elif table == "customers":
        plan = _customers_plan(df, cfg, processing_ts, pid)
    elif table == "events":
        plan = _events_plan(df, cfg, processing_ts, pid)
    else:
        plan = _spend_plan(df, cfg)
    # One scan counts the input rows and whatever the plan needs counted (the outlier rule: the
    # finite amounts), instead of one scan each.
    plan_counts = [c.alias(k) for k, c in plan.counts.items()]
    totals = df.agg(F.count(F.lit(1)).alias("_rows_in"), *plan_counts).first()
    assert totals is not None  # a global aggregate always returns one row
    rows_in = int(totals["_rows_in"])
    counted = {k: int(totals[k]) for k in plan.counts}

    raw_fields = _raw_fields(src_cols, privacy, pseudo)

    # One shuffle, by customer: the windows below and the silver orders reuse it.
    if plan.keyed:
        base = base.repartition(F.col(SOURCE_KEY))
    # Parsed columns next to the untouched source columns (renamed so names never clash).
    stage = base.select(
        *[F.col(c).alias(f"_src_{c}") for c in src_kept],
        *[expr.alias(name) for name, expr in plan.parsed.items()],
    )
    if plan.extra is not None:
        stage = plan.extra(stage, counted)
    rules = [r for r in TABLE_RULES[table] if severity(r, cfg) != "off"]
    stage = _with_row_keys(stage, table, plan, rules, src_kept, key if pseudo else None)
    rule_expr: Column = F.lit(None).cast("string")
    if rules:
        conds = [(r, _true(plan.rules[r](stage))) for r in rules]
        chain = F.when(conds[0][1], F.lit(conds[0][0]))
        for r, cond in conds[1:]:
            chain = chain.when(cond, F.lit(r))
        rule_expr = chain
    stage = stage.withColumn(_RULE, rule_expr)
    out_cols = [
        (
            mark_pseudonymized(F.col(name), name)
            if (name == S.CUSTOMER_ID and pseudo)
            else F.col(name).cast(kind).alias(name)
        )
        for name, kind in plan.output
    ]
    keep_key = [F.col(SOURCE_KEY) if pseudo else F.col(S.CUSTOMER_ID).alias(SOURCE_KEY)] if plan.keyed else []
    flagged = stage.select(
        *out_cols,
        *keep_key,
        F.col(_RULE),
        F.when(
            F.col(_RULE).isNotNull(),
            F.to_json(F.struct(*raw_fields), {"ignoreNullFields": "false"}),
        ).alias(_RAW),
    ).persist(StorageLevel.MEMORY_AND_DISK_DESER)  # the DataFrame default; serialized costs ~2x here

    counts = {
        row[_RULE]: int(row["n"])
        for row in flagged.groupBy(_RULE).agg(F.count(F.lit(1)).alias("n")).collect()
    }
    rows_clean = counts.pop(None, 0)
    for frame in plan.held:  # in the cached frame now
        frame.unpersist()
    by_rule = {r: counts[r] for r in TABLE_RULES[table] if counts.get(r)}
    clean_cols = [F.col(name) for name, _ in plan.output]
    if plan.keyed and table == "transactions":
        clean_cols.append(F.col(SOURCE_KEY))  # for silver.orders only (see SOURCE_KEY)
    clean = flagged.where(F.col(_RULE).isNull()).select(*clean_cols)
    # the pseudonymous key (as in the clean rows), so erasure reaches quarantined rows too; the
    # source id only where pseudonymization is off, and nothing when it is on but no key is given
    with_id = keyed_table and (pseudo or not privacy.pseudonymize)
    quarantine = _quarantine(flagged, table, cfg, with_id)
    result = IngestResult(
        table=table,
        clean=clean,
        quarantine=quarantine,
        rows_in=rows_in,
        rows_clean=rows_clean,
        rows_quarantined=sum(by_rule.values()),
        by_rule=by_rule,
        severities={r: severity(r, cfg) for r in by_rule},
        pseudonymized=pseudo,
        flagged=flagged,
    )
    log.info(
        "%s: %d rows in, %d clean, %d quarantined %s",
        table,
        rows_in,
        rows_clean,
        result.rows_quarantined,
        by_rule,
    )
    return result
