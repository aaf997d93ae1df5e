"""The report as a PDF, printed from its HTML by headless Chromium (the HTML is self-contained: inline
CSS, charts as data URIs, no script), so the PDF shows exactly what the browser shows.

``report.pdf``: ``auto`` prints when a Chromium binary is found (``SEGSPARK_CHROMIUM``, else
``chromium``, ``chromium-browser``, ``google-chrome`` on PATH) and says so when none is; ``on``
requires one; ``off`` never prints. On a Databricks cluster Chromium is usually absent: the HTML and
Markdown are written either way.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from segspark.errors import EnvironmentProblem

log = logging.getLogger(__name__)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 180


def find_chromium() -> str | None:
    """The Chromium binary to print with, or None."""
    given = os.environ.get("SEGSPARK_CHROMIUM")
    if given:
        return given
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def print_pdf(html: Path, pdf: Path, exe: str) -> Path:
    """Print ``html`` to ``pdf`` (A4, backgrounds, no header or footer line); raises
    :class:`EnvironmentProblem` with Chromium's last output when it fails."""
    with tempfile.TemporaryDirectory(prefix="segspark-pdf-") as tmp:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-pdf-header-footer",
            f"--user-data-dir={tmp}/profile",
            f"--print-to-pdf={pdf}",
            html.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EnvironmentProblem(f"report PDF: Chromium ({exe}) could not print {html}: {e}") from e
    if done.returncode != 0 or not pdf.is_file() or pdf.stat().st_size == 0:
        tail = (done.stderr or done.stdout)[-1500:]
        raise EnvironmentProblem(
            f"report PDF: Chromium ({exe}) exited {done.returncode} printing {html}; its output ends: {tail}"
        )
    return pdf
