"""One run's context: identity, settings, session, lakehouse, lineage and timings, and its ``runs`` row.

The pipeline (``segspark.pipeline``) and the commands that are not the pipeline (``segspark.maintenance``,
``segspark.drift.monitor``) share it. Stage results are tables, never fields of the context: the
fields here are what a run knows about itself (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import secrets
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark import tables, tracking
from segspark.config import Settings
from segspark.errors import InputError
from segspark.io import InputInfo, Lakehouse, storage
from segspark.session import delta_jars_for, get_spark, local_bytes, session_jit
from segspark.version import code_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from segspark.refresh import Decision

log = logging.getLogger(__name__)


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
    """What one run knows about itself: identity, lineage and timings. Stage results are tables."""

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
    mlflow_run_id: str | None = None
    cluster_mode: str = "fit"
    clean: CleanInputs | None = None  # ingest's validated frames (orders feed only the silver stage)
    quality: list[dict[str, Any]] = field(default_factory=list)  # ingest's per-input summary, for the CLI
    report_dir: str | None = None
    cached: list[DataFrame] = field(default_factory=list)
    releases: list[Callable[[], None]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # degradations, recorded in the runs row
    choices: dict[str, str] = field(default_factory=dict)  # what the job sized to the data (runs row)
    refresh: Decision | None = None  # what the run recomputes (``segspark.refresh``), decided before ingest
    # ``score``: the registered clustering model (URI, logging run id) resolved for that decision
    resolved_model: tuple[str, str | None] | None = None

    def warn(self, message: str) -> None:
        """A degradation the run survives (a fallback, a skipped model): logged and recorded."""
        log.warning("%s", message)
        self.warnings.append(message)

    def choose(self, key: str, value: object) -> None:
        """Record a choice the job made by the data's size (logged; the runs row's ``choices``)."""
        log.info("chose %s: %s", key, value)
        self.choices[key] = str(value)

    def cache(self, df: DataFrame) -> DataFrame:
        """Remember a persisted frame (released at the end of the run or by ``release_cached``)."""
        self.cached.append(df)
        return df

    def release_cached(self) -> None:
        for df in self.cached:
            df.unpersist()
        for release in self.releases:
            release()
        self.cached.clear()
        self.releases.clear()

    def read(self, name: str) -> DataFrame:
        """A table this run wrote (or, for stage commands, the committed one): the run's
        ``as_of_date`` partition of a snapshot table, or the whole silver table; no stamp columns."""
        assert self.as_of_date is not None, "as_of_date must be known before reading a stage's table"
        if name in S.SNAPSHOT_TABLES:
            return self.lake.read_snapshot(name, self.as_of_date)
        return self.lake.read_output(name).drop(S.RUN_ID, S.AS_OF_DATE)

    def write(self, df: DataFrame, name: str) -> None:
        assert self.as_of_date is not None, "as_of_date must be known before writing"
        with self.timed(f"write_{name}"):
            res = self.lake.write(df, name, run_id=self.run_id, as_of_date=self.as_of_date)
        self.outputs[name] = res.version
        log.info("wrote %s (version %s%s)", name, res.version, ", already committed" if res.skipped else "")

    def merge(self, df: DataFrame, name: str, keys: list[str], delete_column: str | None = None) -> None:
        assert self.as_of_date is not None, "as_of_date must be known before writing"
        with self.timed(f"merge_{name}"):
            res = self.lake.merge(
                df, name, keys, run_id=self.run_id, as_of_date=self.as_of_date, delete_column=delete_column
            )
        self.outputs[name] = res.version
        log.info(
            "merged into %s (version %s%s)", name, res.version, ", already committed" if res.skipped else ""
        )

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Time a step (Spark is lazy: a table's write time includes computing it); logged and tracked."""
        # No Spark job tag per step (SparkSession.addTag): on Spark 4.2 a tagged session can no longer
        # be serialized, and Spark ML's logistic regression ships its training summary (which holds
        # the session) to the executors: "Task not serializable". bench_fixed_cost.py attributes the
        # jobs to steps by time from these log lines instead.
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.timings[step] = round(seconds, 3)
        log.info("%s took %.1f s", step, seconds)
        tracking.log_metrics({f"seconds_{step}": seconds})


def open_context(
    settings: Settings, command: str, *, demo: bool = False, spark: SparkSession | None = None
) -> RunContext:
    tx = settings.input.transactions
    session = spark or get_spark(
        settings.spark,
        delta=delta_jars_for(settings.lakehouse.engine),
        s3a=storage.s3a_conf(settings),
        tx_bytes=None if tx.table else local_bytes(tx.path),
    )
    lake = Lakehouse(session, settings)
    # the run starts here: a later overwrite of rows another run commits from now on is a conflict
    lake.pin_versions()
    run_id = settings.run_id or new_run_id()
    ctx = RunContext(settings=settings, spark=session, lake=lake, run_id=run_id, command=command, demo=demo)
    ctx.choices["spark.jit"] = session_jit(session)
    return ctx


# ---- runs table ----------------------------------------------------------------------------------
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
            (
                s.info.name,
                s.info.location,
                s.info.format,
                s.info.version,
                s.rows_in,
                s.rows_clean,
                s.rows_quarantined,
            )
            for s in ctx.inputs.values()
        ],
        [(name, version) for name, version in sorted(ctx.outputs.items())],
        dict(ctx.timings),
        list(ctx.warnings),
        dict(ctx.choices),
    )
    df = ctx.spark.createDataFrame([row], tables.RUNS_SCHEMA)
    as_of = ctx.as_of_date or ended.date()
    # each attempt appends its own row: the txn version is the attempt's start time
    ctx.lake.write(
        df, S.RUNS, run_id=ctx.run_id, as_of_date=as_of, txn_version=int(ctx.started.timestamp() * 1000)
    )


def record_failed(ctx: RunContext, exc: BaseException) -> None:
    """The one place a failed attempt is recorded: its ``runs`` row with the error (never raising:
    the command's own error is the one to report)."""
    try:
        record_run(ctx, "failed", f"{type(exc).__name__}: {exc}"[:2000])
    except Exception as failed:
        log.warning("could not record the failed %s in runs: %s", ctx.command, failed)
    log.debug("%s failed:\n%s", ctx.command, traceback.format_exc())


@contextlib.contextmanager
def recorded(ctx: RunContext) -> Iterator[None]:
    """Record the command's ``runs`` row: succeeded, or failed with the error (which is re-raised)."""
    try:
        yield
    except BaseException as exc:
        record_failed(ctx, exc)
        raise
    record_run(ctx, "succeeded")


@dataclass
class CleanInputs:
    """Validated, pseudonymous, minimized inputs (no PII past this point). The transactions arrive
    as orders, grouped in the pass that validates them (``ingest.orders``: the lines are never
    materialized), and only feed the silver tables; customers, events and marketing spend are read
    by the stages that name them."""

    orders: DataFrame | None  # None: a ``reuse`` refresh (``segspark.refresh``), whose orders stand
    customers: DataFrame | None
    events: DataFrame | None
    marketing_spend: DataFrame | None
    # ``orders`` are a batch of new lines' orders (an incremental refresh): merged into ``orders``
    orders_batch: bool = False
    # the events' one row per customer (``behaviour.engagement_features``), cached: the events
    # themselves (the largest input, 2-3 per line) are released at the end of ingest, so their cache
    # does not hold memory and disk through silver
    engagement: DataFrame | None = None
    # drops an input's ingest cache once its last reader has written: orders after silver;
    # customers and spend are small and read until the aggregates
    releases: dict[str, Callable[[], None]] = field(default_factory=dict)

    def release(self, name: str) -> None:
        if name in self.releases:
            self.releases.pop(name)()


def materialize(df: DataFrame, *, for_query: bool = False) -> DataFrame:
    """``df`` computed once and kept for a stage that reads it several times.

    - Read again as a DataFrame (the clustering's input, ingest's engagement rows): a classic
      session persists it (its cache serves every read; measured cheaper there than a checkpoint);
      over Spark Connect a local checkpoint keeps later requests small (the plan becomes a
      reference to the kept data).
    - ``for_query``: read by several references of one SQL query's WITH list (LTV:CAC's customer
      level): a local checkpoint on local disk, in either kind of session. A persisted frame does
      not serve such a query: Spark's cache matching replaced only the first of its references
      (measured on LTV:CAC at 10M lines: two of its three aggregates joined the orders again,
      26-30 s instead of 6); a checkpoint's plan is the kept data, a leaf every reference reads.
      On disk only: a customer-level table must not take the executors' memory. Its blocks go with
      the session, or when the JVM collects the frame (releasing them sooner would take RDDs, which
      the job does not touch).

    A session that refuses local checkpoints (an older Connect server) gets the persisted frame.
    """
    from pyspark import StorageLevel

    from segspark.io.delta_spark import is_remote

    if not for_query and not is_remote(df.sparkSession):
        return df.persist()
    try:
        if for_query:
            return df.localCheckpoint(eager=True, storageLevel=StorageLevel.DISK_ONLY)
        return df.localCheckpoint(eager=True)
    except Exception as exc:  # any refusal of the API (its error class differs by server): persist
        log.info("local checkpoint not available (%s): the frame is persisted instead", type(exc).__name__)
        return df.persist()


def latest_date(ctx: RunContext, name: str) -> dt.date:
    """``as_of_date`` when set, else the latest date of table ``name`` (a command on written tables)."""
    if not ctx.lake.exists(name):
        raise InputError(f"no {name} table under {ctx.lake.target(name)}: run the pipeline first")
    if ctx.settings.as_of_date is not None:
        return ctx.settings.as_of_date
    row = ctx.lake.read_output(name).agg(F.max(S.AS_OF_DATE)).first()
    if row is None or row[0] is None:
        raise InputError(f"{name} is empty: run the pipeline first")
    return row[0]


def declared_frame(
    spark: SparkSession, pdf: pd.DataFrame, name: str, *, fill_missing: bool = False
) -> DataFrame:
    """The one way a small pandas result becomes a Spark frame: table ``name``'s declared schema (never
    inferred: an empty frame has nothing to infer from), NaN -> null, numbers coerced to the declared
    kind. A declared column the frame lacks is an error, or null with ``fill_missing`` (the report's
    tables, whose optional parts may be absent)."""
    declared = tables.SCHEMAS[name].fields
    # the table's pattern columns (cluster_profiles' per-feature columns) with their declared type
    names = {f.name for f in declared}
    patterns = tables.PATTERNS.get(name, ())
    extra = [
        T.StructField(str(c), next(p.type_ for p in patterns if re.fullmatch(p.regex, str(c))), True)
        for c in pdf.columns
        if c not in names and any(re.fullmatch(p.regex, str(c)) for p in patterns)
    ]
    if patterns:  # a table with pattern columns: one that matches nothing would be lost here
        stray = [str(c) for c in pdf.columns if c not in names and str(c) not in {f.name for f in extra}]
        if stray:
            raise tables.SchemaMismatch(
                f"table '{name}': column(s) {stray} are neither declared nor one of its patterns"
            )
    schema = T.StructType([*declared, *extra])
    fields = schema.fields
    missing = [f.name for f in declared if f.name not in pdf.columns]
    if missing and not fill_missing:
        raise tables.SchemaMismatch(f"table '{name}': the frame lacks declared column(s) {missing}")
    frame = pdf.reindex(columns=[f.name for f in fields]).astype(object)

    def value(v: Any, kind: T.DataType) -> Any:
        if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
            return None  # a nullable pandas column's missing value (pd.NA) too
        if isinstance(kind, T.IntegralType):
            return int(v)
        if isinstance(kind, (T.DoubleType, T.FloatType)):
            return float(v)
        if isinstance(kind, T.BooleanType):
            return bool(v)
        if isinstance(kind, T.StringType):
            return str(v)
        return v

    rows = [
        tuple(value(v, f.dataType) for v, f in zip(r, fields, strict=True))
        for r in frame.itertuples(index=False, name=None)
    ]
    return spark.createDataFrame(rows, schema)
