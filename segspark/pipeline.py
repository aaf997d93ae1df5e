"""Orchestration: read -> stages (pure DataFrame functions) -> write. The whole data flow on one screen."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql import types as T

import segspark
from segspark import generate as G
from segspark import schema as S
from segspark import tracking
from segspark.config import Settings
from segspark.errors import InputError, SegsparkError
from segspark.io import InputInfo, Lakehouse
from segspark.session import get_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

INPUTS = ("transactions", "customers", "events", "marketing_spend")


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    here = Path(segspark.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return f"{segspark.__version__}+{sha}" if sha else segspark.__version__


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class InputStats:
    info: InputInfo
    rows_in: int = 0
    rows_clean: int = 0
    rows_quarantined: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)


@dataclass
class RunContext:
    """Everything one run knows about itself: identity, lineage, results for the report."""

    settings: Settings
    spark: SparkSession
    lake: Lakehouse
    run_id: str
    command: str
    demo: bool = False
    as_of_date: dt.date | None = None
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    inputs: dict[str, InputStats] = field(default_factory=dict)
    outputs: dict[str, int | None] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def write(self, df: DataFrame, name: str) -> None:
        assert self.as_of_date is not None, "as_of_date must be known before writing"
        res = self.lake.write(df, name, run_id=self.run_id, as_of_date=self.as_of_date)
        self.outputs[name] = res.version
        log.info("wrote %s (version %s%s)", name, res.version, ", already committed" if res.skipped else "")


def open_context(settings: Settings, command: str, *, demo: bool = False, spark: SparkSession | None = None) -> RunContext:
    session = spark or get_spark(settings.spark)
    lake = Lakehouse(session, settings)
    run_id = settings.run_id or new_run_id()
    return RunContext(settings=settings, spark=session, lake=lake, run_id=run_id, command=command, demo=demo)


# ---- runs table ----------------------------------------------------------------------------------
RUNS_SCHEMA = T.StructType(
    [
        T.StructField("command", T.StringType()),
        T.StructField("status", T.StringType()),
        T.StructField("error", T.StringType()),
        T.StructField("started_at", T.TimestampType()),
        T.StructField("ended_at", T.TimestampType()),
        T.StructField("duration_s", T.DoubleType()),
        T.StructField("config_hash", T.StringType()),
        T.StructField("code_version", T.StringType()),
        T.StructField("engine", T.StringType()),
        T.StructField("mlflow_run_id", T.StringType()),
        T.StructField(
            "inputs",
            T.ArrayType(
                T.StructType(
                    [
                        T.StructField("name", T.StringType()),
                        T.StructField("location", T.StringType()),
                        T.StructField("format", T.StringType()),
                        T.StructField("version", T.LongType()),
                        T.StructField("rows_in", T.LongType()),
                        T.StructField("rows_clean", T.LongType()),
                        T.StructField("rows_quarantined", T.LongType()),
                    ]
                )
            ),
        ),
        T.StructField(
            "outputs",
            T.ArrayType(T.StructType([T.StructField("table", T.StringType()), T.StructField("version", T.LongType())])),
        ),
    ]
)


def record_run(ctx: RunContext, status: str, error: str | None = None) -> None:
    """Append this attempt's lineage row to ``runs`` (one row per attempt, keyed by run_id)."""
    ended = dt.datetime.now(dt.timezone.utc)
    row = (
        ctx.command,
        status,
        error,
        ctx.started,
        ended,
        (ended - ctx.started).total_seconds(),
        ctx.settings.config_hash(),
        code_version(),
        ctx.lake.engine,
        ctx.mlflow_run_id,
        [
            (s.info.name, s.info.location, s.info.format, s.info.version, s.rows_in, s.rows_clean, s.rows_quarantined)
            for s in ctx.inputs.values()
        ],
        [(name, version) for name, version in sorted(ctx.outputs.items())],
    )
    df = ctx.spark.createDataFrame([row], RUNS_SCHEMA)
    as_of = ctx.as_of_date or ended.date()
    # each attempt appends its own row: the txn version is the attempt's start time
    ctx.lake.write(df, S.RUNS, run_id=ctx.run_id, as_of_date=as_of, txn_version=int(ctx.started.timestamp() * 1000))


# ---- generate --------------------------------------------------------------------------------------
def generate(
    settings: Settings,
    out_dir: str,
    customers: int,
    seed: int = 42,
    dirty: bool = False,
    end: dt.date = G.DEFAULT_END,
    spark: SparkSession | None = None,
) -> dict[str, Any]:
    """Write a synthetic input lakehouse (Delta tables) under ``out_dir``; returns paths and counts."""
    if customers < 1:
        raise SegsparkError("--customers must be at least 1")
    session = spark or get_spark(settings.spark)
    lake = Lakehouse(session, settings)
    root = Path(out_dir).resolve()
    base = G.customer_base(session, customers, seed).persist()
    tx = G.transactions(base, seed, end)
    crm = G.customers(base, seed, end)
    tables: dict[str, DataFrame] = {
        "transactions": G.dirty_transactions(tx, seed, end) if dirty else tx,
        "customers": G.dirty_customers(crm) if dirty else crm,
        "events": G.events(base, seed, end),
        "marketing_spend": G.marketing_spend(crm, seed, end),
        "ground_truth": G.ground_truth(base),
    }
    paths: dict[str, str] = {}
    rows: dict[str, int] = {}
    started = time.perf_counter()
    for name, df in tables.items():
        path = str(root / name)
        res = lake.write_dataset(df, path)
        paths[name] = path
        rows[name] = res.rows
        log.info("generated %s: %s rows", name, res.rows)
    base.unpersist()
    return {"paths": paths, "rows": rows, "seconds": time.perf_counter() - started, "end": end.isoformat()}


def demo_overrides(data_paths: dict[str, str]) -> list[str]:
    """``--set`` items that point the inputs at a generated lakehouse."""
    items = []
    for name in INPUTS:
        items += [f"input.{name}.path={data_paths[name]}", f"input.{name}.format=delta"]
    items += ["quality.currency.rates={EUR: 1.08, GBP: 1.27}"]
    return items


# ---- the pipeline ----------------------------------------------------------------------------------
def read_inputs(ctx: RunContext) -> dict[str, DataFrame]:
    frames: dict[str, DataFrame] = {}
    for name in INPUTS:
        if name != "transactions" and not ctx.lake.input_configured(name):
            log.info("input %s not configured: stages that use it are skipped", name)
            continue
        df, info = ctx.lake.read_input(name)
        frames[name] = df
        ctx.inputs[name] = InputStats(info=info)
    return frames


def default_as_of(transactions: DataFrame) -> dt.date:
    row = transactions.agg(F.max(F.to_date(F.col(S.ORDER_TS)))).first()
    if row is None or row[0] is None:
        raise InputError("table 'transactions': no clean order to take as_of_date from; set as_of_date")
    return row[0]  # type: ignore[no-any-return]


def run(ctx: RunContext) -> RunContext:
    """The whole pipeline: ingest, features, segments, models, KPIs, report; one commit per table."""
    settings = ctx.settings
    with tracking.parent_run(settings, ctx.run_id, {"segspark.command": ctx.command}) as mlflow_id:
        ctx.mlflow_run_id = mlflow_id
        try:
            frames = read_inputs(ctx)
            tx = frames["transactions"]
            for name, df in frames.items():
                ctx.inputs[name].rows_in = ctx.inputs[name].rows_clean = df.count()
            ctx.as_of_date = settings.as_of_date or default_as_of(tx)
            tracking.log_input_lineage(
                [
                    {"name": s.info.name, "location": s.info.location, "version": s.info.version, "rows": s.rows_in}
                    for s in ctx.inputs.values()
                ]
            )
        except BaseException as exc:
            record_run(ctx, "failed", f"{type(exc).__name__}: {exc}"[:2000])
            log.debug("run failed:\n%s", traceback.format_exc())
            raise
        record_run(ctx, "succeeded")
    return ctx
