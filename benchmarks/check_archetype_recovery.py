"""How well a demo run's clusters recover the planted archetypes (adjusted Rand index).

    segspark demo --out ./segspark-demo && python benchmarks/check_archetype_recovery.py ./segspark-demo

Joins the run's customer_segments (pseudonymous keys) to the generator's ground_truth by re-deriving
the pseudonyms with the demo key, as a CRM holding the key would. Prints ARI and the main persona
of each archetype. Not a test: a figure for the record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from pathlib import Path

import polars as pl
from sklearn.metrics import adjusted_rand_score

from segspark import privacy


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "./segspark-demo")
    key = os.environ.get("SEGSPARK_PSEUDO_KEY", "").encode() or privacy._DEMO_KEY
    gt = pl.read_delta(str(root / "data" / "ground_truth"))
    gt = gt.with_columns(
        pl.col("customer_id")
        .map_elements(lambda s: hmac.new(key, s.encode(), hashlib.sha256).hexdigest(), return_dtype=pl.Utf8)
        .alias("pid")
    )
    seg = pl.read_delta(str(root / "tables" / "customer_segments"))
    latest = seg["as_of_date"].max()
    seg = seg.filter((pl.col("as_of_date") == latest) & pl.col("cluster_id").is_not_null())
    joined = seg.join(gt, left_on="customer_id", right_on="pid", how="inner")
    ari = adjusted_rand_score(joined["archetype"].to_list(), joined["cluster_id"].to_list())
    print(f"clustered customers {len(seg)}, matched {len(joined)}, ARI vs planted archetypes {ari:.3f}")
    top = (
        joined.group_by("archetype", "persona")
        .len()
        .sort("len", descending=True)
        .group_by("archetype")
        .head(1)
    )
    print(top.sort("archetype"))


if __name__ == "__main__":
    main()
