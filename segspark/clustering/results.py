"""The clustering stage's result as a small table (``clustering_sweep``) and back.

One row per swept candidate (``phase = "sweep"``: algorithm, k and every index the sweep measured on
the seeded sample) plus one row for the chosen model as the stage fitted it (``phase = "final"``: its
indices computed in Spark on the sample). ``chosen`` flags the chosen candidate and the final row;
both carry the choice rule's ``reason``. Every row names the features clustered and the customers.
A density model (DBSCAN / HDBSCAN) has no sweep: its table is the one final row.

:func:`sweep_table` writes the table's rows (pandas, ``CLUSTERING_SWEEP_SCHEMA`` column order);
:func:`sweep_from_table` rebuilds what the report shows from them (the sweep, the choice, the
features), so the report reads the table and never the in-memory result.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.sql import types as T

from segspark.clustering.sweep import SWEEP_COLUMNS
from segspark.tables import CLUSTERING_SWEEP_SCHEMA

if TYPE_CHECKING:
    from segspark.clustering.sweep import ClusterResult

SWEEP = "sweep"
FINAL = "final"
COLUMNS: tuple[str, ...] = tuple(CLUSTERING_SWEEP_SCHEMA.fieldNames())
INDICES: tuple[str, ...] = (
    "clusters",
    "wcss",
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "min_cluster_share",
)
# column kinds read off the declared schema, so the two cannot drift apart
_INT = tuple(f.name for f in CLUSTERING_SWEEP_SCHEMA if f.dataType == T.LongType())
_FLOAT = tuple(f.name for f in CLUSTERING_SWEEP_SCHEMA if f.dataType == T.DoubleType())


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def sweep_table(result: ClusterResult) -> pd.DataFrame:
    """The rows of ``clustering_sweep`` for one clustering result (columns of ``CLUSTERING_SWEEP_SCHEMA``).

    Write it with ``spark.createDataFrame(sweep_table(result), CLUSTERING_SWEEP_SCHEMA)``.
    """
    chosen = result.chosen
    algorithm, k = str(chosen["algorithm"]), int(chosen["k"])
    knees: dict[str, int] = {str(a): int(v) for a, v in (chosen.get("knees") or {}).items()}
    features = ",".join(result.features)
    customers = chosen.get("customers")
    rows: list[dict[str, Any]] = []
    density = result.density is not None or (
        not result.sweep.empty and set(result.sweep["engine"]) == {"density"}
    )
    if not density:
        for r in result.sweep.to_dict("records"):
            is_chosen = str(r["algorithm"]) == algorithm and int(r["k"]) == k
            rows.append(
                {
                    "phase": SWEEP,
                    **{c: r.get(c) for c in SWEEP_COLUMNS},
                    "knee": knees.get(str(r["algorithm"])),
                    "chosen": is_chosen,
                    "reason": chosen.get("reason") if is_chosen else None,
                }
            )
    final = chosen.get("final_metrics") or {}
    timings = chosen.get("timings") or {}
    rows.append(
        {
            "phase": FINAL,
            "algorithm": algorithm,
            "k": k,
            **{c: final.get(c) for c in INDICES},
            "stability": None,
            "fit_seconds": timings.get("fit_seconds"),
            "engine": "density" if density else "mllib",
            "knee": knees.get(algorithm),
            "chosen": True,
            "reason": chosen.get("reason"),
        }
    )
    out = pd.DataFrame(rows).assign(features=features, customers=customers)
    for c in _FLOAT:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    for c in _INT:
        # counts arrive as floats from the index functions; Python ints, and None where unknown (a
        # density model has no knee), convert to a long column whichever way the frame is written
        ints = pd.to_numeric(out[c], errors="coerce")
        out[c] = pd.Series([None if pd.isna(v) else round(v) for v in ints], index=out.index, dtype=object)
    out["chosen"] = out["chosen"].astype(bool)
    for c in ("phase", "algorithm", "engine", "reason", "features"):
        out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out.loc[:, list(COLUMNS)].reset_index(drop=True)


def applied_model_row(
    model_uri: str, alias: str, clusters: int, algorithm: str | None, features: list[str]
) -> pd.DataFrame:
    """The ``clustering_sweep`` row of a score run: the registered model it applied (named with its
    version), marked chosen, with no indices (nothing was fitted)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        phase=FINAL,
        algorithm=algorithm or "registered",
        k=int(clusters),
        clusters=int(clusters),
        engine="registered",
        chosen=True,
        reason=f"registered model {model_uri} (alias {alias}), applied without refitting",
        features=",".join(features),
    )
    out = pd.DataFrame([row], columns=list(COLUMNS))
    for c in _FLOAT:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    return out.astype(object).where(out.notna(), None)


def sweep_from_table(table: pd.DataFrame) -> dict[str, Any] | None:
    """What the report needs from ``clustering_sweep`` rows: ``sweep`` (the candidates, columns of the
    stage's sweep, or None for a density model), ``chosen`` (algorithm, k, reason, knees and the final
    model's indices as ``final_metrics``), ``features`` and ``customers``. None for an empty table."""
    if table is None or table.empty:
        return None
    t = table.copy()
    t["chosen"] = t["chosen"].astype("boolean").fillna(False).astype(bool)
    phase = t["phase"].astype(str)
    cands = t[phase == SWEEP]
    finals = t[phase == FINAL]
    pick = finals[finals["chosen"]] if not finals.empty else cands[cands["chosen"]]
    if pick.empty:
        pick = finals if not finals.empty else cands.iloc[0:0]
    row = pick.iloc[0] if not pick.empty else None
    sweep = None
    if not cands.empty:
        sweep = cands.loc[:, list(SWEEP_COLUMNS)].copy()
        sweep["k"] = pd.to_numeric(sweep["k"]).astype("int64")
        for c in (*_FLOAT, "clusters"):
            sweep[c] = pd.to_numeric(sweep[c], errors="coerce").astype("float64")
        sweep = sweep.sort_values(["algorithm", "k"], kind="stable").reset_index(drop=True)
    chosen: dict[str, Any] = {}
    if row is not None:
        chosen = {
            "algorithm": str(row["algorithm"]),
            "k": int(row["k"]),
            "reason": None if pd.isna(row["reason"]) else str(row["reason"]),
        }
        if str(row["phase"]) == FINAL:
            chosen["final_metrics"] = {c: _num(row[c]) for c in INDICES if not np.isnan(_num(row[c]))}
    knees = t.dropna(subset=["knee"]).drop_duplicates("algorithm")
    chosen["knees"] = {str(a): int(v) for a, v in zip(knees["algorithm"], knees["knee"], strict=True)}
    text = next((str(v) for v in t["features"] if isinstance(v, str) and v), "")
    customers = pd.to_numeric(t["customers"], errors="coerce").dropna()
    return {
        "sweep": sweep,
        "chosen": chosen,
        "features": [f for f in text.split(",") if f],
        "customers": int(customers.iloc[0]) if len(customers) else None,
    }
