from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from segspark.cli import main
from segspark.config import Settings, load_settings
from segspark.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_default_yaml_documents_every_key_with_its_default() -> None:
    documented = _flat(
        Settings.model_validate(yaml.safe_load((ROOT / "conf/default.yaml").read_text())).as_dict()
    )
    defaults = _flat(Settings().as_dict())
    raw_keys = set(_flat(yaml.safe_load((ROOT / "conf/default.yaml").read_text())))
    assert raw_keys == set(defaults), (
        f"undocumented: {set(defaults) - raw_keys}; stale: {raw_keys - set(defaults)}"
    )
    assert documented == defaults


@pytest.mark.parametrize("preset", sorted((ROOT / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_file_validates(preset: Path) -> None:
    load_settings([preset])


def test_later_files_and_overrides_win(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("clv: {model: pareto_nbd, horizon_months: 6}\nrfm: {bins: 4}\n")
    b.write_text("clv: {horizon_months: 24}\n")
    s = load_settings([a, b], ["rfm.bins=5", "as_of_date=2024-03-31", "quality.currency.rates={EUR: 1.1}"])
    assert s.clv.model == "pareto_nbd"
    assert s.clv.horizon_months == 24
    assert s.rfm.bins == 5
    assert s.as_of_date == dt.date(2024, 3, 31)
    assert s.quality.currency.rates == {"EUR": 1.1}


def test_set_works_for_input_paths() -> None:
    s = load_settings([], ["input.transactions.path=/data/tx.parquet", "input.transactions.format=parquet"])
    assert s.input.transactions.path == "/data/tx.parquet"
    assert s.input.transactions.format == "parquet"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lakehouse.engine=spark-delta", "'lakehouse.engine': \"spark-delta\""),
        ("clv.horizon_months=0", "'clv.horizon_months': 0"),
        ("clv.modle=bgnbd", "unknown configuration key 'clv.modle'"),
        ("nonsense=1", "unknown configuration key 'nonsense'"),
        ("as_of_date=yesterday", "'as_of_date'"),
        ("clustering.k_min=5", None),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override: str, expected: str | None) -> None:
    extra = ["clustering.k_max=3"] if override.startswith("clustering") else []
    with pytest.raises(ConfigError) as err:
        load_settings([], [override, *extra])
    message = str(err.value)
    if expected:
        assert expected in message
    if "engine" in override:
        assert "'auto', 'delta-spark' or 'delta-rs'" in message
    if "modle" in override:
        assert "model" in message  # lists the allowed keys
    assert "\n" not in message


def test_override_without_equals_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        load_settings([], ["clv.model"])


def test_cli_exits_2_with_one_line_on_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["run", "--set", "lakehouse.engine=nope", "--set", f"output.path={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("segspark: configuration error: invalid value for 'lakehouse.engine'")


def test_cli_exits_2_on_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--conf", "/nonexistent/x.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_exits_2_on_bad_arguments() -> None:
    assert main(["frobnicate"]) == 2


def test_missing_pseudonymization_key_exits_2_before_spark_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SEGSPARK_PSEUDO_KEY", raising=False)
    monkeypatch.setenv(
        "JAVA_HOME", str(tmp_path / "no-java")
    )  # Spark could not start: the key check comes first
    code = main(["run", "--set", f"input.transactions.path={tmp_path}", "--set", f"output.path={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(
        "segspark: configuration error: no pseudonymization key: set the environment variable "
        "SEGSPARK_PSEUDO_KEY"
    )


def test_governance_decisions_come_from_config_and_open_ones_are_named() -> None:
    from segspark.report.section_tables import governance_rows

    open_items = governance_rows(load_settings([], []), dt.date(2026, 3, 31))
    assert [name for name, _, decided in open_items if not decided] == [
        "Legal basis",
        "Consent for activation",
        "Retention period",
        "Owner",
        "Reviewer",
        "Next review",
    ]
    assert "report.governance.legal_basis" in open_items[0][1]
    assert open_items[-1][1].startswith("2026-09-30:")  # six months after the run, end of month kept
    items = [
        "report.governance.legal_basis=legitimate interests (GDPR Art. 6(1)(f))",
        "report.governance.consent_column=marketing_opt_in",
        "report.governance.retention_period=13 months",
        "report.governance.owner_role=Head of CRM",
        "report.governance.reviewer_role=Data protection officer",
        "report.governance.review_every_months=3",
        "report.governance.last_review=2026-01-31",
    ]
    decided = dict((n, v) for n, v, ok in governance_rows(load_settings([], items), None) if ok)
    assert decided["Legal basis"] == "legitimate interests (GDPR Art. 6(1)(f))"
    assert "'marketing_opt_in' is true" in decided["Consent for activation"]
    assert decided["Owner"] == "Head of CRM" and decided["Reviewer"] == "Data protection officer"
    assert decided["Next review"].startswith("2026-04-30:")
    with pytest.raises(ConfigError):
        load_settings([], ["report.governance.review_every_months=0"])


@pytest.mark.parametrize(
    ("word", "expected"), [("off", "off"), ("on", "on"), ("auto", "auto"), ("no", "off")]
)
def test_on_off_settings_take_yaml_booleans_in_a_file_and_in_set(
    tmp_path: Path, word: str, expected: str
) -> None:
    # YAML 1.1 reads bare on/off/no as booleans; README documents report.pdf as auto | on | off
    conf = tmp_path / "pdf.yaml"
    conf.write_text(f"report:\n  pdf: {word}\nquality:\n  rules: {{future_timestamp: off}}\n")
    assert yaml.safe_load(conf.read_text())["quality"]["rules"]["future_timestamp"] is False
    from_file = load_settings([conf])
    assert from_file.report.pdf == expected
    assert from_file.quality.rules == {"future_timestamp": "off"}
    from_set = load_settings([], [f"report.pdf={word}", "quality.rules.too_early_timestamp=off"])
    assert from_set.report.pdf == expected
    assert from_set.quality.rules == {"too_early_timestamp": "off"}


def test_a_yaml_true_is_no_severity_and_off_still_guards_structural_rules() -> None:
    cases = {
        "quality.rules.future_timestamp=on": (
            "'quality.rules.future_timestamp': true: Input should be 'quarantine', 'fail' or 'off'"
        ),
        "quality.rules.bad_amount=off": "'bad_amount' keeps unusable rows out and cannot be 'off'",
        "report.pdf=1": "'report.pdf': 1: Input should be 'auto', 'on' or 'off'",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            load_settings([], [override])
        assert expected in str(err.value)
