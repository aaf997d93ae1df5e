"""Cluster profiles and data-driven persona names that stay stable across runs.

A profile is one small row per cluster: size, share, the mean and median of every raw feature, and the
z-score of the cluster's mean (of the logged, imputed feature) against the whole population. Names come
from the most distinctive traits (largest |z|), e.g. "Lapsed big spenders", with a one-sentence
description quoting numbers. Before naming, clusters are matched to the previous run's profiles by
z-space centroid distance with the Hungarian algorithm; a match closer than
``persona_match_max_distance`` keeps its previous name. ``clustering.persona_names`` overrides any name
(keyed by generated name or by cluster id).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.optimize import linear_sum_assignment

from segspark.clustering import prep
from segspark.config import ClusteringConfig
from segspark.schema import CLUSTER_ID, MEDIAN_PREFIX, PERSONA, PERSONA_DESCRIPTION, Z_PREFIX
from segspark.schema import PROFILE_SHARE as SHARE
from segspark.schema import PROFILE_SIZE as SIZE

log = logging.getLogger(__name__)

NOISE_PERSONA = "Outliers"
TYPICAL_PERSONA = "Typical customers"
MEDIAN_ACCURACY = 1000


@dataclass(frozen=True)
class Trait:
    """How a feature reads when a cluster is high or low on it."""

    high_adj: str
    low_adj: str
    high_noun: str | None = None
    low_noun: str | None = None


TRAITS: dict[str, Trait] = {
    "recency_days": Trait("Lapsed", "Recent"),
    "frequency": Trait("Frequent", "One-off", "regulars", "one-timers"),
    "monetary": Trait("High-spending", "Low-spending", "big spenders", "light spenders"),
    "avg_order_value": Trait("Big-basket", "Small-basket", "big-ticket buyers", "bargain hunters"),
    "tenure_days": Trait("Long-standing", "New", "veterans", "newcomers"),
    "return_rate": Trait("Return-prone", "Low-return", "returners"),
    "mean_interpurchase_days": Trait("Slow-cycle", "Fast-cycle"),
    "category_breadth": Trait("Broad-basket", "Single-category", "explorers", "specialists"),
    "avg_basket_size": Trait("Bulk-buying", "Single-item"),
    "sessions_90d": Trait("Engaged", "Disengaged", "browsers"),
    "active_days_90d": Trait("Active", "Inactive"),
    "conversion_rate_90d": Trait("Decisive", "Hesitant", "converters", "window shoppers"),
    "days_since_last_visit": Trait("Dormant", "Visiting"),
    "p_alive": Trait("Live", "Fading"),
    "expected_purchases": Trait("Promising", "Quiet"),
    "clv": Trait("High-value", "Low-value"),
}


def mean_col(f: str) -> str:
    return f


def median_col(f: str) -> str:
    return f"{MEDIAN_PREFIX}{f}"


def z_col(f: str) -> str:
    return f"{Z_PREFIX}{f}"


def _medians(df: DataFrame, features: list[str], prediction_col: str) -> dict[object, list[float]]:
    aggs = [
        F.percentile_approx(F.col(f).cast("double"), 0.5, MEDIAN_ACCURACY).alias(f"q{i}")
        for i, f in enumerate(features)
    ]
    rows = df.rollup(F.col(prediction_col).alias(CLUSTER_ID)).agg(*aggs).collect()
    return {r[CLUSTER_ID]: [_num(r[f"q{i}"]) for i in range(len(features))] for r in rows}


def profile_clusters(
    assigned: DataFrame,
    features: list[str],
    prediction_col: str,
    medians_from: DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Per-cluster size, share, mean/median of each raw feature and z-score of each (logged, imputed) mean.

    One ``groupBy`` pass yields per-cluster sufficient statistics (count, mean and sample variance per
    feature); the population row is combined from them on the driver (Chan et al.'s pairwise
    update), so the customers are aggregated once, not twice as a ``rollup`` would. The medians
    (used only in descriptions) come from ``medians_from`` when given, a seeded sample of the same
    assignments, because approximate percentiles per group are the costly part at scale.
    Returns (profiles, population) where population maps feature -> {mean, median, t_mean, t_sd}.
    """
    aggs = [F.count(F.lit(1)).alias(SIZE)]
    for i, f in enumerate(features):
        t = F.col(prep.imputed(f))
        aggs += [
            F.count(F.col(f)).alias(f"c{i}"),
            F.avg(F.col(f).cast("double")).alias(f"m{i}"),
            F.avg(t).alias(f"t{i}"),
            F.var_samp(t).alias(f"v{i}"),
        ]
    # one row per cluster: an aggregate, never customer-level
    grouped = assigned.groupBy(F.col(prediction_col).alias(CLUSTER_ID)).agg(*aggs)
    rows = [r.asDict() for r in grouped.collect()]
    med = _medians(assigned if medians_from is None else medians_from, features, prediction_col)
    nan_row = [math.nan] * len(features)
    clusters = sorted(rows, key=lambda r: r[CLUSTER_ID])
    n = sum(r[SIZE] for r in clusters)
    population = {
        f: {
            "mean": _pooled_mean([(r[f"c{i}"], r[f"m{i}"]) for r in clusters]),
            "median": _num(med.get(None, nan_row)[i]),
            **_pooled_mean_sd([(r[SIZE], r[f"t{i}"], r[f"v{i}"]) for r in clusters]),
        }
        for i, f in enumerate(features)
    }
    records = []
    for r in clusters:
        rec: dict[str, object] = {CLUSTER_ID: int(r[CLUSTER_ID]), SIZE: int(r[SIZE]), SHARE: r[SIZE] / n}
        q = med.get(r[CLUSTER_ID], nan_row)
        for i, f in enumerate(features):
            rec[mean_col(f)] = _num(r[f"m{i}"])
            rec[median_col(f)] = _num(q[i])
        for i, f in enumerate(features):
            sd = population[f]["t_sd"]
            rec[z_col(f)] = (_num(r[f"t{i}"]) - population[f]["t_mean"]) / sd if sd and sd > 0 else 0.0
        records.append(rec)
    cols = [CLUSTER_ID, SIZE, SHARE, *features, *map(median_col, features), *map(z_col, features)]
    return pd.DataFrame.from_records(records, columns=cols), population


def _pooled_mean(groups: list[tuple[int, float | None]]) -> float:
    """Mean over the union of groups given (count of non-null values, group mean)."""
    n = sum(c for c, m in groups if m is not None)
    return sum(c * m for c, m in groups if m is not None) / n if n else math.nan


def _pooled_mean_sd(groups: list[tuple[int, float | None, float | None]]) -> dict[str, float]:
    """Population mean and sample standard deviation from per-group (count, mean, sample variance).

    Chan, Golub & LeVeque's pairwise combination: the within-group sums of squares plus the
    between-group term, with no subtraction of large sums (numerically stable).
    """
    live = [(c, m, v) for c, m, v in groups if c and m is not None]
    n = sum(c for c, _, _ in live)
    if n == 0:
        return {"t_mean": math.nan, "t_sd": math.nan}
    mean = sum(c * m for c, m, _ in live) / n
    m2 = sum(
        (c - 1) * (v if v is not None and not math.isnan(v) else 0.0) + c * (m - mean) ** 2
        for c, m, v in live
    )
    return {"t_mean": mean, "t_sd": math.sqrt(m2 / (n - 1)) if n > 1 else math.nan}


def _num(v: object) -> float:
    return math.nan if v is None else float(v)  # type: ignore[arg-type]


def _ranked_traits(row: pd.Series, features: list[str], min_z: float) -> list[tuple[str, float]]:
    zs = [(f, float(row[z_col(f)])) for f in features if not math.isnan(float(row[z_col(f)]))]
    zs = [t for t in zs if abs(t[1]) >= min_z]
    return sorted(zs, key=lambda t: (-abs(t[1]), t[0]))


def _words(f: str, z: float) -> tuple[str, str | None]:
    trait = TRAITS.get(f)
    label = f.replace("_", " ")
    if trait is None:
        return (f"High-{label}" if z > 0 else f"Low-{label}"), None
    return (trait.high_adj, trait.high_noun) if z > 0 else (trait.low_adj, trait.low_noun)


def generate_name(row: pd.Series, features: list[str], cfg: ClusteringConfig, extra: int = 0) -> str:
    """A short name from the most distinctive traits: an adjective, then a noun ("Lapsed big spenders")."""
    every = _ranked_traits(row, features, cfg.persona_min_z)
    # recent or lapsing decides the play: when recency is distinctive it leads the name on every run,
    # so a lapsing group is not "Fading big spenders" once and "Broad-basket big spenders" the next
    # time spend edges past recency (a stable sort: the other traits keep their order)
    every = sorted(every, key=lambda t: t[0] != "recency_days")
    ranked = every[: cfg.persona_traits + extra]
    if not ranked:
        return TYPICAL_PERSONA
    # the noun comes from the most distinctive trait that has one, even below the top traits
    noun_at = next((i for i, (f, z) in enumerate(every) if _words(f, z)[1]), None)
    noun = _words(*every[noun_at])[1] if noun_at is not None else "customers"
    adjs = [_words(f, z)[0] for i, (f, z) in enumerate(ranked) if i != noun_at]
    if not adjs:
        assert noun is not None
        return noun[0].upper() + noun[1:]
    words = [adjs[0], *[a.lower() for a in adjs[1:]], noun]
    return " ".join(w for w in words if w)


def _phrase(f: str, row: pd.Series, population: dict[str, dict[str, float]]) -> str:
    med, pmed = float(row[median_col(f)]), population[f]["median"]
    mean, pmean = float(row[mean_col(f)]), population[f]["mean"]
    ratio = (med / pmed) if pmed and pmed > 0 and not math.isnan(med) else None
    if f == "recency_days":
        return f"last order {med:.0f} days ago (all customers: {pmed:.0f})"
    if f == "frequency":
        return f"{mean:.1f} orders on average (all customers: {pmean:.1f})"
    if f in ("monetary", "avg_order_value", "clv"):
        what = {"monetary": "spent", "avg_order_value": "average order", "clv": "expected value"}[f]
        return f"{what} {ratio:.1f}x the median" if ratio is not None else f"{what} {med:,.0f} (median)"
    if f == "tenure_days":
        return f"customers for {med:.0f} days (all customers: {pmed:.0f})"
    if f in ("return_rate", "p_alive", "conversion_rate_90d"):
        return f"{f.replace('_', ' ')} {mean:.0%} (all customers: {pmean:.0%})"
    return f"{f.replace('_', ' ')} {mean:.3g} on average (all customers: {pmean:.3g})"


def describe(row: pd.Series, features: list[str], population: dict[str, dict[str, float]]) -> str:
    """One sentence with numbers for the cluster's most distinctive traits."""
    ranked = _ranked_traits(row, features, 0.0)[:3]
    head = f"{int(row[SIZE]):,} customers ({float(row[SHARE]):.1%} of the buyers clustered)"
    if int(row[CLUSTER_ID]) < 0:
        return f"{head} far from every dense group (density noise)"
    parts = [_phrase(f, row, population) for f, _ in ranked]
    return f"{head}: " + "; ".join(parts) + "." if parts else f"{head}: close to the average customer."


def match_previous(
    profiles: pd.DataFrame, previous: pd.DataFrame, features: list[str], max_distance: float
) -> dict[int, str]:
    """cluster_id -> previous persona for clusters whose z-centroid matches a previous one (Hungarian)."""
    common = [f for f in features if z_col(f) in previous.columns]
    cur = profiles[profiles[CLUSTER_ID] >= 0]
    prev = previous[(previous[CLUSTER_ID] >= 0) & previous[PERSONA].notna()]
    if not common or cur.empty or prev.empty:
        return {}
    a = cur[[z_col(f) for f in common]].to_numpy(float)
    b = prev[[z_col(f) for f in common]].to_numpy(float)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    cost = np.nan_to_num(cost, nan=1e9, posinf=1e9)  # a previous profile with a missing z-score never matches
    rows, cols = linear_sum_assignment(cost)
    out: dict[int, str] = {}
    for i, j in zip(rows, cols, strict=True):
        if cost[i, j] <= max_distance:
            out[int(cur.iloc[i][CLUSTER_ID])] = str(prev.iloc[j][PERSONA])
    log.info("persona matching: %d of %d clusters keep a previous name", len(out), len(cur))
    return out


def name_personas(
    profiles: pd.DataFrame,
    population: dict[str, dict[str, float]],
    features: list[str],
    cfg: ClusteringConfig,
    previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Add unique ``persona`` and ``persona_description`` columns (largest clusters are named first)."""
    inherited = (
        match_previous(profiles, previous, features, cfg.persona_match_max_distance)
        if previous is not None
        else {}
    )
    names: dict[int, str] = {}
    taken: set[str] = set(inherited.values())
    if previous is not None and PERSONA in previous.columns:
        # a group that matches no previous persona never takes one's name: readers would take it for
        # the same customers
        taken |= {str(p) for p in previous[PERSONA].dropna()}
    for cid, name in inherited.items():
        names[cid] = name
    if (profiles[CLUSTER_ID] < 0).any():
        taken.add(NOISE_PERSONA)
    order = profiles.sort_values([SIZE, CLUSTER_ID], ascending=[False, True])
    for _, row in order.iterrows():
        cid = int(row[CLUSTER_ID])
        if cid < 0:
            names[cid] = NOISE_PERSONA
            continue
        if cid in names:
            continue
        name = generate_name(row, features, cfg)
        extra = 1
        while name in taken and extra <= len(features):
            name = generate_name(row, features, cfg, extra)
            extra += 1
        base, i = name, 2
        while name in taken:
            name, i = f"{base} {i}", i + 1
        names[cid] = name
        taken.add(name)
    out = profiles.copy()
    out[PERSONA] = [names[int(c)] for c in out[CLUSTER_ID]]
    overrides = cfg.persona_names
    if overrides:
        out[PERSONA] = [
            overrides.get(str(int(c)), overrides.get(p, p))
            for c, p in zip(out[CLUSTER_ID], out[PERSONA], strict=True)
        ]
        if out[PERSONA].duplicated().any():
            log.warning("clustering.persona_names maps two clusters to the same name")
    out[PERSONA_DESCRIPTION] = [describe(r, features, population) for _, r in out.iterrows()]
    front = [CLUSTER_ID, PERSONA, PERSONA_DESCRIPTION, SIZE, SHARE]
    return out[front + [c for c in out.columns if c not in front]].reset_index(drop=True)
