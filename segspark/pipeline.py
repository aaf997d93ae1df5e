"""Orchestration: read -> stages (pure DataFrame functions) -> write. The whole data flow on one screen."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark.sql import functions as F

from segspark import generate as G
from segspark import schema as S
from segspark import tables, tracking
from segspark.config import Settings
from segspark.errors import DataQualityError, InputError, SegsparkError
from segspark.io import InputInfo, Lakehouse
from segspark.io.engine import MIN_SAFE_RETENTION_HOURS
from segspark.io.lakehouse import OUTPUT_TABLES, check_vacuum_retention
from segspark.session import (
    finalizers_at_safe_points,
    get_spark,
    scale_shuffle_partitions,
    sizes_shuffle_partitions,
)
from segspark.version import code_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

INPUTS = ("transactions", "customers", "events", "marketing_spend")


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
    clean: CleanInputs | None = None  # ingest's validated frames (transactions feed only the silver stage)
    quality: list[dict[str, Any]] = field(default_factory=list)  # ingest's per-input summary, for the CLI
    report_dir: str | None = None
    cached: list[DataFrame] = field(default_factory=list)
    releases: list[Callable[[], None]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # degradations, recorded in the runs row
    choices: dict[str, str] = field(default_factory=dict)  # what the job sized to the data (runs row)

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
    session = spark or get_spark(settings.spark)
    lake = Lakehouse(session, settings)
    # the run starts here: a later overwrite of rows another run commits from now on is a conflict
    lake.pin_versions()
    run_id = settings.run_id or new_run_id()
    return RunContext(settings=settings, spark=session, lake=lake, run_id=run_id, command=command, demo=demo)


# ---- runs table ----------------------------------------------------------------------------------
RUNS_SCHEMA = tables.RUNS_SCHEMA


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
    df = ctx.spark.createDataFrame([row], RUNS_SCHEMA)
    as_of = ctx.as_of_date or ended.date()
    # each attempt appends its own row: the txn version is the attempt's start time
    ctx.lake.write(
        df, S.RUNS, run_id=ctx.run_id, as_of_date=as_of, txn_version=int(ctx.started.timestamp() * 1000)
    )


@contextlib.contextmanager
def recorded(ctx: RunContext) -> Iterator[None]:
    """Record the command's ``runs`` row: succeeded, or failed with the error (which is re-raised)."""
    try:
        yield
    except BaseException as exc:
        try:
            record_run(ctx, "failed", f"{type(exc).__name__}: {exc}"[:2000])
        except Exception as failed:  # the command's own error is the one to report
            log.warning("could not record the failed %s in runs: %s", ctx.command, failed)
        raise
    record_run(ctx, "succeeded")


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
        t0 = time.perf_counter()
        res = lake.write_dataset(df, path)
        paths[name] = path
        rows[name] = res.rows
        log.info("generated %s: %s rows", name, res.rows)
        log.info("generate_%s took %.1f s", name, time.perf_counter() - t0)
    base.unpersist()
    return {"paths": paths, "rows": rows, "seconds": time.perf_counter() - started, "end": end.isoformat()}


def demo_overrides(data_paths: dict[str, str]) -> list[str]:
    """``--set`` items that point the inputs at a generated lakehouse."""
    items = []
    for name in INPUTS:
        items += [f"input.{name}.path={data_paths[name]}", f"input.{name}.format=delta"]
    items += ["quality.currency.rates={EUR: 1.08, GBP: 1.27}"]
    return items


def example_customer_id(data_paths: dict[str, str]) -> str | None:
    """One source customer id of a generated lakehouse (for the demo's printed erase command)."""
    try:
        from deltalake import DeltaTable

        head = DeltaTable(data_paths["transactions"]).to_pyarrow_dataset().head(1, columns=[S.CUSTOMER_ID])
    except Exception as exc:  # only a hint in a printed command: never fail the demo for it
        log.debug("no example customer id: %s", exc)
        return None
    return str(head.column(0)[0]) if head.num_rows else None


# ---- the pipeline: a declared list of stages ------------------------------------------------------
@dataclass
class CleanInputs:
    """Validated, pseudonymous, minimized inputs (no PII past this point). Transactions only feed the
    silver tables; customers, events and marketing spend are read by the stages that name them."""

    transactions: DataFrame
    customers: DataFrame | None
    events: DataFrame | None
    marketing_spend: DataFrame | None
    # the events' one row per customer (``behaviour.engagement_features``), cached: the events
    # themselves (the largest input, 2-3 per line) are released at the end of ingest, so their cache
    # does not hold memory and disk through silver
    engagement: DataFrame | None = None
    # drops an input's ingest cache once its last reader has written: transactions after silver;
    # customers and spend are small and read until the aggregates
    releases: dict[str, Callable[[], None]] = field(default_factory=dict)

    def release(self, name: str) -> None:
        if name in self.releases:
            self.releases.pop(name)()


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: the tables (or clean inputs) it reads, the tables it writes."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    run: Callable[[RunContext], None]


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


def size_shuffle_partitions(ctx: RunContext, frames: dict[str, DataFrame]) -> None:
    """The largest input sets the shuffle partitions of the run (a row count: no column is read),
    when the job sizes them: a count job per input spared otherwise."""
    scaled = None
    if sizes_shuffle_partitions(ctx.settings.spark):
        largest = max(df.count() for df in frames.values())
        scaled = scale_shuffle_partitions(ctx.spark, ctx.settings.spark, largest)
    ctx.choose("spark.shuffle_partitions", scaled or ctx.spark.conf.get("spark.sql.shuffle.partitions"))


def stage_ingest(ctx: RunContext) -> None:
    """Conform, validate (quarantine or fail), reconcile, pseudonymize and minimize every input."""
    from segspark import ingest, privacy

    settings = ctx.settings
    frames = read_inputs(ctx)
    size_shuffle_partitions(ctx, frames)
    key = privacy.resolve_key(settings.privacy, demo=ctx.demo) if settings.privacy.pseudonymize else None
    processing_ts = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    results = []
    clean: dict[str, DataFrame] = {}
    for name, raw in frames.items():
        mapping = getattr(settings.input, name).columns
        conformed = ingest.conform(raw, name, mapping)
        res = ingest.validate(
            conformed, name, settings.quality, processing_ts, key=key, privacy=settings.privacy
        )
        ingest.reconcile(res)
        stats = ctx.inputs[name]
        stats.rows_in, stats.rows_clean, stats.rows_quarantined = (
            res.rows_in,
            res.rows_clean,
            res.rows_quarantined,
        )
        stats.by_rule = dict(res.by_rule)
        results.append(res)
        clean[name] = res.clean  # customer ids are already pseudonyms when a key is given
        ctx.releases.append(res.release)
    ingest.log_summary(results)
    ctx.quality = [r.summary() for r in results]
    tracking.log_metrics(
        {f"quarantined_{r.table}_{rule}": float(n) for r in results for rule, n in r.by_rule.items()}
        | {f"rows_in_{r.table}": float(r.rows_in) for r in results}
    )
    tracking.log_input_lineage(
        [
            {"name": s.info.name, "location": s.info.location, "version": s.info.version, "rows": s.rows_in}
            for s in ctx.inputs.values()
        ]
    )
    as_of = ctx.settings.as_of_date or default_as_of(clean["transactions"])
    # with no clean order the quarantine is still written (stamped with today), for diagnosis
    ctx.as_of_date = as_of or processing_ts.date()
    quarantine = None
    for res in results:
        quarantine = res.quarantine if quarantine is None else quarantine.unionByName(res.quarantine)
    assert quarantine is not None
    ctx.write(quarantine, S.QUARANTINE)  # written before a blocking rule stops the run, for diagnosis
    for res in results:
        ingest.raise_on_fail(res)
    for res in results:
        ingest.check_quarantine_share(res, settings.quality.max_quarantine_share)
    tx = ctx.inputs["transactions"]
    if tx.rows_clean == 0:  # nothing to segment (also when as_of_date is set)
        if tx.rows_in == 0:
            raise InputError(f"input 'transactions': no rows at {tx.info.location} (input.transactions.path)")
        raise DataQualityError(
            f"table 'transactions': no clean order among {tx.rows_in} rows (quarantined: "
            + (", ".join(f"{r}={n}" for r, n in tx.by_rule.items()) or "none")
            + "); look at the quarantine table's rule, reason and raw columns"
        )
    customers = clean.get("customers")
    if customers is not None:
        customers = privacy.minimize(customers, settings.privacy, reference_date=ctx.as_of_date)
    ctx.clean = CleanInputs(
        transactions=clean["transactions"],
        customers=customers,
        events=clean.get("events"),
        marketing_spend=clean.get("marketing_spend"),
        releases={r.table: r.release for r in results},
    )
    events = clean.get("events")
    if events is not None:
        from segspark import behaviour

        # summarized now, while the events are cached, then released: one row per customer stays
        engagement = ctx.cache(materialize(behaviour.engagement_features(events, ctx.as_of_date)))
        engagement.count()
        ctx.clean.engagement = engagement
        ctx.clean.release("events")


def default_as_of(transactions: DataFrame) -> dt.date | None:
    """The date of the last clean order; None when there is none."""
    row = transactions.agg(F.max(F.to_date(F.col(S.ORDER_TS)))).first()
    return None if row is None else row[0]


def stage_silver(ctx: RunContext) -> None:
    """The clean lines become ``orders`` and ``customer_days``, once; no later stage reads the lines."""
    from segspark import silver

    assert ctx.clean is not None
    ctx.write(silver.orders(ctx.clean.transactions, ctx.settings.purchase), S.ORDERS)
    # the lines are done with: release their cache before the heavy stages
    ctx.clean.release("transactions")
    ctx.write(silver.customer_days(ctx.read(S.ORDERS)), S.CUSTOMER_DAYS)


LABEL_COLUMNS = ("r_score", "f_score", "m_score", "rfm_code", "rfm_segment", "lifecycle_stage")


def stage_features(ctx: RunContext) -> None:
    """One row per customer (buyers and CRM prospects): RFM and behaviour features, RFM scores and
    segment, lifecycle stage, engagement and demographics; plus the R x F grid."""
    from segspark import behaviour, features, lifecycle

    settings, as_of, clean = ctx.settings, ctx.as_of_date, ctx.clean
    assert as_of is not None and clean is not None
    channels = settings.rfm.channels
    orders = ctx.read(S.ORDERS)
    engagement = clean.engagement  # summarized by ingest when there are events
    buyers = features.rfm_features(orders, as_of, channels).transform(
        behaviour.with_behaviour, behaviour.behaviour_features(orders, as_of, channels)
    )
    buyers = ctx.cache(buyers.persist())  # the score edges are their own job: do not compute twice
    edges = features.rfm_edges(buyers, settings.rfm)
    tracking.log_dict(edges, "rfm/score_edges.json")
    table = (
        buyers.transform(features.with_rfm_scores, settings.rfm, edges)
        .transform(features.with_rfm_segment, settings.rfm)
        .transform(lifecycle.with_lifecycle_stage, clean.customers, as_of, settings.lifecycle)
        .transform(behaviour.with_engagement, engagement)
        .transform(behaviour.with_demographics, clean.customers)
    )
    ctx.write(table, S.CUSTOMER_FEATURES)
    # written: later stages read the table, so neither the RFM features nor the engagement stay cached
    buyers.unpersist()
    if engagement is not None:
        engagement.unpersist()
    written = ctx.read(S.CUSTOMER_FEATURES)
    ctx.write(features.rfm_grid(written.where(F.col("r_score").isNotNull())), S.RFM_GRID)


def stage_scores(ctx: RunContext) -> None:
    """CLV (from customer_days) and churn propensity (from orders): fits as small tables, one
    ``customer_scores`` row per scored customer."""
    from segspark import churn, clv

    settings, as_of = ctx.settings, ctx.as_of_date
    assert as_of is not None
    parts: list[DataFrame] = []
    if settings.clv.enabled:
        with ctx.timed("clv_fit_and_score"):
            res = clv.run_clv(ctx.read(S.CUSTOMER_DAYS), as_of, settings.clv)
        for message in res.warnings:  # a replaced model, a penalizer, the historical-rate fallback
            ctx.warn(message)
        ctx.write(
            ctx.spark.createDataFrame(clv_validation_rows(res.validation), CLV_VALIDATION_SCHEMA),
            S.CLV_VALIDATION,
        )
        ctx.write(_small_frame(ctx, clv.fit_table(res), S.CLV_FIT), S.CLV_FIT)
        tracking.log_metrics(res.metrics())
        tracking.log_figures(res.figures, "clv")
        scalars = {k: v for k, v in res.validation.items() if not isinstance(v, pd.DataFrame)}
        tracking.log_dict({"fit": res.fit, "validation": scalars}, "clv/fit.json")
        parts.append(res.customers)
    if settings.churn.enabled:
        try:
            with ctx.timed("churn_model"), finalizers_at_safe_points():
                cres = churn.run_churn(ctx.read(S.ORDERS), as_of, settings.churn)
        except InputError as exc:  # too little history or a one-sided label: skip, say why
            ctx.warn(f"churn model skipped: {exc}")
            ctx.write(_small_frame(ctx, churn.skipped_table(str(exc)), S.CHURN_METRICS), S.CHURN_METRICS)
        else:
            m = cres.metrics
            ctx.choose("churn.fit", f"{m['engine']}, {m['train_rows']} of {m['train_customers']} customers")
            ctx.write(_small_frame(ctx, churn.metrics_table(cres), S.CHURN_METRICS), S.CHURN_METRICS)
            tracking.log_metrics(cres.scalar_metrics())
            tracking.log_figures(cres.figures, "churn")
            parts.append(cres.customers)
    scores = ctx.spark.createDataFrame([], tables.SCHEMAS[S.CUSTOMER_SCORES])
    if parts:
        joined = parts[0]
        for part in parts[1:]:
            joined = joined.join(part, on=S.CUSTOMER_ID, how="full")
        scores = joined.select(
            S.CUSTOMER_ID,
            *[
                (F.col(f.name) if f.name in joined.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                for f in tables.SCHEMAS[S.CUSTOMER_SCORES].fields
                if f.name != S.CUSTOMER_ID
            ],
        )
    ctx.write(scores, S.CUSTOMER_SCORES)


def _small_frame(ctx: RunContext, pdf: pd.DataFrame, name: str) -> DataFrame:
    """A small pandas result table as a Spark frame with the table's declared schema."""
    schema = tables.SCHEMAS[name]
    rows = [
        tuple(None if (isinstance(v, float) and v != v) else v for v in r)
        for r in pdf[[f.name for f in schema.fields]].astype(object).itertuples(index=False, name=None)
    ]
    return ctx.spark.createDataFrame(rows, schema)


CLV_VALIDATION_SCHEMA = tables.CLV_VALIDATION_SCHEMA


def clv_validation_rows(validation: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The CLV checks as one long table: tracking curve, frequency histogram, holdout by frequency."""

    def num(v: Any) -> float | None:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return f if f == f else None

    rows: list[tuple[Any, ...]] = []
    curve = validation.get("tracking_curve")
    if isinstance(curve, pd.DataFrame):
        for r in curve.itertuples(index=False):
            label = f"{r.week_end} ({'calibration' if r.calibration else 'holdout'})"
            rows.append(("tracking_curve", num(r.week), label, num(r.actual_cum), num(r.expected_cum), None))
    hist = validation.get("frequency_histogram")
    if isinstance(hist, pd.DataFrame):
        for i, r in enumerate(hist.itertuples(index=False)):
            rows.append(
                (
                    "frequency_histogram",
                    float(i),
                    str(r.repeat_purchases),
                    num(r.actual),
                    num(r.expected),
                    None,
                )
            )
    by_freq = validation.get("holdout_by_frequency")
    if isinstance(by_freq, pd.DataFrame):
        for r in by_freq.itertuples(index=False):
            rows.append(
                (
                    "holdout_by_frequency",
                    num(r.frequency),
                    str(r.frequency),
                    num(r.actual),
                    num(r.predicted),
                    int(r.customers),  # type: ignore[arg-type]
                )
            )
    return rows


def previous_profiles(ctx: RunContext) -> pd.DataFrame | None:
    """The cluster profiles of the latest earlier date (a few rows), for stable persona names.

    Strictly before ``as_of_date``: a rerun of a date (``segspark cluster``, a retried ``run``) names
    from the same history as the date's first run, never from that run's own output, so reruns on
    unchanged data give the same names."""
    assert ctx.as_of_date is not None
    prev = ctx.lake.read_latest_snapshot(S.CLUSTER_PROFILES, before=ctx.as_of_date)
    if prev is None:
        return None
    # a profile row per cluster, in cluster order (the matching must not depend on the read order)
    return prev.toPandas().sort_values("cluster_id", ignore_index=True)


def stage_segments(ctx: RunContext) -> None:
    """Clusters and personas on buyers (refit, or the registered model when scoring), then
    ``customer_segments``: one row per customer with every segment label and score."""
    from segspark.clustering import fit_segments
    from segspark.clustering.results import applied_model_row, sweep_table
    from segspark.clustering.tracking import (
        load_resolved,
        log_to_mlflow,
        model_features,
        resolve_model,
        score_segments,
        staging_dir,
    )

    settings = ctx.settings
    scores = ctx.read(S.CUSTOMER_SCORES)
    model_table = ctx.read(S.CUSTOMER_FEATURES).join(scores, on=S.CUSTOMER_ID, how="left")
    assignments = None
    if settings.clustering.enabled:
        # the sweep, the sample and the final assignment each read the model table: computed once
        model_table = ctx.cache(materialize(model_table))
        buyers = model_table.where(F.col("frequency") > 0)
        if ctx.cluster_mode == "score":
            name, alias = settings.tracking.registered_model, settings.clustering.model_alias
            # one registry lookup: the version recorded below is the version loaded
            uri, run_id = resolve_model(name, settings.tracking_uri, alias)
            model, logged, density = load_resolved(uri, run_id, staging_dir(settings.output.path))
            assignments = score_segments(buyers, model, logged, density=density)
            # the run's record of which model assigned the personas (the report names its version),
            # and that model's profiles, so the score run's tables and report stand on their own
            clusters = int((logged["cluster_id"] >= 0).sum()) if logged is not None else 0
            algorithm = density.algorithm if density is not None else None
            row = applied_model_row(uri, alias, clusters, algorithm, model_features(model))
            ctx.write(_small_frame(ctx, row, S.CLUSTERING_SWEEP), S.CLUSTERING_SWEEP)
            if logged is not None and not logged.empty:
                # JSON turns whole-number floats into ints: the declared profile columns are doubles
                profile_schema = tables.SCHEMAS[S.CLUSTER_PROFILES]
                whole = {f.name for f in profile_schema if f.dataType.typeName() in ("integer", "long")}
                numeric = [c for c in logged.columns if pd.api.types.is_numeric_dtype(logged[c])]
                floats = {c: "float64" for c in numeric if c not in whole and logged[c].dtype != bool}
                logged = logged.astype(floats)
                logged_rows = logged.astype(object).where(logged.notna(), None)
                ctx.write(ctx.spark.createDataFrame(logged_rows), S.CLUSTER_PROFILES)
        else:
            with ctx.timed("clustering_fit"):
                result = fit_segments(buyers, settings.clustering, previous_profiles(ctx), input_cached=True)
            for key, value in result.chosen.get("sizing", {}).items():
                ctx.choose(f"clustering.{key}", value)
            if settings.tracking.enabled:
                inputs = {n: f"{s.info.location}@{s.info.version}" for n, s in ctx.inputs.items()}
                with ctx.timed("clustering_mlflow"):
                    log_to_mlflow(
                        result,
                        settings.tracking,
                        settings.tracking_uri,
                        input_tables=inputs,
                        alias=settings.clustering.model_alias,
                        staging_dir=staging_dir(settings.output.path),
                    )
            ctx.releases.append(result.release)  # its assignments stay cached until the segments are written
            ctx.write(_small_frame(ctx, sweep_table(result), S.CLUSTERING_SWEEP), S.CLUSTERING_SWEEP)
            profiles = result.profiles.astype(object).where(result.profiles.notna(), None)
            ctx.write(ctx.spark.createDataFrame(profiles), S.CLUSTER_PROFILES)
            assignments = result.assignments
    segments = (
        model_table if assignments is None else model_table.join(assignments, on=S.CUSTOMER_ID, how="left")
    )
    # the declared columns (cluster_id and persona are optional: present with clustering only)
    declared = [f.name for f in tables.SCHEMAS[S.CUSTOMER_SEGMENTS] if f.name in segments.columns]
    ctx.write(segments.select(*declared), S.CUSTOMER_SEGMENTS)


DRIFT_CATEGORICAL = ("rfm_segment", "lifecycle_stage", "persona", "value_tier", "churn_band")
DRIFT_NUMERIC = ("recency_days", "frequency", "monetary", "clv", "churn_risk")


def stage_aggregates(ctx: RunContext) -> None:
    """KPIs, cohorts, LTV:CAC, transitions and drift: aggregate tables for BI, from the written tables."""
    from segspark import behaviour, cohorts, drift, kpis, lifecycle, ltv_cac

    as_of, clean = ctx.as_of_date, ctx.clean
    assert as_of is not None
    customers = clean.customers if clean is not None else None
    spend = clean.marketing_spend if clean is not None else None
    segments = ctx.read(S.CUSTOMER_SEGMENTS)
    orders = ctx.read(S.ORDERS)
    previous = ctx.lake.read_latest_snapshot(S.CUSTOMER_SEGMENTS, before=as_of)
    feats = ctx.read(S.CUSTOMER_FEATURES)
    engagement = None
    if clean is not None and clean.engagement is not None:  # engagement features exist only with events
        engagement = feats.select(S.CUSTOMER_ID, *behaviour.ENGAGEMENT_COLUMNS)
    ctx.write(kpis.segment_kpis(segments, engagement), S.SEGMENT_KPIS)
    ctx.write(cohorts.cohort_retention(orders, customers, as_of), S.COHORT_RETENTION)
    ctx.write(
        ltv_cac.ltv_cac(orders, customers, spend, segments, as_of, ctx.settings.kpis.ltv_window_months),
        S.LTV_CAC,
    )
    ctx.write(lifecycle.segment_transitions(segments, previous), S.SEGMENT_TRANSITIONS)
    ctx.write(drift.segment_drift(segments, previous, DRIFT_CATEGORICAL, DRIFT_NUMERIC), S.DRIFT)


REPORT_TABLES = (
    S.CUSTOMER_SEGMENTS,
    S.CUSTOMER_FEATURES,  # demographic attributes for the report's demographic section
    S.SEGMENT_KPIS,
    S.RFM_GRID,
    S.COHORT_RETENTION,
    S.LTV_CAC,
    S.SEGMENT_TRANSITIONS,
    S.DRIFT,
    S.CLUSTER_PROFILES,
    S.CLV_FIT,
    S.CLV_VALIDATION,
    S.CHURN_METRICS,
    S.CLUSTERING_SWEEP,
)


def stage_report(ctx: RunContext) -> None:
    """The stakeholder report and its BI tables (report_summary, recommendations), from tables only."""
    if not ctx.settings.report.enabled:
        return
    from segspark.report import RunInfo, build_report

    as_of = ctx.as_of_date
    assert as_of is not None
    found: dict[str, DataFrame | None] = {
        name: ctx.lake.read_snapshot(name, as_of) if ctx.lake.exists(name) else None for name in REPORT_TABLES
    }
    for name in (S.QUARANTINE, S.RUNS):
        found[name] = (
            ctx.lake.read_output(name).where(F.col(S.RUN_ID) == F.lit(ctx.run_id))
            if ctx.lake.exists(name)
            else None
        )
    found["previous_report_summary"] = ctx.lake.read_latest_snapshot(S.REPORT_SUMMARY, before=as_of)
    out_dir = Path(ctx.settings.output.path).resolve() / "reports"
    with ctx.timed("report_build"):
        result = build_report(
            found, RunInfo(run_id=ctx.run_id, as_of_date=as_of, command=ctx.command), out_dir, ctx.settings
        )
    ctx.report_dir = str(Path(result.html_path).parent)
    # the declared schemas: an empty table (every segment under report.min_segment_size) is written empty
    ctx.write(_declared_frame(ctx, result.summary, S.REPORT_SUMMARY), S.REPORT_SUMMARY)
    ctx.write(_declared_frame(ctx, result.recommendations, S.RECOMMENDATIONS), S.RECOMMENDATIONS)
    tracking.log_artifacts(Path(result.html_path).parent, "report")


def _declared_frame(ctx: RunContext, pdf: pd.DataFrame, name: str) -> DataFrame:
    """A few report rows as a Spark frame of table ``name``'s declared schema (never inferred: an
    empty frame has nothing to infer from); NaN -> null, numbers coerced to the declared kind."""
    from pyspark.sql import types as T

    schema = tables.SCHEMAS[name]
    fields = schema.fields
    frame = pdf.reindex(columns=[f.name for f in fields]).astype(object)

    def value(v: Any, kind: T.DataType) -> Any:
        if v is None or (isinstance(v, float) and v != v):
            return None
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
    return ctx.spark.createDataFrame(rows, schema)


# The whole data flow. "input:*" are the configured sources, "clean:*" ingest's validated frames;
# every other name is a Delta table. A stage reads only what it names.
# fmt: off
PIPELINE: tuple[Stage, ...] = (
    #      name          reads                                             writes
    Stage("ingest",     ("input:transactions", "input:customers", "input:events", "input:marketing_spend"),
                        (S.QUARANTINE,), stage_ingest),
    Stage("silver",     ("clean:transactions",),                           (S.ORDERS, S.CUSTOMER_DAYS),
                        stage_silver),
    Stage("features",   (S.ORDERS, "clean:customers", "clean:engagement"), (S.CUSTOMER_FEATURES, S.RFM_GRID),
                        stage_features),
    Stage("scores",     (S.CUSTOMER_DAYS, S.ORDERS),
                        (S.CLV_VALIDATION, S.CLV_FIT, S.CHURN_METRICS, S.CUSTOMER_SCORES), stage_scores),
    Stage("segments",   (S.CUSTOMER_FEATURES, S.CUSTOMER_SCORES, S.CLUSTER_PROFILES),
                        (S.CLUSTERING_SWEEP, S.CLUSTER_PROFILES, S.CUSTOMER_SEGMENTS), stage_segments),
    Stage("aggregates", (S.CUSTOMER_SEGMENTS, S.CUSTOMER_FEATURES, S.ORDERS, "clean:customers",
                         "clean:marketing_spend"),
                        (S.SEGMENT_KPIS, S.COHORT_RETENTION, S.LTV_CAC, S.SEGMENT_TRANSITIONS, S.DRIFT),
                        stage_aggregates),
)
REPORT = Stage("report", (*REPORT_TABLES, S.QUARANTINE, S.RUNS, S.REPORT_SUMMARY),
               (S.REPORT_SUMMARY, S.RECOMMENDATIONS), stage_report)
# fmt: on
# ``segspark <command>`` for a partial run stops after this stage
UPTO = {"ingest": "silver", "features": "features", "clv": "scores", "all": "aggregates"}
STAGES = tuple(UPTO)


def run(ctx: RunContext, *, upto: str = "all", cluster_mode: str = "fit") -> RunContext:
    """The pipeline: the declared stages in order, one commit per table; then the run's lineage row,
    then the report from the written tables.

    ``upto`` stops early (``ingest``: validate, quarantine and silver tables; ``features``: + feature
    table and RFM grid; ``clv``: + CLV and churn fits). ``cluster_mode``: ``fit`` refits the
    clustering (monthly job), ``score`` applies the registered model without refitting (weekly job).
    """
    if upto not in UPTO:
        raise ValueError(f"unknown stage {upto!r}")
    last = UPTO[upto]
    ctx.cluster_mode = cluster_mode
    with tracking.parent_run(ctx.settings, ctx.run_id, {"segspark.command": ctx.command}) as mlflow_id:
        ctx.mlflow_run_id = mlflow_id
        try:
            for stage in PIPELINE:
                with ctx.timed(f"stage_{stage.name}"):
                    stage.run(ctx)
                if stage.name == last:
                    break
        except BaseException as exc:
            record_run(ctx, "failed", f"{type(exc).__name__}: {exc}"[:2000])
            log.debug("run failed:\n%s", traceback.format_exc())
            ctx.release_cached()
            raise
        ctx.release_cached()
        record_run(ctx, "succeeded")
        if upto == "all" and ctx.settings.report.enabled:
            run_report(ctx)
    return ctx


def run_report(ctx: RunContext) -> None:
    """The report step, recorded as its own ``runs`` row (command ``report``) of the same run id."""
    report_ctx = dataclasses.replace(
        ctx, command="report", started=dt.datetime.now(dt.timezone.utc), outputs={}, timings={}, inputs={}
    )
    try:
        stage_report(report_ctx)
    except BaseException as exc:
        record_run(report_ctx, "failed", f"{type(exc).__name__}: {exc}"[:2000])
        raise
    ctx.report_dir = report_ctx.report_dir
    ctx.outputs.update(report_ctx.outputs)
    record_run(report_ctx, "succeeded")


def materialize(df: DataFrame) -> DataFrame:
    """Cache a customer-level frame read several times within a stage (the clustering's input).

    Over Spark Connect a local checkpoint keeps later requests small (the plan becomes a reference
    to the cached data). Classic sessions persist.
    """
    from segspark.io.delta_spark import is_remote

    if is_remote(df.sparkSession):
        return df.localCheckpoint(eager=True)
    return df.persist()


def _latest_date(ctx: RunContext, name: str) -> dt.date:
    if not ctx.lake.exists(name):
        raise InputError(f"no {name} table under {ctx.lake.target(name)}: run the pipeline first")
    if ctx.settings.as_of_date is not None:
        return ctx.settings.as_of_date
    row = ctx.lake.read_output(name).agg(F.max(S.AS_OF_DATE)).first()
    if row is None or row[0] is None:
        raise InputError(f"{name} is empty: run the pipeline first")
    return row[0]


def cluster_only(ctx: RunContext) -> RunContext:
    """Refit the clustering on the written ``customer_features`` and ``customer_scores`` of
    ``as_of_date`` (latest if unset): the segments stage alone, rewriting that date's segments."""
    with recorded(ctx):
        ctx.as_of_date = _latest_date(ctx, S.CUSTOMER_FEATURES)
        with tracking.parent_run(ctx.settings, ctx.run_id, {"segspark.command": "cluster"}) as mlflow_id:
            ctx.mlflow_run_id = mlflow_id
            ctx.cluster_mode = "fit"
            try:
                stage_segments(ctx)
            finally:
                ctx.release_cached()
    return ctx


def report_only(ctx: RunContext) -> RunContext:
    """Rebuild the report from the tables a run already wrote for ``as_of_date`` (latest if unset)."""
    with recorded(ctx):
        date = _latest_date(ctx, S.CUSTOMER_SEGMENTS)
        ctx.as_of_date = date
        row = (
            ctx.lake.read_output(S.CUSTOMER_SEGMENTS)
            .where(F.col(S.AS_OF_DATE) == F.lit(date))
            .select(S.RUN_ID)
            .first()
        )
        if row is not None:
            ctx.run_id = row[0]
        with tracking.parent_run(ctx.settings, ctx.run_id, {"segspark.command": "report"}) as mlflow_id:
            ctx.mlflow_run_id = mlflow_id
            stage_report(ctx)
    return ctx


def monitor(ctx: RunContext) -> DataFrame:
    """Drift of the latest customer_segments snapshot against the one before; writes ``drift``."""
    from segspark import drift

    with recorded(ctx):
        if not ctx.lake.exists(S.CUSTOMER_SEGMENTS):
            raise InputError("no customer_segments table yet: run the pipeline first")
        ctx.as_of_date = _latest_date(ctx, S.CUSTOMER_SEGMENTS)
        current = ctx.read(S.CUSTOMER_SEGMENTS)
        previous = ctx.lake.read_latest_snapshot(S.CUSTOMER_SEGMENTS, before=ctx.as_of_date)
        out = drift.segment_drift(current, previous, DRIFT_CATEGORICAL, DRIFT_NUMERIC)
        ctx.write(out, S.DRIFT)
    return out.where(F.col("bucket") == "__total__")


def erase(ctx: RunContext, source_ids: list[str]) -> dict[str, int]:
    """Right to erasure: delete the customers' rows from every output table holding customer keys
    (silver, snapshot and quarantine tables: each has ``customer_id``, the pseudonym after ingest).

    One delete commit per table; the files of earlier versions keep the rows until ``vacuum``
    removes them. Neither the ids nor their pseudonyms are logged or recorded.
    """
    import hashlib
    import hmac

    from segspark import privacy

    settings = ctx.settings
    deleted: dict[str, int] = {}
    with recorded(ctx):
        if settings.privacy.pseudonymize:
            key = privacy.resolve_key(settings.privacy, demo=False)
            keys = [hmac.new(key, i.strip().encode("utf-8"), hashlib.sha256).hexdigest() for i in source_ids]
        else:
            keys = [i.strip() for i in source_ids]
        for name in sorted(OUTPUT_TABLES):
            n = ctx.lake.delete_keys(name, S.CUSTOMER_ID, keys)
            if n:
                deleted[name] = n
                ctx.outputs[name] = ctx.lake.version(name)
    log.info(
        "erased %d customer key(s): %s; earlier table versions keep them until 'segspark vacuum' "
        "(lakehouse.vacuum_retention_hours=%s)",
        len(keys),
        deleted,
        settings.lakehouse.vacuum_retention_hours,
    )
    return deleted


def vacuum(ctx: RunContext, *, force: bool = False) -> dict[str, int]:
    """Delete from every output table the files its latest version does not reference and older
    than ``lakehouse.vacuum_retention_hours`` (what erasure needs to reach earlier versions, and
    the leftovers of crashed writes); returns files deleted per table.

    Below Delta's safety minimum of 168 h only with ``force`` (``ConfigError`` otherwise): a shorter
    retention deletes files that a running job or a reader of an older version may still need.
    """
    hours = ctx.settings.lakehouse.vacuum_retention_hours
    removed: dict[str, int] = {}
    with recorded(ctx):
        check_vacuum_retention(hours, force)
        if hours < MIN_SAFE_RETENTION_HOURS:
            ctx.warn(f"vacuum forced: {hours} h retention, under Delta's {MIN_SAFE_RETENTION_HOURS} h")
        for name in sorted(OUTPUT_TABLES):
            if not ctx.lake.exists(name):
                continue
            with ctx.timed(f"vacuum_{name}"):
                removed[name] = len(ctx.lake.vacuum(name, force=force))
            ctx.outputs[name] = ctx.lake.version(name)
    log.info("vacuum (retention %s h): %s files deleted", hours, sum(removed.values()))
    return removed
