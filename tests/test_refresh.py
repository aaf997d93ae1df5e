"""``refresh``: a run on inputs, settings and code a successful run already took recomputes nothing
(one ``runs`` row says so); anything else refreshes, with the reason recorded. Real CSV folders,
real Delta tables, ``segspark ingest`` in this process on the suite's session."""

from __future__ import annotations

import csv
import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from segspark.io.manifest import Fingerprint, InputFile, compare

HEADER = ["customer_id", "order_id", "order_ts", "amount"]


def _csv(path: Path, rows: list[tuple[object, ...]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)


def _rows(first: int, n: int) -> list[tuple[object, ...]]:
    return [
        (f"C{c:03d}", f"O{c:03d}", f"2024-0{1 + c % 9}-1{c % 9} 10:00:00", f"{10 + c}.50")
        for c in range(first, first + n)
    ]


def _runs(out: Path) -> list[dict[str, Any]]:
    rows = DeltaTable(str(out / "tables" / "runs")).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: r["started_at"])


def _choices(row: dict[str, Any]) -> dict[str, str]:
    return dict(row["choices"] or [])


@pytest.fixture
def lake(spark: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from segspark.cli import main

    monkeypatch.setenv("SEGSPARK_PSEUDO_KEY", "refresh-key")
    folder = tmp_path / "tx"
    folder.mkdir()
    _csv(folder / "a.csv", _rows(0, 12))
    out = tmp_path / "out"
    args = [
        "--set", f"input.transactions.path={folder}", "--set", "input.transactions.format=csv",
        "--set", f"output.path={out}", "--set", "spark.shuffle_partitions=2",
        "--set", "tracking.enabled=false", "--set", "lakehouse.engine=delta-rs",
    ]  # fmt: skip

    def ingest(*extra: str) -> dict[str, Any]:
        assert main(["ingest", *args, *extra]) == 0
        return _runs(out)[-1]

    return {"folder": folder, "out": out, "ingest": ingest, "args": args}


def test_unchanged_input_recomputes_nothing_and_new_or_rewritten_files_refresh(lake: dict[str, Any]) -> None:
    ingest, folder, out = lake["ingest"], lake["folder"], lake["out"]
    first = ingest()
    assert _choices(first)["refresh"] == "full: no earlier successful ingest in this lakehouse"
    manifest = DeltaTable(str(out / "tables" / "input_manifest")).to_pyarrow_table().to_pylist()
    assert [(m["input"], m["path"], m["size"], m["run_id"]) for m in manifest] == [
        ("transactions", "a.csv", (folder / "a.csv").stat().st_size, first["run_id"])
    ]
    orders_version = DeltaTable(str(out / "tables" / "orders")).version()

    second = ingest()  # nothing new: one runs row, no table committed
    assert _choices(second)["refresh"].startswith(f"skip: inputs, settings and code as run {first['run_id']}")
    assert second["status"] == "succeeded" and not second["outputs"] and not second["inputs"]
    assert second["as_of_date"] == first["as_of_date"]
    assert _choices(second)["refresh.manifest_run"] == first["run_id"]
    assert DeltaTable(str(out / "tables" / "orders")).version() == orders_version

    _csv(folder / "b.csv", _rows(12, 5))  # a new file: only its lines are validated
    fourth = ingest()
    assert _choices(fourth)["refresh"].startswith("incremental: input 'transactions': 1 new file(s)")
    assert {i["name"]: i["rows_in"] for i in fourth["inputs"]} == {"transactions": 17}
    assert DeltaTable(str(out / "tables" / "orders")).version() > orders_version

    _csv(folder / "a.csv", _rows(0, 11))  # a file rewritten
    st = (folder / "a.csv").stat()
    os.utime(folder / "a.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _choices(ingest())["refresh"] == "full: input 'transactions': file(s) rewritten: a.csv"
    assert _choices(ingest("--set", "refresh=full"))["refresh"] == "full: refresh: full"
    changed = ingest("--set", "kpis.ltv_window_months=6")  # the transactions' orders stand
    previous = _runs(out)[-2]["run_id"]
    assert _choices(changed)["refresh"] == (
        f"reuse: transactions as run {previous} took them: its orders reused "
        f"(settings changed since run {previous})"
    )
    _csv(folder / "d.csv", [("C001", "O002", "2024-03-12 10:00:00", "1.00")])  # O002 is C002's
    asked = ingest("--set", "kpis.ltv_window_months=6", "--set", "refresh=incremental")
    assert _choices(asked)["refresh"] == (
        f"full: input 'transactions': 1 new file(s): only their lines validated, merged into the orders of "
        f"run {previous}, but a new line carries an order id an earlier line carries with another "
        "customer"
    )
    assert any("refresh: incremental asked" in w for w in asked["warnings"])
    rules = [r[1] for r in _quarantine(out, asked["run_id"])]
    assert rules == ["order_id_conflict", "order_id_conflict"]


def test_a_new_key_or_a_removed_file_is_never_taken_for_unchanged(
    lake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest, folder = lake["ingest"], lake["folder"]
    _csv(folder / "b.csv", _rows(12, 5))
    first = ingest()
    monkeypatch.setenv("SEGSPARK_PSEUDO_KEY", "another-key")  # other pseudonyms: nothing reusable
    rekeyed = ingest()
    assert _choices(rekeyed)["refresh"].startswith("full: the key, time zone, settings or columns that shape")
    assert _choices(rekeyed)["refresh.state_hash"] != _choices(first)["refresh.state_hash"]
    (folder / "b.csv").unlink()
    assert _choices(ingest())["refresh"] == "full: input 'transactions': file(s) removed: b.csv"

    # a lakehouse the code before the orders' return lines wrote (its layout in the state hash, its
    # orders without the column): the next run takes nothing of it and writes the orders anew
    from deltalake import write_deltalake

    from segspark import refresh

    layout = refresh.ORDERS_LAYOUT
    monkeypatch.setattr(refresh, "ORDERS_LAYOUT", layout - 1)
    ingest()
    orders = str(lake["out"] / "tables" / "orders")
    write_deltalake(
        orders,
        DeltaTable(orders).to_pyarrow_table().drop(["returns"]),
        mode="overwrite",
        schema_mode="overwrite",
    )
    monkeypatch.setattr(refresh, "ORDERS_LAYOUT", layout)
    upgraded = ingest()
    assert _choices(upgraded)["refresh"].startswith(
        "full: the key, time zone, settings or columns that shape"
    )
    assert "returns" in DeltaTable(orders).schema().to_arrow().names


def test_delta_commits_after_the_version_taken_are_new_rows_or_a_rewrite(tmp_path: Path) -> None:
    """A real Delta table: appends are new input; an overwrite or a delete is never taken for new
    rows (the whole history refreshes)."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    where = str(tmp_path / "customers")
    rows = pa.table({"customer_id": ["C1", "C2"]})
    write_deltalake(where, rows)  # version 0
    write_deltalake(where, rows, mode="append")  # 1
    at = Fingerprint("customers", where, version=1)
    assert compare(at, None, 1)[0] == "unchanged"
    assert compare(at, None, 0) == ("appended", "input 'customers': Delta versions 1..1 are new")
    DeltaTable(where).delete("customer_id = 'C1'")  # 2
    write_deltalake(where, rows, mode="append")  # 3
    at = Fingerprint("customers", where, version=3)
    assert compare(at, None, 0) == ("changed", "input 'customers': Delta version 2 removed or rewrote rows")
    assert compare(at, None, 2)[0] == "appended"
    assert compare(at, None, 5)[0] == "changed"  # a version before the one taken: a restore
    assert compare(Fingerprint("customers", "main.crm.customers"), None, 3)[0] == "unknown"
    files = (InputFile("a.csv", 10, 1),)
    now = Fingerprint("transactions", "/tx", files=files)
    assert compare(now, [InputFile("a.csv", 10, 1)], None)[0] == "unchanged"
    assert compare(now, [InputFile("a.csv", 11, 1)], None)[0] == "changed"


def _state(out: Path) -> list[tuple[Any, ...]]:
    rows = DeltaTable(str(out / "tables" / "customer_state")).to_pyarrow_table().to_pylist()
    return sorted(tuple(v for k, v in sorted(r.items()) if k != "run_id") for r in rows)


def _quarantine(out: Path, run_id: str) -> list[tuple[Any, ...]]:
    rows = DeltaTable(str(out / "tables" / "quarantine")).to_pyarrow_table().to_pylist()
    return sorted((r["customer_id"] or "", r["rule"], r["raw"]) for r in rows if r["run_id"] == run_id)


def test_unchanged_transactions_reuse_their_orders_and_give_what_a_full_refresh_gives(
    lake: dict[str, Any],
) -> None:
    """A new as_of_date on unchanged transactions: the orders and the transactions' quarantine
    stand (nothing of the input read), the per-customer state is recomputed; a full refresh at the
    same date writes the same state, quarantine and counts."""
    ingest, folder, out = lake["ingest"], lake["folder"], lake["out"]
    dirty = [*_rows(12, 3), _rows(12, 1)[0], ("C099", "O099", "2024-03-01 10:00:00", "n/a")]
    _csv(folder / "c.csv", dirty)  # a copy of a line, and an amount that is no number
    first = ingest()
    orders_version = DeltaTable(str(out / "tables" / "orders")).version()
    assert _choices(ingest())["refresh"].startswith("skip:")  # the reuse stands on run 1 through it
    shutil.rmtree(out / "tables" / "customer_months")  # a table the skipped run stood on, gone
    gone = ingest()
    assert _choices(gone)["refresh"].startswith("reuse: ")  # the orders stand; the rest is rebuilt
    assert "table(s) customer_months of run" in _choices(gone)["refresh"]
    reused = ingest("--set", "as_of_date=2024-06-30")
    reason = _choices(reused)["refresh"]
    assert reason.startswith(f"reuse: transactions as run {first['run_id']} took them: its orders reused")
    assert DeltaTable(str(out / "tables" / "orders")).version() == orders_version
    assert {o["table"] for o in reused["outputs"]} == {
        "quarantine",
        "input_manifest",
        "customer_state",
        "customer_months",
    }
    assert str(reused["as_of_date"]) == "2024-06-30"
    assert [(i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in reused["inputs"]] == [(17, 15, 2)]
    assert _quarantine(out, reused["run_id"]) == _quarantine(out, first["run_id"])
    assert {r[1] for r in _quarantine(out, reused["run_id"])} == {"duplicate_line", "bad_amount"}
    state = _state(out)

    full = ingest("--set", "as_of_date=2024-06-30", "--set", "refresh=full")
    assert _choices(full)["refresh"] == "full: refresh: full"
    assert _state(out) == state
    assert _quarantine(out, full["run_id"]) == _quarantine(out, reused["run_id"])
    assert [(i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in full["inputs"]] == [(17, 15, 2)]
    again = ingest()  # back to the default date (the last clean line's): the orders reused again
    assert _choices(again)["refresh"].startswith(f"reuse: transactions as run {full['run_id']} took them")
    assert again["as_of_date"] == first["as_of_date"]


def _table(out: Path, name: str) -> list[tuple[Any, ...]]:
    """A silver table's rows without stamps, sorted, amounts to 9 decimals (sums in another order)."""
    rows = DeltaTable(str(out / "tables" / name)).to_pyarrow_table().to_pylist()
    kept = [
        tuple(
            round(v, 9) if isinstance(v, float) else v
            for k, v in sorted(r.items())
            if k not in ("run_id", "as_of_date")
        )
        for r in rows
    ]
    return sorted(kept, key=repr)


@pytest.mark.parametrize("engine", ["delta-rs", "delta-spark"])
def test_new_files_are_validated_alone_and_merged_into_what_a_full_refresh_gives(
    lake: dict[str, Any], engine: str
) -> None:
    """Only the new file's lines are validated: a copy of a line ingested before is a copy, a late
    return merges into its order, a new customer's and a known customer's new orders are added; the
    orders, days, state, quarantine and counts are a full refresh's. Both engines MERGE."""
    folder, out = lake["folder"], lake["out"]

    def ingest(*extra: str) -> dict[str, Any]:
        return dict(lake["ingest"]("--set", f"lakehouse.engine={engine}", *extra))

    first = ingest()
    new = [
        *_rows(12, 3),  # new customers
        _rows(0, 1)[0],  # a copy of a line the first run took
        ("C003", "O003", "2024-04-13 09:00:00", "-3.00"),  # a return of O003, an hour before its line
        ("C005", "O105", "2024-06-20 10:00:00", "40.00"),  # a known customer's new order
        ("C099", "O099", "2024-03-01 10:00:00", "n/a"),
    ]
    _csv(folder / "b.csv", new)
    step = ingest()
    reason = _choices(step)["refresh"]
    assert reason == (
        f"incremental: input 'transactions': 1 new file(s): only their lines validated, merged into the "
        f"orders of run {first['run_id']}"
    )
    assert (_choices(step)["refresh.new_files"], _choices(step)["refresh.new_rows"]) == ("1", "7")
    assert [(i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in step["inputs"]] == [(19, 17, 2)]
    assert sorted(r[1] for r in _quarantine(out, step["run_id"])) == ["bad_amount", "duplicate_line"]
    names = ("orders", "customer_days", "customer_state", "customer_months")
    merged = {name: _table(out, name) for name in names}
    o003 = [r for r in merged["orders"] if "O003" in r]
    assert len(o003) == 1 and -3.0 not in o003[0]  # one order, its net 10.50 (13.50 - 3.00)
    assert 10.5 in o003[0] and 3.0 in o003[0]
    history = DeltaTable(str(out / "tables" / "orders")).history()
    assert history[0]["operation"] == "MERGE"
    # the per-customer tables: the rows of customers without a new order kept, the others recomputed
    assert _choices(step)["refresh.state"].startswith("kept: ")
    quarantine = _quarantine(out, step["run_id"])

    schemas = {name: DeltaTable(str(out / "tables" / name)).schema().to_json() for name in names}
    full = ingest("--set", "refresh=full")
    assert full["as_of_date"] == step["as_of_date"]
    for name in names:
        assert _table(out, name) == merged[name], name
        assert DeltaTable(str(out / "tables" / name)).schema().to_json() == schemas[name], name
    assert _quarantine(out, full["run_id"]) == quarantine
    assert [(i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in full["inputs"]] == [(19, 17, 2)]

    # a new file, with as_of_date before the newest earlier order: a kept row would hold an order
    # after the date, so the per-customer tables are rebuilt from every order (a full refresh's code)
    _csv(folder / "c.csv", [("C006", "O206", "2024-09-30 10:00:00", "12.00")])
    back = ingest("--set", "as_of_date=2024-06-01")
    assert _choices(back)["refresh"].startswith("incremental: ")
    assert _choices(back)["refresh.state"].startswith(
        "rebuilt from every order: as_of_date 2024-06-01 is before an earlier order's date (2024-"
    ), _choices(back)
    state = DeltaTable(str(out / "tables" / "customer_state")).to_pyarrow_table().to_pylist()
    assert {str(r["as_of_date"]) for r in state} == {"2024-06-01"}
    assert max(r["last_seen_ts"] for r in state).date() <= dt.date(2024, 6, 1) < dt.date(2024, 9, 1)


def test_a_run_that_dies_between_the_merges_is_never_stood_on(
    lake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental run that fails after its MERGE into orders and before customer_days: the next
    run sees orders committed to since the run it would stand on, and refreshes the whole history."""
    from segspark.cli import main
    from segspark.io.lakehouse import Lakehouse

    ingest, folder, out = lake["ingest"], lake["folder"], lake["out"]
    first = ingest()
    _csv(folder / "b.csv", [*_rows(12, 2), ("C003", "O003", "2024-04-13 11:00:00", "-1.00")])
    write = Lakehouse.write

    def dies_before_the_days(self: Lakehouse, df: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "customer_days":
            raise RuntimeError("the driver died here")
        return write(self, df, name, *args, **kwargs)

    monkeypatch.setattr(Lakehouse, "write", dies_before_the_days)
    assert main(["ingest", *lake["args"]]) == 1  # an unexpected error: exit 1
    assert _runs(out)[-1]["status"] == "failed"
    monkeypatch.setattr(Lakehouse, "write", write)
    version = DeltaTable(str(out / "tables" / "orders")).version()
    recorded = _choices(first)["refresh.orders_version"]
    assert version == int(recorded) + 1  # the dead run's MERGE
    repaired = ingest()
    assert _choices(repaired)["refresh"] == (
        f"full: orders changed since run {first['run_id']} wrote them (version {recorded}, now {version})"
    )
    tables = {name: _table(out, name) for name in ("orders", "customer_days")}
    assert _choices(ingest("--set", "refresh=full"))["refresh"] == "full: refresh: full"
    assert {name: _table(out, name) for name in tables} == tables


@pytest.mark.parametrize("engine", ["delta-rs", "delta-spark"])
def test_an_erased_customer_stays_out_of_later_runs_until_rows_dated_after_the_erasure_arrive(
    lake: dict[str, Any], engine: str
) -> None:
    """``segspark erase`` records a tag of the key and the time, and what it took from the orders and
    quarantine the next run stands on; later runs re-read the input that still holds the customers'
    lines and quarantine them without key or values (rule ``erased_customer``; rows in = clean +
    quarantined still): the run right after the erasure stays incremental and gives what a full
    refresh gives; a purchase dated after the erasure brings the customer back with it alone, and
    erasing a customer whose order is dated after the erasure makes the next run a full one."""
    import hashlib
    import hmac

    from segspark.cli import main

    folder, out = lake["folder"], lake["out"]
    on_engine = ["--set", f"lakehouse.engine={engine}"]

    def ingest(*extra: str) -> dict[str, Any]:
        return dict(lake["ingest"](*on_engine, *extra))

    def erase(*ids: str) -> None:
        who = [x for i in ids for x in ("--customer-id", i)]
        assert main(["erase", *lake["args"], *on_engine, *who]) == 0

    pseudonym = hmac.new(b"refresh-key", b"C003", hashlib.sha256).hexdigest()
    other = hmac.new(b"refresh-key", b"C004", hashlib.sha256).hexdigest()

    def holding(name: str, key: str = pseudonym) -> bool:
        return key in repr(DeltaTable(str(out / "tables" / name)).to_pyarrow_table().to_pylist())

    def counts(row: dict[str, Any]) -> list[tuple[int, int, int]]:
        return [(i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in row["inputs"]]

    silver = ("orders", "customer_days", "customer_state", "customer_months")
    _csv(folder / "a2.csv", [("C004", "O904", "2024-05-14 10:00:00", "n/a")])  # quarantined: bad_amount
    first = ingest()
    assert counts(first) == [(13, 12, 1)]
    assert all(holding(name) for name in silver) and holding("quarantine", other)
    erase("C003", "C004")
    erasures = DeltaTable(str(out / "tables" / "erasures")).to_pyarrow_table().to_pylist()
    tags = sorted(hashlib.sha256(k.encode()).hexdigest() for k in (pseudonym, other))
    assert sorted(r["erased_tag"] for r in erasures) == tags
    erased_at = erasures[0]["erased_at"]
    for key in (pseudonym, other):
        assert not any(holding(name, key) for name in (*silver, "erasures", "quarantine"))
    erasing = _runs(out)[-1]
    assert erasing["command"] == "erase"
    effect = {k: v for k, v in _choices(erasing).items() if k.startswith("erase.")}
    assert effect == {"erase.orders_from": "0", "erase.clean_lines": "2", "erase.quarantined_lines": "1"}
    assert _choices(erasing)["refresh.orders_run"] == first["run_id"]

    skipped = ingest()  # the input unchanged: nothing recomputed, the tables stay as erased
    assert _choices(skipped)["refresh"].startswith("skip: ")
    assert not any(holding(name) for name in (*silver, "quarantine"))

    # new lines of C003: a late return of its erased order (dated before the erasure) and a purchase
    # since, with a new customer's order
    since = (erased_at + dt.timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
    _csv(
        folder / "b.csv", [("C003", "O003", "2024-04-13 11:00:00", "-3.00"), ("C003", "O903", since, "25.00")]
    )
    _csv(folder / "c.csv", _rows(12, 1))
    step = ingest()  # right after the erasure: only the new files validated
    assert _choices(step)["refresh"].startswith("incremental: input 'transactions': 2 new file(s)")
    orders = DeltaTable(str(out / "tables" / "orders")).to_pyarrow_table().to_pylist()
    assert sorted(r["order_id"] for r in orders if r["customer_id"] == pseudonym) == ["O903"]
    # C003's and C004's lines of the first run, C004's bad line, the late return: no key, no values
    assert _quarantine(out, step["run_id"]) == [("", "erased_customer", None)] * 4
    assert counts(step) == [(16, 12, 4)]
    merged = {name: _table(out, name) for name in silver}
    full = ingest("--set", "refresh=full")  # the whole input again, the erased lines still in it
    assert {name: _table(out, name) for name in silver} == merged
    assert _quarantine(out, full["run_id"]) == _quarantine(out, step["run_id"])
    assert counts(full) == counts(step)

    # C003 erased again: its order O903 is dated after this erasure too, which a full refresh takes
    erase("C003")
    assert _choices(_runs(out)[-1])["erase.full"] == "an erased customer's order is dated after the erasure"
    _csv(folder / "d.csv", _rows(13, 1))
    after = ingest()
    assert _choices(after)["refresh"].startswith("full: ") and _choices(after)["refresh"].endswith(
        "; an erased customer's order is dated after the erasure"
    ), _choices(after)["refresh"]
    orders = DeltaTable(str(out / "tables" / "orders")).to_pyarrow_table().to_pylist()
    assert sorted(r["order_id"] for r in orders if r["customer_id"] == pseudonym) == ["O903"]


def test_new_delta_commits_are_read_apart_and_merged_into_what_a_full_refresh_gives(
    spark: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Delta path table of transactions (partitioned): the files its new commits added are read
    alone (their partition column from the log) and merged as new files of a folder are; an
    OPTIMIZE adds no rows (the orders reused); a new file compacted with older ones cannot be read
    apart (the whole history, with the reason). The new files are read, and the input's commits
    compared, from the input's log whatever the output's engine (both engines' MERGE: the
    new-files test above)."""
    engine = "delta-rs"
    import pyarrow as pa
    from deltalake import write_deltalake

    from segspark.cli import main

    monkeypatch.setenv("SEGSPARK_PSEUDO_KEY", "refresh-key")
    where, out = tmp_path / "tx", tmp_path / "out"

    def commit(rows: list[tuple[object, ...]]) -> None:
        columns = {c: [str(r[i]) for r in rows] for i, c in enumerate(HEADER)}
        shops = ["north" if int(str(r[0])[1:]) % 2 else "south" for r in rows]
        write_deltalake(
            str(where), pa.table({**columns, "shop": shops}), mode="append", partition_by=["shop"]
        )

    args = [
        "--set", f"input.transactions.path={where}", "--set", "input.transactions.format=delta",
        "--set", f"output.path={out}", "--set", "spark.shuffle_partitions=2",
        "--set", "tracking.enabled=false", "--set", f"lakehouse.engine={engine}",
    ]  # fmt: skip

    def ingest(*extra: str) -> dict[str, Any]:
        assert main(["ingest", *args, *extra]) == 0
        return _runs(out)[-1]

    commit(_rows(0, 12))  # version 0
    first = ingest()
    commit(
        [
            *_rows(12, 2),  # new customers, one per shop
            _rows(1, 1)[0],  # a copy of a line the first run took
            ("C003", "O003", "2024-04-13 09:00:00", "-3.00"),  # a return of O003
            ("C005", "O105", "2024-06-20 10:00:00", "40.00"),  # a known customer's new order
            ("C007", "O107", "2024-03-01 10:00:00", "n/a"),
        ]
    )  # version 1: a file per shop
    step = ingest()
    assert _choices(step)["refresh"] == (
        "incremental: input 'transactions': Delta versions 1..1, 2 new file(s): only their lines "
        f"validated, merged into the orders of run {first['run_id']}"
    )
    assert (_choices(step)["refresh.new_files"], _choices(step)["refresh.new_rows"]) == ("2", "6")
    assert [(i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in step["inputs"]] == [(18, 16, 2)]
    names = ("orders", "customer_days", "customer_state", "customer_months")
    merged = {name: _table(out, name) for name in names}
    quarantine = _quarantine(out, step["run_id"])
    assert sorted(r[1] for r in quarantine) == ["bad_amount", "duplicate_line"]
    assert all('"shop":"north"' in r[2] for r in quarantine)  # the partition column, from the log
    full = ingest("--set", "refresh=full")
    assert {name: _table(out, name) for name in names} == merged
    assert _quarantine(out, full["run_id"]) == quarantine

    DeltaTable(str(where)).optimize.compact()  # version 2: rows rewritten, none new
    compacted = ingest()
    assert _choices(compacted)["refresh"].startswith(f"reuse: transactions as run {full['run_id']} took them")
    assert "Delta versions 2..2, 0 new file(s): no new rows" in _choices(compacted)["refresh"]
    commit(_rows(20, 2))  # version 3
    DeltaTable(str(where)).optimize.compact()  # version 4: the new files compacted with older ones
    again = ingest()
    assert _choices(again)["refresh"].startswith("full: ")
    assert _choices(again)["refresh"].endswith(
        "Delta versions 3..4: 2 new file(s) no longer in version 4 (compacted or removed)"
    )


def test_a_vacuum_between_runs_changes_no_rows_and_the_next_run_stays_incremental(
    lake: dict[str, Any],
) -> None:
    """``segspark vacuum`` compacts ``orders`` (an OPTIMIZE commit, no row changed): the next run on
    new files still stands on the orders (incremental), and gives what a full refresh gives."""
    from segspark.cli import main

    ingest, folder, out = lake["ingest"], lake["folder"], lake["out"]
    ingest()
    _csv(folder / "b.csv", _rows(12, 2))
    merged = ingest()  # the MERGE adds a file to orders
    assert _choices(merged)["refresh"].startswith("incremental: ")
    assert main(["vacuum", *lake["args"], "--set", "lakehouse.compact_min_files=2"]) == 0
    orders = DeltaTable(str(out / "tables" / "orders"))
    assert orders.version() > int(_choices(merged)["refresh.orders_version"])
    assert "OPTIMIZE" in [h["operation"] for h in orders.history(3)]
    _csv(folder / "c.csv", [*_rows(14, 1), ("C002", "O202", "2024-08-01 10:00:00", "5.00")])
    step = ingest()
    assert _choices(step)["refresh"] == (
        f"incremental: input 'transactions': 1 new file(s): only their lines validated, merged into the "
        f"orders of run {merged['run_id']}"
    )
    kept = {name: _table(out, name) for name in ("orders", "customer_days", "customer_state")}
    ingest("--set", "refresh=full")
    assert {name: _table(out, name) for name in kept} == kept
