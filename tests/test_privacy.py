"""Privacy: HMAC pseudonyms equal Python's hmac, key handling, PII removal and age bands."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging

import pytest
from pyspark.sql import types as T

from segspark import privacy
from segspark.config import PrivacyConfig
from segspark.errors import ConfigError, InputError

IDS = ["C000000001", "  padded  ", "ünïcødé-客户", "", "x" * 300, None]
ID_SCHEMA = T.StructType(
    [T.StructField("row", T.IntegerType()), T.StructField("customer_id", T.StringType())]
)


def _py_hmac(key: bytes, value: str | None) -> str | None:
    return None if value is None else hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("key", [b"k", b"test-key-not-secret", bytes(range(64)), b"long" * 40])
def test_pseudonyms_equal_python_hmac(spark, key: bytes) -> None:
    df = spark.createDataFrame(list(enumerate(IDS)), ID_SCHEMA)
    out = {r["row"]: r["customer_id"] for r in privacy.pseudonymize(df, key).collect()}
    assert out == {i: _py_hmac(key, v) for i, v in enumerate(IDS)}


def test_pseudonyms_stable_key_dependent_and_not_hashed_twice(spark, capsys) -> None:
    df = spark.createDataFrame(list(enumerate(IDS[:3])), ID_SCHEMA)
    once = privacy.pseudonymize(df, b"key-one")
    first = {r["row"]: r["customer_id"] for r in once.collect()}
    again = {r["row"]: r["customer_id"] for r in privacy.pseudonymize(df, b"key-one").collect()}
    other = {r["row"]: r["customer_id"] for r in privacy.pseudonymize(df, b"key-two").collect()}
    twice = {r["row"]: r["customer_id"] for r in privacy.pseudonymize(once, b"key-one").collect()}
    assert first == again == twice
    assert all(first[i] != other[i] for i in first)
    assert once.columns == ["row", "customer_id"]
    # the key is joined in as data, so printed plans do not show it
    once.explain(extended=True)
    ipad, _ = privacy._pads(b"key-one")
    assert ipad.hex() not in capsys.readouterr().out.lower()


def test_pseudonymize_missing_column_is_input_error(spark) -> None:
    df = spark.createDataFrame([(1, "a")], ID_SCHEMA)
    with pytest.raises(InputError, match="cust"):
        privacy.pseudonymize(df, b"k", columns=("cust",))


def test_resolve_key_from_env_missing_and_demo(monkeypatch, caplog) -> None:
    cfg = PrivacyConfig(key_env="SEGSPARK_TEST_KEY_ENV")
    monkeypatch.setenv("SEGSPARK_TEST_KEY_ENV", "s3cret")
    assert privacy.resolve_key(cfg) == b"s3cret"
    monkeypatch.delenv("SEGSPARK_TEST_KEY_ENV")
    with pytest.raises(ConfigError, match="SEGSPARK_TEST_KEY_ENV"):
        privacy.resolve_key(cfg)
    with caplog.at_level(logging.WARNING, logger="segspark.privacy"):
        demo_key = privacy.resolve_key(cfg, demo=True)
    assert demo_key and demo_key == privacy.resolve_key(cfg, demo=True)
    assert "SEGSPARK_TEST_KEY_ENV" in caplog.text


CUSTOMER_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("signup_ts", T.TimestampType()),
        T.StructField("country", T.StringType()),
        T.StructField("age", T.IntegerType()),
        T.StructField("email", T.StringType()),
        T.StructField("name", T.StringType()),
        T.StructField("phone", T.StringType()),
        T.StructField("address", T.StringType()),
    ]
)


def test_minimize_drops_pii_and_bands_ages(spark) -> None:
    ages = [None, 0, 17, 18, 24, 25, 64, 65, 99]
    rows = [
        (
            f"c{i}",
            dt.datetime(2024, 1, 1),
            "US",
            a,
            f"p{i}@mail.test",
            f"Name{i}",
            f"+1555{i}",
            f"{i} Main St",
        )
        for i, a in enumerate(ages)
    ]
    out = privacy.minimize(spark.createDataFrame(rows, CUSTOMER_SCHEMA), PrivacyConfig())
    assert tuple(out.columns) == privacy.CUSTOMER_OUTPUT_COLUMNS
    got = {r["customer_id"]: r["age_band"] for r in out.collect()}
    expected = [None, "<18", "<18", "18-24", "18-24", "25-34", "55-64", "65+", "65+"]
    assert got == {f"c{i}": b for i, b in enumerate(expected)}
    text = " ".join(str(v) for r in out.collect() for v in r)
    for planted in ("@mail.test", "Name", "+1555", "Main St"):
        assert planted not in text


def test_minimize_from_birth_year_and_custom_pii(spark) -> None:
    df = spark.createDataFrame(
        [("a", 1990, "F", "secret"), ("b", None, None, "x")],
        "customer_id string, birth_year int, gender string, country string",
    )
    cfg = PrivacyConfig(pii_columns=["country"], age_bands=[30, 40])
    out = privacy.minimize(df, cfg, reference_date=dt.date(2025, 6, 30))
    rows = {r["customer_id"]: r for r in out.collect()}
    assert rows["a"]["age_band"] == "30-39" and rows["b"]["age_band"] is None
    assert rows["a"]["gender"] == "F"
    assert rows["a"]["country"] is None  # listed as PII: dropped, kept as a null column
    assert out.schema["signup_ts"].dataType == T.TimestampType()
