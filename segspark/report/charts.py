"""The report's charts: matplotlib figures drawn from the small aggregates of :mod:`collect`.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so no global
pyplot state and no display are involved. Every segment keeps one colour in every chart: the
palette is fixed for the standard RFM segments and lifecycle stages, and assigned in a stable
order for personas and custom names; "Other" is always grey.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Polygon
from matplotlib.text import Annotation, Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from segspark.report.data import LIFECYCLE_ORDER, MODEL_ONLY_FEATURES, OTHER, UNASSIGNED, ReportData
from segspark.report.print_check import MIN_PRINTED_PT, PRINT_WIDTH_IN
from segspark.schema import (
    CUSTOMERS,
    DIMENSION,
    F_SCORE,
    FROM_SEGMENT,
    LIFECYCLE_STAGE,
    R_SCORE,
    RFM_SEGMENT,
    SEGMENT,
    TO_SEGMENT,
)

OTHER_COLOUR = "#9e9e9e"
UNASSIGNED_COLOUR = "#d0d0d0"
FIXED_COLOURS: dict[str, str] = {
    # standard RFM segments: warm = valuable and recent, cool = lapsing
    "Champions": "#1b7837",
    "Loyal": "#5aae61",
    "Potential Loyalist": "#a6dba0",
    "New Customers": "#2166ac",
    "Promising": "#67a9cf",
    "Need Attention": "#fdb863",
    "About to Sleep": "#e08214",
    "At Risk": "#d6604d",
    "Cannot Lose Them": "#b2182b",
    "Hibernating": "#8073ac",
    "Lost": "#542788",
    # lifecycle stages
    "prospect": "#92c5de",
    "new": "#2166ac",
    "active": "#1b7837",
    "reactivated": "#5aae61",
    "at_risk": "#d6604d",
    "churned": "#542788",
    # value tiers
    "high": "#1b7837",
    "standard": "#67a9cf",
    OTHER: OTHER_COLOUR,
    UNASSIGNED: UNASSIGNED_COLOUR,
}
INK = "#333333"


@dataclass
class Chart:
    name: str
    title: str
    caption: str
    figure: Figure


def palette(names: Iterable[str]) -> dict[str, str]:
    """One colour per name: fixed for standard names, else tab10/tab20 in sorted order."""
    names = list(dict.fromkeys(str(n) for n in names))
    out = {n: FIXED_COLOURS[n] for n in names if n in FIXED_COLOURS}
    free = [n for n in sorted(names) if n not in out]
    cmap = colormaps["tab10" if len(free) <= 10 else "tab20"]
    for i, n in enumerate(free):
        r, g, b, _ = cmap(i % cmap.N)
        out[n] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return out


def to_png(fig: Figure, path: Path, dpi: int) -> bytes:
    """Render with the Agg canvas, write ``path`` and return the PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fig(w: float, h: float) -> Figure:
    """A figure no wider than an A4 page's text, so the PNG is never shrunk in print and its type
    prints at the size it was set in (report.print_check)."""
    fig = Figure(figsize=(min(w, PAGE_FIG_WIDTH), h), layout="constrained")
    return fig


PAGE_FIG_WIDTH = 0.96 * PRINT_WIDTH_IN  # a little under the page: the saved (tight) box adds a margin


def _money(x: float, sym: str) -> str:
    a = abs(x)
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if a >= div:
            return f"{'-' if x < 0 else ''}{sym}{a / div:.1f}{suf}"
    return f"{'-' if x < 0 else ''}{sym}{a:,.0f}"


# Offsets (points) tried for a label, nearest first: 8 directions at growing distances.
_LABEL_RADII = (5, 10, 16, 24, 34, 46, 60, 76, 94)
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def text_box(text: Text, renderer: RendererBase) -> Bbox:
    """A text's own extent in display units (an annotation's without its leader line, at the
    position its offset gives: computed here, not only at the next draw)."""
    if isinstance(text, Annotation):
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def place_labels(
    ax: Axes, anchors: list[tuple[float, float]], labels: list[str], fontsize: float = 7
) -> list[Text]:
    """Annotate each anchor (data coordinates) with its label where the label's box overlaps no
    other text of the axes and stays inside them, trying the offsets above nearest first; a label
    set away from its point gets a leader line. Labels are placed in the order given (the first gets
    the nearest free spot).

    Hand-written: adjustText (the usual library) moves labels by repulsion and does not promise
    that no two overlap, which a printed report needs. The figure's layout is settled first and
    then frozen, so the measured boxes are the drawn ones.
    """
    fig = ax.get_figure()
    assert isinstance(fig, Figure)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    fig.set_layout_engine("none")  # later draws must not move the axes under the measured boxes
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [text_box(t, renderer) for t in ax.texts]
    placed: list[Text] = []
    for (x, y), label in zip(anchors, labels, strict=True):
        best = None
        for radius in _LABEL_RADII:
            for dx, dy in _LABEL_DIRECTIONS:
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                ann = ax.annotate(
                    label,
                    (x, y),
                    xytext=(dx * radius, dy * radius),
                    textcoords="offset points",
                    fontsize=fontsize,
                    ha=ha,
                    va=va,
                )
                box = text_box(ann, renderer)
                ann.remove()
                inside = frame.x0 <= box.x0 <= box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1 <= frame.y1
                if inside and not any(box.overlaps(t) for t in taken):
                    best = (dx * radius, dy * radius, ha, va)
                    break
            if best is not None:
                break
        if best is None:  # nowhere free (dozens of labels on one spot): the nearest spot
            best = (_LABEL_RADII[0], _LABEL_RADII[0], "left", "bottom")
        ox, oy, ha, va = best
        far = max(abs(ox), abs(oy)) > _LABEL_RADII[1]
        ann = ax.annotate(
            label,
            (x, y),
            xytext=(ox, oy),
            textcoords="offset points",
            fontsize=fontsize,
            ha=ha,
            va=va,
            arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6, "shrinkB": 3} if far else None,
        )
        taken.append(text_box(ann, renderer))
        placed.append(ann)
    return placed


# --- the charts ---------------------------------------------------------------------------------------


def rfm_grid_chart(grid: pd.DataFrame, bins: int, k: int) -> Figure:
    mat = np.full((bins, bins), np.nan)
    for _, r in grid.iterrows():
        ri, fi = int(r[R_SCORE]), int(r[F_SCORE])
        if 1 <= ri <= bins and 1 <= fi <= bins:
            mat[bins - ri, fi - 1] = r[CUSTOMERS]
    fig = _fig(6.0, 4.8)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="YlGnBu", aspect="auto")
    ax.set_xticks(range(bins), [str(i) for i in range(1, bins + 1)])
    ax.set_yticks(range(bins), [str(i) for i in range(bins, 0, -1)])
    ax.set_xlabel("F score (purchase frequency, 5 = most frequent)")
    ax.set_ylabel("R score (recency, 5 = most recent)")
    top = np.nanmax(mat) if np.isfinite(mat).any() else 1.0
    for i in range(bins):
        for j in range(bins):
            v = mat[i, j]
            label = f"{int(v):,}" if np.isfinite(v) else f"<{k}"
            colour = "white" if np.isfinite(v) and v > 0.6 * top else INK
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(im, ax=ax, label="customers")
    ax.set_title("RFM grid: customers by recency and frequency score")
    return fig


def cohort_chart(matrix: pd.DataFrame) -> Figure:
    rows, cols = matrix.shape
    # the width of an A4 page, so nothing is shrunk in print: cell values stay at 7 pt on paper
    fig = _fig(PAGE_FIG_WIDTH, min(max(3.6, 1.8 + 0.27 * rows), 10.0))
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    im = ax.imshow(
        np.ma.masked_invalid(values),
        cmap="Blues",
        vmin=0,
        vmax=max(0.01, np.nanmax(values[:, 1:]) if cols > 1 else 1.0),
        aspect="auto",
    )
    ax.set_xticks(range(cols), [str(c) for c in matrix.columns], fontsize=MIN_PRINTED_PT)
    ax.set_yticks(range(rows), list(matrix.index), fontsize=MIN_PRINTED_PT)
    ax.set_xlabel("months since first purchase")
    ax.set_ylabel("acquisition cohort (month of first purchase)")
    # every cell carries its value in whole percent (no % sign: it fits the cell), at the smallest
    # printed size
    size = MIN_PRINTED_PT
    top = float(np.nanmax(values[:, 1:])) if cols > 1 else 1.0
    for i in range(rows):
        for j in range(1, cols):
            v = values[i, j]
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v * 100:.0f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if v > 0.6 * top else INK,
                )
    # below the matrix, so the cells get the page's full width
    fig.colorbar(im, ax=ax, location="bottom", shrink=0.5, format=lambda v, _p: f"{v * 100:.0f}%")
    ax.set_title("Cohort retention: % of the cohort buying in each month", fontsize=10)
    return fig


def elbow_chart(sweep: pd.DataFrame, chosen: dict) -> Figure:
    fig = _fig(6.0, 4.0)
    ax = fig.add_subplot()
    for algo, g in sweep.groupby("algorithm", sort=True):
        g = g.sort_values("k")
        ax.plot(g["k"], g["wcss"], marker="o", label=str(algo))
    if chosen.get("k") is not None:
        ax.axvline(int(chosen["k"]), color="grey", linestyle="--", label=f"chosen k = {chosen['k']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("within-cluster sum of squares")
    ax.set_title("Elbow curve (sweep sample)")
    ax.legend()
    return fig


def indices_chart(sweep: pd.DataFrame, chosen: dict) -> Figure:
    metrics = [
        ("silhouette", "silhouette (higher is better)"),
        ("davies_bouldin", "Davies-Bouldin (lower is better)"),
        ("calinski_harabasz", "Calinski-Harabasz (higher is better)"),
        ("stability", "stability, adjusted Rand (higher is better)"),
    ]
    metrics = [m for m in metrics if m[0] in sweep.columns and sweep[m[0]].notna().any()]
    fig = _fig(9.0, 3.0 * math.ceil(len(metrics) / 2))
    for i, (col, label) in enumerate(metrics):
        ax = fig.add_subplot(math.ceil(len(metrics) / 2), 2, i + 1)
        for algo, g in sweep.groupby("algorithm", sort=True):
            g = g.sort_values("k")
            ax.plot(g["k"], g[col], marker="o", label=str(algo))
        if chosen.get("k") is not None:
            ax.axvline(int(chosen["k"]), color="grey", linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("number of clusters k")
        ax.set_ylabel(col.replace("_", " "))
        ax.set_title(label, fontsize=9)
        if i == 0:
            ax.legend(fontsize=8)
    return fig


def profile_chart(profiles: pd.DataFrame, features: list[str]) -> Figure:
    """Persona x feature z-scores; features down the side and personas across with wrapped names,
    so every label is horizontal and none overlaps its neighbour in print."""
    zcols = [f"z_{f}" for f in features if f"z_{f}" in profiles.columns]
    z = profiles[zcols].to_numpy(dtype=float).T  # feature x persona
    fig = _fig(PAGE_FIG_WIDTH, max(3.2, 1.8 + 0.32 * len(zcols)))
    ax = fig.add_subplot()
    lim = max(1.0, float(np.nanmax(np.abs(z)))) if z.size and np.isfinite(z).any() else 1.0
    im = ax.imshow(z, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(len(zcols)), [c[2:].replace("_", " ") for c in zcols], fontsize=8)
    labels = profiles["persona"] if "persona" in profiles.columns else profiles["cluster_id"].astype(str)
    width = max(6, int(64 / max(1, len(profiles))))  # characters per line that fit one column
    ax.set_xticks(
        range(len(profiles)), [textwrap.fill(str(v), width) for v in labels], fontsize=MIN_PRINTED_PT
    )
    ax.set_ylabel("feature")
    fig.colorbar(im, ax=ax, label="z-score vs all customers", shrink=0.8)
    ax.set_title("Cluster profiles", fontsize=10)
    return fig


def clv_chart(
    hist: pd.DataFrame,
    quantiles: dict[str, float],
    threshold: float | None,
    sym: str,
    what: str = "predicted",
) -> Figure:
    fig = _fig(7.0, 3.8)
    ax = fig.add_subplot()
    width = float(hist["bin_hi"].iloc[0] - hist["bin_lo"].iloc[0])
    ax.bar(hist["bin_lo"], hist[CUSTOMERS], width=width, align="edge", color="#67a9cf", edgecolor="white")
    for key, style in (("p50", ":"), ("p90", "--")):
        if key in quantiles:
            ax.axvline(
                quantiles[key], color=INK, linestyle=style, label=f"{key} = {_money(quantiles[key], sym)}"
            )
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(
            threshold, color="#1b7837", linestyle="-", label=f"high value tier from {_money(threshold, sym)}"
        )
    ax.set_xlabel(
        f"{what} customer lifetime value ({sym}); last bar includes everything above the 99th percentile"
    )
    ax.set_ylabel("customers")
    ax.set_title("CLV distribution")
    ax.legend(fontsize=8)
    return fig


def funnel_chart(table: pd.DataFrame, colours: dict[str, str]) -> Figure:
    order = [s for s in LIFECYCLE_ORDER if s in set(table[SEGMENT])] + [
        s for s in table[SEGMENT] if s not in LIFECYCLE_ORDER
    ]
    t = table.set_index(SEGMENT).reindex(order)
    fig = _fig(7.0, 0.9 + 0.45 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    ax.barh(y, t[CUSTOMERS], color=[colours.get(s, OTHER_COLOUR) for s in t.index])
    ax.set_yticks(y, [s.replace("_", " ") for s in t.index])
    for yi, (c, share) in zip(y, zip(t[CUSTOMERS], t["customer_share"], strict=True), strict=True):
        ax.text(c, yi, f"  {round(c):,} ({share:.0%})", va="center", fontsize=8)
    ax.set_xlabel("customers")
    ax.set_ylabel("lifecycle stage")
    ax.set_xlim(0, float(t[CUSTOMERS].max()) * 1.25)
    ax.set_title("Lifecycle funnel")
    return fig


def transitions_chart(
    flows: pd.DataFrame, colours: dict[str, str], dimension: str, first_run: bool
) -> Figure:
    """An alluvial diagram: previous segment (left) to current segment (right), band width = customers."""
    f = flows.copy()
    f[FROM_SEGMENT] = f[FROM_SEGMENT].fillna("(new to this view)" if not first_run else "(first run)")
    f[TO_SEGMENT] = f[TO_SEGMENT].fillna("(left)")
    total = float(f[CUSTOMERS].sum())
    gap = 0.02 * total
    ordering = list(colours)

    def stack(col: str) -> dict[str, tuple[float, float]]:
        sizes = f.groupby(col)[CUSTOMERS].sum()
        names = sorted(sizes.index, key=lambda s: (ordering.index(s) if s in ordering else len(ordering), s))
        pos, y = {}, 0.0
        for n in names:
            pos[n] = (y, y + float(sizes[n]))
            y += float(sizes[n]) + gap
        return pos

    left, right = stack(FROM_SEGMENT), stack(TO_SEGMENT)
    fig = _fig(8.0, 5.5)
    ax = fig.add_subplot()
    lcur = {n: p[0] for n, p in left.items()}
    rcur = {n: p[0] for n, p in right.items()}
    for _, r in f.sort_values([FROM_SEGMENT, TO_SEGMENT]).iterrows():
        a, b, w = r[FROM_SEGMENT], r[TO_SEGMENT], float(r[CUSTOMERS])
        y0, y1 = lcur[a], rcur[b]
        lcur[a] += w
        rcur[b] += w
        xs = np.linspace(0.1, 0.9, 30)
        s = 0.5 - 0.5 * np.cos(np.pi * (xs - 0.1) / 0.8)  # smooth S-curve between the two stacks
        lower = y0 + (y1 - y0) * s
        pts = np.concatenate([np.column_stack([xs, lower]), np.column_stack([xs[::-1], (lower + w)[::-1]])])
        ax.add_patch(
            Polygon(pts, closed=True, facecolor=colours.get(a, OTHER_COLOUR), alpha=0.45, edgecolor="none")
        )
    for side, pos, x in (("l", left, 0.0), ("r", right, 0.9)):
        for n, (y0, y1) in pos.items():
            ax.add_patch(
                Polygon(
                    [(x, y0), (x + 0.1, y0), (x + 0.1, y1), (x, y1)], facecolor=colours.get(n, OTHER_COLOUR)
                )
            )
            tx, ha = (-0.01, "right") if side == "l" else (1.01, "left")
            # band ends are float sums: rounded, not truncated (2999.9999 is 3,000 customers)
            ax.text(tx, (y0 + y1) / 2, f"{n} ({round(y1 - y0):,})", ha=ha, va="center", fontsize=8)
    top = max(max(p[1] for p in left.values()), max(p[1] for p in right.values()))
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(top + gap, -gap)
    ax.set_xticks([0.05, 0.95], ["previous run", "this run"])
    ax.set_yticks([])
    ax.set_xlabel("band width = customers")
    for side_name in ("top", "right", "left"):
        ax.spines[side_name].set_visible(False)
    ax.set_title(f"Segment transitions ({dimension.replace('_', ' ')})")
    return fig


def revenue_chart(
    table: pd.DataFrame, colours: dict[str, str], label: str, has_clv: bool, what: str = "predicted"
) -> Figure:
    """Share of customers, revenue and CLV per segment: horizontal bars, segment names down the side."""
    t = table
    n = len(t)
    fig = _fig(PAGE_FIG_WIDTH, max(3.0, 1.2 + 0.42 * n))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    series = [("customer_share", "share of customers", 0.55), ("revenue_share", "share of revenue", 1.0)]
    if has_clv and "sum_clv" in t.columns and t["sum_clv"].sum() > 0:
        t = t.assign(clv_share=t["sum_clv"] / t["sum_clv"].sum())
        series.append(("clv_share", f"share of {what} spend", 0.3))
    h = 0.8 / len(series)
    cols = [colours.get(s, OTHER_COLOUR) for s in t[SEGMENT]]
    hatches = ["", "", "//"]
    for i, (col, name, alpha) in enumerate(series):
        ax.barh(
            y - (i - (len(series) - 1) / 2) * h,
            t[col],
            height=h,
            color=cols,
            alpha=alpha,
            hatch=hatches[i],
            edgecolor="white",
            label=name,
        )
    ax.set_yticks(y, [str(s).replace("_", " ") for s in t[SEGMENT]], fontsize=8)
    ax.set_ylabel(label)
    ax.set_xlabel("share of total")
    ax.xaxis.set_major_formatter(lambda v, _p: f"{v:.0%}")
    proxies = [
        Patch(facecolor="#777777", alpha=alpha, hatch=hatches[i], edgecolor="white", label=name)
        for i, (_c, name, alpha) in enumerate(series)
    ]
    ax.legend(handles=proxies, fontsize=8, loc="lower right")
    ax.set_title(f"Customers, revenue and expected spend by {label}", fontsize=10)
    return fig


def ltv_cac_chart(
    ltv: pd.DataFrame, colours: dict[str, str], segment_type: str, target: float
) -> Figure | None:
    """Realized LTV:CAC of the channels whose spend is complete (status ``known``), with the target."""
    ch = ltv[(ltv["level"] == "channel") & ltv["ltv_to_cac"].notna() & (ltv["cac_status"] == "known")]
    if ch.empty:
        return None
    fig = _fig(6.5, 4.0)
    ax = fig.add_subplot()
    df = ch.sort_values("ltv_to_cac", ascending=False)
    ax.bar(range(len(df)), df["ltv_to_cac"], color="#67a9cf")
    ax.axhline(target, color="#b2182b", linestyle="--", label=f"target {target:g} : 1")
    ax.set_xticks(range(len(df)), [str(s) for s in df["segment"]], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("acquisition channel")
    ax.set_ylabel("realized LTV : CAC")
    ax.legend(fontsize=8)
    ax.set_title("LTV : CAC of channels with complete spend", fontsize=10)
    return fig


def impact_effort_chart(recs: pd.DataFrame, palettes: dict[str, dict[str, str]], sym: str) -> Figure:
    """Ranked plays by effort (x) and net value over the horizon (y); labels placed where they
    overlap no other text."""
    fig = _fig(7.5, 5.0)
    ax = fig.add_subplot()
    r = recs[recs["net_value"].notna()]
    sizes = 60 + 600 * (r["customers"] / max(1.0, float(r["customers"].max())))
    rng = np.random.default_rng(0)  # deterministic jitter so plays with equal effort do not overlap
    x = r["effort"].astype(float) + rng.uniform(-0.15, 0.15, len(r))
    y = r["net_value"].astype(float)
    ax.scatter(
        x,
        y,
        s=sizes,
        c=[
            palettes.get(t, {}).get(s, OTHER_COLOUR)
            for t, s in zip(r["segment_type"], r["segment"], strict=True)
        ],
        alpha=0.75,
        edgecolors=INK,
    )
    if len(r):
        ax.axhline(float(np.nanmedian(y)), color="grey", linestyle=":")
    ax.axhline(0.0, color=INK, linewidth=0.6)
    ax.axvline(2.5, color="grey", linestyle=":")
    ax.set_xlim(0.5, 5.5)
    ax.set_xticks(range(1, 6), ["1\nlow", "2", "3", "4", "5\nhigh"])
    ax.set_xlabel("effort")
    months = int(r["horizon_months"].iloc[0]) if len(r) and "horizon_months" in r.columns else None
    ax.set_ylabel(f"net value ({sym}, next {months} months)" if months else f"net value ({sym})")
    ax.yaxis.set_major_formatter(lambda v, _p: _money(v, sym))
    ymax, ymin = (float(y.max()), float(y.min())) if len(r) else (1.0, 0.0)
    span = max(ymax - min(ymin, 0.0), 1.0)
    ax.set_ylim(min(ymin, 0.0) - 0.08 * span, ymax + 0.2 * span)
    for tx, ty, label in (
        (0.6, 0.97, "Quick wins"),
        (4.4, 0.97, "Big bets"),
        (0.6, 0.03, "Fill-ins"),
        (4.4, 0.03, "Deprioritise"),
    ):
        ax.text(
            tx,
            ty,
            label,
            transform=ax.get_xaxis_transform(),
            fontsize=9,
            color="grey",
            va="top" if ty > 0.5 else "bottom",
        )
    ax.set_title("Plays by net value and effort (bubble size = customers; #rank)")
    # labels last, best rank first, each where it overlaps no other text
    order = np.argsort(r["rank"].to_numpy(), kind="stable")
    place_labels(
        ax,
        [(float(x.iloc[i]), float(y.iloc[i])) for i in order],
        [f"#{r['rank'].iloc[i]} {_label(r['segment'].iloc[i])}" for i in order],
        fontsize=8,
    )
    return fig


def baseline_chart(flows: pd.DataFrame, colours: dict[str, str], dimension: str) -> Figure:
    """A first run's segments (the baseline the next run's transitions start from): customers per
    segment, largest first."""
    sizes = flows.groupby(TO_SEGMENT)[CUSTOMERS].sum().sort_values(ascending=True)
    total = float(sizes.sum()) or 1.0
    fig = _fig(7.0, 0.9 + 0.4 * len(sizes))
    ax = fig.add_subplot()
    y = np.arange(len(sizes))
    ax.barh(y, sizes.to_numpy(dtype=float), color=[colours.get(n, OTHER_COLOUR) for n in sizes.index])
    ax.set_yticks(y, [str(n) for n in sizes.index])
    for yi, c in zip(y, sizes.to_numpy(dtype=float), strict=True):
        ax.text(c, float(yi), f"  {round(c):,} ({c / total:.0%})", va="center", fontsize=8)
    ax.set_xlim(0, float(sizes.max()) * 1.3 if len(sizes) else 1.0)
    ax.set_xlabel("customers")
    ax.set_title(f"Baseline for transitions ({dimension.replace('_', ' ')}): customers per segment")
    return fig


def _label(segment: object) -> str:
    """A segment as the report's text writes it (``prospect`` -> ``Prospects``, no underscores)."""
    return {"prospect": "Prospects"}.get(str(segment), str(segment).replace("_", " "))


def _named_rows(table: pd.DataFrame) -> bool:
    """Whether a segment table has a segment of its own (not only Other or unassigned)."""
    return not table.empty and bool((~table[SEGMENT].isin([OTHER, UNASSIGNED])).any())


def make_charts(
    data: ReportData,
    recs: pd.DataFrame,
    palettes: dict[str, dict[str, str]],
    sym: str,
    bins: int,
    ltv_cac_target: float,
) -> list[Chart]:
    """Every chart the data allows, in report order: absent inputs, and groups all below the
    minimum size, give no chart (an empty or single-"Other" chart is never drawn)."""
    # the historical-rate fallback is an estimate, not a model's prediction: the labels say so
    fallback = data.clv_validity is not None and data.clv_validity.fallback
    what = "estimated (historical spend rate)" if fallback else "predicted"
    return [
        *_customer_charts(data, bins),
        *_clustering_charts(data),
        *_clv_and_lifecycle_charts(data, palettes, sym, what),
        *_transition_charts(data, palettes),
        *_value_charts(data, recs, palettes, sym, ltv_cac_target, what),
    ]


def _customer_charts(data: ReportData, bins: int) -> list[Chart]:
    """The RFM grid and the cohort retention heatmap."""
    charts: list[Chart] = []
    if data.rfm_grid is not None and data.rfm_grid[CUSTOMERS].notna().any():
        charts.append(
            Chart(
                "rfm_grid",
                "RFM grid",
                f"Customers per R x F cell; cells with fewer than {data.k} customers are hidden.",
                rfm_grid_chart(data.rfm_grid, bins, data.k),
            )
        )
    if data.cohorts is not None:
        charts.append(
            Chart(
                "cohort_retention",
                "Cohort retention",
                "Share of each acquisition cohort buying again in each month after the first purchase."
                + _empty_cohorts(data),
                cohort_chart(data.cohorts),
            )
        )
    return charts


def _empty_cohorts(data: ReportData) -> str:
    """The caption's sentence on the heatmap's empty rows: months without new customers, or with
    fewer than the minimum segment size (hidden)."""
    if data.cohorts is None:
        return ""
    empty = [str(m) for m in data.cohorts.index[data.cohorts.isna().all(axis=1)]]
    if not empty:
        return ""
    hidden = f", or fewer than {data.k} (hidden; {data.cohorts_hidden} in all)" if data.cohorts_hidden else ""
    return f" Empty rows ({', '.join(empty)}): months with no new customers{hidden}."


def _clustering_charts(data: ReportData) -> list[Chart]:
    """The clustering's elbow curve, validity indices by k and persona profiles."""
    charts: list[Chart] = []
    cl = data.clustering
    sweep = cl.get("sweep") if cl else None
    if cl and sweep is not None and "wcss" in sweep.columns and sweep["wcss"].notna().any():
        charts.append(
            Chart(
                "elbow",
                "Elbow curve",
                "Within-cluster sum of squares by k; the dashed line marks the chosen k.",
                elbow_chart(cl["sweep"], cl["chosen"]),
            )
        )
    indices = ("silhouette", "davies_bouldin", "calinski_harabasz", "stability")
    if cl and sweep is not None and any(c in sweep.columns and sweep[c].notna().any() for c in indices):
        charts.append(
            Chart(
                "indices_by_k",
                "Validity indices by k",
                "Silhouette, Davies-Bouldin, Calinski-Harabasz and stability for every candidate.",
                indices_chart(cl["sweep"], cl["chosen"]),
            )
        )
    # without a valid CLV model, P(alive) and expected purchases rest on nothing: left out
    shown = [f for f in (cl or {}).get("features") or [] if data.p_alive_ok() or f not in MODEL_ONLY_FEATURES]
    profiles = cl.get("profiles") if cl else None
    if profiles is not None and not profiles.empty and any(f"z_{f}" in profiles.columns for f in shown):
        charts.append(
            Chart(
                "cluster_profiles",
                "Cluster profiles",
                "How far each persona's mean sits from all customers, in standard deviations.",
                profile_chart(profiles, shown),
            )
        )
    return charts


def _clv_and_lifecycle_charts(
    data: ReportData, palettes: dict[str, dict[str, str]], sym: str, what: str
) -> list[Chart]:
    """The CLV distribution and the lifecycle funnel."""
    charts: list[Chart] = []
    if data.clv_hist is not None:
        thr = (data.clv_fit or {}).get("value_tier_threshold")
        thr_f = float(thr) if isinstance(thr, int | float) else None
        charts.append(
            Chart(
                "clv_distribution",
                "CLV distribution",
                f"{what.capitalize()} customer lifetime value over the configured horizon.",
                clv_chart(data.clv_hist, data.clv_quantiles, thr_f, sym, what),
            )
        )
    life = data.segments.get(LIFECYCLE_STAGE)
    if life is not None and _named_rows(life.table):
        charts.append(
            Chart(
                "lifecycle_funnel",
                "Lifecycle funnel",
                "Customers per lifecycle stage.",
                funnel_chart(life.table, palettes.get(LIFECYCLE_STAGE, {})),
            )
        )
    return charts


def _transition_charts(data: ReportData, palettes: dict[str, dict[str, str]]) -> list[Chart]:
    """Flows between segments since the previous run (the baseline on a first run)."""
    charts: list[Chart] = []
    if data.transitions is not None and not data.transitions.empty:
        dims = list(dict.fromkeys(data.transitions[DIMENSION]))
        dim = RFM_SEGMENT if RFM_SEGMENT in dims else dims[0]
        flows = data.transitions[data.transitions[DIMENSION] == dim]
        if data.first_run:  # nothing has moved yet: the sizes the next run's flows start from
            charts.append(
                Chart(
                    "segment_transitions",
                    "Segment baseline",
                    "First run: no previous run to compare with, so this is the baseline; the next "
                    "run shows how customers moved between these segments.",
                    baseline_chart(flows, palettes.get(dim, {}), dim),
                )
            )
        else:
            charts.append(
                Chart(
                    "segment_transitions",
                    "Segment transition flows",
                    "Customers moving between segments since the previous run.",
                    transitions_chart(flows, palettes.get(dim, {}), dim, data.first_run),
                )
            )
    return charts


def _value_charts(
    data: ReportData,
    recs: pd.DataFrame,
    palettes: dict[str, dict[str, str]],
    sym: str,
    ltv_cac_target: float,
    what: str,
) -> list[Chart]:
    """Revenue by segment, LTV:CAC and the plays' impact-effort matrix."""
    charts: list[Chart] = []
    primary = data.primary_type()
    if primary is not None and _named_rows(data.segments[primary].table):
        view = data.segments[primary]
        charts.append(
            Chart(
                "revenue_by_segment",
                "Revenue by segment",
                f"Share of customers, of net revenue to date and of {what} spend over the forecast "
                "horizon, per segment.",
                revenue_chart(
                    view.table,
                    palettes[primary],
                    {RFM_SEGMENT: "RFM segment"}.get(primary, primary.replace("_", " ")),
                    data.has.get("clv", False),
                    what,
                ),
            )
        )
    if data.ltv_cac is not None and data.ltv_cac["cac"].notna().any():
        fig = ltv_cac_chart(data.ltv_cac, palettes.get(primary or "", {}), primary or "", ltv_cac_target)
        if fig is not None:
            charts.append(
                Chart(
                    "ltv_cac",
                    "LTV:CAC",
                    "Realized lifetime value per acquisition cost, for the channels whose marketing "
                    "spend is recorded for every month they acquired customers.",
                    fig,
                )
            )
    if not recs.empty and recs["net_value"].notna().any():
        charts.append(
            Chart(
                "impact_effort",
                "Plays by value and effort",
                "Each ranked play by its net value (extra margin minus cost) and the effort it takes.",
                impact_effort_chart(recs, palettes, sym),
            )
        )
    return charts
