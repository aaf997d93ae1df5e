"""Charts as printed on A4: every text at least 7 pt and no two texts overlapping, measured on the
rendered figure (matplotlib's own text bounding boxes), not assumed from the code that drew it.

The HTML shows a PNG at one CSS pixel per image pixel (96 per inch), shrunk to the printable width
of an A4 page (210 mm less the 12 mm margins of the print style) when wider. A text of ``s`` points
in a figure ``w`` inches wide, saved at ``dpi``, therefore prints at
``s x min(w x dpi / 96, PRINT_WIDTH_IN) / w`` points.
"""

from __future__ import annotations

from itertools import combinations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

PRINT_WIDTH_IN = (210.0 - 2 * 12.0) / 25.4  # A4 less the print style's margins
CSS_PX_PER_IN = 96.0
MIN_PRINTED_PT = 7.0


def printed_scale(fig: Figure, dpi: float) -> float:
    """Printed inches per figure inch of the saved PNG (``bbox_inches="tight"``, as :func:`to_png`)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    width = fig.get_tightbbox(canvas.get_renderer()).width  # inches
    return min(width * dpi / CSS_PX_PER_IN, PRINT_WIDTH_IN) / width


def print_problems(fig: Figure, dpi: float, name: str = "chart", laid_out: bool = False) -> list[str]:
    """Texts of ``fig`` that print under :data:`MIN_PRINTED_PT` or overlap another text (empty: none).

    ``laid_out``: the figure was just saved (``to_png``), whose draw settled the layout and the
    ticks the PNG shows: the texts are measured as saved, without another layout pass (a third of a
    chart's drawing time). Otherwise the figure is drawn first."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    if not laid_out:
        canvas.draw()
    renderer = canvas.get_renderer()
    scale = printed_scale(fig, dpi)
    problems, boxes = [], []
    hidden = _undrawn_tick_labels(fig)
    for t in fig.findobj(match=Text):
        text = t.get_text().strip()
        if not (t.get_visible() and text) or id(t) in hidden:
            continue
        box = t.get_window_extent(renderer)
        if box.width <= 0 or not fig.bbox.overlaps(box):  # a tick outside the axes is not drawn
            continue
        size = float(t.get_fontsize()) * scale
        if size < MIN_PRINTED_PT - 1e-9:
            problems.append(f"{name}: {text!r} prints at {size:.1f} pt")
        boxes.append((text, box))
    for (a, ba), (b, bb) in combinations(boxes, 2):
        if ba.overlaps(bb):
            problems.append(f"{name}: {a!r} overlaps {b!r}")
    return problems


def _undrawn_tick_labels(fig: Figure) -> set[int]:
    """Tick labels a locator made but the axis does not draw: their tick lies outside the view."""
    out: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            pad = 1e-9 * max(1.0, abs(hi - lo))
            for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()):
                loc = tick.get_loc()
                if loc is None or not lo - pad <= loc <= hi + pad:
                    out.update({id(tick.label1), id(tick.label2)})
    return out
