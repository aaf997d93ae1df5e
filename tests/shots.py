"""Screenshots of a built report for a person to look at: the HTML page through headless Chromium,
the PDF's pages through pdfium. The tests that call these also assert what the images show."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

CHROMIUM_HINT = (
    "headless Chromium is needed for the report browser test: install it with "
    "`apt-get update && apt-get install -y chromium` (Debian package, /usr/bin/chromium), "
    "or point SEGSPARK_CHROMIUM at a Chromium binary"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str:
    exe = os.environ.get("SEGSPARK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail(CHROMIUM_HINT)
    return exe


def screenshot(html: Path, name: str, height: int = 6000) -> Path:
    """``test-artifacts/<name>``: the page's first ``height`` pixels at 1280 wide."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cap = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={tmp}/profile",
                f"--window-size=1280,{height}",
                f"--screenshot={shot}",
                html.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert cap.returncode == 0, cap.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    return shot


def pdf_pages(pdf: Path, prefix: str, keep: int = 4) -> list[str]:
    """Every page's text; the first ``keep`` pages rendered to ``test-artifacts/<prefix>-pageN.png``,
    each checked not to be blank."""
    import pypdfium2 as pdfium

    ARTIFACTS.mkdir(exist_ok=True)
    doc = pdfium.PdfDocument(pdf)
    texts = []
    try:
        for i in range(len(doc)):
            page = doc[i]
            texts.append(page.get_textpage().get_text_range())
            if i < keep:
                image = page.render(scale=1.5).to_pil().convert("L")
                assert image.getextrema()[0] < 100, f"{pdf} page {i + 1} renders blank"
                image.save(ARTIFACTS / f"{prefix}-page{i + 1}.png")
            page.close()
    finally:
        doc.close()
    return texts
