"""Orchestration: read -> stages (pure DataFrame functions) -> write. The whole data flow on one screen."""

from __future__ import annotations

import contextlib
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
from pyspark.sql import types as T

import segspark
from segspark import generate as G
from segspark import schema as S
from segspark import tracking
from segspark.config import ClvConfig, Settings
from segspark.errors import InputError, SegsparkError
from segspark.io import InputInfo, Lakehouse
from segspark.session import get_spark
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
    cached: list[DataFrame] = field(default_factory=list)
    releases: list[Callable[[], None]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def cache(self, df: DataFrame) -> None:
        """Remember a persisted frame; ``run`` unpersists them all at the end."""
        self.cached.append(df)

    def write(self, df: DataFrame, name: str) -> None:
        assert self.as_of_date is not None, "as_of_date must be known before writing"
        with self.timed(f"write_{name}"):
            res = self.lake.write(df, name, run_id=self.run_id, as_of_date=self.as_of_date)
        self.outputs[name] = res.version
        log.info("wrote %s (version %s%s)", name, res.version, ", already committed" if res.skipped else "")

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Time a step (Spark is lazy: a table's write time includes computing it); logged and tracked."""
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.timings[step] = round(seconds, 3)
        log.info("%s took %.1f s", step, seconds)
        tracking.log_metrics({f"seconds_{step}": seconds})


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
        T.StructField("step_seconds", T.MapType(T.StringType(), T.DoubleType())),
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
        dict(ctx.timings),
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
@dataclass
class CleanInputs:
    """Validated, pseudonymous, minimized inputs (no PII past this point)."""

    transactions: DataFrame
    customers: DataFrame | None
    events: DataFrame | None
    marketing_spend: DataFrame | None


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


def stage_ingest(ctx: RunContext, frames: dict[str, DataFrame]) -> CleanInputs:
    """Conform, validate (quarantine or fail), reconcile, pseudonymize and minimize every input."""
    from segspark import ingest, privacy

    settings = ctx.settings
    key = privacy.resolve_key(settings.privacy, demo=ctx.demo) if settings.privacy.pseudonymize else None
    processing_ts = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    results = []
    clean: dict[str, DataFrame] = {}
    for name, raw in frames.items():
        mapping = getattr(settings.input, name).columns
        conformed = ingest.conform(raw, name, mapping)
        res = ingest.validate(conformed, name, settings.quality, processing_ts, key=key, privacy=settings.privacy)
        ingest.reconcile(res)
        stats = ctx.inputs[name]
        stats.rows_in, stats.rows_clean, stats.rows_quarantined = res.rows_in, res.rows_clean, res.rows_quarantined
        stats.by_rule = dict(res.by_rule)
        results.append(res)
        clean[name] = res.clean  # customer ids are already pseudonyms when a key is given
    ingest.log_summary(results)
    ctx.results["quality"] = [r.summary() for r in results]
    tracking.log_metrics(
        {f"quarantined_{r.table}_{rule}": n for r in results for rule, n in r.by_rule.items()}
        | {f"rows_in_{r.table}": r.rows_in for r in results}
    )
    ctx.as_of_date = ctx.settings.as_of_date or default_as_of(clean["transactions"])
    quarantine = None
    for res in results:
        quarantine = res.quarantine if quarantine is None else quarantine.unionByName(res.quarantine)
    assert quarantine is not None
    ctx.write(quarantine, S.QUARANTINE)  # written before a blocking rule stops the run, for diagnosis
    for res in results:
        ingest.raise_on_fail(res)
    customers = clean.get("customers")
    if customers is not None:
        customers = privacy.minimize(customers, settings.privacy, reference_date=ctx.as_of_date)
    return CleanInputs(
        transactions=clean["transactions"],
        customers=customers,
        events=clean.get("events"),
        marketing_spend=clean.get("marketing_spend"),
    )


LABEL_COLUMNS = ("r_score", "f_score", "m_score", "rfm_code", "rfm_segment", "lifecycle_stage")


def stage_features(ctx: RunContext, data: CleanInputs) -> DataFrame:
    """One row per customer (buyers and CRM prospects): RFM and behaviour features, RFM scores and
    segment, lifecycle stage, then engagement and demographics (after the stage adds prospects, so
    prospects get theirs too)."""
    from segspark import behaviour, features, lifecycle

    settings = ctx.settings
    as_of = ctx.as_of_date
    assert as_of is not None
    channels = settings.rfm.channels
    engagement = None
    if data.events is not None:
        # joined into the features here and read again by the KPIs: computed once
        engagement = behaviour.engagement_features(data.events, as_of).persist()
        ctx.cache(engagement)
    ctx.results["engagement"] = engagement
    buyers = (
        features.rfm_features(data.transactions, as_of, channels)
        .transform(behaviour.with_behaviour, behaviour.behaviour_features(data.transactions, as_of, channels))
        .persist()  # the score edges are their own job: do not compute the features twice
    )
    ctx.cache(buyers)
    edges = features.rfm_edges(buyers, settings.rfm)
    ctx.results["rfm_edges"] = edges
    tracking.log_dict(edges, "rfm/score_edges.json")
    return (
        buyers.transform(features.with_rfm_scores, settings.rfm, edges)
        .transform(features.with_rfm_segment, settings.rfm)
        .transform(lifecycle.with_lifecycle_stage, data.customers, as_of, settings.lifecycle)
        .transform(behaviour.with_engagement, engagement)
        .transform(behaviour.with_demographics, data.customers)
    )


PENALIZER_FALLBACK = (0.001, 0.01)
CLV_VALIDATION_SCHEMA = T.StructType(
    [
        T.StructField("view", T.StringType()),
        T.StructField("x", T.DoubleType()),
        T.StructField("label", T.StringType()),
        T.StructField("actual", T.DoubleType()),
        T.StructField("predicted", T.DoubleType()),
        T.StructField("customers", T.LongType()),
    ]
)


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
            rows.append(("frequency_histogram", float(i), str(r.repeat_purchases), num(r.actual), num(r.expected), None))
    by_freq = validation.get("holdout_by_frequency")
    if isinstance(by_freq, pd.DataFrame):
        for r in by_freq.itertuples(index=False):
            rows.append(("holdout_by_frequency", num(r.frequency), str(r.frequency), num(r.actual), num(r.predicted), int(r.customers)))
    return rows


def fit_clv(transactions: DataFrame, as_of: dt.date, cfg: ClvConfig) -> Any:
    """``clv.run_clv``; when the unpenalized fit does not converge (parameters running to a boundary,
    common on data that departs from the model), refit with small penalizers and record why."""
    from segspark import clv

    try:
        return clv.run_clv(transactions, as_of, cfg)
    except SegsparkError as exc:
        if cfg.penalizer > 0 or "did not converge" not in str(exc):
            raise
        first = exc
    for penalty in PENALIZER_FALLBACK:
        log.warning("clv: unpenalized fit did not converge; refitting with clv.penalizer=%s", penalty)
        try:
            res = clv.run_clv(transactions, as_of, cfg.model_copy(update={"penalizer": penalty}))
        except SegsparkError:
            continue
        res.fit["penalizer_fallback"] = f"unpenalized fit did not converge ({first}); used penalizer {penalty}"
        return res
    raise first


def stage_models(ctx: RunContext, data: CleanInputs) -> list[DataFrame]:
    """CLV and churn scores per customer (each a DataFrame keyed by customer_id), logged to MLflow."""
    from segspark import churn

    settings = ctx.settings
    assert ctx.as_of_date is not None
    scores: list[DataFrame] = []
    if settings.clv.enabled:
        with ctx.timed("clv_fit_and_score"):
            res = fit_clv(data.transactions, ctx.as_of_date, settings.clv)
        ctx.results["clv"] = {"fit": res.fit, "validation": res.validation}
        ctx.write(ctx.spark.createDataFrame(clv_validation_rows(res.validation), CLV_VALIDATION_SCHEMA), S.CLV_VALIDATION)
        tracking.log_metrics(res.metrics())
        tracking.log_figures(res.figures, "clv")
        scalars = {k: v for k, v in res.validation.items() if not isinstance(v, pd.DataFrame)}
        tracking.log_dict({"fit": res.fit, "validation": scalars}, "clv/fit.json")
        scores.append(res.customers)
    if settings.churn.enabled:
        try:
            with ctx.timed("churn_model"):
                cres = churn.run_churn(data.transactions, ctx.as_of_date, settings.churn)
        except InputError as exc:  # too little history or a one-sided label: skip, say why
            log.warning("churn model skipped: %s", exc)
            ctx.results["churn"] = {"skipped": str(exc)}
            return scores
        ctx.results["churn"] = cres.metrics
        tracking.log_metrics(cres.scalar_metrics())
        tracking.log_figures(cres.figures, "churn")
        scores.append(cres.customers)
    return scores


def previous_profiles(ctx: RunContext) -> pd.DataFrame | None:
    """The previous run's cluster profiles (a few rows), for stable persona names."""
    assert ctx.as_of_date is not None
    prev = ctx.lake.read_latest_snapshot(S.CLUSTER_PROFILES, before=ctx.as_of_date + dt.timedelta(days=1))
    if prev is None:
        return None
    return prev.where(F.col(S.RUN_ID) != F.lit(ctx.run_id)).toPandas()  # a profile row per cluster


def stage_clusters(ctx: RunContext, table: DataFrame) -> DataFrame | None:
    """Sweep, choose, fit and name clusters on buyers; returns customer_id, cluster_id, persona."""
    from segspark.clustering import fit_segments
    from segspark.clustering.tracking import log_to_mlflow

    settings = ctx.settings
    if not settings.clustering.enabled:
        return None
    buyers = table.where(F.col("frequency") > 0)
    with ctx.timed("clustering_fit"):
        # buyers filter the materialized model table: fit_segments need not cache them again
        result = fit_segments(buyers, settings.clustering, previous_profiles(ctx), input_cached=True)
    ctx.results["clustering"] = {"chosen": result.chosen, "sweep": result.sweep, "profiles": result.profiles}
    if settings.tracking.enabled:
        inputs = {n: f"{s.info.location}@{s.info.version}" for n, s in ctx.inputs.items()}
        logged = log_to_mlflow(
            result, settings.tracking, settings.tracking_uri, input_tables=inputs, alias=settings.clustering.model_alias
        )
        ctx.results["clustering"]["model_uri"] = logged.get("model_uri")
    ctx.releases.append(result.release)  # its assignments stay cached until customer_segments is written
    profiles = ctx.spark.createDataFrame(result.profiles.astype(object).where(result.profiles.notna(), None))
    ctx.write(profiles, S.CLUSTER_PROFILES)
    return result.assignments


SEGMENT_COLUMNS = (
    "r_score", "f_score", "m_score", "rfm_code", "rfm_segment", "lifecycle_stage",
    "cluster_id", "persona", "p_alive", "expected_purchases", "expected_avg_value", "clv", "value_tier",
    "churn_risk", "churn_band", "recency_days", "frequency", "monetary", "avg_order_value", "tenure_days",
    "acquisition_channel",
)


def assemble_segments(segmented: DataFrame, extras: list[DataFrame]) -> DataFrame:
    """customer_segments: one row per customer with every segment label and score (all keyed by id)."""
    out = segmented
    for extra in extras:
        out = out.join(extra, on=S.CUSTOMER_ID, how="left")
    present = [c for c in SEGMENT_COLUMNS if c in out.columns]
    return out.select(S.CUSTOMER_ID, *present)


DRIFT_CATEGORICAL = ("rfm_segment", "lifecycle_stage", "persona", "value_tier", "churn_band")
DRIFT_NUMERIC = ("recency_days", "frequency", "monetary", "clv", "churn_risk")


def stage_tables(ctx: RunContext, data: CleanInputs, segments: DataFrame, engagement: DataFrame | None) -> None:
    """KPIs, cohorts, LTV:CAC, transitions and drift: aggregate tables for BI."""
    from segspark import cohorts, drift, kpis, lifecycle, ltv_cac

    assert ctx.as_of_date is not None
    previous = ctx.lake.read_latest_snapshot(S.CUSTOMER_SEGMENTS, before=ctx.as_of_date)
    ctx.write(kpis.segment_kpis(segments, engagement), S.SEGMENT_KPIS)
    ctx.write(cohorts.cohort_retention(data.transactions, data.customers, ctx.as_of_date), S.COHORT_RETENTION)
    ctx.write(
        ltv_cac.ltv_cac(
            data.transactions, data.customers, data.marketing_spend, segments, ctx.as_of_date,
            ctx.settings.kpis.ltv_window_months,
        ),
        S.LTV_CAC,
    )
    ctx.write(lifecycle.segment_transitions(segments, previous), S.SEGMENT_TRANSITIONS)
    ctx.write(drift.segment_drift(segments, previous, DRIFT_CATEGORICAL, DRIFT_NUMERIC), S.DRIFT)


STAGES = ("ingest", "features", "clv", "all")


def run(ctx: RunContext, *, upto: str = "all", cluster_mode: str = "fit") -> RunContext:
    """The pipeline: ingest, features, segments, models, KPIs, report; one commit per table.

    ``upto`` stops after a stage (``ingest``: validate and quarantine only; ``features``: + feature
    table and RFM grid; ``clv``: + CLV and churn fits). ``cluster_mode``: ``fit`` refits the
    clustering (monthly job), ``score`` applies the registered model without refitting (weekly job).
    """
    if upto not in STAGES:
        raise ValueError(f"unknown stage {upto!r}")
    settings = ctx.settings
    with tracking.parent_run(settings, ctx.run_id, {"segspark.command": ctx.command}) as mlflow_id:
        ctx.mlflow_run_id = mlflow_id
        cached: list[DataFrame] = []
        try:
            frames = read_inputs(ctx)
            with ctx.timed("ingest_validate"):
                data = stage_ingest(ctx, frames)
            tracking.log_input_lineage(
                [
                    {"name": s.info.name, "location": s.info.location, "version": s.info.version, "rows": s.rows_in}
                    for s in ctx.inputs.values()
                ]
            )
            if upto != "ingest":
                data.transactions = data.transactions.persist()
                cached.append(data.transactions)
                cached += _analyse(ctx, data, upto, cluster_mode)
        except BaseException as exc:
            record_run(ctx, "failed", f"{type(exc).__name__}: {exc}"[:2000])
            log.debug("run failed:\n%s", traceback.format_exc())
            raise
        finally:
            for df in [*cached, *ctx.cached]:
                df.unpersist()
            for release in ctx.releases:
                release()
            ctx.cached.clear()
            ctx.releases.clear()
        record_run(ctx, "succeeded")
    return ctx


def materialize(df: DataFrame) -> DataFrame:
    """Cache a customer-level frame reused by several stages.

    Over Spark Connect the whole logical plan travels with every request, and the plans of later
    stages (features joined with CLV, churn and clusters) outgrow the protocol's nesting limit: a
    local checkpoint cuts the plan to a reference to the cached data. Classic sessions persist.
    """
    from segspark.io.delta_spark import is_remote

    if is_remote(df.sparkSession):
        return df.localCheckpoint(eager=True)
    return df.persist()


def cut_plan(df: DataFrame) -> DataFrame:
    """A frame read once (by its own write): over Spark Connect, checkpointed so the request stays
    under the protocol's nesting limit (see :func:`materialize`); a classic session needs no cache."""
    from segspark.io.delta_spark import is_remote

    return df.localCheckpoint(eager=True) if is_remote(df.sparkSession) else df


def _analyse(ctx: RunContext, data: CleanInputs, upto: str, cluster_mode: str) -> list[DataFrame]:
    """Everything after ingest; returns the frames it cached (the caller releases them)."""
    from segspark import features

    segmented = materialize(stage_features(ctx, data))
    ctx.write(segmented.drop(*LABEL_COLUMNS), S.CUSTOMER_FEATURES)
    ctx.write(features.rfm_grid(segmented.where(F.col("r_score").isNotNull())), S.RFM_GRID)
    if upto == "features":
        return [segmented]
    extras = stage_models(ctx, data)
    if upto == "clv":
        return [segmented]
    model_table = segmented
    for extra in extras:
        model_table = model_table.join(extra, on=S.CUSTOMER_ID, how="left")
    if extras:
        model_table = materialize(model_table)
        ctx.cache(model_table)
    assignments = stage_clusters(ctx, model_table) if cluster_mode == "fit" else stage_score(ctx, model_table)
    if assignments is not None:
        extras.append(assignments)
    # written once, then read back as the committed snapshot: nothing reuses the frame itself
    segments = cut_plan(assemble_segments(segmented, extras))
    ctx.write(segments, S.CUSTOMER_SEGMENTS)
    # The aggregate tables read the committed snapshot back: its plan is one file scan, where the
    # cached frame's plan carries the whole lineage (features, CLV, churn, clusters), which Spark
    # re-optimizes and re-renders inside every query that reads it; the LTV:CAC plan reached 65M
    # characters and took 24 s at 600 customers. It is also exactly what BI tools will read.
    assert ctx.as_of_date is not None
    written = ctx.lake.read_snapshot(S.CUSTOMER_SEGMENTS, ctx.as_of_date)
    stage_tables(ctx, data, written, ctx.results.get("engagement"))
    stage_report(ctx)
    return [segmented, segments]


def stage_score(ctx: RunContext, table: DataFrame) -> DataFrame | None:
    """Assign clusters and personas with the registered model, without refitting (weekly scoring)."""
    from segspark.clustering.tracking import score_segments

    settings = ctx.settings
    if not settings.clustering.enabled:
        return None
    buyers = table.where(F.col("frequency") > 0)
    return score_segments(
        buyers, settings.tracking.registered_model, tracking_uri=settings.tracking_uri, alias=settings.clustering.model_alias
    )


def _latest_date(ctx: RunContext, name: str) -> dt.date:
    if not ctx.lake.exists(name):
        raise InputError(f"no {name} table under {ctx.lake.target(name)}: run the pipeline first")
    if ctx.settings.as_of_date is not None:
        return ctx.settings.as_of_date
    row = ctx.lake.read_output(name).agg(F.max(S.AS_OF_DATE)).first()
    if row is None or row[0] is None:
        raise InputError(f"{name} is empty: run the pipeline first")
    return row[0]  # type: ignore[no-any-return]


def cluster_only(ctx: RunContext) -> RunContext:
    """Refit the clustering on the written feature and segment tables of ``as_of_date`` (latest if
    unset), then rewrite that date's ``customer_segments`` with the new clusters and personas."""
    ctx.as_of_date = _latest_date(ctx, S.CUSTOMER_SEGMENTS)
    day = F.col(S.AS_OF_DATE) == F.lit(ctx.as_of_date)
    feats = ctx.lake.read_output(S.CUSTOMER_FEATURES).where(day).drop(S.RUN_ID, S.AS_OF_DATE)
    segs = ctx.lake.read_output(S.CUSTOMER_SEGMENTS).where(day).drop(S.RUN_ID, S.AS_OF_DATE, "cluster_id", "persona")
    scores = [c for c in ("p_alive", "expected_purchases", "clv", "churn_risk") if c in segs.columns]
    table = materialize(feats.join(segs.select(S.CUSTOMER_ID, *scores), on=S.CUSTOMER_ID, how="left"))
    with tracking.parent_run(ctx.settings, ctx.run_id, {"segspark.command": "cluster"}) as mlflow_id:
        ctx.mlflow_run_id = mlflow_id
        try:
            assignments = stage_clusters(ctx, table)
            if assignments is not None:
                segments = segs.join(assignments, on=S.CUSTOMER_ID, how="left").persist()
                ctx.write(assemble_segments(segments, []), S.CUSTOMER_SEGMENTS)
                segments.unpersist()
        finally:
            for release in ctx.releases:
                release()
            ctx.releases.clear()
            table.unpersist()
        record_run(ctx, "succeeded")
    return ctx


def report_only(ctx: RunContext) -> RunContext:
    """Rebuild the report from the tables a run already wrote for ``as_of_date`` (latest if unset)."""
    date = _latest_date(ctx, S.CUSTOMER_SEGMENTS)
    ctx.as_of_date = date
    last = (
        ctx.lake.read_output(S.CUSTOMER_SEGMENTS)
        .where(F.col(S.AS_OF_DATE) == F.lit(date))
        .select(S.RUN_ID)
        .first()
    )
    if last is not None:
        ctx.run_id = last[0]
    for name in S.SNAPSHOT_TABLES | {S.QUARANTINE}:
        if ctx.lake.exists(name):
            ctx.outputs[name] = None
    with tracking.parent_run(ctx.settings, ctx.run_id, {"segspark.command": "report"}):
        stage_report(ctx)
    return ctx


def monitor(ctx: RunContext) -> DataFrame:
    """Drift of the latest customer_segments snapshot against the one before; writes ``drift``."""
    from segspark import drift

    if not ctx.lake.exists(S.CUSTOMER_SEGMENTS):
        raise InputError("no customer_segments table yet: run the pipeline first")
    seg = ctx.lake.read_output(S.CUSTOMER_SEGMENTS)
    dates = [r[0] for r in seg.select(S.AS_OF_DATE).distinct().orderBy(F.col(S.AS_OF_DATE).desc()).limit(2).collect()]
    ctx.as_of_date = ctx.settings.as_of_date or dates[0]
    current = seg.where(F.col(S.AS_OF_DATE) == F.lit(ctx.as_of_date))
    previous = ctx.lake.read_latest_snapshot(S.CUSTOMER_SEGMENTS, before=ctx.as_of_date)
    out = drift.segment_drift(current, previous, DRIFT_CATEGORICAL, DRIFT_NUMERIC)
    ctx.write(out, S.DRIFT)
    return out.where(F.col("bucket") == "__total__")


def erase(ctx: RunContext, source_ids: list[str]) -> dict[str, int]:
    """Right to erasure: delete the customers' rows from every output table holding customer keys."""
    import hashlib
    import hmac

    from segspark import privacy

    settings = ctx.settings
    if settings.privacy.pseudonymize:
        key = privacy.resolve_key(settings.privacy, demo=False)
        keys = [hmac.new(key, i.strip().encode("utf-8"), hashlib.sha256).hexdigest() for i in source_ids]
    else:
        keys = [i.strip() for i in source_ids]
    deleted: dict[str, int] = {}
    for name in sorted(S.SNAPSHOT_TABLES | S.APPEND_TABLES):
        n = ctx.lake.delete_keys(name, S.CUSTOMER_ID, keys)
        if n:
            deleted[name] = n
    log.info("erased %d customer key(s): %s; run 'vacuum' (retention %sh) to purge old file versions",
             len(keys), deleted, settings.lakehouse.vacuum_retention_hours)
    return deleted


def stage_report(ctx: RunContext) -> None:
    """The stakeholder report and its BI tables (report_summary, recommendations)."""
    if not ctx.settings.report.enabled:
        return
    from segspark.report import build_report

    names = [
        S.CUSTOMER_SEGMENTS, S.SEGMENT_KPIS, S.RFM_GRID, S.COHORT_RETENTION, S.LTV_CAC,
        S.SEGMENT_TRANSITIONS, S.DRIFT, S.QUARANTINE, S.CLUSTER_PROFILES,
    ]
    assert ctx.as_of_date is not None
    tables = {}
    for name in names:
        if name in ctx.outputs:
            df = ctx.lake.read_output(name)
            tables[name] = df.where(F.col(S.RUN_ID) == F.lit(ctx.run_id)) if name == S.QUARANTINE else df.where(
                F.col(S.AS_OF_DATE) == F.lit(ctx.as_of_date)
            )
    previous = ctx.lake.read_latest_snapshot(S.REPORT_SUMMARY, before=ctx.as_of_date)
    if previous is not None:
        tables["previous_report_summary"] = previous
    out_dir = Path(ctx.settings.output.path).resolve() / "reports"
    with ctx.timed("report_build"):
        result = build_report(ctx, tables, out_dir, ctx.settings)
    ctx.results["report_dir"] = str(Path(result.html_path).parent)
    ctx.write(ctx.spark.createDataFrame(result.summary), S.REPORT_SUMMARY)
    ctx.write(ctx.spark.createDataFrame(result.recommendations), S.RECOMMENDATIONS)
    tracking.log_artifacts(Path(result.html_path).parent, "report")
