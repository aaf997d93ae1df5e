"""Synthetic multi-table lakehouse with planted behavioural archetypes, built with Spark itself.

Every random draw is a hash of (seed, draw number, row key), not ``rand()``: the output is the same
for a seed whatever the partitioning, from thousands of rows to 100M transactions, and no loop runs
on the driver. The archetypes differ in purchase timing, spend, returns, channels and engagement;
``ground_truth`` names each customer's archetype so tests can check what the pipeline recovers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

from segspark import schema as S

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_END = dt.date(2025, 12, 31)
HISTORY_DAYS = 730
CHANNELS = ("web", "app", "store")
ACQ_CHANNELS = ("paid_search", "social", "email", "affiliate", "referral", "organic")
CAC_BY_CHANNEL = {"paid_search": 38.0, "social": 27.0, "email": 9.0, "affiliate": 21.0, "referral": 14.0}
CATEGORIES = ("apparel", "electronics", "home", "beauty", "sports", "books", "toys", "grocery")
COUNTRIES = ("US", "GB", "DE", "FR", "CA", "AU", "NL", "ES")
INDUSTRIES = ("software", "retail", "finance", "healthcare", "manufacturing", "education")
COMPANY_SIZES = ("1-10", "11-50", "51-200", "201-1000", "1000+")
INCOME_BANDS = ("<25k", "25-50k", "50-100k", "100-200k", "200k+")
FIRST_NAMES = ("Ava", "Liam", "Mia", "Noah", "Zoe", "Omar", "Lena", "Ivan", "Sara", "Kenji", "Nia", "Luca")
LAST_NAMES = ("Smith", "Garcia", "Muller", "Rossi", "Khan", "Tanaka", "Dubois", "Novak", "Silva", "Olsen")


@dataclass(frozen=True)
class Archetype:
    """Behavioural parameters of one planted archetype."""

    name: str
    share: float
    orders: tuple[int, int]  # inclusive range of orders
    last_days_ago: tuple[int, int]  # range of days between the last order and the end date
    gap_days: tuple[int, int]  # range of the typical gap between orders
    aov: float  # mean order value
    return_prob: float  # chance an order has a return line
    channel: str  # preferred channel
    sessions_90d: tuple[int, int]  # web/app sessions in the last 90 days
    acq_channel: str  # most likely acquisition channel


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype("champions", 0.08, (14, 30), (0, 14), (12, 24), 140.0, 0.03, "app", (12, 30), "referral"),
    Archetype("loyal_regulars", 0.16, (7, 14), (0, 45), (35, 55), 65.0, 0.05, "store", (4, 12), "email"),
    Archetype("new_customers", 0.14, (1, 2), (0, 40), (5, 15), 55.0, 0.05, "web", (3, 10), "paid_search"),
    Archetype("at_risk_regulars", 0.14, (6, 12), (150, 300), (30, 50), 80.0, 0.05, "web", (0, 2), "email"),
    Archetype("lapsed_one_timers", 0.24, (1, 1), (380, 700), (1, 1), 35.0, 0.08, "web", (0, 0), "social"),
    Archetype(
        "bargain_occasionals", 0.19, (2, 5), (20, 140), (60, 110), 18.0, 0.25, "web", (1, 5), "affiliate"
    ),
    Archetype("prospects", 0.05, (0, 0), (0, 0), (1, 1), 0.0, 0.0, "web", (1, 4), "organic"),
)

_SCALE = float(1 << 52)


def _epoch(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())


def _u(seed: int, draw: int, *keys: Column) -> Column:
    """Uniform [0, 1) from a hash of (seed, draw, keys): deterministic regardless of partitioning."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(draw), *keys), F.lit(1 << 52)).cast("double") / F.lit(_SCALE)


def _int_between(u: Column, lo: Column | int, hi: Column | int) -> Column:
    lo_c = lo if isinstance(lo, Column) else F.lit(lo)
    hi_c = hi if isinstance(hi, Column) else F.lit(hi)
    return (lo_c + F.floor(u * (hi_c - lo_c + 1))).cast("int")


def _pick(u: Column, options: tuple[str, ...]) -> Column:
    return F.element_at(F.array(*[F.lit(o) for o in options]), (F.floor(u * len(options)) + 1).cast("int"))


def _by_archetype(attr: str) -> Column:
    """A column holding ``Archetype.<attr>`` for each row's archetype index ``arch``."""
    expr = None
    for i, a in enumerate(ARCHETYPES):
        value = getattr(a, attr)
        lit = F.array(*[F.lit(v) for v in value]) if isinstance(value, tuple) else F.lit(value)
        expr = F.when(F.col("arch") == i, lit) if expr is None else expr.when(F.col("arch") == i, lit)
    assert expr is not None
    return expr


def customer_base(spark: SparkSession, customers: int, seed: int, partitions: int | None = None) -> DataFrame:
    """One row per customer: id, archetype index and name, and its behavioural draws."""
    parts = partitions or max(2, min(400, customers // 250_000 + 2))
    cum = 0.0
    arch = None
    for i, a in enumerate(ARCHETYPES):
        cum += a.share
        cond = F.col("u_arch") < F.lit(cum)
        arch = F.when(cond, F.lit(i)) if arch is None else arch.when(cond, F.lit(i))
    assert arch is not None
    arch = arch.otherwise(F.lit(len(ARCHETYPES) - 1))
    base = spark.range(0, customers, 1, parts).select(
        F.col("id"),
        _u(seed, 0, F.col("id")).alias("u_arch"),
    )
    base = base.select(F.col("id"), arch.alias("arch"))
    orders, last_ago, gap = _by_archetype("orders"), _by_archetype("last_days_ago"), _by_archetype("gap_days")
    sessions = _by_archetype("sessions_90d")
    return base.select(
        F.col("id"),
        F.format_string("C%09d", F.col("id")).alias(S.CUSTOMER_ID),
        F.col("arch"),
        _by_archetype("name").alias("archetype"),
        _int_between(_u(seed, 1, F.col("id")), orders[0], orders[1]).alias("n_orders"),
        _int_between(_u(seed, 2, F.col("id")), last_ago[0], last_ago[1]).alias("last_ago"),
        _int_between(_u(seed, 3, F.col("id")), gap[0], gap[1]).alias("gap"),
        (_by_archetype("aov") * (F.lit(0.7) + F.lit(0.6) * _u(seed, 4, F.col("id")))).alias("aov"),
        _by_archetype("return_prob").alias("return_prob"),
        _by_archetype("channel").alias("pref_channel"),
        _int_between(_u(seed, 5, F.col("id")), sessions[0], sessions[1]).alias("sessions_90d"),
        _by_archetype("acq_channel").alias("pref_acq"),
    )


def transactions(base: DataFrame, seed: int, end: dt.date = DEFAULT_END) -> DataFrame:
    """Order lines per the input contract, returns included as negative lines of the same order."""
    end_s = _epoch(end) + 86_399
    end_ts = F.timestamp_seconds(F.lit(end_s))
    orders = base.where(F.col("n_orders") > 0).select(
        "*", F.explode(F.sequence(F.lit(0), F.col("n_orders") - 1)).alias("k")
    )
    key = [F.col("id"), F.col("k")]
    jitter = _int_between(_u(seed, 10, *key), 0, 6) - 3
    days_ago = F.least(
        F.lit(HISTORY_DAYS),
        F.col("last_ago")
        + (F.col("n_orders") - 1 - F.col("k")) * F.col("gap")
        + F.when(F.col("k") < F.col("n_orders") - 1, jitter).otherwise(0),
    )
    secs = _int_between(_u(seed, 11, *key), 0, 86_399 - 1)
    order_ts = F.timestamp_seconds(F.lit(end_s) - F.greatest(days_ago, F.lit(0)) * 86_400 - secs)
    channel = F.when(_u(seed, 12, *key) < 0.7, F.col("pref_channel")).otherwise(
        _pick(_u(seed, 13, *key), CHANNELS)
    )
    u_cur = _u(seed, 14, *key)
    currency = F.when(u_cur < 0.90, F.lit("USD")).when(u_cur < 0.97, F.lit("EUR")).otherwise(F.lit("GBP"))
    orders = orders.select(
        "id",
        S.CUSTOMER_ID,
        "k",
        "aov",
        "return_prob",
        F.format_string("O%09d-%03d", F.col("id"), F.col("k")).alias(S.ORDER_ID),
        order_ts.alias(S.ORDER_TS),
        channel.alias(S.CHANNEL),
        currency.alias(S.CURRENCY),
        (F.lit(1) + (_u(seed, 15, *key) < 0.3).cast("int")).alias("n_lines"),
        (_u(seed, 16, *key) < F.col("return_prob")).alias("has_return"),
    )
    lines = orders.select("*", F.explode(F.sequence(F.lit(1), F.col("n_lines"))).alias("line"))
    lkey = [F.col("id"), F.col("k"), F.col("line")]
    value = F.col("aov") * (F.lit(0.4) + F.lit(1.2) * _u(seed, 20, *lkey)) / F.col("n_lines")
    rate = (
        F.when(F.col(S.CURRENCY) == "EUR", F.lit(1.0 / 1.08))
        .when(F.col(S.CURRENCY) == "GBP", F.lit(1.0 / 1.27))
        .otherwise(F.lit(1.0))
    )
    sale = lines.select(
        S.CUSTOMER_ID,
        S.ORDER_ID,
        S.ORDER_TS,
        F.round(value * rate, 2).alias(S.AMOUNT),
        _int_between(_u(seed, 21, *lkey), 1, 3).alias(S.QUANTITY),
        _pick(_u(seed, 22, *lkey), CATEGORIES).alias(S.PRODUCT_CATEGORY),
        S.CHANNEL,
        S.CURRENCY,
        (F.col("has_return") & (F.col("line") == 1)).alias("_return"),
        F.col("id"),
        F.col("k"),
    )
    returns = sale.where(F.col("_return")).select(
        S.CUSTOMER_ID,
        S.ORDER_ID,
        F.timestamp_seconds(
            F.unix_seconds(F.col(S.ORDER_TS))
            + _int_between(_u(seed, 30, F.col("id"), F.col("k")), 1, 14) * 86_400
        ).alias(S.ORDER_TS),
        F.round(
            -F.col(S.AMOUNT) * (F.lit(0.5) + F.lit(0.5) * _u(seed, 31, F.col("id"), F.col("k"))), 2
        ).alias(S.AMOUNT),
        F.lit(-1).alias(S.QUANTITY),
        S.PRODUCT_CATEGORY,
        S.CHANNEL,
        S.CURRENCY,
    )
    # returns that would land after the end date are dropped by the filter below: the data ends there
    out = sale.drop("_return", "id", "k").unionByName(returns)
    return out.where(F.col(S.ORDER_TS) <= end_ts).select(
        S.CUSTOMER_ID, S.ORDER_ID, S.ORDER_TS, S.AMOUNT, S.QUANTITY, S.PRODUCT_CATEGORY, S.CHANNEL, S.CURRENCY
    )


def customers(base: DataFrame, seed: int, end: dt.date = DEFAULT_END) -> DataFrame:
    """CRM rows: B2C demographics, B2B firmographics, and PII columns (so privacy can be tested)."""
    idc = F.col("id")
    first_ago = F.least(F.lit(HISTORY_DAYS), F.col("last_ago") + (F.col("n_orders") - 1) * F.col("gap"))
    signup_ago = F.when(F.col("n_orders") == 0, _int_between(_u(seed, 40, idc), 0, 365)).otherwise(
        first_ago + _int_between(_u(seed, 41, idc), 0, 20)
    )
    acq = F.when(_u(seed, 42, idc) < 0.6, F.col("pref_acq")).otherwise(_pick(_u(seed, 43, idc), ACQ_CHANNELS))
    first = _pick(_u(seed, 44, idc), FIRST_NAMES)
    last = _pick(_u(seed, 45, idc), LAST_NAMES)
    return base.select(
        S.CUSTOMER_ID,
        F.timestamp_seconds(F.lit(_epoch(end)) - signup_ago * 86_400 + 9 * 3600).alias(S.SIGNUP_TS),
        acq.alias(S.ACQUISITION_CHANNEL),
        _pick(_u(seed, 46, idc), COUNTRIES).alias(S.COUNTRY),
        _int_between(_u(seed, 47, idc), 18, 79).alias(S.AGE),
        _pick(_u(seed, 48, idc), ("female", "male", "other")).alias(S.GENDER),
        _pick(_u(seed, 49, idc), INCOME_BANDS).alias(S.INCOME_BAND),
        _pick(_u(seed, 50, idc), INDUSTRIES).alias(S.INDUSTRY),
        _pick(_u(seed, 51, idc), COMPANY_SIZES).alias(S.COMPANY_SIZE),
        F.lower(F.format_string("%s.%s%d@example.com", first, last, idc)).alias("email"),
        F.format_string("%s %s", first, last).alias("name"),
        F.format_string("+1-555-%07d", F.pmod(idc * F.lit(7919), F.lit(10_000_000))).alias("phone"),
        F.format_string("%d Market Street, Springfield", F.pmod(idc, F.lit(9000)) + 1).alias("address"),
    )


def events(base: DataFrame, seed: int, end: dt.date = DEFAULT_END) -> DataFrame:
    """Web/app telemetry: sessions in the last 90 days with page views, carts, checkouts, purchases."""
    end_s = _epoch(end) + 23 * 3600
    sess = base.where(F.col("sessions_90d") > 0).select(
        "id",
        S.CUSTOMER_ID,
        "arch",
        "pref_channel",
        F.explode(F.sequence(F.lit(1), F.col("sessions_90d"))).alias("s"),
    )
    key = [F.col("id"), F.col("s")]
    engaged = F.col("arch").isin(0, 1)  # champions and regulars convert more often
    p_cart = F.when(engaged, F.lit(0.5)).otherwise(F.lit(0.2))
    cart = _u(seed, 60, *key) < p_cart
    checkout = cart & (_u(seed, 61, *key) < 0.6)
    purchase = checkout & (_u(seed, 62, *key) < 0.8)
    empty = F.array().cast("array<string>")
    types = F.concat(
        F.array(F.lit("session_start")),
        F.when(_u(seed, 63, *key) < 0.5, F.array(F.lit("login"))).otherwise(empty),
        F.array_repeat(F.lit("page_view"), _int_between(_u(seed, 64, *key), 1, 5)),
        F.when(cart, F.array(F.lit("add_to_cart"))).otherwise(empty),
        F.when(checkout, F.array(F.lit("checkout"))).otherwise(empty),
        F.when(purchase, F.array(F.lit("purchase"))).otherwise(empty),
        F.when(_u(seed, 65, *key) < 0.3, F.array(F.lit("feature_used"))).otherwise(empty),
    )
    start_s = (
        F.lit(end_s)
        - _int_between(_u(seed, 66, *key), 0, 89) * 86_400
        - _int_between(_u(seed, 67, *key), 0, 22) * 3600
    )
    sessions = sess.select(
        S.CUSTOMER_ID,
        start_s.alias("start"),
        F.col("s"),
        F.when(F.col("pref_channel") == "store", F.lit("web"))
        .otherwise(F.col("pref_channel"))
        .alias(S.CHANNEL),
        _pick(_u(seed, 68, *key), ("desktop", "mobile", "tablet")).alias(S.DEVICE),
        F.posexplode(types).alias("pos", S.EVENT_TYPE),
    )
    return sessions.select(
        S.CUSTOMER_ID,
        # the session number as seconds keeps two sessions starting in the same hour distinct
        F.timestamp_seconds(F.col("start") + F.col("pos") * 60 + F.col("s")).alias(S.EVENT_TS),
        S.EVENT_TYPE,
        S.CHANNEL,
        S.DEVICE,
    )


def marketing_spend(crm: DataFrame, seed: int, end: dt.date = DEFAULT_END) -> DataFrame:
    """Monthly spend by paid channel (organic has none), sized to the customers each channel won."""
    cac = None
    for ch, value in CAC_BY_CHANNEL.items():
        cond = F.col(S.ACQUISITION_CHANNEL) == ch
        cac = F.when(cond, F.lit(value)) if cac is None else cac.when(cond, F.lit(value))
    assert cac is not None
    month = F.trunc(F.col(S.SIGNUP_TS), "month").cast("date")
    monthly = (
        crm.where(F.col(S.ACQUISITION_CHANNEL).isin(*CAC_BY_CHANNEL))
        .groupBy(month.alias(S.MONTH), F.col(S.ACQUISITION_CHANNEL).alias(S.CHANNEL))
        .agg(F.count(F.lit(1)).alias("acquired"))
    )
    noise = F.lit(0.85) + F.lit(0.3) * _u(seed, 70, F.col(S.MONTH).cast("string"), F.col(S.CHANNEL))
    chan_cac = None
    for ch, value in CAC_BY_CHANNEL.items():
        cond = F.col(S.CHANNEL) == ch
        chan_cac = F.when(cond, F.lit(value)) if chan_cac is None else chan_cac.when(cond, F.lit(value))
    assert chan_cac is not None
    return monthly.select(
        S.MONTH, S.CHANNEL, F.round(F.col("acquired") * chan_cac * noise, 2).alias(S.SPEND)
    ).where(F.col(S.MONTH) <= F.lit(end))


def ground_truth(base: DataFrame) -> DataFrame:
    return base.select(S.CUSTOMER_ID, "archetype")


def dirty_transactions(clean: DataFrame, seed: int, end: dt.date = DEFAULT_END) -> DataFrame:
    """The clean lines as a raw landing table (string columns) plus planted rows of every bad kind.

    Planted rows carry order ids starting ``BAD-`` (or copy a real line) so tests can find them.
    """
    raw = clean.select(
        S.CUSTOMER_ID,
        S.ORDER_ID,
        F.date_format(S.ORDER_TS, "yyyy-MM-dd HH:mm:ss").alias(S.ORDER_TS),
        F.col(S.AMOUNT).cast("string").alias(S.AMOUNT),
        F.col(S.QUANTITY).cast("string").alias(S.QUANTITY),
        S.PRODUCT_CATEGORY,
        S.CHANNEL,
        S.CURRENCY,
    )
    spark = clean.sparkSession
    day = end.isoformat()
    cols = [
        S.CUSTOMER_ID,
        S.ORDER_ID,
        S.ORDER_TS,
        S.AMOUNT,
        S.QUANTITY,
        S.PRODUCT_CATEGORY,
        S.CHANNEL,
        S.CURRENCY,
    ]
    planted = spark.createDataFrame(
        [
            (None, "BAD-missing-id", f"{day} 10:00:00", "10.00", "1", "home", "web", "USD"),
            ("   ", "BAD-blank-id", f"{day} 10:00:00", "10.00", "1", "home", "web", "USD"),
            ("C000000001", "BAD-bad-ts", "not-a-date", "10.00", "1", "home", "web", "USD"),
            ("C000000001", "BAD-future-ts", "2099-01-01 00:00:00", "10.00", "1", "home", "web", "USD"),
            ("C000000001", "BAD-early-ts", "1970-01-02 00:00:00", "10.00", "1", "home", "web", "USD"),
            ("C000000001", "BAD-bad-amount", f"{day} 10:00:00", "abc", "1", "home", "web", "USD"),
            ("C000000001", "BAD-nan-amount", f"{day} 10:00:00", "NaN", "1", "home", "web", "USD"),
            ("C000000001", "BAD-null-amount", f"{day} 10:00:00", None, "1", "home", "web", "USD"),
            ("C000000001", "BAD-outlier", f"{day} 10:00:00", "25000000.00", "1", "home", "web", "USD"),
            ("C000000001", "BAD-currency", f"{day} 10:00:00", "10.00", "1", "home", "web", "XYZ"),
            ("C000000001", "BAD-conflict", f"{day} 09:00:00", "12.00", "1", "home", "web", "USD"),
            ("C000000002", "BAD-conflict", f"{day} 09:00:00", "12.00", "1", "home", "web", "USD"),
        ],
        schema=", ".join(f"{c} string" for c in cols),
    )
    duplicates = raw.where(F.col(S.ORDER_ID).endswith("-000")).orderBy(S.ORDER_ID).limit(5)
    return raw.unionByName(planted).unionByName(duplicates)


def dirty_customers(clean: DataFrame) -> DataFrame:
    """CRM rows with malformed ones planted (missing id, unparseable signup, impossible age)."""
    raw = clean.select(*[F.col(c).cast("string").alias(c) for c in clean.columns])
    spark = clean.sparkSession
    planted = spark.createDataFrame(
        [
            (None, "2024-01-01 00:00:00", "-5"),
            ("C999999991", "yesterday", "30"),
            ("C999999992", "2024-01-01 00:00:00", "212"),
        ],
        schema=f"{S.CUSTOMER_ID} string, {S.SIGNUP_TS} string, {S.AGE} string",
    )
    return raw.unionByName(planted, allowMissingColumns=True)
