"""Persona profiles, names, descriptions and their stability across runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from segspark.clustering import personas as P
from segspark.clustering import prep
from segspark.config import ClusteringConfig

FEATURES = ["recency_days", "monetary", "frequency"]


def _profiles(z: list[list[float]], sizes: list[int]) -> pd.DataFrame:
    n = sum(sizes)
    rows = []
    for cid, (zs, size) in enumerate(zip(z, sizes, strict=True)):
        rec = {"cluster_id": cid, "size": size, "share": size / n}
        for f, v in zip(FEATURES, zs, strict=True):
            rec[f] = 100.0 * (1 + v)
            rec[P.median_col(f)] = 100.0 * (1 + v)
            rec[P.z_col(f)] = v
        rows.append(rec)
    return pd.DataFrame(rows)


POPULATION = {f: {"mean": 100.0, "median": 100.0, "t_mean": 0.0, "t_sd": 1.0} for f in FEATURES}


def test_names_from_most_distinctive_traits() -> None:
    prof = _profiles([[2.0, 1.5, 0.1], [-1.0, 0.2, 1.8], [0.05, -0.1, 0.0]], [30, 50, 20])
    out = P.name_personas(prof, POPULATION, FEATURES, ClusteringConfig())
    names = dict(zip(out["cluster_id"], out["persona"], strict=True))
    assert names[0] == "Lapsed big spenders"
    assert names[1] == "Recent regulars"
    assert names[2] == P.TYPICAL_PERSONA  # no |z| above persona_min_z
    desc = out.loc[out["cluster_id"] == 0, "persona_description"].iloc[0]
    # hand computed: median monetary 250 vs population 100 -> 2.5x; recency 300 days vs 100
    assert desc.startswith("30 customers (30.0% of the buyers clustered)")
    assert "spent 2.5x the median" in desc and "last order 300 days ago (all customers: 100)" in desc
    assert list(out.columns[:5]) == ["cluster_id", "persona", "persona_description", "size", "share"]


def test_names_are_unique() -> None:
    prof = _profiles([[2.0, 1.5, 0.6], [1.9, 1.4, -0.7]], [60, 40])
    out = P.name_personas(prof, POPULATION, FEATURES, ClusteringConfig())
    assert out["persona"].is_unique
    assert out.loc[out["cluster_id"] == 0, "persona"].iloc[0] == "Lapsed big spenders"  # the larger keeps it
    assert out.loc[out["cluster_id"] == 1, "persona"].iloc[0] == "Lapsed one-off big spenders"


def test_names_stable_across_runs_by_hungarian_matching() -> None:
    cfg = ClusteringConfig()
    first = _profiles([[2.0, 1.5, 0.1], [-1.0, 0.2, 1.8], [0.3, -1.2, -0.9]], [30, 50, 20])
    first = P.name_personas(first, POPULATION, FEATURES, cfg, None)
    first.loc[first["cluster_id"] == 2, "persona"] = "Bargain hunters"  # e.g. renamed by a marketer earlier
    # Next run: same groups, shuffled ids and drifted a little so fresh names would differ.
    second = _profiles([[-0.4, -1.0, -1.1], [1.2, 2.1, 0.2], [-1.1, 0.3, 1.6]], [21, 29, 50])
    out = P.name_personas(second, POPULATION, FEATURES, cfg, previous=first)
    names = dict(zip(out["cluster_id"], out["persona"], strict=True))
    assert names == {0: "Bargain hunters", 1: "Lapsed big spenders", 2: "Recent regulars"}
    # A brand-new group far from every previous centroid gets a fresh, unique name.
    third = _profiles([[2.0, 1.5, 0.1], [-3.0, -3.0, 3.0]], [50, 50])
    out3 = P.name_personas(third, POPULATION, FEATURES, cfg, previous=first)
    assert out3.loc[0, "persona"] == "Lapsed big spenders"
    assert out3.loc[1, "persona"] not in set(first["persona"])


def test_config_overrides_and_noise() -> None:
    prof = _profiles([[2.0, 1.5, 0.1], [-1.0, 0.2, 1.8], [0.0, 3.0, 3.0]], [30, 50, 5])
    prof.loc[2, "cluster_id"] = -1
    cfg = ClusteringConfig(persona_names={"Lapsed big spenders": "Win-back VIPs", "1": "Core"})
    out = P.name_personas(prof, POPULATION, FEATURES, cfg)
    names = dict(zip(out["cluster_id"], out["persona"], strict=True))
    assert names == {0: "Win-back VIPs", 1: "Core", -1: P.NOISE_PERSONA}


def test_profile_clusters_against_pandas(spark) -> None:  # type: ignore[no-untyped-def]
    schema = T.StructType(
        [
            T.StructField("customer_id", T.StringType(), False),
            T.StructField("prediction", T.IntegerType(), False),
            T.StructField("monetary", T.DoubleType(), True),
            T.StructField(prep.imputed("monetary"), T.DoubleType(), False),
        ]
    )
    rows = [
        ("a", 0, 10.0, 1.0),
        ("b", 0, 20.0, 2.0),
        ("c", 0, None, 1.5),  # null raw value: left out of the raw mean, imputed value used for z
        ("d", 1, 100.0, 6.0),
        ("e", 1, -5.0, 7.0),  # edge: negative net spend
        ("f", 2, 30.0, 3.0),  # edge: a one-customer cluster has no variance of its own
    ]
    df = spark.createDataFrame(rows, schema)
    prof, pop = P.profile_clusters(df, ["monetary"], "prediction")
    pdf = pd.DataFrame(rows, columns=["id", "k", "m", "t"])
    sd = pdf["t"].std(ddof=1)
    for k in (0, 1, 2):
        g = pdf[pdf["k"] == k]
        row = prof[prof["cluster_id"] == k].iloc[0]
        assert row["size"] == len(g) and row["share"] == pytest.approx(len(g) / 6)
        assert row["monetary"] == pytest.approx(g["m"].mean())
        assert row[P.z_col("monetary")] == pytest.approx((g["t"].mean() - pdf["t"].mean()) / sd)
    assert pop["monetary"]["median"] == 20.0  # percentile_approx: the lower median of (-5, 10, 20, 30, 100)
    assert math.isclose(pop["monetary"]["mean"], np.nanmean([10, 20, 100, -5, 30]))
    assert pop["monetary"]["t_mean"] == pytest.approx(pdf["t"].mean())
    assert pop["monetary"]["t_sd"] == pytest.approx(sd, rel=1e-12)


def test_a_lapsing_group_is_named_for_it_whichever_trait_is_larger() -> None:
    """Run to run, spend can edge past recency; the name still says the group is lapsing."""
    cfg = ClusteringConfig()
    # recency third of three distinctive traits (the name keeps two), then first
    spend_first = P.name_personas(_profiles([[1.3, 1.6, 1.5]], [10]), POPULATION, FEATURES, cfg)
    recency_first = P.name_personas(_profiles([[1.7, 1.6, 1.5]], [10]), POPULATION, FEATURES, cfg)
    assert spend_first.loc[0, "persona"] == recency_first.loc[0, "persona"]
    assert spend_first.loc[0, "persona"].startswith("Lapsed")
