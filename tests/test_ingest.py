"""Ingest: every quality rule fires on its planted row, clean rows stay clean, counts reconcile."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

import pytest
from pyspark.sql import types as T

from segspark import ingest
from segspark import schema as S
from segspark.config import QUALITY_RULE_IDS, PrivacyConfig, QualityConfig, load_settings
from segspark.errors import ConfigError, DataQualityError, InputError, SegsparkError
from segspark.ingest import checks as ingest_checks

KEY = b"ingest-test-key"
NOW = dt.datetime(2025, 6, 30, 12, 0, tzinfo=dt.timezone.utc)
TX_COLS = [
    "line",
    "customer_id",
    "order_id",
    "order_ts",
    "amount",
    "quantity",
    "product_category",
    "channel",
    "currency",
    "email",
]
TX_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in TX_COLS])


def pid(source_id: str) -> str:
    return hmac.new(KEY, source_id.encode(), hashlib.sha256).hexdigest()


def tx(
    line: str, cid: str | None, oid: str | None, ts: str | None, amount: str | None, **kw: str | None
) -> tuple:
    row = {
        "quantity": "1",
        "product_category": "home",
        "channel": "web",
        "currency": "USD",
        "email": f"{line}@mail.test",
    }
    row.update(kw)
    return (
        line,
        cid,
        oid,
        ts,
        amount,
        row["quantity"],
        row["product_category"],
        row["channel"],
        row["currency"],
        row["email"],
    )


# clean rows: returns, nulls, case/space noise, a holdout order after as_of, a time just within tolerance
CLEAN = [
    tx("c1", "C1", "O1", "2025-01-05 10:00:00", "40.00"),
    tx("c2", "C1", "O1", "2025-01-09 09:00:00", "-15.50", quantity="-1"),  # return line of O1
    tx("c3", " C2 ", "O2", "2025-02-01T08:30:00Z", "25", channel=" APP ", quantity=None),
    tx("c4", "C2", "O3", "2025-03-01", "30", currency="eur"),  # 30 EUR -> 33 USD
    tx("c5", "C3", "O4", "2025-06-30 20:00:00", "60", currency=None, channel=None),  # later today: fine
    tx("c6", "C3", "O5", "2025-07-01 08:00:00", "10"),  # 20 h ahead: within the 24 h tolerance
    tx("c7", "C4", "O6", "2025-04-01 00:00:00", "0", product_category=" "),
    tx("c8", "C5", "O7", "2025-04-02 00:00:00", "55"),  # first copy of a duplicated line stays
    tx("c9", "C5", "O8", "2025-04-03 00:00:00", "45"),
    tx("c10", "C6", "O9", "2025-04-04 00:00:00", "35"),
]
# planted rows: line -> expected rule
PLANTED = {
    "missing_customer_id": tx("p1", None, "P1", "2025-01-01", "10"),
    "blank_customer_id": tx("p2", "   ", "P2", "2025-01-01", "10"),
    "missing_order_id": tx("p3", "C1", " ", "2025-01-01", "10"),
    "bad_timestamp": tx("p4", "C1", "P4", "not-a-date", "10"),
    "future_timestamp": tx("p5", "C1", "P5", "2025-07-02 12:00:01", "10"),
    "too_early_timestamp": tx("p6", "C1", "P6", "1999-12-31 23:59:59", "10"),
    "bad_amount_text": tx("p7", "C1", "P7", "2025-01-01", "abc"),
    "bad_amount_nan": tx("p8", "C1", "P8", "2025-01-01", "NaN"),
    "bad_amount_null": tx("p9", "C1", "P9", "2025-01-01", None),
    "bad_amount_inf": tx("p10", "C1", "P10", "2025-01-01", "Infinity"),
    "unknown_currency": tx("p11", "C1", "P11", "2025-01-01", "10", currency="XYZ"),
    "order_id_conflict_a": tx("p12", "C7", "P12", "2025-01-01", "12"),
    "order_id_conflict_b": tx("p13", "C8", "P12", "2025-01-01", "12"),
    "duplicate_line": tx("c8", "C5", "O7", "2025-04-02 00:00:00", "55"),
    "amount_outlier": tx("p15", "C9", "P15", "2025-01-01", "-250000"),
    "precedence": tx("p16", None, "P16", "garbage", "abc"),  # missing id wins over the rest
}
EXPECTED_RULE = {
    "p1": "missing_customer_id",
    "p2": "missing_customer_id",
    "p3": "missing_order_id",
    "p4": "bad_timestamp",
    "p5": "future_timestamp",
    "p6": "too_early_timestamp",
    "p7": "bad_amount",
    "p8": "bad_amount",
    "p9": "bad_amount",
    "p10": "bad_amount",
    "p11": "unknown_currency",
    "p12": "order_id_conflict",
    "p13": "order_id_conflict",
    "c8": "duplicate_line",
    "p15": "amount_outlier",
    "p16": "missing_customer_id",
}
CFG = QualityConfig(
    outlier_quantile=0.75, outlier_multiple=10.0, currency={"base": "USD", "rates": {"EUR": 1.1, "GBP": 1.25}}
)


@pytest.fixture(scope="module")
def tx_result(spark):
    df = spark.createDataFrame(CLEAN + list(PLANTED.values()), TX_SCHEMA)
    result = ingest.validate(df, "transactions", CFG, NOW, key=KEY, privacy=PrivacyConfig())
    yield result
    result.release()


def test_every_transaction_rule_fires_on_its_planted_row(tx_result) -> None:
    quarantined = [(json.loads(r["raw"])["line"], r["rule"]) for r in tx_result.quarantine.collect()]
    assert sorted(quarantined) == sorted(EXPECTED_RULE.items())
    expected_counts: dict[str, int] = {}
    for rule in EXPECTED_RULE.values():
        expected_counts[rule] = expected_counts.get(rule, 0) + 1
    assert tx_result.by_rule == expected_counts
    assert set(ingest.TABLE_RULES["transactions"]) - {"missing_channel"} <= set(QUALITY_RULE_IDS)


def test_no_clean_transaction_is_quarantined_and_values_are_parsed(tx_result) -> None:
    clean = tx_result.clean
    assert clean.columns == [
        "customer_id",
        "order_id",
        "order_ts",
        "amount",
        "quantity",
        "product_category",
        "channel",
        "currency",
        S.SOURCE_KEY,  # the trimmed source id, for silver.orders' grouping only
    ]
    rows = sorted(clean.collect(), key=lambda r: (r["order_id"], r["amount"]))
    # every line's pseudonym is its trimmed source id's
    assert all(r["customer_id"] == pid(r[S.SOURCE_KEY]) for r in rows)
    assert [r["order_id"] for r in rows] == ["O1", "O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9"]
    by_order = {(r["order_id"], round(r["amount"], 6)): r for r in rows}
    assert by_order[("O1", -15.5)]["quantity"] == -1  # returns are kept, not rejected
    o2 = by_order[("O2", 25.0)]
    assert o2["customer_id"] == pid("C2") and o2["channel"] == "app" and o2["quantity"] is None
    assert o2["order_ts"] == dt.datetime(2025, 2, 1, 8, 30)
    assert by_order[("O3", 33.0)]["currency"] == "USD"
    assert by_order[("O4", 60.0)]["channel"] is None
    assert by_order[("O6", 0.0)]["product_category"] is None
    assert {r["customer_id"] for r in rows} == {pid(c) for c in ("C1", "C2", "C3", "C4", "C5", "C6")}
    assert clean.schema["amount"].dataType == T.DoubleType()
    assert clean.schema["order_ts"].dataType == T.TimestampType()


def test_many_conflicting_orders_join_by_shuffle_with_the_same_result(spark, tx_result, monkeypatch) -> None:
    """Above CONFLICTS_BROADCAST_ROWS conflicting orders nothing is broadcast from the driver; the
    rules fire on the same rows."""
    monkeypatch.setattr(ingest_checks, "CONFLICTS_BROADCAST_ROWS", 0)
    df = spark.createDataFrame(CLEAN + list(PLANTED.values()), TX_SCHEMA)
    _, few = ingest.order_conflicts(df)
    assert not few
    result = ingest.validate(df, "transactions", CFG, NOW, key=KEY, privacy=PrivacyConfig())
    try:
        assert result.by_rule == tx_result.by_rule and result.by_rule["order_id_conflict"] == 2
        shuffled = sorted((json.loads(r["raw"])["line"], r["rule"]) for r in result.quarantine.collect())
        assert shuffled == sorted(EXPECTED_RULE.items())
    finally:
        result.release()


def test_reconciliation_and_quarantine_has_no_pii(tx_result) -> None:
    assert tx_result.rows_in == len(CLEAN) + len(PLANTED)
    assert tx_result.rows_clean == len(CLEAN)  # the first copy of the duplicated line is clean
    assert tx_result.rows_in == tx_result.rows_clean + tx_result.rows_quarantined
    ingest.reconcile(tx_result)
    rows = tx_result.quarantine.collect()
    assert {r["source_table"] for r in rows} == {"transactions"}
    assert all(r["reason"] for r in rows)
    for r in rows:
        raw = json.loads(r["raw"])
        assert "email" not in raw and "@mail.test" not in r["raw"]
        assert raw["customer_id"] in (None, pid("C1"), pid("C5"), pid("C7"), pid("C8"), pid("C9"))
        assert "C1" not in (raw["customer_id"] or "")


def _plan_above_cache(df, capsys) -> str:
    """The physical plan of ``df`` down to its scan of the cached frame (the cached plan left out)."""
    df.explain()
    plan = capsys.readouterr().out
    assert "InMemoryTableScan" in plan, plan
    return plan.split("InMemoryTableScan", 1)[0]


def test_orders_are_grouped_in_the_validating_pass_with_one_shuffle(spark, tx_result, capsys) -> None:
    """The transactions are grouped into orders right after the one shuffle by customer, as one sort
    aggregate over the window's order (no second exchange, no sort of the lines), and that per-order
    frame is what is persisted: the silver orders read it with no exchange, sort or aggregate."""
    from segspark import silver
    from segspark.config import PurchaseConfig

    assert spark.conf.get("spark.sql.execution.replaceHashWithSortAgg") == "true"
    assert tx_result.orders is not None
    tx_result.orders.explain()
    whole = capsys.readouterr().out
    above = _plan_above_cache(silver.order_columns(tx_result.orders, PurchaseConfig()), capsys)
    assert "Exchange" not in above and "Sort [" not in above and "Aggregate" not in above, above
    final = whole.split("InMemoryRelation", 1)[1].split("== Final Plan ==", 1)[1]
    # from the order aggregate down to the window of the one shuffle: no exchange, no sort
    grouping = final.split(f"SortAggregate(key=[{S.SOURCE_KEY}", 1)[1].split("Window [", 1)[0]
    assert "Exchange" not in grouping and "Sort [" not in grouping, grouping


def test_reconcile_raises_on_mismatch(tx_result) -> None:
    broken = ingest.IngestResult(
        table="transactions",
        clean=tx_result.clean,
        quarantine=tx_result.quarantine,
        rows_in=tx_result.rows_in + 1,
        rows_clean=tx_result.rows_clean,
        rows_quarantined=tx_result.rows_quarantined,
        by_rule=tx_result.by_rule,
    )
    with pytest.raises(SegsparkError, match="transactions: reconciliation failed"):
        ingest.reconcile(broken)


def test_fail_severity_stops_with_exit_code_3_and_off_lets_rows_through(spark) -> None:
    df = spark.createDataFrame([*CLEAN, PLANTED["bad_amount_text"], PLANTED["duplicate_line"]], TX_SCHEMA)
    cfg = CFG.model_copy(update={"rules": {"bad_amount": "fail", "duplicate_line": "off"}})
    result = ingest.validate(df, "transactions", cfg, NOW)
    assert result.by_rule == {"bad_amount": 1}
    assert result.rows_clean == len(CLEAN) + 1  # the duplicate passes with the rule off
    assert not result.pseudonymized and "C1" in {r["customer_id"] for r in result.clean.collect()}
    raw = json.loads(result.quarantine.first()["raw"])
    assert "customer_id" not in raw  # no key: the source id is left out of the quarantine
    with pytest.raises(
        DataQualityError, match=r"transactions: blocking quality rule 'bad_amount' failed on 1 row"
    ) as exc:
        ingest.raise_on_fail(result)
    assert exc.value.exit_code == 3
    result.release()


def test_absolute_outlier_cap_and_no_rates_keeps_currencies(spark) -> None:
    df = spark.createDataFrame(
        [tx("a", "C1", "A1", "2025-01-01", "499"), tx("b", "C1", "A2", "2025-01-01", "501", currency="EUR")],
        TX_SCHEMA,
    )
    cfg = QualityConfig(outlier_multiple=1e9, outlier_abs_cap=500.0)
    result = ingest.validate(df, "transactions", cfg, NOW)
    assert result.by_rule == {"amount_outlier": 1}
    assert [(r["amount"], r["currency"]) for r in result.clean.collect()] == [(499.0, "USD")]
    result.release()


@pytest.mark.parametrize("key", [KEY, None])
def test_copies_compare_the_trimmed_customer_id(spark, key: bytes | None) -> None:
    """With or without a key, a line whose customer id differs from another only by surrounding
    spaces is a copy; a line differing in any other source column is not."""
    df = spark.createDataFrame(
        [
            tx("d", "C1", "D1", "2025-01-01", "10"),
            tx("d", " C1 ", "D1", "2025-01-01", "10"),  # the same line: a copy
            tx("d", "C1", "D1", "2025-01-01", "10.0"),  # another amount text: not a copy
            tx("d", "C2", "D2", "2025-01-01", "10"),  # another customer: not a copy
        ],
        TX_SCHEMA,
    )
    result = ingest.validate(df, "transactions", CFG, NOW, key=key, privacy=PrivacyConfig())
    assert result.by_rule == {"duplicate_line": 1}
    assert result.rows_clean == 3
    [raw] = [json.loads(r["raw"]) for r in result.quarantine.collect()]
    assert raw.get("customer_id") == (pid("C1") if key else None)  # the pseudonym, or left out
    result.release()


def test_currency_rate_table(spark) -> None:
    df = spark.createDataFrame(
        [
            tx("a", "C1", "A1", "2025-01-01", "10", currency="GBP"),
            tx("b", "C1", "A2", "2025-01-01", "10", currency="JPY"),
        ],
        TX_SCHEMA,
    )
    rates = spark.createDataFrame([("gbp", 1.3)], "currency string, rate double")
    result = ingest.validate(df, "transactions", QualityConfig(), NOW, currency_rates=rates)
    assert result.by_rule == {"unknown_currency": 1}
    assert [r["amount"] for r in result.clean.collect()] == [pytest.approx(13.0)]
    result.release()
    dup = spark.createDataFrame([("GBP", 1.3), ("gbp ", 1.2)], "currency string, rate double")
    with pytest.raises(InputError, match="GBP"):
        ingest.validate(df, "transactions", QualityConfig(), NOW, currency_rates=dup)


def test_customers_rules_and_no_pii(spark) -> None:
    cols = (
        "customer_id string, signup_ts string, age string, country string, "
        "email string, name string, phone string"
    )
    rows = [
        ("K1", "2024-01-01 00:00:00", "34", "US", "k1@mail.test", "Ann Lee", "+15550001"),  # clean
        ("K2", None, None, " de ", "k2@mail.test", "Bo Chan", "+15550002"),  # clean, nulls
        ("K3", "2024-02-01", "0", "GB", None, None, None),  # clean, age edge
        (None, "2024-01-01", "-5", "US", "x@mail.test", "No Id", "+15550003"),  # missing id
        ("K4", "yesterday", "30", "US", "k4@mail.test", "Cy Dee", "+15550004"),  # malformed signup
        ("K5", "2024-01-01", "212", "US", "k5@mail.test", "Di Eve", "+15550005"),  # malformed age
        ("K6", "2024-01-01", "thirty", "US", None, None, None),  # malformed age text
        ("K7", "2027-01-01", "30", "US", None, None, None),  # future signup
        ("K8", "2024-01-01", "30", "US", "a@mail.test", None, None),  # conflict
        ("K8", "2024-01-01", "31", "US", "a@mail.test", None, None),  # conflict
        ("K9", "2024-01-01", "40", "FR", None, None, None),  # first copy stays
        ("K9", "2024-01-01", "40", "FR", None, None, None),  # exact duplicate
    ]
    df = spark.createDataFrame(rows, cols)
    result = ingest.validate(df, "customers", QualityConfig(), NOW, key=KEY)
    assert result.by_rule == {
        "missing_customer_id": 1,
        "future_timestamp": 1,
        "malformed_customer": 3,
        "customer_id_conflict": 2,
        "duplicate_line": 1,
    }
    ingest.reconcile(result)
    clean = {r["customer_id"]: r for r in result.clean.collect()}
    assert set(clean) == {pid(c) for c in ("K1", "K2", "K3", "K9")}
    assert clean[pid("K2")]["country"] == "de" and clean[pid("K3")]["age"] == 0
    assert "email" not in result.clean.columns and "name" not in result.clean.columns
    everything = " ".join(str(v) for r in result.clean.collect() for v in r)
    everything += " ".join(r["raw"] for r in result.quarantine.collect())
    for planted in ("@mail.test", "Ann Lee", "Cy Dee", "+1555"):
        assert planted not in everything
    result.release()


def test_events_and_spend_rules(spark) -> None:
    events = spark.createDataFrame(
        [
            ("E1", "2025-05-01 10:00:00", "page_view", "web", "mobile"),
            ("E1", "2025-05-01 10:00:00", "page_view", "web", "mobile"),  # duplicate
            ("E1", "2025-05-01 10:01:00", " Login ", None, None),  # clean, normalized
            ("E2", "2025-05-01 10:00:00", "teleport", "web", "mobile"),  # unknown type
            ("", "2025-05-01 10:00:00", "login", "web", "mobile"),  # missing id
            ("E3", "5/1/2025", "login", "web", "mobile"),  # bad timestamp
        ],
        "customer_id string, event_ts string, event_type string, channel string, device string",
    )
    res = ingest.validate(events, "events", QualityConfig(), NOW, key=KEY)
    assert res.by_rule == {
        "missing_customer_id": 1,
        "bad_timestamp": 1,
        "unknown_event_type": 1,
        "duplicate_line": 1,
    }
    assert sorted(r["event_type"] for r in res.clean.collect()) == ["login", "page_view"]
    res.release()
    spend = spark.createDataFrame(
        [
            ("2025-01", "Paid_Search", "100.5"),
            ("2025-02-15", "social", "0"),
            ("2025-02-15", "social", "0"),  # duplicate
            ("2025-03", None, "10"),  # missing channel
            ("2025-03", "social", "-1"),  # negative spend
            ("March", "social", "10"),  # bad month
        ],
        "month string, channel string, spend string",
    )
    res = ingest.validate(spend, "marketing_spend", QualityConfig(), NOW)
    assert res.by_rule == {"missing_channel": 1, "bad_timestamp": 1, "bad_amount": 1, "duplicate_line": 1}
    assert sorted((r["month"], r["channel"], r["spend"]) for r in res.clean.collect()) == [
        (dt.date(2025, 1, 1), "paid_search", 100.5),
        (dt.date(2025, 2, 1), "social", 0.0),
    ]
    res.release()


@pytest.mark.parametrize("key", [KEY, None])
def test_erased_customers_rows_up_to_the_erasure_are_quarantined_without_key_or_values(spark, key) -> None:
    """The ``erasures`` list (a SHA-256 tag of the key the tables hold, and the time): CRM rows and
    events of the customer dated up to the erasure, or undated, break ``erased_customer`` (before any
    other rule but a missing id) and keep neither key nor values; rows dated after it are taken."""
    held = pid("E1") if key is not None else "E1"
    erased = spark.createDataFrame(
        [(hashlib.sha256(held.encode()).hexdigest(), dt.datetime(2025, 5, 1, 12, tzinfo=dt.timezone.utc))],
        "erased_tag string, erased_at timestamp",
    )
    events = spark.createDataFrame(
        [
            ("E1", "2025-05-01 10:00:00", "page_view", "web", "mobile"),  # before the erasure
            (" E1", "2025-05-01 10:00:00", "page_view", "web", "mobile"),  # a copy of it
            ("E1", "5/1/2025", "login", "web", "mobile"),  # undated
            ("E1", "2025-05-02 09:00:00", "teleport", "web", "mobile"),  # after, and unknown type
            ("E1", "2025-05-03 09:00:00", "login", "web", "mobile"),  # after: a new event
            ("E2", "2025-05-01 10:00:00", "login", "web", "mobile"),  # another customer
        ],
        "customer_id string, event_ts string, event_type string, channel string, device string",
    )
    privacy = PrivacyConfig(pseudonymize=key is not None)
    res = ingest.validate(events, "events", QualityConfig(), NOW, key=key, privacy=privacy, erased=erased)
    assert res.by_rule == {"erased_customer": 3, "unknown_event_type": 1}
    ingest.reconcile(res)
    kept = sorted((r["customer_id"], r["event_type"]) for r in res.clean.collect())
    assert kept == sorted([(held, "login"), (pid("E2") if key is not None else "E2", "login")])
    rows = [r.asDict() for r in res.quarantine.where("rule = 'erased_customer'").collect()]
    assert [(r["customer_id"], r["raw"]) for r in rows] == [(None, None)] * 3
    res.release()
    customers = spark.createDataFrame(
        [("E1", "2024-01-01 00:00:00", "34"), ("E1", None, "35"), ("E1", "2025-05-02 00:00:00", "35")],
        "customer_id string, signup_ts string, age string",
    )
    res = ingest.validate(
        customers, "customers", QualityConfig(), NOW, key=key, privacy=privacy, erased=erased
    )
    # the two rows up to the erasure are the erased customer's; the signup since conflicts with them
    # (one id, three records) while the source still holds them: quarantined, its key kept
    assert res.by_rule == {"erased_customer": 2, "customer_id_conflict": 1}
    assert res.clean.count() == 0
    res.release()
    with pytest.raises(ConfigError, match="'erased_customer' is not configurable"):
        load_settings(overrides=["quality.rules.erased_customer=off"])


def test_conform_renames_and_names_missing_columns(spark) -> None:
    df = spark.createDataFrame(
        [("a", "o", "2025-01-01", "1", "x@y")], "cust string, oid string, ts string, amt string, email string"
    )
    mapping = {"customer_id": "cust", "order_id": "oid", "order_ts": "ts", "amount": "amt"}
    out = ingest.conform(df, "transactions", mapping)
    assert out.columns == ["customer_id", "order_id", "order_ts", "amount", "email"]
    with pytest.raises(InputError, match=r"transactions: column 'cost'"):
        ingest.conform(df, "transactions", {**mapping, "amount": "cost"})
    with pytest.raises(InputError, match=r"transactions: required column 'amount'"):
        ingest.conform(df, "transactions", {k: v for k, v in mapping.items() if k != "amount"})


def test_unknown_or_disabled_structural_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown quality rule 'no_such_rule'"):
        load_settings(overrides=["quality.rules.no_such_rule=fail"])
    with pytest.raises(ConfigError, match="missing_customer_id"):
        load_settings(overrides=["quality.rules.missing_customer_id=off"])
    assert load_settings(overrides=["quality.rules.amount_outlier=fail"]).quality.rules == {
        "amount_outlier": "fail"
    }


@pytest.mark.slow
def test_generated_dirty_transactions_are_caught(spark) -> None:
    """The generator's planted rows (order ids BAD-..., five copied lines) land under their rules."""
    from segspark import generate as G

    # materialized once: validate reads its input a few times, as it would a table
    clean = G.transactions(G.customer_base(spark, 300, seed=5), seed=5).cache()
    dirty = G.dirty_transactions(clean, seed=5).cache()
    cfg = QualityConfig(currency={"rates": {"EUR": 1.08, "GBP": 1.27}})
    processing = dt.datetime.combine(G.DEFAULT_END, dt.time(12), tzinfo=dt.timezone.utc)
    result = ingest.validate(dirty, "transactions", cfg, processing, key=KEY)
    ingest.reconcile(result)
    got = sorted((json.loads(r["raw"])["order_id"], r["rule"]) for r in result.quarantine.collect())
    planted = [(o, r) for o, r in got if o.startswith("BAD-")]
    assert planted == sorted(
        [
            ("BAD-missing-id", "missing_customer_id"),
            ("BAD-blank-id", "missing_customer_id"),
            ("BAD-bad-ts", "bad_timestamp"),
            ("BAD-future-ts", "future_timestamp"),
            ("BAD-early-ts", "too_early_timestamp"),
            ("BAD-bad-amount", "bad_amount"),
            ("BAD-nan-amount", "bad_amount"),
            ("BAD-null-amount", "bad_amount"),
            ("BAD-outlier", "amount_outlier"),
            ("BAD-currency", "unknown_currency"),
            ("BAD-conflict", "order_id_conflict"),
            ("BAD-conflict", "order_id_conflict"),
        ]
    )
    others = [(o, r) for o, r in got if not o.startswith("BAD-")]
    assert len(others) == 5 and {r for _, r in others} == {"duplicate_line"}
    assert result.rows_clean == clean.count()
    result.release()
    dirty.unpersist()
    clean.unpersist()


@pytest.mark.parametrize("q", [0.999, 0.9, 0.75])
def test_outlier_bound_is_the_exact_quantile_and_the_sketch_agrees(spark, monkeypatch, q: float) -> None:
    import numpy as np

    values = np.random.default_rng(3).lognormal(3.0, 1.0, 5_000)
    df = spark.createDataFrame([(float(v),) for v in values], "_a double")
    cfg = QualityConfig(outlier_quantile=q, outlier_multiple=2.0)
    exact = spark.range(1).select(ingest.outlier_bound(df, cfg).alias("b")).first()["b"]
    want = float(np.quantile(values, q, method="inverted_cdf")) * 2.0  # the ceil(q n)-th smallest
    assert exact == want
    monkeypatch.setattr(ingest_checks, "OUTLIER_TOP_K", 0)  # a tail too large for the driver: the sketch
    sketch = spark.range(1).select(ingest.outlier_bound(df, cfg).alias("b")).first()["b"]
    ranks = np.searchsorted(np.sort(values), [want / 2.0, sketch / 2.0])
    assert abs(ranks[1] - ranks[0]) <= max(2, 0.001 * len(values)), (exact, sketch)
    assert spark.range(1).select(ingest.outlier_bound(df.limit(0), cfg).alias("b")).first()["b"] is None


def test_quarantine_rows_carry_the_pseudonym_of_their_customer_and_no_source_id(tx_result) -> None:
    """The quarantine's customer_id is the key the customer's clean rows carry (so erasure reaches
    it); neither it nor the raw JSON holds a source id when a key is set."""
    clean_keys = {r["customer_id"] for r in tx_result.clean.select("customer_id").collect()}
    rows = tx_result.quarantine.collect()
    by_line = {json.loads(r["raw"])["line"]: r for r in rows}
    # C1's planted rows share the key of C1's clean rows; C7/C8 have only quarantined rows
    for line in ("p3", "p4", "p5", "p6", "p7", "p11"):
        assert by_line[line]["customer_id"] == pid("C1")
    assert pid("C1") in clean_keys and pid("C5") in clean_keys
    assert by_line["c8"]["customer_id"] == pid("C5")  # the extra copy of a clean customer's line
    assert {by_line["p12"]["customer_id"], by_line["p13"]["customer_id"]} == {pid("C7"), pid("C8")}
    assert by_line["p1"]["customer_id"] is None and by_line["p2"]["customer_id"] is None
    source_ids = {f"C{i}" for i in range(1, 10)}
    for r in rows:
        raw = json.loads(r["raw"])
        assert raw["customer_id"] == r["customer_id"]  # the JSON's id is the same pseudonym
        assert r["customer_id"] not in source_ids
        assert not source_ids & {str(v).strip() for v in raw.values()}


@pytest.mark.parametrize(
    ("pseudonymize", "key", "expected", "in_raw"), [(True, None, None, None), (False, None, "C1", " C1 ")]
)
def test_quarantine_key_without_pseudonym(spark, pseudonymize: bool, key, expected, in_raw) -> None:
    """Pseudonymization on but no key given: the quarantine keeps no customer id at all; off by
    configuration: the trimmed source id, as in the clean rows (the raw JSON keeps the source value)."""
    df = spark.createDataFrame([tx("q", " C1 ", "Q1", "not-a-date", "10")], TX_SCHEMA)
    privacy = PrivacyConfig(pseudonymize=pseudonymize)
    result = ingest.validate(df, "transactions", CFG, NOW, key=key, privacy=privacy)
    [row] = result.quarantine.collect()
    assert row["customer_id"] == expected
    assert json.loads(row["raw"]).get("customer_id") == in_raw
    result.release()


def test_quarantine_share_above_the_bound_is_a_data_quality_error(tx_result) -> None:
    share = tx_result.rows_quarantined / tx_result.rows_in  # 16 of 26
    ingest.check_quarantine_share(tx_result, max_share=share)  # at the bound: passes
    with pytest.raises(DataQualityError) as err:
        ingest.check_quarantine_share(tx_result, max_share=0.2)
    text = str(err.value)
    assert text.startswith("table 'transactions': 16 of 26 rows quarantined (62%")
    assert "quality.max_quarantine_share=0.2" in text
    assert "top rules: bad_amount=4, missing_customer_id=3, order_id_conflict=2" in text
    assert err.value.exit_code == 3 and "\n" not in text


def test_every_line_of_a_customer_carries_its_pseudonym_even_after_a_quarantined_first_line(spark) -> None:
    """The HMAC runs once per customer, on its first line in the window's order, and is carried to
    the others: customers of many lines spread over the partitions, whose first line (the smallest
    order id) is quarantined, still get their own pseudonym on every clean line, and quarantined
    lines carry it too."""
    rows = []
    for c in range(12):
        cid = f" K{c} " if c % 3 == 0 else f"K{c}"  # trimmed before hashing
        rows.append(tx(f"bad{c}", cid, f"A{c}", "2025-01-05 10:00:00", "not-a-number"))  # first in order
        rows += [
            tx(f"k{c}-{i}", cid, f"B{c}-{i:03d}", "2025-01-05 10:00:00", f"{i + 1}.00") for i in range(25)
        ]
    df = spark.createDataFrame(rows, TX_SCHEMA).repartition(5)
    result = ingest.validate(df, "transactions", QualityConfig(), NOW, key=KEY, privacy=PrivacyConfig())
    try:
        assert result.rows_clean == 12 * 25 and result.by_rule == {"bad_amount": 12}
        clean = result.clean.select("customer_id", S.SOURCE_KEY).collect()
        assert {r[S.SOURCE_KEY] for r in clean} == {f"K{c}" for c in range(12)}
        assert all(r["customer_id"] == pid(r[S.SOURCE_KEY]) for r in clean)
        for r in result.quarantine.collect():
            assert r["customer_id"] == json.loads(r["raw"])["customer_id"]
            assert r["customer_id"] in {pid(f"K{c}") for c in range(12)}
    finally:
        result.release()


def test_orders_grouped_while_validating_are_the_orders_of_the_clean_lines(spark) -> None:
    """A batch with an exact copy of a line, an order id on two customers, a customer whose first
    line (in the window's order) is quarantined, and a return line months after its order: counts
    reconcile, and the orders ingest groups as it validates equal ``silver.orders`` of the clean
    lines (the former path) and the hand-computed orders."""
    from segspark import silver
    from segspark.config import PurchaseConfig

    rows = [
        *CLEAN,
        *PLANTED.values(),
        tx("k0", "K", "A0", "2025-02-01 10:00:00", "abc"),  # K's first line: quarantined
        tx("k1", "K", "B1", "2025-02-02 10:00:00", "20"),
        tx("k2", "K", "B1", "2025-02-02 11:00:00", "5", product_category="toys"),
        tx("late", "C5", "O8", "2025-06-20 09:00:00", "-20", quantity="-1"),  # O8's return, 2.5 months on
    ]
    result = ingest.validate(
        spark.createDataFrame(rows, TX_SCHEMA), "transactions", CFG, NOW, key=KEY, privacy=PrivacyConfig()
    )
    try:
        ingest.reconcile(result)
        assert result.rows_in == len(rows) and result.rows_clean == len(CLEAN) + 3
        assert result.by_rule["bad_amount"] == 5 and result.by_rule["duplicate_line"] == 1
        assert result.by_rule["order_id_conflict"] == 2
        assert result.last_clean_ts == dt.datetime(2025, 7, 1, 8, 0)
        assert result.orders is not None
        purchase = PurchaseConfig()
        got = silver.order_columns(result.orders, purchase).drop("line_hashes").collect()
        want = silver.orders(result.clean, purchase).drop("line_hashes").collect()
        key = lambda r: r["order_id"]  # noqa: E731
        assert sorted(got, key=key) == sorted(want, key=key)
        assert sum(r["lines"] for r in got) == result.rows_clean
        orders = {r["order_id"]: r for r in got}
        assert set(orders) == {"O1", "O2", "O3", "O4", "O5", "O6", "O7", "O8", "O9", "B1"}
        assert orders["O7"]["lines"] == 1  # the copy is not counted twice
        hashes = {
            r["order_id"]: r["line_hashes"] for r in silver.order_columns(result.orders, purchase).collect()
        }
        assert all(len(h) == orders[o]["lines"] and h == sorted(h) for o, h in hashes.items())
        o8 = orders["O8"]
        assert (o8["net_amount"], o8["gross_amount"], o8["returned_amount"]) == (25.0, 45.0, 20.0)
        assert o8["order_ts"] == dt.datetime(2025, 4, 3) and o8["lines"] == 2 and o8["quantity"] == 1
        b1 = orders["B1"]
        assert b1["customer_id"] == pid("K") and b1["net_amount"] == 25.0
        assert b1["categories"] == ["home", "toys"] and b1["order_ts"] == dt.datetime(2025, 2, 2, 10)
        quarantined = {json.loads(r["raw"])["line"]: r for r in result.quarantine.collect()}
        assert quarantined["k0"]["customer_id"] == pid("K") and quarantined["k0"]["rule"] == "bad_amount"
        assert len(result.quarantine.collect()) == result.rows_quarantined == len(rows) - len(CLEAN) - 3
    finally:
        result.release()


def test_inputs_validated_side_by_side_give_each_result_and_the_first_error_in_input_order(spark) -> None:
    """``validate_inputs`` runs the inputs' validations at once (threads): each result is what
    ``validate`` alone gives, in input order; with bad inputs the first one's error (input order, as
    one by one) is raised, after the validated inputs' releases were handed over."""
    lines = spark.createDataFrame(CLEAN + list(PLANTED.values()), TX_SCHEMA)
    events = spark.createDataFrame(
        [("E1", "2025-05-01 10:00:00", "login"), ("E2", "2025-05-01 10:00:00", "teleport")],
        "customer_id string, event_ts string, event_type string",
    )
    alone = ingest.validate(lines, "transactions", CFG, NOW, key=KEY, privacy=PrivacyConfig())
    held: list = []
    frames = {"transactions": lines, "events": events}
    together = ingest.validate_inputs(frames, {}.fromkeys(frames, {}), CFG, NOW, held, key=KEY)
    assert [r.table for r in together] == ["transactions", "events"] and len(held) == 2
    assert (together[0].rows_in, together[0].rows_clean, together[0].by_rule) == (
        alone.rows_in,
        alone.rows_clean,
        alone.by_rule,
    )
    assert sorted(together[0].orders.collect()) == sorted(alone.orders.collect())
    assert together[1].by_rule == {"unknown_event_type": 1}
    for release in [*held, alone.release]:
        release()

    no_ts = events.drop("event_ts")  # a required column missing
    bad = {"transactions": lines.drop("amount"), "events": no_ts}
    held = []
    with pytest.raises(InputError, match=r"^transactions: required column 'amount'"):
        ingest.validate_inputs(bad, {}.fromkeys(bad, {}), CFG, NOW, held, key=KEY)
    assert held == []
    good_first = {"transactions": lines, "events": no_ts}
    with pytest.raises(InputError, match=r"^events: required column 'event_ts'"):
        ingest.validate_inputs(good_first, {}.fromkeys(good_first, {}), CFG, NOW, held, key=KEY)
    assert len(held) == 1  # the transactions' cached orders, for the stage to release
    held[0]()
