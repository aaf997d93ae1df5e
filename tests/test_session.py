from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segspark.errors import EnvironmentProblem
from segspark.session import check_java

REPO = Path(__file__).resolve().parents[1]


def test_java_version_is_detected() -> None:
    assert check_java() in (17, 21)


def test_missing_java_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nojava"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match="no Java runtime found: install a Java 17 or 21"):
        check_java()


def test_wrong_java_version_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match="Java 11 found .* needs Java 17 or 21"):
        check_java()


def test_cli_reports_missing_java_without_a_stack_trace(tmp_path: Path) -> None:
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "none"), "PATH": f"{Path(sys.executable).parent}"}
    proc = subprocess.run(
        [sys.executable, "-m", "segspark", "run", "--set", "input.transactions.path=/x", "--set", f"output.path={tmp_path}"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("segspark:")]
    assert lines == ["segspark: error: no Java runtime found: install a Java 17 or 21 runtime "
                     "(e.g. 'apt-get install openjdk-17-jre-headless') and set JAVA_HOME"]
    assert "Traceback" not in proc.stderr


def test_no_spark_context_rdd_or_jvm_in_the_package() -> None:
    import re

    pattern = re.compile(r"\.(sparkContext|rdd|_jvm)\b|\bSparkContext\b")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in [*(REPO / "segspark").rglob("*.py"), *(REPO / "jobs").rglob("*.py")]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
