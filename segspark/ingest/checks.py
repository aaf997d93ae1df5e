"""The look-ups some rules need over the whole input before any row is flagged: the order ids carried
by two or more customers, the outlier bound and the currency rates. Each reaches the driver with
at most a bounded result (``docs/driver_memory.md``)."""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.config import QualityConfig
from segspark.errors import InputError
from segspark.ingest.columns import blank_to_null

# Driver-memory limits (docs/driver_memory.md). The outlier quantile is exact while the tail above it
# has at most OUTLIER_TOP_K rows; beyond, it is estimated on a seeded sample of OUTLIER_SAMPLE_ROWS rows.
OUTLIER_TOP_K = 100_000
OUTLIER_SAMPLE_ROWS = 2_000_000
# Conflicting order ids broadcast from the driver up to this many (about 100 MB as a hash relation of
# ids); more (a feed whose order id is not an order key) join by a shuffle of the lines instead.
CONFLICTS_BROADCAST_ROWS = 1_000_000


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
    """``outlier_bound_value`` as a double literal (null without a finite amount)."""
    bound = outlier_bound_value(values, cfg, n)
    return F.lit(bound).cast("double")


def outlier_bound_value(values: DataFrame, cfg: QualityConfig, n: int | None = None) -> float | None:
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
        return None
    k = n - math.ceil(q * n) + 1
    if k <= OUTLIER_TOP_K:
        top = values.orderBy(F.col("_a").desc()).limit(k).collect()  # k numbers, no customer data
        return float(top[-1]["_a"]) * cfg.outlier_multiple
    # rank error (relative_error x n) must stay well inside the tail above the quantile
    acc = max(round(1.0 / cfg.relative_error), round(10.0 / (1.0 - q)))
    if n > OUTLIER_SAMPLE_ROWS:
        # a seeded sample of ~2M rows leaves ~2,000 rows above p99.9: the bound moves by well
        # under 1% while the sketch's cost stops growing with the input
        values = values.sample(fraction=OUTLIER_SAMPLE_ROWS / n, seed=20_241_124)
    row = values.agg(F.percentile_approx(F.col("_a"), q, acc).alias("_q")).first()
    if row is None or row["_q"] is None:
        return None
    return float(row["_q"]) * cfg.outlier_multiple


def base_rates(cfg: QualityConfig, currency_rates: DataFrame | None) -> dict[str, float] | None:
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
