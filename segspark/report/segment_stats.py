"""Per-segment statistics for the report: the segment cells (one Spark aggregation), the k-anonymous
per-type views, the segment KPIs and the demographic breakdowns.

Only counts and sums per group reach the driver (sufficient statistics), so merged groups stay
exact. k-anonymity: within each segment type, a segment with fewer than ``report.min_segment_size``
customers is never shown on its own; such segments merge into "Other" (:func:`k_anonymize`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.errors import InputError
from segspark.ingest import blank_to_null
from segspark.report.aggregates import small_table
from segspark.report.data import (
    ADDITIVE,
    ALL,
    KPI_MERGE,
    LIFECYCLE_ORDER,
    MEAN_MEASURES,
    OTHER,
    SEGMENT_TYPES,
    UNASSIGNED,
    SegmentView,
)
from segspark.schema import (
    CHURN_RISK,
    CLV,
    CUSTOMERS,
    FREQUENCY,
    KPI,
    LIFECYCLE_STAGE,
    MONETARY,
    REVENUE,
    SEGMENT,
    SEGMENT_TYPE,
    VALUE,
)


def _opt(df: DataFrame, name: str, type_: str) -> Column:
    return (F.col(name) if name in df.columns else F.lit(None)).cast(type_).alias(name)


def _additive(df: pd.DataFrame) -> list[str]:
    return [c for c in ADDITIVE if c in df.columns]


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num / den.where(den > 0)


def segment_statistics(
    segments: DataFrame, high_churn_risk: float, max_cells: int = 200_000
) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Sufficient statistics per (segment_type, segment, lifecycle stage), from one Spark aggregation.

    Spark groups the customers by every combination of their segment labels and lifecycle stage
    (a few hundred cells: the labels have low cardinality) into counts and sums; pandas then rolls
    the cells up per segment type (and ``all``). Counts and sums add up, so the result is exact.
    Returns the statistics, the segment types present and the cells themselves (``seg__<type>``
    labels, ``_stage`` and the additive columns: the cross-tab of every segment type).
    """
    missing = [c for c in (S.CUSTOMER_ID, MONETARY, FREQUENCY) if c not in segments.columns]
    if missing:
        raise InputError(f"table 'customer_segments': missing column(s) {', '.join(missing)} for the report")
    types = [t for t in SEGMENT_TYPES if t in segments.columns]
    labels = [F.coalesce(F.col(t).cast("string"), F.lit(UNASSIGNED)).alias(f"seg__{t}") for t in types]
    stage = _opt(segments, LIFECYCLE_STAGE, "string").alias("_stage")
    freq, churn = F.col(FREQUENCY).cast("double"), _opt(segments, CHURN_RISK, "double")
    aggs = [
        F.count(F.lit(1)).alias(CUSTOMERS),
        F.count_if(freq > 0).alias("buyers"),
        F.count_if(freq >= 2).alias("repeat_buyers"),
        F.sum(F.coalesce(F.col(MONETARY).cast("double"), F.lit(0.0))).alias(REVENUE),
        F.count_if(churn >= F.lit(high_churn_risk)).alias("high_churn_risk"),
    ]
    for m in MEAN_MEASURES:
        x = _opt(segments, m, "double")
        aggs += [F.sum(x).alias(f"sum_{m}"), F.count(x).alias(f"n_{m}")]
    spend = F.col(MONETARY).cast("double")
    aggs.append(F.sum(spend * spend).alias("sumsq_monetary"))
    cells = small_table(
        segments.groupBy(*labels, stage).agg(*aggs), S.CUSTOMER_SEGMENTS + " (segment cells)", max_cells
    )
    for c in ADDITIVE:
        cells[c] = pd.to_numeric(cells[c], errors="coerce").fillna(0.0)
    parts = []
    for t in [*types, ALL]:
        key = cells[f"seg__{t}"] if t != ALL else pd.Series(ALL, index=cells.index)
        g = cells.assign(**{SEGMENT: key}).groupby([SEGMENT, "_stage"], dropna=False, as_index=False)[
            list(ADDITIVE)
        ]
        parts.append(g.sum().assign(**{SEGMENT_TYPE: t}))
    stats = pd.concat(parts, ignore_index=True)
    return stats[[SEGMENT_TYPE, SEGMENT, "_stage", *ADDITIVE]], types, cells


# Demographic segmentation: the attributes of customer_features the report breaks down by.
DEMOGRAPHICS_B2C: tuple[str, ...] = ("age_band", S.COUNTRY, S.GENDER, S.INCOME_BAND)


DEMOGRAPHICS_B2B: tuple[str, ...] = (S.INDUSTRY, S.COMPANY_SIZE)


UNKNOWN = "unknown"  # a customer without the attribute (no CRM row, or the CRM left it empty)


def demographic_tables(
    segments: DataFrame, features: DataFrame, attributes: tuple[str, ...], k: int, max_groups: int = 20_000
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Customers, revenue, mean CLV and mean churn risk per value of each demographic attribute.

    One Spark aggregation: the customers' attribute values are stacked as (attribute, value) pairs
    and grouped, so only counts and sums per group reach the driver (groups are the attributes'
    values: bands, countries; at most ``max_groups``). Groups smaller than ``k`` merge into "Other"
    (:func:`k_anonymize`). An attribute no customer has is left out and named in the notes.
    """
    present = [a for a in attributes if a in features.columns]
    notes = [f"{a.replace('_', ' ')}: not in customer_features" for a in attributes if a not in present]
    if not present:
        return {}, notes
    demo = features.select(S.CUSTOMER_ID, *present)
    scores = [c for c in (CLV, CHURN_RISK) if c in segments.columns]
    base = segments.select(S.CUSTOMER_ID, MONETARY, FREQUENCY, *scores)
    joined = base.join(demo, on=S.CUSTOMER_ID, how="left")
    pairs = F.explode(
        F.array(
            *[
                F.struct(
                    F.lit(a).alias("attribute"),
                    F.coalesce(blank_to_null(F.col(a)), F.lit(UNKNOWN)).alias("value"),
                )
                for a in present
            ]
        )
    ).alias("d")
    aggs = [
        F.count(F.lit(1)).alias(CUSTOMERS),
        F.count_if(F.col(FREQUENCY) > 0).alias("buyers"),
        F.sum(F.coalesce(F.col(MONETARY).cast("double"), F.lit(0.0))).alias(REVENUE),
    ]
    for m in scores:
        aggs += [F.sum(F.col(m).cast("double")).alias(f"sum_{m}"), F.count(F.col(m)).alias(f"n_{m}")]
    grouped = (
        joined.select(pairs, MONETARY, FREQUENCY, *scores)
        .groupBy(F.col("d.attribute").alias("attribute"), F.col("d.value").alias(SEGMENT))
        .agg(*aggs)
    )
    cells = small_table(grouped, S.CUSTOMER_FEATURES + " (demographic groups)", max_groups)
    out: dict[str, pd.DataFrame] = {}
    for a in present:
        part = cells[cells["attribute"] == a].drop(columns=["attribute"])
        if part.empty or set(part[SEGMENT]) == {UNKNOWN}:
            notes.append(f"{a.replace('_', ' ')}: no customer has it")
            continue
        total_c, total_r = float(part[CUSTOMERS].sum()), float(part[REVENUE].sum())
        shown, _, _, _ = k_anonymize(part.reset_index(drop=True), k)
        shown = shown.assign(
            customer_share=shown[CUSTOMERS] / total_c if total_c else np.nan,
            revenue_share=shown[REVENUE] / total_r if total_r else np.nan,
        )
        for m in scores:
            shown[f"mean_{m}"] = _ratio(shown[f"sum_{m}"], shown[f"n_{m}"])
        out[a] = shown.reset_index(drop=True)
    return out, notes


def _derive(table: pd.DataFrame, type_customers: float, type_revenue: float) -> pd.DataFrame:
    out = table.copy()
    out["customer_share"] = out[CUSTOMERS] / type_customers if type_customers else np.nan
    out["revenue_share"] = out[REVENUE] / type_revenue if type_revenue else np.nan
    for m in MEAN_MEASURES:
        out[f"mean_{m}"] = _ratio(out[f"sum_{m}"], out[f"n_{m}"])
    # population standard deviation of revenue per customer, from the sums (exact, additive)
    var = _ratio(out["sumsq_monetary"], out[f"n_{MONETARY}"]) - out[f"mean_{MONETARY}"] ** 2
    out["sd_monetary"] = np.sqrt(var.clip(lower=0.0))
    out["repeat_rate"] = _ratio(out["repeat_buyers"], out["buyers"])
    out["high_churn_risk_share"] = _ratio(out["high_churn_risk"], out[f"n_{CHURN_RISK}"])
    return out


def k_anonymize(
    per_segment: pd.DataFrame, k: int, order: list[str] | None = None
) -> tuple[pd.DataFrame, int, int, int]:
    """Merge segments with fewer than ``k`` customers into "Other" (sums of additive columns).

    Returns (table, merged segments, merged customers, suppressed customers); "Other" is dropped
    (suppressed) when it is itself smaller than ``k``. Rows keep ``order`` when given, else
    descending size; "Other" comes last.
    """
    small = per_segment[CUSTOMERS] < k
    big = per_segment[~small].copy()
    merged = per_segment[small]
    n_merged, c_merged, suppressed = len(merged), int(merged[CUSTOMERS].sum()), 0
    if n_merged:
        existing = big[big[SEGMENT] == OTHER]
        other = merged[_additive(merged)].sum(numeric_only=True)
        if not existing.empty:
            other = other + existing[_additive(existing)].sum(numeric_only=True)
            big = big[big[SEGMENT] != OTHER]
        if other[CUSTOMERS] >= k:
            row = {SEGMENT: OTHER, **{c: float(other[c]) for c in other.index}}
            big = pd.concat([big, pd.DataFrame([row])], ignore_index=True)
        else:
            suppressed = int(other[CUSTOMERS])
    if order:
        rank = {s: i for i, s in enumerate(order)}
        big = big.assign(_o=[rank.get(s, len(rank)) for s in big[SEGMENT]], _c=-big[CUSTOMERS])
        big = big.sort_values(["_o", "_c", SEGMENT]).drop(columns=["_o", "_c"])
    else:
        big = big.assign(_c=-big[CUSTOMERS]).sort_values(["_c", SEGMENT]).drop(columns=["_c"])
    is_other = big[SEGMENT] == OTHER
    big = pd.concat([big[~is_other], big[is_other]], ignore_index=True)
    return big.reset_index(drop=True), n_merged, c_merged, suppressed


def segment_views(
    stats: pd.DataFrame, types: list[str], k: int, order: dict[str, list[str]]
) -> tuple[dict[str, SegmentView], dict[str, float]]:
    """k-anonymous per-type tables and lifecycle mixes from :func:`segment_statistics`."""
    views: dict[str, SegmentView] = {}
    per = stats.groupby([SEGMENT_TYPE, SEGMENT], as_index=False)[list(ADDITIVE)].sum()
    everyone = per[per[SEGMENT_TYPE] == ALL]
    totals_row = (
        everyone[list(ADDITIVE)].sum() if not everyone.empty else pd.Series(0.0, index=list(ADDITIVE))
    )
    totals = {c: float(totals_row[c]) for c in ADDITIVE}
    for t in types:
        table = per[per[SEGMENT_TYPE] == t].drop(columns=[SEGMENT_TYPE])
        shown, n_merged, c_merged, suppressed = k_anonymize(table, k, order.get(t))
        shown = _derive(shown, totals[CUSTOMERS], totals[REVENUE])
        mix = None
        part = stats[(stats[SEGMENT_TYPE] == t) & stats["_stage"].notna()]
        if not part.empty:
            names = set(shown[SEGMENT])
            seg = part[SEGMENT].where(part[SEGMENT].isin(names), OTHER)
            mix = (
                part.assign(**{SEGMENT: seg})
                .pivot_table(index=SEGMENT, columns="_stage", values=CUSTOMERS, aggfunc="sum", fill_value=0)
                .reindex(index=[s for s in shown[SEGMENT] if s in set(seg)])
            )
            mix = mix[
                [s for s in LIFECYCLE_ORDER if s in mix.columns]
                + [s for s in mix.columns if s not in LIFECYCLE_ORDER]
            ]
            mix.columns.name = None
        views[t] = SegmentView(t, shown, mix, n_merged, c_merged, suppressed)
    return views, totals


def kpi_tables(kpis: DataFrame, views: dict[str, SegmentView], k: int) -> dict[str, pd.DataFrame]:
    """segment_kpis pivoted per segment type (segment x kpi), small segments merged into Other."""
    pdf = small_table(
        kpis.select(SEGMENT_TYPE, SEGMENT, KPI, F.col(VALUE).cast("double").alias(VALUE)), S.SEGMENT_KPIS
    )
    out: dict[str, pd.DataFrame] = {}
    for t, g in pdf.groupby(SEGMENT_TYPE, sort=False):
        wide = g.pivot_table(index=SEGMENT, columns=KPI, values=VALUE, aggfunc="first")
        wide.columns.name = None
        if "customers" not in wide.columns:
            continue
        small = wide["customers"] < k
        big, merged = wide[~small], wide[small]
        if len(merged):
            row: dict[str, float] = {}
            w = merged["customers"]
            for kpi in wide.columns:
                how = KPI_MERGE.get(kpi)
                if how == "sum":
                    row[kpi] = float(merged[kpi].sum())
                elif how == "weighted" and w.sum() > 0 and merged[kpi].notna().all():
                    row[kpi] = float((merged[kpi] * w).sum() / w.sum())
                elif how == "aov" and "orders_per_customer" in merged and "revenue" in merged:
                    purchases = float((merged["orders_per_customer"] * w).sum())
                    row[kpi] = float(merged["revenue"].sum()) / purchases if purchases else math.nan
                else:
                    row[kpi] = math.nan
            if row.get("customers", 0) >= k:
                big = pd.concat([big, pd.DataFrame([row], index=[OTHER])])
        view = views.get(str(t))
        if view is not None:
            order = [s for s in view.names() if s in big.index] + [
                s for s in big.index if s not in view.names()
            ]
            big = big.reindex(order)
        out[str(t)] = big
    return out


def channel_mix(
    segments: DataFrame, features: DataFrame, segment_type: str, channels: list[str], k: int
) -> pd.DataFrame | None:
    """Share of purchase orders per channel (``orders_<channel>`` of customer_features, plus
    ``orders_other``) for each segment of ``segment_type`` with at least ``k`` customers; None when
    the features have no channel columns. One Spark aggregation; only the sums reach the driver."""
    cols = [
        c
        for c in [*(S.channel_column(ch) for ch in channels), S.channel_column("other")]
        if c in features.columns
    ]
    if not cols or segment_type not in segments.columns:
        return None
    joined = segments.select(S.CUSTOMER_ID, F.col(segment_type).cast("string").alias(SEGMENT)).join(
        features.select(S.CUSTOMER_ID, *cols), on=S.CUSTOMER_ID, how="left"
    )
    sums = [F.sum(F.coalesce(F.col(c).cast("double"), F.lit(0.0))).alias(c) for c in cols]
    grouped = (
        joined.where(F.col(SEGMENT).isNotNull())
        .groupBy(SEGMENT)
        .agg(F.count(F.lit(1)).alias(CUSTOMERS), *sums)
    )
    t = small_table(grouped, S.CUSTOMER_FEATURES + " (channel mix)", 10_000)
    t = t[pd.to_numeric(t[CUSTOMERS]) >= k].set_index(SEGMENT)[cols].astype(float)
    t.columns = [c.removeprefix("orders_") for c in cols]
    total = t.sum(axis=1)
    return t.div(total.where(total > 0), axis=0)
