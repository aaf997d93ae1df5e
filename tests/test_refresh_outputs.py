"""An incremental ``segspark run`` gives every output table a full run gives (issue 30's equivalence):
a generated history, then a new week's file with copies of earlier lines, a late return of an old
order and a new customer. Real Parquet folders, real Delta tables, the whole job in this process on
the suite's session."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from segspark import schema as S

CUSTOMERS, SEED = 200, 11
WEEK_STARTS = pd.Timestamp("2025-12-20", tz="UTC")  # the generator's history ends on 2025-12-31
# compared with what the lakehouse's own earlier snapshot held (the incremental lakehouse has one, a
# fresh one has none): equal by construction only between lakehouses with the same past
AGAINST_THE_PAST = {S.DRIFT, S.SEGMENT_TRANSITIONS}
BOOKKEEPING = {S.RUNS, S.INPUT_MANIFEST}
# the run's stamps; a MERGEd silver table keeps each row's first stamps (the run that wrote the row)
STAMPS = {S.RUN_ID, S.AS_OF_DATE}


def _parquet(df: pd.DataFrame, path: Path) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, coerce_timestamps="us")


def _last_run(out: Path) -> dict[str, Any]:
    rows = DeltaTable(str(out / "tables" / S.RUNS)).to_pyarrow_table().to_pylist()
    return max((r for r in rows if r["command"] == "run"), key=lambda r: r["started_at"])


def _timing(name: object) -> bool:
    return isinstance(name, str) and name.endswith("seconds")


def _rows(out: Path, table: str, run_id: str) -> list[tuple[Any, ...]]:
    """The table's rows as this run left them (a snapshot or append table: the run's rows; a silver
    table: all of it), without stamps or timings, sorted."""
    df = DeltaTable(str(out / "tables" / table)).to_pandas()
    if table in S.SNAPSHOT_TABLES or table == S.QUARANTINE:
        df = df[df[S.RUN_ID] == run_id]
    if "name" in df.columns:  # clv_fit's long format: a row per statistic; its timings differ
        df = df[~df["name"].map(_timing)]
    df = df[[c for c in sorted(df.columns) if c not in STAMPS and not _timing(c)]]

    def cell(v: Any) -> Any:
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, list | tuple):
            return tuple(cell(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, cell(x)) for k, x in v.items()))
        return None if v is None or (not isinstance(v, list | tuple | dict) and pd.isna(v)) else v

    return sorted((tuple(cell(v) for v in row) for row in df.itertuples(index=False)), key=repr)


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    def eq(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        if isinstance(x, tuple) and isinstance(y, tuple):
            return len(x) == len(y) and all(eq(p, q) for p, q in zip(x, y, strict=True))
        return bool(x == y)

    return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def runs(spark: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run 1 on the history; a customer erased; run 2 in the same lakehouse after the week's file
    arrives (incremental); a full run on both files in a fresh lakehouse that erased the same
    customer first."""
    from segspark.cli import main

    root = tmp_path_factory.mktemp("refresh-outputs")
    data = root / "data"
    assert main(["generate", "--out", str(data), "--customers", str(CUSTOMERS), "--seed", str(SEED)]) == 0
    lines = DeltaTable(str(data / "transactions")).to_pandas()
    history = lines[lines["order_ts"] < WEEK_STARTS]
    late = history.iloc[[len(history) // 2]].copy()  # a return of an old order, an hour after its line
    late["amount"] = -late["amount"].abs() / 2
    late["order_ts"] = late["order_ts"] + pd.Timedelta(hours=1)
    new = history.iloc[[3]].copy()  # a customer never seen before
    new["customer_id"], new["order_id"] = "C999999999", "O999999999-000"
    new["order_ts"] = pd.Timestamp("2025-12-28 10:00", tz="UTC")
    copies = history.iloc[[7, len(history) // 3, len(history) - 5]]  # lines the first run took
    week = pd.concat([lines[lines["order_ts"] >= WEEK_STARTS], copies, late, new])
    # erased between the runs: a customer of several lines, none on the history's last date
    last_day = history.groupby("customer_id")["order_ts"].agg(["max", "size"])
    erased = str(
        last_day[(last_day["size"] > 2) & (last_day["max"] < WEEK_STARTS - pd.Timedelta(days=2))].index[0]
    )

    def sets(name: str, *extra: str) -> list[str]:
        out = root / name / "out"
        items = [
            f"input.transactions.path={root / name / 'tx'}",
            "input.transactions.format=parquet",
            f"input.customers.path={data / 'customers'}",
            f"input.marketing_spend.path={data / 'marketing_spend'}",
            f"output.path={out}",
            "report.enabled=false",
            "tracking.enabled=false",
            "spark.shuffle_partitions=2",
            "lakehouse.engine=delta-rs",  # a local run's engine (both engines' MERGE: test_refresh.py)
            "clustering.k_max=5",
            *extra,
        ]
        return [x for s in items for x in ("--set", s)]

    def run(name: str, *extra: str) -> dict[str, Any]:
        assert main(["run", *sets(name, *extra)]) == 0
        return {"out": root / name / "out", "row": _last_run(root / name / "out")}

    def erase(name: str) -> None:
        assert main(["erase", *sets(name), "--customer-id", erased]) == 0

    for name in ("incremental", "full"):
        (root / name / "tx").mkdir(parents=True)
        _parquet(history, root / name / "tx" / "history.parquet")
    # the models off in the first run: settings that do not shape the orders leave the next run
    # incremental (and the first run costs less)
    first = run("incremental", "clv.enabled=false", "churn.enabled=false", "clustering.enabled=false")
    _parquet(week, root / "incremental" / "tx" / "week.parquet")
    _parquet(week, root / "full" / "tx" / "week.parquet")
    erase("incremental")
    erase("full")  # before any run: the erasure recorded, nothing else to delete
    return {"first": first, "incremental": run("incremental"), "full": run("full")}


def test_an_incremental_run_writes_every_table_a_full_run_writes(runs: dict[str, Any]) -> None:
    """Silver tables, features, scores (CLV fit statistics and parameters to 1e-9), clusters and
    personas, KPIs, cohorts, LTV:CAC, quarantine and counts: what a full run on the same files in a
    fresh lakehouse writes, the customer erased between the runs kept out of both. Drift and
    transitions compare with each lakehouse's own past: left out."""
    inc, full = runs["incremental"], runs["full"]
    refresh = dict(inc["row"]["choices"])["refresh"]
    assert refresh.startswith("incremental: input 'transactions': 1 new file(s)"), refresh
    assert dict(full["row"]["choices"])["refresh"].startswith("full: "), full["row"]["choices"]
    assert inc["row"]["as_of_date"] == full["row"]["as_of_date"] > runs["first"]["row"]["as_of_date"]

    def counted(row: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(i["name"], i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in row["inputs"]]

    counts = counted(inc["row"])
    assert counts == counted(full["row"])
    # the three copies and the erased customer's lines at least
    assert {c[0]: c[3] for c in counts}["transactions"] >= 6
    quarantine = DeltaTable(str(inc["out"] / "tables" / S.QUARANTINE)).to_pandas()
    mine = quarantine[quarantine[S.RUN_ID] == inc["row"]["run_id"]]
    assert (mine[S.Q_RULE] == "erased_customer").sum() >= 3

    def tables(row: dict[str, Any]) -> set[str]:
        return {o["table"] for o in row["outputs"] or []} - AGAINST_THE_PAST - BOOKKEEPING

    written = tables(inc["row"])
    assert written == tables(full["row"])
    assert {S.ORDERS, S.CUSTOMER_STATE, S.CUSTOMER_SEGMENTS, S.CLV_FIT, S.LTV_CAC, S.QUARANTINE} <= written
    differ = []
    for table in sorted(written):
        a = _rows(inc["out"], table, inc["row"]["run_id"])
        b = _rows(full["out"], table, full["row"]["run_id"])
        assert b, table
        if not _same(a, b):
            differ.append(f"{table}: {len(a)} rows against {len(b)}")
    assert not differ, differ
