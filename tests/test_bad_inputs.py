"""Bad inputs end in one line on stderr naming the table, column or key, and the documented exit code.

One table of cases. Configuration and missing-input cases run as a user would, ``python -m segspark
<command>`` in a subprocess, and must fail before Spark starts (seconds). One data case does too (a
blocking rule's exit code and line from a real process); the other data cases call the same entry
point, ``segspark.cli.main``, in-process on the suite's Spark session (a JVM start and its warm-up
each saved), their exit code, last stderr line and the output tables checked the same way.
Exit codes (README): 2 configuration or missing input, 3 data that failed a blocking rule, 1
anything else.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from segspark.cli import main

REPO = Path(__file__).resolve().parents[1]
JAVA_FRAME = re.compile(r"^\s+at [\w.$]+\(.*\)$", re.MULTILINE)  # a line of a Java stack trace
SPARK_STARTED = "segspark.session: spark:"  # the session factory's first log line
TX_HEADER = ["customer_id", "order_id", "order_ts", "amount"]


def _csv(path: Path, rows: list[tuple[object, ...]], header: list[str] = TX_HEADER) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def valid_rows(customers: int, seed: int = 7) -> list[tuple[object, ...]]:
    """``customers`` customers with 1-4 orders each over 2024 (a valid, tiny transaction feed)."""
    import random

    rng = random.Random(seed)
    rows: list[tuple[object, ...]] = []
    for c in range(customers):
        for k in range(rng.randint(1, 4)):
            day = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randint(0, 360))
            rows.append((f"C{c:03d}", f"O{c:03d}-{k}", f"{day} 10:00:00", f"{rng.uniform(5, 200):.2f}"))
    return rows


def mostly_garbage(tmp: Path) -> list[str]:
    good = [(f"C{i}", f"O{i}", f"2024-03-{i + 1:02d} 10:00:00", "10.0") for i in range(6)]
    bad = [(f"C{i}", f"O{i}", "not a date", "12.5") for i in range(6, 66)]
    bad += [(f"C{i}", f"O{i}", "2024-03-01", "abc") for i in range(66, 123)]
    return _tx(_csv(tmp / "tx.csv", good + bad), "csv")


def all_garbage(tmp: Path) -> list[str]:
    rows = [(f"C{i}", f"O{i}", "yesterday", "12.5") for i in range(20)]
    return _tx(_csv(tmp / "tx.csv", rows), "csv")


def small_valid(tmp: Path) -> list[str]:
    return _tx(_csv(tmp / "tx.csv", valid_rows(30)), "csv")


# order_ts written by pandas at its default nanosecond unit; the expected values, floored to the µs
NANOS_TS = ["2024-01-02 03:04:05.123456789", "1969-12-31 23:59:59.999999999", "2024-06-30 00:00:00.000000999"]
NANOS_EXPECTED = [
    dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
    dt.datetime(2024, 6, 30, 0, 0, 0, 0),
]


def pandas_parquet(tmp: Path) -> list[str]:
    import pandas as pd
    import pyarrow.parquet as pq

    rows = valid_rows(30)
    df = pd.DataFrame(rows, columns=TX_HEADER)
    df["order_ts"] = pd.to_datetime(df["order_ts"])
    df["amount"] = df["amount"].astype(float)
    # the planted sub-microsecond times (one before 1970: flooring, not truncation toward zero)
    df.loc[: len(NANOS_TS) - 1, "order_ts"] = pd.to_datetime(NANOS_TS)
    df.loc[: len(NANOS_TS) - 1, "order_id"] = [f"N{i}" for i in range(len(NANOS_TS))]
    df["quantity"] = 1  # a plain int64 column stays an integer
    path = tmp / "tx.parquet"
    df.to_parquet(path)  # pandas' defaults: what a user has
    assert pq.read_schema(path).field("order_ts").type.unit == "ns"  # pandas' default: nanoseconds
    return [*_tx(path, "parquet"), "--set", "quality.earliest_date=1960-01-01"]


def parquet_folder_with_meta(tmp: Path) -> list[str]:
    """Spark-style part files plus what users leave next to them: a ``meta.json``, a README, and a
    ``_SUCCESS`` marker (hidden by Spark's own rule)."""
    import pandas as pd

    folder = tmp / "tx"
    folder.mkdir()
    df = pd.DataFrame(valid_rows(30), columns=TX_HEADER)
    df["order_ts"] = pd.to_datetime(df["order_ts"])
    df["amount"] = df["amount"].astype(float)
    df.iloc[:40].to_parquet(folder / "part-0000.snappy.parquet", coerce_timestamps="us")
    df.iloc[40:].to_parquet(folder / "part-0001.snappy.parquet", coerce_timestamps="us")
    (folder / "meta.json").write_text(f'{{"exported": "2024-12-31", "rows": {len(df)}}}')
    (folder / "README.txt").write_text("nightly export\n")
    (folder / "_SUCCESS").write_text("")
    return _tx(folder, "parquet")


def folder_without_data_files(tmp: Path) -> list[str]:
    folder = tmp / "tx"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    return _tx(folder, "parquet")


def check_all_orders(out: Path) -> None:
    assert len(_read_delta(out / "tables" / "orders")) == len(valid_rows(30))


def _tx(path: Path, fmt: str) -> list[str]:
    return ["--set", f"input.transactions.path={path}", "--set", f"input.transactions.format={fmt}"]


def _read_delta(path: Path) -> list[dict[str, object]]:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def check_quarantine_written(out: Path, rows: int) -> None:
    quarantined = _read_delta(out / "tables" / "quarantine")
    assert len(quarantined) == rows
    assert all(r["customer_id"] and not str(r["customer_id"]).startswith("C") for r in quarantined)


def check_nothing_written(out: Path) -> None:
    """Failed before Spark started: no runs row, no table, no MLflow store."""
    assert not (out / "tables").exists() and not (out / "mlflow.db").exists()


def check_nanos(out: Path) -> None:
    orders = {r["order_id"]: r["order_ts"] for r in _read_delta(out / "tables" / "orders")}
    got = [orders[f"N{i}"].replace(tzinfo=None) for i in range(len(NANOS_TS))]
    assert got == NANOS_EXPECTED


def check_full_run(out: Path) -> None:
    assert len(_read_delta(out / "tables" / "customer_segments")) == 30
    runs = _read_delta(out / "tables" / "runs")
    assert {r["status"] for r in runs} == {"succeeded"}
    assert (out / "tables" / "recommendations" / "_delta_log").is_dir()


@dataclass(frozen=True)
class Case:
    setup: Callable[[Path], list[str]] | None  # writes inputs under tmp, returns --set items
    args: list[str]
    code: int
    says: tuple[str, ...]  # substrings of stderr's last line
    check: Callable[[Path], None] | None = None
    command: str = "run"
    spark: bool = True  # False: must fail before Spark starts
    env: dict[str, str] = field(default_factory=dict)
    # a data case in its own process (False: in-process, on the suite's session)
    process: bool = False


def _missing(tmp: Path) -> list[str]:
    return _tx(tmp / "nowhere" / "tx.csv", "csv")


def _missing_customers(tmp: Path) -> list[str]:
    tx = _csv(tmp / "tx.csv", valid_rows(5))
    return [
        *_tx(tx, "csv"),
        "--set",
        f"input.customers.path={tmp / 'crm'}",
        "--set",
        "input.customers.format=csv",
    ]


def _not_delta(tmp: Path) -> list[str]:
    (tmp / "folder").mkdir()
    _csv(tmp / "folder" / "tx.csv", valid_rows(5))
    return ["--set", f"input.transactions.path={tmp / 'folder'}"]  # format: delta by default


CASES: dict[str, Case] = {
    "bad_date_names_its_key": Case(
        small_valid,
        ["--set", "as_of_date=2025-13-45"],
        2,
        ("'as_of_date'", "2025-13-45"),
        check_nothing_written,
        spark=False,
    ),
    "bad_value_names_its_dotted_key": Case(
        small_valid,
        ["--set", "quality.max_quarantine_share=1.5"],
        2,
        ("'quality.max_quarantine_share'",),
        check_nothing_written,
        spark=False,
    ),
    "transactions_not_configured": Case(
        None,
        [],
        2,
        ("input 'transactions' is not configured", "input.transactions.path"),
        check_nothing_written,
        spark=False,
    ),
    "missing_input_path": Case(
        _missing, [], 2, ("input 'transactions'", "nowhere/tx.csv"), check_nothing_written, spark=False
    ),
    "missing_optional_input_path": Case(
        _missing_customers,
        [],
        2,
        ("input 'customers'", "crm", "input.customers.path"),
        check_nothing_written,
        spark=False,
    ),
    "folder_is_not_a_delta_table": Case(
        _not_delta,
        [],
        2,
        ("input 'transactions'", "not a Delta table", "input.transactions.format"),
        check_nothing_written,
        spark=False,
    ),
    "mostly_garbage_stops_on_the_quarantine_share": Case(
        mostly_garbage,
        [],
        3,
        (
            "table 'transactions'",
            "117 of 123 rows quarantined (95%",
            "quality.max_quarantine_share=0.2",
            "top rules: bad_timestamp=60, bad_amount=57",
        ),
        lambda out: check_quarantine_written(out, 117),
    ),
    "all_garbage_is_one_data_error": Case(
        all_garbage,
        ["--set", "as_of_date=2024-06-30", "--set", "tracking.enabled=false"],  # no MLflow store to create
        3,
        (
            "table 'transactions'",
            "20 of 20 rows quarantined (100%",
            "top rules: bad_timestamp=20",
            "quarantine table",
        ),
        lambda out: check_quarantine_written(out, 20),
        process=True,
    ),
    "all_garbage_without_the_share_rule": Case(
        all_garbage,
        ["--set", "quality.max_quarantine_share=1"],
        3,
        ("table 'transactions'", "no clean order among 20 rows", "bad_timestamp=20", "quarantine table"),
        lambda out: check_quarantine_written(out, 20),
    ),
    "pandas_nanosecond_parquet_is_read_to_the_microsecond": Case(
        pandas_parquet, [], 0, (), check_nanos, command="ingest"
    ),
    "parquet_folder_with_a_meta_json_reads_its_parquet_files": Case(
        parquet_folder_with_meta, [], 0, (), check_all_orders, command="ingest"
    ),
    "folder_without_a_file_of_its_format": Case(
        folder_without_data_files,
        [],
        2,
        ("input 'transactions'", "no parquet file", "/tx (input.transactions.path)"),
    ),
    "thirty_customers_complete": Case(small_valid, [], 0, (), check_full_run),
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if not c.spark else (pytest.mark.slow,)) for n, c in CASES.items()],
)
def test_bad_input(
    name: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    out = tmp_path / "out"
    items = case.setup(tmp_path) if case.setup else []
    env = {"SPARK_LOCAL_IP": "127.0.0.1", "SEGSPARK_PSEUDO_KEY": "bad-inputs-key", **case.env}
    argv = [
        case.command, *items, *case.args,
        "--set", f"output.path={out}", "--set", "spark.master=local[2]",
        "--set", "spark.shuffle_partitions=2", "--set", "spark.driver_memory=1g",
        "--set", "clustering.k_max=3",
    ]  # fmt: skip
    if case.spark and not case.process:
        # the table engine a local run gets by default (the suite's session loads Delta's jars, which
        # would make it Delta's Spark engine: tested in test_s3, test_faults and the engine tests), and
        # no MLflow store (created anew for each case: seconds) unless the run is to complete
        argv += ["--set", "lakehouse.engine=delta-rs"]
        if case.check is not check_full_run:
            argv += ["--set", "tracking.enabled=false"]
        request.getfixturevalue("spark")  # the suite's session: main() runs on it
        capfd = request.getfixturevalue("capfd")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        code = main(argv)
        stderr = capfd.readouterr().err
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "segspark", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=REPO,
            timeout=900,
        )
        code, stderr = proc.returncode, proc.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    assert code == case.code, stderr[-3000:]
    if case.code:
        assert last.startswith("segspark: "), last
        for text in case.says:
            assert text in last, last
    assert not JAVA_FRAME.search(stderr), stderr[-3000:]
    if not case.spark:
        assert SPARK_STARTED not in stderr
    if case.check is not None:
        case.check(out)


# ---- in-process checks behind the table: configuration keys, the Parquet reader, ANSI-safe aggregates


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["as_of_date=2025-13-45"], "'as_of_date'"),
        (["clv.calibration_end=2024-02-30"], "'clv.calibration_end'"),
        (["spark.shuffle_partitions=many"], "'spark.shuffle_partitions'"),  # a union: no arm tag in the key
        (["quality.rules.bad_amount=sometimes"], "'quality.rules.bad_amount'"),
        (["input.transactions.version=-1"], "'input.transactions.version'"),
    ],
)
def test_every_validation_error_names_its_dotted_key(overrides: list[str], key: str) -> None:
    from segspark.config import load_settings
    from segspark.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_settings([], overrides)
    assert str(err.value).startswith(f"invalid value for {key}: ")
    assert "\n" not in str(err.value)


def test_a_bad_date_in_a_config_file_names_its_key(tmp_path: Path) -> None:
    from segspark.config import load_settings
    from segspark.errors import ConfigError

    conf = tmp_path / "c.yaml"
    conf.write_text("quality:\n  earliest_date: 2001-02-29\n")
    with pytest.raises(ConfigError, match=r"^invalid value for 'quality.earliest_date': \"2001-02-29\""):
        load_settings([conf])
    conf.write_text("as_of_date: 2024-02-29\nquality:\n  earliest_date: 2001-02-28\n")
    settings = load_settings([conf])
    assert settings.as_of_date == dt.date(2024, 2, 29) and settings.quality.earliest_date == dt.date(
        2001, 2, 28
    )


@pytest.mark.parametrize("footer", [True, False], ids=["footer", "timestamp_roles"])
def test_pandas_parquet_nanoseconds_read_to_the_microsecond(
    spark, tmp_path: Path, monkeypatch, footer
) -> None:
    """From the footer (local path) or, where the footer is out of reach, from the timestamp roles
    after the column mapping; a plain int64 column stays an integer either way."""
    import pandas as pd

    from segspark.config import InputTable
    from segspark.io import inputs

    df = pd.DataFrame(
        {
            "cust": ["a", "b", "c"],
            "ts": pd.to_datetime(NANOS_TS),
            "qty": [1, 2, 3],
            "amount": [1.0, 2.0, 3.0],
        }
    )
    (tmp_path / "data").mkdir()
    df.to_parquet(tmp_path / "data" / "part-0.parquet")
    if not footer:
        monkeypatch.setattr(inputs, "footer_nanos_columns", lambda location: None)
    cfg = InputTable(path=str(tmp_path / "data"), format="parquet", columns={"order_ts": "ts"})
    read = inputs.read_files(spark, "transactions", cfg)
    assert dict(read.dtypes) == {"cust": "string", "ts": "timestamp", "qty": "bigint", "amount": "double"}
    rows = sorted(read.collect(), key=lambda r: r["cust"])
    assert [r["ts"] for r in rows] == NANOS_EXPECTED  # the session is UTC, so no shift either
    assert [r["qty"] for r in rows] == [1, 2, 3]
    assert spark.conf.get(inputs.NANOS_AS_LONG) == "false"  # the flag is not left on


def test_plain_parquet_is_read_as_it_is(spark, tmp_path: Path) -> None:
    import pandas as pd

    from segspark.config import InputTable
    from segspark.io import inputs

    df = pd.DataFrame({"cust": ["a"], "ts": pd.to_datetime(["2024-01-02 03:04:05.123456"]), "n": [7]})
    df.to_parquet(tmp_path / "p.parquet", coerce_timestamps="us")
    read = inputs.read_files(
        spark, "transactions", InputTable(path=str(tmp_path / "p.parquet"), format="parquet")
    )
    assert dict(read.dtypes)["n"] == "bigint"
    assert read.first()["n"] == 7


def test_aggregates_are_ansi_safe_on_degenerate_frames(spark) -> None:
    """Zero denominators everywhere: no revenue at all, a segment of zero buyers, spend in a month
    without new customers, constant columns; every aggregate returns (nulls where undefined)."""
    from pyspark.sql import types as T

    from segspark import cohorts, drift, kpis, lifecycle, ltv_cac
    from tests.conftest import orders_of

    tx_schema = T.StructType(
        [T.StructField(c, t) for c, t in [
            ("customer_id", T.StringType()), ("order_id", T.StringType()), ("order_ts", T.TimestampType()),
            ("amount", T.DoubleType()), ("quantity", T.IntegerType()), ("product_category", T.StringType()),
            ("channel", T.StringType()), ("currency", T.StringType()),
        ]]
    )  # fmt: skip
    # two customers, zero-value orders only (revenue 0), the same day (constant columns)
    ts = dt.datetime(2024, 5, 1, 10)
    lines = spark.createDataFrame(
        [("a", "o1", ts, 0.0, 1, "x", "web", "USD"), ("b", "o2", ts, 0.0, 1, "x", "web", "USD")], tx_schema
    )
    orders = orders_of(lines)
    seg_schema = T.StructType(
        [T.StructField(c, t) for c, t in [
            ("customer_id", T.StringType()), ("rfm_segment", T.StringType()),
            ("lifecycle_stage", T.StringType()), ("monetary", T.DoubleType()),
            ("frequency", T.LongType()), ("clv", T.DoubleType()),
            ("churn_risk", T.DoubleType()),
        ]]
    )  # fmt: skip
    # 'Lost' has only a prospect: zero buyers in every per-buyer rate's denominator
    segments = spark.createDataFrame(
        [("a", "Champions", "active", 0.0, 0, 0.0, 0.0), ("b", "Champions", "active", 0.0, 0, 0.0, 0.0),
         ("c", "Lost", "prospect", None, None, None, None)],
        seg_schema,
    )  # fmt: skip
    spend = spark.createDataFrame(
        [(dt.date(2024, 1, 1), "web", 100.0), (dt.date(2024, 5, 1), "web", 0.0)],
        "month date, channel string, spend double",
    )
    as_of = dt.date(2024, 6, 30)
    values = {
        (r["segment_type"], r["segment"], r["kpi"]): r["value"] for r in kpis.segment_kpis(segments).collect()
    }
    assert values[("all", "all", "revenue_share")] is None  # 0 / 0 revenue: undefined, not an error
    assert values[("rfm_segment", "Lost", "customers")] == 1.0
    assert values.get(("rfm_segment", "Lost", "repeat_purchase_rate")) is None  # no buyer in 'Lost'
    retention = cohorts.cohort_retention(orders, None, as_of).collect()
    assert all(r["retention_rate"] is None or 0 <= r["retention_rate"] <= 1 for r in retention)
    ltv = ltv_cac.ltv_cac(orders, None, spend, segments, as_of, 12).collect()
    jan = [r for r in ltv if r["level"] == "channel_month" and str(r["month"]).startswith("2024-01")]
    assert all(r["cac"] is None and r["ltv_to_cac"] is None for r in jan)  # spend without new customers
    lifecycle.segment_transitions(segments, segments.limit(0)).collect()  # an empty previous snapshot
    previous = segments.limit(0)
    out = drift.segment_drift(segments, previous, ["rfm_segment"], ["monetary", "clv"]).collect()
    assert all(r["psi"] is None or r["psi"] == r["psi"] for r in out)
    same = drift.segment_drift(segments, segments, ["rfm_segment"], ["monetary", "clv"]).collect()
    assert {r["status"] for r in same if r["bucket"] == "__total__"} == {"stable"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_missing_uri_the_preflight_cannot_check_names_the_input(spark, tmp_path: Path, fmt: str) -> None:
    from segspark.config import InputTable
    from segspark.errors import InputError
    from segspark.io import inputs

    uri = f"file://{tmp_path}/nowhere/tx.{fmt}"  # a URI: left to the reader, as a cloud path is
    with pytest.raises(InputError, match=rf"^input 'events': no {fmt} data at {uri} \(input.events.path\)$"):
        inputs.read_files(spark, "events", InputTable(path=uri, format=fmt))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_folder_input_reads_the_files_of_its_format_only(
    spark, tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Part files in two partition folders, next to a ``meta.json`` (that Spark's Parquet reader
    fails on and its CSV reader would read as rows), a ``notes.txt``, and hidden ``_SUCCESS`` and
    ``.part.crc`` files: every data row is read, the stray files are named in one log line."""
    import logging

    import pandas as pd

    from segspark.config import InputTable
    from segspark.io import inputs

    folder = tmp_path / "tx"
    (folder / "day=1").mkdir(parents=True)
    (folder / "day=2").mkdir()
    rows = valid_rows(12)
    df = pd.DataFrame(rows, columns=TX_HEADER)
    halves = {
        folder / "day=1" / f"part-0.{fmt}": df.iloc[:10],
        folder / "day=2" / f"part-1.{fmt}.gz": df.iloc[10:],
    }
    for path, part in halves.items():
        if fmt == "csv":
            part.to_csv(path, index=False, compression="gzip" if path.name.endswith(".gz") else None)
        else:
            part.to_parquet(path.with_name(path.name.removesuffix(".gz")))
    (folder / "meta.json").write_text('{"rows": 3}\n{"rows": 4}\n')
    (folder / "day=2" / "notes.txt").write_text("customer_id,order_id\nX,Y\n")
    (folder / "_SUCCESS").write_text("")
    (folder / "day=1" / ".part-0.crc").write_text("crc")
    with caplog.at_level(logging.INFO, logger="segspark.io.inputs"):
        read = inputs.read_files(spark, "transactions", InputTable(path=str(folder), format=fmt))
        got = sorted(r["order_id"] for r in read.select("order_id").collect())
    assert got == sorted(r[1] for r in rows)
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1, ignored
    assert "2 file(s)" in ignored[0] and "day=2/notes.txt, meta.json" in ignored[0], ignored[0]
    assert "_SUCCESS" not in ignored[0] and ".crc" not in ignored[0]


def test_a_folder_of_data_files_only_is_read_without_a_filter(spark, tmp_path: Path) -> None:
    from segspark.config import InputTable
    from segspark.io import inputs

    folder = tmp_path / "tx"
    folder.mkdir()
    _csv(folder / "a.csv", valid_rows(3))
    assert inputs.data_file_glob("transactions", InputTable(path=str(folder), format="csv")) is None
    assert inputs.data_file_glob("transactions", InputTable(path=str(folder / "a.csv"), format="csv")) is None
    (folder / "meta.json").write_text("{}")
    glob = inputs.data_file_glob("transactions", InputTable(path=str(folder), format="csv"))
    assert glob is not None and glob.startswith("*{.csv,.csv.gz")


def test_a_folder_without_a_file_of_its_format_names_the_folder(spark, tmp_path: Path) -> None:
    from segspark.config import InputTable
    from segspark.errors import InputError
    from segspark.io import inputs

    folder = tmp_path / "crm"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    (folder / "_SUCCESS").write_text("")
    with pytest.raises(InputError, match=rf"^input 'customers': no parquet file .* in the folder {folder} "):
        inputs.read_files(spark, "customers", InputTable(path=str(folder), format="parquet"))
