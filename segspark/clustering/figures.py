"""The clustering's figures (elbow, indices by k, profile heatmap, sizes) for MLflow."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from segspark.clustering import personas as P
from segspark.schema import PERSONA


def cluster_figures(
    sweep: pd.DataFrame, chosen: dict[str, Any], prof: pd.DataFrame, features: list[str]
) -> dict[str, Figure]:
    """Elbow, indices by k, profile heatmap and cluster sizes (matplotlib Figures, no global state)."""
    figs: dict[str, Figure] = {}
    if not sweep.empty:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for algo, g in sweep.groupby("algorithm", sort=True):
            ax.plot(g["k"], g["wcss"], marker="o", label=str(algo))
        ax.axvline(chosen["k"], color="grey", linestyle="--", label=f"chosen k={chosen['k']}")
        ax.set(xlabel="k", ylabel="within-cluster sum of squares", title="Elbow (sample)")
        ax.legend()
        figs["elbow"] = fig
        fig = Figure(figsize=(9, 6))
        for i, (metric, better) in enumerate(
            [
                ("silhouette", "higher"),
                ("davies_bouldin", "lower"),
                ("calinski_harabasz", "higher"),
                ("stability", "higher"),
            ]
        ):
            ax = fig.add_subplot(2, 2, i + 1)
            for algo, g in sweep.groupby("algorithm", sort=True):
                ax.plot(g["k"], g[metric], marker="o", label=str(algo))
            ax.set(xlabel="k", title=f"{metric} ({better} is better)")
        fig.axes[0].legend()
        fig.tight_layout()
        figs["indices_by_k"] = fig
    zcols = [P.z_col(f) for f in features]
    if not prof.empty:
        z = prof[zcols].to_numpy(float)
        fig = Figure(figsize=(1.0 + 0.8 * len(zcols), 1.5 + 0.5 * len(prof)))
        ax = fig.add_subplot()
        lim = max(1.0, float(np.nanmax(np.abs(z)))) if z.size else 1.0
        im = ax.imshow(z, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(zcols)), features, rotation=45, ha="right")
        ax.set_yticks(range(len(prof)), prof[PERSONA])
        ax.set_title("Cluster profiles (z-score of the cluster mean)")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        figs["profile_heatmap"] = fig
        fig = Figure(figsize=(6, 1.5 + 0.4 * len(prof)))
        ax = fig.add_subplot()
        ax.barh(prof[PERSONA], prof[P.SHARE])
        ax.set(xlabel="share of customers", title="Cluster sizes")
        fig.tight_layout()
        figs["cluster_sizes"] = fig
    return figs
