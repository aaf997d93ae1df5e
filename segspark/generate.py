"""Synthetic multi-table lakehouse with planted behavioural archetypes, built with Spark itself.

Every random draw is a hash of (seed, draw number, row key), not ``rand()``: the output is the same
for a seed whatever the partitioning, from thousands of rows to 100M transactions, and no loop runs
on the driver. The archetypes differ in purchase timing, spend, returns, channels and engagement;
``ground_truth`` names each customer's archetype so tests can check what the pipeline recovers.

Purchases follow a BG/NBD-like process (see :class:`Archetype`): a personal purchase rate while
alive, and dropout after each purchase with a personal probability or at a planted time, at rates
that differ by archetype. So the lifetime models have something real to find: customers who lapse
and stop buying, next to customers who keep buying at their own pace.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.errors import SegsparkError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from segspark.config import Settings

log = logging.getLogger(__name__)
INPUTS = ("transactions", "customers", "events", "marketing_spend")

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
    """Behavioural parameters of one planted archetype (days are counted back from the end date).

    Purchases follow a BG/NBD-like process: a first purchase ``first_days_ago``, then repeat
    purchases at a personal mean gap (Erlang gaps of ``gap_shape`` phases: 1 is a Poisson process,
    higher is more regular) while the customer is alive. A customer drops out after each purchase
    with a personal probability drawn from ``dropout_prob`` and, where set, at a personal time: a
    lifetime after the first purchase (``life_days``) or a date (``dies_days_ago``).
    """

    name: str
    share: float
    first_days_ago: tuple[int, int]  # range of days between the first purchase and the end date
    gap_days: tuple[float, float]  # range of the personal mean gap between purchases
    gap_shape: int  # Erlang phases of a gap: 1 = exponential (Poisson purchases), 3 = fairly regular
    dropout_prob: tuple[float, float]  # range of the personal chance to drop out after each purchase
    life_days: tuple[int, int] | None  # range of the lifetime after the first purchase (None: no limit)
    dies_days_ago: tuple[int, int] | None  # range of the dropout date, in days before the end date
    aov: float  # mean order value
    return_prob: float  # chance an order has a return line
    channel: str  # preferred channel
    sessions_90d: tuple[int, int]  # web/app sessions in the last 90 days
    acq_channel: str  # most likely acquisition channel


# fmt: off
ARCHETYPES: tuple[Archetype, ...] = (
    #         name                  share first       gap        shape dropout/purchase life       dies
    Archetype("champions",           0.08, (420, 730), (10, 20),  3, (0.0, 0.002), None,      None,
              140.0, 0.03, "app", (12, 30), "referral"),
    Archetype("loyal_regulars",      0.16, (300, 730), (30, 50),  6, (0.0, 0.002), None,      None,
              65.0, 0.05, "store", (4, 12), "email"),
    Archetype("new_customers",       0.14, (2, 40),    (15, 40),  1, (0.2, 0.5),   None,      None,
              55.0, 0.05, "web", (3, 10), "paid_search"),
    Archetype("at_risk_regulars",    0.14, (420, 730), (30, 50),  3, (0.0, 0.002), None,      (180, 300),
              80.0, 0.05, "web", (0, 2), "email"),
    Archetype("lapsed_one_timers",   0.24, (480, 730), (60, 120), 1, (0.55, 0.85), (20, 110), None,
              35.0, 0.08, "web", (0, 0), "social"),
    Archetype("bargain_occasionals", 0.19, (200, 730), (50, 95),  2, (0.0, 0.002), None,      None,
              18.0, 0.25, "web", (1, 5), "affiliate"),
    Archetype("prospects",           0.05, (0, 0),     (1, 1),    1, (1.0, 1.0),   (0, 0),    None,
              0.0, 0.0, "web", (1, 4), "organic"),
)
# fmt: on
_BUYERS = [a for a in ARCHETYPES if a.aov > 0]
# the buyers' share-weighted mean order value (``generate --uniform-spend``: the same for every archetype)
UNIFORM_AOV = sum(a.share * a.aov for a in _BUYERS) / sum(a.share for a in _BUYERS)
PROSPECTS = "prospects"  # the archetype that never buys (CRM rows and telemetry only)

_SCALE = float(1 << 52)
# Poisson draws by inverse CDF over at most this many terms: the largest mean the archetypes give
# (730 days x 3 phases / a 10-day gap = 219) is far below it
_POISSON_TERMS = 600


def _epoch(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())


def _u(seed: int, draw: int, *keys: Column) -> Column:
    """Uniform [0, 1) from a hash of (seed, draw, keys): deterministic regardless of partitioning."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(draw), *keys), F.lit(1 << 52)).cast("double") / F.lit(_SCALE)


def _u_open(seed: int, draw: int, *keys: Column) -> Column:
    """Uniform (0, 1): safe under ``log``."""
    return (F.pmod(F.xxhash64(F.lit(seed), F.lit(draw), *keys), F.lit(1 << 52)).cast("double") + 0.5) / F.lit(
        _SCALE
    )


def _int_between(u: Column, lo: Column | int, hi: Column | int) -> Column:
    lo_c = lo if isinstance(lo, Column) else F.lit(lo)
    hi_c = hi if isinstance(hi, Column) else F.lit(hi)
    return (lo_c + F.floor(u * (hi_c - lo_c + 1))).cast("int")


def _between(u: Column, lo: Column, hi: Column) -> Column:
    return lo + u * (hi - lo)


def _pick(u: Column, options: tuple[str, ...]) -> Column:
    return F.element_at(F.array(*[F.lit(o) for o in options]), (F.floor(u * len(options)) + 1).cast("int"))


def _by_archetype(attr: str) -> Column:
    """A column holding ``Archetype.<attr>`` for each row's archetype index ``arch``.

    A lookup in one literal array, not a CASE per archetype: the purchase process reads these
    parameters many times, and CASE chains inlined that often made plans too large for a small
    driver.
    """
    values = []
    for a in ARCHETYPES:
        value = getattr(a, attr)
        values.append(F.array(*[F.lit(v) for v in value]) if isinstance(value, tuple) else F.lit(value))
    return F.element_at(F.array(*values), F.col("arch") + 1)


def _range_or_null(attr: str) -> Column:
    """``Archetype.<attr>`` as array<double> (a (lo, hi) range), null where the archetype has none."""
    values = [
        F.array(*[F.lit(float(v)) for v in getattr(a, attr)])
        if getattr(a, attr) is not None
        else F.lit(None).cast("array<double>")
        for a in ARCHETYPES
    ]
    return F.element_at(F.array(*values), F.col("arch") + 1)


def poisson(u: Column, mean: Column, terms: int = _POISSON_TERMS) -> Column:
    """A Poisson(``mean``) draw by inverse CDF of the uniform ``u``, as one higher-order function.

    The pmf is built by its recursion p(n) = p(n - 1) mean / n while the CDF is below ``u``; the
    sequence is as long as the mean needs (mean + 10 sd + 10 terms, at most ``terms``).
    """
    length = F.least(F.lit(terms), F.ceil(mean + F.lit(10.0) * F.sqrt(mean) + F.lit(10.0)).cast("int"))
    start = F.struct(F.exp(-mean).alias("p"), F.exp(-mean).alias("c"), F.lit(0).alias("n"))

    def step(acc: Column, j: Column) -> Column:
        p = acc["p"] * mean / j
        return F.when(
            acc["c"] < u, F.struct(p.alias("p"), (acc["c"] + p).alias("c"), j.alias("n"))
        ).otherwise(acc)

    return F.aggregate(F.sequence(F.lit(1), length), start, step, lambda acc: acc["n"])


def with_purchase_offsets(staged: DataFrame, seed: int) -> DataFrame:
    """Add ``offsets``: days after the first purchase of every purchase (0 first), ascending.

    The repeat purchases are the points of a renewal process with Erlang(``shape``) gaps of mean
    ``gap`` on (0, ``span``]: every ``shape``-th point (from a random phase) of a Poisson process of
    rate shape / gap, whose N ~ Poisson(span x shape / gap) points on the interval are sorted
    uniforms. Then the BG/NBD dropout: after each purchase the customer leaves with probability
    ``p_drop``, so only the first ``repeats_allowed`` repeat purchases happen. No loop: array
    functions per customer row, one select per step so that no step is computed twice.
    """
    idc, shape = F.col("id"), F.col("shape")
    drawn = staged.select("*", poisson(_u(seed, 8, idc), F.col("span") * shape / F.col("gap")).alias("_n"))
    uniforms = F.transform(F.sequence(F.lit(1), F.col("_n")), lambda j: F.col("span") * _u(seed, 80, idc, j))
    # sequence(1, 0) counts down: no points is an empty array, not [1, 0]
    points = drawn.select(
        "*",
        F.when(F.col("_n") > 0, F.array_sort(uniforms))
        .otherwise(F.array().cast("array<double>"))
        .alias("_p"),
    )
    phase = F.floor(_u(seed, 9, idc) * shape).cast("int")
    kept = points.select(
        "*", F.filter(F.col("_p"), lambda _x, i: F.pmod(i + F.lit(1) + phase, shape) == 0).alias("_k")
    )
    repeats = F.slice(F.col("_k"), 1, F.least(F.size(F.col("_k")), F.col("repeats_allowed")))
    return kept.select("*", F.concat(F.array(F.lit(0.0)), repeats).alias("offsets")).drop("_n", "_p", "_k")


def customer_base(
    spark: SparkSession, customers: int, seed: int, partitions: int | None = None, uniform_spend: bool = False
) -> DataFrame:
    """One row per customer: id, archetype index and name, its behavioural draws and ``order_days``
    (days before the end date of each purchase, oldest first; empty for prospects).
    ``uniform_spend``: every archetype's mean order value is :data:`UNIFORM_AOV` (the same draws
    otherwise), so order value does not depend on how often a customer buys."""
    parts = partitions or max(2, min(400, customers // 250_000 + 2))
    arch = _archetype_index()
    base = spark.range(0, customers, 1, parts).select(
        F.col("id"),
        _u(seed, 0, F.col("id")).alias("u_arch"),
    )
    base = base.select(F.col("id"), arch.alias("arch"))
    staged = _with_lifetime(_customer_draws(base, seed, uniform_spend), seed)
    return _with_order_days(staged, seed)


def _archetype_index() -> Column:
    """The archetype index of the uniform ``u_arch``: archetype i takes its ``share`` of [0, 1)."""
    cum = 0.0
    arch = None
    for i, a in enumerate(ARCHETYPES):
        cum += a.share
        cond = F.col("u_arch") < F.lit(cum)
        arch = F.when(cond, F.lit(i)) if arch is None else arch.when(cond, F.lit(i))
    assert arch is not None
    return arch.otherwise(F.lit(len(ARCHETYPES) - 1))


def _customer_draws(base: DataFrame, seed: int, uniform_spend: bool = False) -> DataFrame:
    """The customer id, the archetype's name and parameters, and the personal draws within its
    ranges (draws 1 to 6)."""
    idc = F.col("id")
    first, gap = _by_archetype("first_days_ago"), _by_archetype("gap_days")
    drop, life, dies = (
        _by_archetype("dropout_prob"),
        _range_or_null("life_days"),
        _range_or_null("dies_days_ago"),
    )
    sessions = _by_archetype("sessions_90d")
    aov = F.lit(UNIFORM_AOV) if uniform_spend else _by_archetype("aov")
    return base.select(
        idc,
        F.format_string("C%09d", idc).alias(S.CUSTOMER_ID),
        F.col("arch"),
        _by_archetype("name").alias("archetype"),
        _int_between(_u(seed, 1, idc), first[0], first[1]).alias("first_ago"),
        _between(_u(seed, 2, idc), gap[0].cast("double"), gap[1].cast("double")).alias("gap"),
        _by_archetype("gap_shape").alias("shape"),
        _between(_u(seed, 6, idc), drop[0], drop[1]).alias("p_drop"),
        _between(_u(seed, 3, idc), life[0], life[1]).alias("life"),
        _between(_u(seed, 3, idc), dies[0], dies[1]).alias("dies_ago"),
        (aov * (F.lit(0.7) + F.lit(0.6) * _u(seed, 4, idc))).alias("aov"),
        _by_archetype("return_prob").alias("return_prob"),
        _by_archetype("channel").alias("pref_channel"),
        _int_between(_u(seed, 5, idc), sessions[0], sessions[1]).alias("sessions_90d"),
        _by_archetype("acq_channel").alias("pref_acq"),
    )


def _with_lifetime(draws: DataFrame, seed: int) -> DataFrame:
    """Add ``span`` (days alive after the first purchase) and ``repeats_allowed`` (draw 7)."""
    idc = F.col("id")
    # alive from the first purchase until the earliest of the lifetime, the dropout date and the end
    span = F.least(
        F.col("first_ago").cast("double"),
        F.coalesce(F.col("life"), F.lit(float(HISTORY_DAYS))),
        F.coalesce(F.col("first_ago") - F.col("dies_ago"), F.lit(float(HISTORY_DAYS))),
    )
    # BG/NBD dropout: the number of repeat purchases before leaving is geometric (0 allowed:
    # some leave right after their first purchase)
    log_stay = F.log(F.greatest(F.lit(1e-12), F.lit(1.0) - F.col("p_drop")))
    allowed = F.when(F.col("p_drop") <= 0, F.lit(1_000_000)).otherwise(
        F.least(F.lit(1_000_000.0), F.floor(F.log(_u_open(seed, 7, idc)) / F.least(log_stay, F.lit(-1e-12))))
    )
    return draws.select(
        "*",
        F.greatest(span, F.lit(0.0)).alias("span"),
        allowed.cast("int").alias("repeats_allowed"),
    )


def _with_order_days(staged: DataFrame, seed: int) -> DataFrame:
    """The customer columns with ``order_days`` (the purchases, draws 8 and up), ``n_orders``,
    ``first_ago`` and ``last_ago``; prospects never buy."""
    days = F.transform(F.col("offsets"), lambda s: F.col("first_ago") - F.floor(s).cast("int"))
    is_buyer = F.col("archetype") != F.lit(PROSPECTS)
    return (
        with_purchase_offsets(staged, seed)
        .select(
            "id",
            S.CUSTOMER_ID,
            "arch",
            "archetype",
            F.when(is_buyer, days).otherwise(F.array().cast("array<int>")).alias("order_days"),
            "aov",
            "return_prob",
            "pref_channel",
            "sessions_90d",
            "pref_acq",
        )
        .select(
            "*",
            F.size("order_days").alias("n_orders"),
            F.when(F.size("order_days") > 0, F.element_at("order_days", 1)).alias("first_ago"),
            F.when(F.size("order_days") > 0, F.element_at("order_days", -1)).alias("last_ago"),
        )
    )


def transactions(base: DataFrame, seed: int, end: dt.date = DEFAULT_END) -> DataFrame:
    """Order lines per the input contract, returns included as negative lines of the same order."""
    end_s = _epoch(end) + 86_399
    end_ts = F.timestamp_seconds(F.lit(end_s))
    # posexplode_outer and a filter on its output: a plain posexplode makes the optimizer infer
    # size(order_days) > 0 and push it below the projections, inlining the whole purchase process
    # into one filter expression (a plan too large for a small driver)
    orders = base.select("*", F.posexplode_outer(F.col("order_days")).alias("k", "days_ago")).where(
        F.col("k").isNotNull()
    )
    key = [F.col("id"), F.col("k")]
    days_ago = F.least(F.lit(HISTORY_DAYS), F.col("days_ago"))
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
    # a buyer signed up at most 20 days before the first purchase
    signup_ago = F.when(F.col("n_orders") == 0, _int_between(_u(seed, 40, idc), 0, 365)).otherwise(
        F.least(F.lit(HISTORY_DAYS), F.col("first_ago")) + _int_between(_u(seed, 41, idc), 0, 20)
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


# ---- the generated input lakehouse (``segspark generate``, the demo) ------------------------------
def write_lakehouse(
    settings: Settings,
    out_dir: str,
    customer_count: int,
    seed: int = 42,
    dirty: bool = False,
    end: dt.date = DEFAULT_END,
    spark: SparkSession | None = None,
    uniform_spend: bool = False,
) -> dict[str, Any]:
    """Write a synthetic input lakehouse (Delta tables) under ``out_dir``; returns paths and counts.
    ``uniform_spend``: one mean order value for every archetype (see :func:`customer_base`)."""
    if customer_count < 1:
        raise SegsparkError("--customers must be at least 1")
    from segspark.io import Lakehouse, storage
    from segspark.session import GENERATED_TX_BYTES_PER_CUSTOMER, delta_jars_for, get_spark

    storage.configure(settings.lakehouse.s3)
    s3a = storage.hadoop_conf() if storage.is_s3(str(out_dir)) else None
    session = spark or get_spark(
        settings.spark,
        delta=delta_jars_for(settings.lakehouse.engine),
        s3a=s3a,
        tx_bytes=customer_count * GENERATED_TX_BYTES_PER_CUSTOMER,  # the demo's run reuses this session
    )
    lake = Lakehouse(session, settings)
    root = storage.root_of(str(out_dir))
    base = customer_base(session, customer_count, seed, uniform_spend=uniform_spend).persist()
    tx = transactions(base, seed, end)
    crm = customers(base, seed, end)
    frames: dict[str, DataFrame] = {
        "transactions": dirty_transactions(tx, seed, end) if dirty else tx,
        "customers": dirty_customers(crm) if dirty else crm,
        "events": events(base, seed, end),
        "marketing_spend": marketing_spend(crm, seed, end),
        "ground_truth": ground_truth(base),
    }
    paths: dict[str, str] = {}
    rows: dict[str, int] = {}
    started = time.perf_counter()
    for name, df in frames.items():
        path = storage.join(root, name)
        t0 = time.perf_counter()
        res = lake.write_dataset(df, path)
        paths[name] = path
        rows[name] = res.rows
        log.info("generated %s: %s rows", name, res.rows)
        log.info("generate_%s took %.1f s", name, time.perf_counter() - t0)
    base.unpersist()
    return {"paths": paths, "rows": rows, "seconds": time.perf_counter() - started, "end": end.isoformat()}


def demo_overrides(data_paths: dict[str, str]) -> list[str]:
    """``--set`` items that point the inputs at a generated lakehouse."""
    items = []
    for name in INPUTS:
        items += [f"input.{name}.path={data_paths[name]}", f"input.{name}.format=delta"]
    items += ["quality.currency.rates={EUR: 1.08, GBP: 1.27}"]
    return items


def example_customer_id(data_paths: dict[str, str]) -> str | None:
    """One source customer id of a generated lakehouse (for the demo's printed erase command)."""
    try:
        from deltalake import DeltaTable

        head = DeltaTable(data_paths["transactions"]).to_pyarrow_dataset().head(1, columns=[S.CUSTOMER_ID])
    except Exception as exc:  # only a hint in a printed command: never fail the demo for it
        log.debug("no example customer id: %s", exc)
        return None
    return str(head.column(0)[0]) if head.num_rows else None
