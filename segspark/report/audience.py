"""The report's two audiences: what may not appear in its executive part.

The executive part (HTML: ``<div class="part" id="executive">``; Markdown: everything before the
``# Technical annex`` heading) is read by a marketing lead. :func:`executive_problems` lists what
in its visible text belongs in the technical annex instead: a configuration key (``clv.horizon_months``
or a bare ``spend_corr_warn``), any other snake_case identifier, a file path or URL, a model's
internals (WCSS, ARI, Gamma-Gamma, P(alive), ...) and any sentence (ending in a full stop) said
twice, such as a repeated caveat.
"""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from typing import Any

from segspark.config import Settings

ANNEX_HEADING = "Technical annex"

# words of a model's insides that a marketing lead should not need (case-insensitive, whole words)
INTERNALS: tuple[str, ...] = (
    "WCSS",
    "ARI",
    "silhouette",
    "Davies-Bouldin",
    "Calinski",
    "Gamma-Gamma",
    "BG/NBD",
    "Pareto/NBD",
    "bgnbd",
    "pareto_nbd",
    "MBG/NBD",
    "MBG/CNBD-k",
    "mbgnbd",
    "mbgcnbd",
    "per_band",
    "P(alive)",
    "p alive",
    "Cohen",
    "z-test",
    "t-test",
    "AUC",
    "Brier",
    "k-means",
    "kmeans",
    "SQL",
    "YAML",
    "Delta",
    "MLflow",
    "run id",
    "hash",
)
_SNAKE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_PATH = re.compile(
    r"(?:\b[a-z][a-z0-9+.-]*://\S+)"  # URLs and object-store paths
    r"|(?:(?<![\w.])~?/[\w.-]+(?:/[\w.-]+)+)"  # /abs/path, ~/path
    r"|(?:\b[A-Za-z]:\\\S+)"  # C:\path
    r"|(?:\b[\w-]+\.(?:sql|ya?ml|py|parquet|csv|json|png|html|md|db|pdf)\b)"  # file names
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
MIN_REPEAT_WORDS = 6  # a sentence this long said twice is a repetition, not a label


def config_keys(settings: Settings | None = None) -> set[str]:
    """Every dotted key of the configuration (``report.value.gross_margin``), and its sections."""
    out: set[str] = set()

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.add(key)
            if isinstance(v, dict):
                walk(v, f"{key}.")

    walk((settings or Settings()).as_dict(), "")
    return {k for k in out if "." in k}


class _Text(HTMLParser):
    """The visible text of an HTML fragment (no style or script), one string per block."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script"):
            self._skip += 1
        elif tag in ("p", "li", "td", "th", "div", "h1", "h2", "h3", "h4", "dt", "dd", "figcaption", "br"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    """The text a reader sees in an HTML fragment, blocks on their own lines."""
    p = _Text()
    p.feed(html)
    return "".join(p.parts)


def executive_html(html: str) -> str:
    """The executive part of the HTML report."""
    start = html.index('<div class="part" id="executive">')
    end = html.index('<div class="part" id="annex">', start)
    return html[start:end]


def executive_markdown(md: str) -> str:
    """The executive part of the Markdown report as a reader sees it: everything before the annex
    heading, images by their alt text (their file names are not read)."""
    return re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", md.split(f"\n# {ANNEX_HEADING}", 1)[0])


def executive_problems(text: str, settings: Settings | None = None) -> list[str]:
    """What in an executive part's visible text belongs in the technical annex (empty: nothing)."""
    problems = []
    keys = config_keys(settings)
    for key in sorted(keys):
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text):
            problems.append(f"config key {key}")
    problems += [f"identifier {m}" for m in sorted(set(_SNAKE.findall(text)))]
    problems += [f"path {m}" for m in sorted(set(_PATH.findall(text)))]
    for word in INTERNALS:
        if re.search(rf"(?<![\w/]){re.escape(word)}(?![\w/])", text, re.I):
            problems.append(f"model internals {word}")
    sentences = [
        " ".join(s.split()) for block in text.splitlines() for s in _SENTENCE.split(block) if s.strip()
    ]
    # sentences (a caveat is one), not labels, table rules or figures: a persona card's "Offer: ..." or
    # a column of numbers may repeat by design
    counts = Counter(
        s
        for s in sentences
        if s.endswith((".", "!", "?")) and len(re.findall(r"[A-Za-z]{2,}", s)) >= MIN_REPEAT_WORDS
    )
    problems += [f"repeated sentence ({n}x): {s}" for s, n in counts.items() if n > 1]
    return problems
