"""The code version recorded in ``runs`` and shown in the report (its own module: no import circle)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import segspark


@functools.cache
def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    here = Path(segspark.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return f"{segspark.__version__}+{sha}" if sha else segspark.__version__
