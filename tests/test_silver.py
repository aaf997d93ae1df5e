"""Silver tables: one order and purchase definition, shared by RFM and the CLV summary."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import types as T

from segspark import features as FT
from segspark import silver
from segspark.clv import summary as CS
from segspark.config import PurchaseConfig
from segspark.tables import CUSTOMER_DAYS_SCHEMA, ORDERS_SCHEMA

AS_OF = dt.date(2025, 3, 31)
ts = dt.datetime
TX_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("order_id", T.StringType()),
        T.StructField("order_ts", T.TimestampType()),
        T.StructField("amount", T.DoubleType()),
        T.StructField("quantity", T.IntegerType()),
        T.StructField("product_category", T.StringType()),
        T.StructField("channel", T.StringType()),
    ]
)
LINES = [
    # A: two purchase orders on one day, a later order partly returned, a free order, a holdout order
    ("A", "a1", ts(2025, 1, 5, 9), 50.0, 1, "home", "web"),
    ("A", "a2", ts(2025, 1, 5, 18), 20.0, 2, "toys", None),
    ("A", "a3", ts(2025, 2, 1, 12), 80.0, 1, "home", "app"),
    ("A", "a3", ts(2025, 2, 3, 12), -30.0, -1, "home", "app"),
    ("A", "a4", ts(2025, 3, 1, 12), 0.0, 1, "gift", "web"),  # free: not a purchase
    ("A", "a5", ts(2025, 4, 2, 12), 40.0, 1, "home", "web"),  # after as_of: holdout
    # B: a fully returned order, then one purchase; a pure return order on another day
    ("B", "b1", ts(2025, 1, 10, 10), 25.0, 1, "toys", "store"),
    ("B", "b1", ts(2025, 1, 12, 10), -25.0, -1, "toys", "store"),
    ("B", "b2", ts(2025, 2, 20, 10), 60.0, 3, "toys", "store"),
    ("B", "b3", ts(2025, 3, 10, 10), -5.0, -1, "toys", "store"),
    # C: only a free order: never a purchase
    ("C", "c1", ts(2025, 3, 3, 10), 0.0, 1, None, "web"),
    # D: three purchase days, two orders on the last one
    ("D", "d1", ts(2024, 11, 1, 8), 10.0, None, "books", "web"),
    ("D", "d2", ts(2024, 12, 1, 8), 10.0, 1, "books", "web"),
    ("D", "d3", ts(2025, 3, 31, 8), 10.0, 1, "books", "web"),
    ("D", "d4", ts(2025, 3, 31, 23, 59, 59), 15.0, 1, "toys", "app"),
]


@pytest.fixture(scope="module")
def orders(spark):
    return silver.orders(spark.createDataFrame(LINES, TX_SCHEMA), PurchaseConfig()).cache()


def test_orders_match_their_declared_schema_and_hand_values(orders) -> None:
    assert orders.schema.fieldNames() == ORDERS_SCHEMA.fieldNames()
    assert [f.dataType for f in orders.schema] == [f.dataType for f in ORDERS_SCHEMA]
    got = {r["order_id"]: r.asDict() for r in orders.collect()}
    assert len(got) == 13
    a3 = got["a3"]
    assert (a3["net_amount"], a3["gross_amount"], a3["returned_amount"], a3["lines"]) == (50.0, 80.0, 30.0, 2)
    assert a3["order_date"] == dt.date(2025, 2, 1) and a3["is_purchase"] is True
    assert got["a4"]["is_purchase"] is False and got["b1"]["is_purchase"] is False
    assert got["b3"]["is_purchase"] is False and got["b3"]["returned_amount"] == 5.0
    assert got["b2"]["quantity"] == 3 and got["d1"]["quantity"] is None
    assert got["a2"]["channel"] is None and got["a2"]["categories"] == ["toys"]
    assert got["c1"]["categories"] == []


def test_customer_days_count_purchase_occasions(orders) -> None:
    days = silver.customer_days(orders)
    assert days.schema.fieldNames() == CUSTOMER_DAYS_SCHEMA.fieldNames()
    got = {(r["customer_id"], r["order_date"]): tuple(r)[2:] for r in days.collect()}
    assert got[("A", dt.date(2025, 1, 5))] == (2, 2, 70.0, 70.0)
    assert got[("A", dt.date(2025, 3, 1))] == (1, 0, 0.0, 0.0)
    assert got[("B", dt.date(2025, 3, 10))] == (1, 0, -5.0, 0.0)
    assert got[("D", dt.date(2025, 3, 31))] == (2, 2, 25.0, 25.0)


def test_rfm_frequency_is_clv_x_plus_one_per_customer(orders) -> None:
    """One purchase definition: RFM frequency (purchase days) = the BTYD repeat count x + 1, on data
    with returns, free orders, pure-return orders and multi-order days."""
    rfm = {r["customer_id"]: r for r in FT.rfm_features(orders, AS_OF).collect()}
    clv = {r["customer_id"]: r for r in CS.summary_statistics(silver.customer_days(orders), AS_OF).collect()}
    buyers = {c for c, r in rfm.items() if r["frequency"] > 0}
    assert buyers == set(clv) == {"A", "B", "D"}
    for c in buyers:
        assert rfm[c]["frequency"] == clv[c]["frequency"] + 1, c
    assert {c: rfm[c]["frequency"] for c in buyers} == {"A": 2, "B": 1, "D": 3}
    assert {c: rfm[c]["orders"] for c in buyers} == {"A": 3, "B": 1, "D": 4}
    assert rfm["C"]["frequency"] == 0 and "C" not in clv


CHANNELS = ("web", "app")


def _expected_state(orders, as_of: dt.date) -> dict[str, dict[str, object]]:
    """The customer_state columns computed in pandas from the collected orders (a handful of rows)."""
    df = orders.toPandas()
    df = df[df["order_date"] <= as_of]
    out: dict[str, dict[str, object]] = {}
    for cid, g in df.groupby("customer_id"):
        p = g[g["is_purchase"]].sort_values(["order_ts", "order_id"])
        days = sorted(set(p["order_date"]))
        row: dict[str, object] = {
            "first_seen_ts": g["order_ts"].min(),
            "last_seen_ts": g["order_ts"].max(),
            "first_purchase_ts": p["order_ts"].iloc[0] if len(p) else None,
            "last_purchase_ts": p["order_ts"].max() if len(p) else None,
            "first_purchase_order_id": p["order_id"].iloc[0] if len(p) else None,
            "first_purchase_channel": p["channel"].iloc[0] if len(p) else None,
            "acquisition_month": days[0].replace(day=1) if days else None,
            "purchase_days": len(days),
            "btyd_x": len(days) - 1 if days else None,
            "btyd_t_x_days": (days[-1] - days[0]).days if days else None,
            "orders": len(g),
            "purchases": len(p),
            "net_amount": g["net_amount"].sum(),
            "net_sumsq": (g["net_amount"] ** 2).sum(),
            "purchase_value": p["net_amount"].sum(),
            "purchase_value_sumsq": (p["net_amount"] ** 2).sum(),
            "gross_amount": g["gross_amount"].sum(),
            "gross_sumsq": (g["gross_amount"] ** 2).sum(),
            "returned_amount": g["returned_amount"].sum(),
            "orders_web": int((p["channel"] == "web").sum()),
            "orders_app": int((p["channel"] == "app").sum()),
            "orders_other": int((~p["channel"].isin(CHANNELS)).sum()),
        }
        out[str(cid)] = row
    return out


def _comparable(value: object) -> object:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime().replace(tzinfo=None)  # type: ignore[attr-defined]
    return round(value, 9) if isinstance(value, float) else value


def test_customer_state_columns_equal_what_the_orders_give(orders) -> None:
    """Every customer_state column against the same definition computed in pandas from the orders;
    the declared schema; RFM from the state is RFM from the orders; BTYD x is the CLV summary's."""
    from segspark.tables import CUSTOMER_STATE_SCHEMA

    state = silver.customer_state(orders, AS_OF, CHANNELS)
    declared = CUSTOMER_STATE_SCHEMA.fieldNames()
    assert state.columns == [*declared[:-1], "orders_web", "orders_app", declared[-1]]
    assert all(state.schema[f.name].dataType == f.dataType for f in CUSTOMER_STATE_SCHEMA)
    got = {r["customer_id"]: r.asDict() for r in state.collect()}
    want = _expected_state(orders, AS_OF)
    assert set(got) == set(want) == {"A", "B", "C", "D"}
    for cid, row in want.items():
        for column, value in row.items():
            assert _comparable(got[cid][column]) == _comparable(value), (cid, column)
    assert (
        got["A"]["net_amount"] == 120.0 and got["A"]["first_purchase_channel"] == "web"
    )  # a4 free, a5 later
    assert got["C"]["purchase_days"] == 0 and got["C"]["btyd_x"] is None
    assert got["D"]["btyd_t_x_days"] == 150 and got["D"]["acquisition_month"] == dt.date(2024, 11, 1)
    clv = {r["customer_id"]: r for r in CS.summary_statistics(silver.customer_days(orders), AS_OF).collect()}
    assert {c: got[c]["btyd_x"] for c in clv} == {c: r["frequency"] for c, r in clv.items()}
    from_state = sorted(FT.rfm_from_state(state, AS_OF, CHANNELS).collect())
    assert from_state == sorted(FT.rfm_features(orders, AS_OF, CHANNELS).collect())


def test_customer_months_are_the_orders_per_customer_and_month(orders) -> None:
    from segspark.tables import CUSTOMER_MONTHS_SCHEMA

    months = silver.customer_months(orders, AS_OF)
    assert months.schema.fieldNames() == CUSTOMER_MONTHS_SCHEMA.fieldNames()
    got = {(r["customer_id"], r["month"]): tuple(r)[2:] for r in months.collect()}
    df = orders.toPandas()
    df = df[df["order_date"] <= AS_OF]
    want = {(c, d.replace(day=1)): None for c, d in zip(df["customer_id"], df["order_date"], strict=True)}
    for key in want:
        g = df[(df["customer_id"] == key[0]) & (df["order_date"].map(lambda d: d.replace(day=1)) == key[1])]
        want[key] = (len(g), int(g["is_purchase"].sum()), float(g["net_amount"].sum()))
    assert got == want
    assert got[("A", dt.date(2025, 2, 1))] == (1, 1, 50.0) and ("A", dt.date(2025, 4, 1)) not in got


def _merge(state: dict[str, object], batch: dict[str, object]) -> dict[str, object]:
    """customer_state's merge rules (silver.customer_state's docstring), written out."""
    out = dict(state)
    for c in ("first_seen_ts", "last_seen_ts", "last_purchase_ts"):
        values = [v for v in (state[c], batch[c]) if v is not None]
        out[c] = (min if c.startswith("first") else max)(values) if values else None
    firsts = [
        (r["first_purchase_ts"], r["first_purchase_order_id"], r["first_purchase_channel"])
        for r in (state, batch)
        if r["first_purchase_ts"] is not None
    ]
    first = min(firsts, key=lambda t: (t[0], t[1])) if firsts else (None, None, None)
    out["first_purchase_ts"], out["first_purchase_order_id"], out["first_purchase_channel"] = first
    out["acquisition_month"] = first[0].date().replace(day=1) if first[0] else None
    for c in ("orders", "purchases", "orders_web", "orders_app", "orders_other", "net_amount", "net_sumsq",
              "purchase_value", "purchase_value_sumsq", "gross_amount", "gross_sumsq", "returned_amount",
              "purchase_days"):  # fmt: skip
        out[c] = state[c] + batch[c]
    last_day = state["last_purchase_ts"].date() if state["last_purchase_ts"] else None
    batch_first = batch["first_purchase_ts"].date() if batch["first_purchase_ts"] else None
    if last_day is not None and last_day == batch_first:
        out["purchase_days"] -= 1  # type: ignore[operator]
    days = out["purchase_days"]
    out["btyd_x"] = days - 1 if days else None  # type: ignore[operator]
    last = out["last_purchase_ts"]
    out["btyd_t_x_days"] = (last.date() - first[0].date()).days if first[0] and last else None  # type: ignore[union-attr]
    return out


def test_merging_a_batch_of_newer_orders_by_the_stated_rules_gives_the_whole_state(orders) -> None:
    """The state of the orders up to a cut (mid-day: D's last purchase day is on both sides), merged
    with the state of the orders after it by the docstring's rules, is the state of all of them."""
    from pyspark.sql import functions as F

    cut = F.lit(dt.datetime(2025, 3, 31, 12))
    before = {
        r["customer_id"]: r.asDict()
        for r in silver.customer_state(orders.where(F.col("order_ts") <= cut), AS_OF, CHANNELS).collect()
    }
    batch = {
        r["customer_id"]: r.asDict()
        for r in silver.customer_state(orders.where(F.col("order_ts") > cut), AS_OF, CHANNELS).collect()
    }
    whole = {r["customer_id"]: r.asDict() for r in silver.customer_state(orders, AS_OF, CHANNELS).collect()}
    assert set(batch) == {"D"}  # d4, the same day as d3
    merged = {c: (_merge(before[c], batch[c]) if c in batch else before[c]) for c in before}
    for c in whole:
        assert {k: _comparable(v) for k, v in merged[c].items()} == {
            k: _comparable(v) for k, v in whole[c].items()
        }, c
    assert merged["D"]["purchase_days"] == 3
