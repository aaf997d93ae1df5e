"""The pipeline: a declared list of stages, and the runner that executes the declaration.

Each stage is a node: it names what it reads (``input:<name>`` a configured source, ``clean:<name>``
ingest's validated frame (``clean:orders``: the transactions grouped into orders as they are validated),
``previous:<table>`` the latest snapshot of a table before the run's date, ``earlier:<table>`` a
table as earlier runs left it (what a ``reuse`` refresh stands on: ``segspark.refresh``),
any other name a Delta table of this run) and what it writes (Delta tables, or ``clean:<name>`` for
ingest). The runner hands each stage a ``StageIO`` that reads and writes exactly that (schema check,
commit, timing and MLflow metrics through the lakehouse and the run context) and raises
``WiringError`` on anything else. Every command that runs stages is a selection of ``PIPELINE``
(``SELECTIONS``). docs/architecture.md draws the list and says where to add a stage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark.sql import functions as F

from segspark import refresh, tables, tracking
from segspark import schema as S
from segspark.clv.validation_rows import clv_validation_rows
from segspark.context import (
    CleanInputs,
    InputStats,
    RunContext,
    declared_frame,
    latest_date,
    materialize,
    record_failed,
    record_run,
    recorded,
)
from segspark.errors import DataQualityError, InputError
from segspark.io import InputInfo, storage
from segspark.session import finalizers_at_safe_points, scale_shuffle_partitions, sizes_shuffle_partitions

if TYPE_CHECKING:
    import contextlib

    from pyspark.sql import DataFrame, SparkSession

    from segspark.config import Settings
    from segspark.ingest.result import IngestResult
    from segspark.refresh import Decision

log = logging.getLogger(__name__)

INPUTS = ("transactions", "customers", "events", "marketing_spend")


class WiringError(RuntimeError):
    """A stage read or wrote what its declaration in ``PIPELINE`` does not name: a bug in segspark."""


@dataclass(frozen=True)
class Stage:
    """One node of the pipeline: what it reads, what it writes, and its body."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    run: Callable[[StageIO], None]
    own_runs_row: bool = False  # recorded as its own ``runs`` row (the report), after the others'


class StageIO:
    """What one stage may touch: the run's settings, session and lineage, and exactly the tables,
    sources and clean frames its declaration names; anything else raises ``WiringError``."""

    def __init__(self, ctx: RunContext, stage: Stage) -> None:
        self._ctx = ctx
        self.stage = stage
        self.written: set[str] = set()

    # -- the declared reads and writes
    def _allowed(self, item: str, declared: tuple[str, ...], verb: str) -> None:
        if item not in declared:
            raise WiringError(
                f"stage '{self.stage.name}' {verb} '{item}', which its declaration does not name "
                f"(segspark.pipeline.PIPELINE: reads {list(self.stage.reads)}, "
                f"writes {list(self.stage.writes)})"
            )

    def read(self, name: str) -> DataFrame:
        """A Delta table of this run (its ``as_of_date`` snapshot, or the whole silver table)."""
        # a table the stage wrote itself it may read back; ``earlier:<name>``: as earlier runs left it
        if name not in self.written and f"earlier:{name}" not in self.stage.reads:
            self._allowed(name, self.stage.reads, "reads")
        return self._ctx.read(name)

    def read_if_exists(self, name: str) -> DataFrame | None:
        """The run's snapshot of ``name``, or None when the table was never written."""
        self._allowed(name, self.stage.reads, "reads")
        lake, as_of = self._ctx.lake, self._ctx.as_of_date
        assert as_of is not None
        return lake.read_snapshot(name, as_of) if lake.exists(name) else None

    def run_rows(self, name: str) -> DataFrame | None:
        """The rows of table ``name`` (runs, quarantine) this run id wrote; None without the table."""
        self._allowed(name, self.stage.reads, "reads")
        lake = self._ctx.lake
        if not lake.exists(name):
            return None
        return lake.read_output(name).where(F.col(S.RUN_ID) == F.lit(self._ctx.run_id))

    def previous(self, name: str) -> DataFrame | None:
        """The latest snapshot of ``name`` strictly before this run's date (None if there is none)."""
        self._allowed(f"previous:{name}", self.stage.reads, "reads")
        assert self._ctx.as_of_date is not None
        return self._ctx.lake.read_latest_snapshot(name, before=self._ctx.as_of_date)

    def input_configured(self, name: str) -> bool:
        return self._ctx.lake.input_configured(name)

    def input(self, name: str) -> tuple[DataFrame, InputInfo]:
        """A configured source, as read (``input:<name>``)."""
        self._allowed(f"input:{name}", self.stage.reads, "reads")
        return self._ctx.lake.read_input(name)

    def logged_input_rows(self, name: str) -> int | None:
        """The rows of ``input:<name>``, as read, from its Delta log (None: not known without a count)."""
        self._allowed(f"input:{name}", self.stage.reads, "reads")
        info = self._ctx.inputs.get(name)
        return self._ctx.lake.logged_input_rows(name, info.info.version if info is not None else None)

    def input_files(self, name: str, files: list[str]) -> DataFrame:
        """Only ``files`` of a configured Parquet or CSV source (``input:<name>``)."""
        self._allowed(f"input:{name}", self.stage.reads, "reads")
        return self._ctx.lake.read_input_files(name, files)

    def has_earlier(self, name: str) -> bool:
        """Whether earlier runs left table ``name`` (``earlier:<name>``)."""
        self._allowed(f"earlier:{name}", self.stage.reads, "reads")
        return self._ctx.lake.exists(name)

    def earlier(self, name: str, stamped: bool = False) -> DataFrame:
        """Table ``name`` whole, as earlier runs left it (``earlier:<name>``), without stamp columns
        (``stamped``: with them): its version now, pinned, so a frame derived from it means the same
        after this run commits to the table (Delta's Spark engine recomputes cached frames over a
        table it writes)."""
        self._allowed(f"earlier:{name}", self.stage.reads, "reads")
        lake = self._ctx.lake
        df = lake.read_output(name, version=lake.version(name))
        return df if stamped else df.drop(S.RUN_ID, S.AS_OF_DATE)

    def clean(self, name: str) -> DataFrame | None:
        """Ingest's validated frame ``clean:<name>`` (None when the input is not configured)."""
        self._allowed(f"clean:{name}", self.stage.reads, "reads")
        clean = self._ctx.clean
        return None if clean is None else getattr(clean, name)

    def clean_is_batch(self) -> bool:
        """``clean:orders`` are an incremental refresh's batch of new lines' orders (merged, not written)."""
        self._allowed("clean:orders", self.stage.reads, "reads")
        return self._ctx.clean is not None and self._ctx.clean.orders_batch

    def output_version(self, name: str) -> int | None:
        """The version this run committed of a table it wrote."""
        return self._ctx.outputs.get(name)

    def release_clean(self, name: str) -> None:
        """Drop the cache behind ``clean:<name>`` once this stage, its last reader, has written."""
        self._allowed(f"clean:{name}", self.stage.reads, "reads")
        if self._ctx.clean is not None:
            self._ctx.clean.release(name)

    def provide_clean(self, clean: CleanInputs) -> None:
        """Ingest's validated frames, for the stages that declare ``clean:<name>`` reads."""
        for f in dataclasses.fields(CleanInputs):
            if f.name not in ("releases", "orders_batch") and getattr(clean, f.name) is not None:
                self._allowed(f"clean:{f.name}", self.stage.writes, "writes")
        self._ctx.clean = clean

    def write(self, df: DataFrame, name: str) -> None:
        """Commit table ``name`` (schema check, one commit, timed) for this run and date."""
        self._allowed(name, self.stage.writes, "writes")
        self._ctx.write(df, name)
        self.written.add(name)

    def merge(self, df: DataFrame, name: str, keys: list[str], delete_column: str | None = None) -> None:
        """MERGE ``df`` into table ``name`` by ``keys`` in one commit (``Lakehouse.merge``)."""
        self._allowed(name, self.stage.writes, "writes")
        self._ctx.merge(df, name, keys, delete_column)
        self.written.add(name)

    # -- the run's own facts (not tables)
    @property
    def settings(self) -> Settings:
        return self._ctx.settings

    @property
    def spark(self) -> SparkSession:
        return self._ctx.spark

    @property
    def run_id(self) -> str:
        return self._ctx.run_id

    @property
    def command(self) -> str:
        return self._ctx.command

    @property
    def demo(self) -> bool:
        return self._ctx.demo

    @property
    def cluster_mode(self) -> str:
        return self._ctx.cluster_mode

    @property
    def resolved_model(self) -> tuple[str, str | None] | None:
        return self._ctx.resolved_model

    @property
    def inputs(self) -> dict[str, InputStats]:
        return self._ctx.inputs

    @property
    def as_of_date(self) -> dt.date | None:
        return self._ctx.as_of_date

    @as_of_date.setter
    def as_of_date(self, value: dt.date) -> None:  # ingest sets it (the setting, or the last order)
        self._ctx.as_of_date = value

    @property
    def refresh(self) -> Decision | None:
        return self._ctx.refresh

    def reused_transactions(self) -> IngestResult | None:
        """A ``reuse`` or ``incremental`` refresh's transactions as the run that wrote ``orders``
        validated them (``refresh.reused_transactions``: its counts and its quarantine rows); None
        otherwise."""
        decision = self._ctx.refresh
        if decision is None or decision.mode not in ("reuse", "incremental"):
            return None
        self._allowed(f"earlier:{S.QUARANTINE}", self.stage.reads, "reads")
        return refresh.reused_transactions(self._ctx.lake, decision, self._ctx.settings.privacy.pseudonymize)

    @property
    def quality(self) -> list[dict[str, Any]]:
        return self._ctx.quality

    @quality.setter
    def quality(self, value: list[dict[str, Any]]) -> None:
        self._ctx.quality = value

    @property
    def report_dir(self) -> str | None:
        return self._ctx.report_dir

    @report_dir.setter
    def report_dir(self, value: str) -> None:
        self._ctx.report_dir = value

    @property
    def releases(self) -> list[Callable[[], None]]:
        return self._ctx.releases

    def warn(self, message: str) -> None:
        self._ctx.warn(message)

    def choose(self, key: str, value: object) -> None:
        self._ctx.choose(key, value)

    def cache(self, df: DataFrame) -> DataFrame:
        return self._ctx.cache(df)

    def timed(self, step: str) -> contextlib.AbstractContextManager[None]:
        return self._ctx.timed(step)


# ---- the stages ----------------------------------------------------------------------------------
def read_inputs(io: StageIO, reused: bool) -> dict[str, DataFrame]:
    """The configured inputs, as read; ``reused``: not the transactions (their orders stand)."""
    frames: dict[str, DataFrame] = {}
    for name in INPUTS:
        if reused and name == "transactions":
            tx = io.settings.input.transactions
            version = io.refresh.inputs[name].version if io.refresh is not None else None
            io.inputs[name] = InputStats(info=InputInfo(name, tx.location, tx.format, version))
            continue
        if name != "transactions" and not io.input_configured(name):
            log.info("input %s not configured: stages that use it are skipped", name)
            continue
        df, info = io.input(name)
        frames[name] = df
        io.inputs[name] = InputStats(info=info)
    return frames


def size_shuffle_partitions(
    io: StageIO, frames: dict[str, DataFrame], known: int = 0, batch: bool = False
) -> None:
    """The largest input sets the shuffle partitions of the run, when the job sizes them (a count
    job per input spared otherwise): a Delta path input's rows from its log, other inputs' counted
    (no column is read), and so are the transactions when only a ``batch`` of new files was read;
    ``known``: rows of an input not read."""
    scaled = None
    if sizes_shuffle_partitions(io.settings.spark):

        def rows(name: str, df: DataFrame) -> int:
            logged = None if batch and name == "transactions" else io.logged_input_rows(name)
            return df.count() if logged is None else logged

        largest = max([known, *(rows(name, df) for name, df in frames.items())])
        scaled = scale_shuffle_partitions(io.spark, io.settings.spark, largest)
    io.choose("spark.shuffle_partitions", scaled or io.spark.conf.get("spark.sql.shuffle.partitions"))


def stage_ingest(io: StageIO) -> None:
    """Conform, validate (quarantine or fail), reconcile, pseudonymize and minimize every input."""
    from segspark import ingest, privacy

    settings = io.settings
    reused = io.reused_transactions()  # ``reuse``: the orders stand; ``incremental``: new lines added
    batch = io.refresh.new_files if io.refresh is not None and io.refresh.mode == "incremental" else ()
    frames = read_inputs(io, reused is not None)
    if batch:  # only the new files' lines are validated (the whole input is read for its amounts)
        frames = {"transactions": io.input_files("transactions", list(batch)), **frames}
    size_shuffle_partitions(io, frames, reused.rows_in if reused is not None else 0, bool(batch))
    key = privacy.resolve_key(settings.privacy, demo=io.demo) if settings.privacy.pseudonymize else None
    processing_ts = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    mappings = {name: getattr(settings.input, name).columns for name in INPUTS}
    # ``erased``: customers ``segspark erase`` removed stay out (their rows up to the erasure), on
    # the whole history and on new files alike
    validate = functools.partial(
        ingest.validate_inputs, cfg=settings.quality, processing_ts=processing_ts, held=io.releases, key=key,
        privacy=settings.privacy, erased=io.earlier(S.ERASURES) if io.has_earlier(S.ERASURES) else None,
    )  # fmt: skip
    past = _history(io, frames["transactions"], mappings["transactions"]) if batch else None
    validated = validate(frames, mappings, history={"transactions": past} if past is not None else None)
    if reused is not None and past is not None:  # the batch, or the whole history after all
        validated = _with_batch(
            io, validated, reused, past, lambda df: validate({"transactions": df}, mappings)
        )
        reused = None
    for res in validated:
        ingest.reconcile(res)
    results = validated if reused is None else [reused, *validated]
    # the transactions go on as orders; customer ids are already pseudonyms when a key is given
    clean = {r.table: r.clean for r in validated if r.table != "transactions" and r.clean is not None}
    for res in results:  # each input's counts, for its runs row
        stats = io.inputs[res.table]
        stats.rows_in, stats.rows_clean = res.rows_in, res.rows_clean
        stats.rows_quarantined, stats.by_rule = res.rows_quarantined, dict(res.by_rule)
    _log_ingest(io, results)
    tx = results[0]  # transactions: read first, always there
    last = tx.last_clean_ts
    if reused is None:  # the bound this run judged the whole input by (an incremental refresh compares)
        io.choose(refresh.OUTLIER_BOUND, "none" if tx.outlier_bound is None else repr(tx.outlier_bound))
    if last is not None:  # what a later ``reuse`` refresh takes for the default as_of_date
        io.choose(refresh.DATA_DATE, last.date())
    as_of = io.settings.as_of_date or (last.date() if last is not None else None)
    # with no clean order the quarantine is still written (stamped with today), for diagnosis
    run_date = as_of or processing_ts.date()
    io.as_of_date = run_date
    quarantine = None
    for res in results:
        quarantine = res.quarantine if quarantine is None else quarantine.unionByName(res.quarantine)
    assert quarantine is not None
    io.write(quarantine, S.QUARANTINE)  # written before a blocking rule stops the run, for diagnosis
    if io.refresh is not None:  # what this run took of each input: the next run compares
        io.write(refresh.manifest_frame(io.spark, io.refresh.inputs), S.INPUT_MANIFEST)
    for res in results:
        ingest.raise_on_fail(res)
    for res in results:
        ingest.check_quarantine_share(res, settings.quality.max_quarantine_share)
    _require_clean_orders(io.inputs["transactions"])
    customers = clean.get("customers")
    if customers is not None:
        customers = privacy.minimize(customers, settings.privacy, reference_date=run_date)
    provided = CleanInputs(
        orders=tx.orders,
        orders_batch=bool(batch) and io.refresh is not None and io.refresh.mode == "incremental",
        customers=customers,
        events=clean.get("events"),
        marketing_spend=clean.get("marketing_spend"),
        releases={("orders" if r.table == "transactions" else r.table): r.release for r in results},
    )
    events = clean.get("events")
    if events is not None:
        from segspark import behaviour

        # summarized now, while the events are cached, then released: one row per customer stays
        engagement = io.cache(materialize(behaviour.engagement_features(events, run_date)))
        engagement.count()
        provided.engagement = engagement
        provided.release("events")
        provided.events = None
    io.provide_clean(provided)


def _history(io: StageIO, batch: DataFrame, mapping: Mapping[str, str]) -> Any:
    """An incremental refresh's ``ingest.History``: the whole transactions input and the batch
    (conformed), and the clean line hashes of the earlier orders the batch's order ids touch."""
    from segspark import ingest

    whole, _ = io.input("transactions")
    conformed = ingest.conform(whole, "transactions", mapping)
    return ingest.history(conformed, ingest.conform(batch, "transactions", mapping), io.earlier(S.ORDERS))


def _with_batch(
    io: StageIO,
    validated: list[Any],
    carried: Any,
    past: Any,
    validate_whole: Callable[[DataFrame], list[Any]],
) -> list[Any]:
    """The validated inputs with the transactions as the whole input's: the earlier run's plus the
    batch's (``ingest.combined``), or, when the batch does not give what a full refresh gives
    (``ingest.why_full``), the whole input validated, with the reason recorded."""
    from segspark import ingest

    cfg, decision = io.settings.quality, io.refresh
    assert decision is not None and decision.source is not None
    recorded = decision.source.choices.get(refresh.OUTLIER_BOUND, "none")
    before = None if recorded == "none" else float(recorded)
    rates = ingest.base_rates(cfg, None)
    amounts = (
        ingest.transaction_amounts(past.whole, cfg, rates),
        ingest.transaction_amounts(past.batch, cfg, rates),
    )
    why = ingest.why_full(validated[0], past.earlier, carried.quarantine, amounts, cfg, before)
    if why is None:
        io.choose(refresh.NEW_FILES, len(decision.new_files))
        io.choose(refresh.NEW_ROWS, validated[0].rows_in)
        return [ingest.combined(carried, validated[0]), *validated[1:]]
    validated[0].release()  # the whole history after all, as a full refresh: said, with its reason
    _refresh_fully(io, why)
    whole, _ = io.input("transactions")
    return [*validate_whole(whole), *validated[1:]]


def _refresh_fully(io: StageIO, why: str) -> None:
    """An incremental refresh that falls back to the whole history: its decision and reason change."""
    decision = io.refresh
    assert decision is not None
    decision.mode, decision.reason = "full", f"{decision.reason}, but {why}"
    io.choose("refresh", f"full: {decision.reason}")
    if io.settings.refresh == "incremental":
        io.warn(f"refresh: incremental asked, the whole history refreshed ({decision.reason})")


def _log_ingest(io: StageIO, results: list[Any]) -> None:
    """Each input's reconciliation: logged, kept for the CLI's summary, and tracked with the lineage."""
    from segspark import ingest

    ingest.log_summary(results)
    io.quality = [r.summary() for r in results]
    tracking.log_metrics(
        {f"quarantined_{r.table}_{rule}": float(n) for r in results for rule, n in r.by_rule.items()}
        | {f"rows_in_{r.table}": float(r.rows_in) for r in results}
    )
    tracking.log_input_lineage(
        [
            {"name": s.info.name, "location": s.info.location, "version": s.info.version, "rows": s.rows_in}
            for s in io.inputs.values()
        ]
    )


def _require_clean_orders(tx: InputStats) -> None:
    """Nothing to segment without a clean order (also when as_of_date is set): say why."""
    if tx.rows_clean > 0:
        return
    if tx.rows_in == 0:
        raise InputError(f"input 'transactions': no rows at {tx.info.location} (input.transactions.path)")
    raise DataQualityError(
        f"table 'transactions': no clean order among {tx.rows_in} rows (quarantined: "
        + (", ".join(f"{r}={n}" for r, n in tx.by_rule.items()) or "none")
        + "); look at the quarantine table's rule, reason and raw columns"
    )


def stage_silver(io: StageIO) -> None:
    """Ingest's clean orders become ``orders`` (THE purchase definition applied), then
    ``customer_days``, and as of the run's date ``customer_state`` and ``customer_months``, once; no
    later stage reads lines. An incremental refresh MERGEs its batch's orders into ``orders`` and
    recomputes only the touched customers' rows of the per-customer tables."""
    from segspark import silver, silver_refresh

    grouped = io.clean("orders")
    batch = io.clean_is_batch()
    touched: silver_refresh.Touched | None = None
    if grouped is not None and batch:
        touched = silver_refresh.merge_orders(io, silver.order_columns(grouped, io.settings.purchase))
        io.release_clean("orders")
    elif grouped is not None:  # else a ``reuse`` refresh: orders and customer_days stand as written
        io.write(silver.order_columns(grouped, io.settings.purchase), S.ORDERS)
        # written: release ingest's per-order cache before the heavy stages
        io.release_clean("orders")
    orders, as_of = io.read(S.ORDERS), io.as_of_date
    assert as_of is not None
    if grouped is not None:
        io.choose(refresh.ORDERS_VERSION, io.output_version(S.ORDERS))
    if grouped is not None:  # whole, also after a MERGE (silver_refresh.merge_orders says why)
        io.write(silver.customer_days(orders), S.CUSTOMER_DAYS)
    if touched is not None and silver_refresh.update_state(io, touched, orders, as_of):
        return
    io.write(silver.customer_state(orders, as_of, io.settings.rfm.channels), S.CUSTOMER_STATE)
    io.write(silver.customer_months(orders, as_of), S.CUSTOMER_MONTHS)


LABEL_COLUMNS = ("r_score", "f_score", "m_score", "rfm_code", "rfm_segment", "lifecycle_stage")


def stage_features(io: StageIO) -> None:
    """One row per customer (buyers and CRM prospects): RFM and behaviour features, RFM scores and
    segment, lifecycle stage, engagement and demographics; plus the R x F grid."""
    from segspark import behaviour, features, lifecycle

    settings, as_of, customers = io.settings, io.as_of_date, io.clean("customers")
    assert as_of is not None
    channels = settings.rfm.channels
    orders = io.read(S.ORDERS)
    engagement = io.clean("engagement")  # summarized by ingest when there are events
    buyers = features.rfm_from_state(io.read(S.CUSTOMER_STATE), as_of, channels).transform(
        behaviour.with_behaviour, behaviour.behaviour_features(orders, as_of, channels)
    )
    buyers = io.cache(buyers.persist())  # the score edges are their own job: do not compute twice
    edges = features.rfm_edges(buyers, settings.rfm)
    tracking.log_dict(edges, "rfm/score_edges.json")
    table = (
        buyers.transform(features.with_rfm_scores, settings.rfm, edges)
        .transform(features.with_rfm_segment, settings.rfm)
        .transform(lifecycle.with_lifecycle_stage, customers, as_of, settings.lifecycle)
        .transform(behaviour.with_engagement, engagement)
        .transform(behaviour.with_demographics, customers)
    )
    io.write(table, S.CUSTOMER_FEATURES)
    # written: later stages read the table, so neither the RFM features nor the engagement stay cached
    buyers.unpersist()
    if engagement is not None:
        engagement.unpersist()
    written = io.read(S.CUSTOMER_FEATURES)
    io.write(features.rfm_grid(written.where(F.col("r_score").isNotNull())), S.RFM_GRID)


def stage_scores(io: StageIO) -> None:
    """CLV (from customer_days) and churn propensity (from orders): fits as small tables, one
    ``customer_scores`` row per scored customer."""
    from segspark import churn, churn_table, clv, features

    settings, as_of = io.settings, io.as_of_date
    assert as_of is not None
    parts: list[DataFrame] = []
    written: list[Callable[[], None]] = []
    if settings.clv.enabled:
        with io.timed("clv_fit_and_score"):
            days = io.read(S.CUSTOMER_DAYS)
            res = clv.run_clv(
                days,
                as_of,
                settings.clv,
                # the holdout value by the RFM segment customers had at the calibration end
                segments_at=lambda day: features.rfm_segments_as_of(days, day, settings.rfm, clv.SEGMENT),
            )
            io.choose("clv.model", f"{res.fit.get('model')}: {res.fit.get('reason')}")
            if res.fit.get("spend_model"):
                io.choose("clv.spend_model", f"{res.fit['spend_model']}: {res.fit.get('spend_reason')}")
            # with a model per repeat band (segspark.clv.bands): which band has which
            chosen = {"clv.chosen_model": res.fit.get("model"), "clv.band_models": res.fit.get("band_models")}
            tracking.log_params({**chosen, "clv.chosen_spend_model": res.fit.get("spend_model")})
        for message in res.warnings:  # a replaced model, a penalizer, the historical-rate fallback
            io.warn(message)
        io.write(
            io.spark.createDataFrame(clv_validation_rows(res.validation), tables.CLV_VALIDATION_SCHEMA),
            S.CLV_VALIDATION,
        )
        io.write(declared_frame(io.spark, clv.fit_table(res), S.CLV_FIT), S.CLV_FIT)
        tracking.log_metrics(res.metrics())
        tracking.log_figures(res.figures, "clv")
        scalars = {k: v for k, v in res.validation.items() if not isinstance(v, pd.DataFrame)}
        tracking.log_dict({"fit": res.fit, "validation": scalars}, "clv/fit.json")
        parts.append(res.customers)
        written.append(res.release)  # its persisted predictions, once customer_scores is written
    if settings.churn.enabled:
        try:
            with io.timed("churn_model"), finalizers_at_safe_points():
                cres = churn.run_churn(io.read(S.ORDERS), as_of, settings.churn, settings.purchase)
        except InputError as exc:  # too little history or a one-sided label: skip, say why
            io.warn(f"churn model skipped: {exc}")
            skipped = churn_table.skipped_table(str(exc))
            io.write(declared_frame(io.spark, skipped, S.CHURN_METRICS), S.CHURN_METRICS)
        else:
            m = cres.metrics
            io.choose("churn.fit", f"{m['engine']}, {m['train_rows']} of {m['train_customers']} customers")
            metrics = churn_table.metrics_table(cres)
            io.write(declared_frame(io.spark, metrics, S.CHURN_METRICS), S.CHURN_METRICS)
            tracking.log_metrics(cres.scalar_metrics())
            tracking.log_figures(cres.figures, "churn")
            parts.append(cres.customers)
            written.append(cres.release)  # its cached windows, once customer_scores is written
    scores = io.spark.createDataFrame([], tables.SCHEMAS[S.CUSTOMER_SCORES])
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
    io.write(scores, S.CUSTOMER_SCORES)
    for release in written:
        release()


def previous_profiles(io: StageIO) -> pd.DataFrame | None:
    """The cluster profiles of the latest earlier date (a few rows), for stable persona names.

    Strictly before ``as_of_date``: a rerun of a date (``segspark cluster``, a retried ``run``) names
    from the same history as the date's first run, never from that run's own output, so reruns on
    unchanged data give the same names."""
    assert io.as_of_date is not None
    prev = io.previous(S.CLUSTER_PROFILES)
    if prev is None:
        return None
    # a profile row per cluster, in cluster order (the matching must not depend on the read order)
    return prev.toPandas().sort_values(S.CLUSTER_ID, ignore_index=True)


def stage_segments(io: StageIO) -> None:
    """Clusters and personas on buyers (refit, or the registered model when scoring), then
    ``customer_segments``: one row per customer with every segment label and score."""
    from segspark.clustering import fit_segments
    from segspark.clustering.results import applied_model_row, sweep_table
    from segspark.clustering.tracking import (
        load_resolved,
        log_to_mlflow,
        model_features,
        score_segments,
        staging_dir,
    )

    settings = io.settings
    scores = io.read(S.CUSTOMER_SCORES)
    model_table = io.read(S.CUSTOMER_FEATURES).join(scores, on=S.CUSTOMER_ID, how="left")
    assignments = None
    if settings.clustering.enabled:
        # the sweep, the sample and the final assignment each read the model table: computed once
        model_table = io.cache(materialize(model_table))
        buyers = model_table.where(F.col("frequency") > 0)
        if io.cluster_mode == "score":
            # resolved once, for the refresh decision: the version recorded below is the version loaded
            assert io.resolved_model is not None
            uri, run_id = io.resolved_model
            model, logged, density = load_resolved(uri, run_id, staging_dir(settings.output.path))
            assignments = score_segments(buyers, model, logged, density=density)
            # the run's record of which model assigned the personas (the report names its version),
            # and that model's profiles, so the score run's tables and report stand on their own
            clusters = int((logged[S.CLUSTER_ID] >= 0).sum()) if logged is not None else 0
            algorithm = density.algorithm if density is not None else None
            alias = settings.clustering.model_alias
            row = applied_model_row(uri, alias, clusters, algorithm, model_features(model))
            io.write(declared_frame(io.spark, row, S.CLUSTERING_SWEEP), S.CLUSTERING_SWEEP)
            if logged is not None and not logged.empty:
                # the logged profiles come back from JSON (whole-number doubles as ints): the declared
                # schema types them again
                io.write(declared_frame(io.spark, logged, S.CLUSTER_PROFILES), S.CLUSTER_PROFILES)
        else:
            with io.timed("clustering_fit"):
                result = fit_segments(buyers, settings.clustering, previous_profiles(io), input_cached=True)
            for key, value in result.chosen.get("sizing", {}).items():
                io.choose(f"clustering.{key}", value)
            if settings.tracking.enabled:
                inputs = {n: f"{s.info.location}@{s.info.version}" for n, s in io.inputs.items()}
                with io.timed("clustering_mlflow"):
                    log_to_mlflow(
                        result,
                        settings.tracking,
                        settings.tracking_uri,
                        input_tables=inputs,
                        alias=settings.clustering.model_alias,
                        staging_dir=staging_dir(settings.output.path),
                    )
            io.releases.append(result.release)  # its assignments stay cached until the segments are written
            io.write(declared_frame(io.spark, sweep_table(result), S.CLUSTERING_SWEEP), S.CLUSTERING_SWEEP)
            io.write(declared_frame(io.spark, result.profiles, S.CLUSTER_PROFILES), S.CLUSTER_PROFILES)
            assignments = result.assignments
    segments = (
        model_table if assignments is None else model_table.join(assignments, on=S.CUSTOMER_ID, how="left")
    )
    # the declared columns (cluster_id and persona are optional: present with clustering only)
    declared = [f.name for f in tables.SCHEMAS[S.CUSTOMER_SEGMENTS] if f.name in segments.columns]
    io.write(segments.select(*declared), S.CUSTOMER_SEGMENTS)


def stage_aggregates(io: StageIO) -> None:
    """KPIs, cohorts, LTV:CAC, transitions and drift: aggregate tables for BI, from the written tables."""
    from segspark import behaviour, cohorts, drift, kpis, lifecycle, ltv_cac

    as_of = io.as_of_date
    assert as_of is not None
    customers, spend = io.clean("customers"), io.clean("marketing_spend")
    segments = io.read(S.CUSTOMER_SEGMENTS)
    orders = io.read(S.ORDERS)
    previous = io.previous(S.CUSTOMER_SEGMENTS)
    feats = io.read(S.CUSTOMER_FEATURES)
    engagement = None
    if io.clean("engagement") is not None:  # engagement features exist only with events
        engagement = feats.select(S.CUSTOMER_ID, *behaviour.ENGAGEMENT_COLUMNS)
    io.write(kpis.segment_kpis(segments, engagement), S.SEGMENT_KPIS)
    state = io.read(S.CUSTOMER_STATE)
    months = io.read(S.CUSTOMER_MONTHS)
    io.write(cohorts.cohort_retention_from_state(state, months, customers, as_of), S.COHORT_RETENTION)
    window = io.settings.kpis.ltv_window_months

    def keep(df: DataFrame) -> DataFrame:  # LTV:CAC's customer level, read by several of its aggregates
        return io.cache(materialize(df, for_query=True))

    io.write(ltv_cac.ltv_cac(orders, customers, spend, segments, as_of, window, state, keep), S.LTV_CAC)
    io.write(lifecycle.segment_transitions(segments, previous), S.SEGMENT_TRANSITIONS)
    io.write(drift.segment_drift(segments, previous, drift.DRIFT_CATEGORICAL, drift.DRIFT_NUMERIC), S.DRIFT)


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


def stage_report(io: StageIO) -> None:
    """The stakeholder report and its BI tables (report_summary, recommendations), from tables only."""
    if not io.settings.report.enabled:
        return
    from segspark.report import RunInfo, build_report

    as_of = io.as_of_date
    assert as_of is not None
    found: dict[str, DataFrame | None] = {name: io.read_if_exists(name) for name in REPORT_TABLES}
    for name in (S.QUARANTINE, S.RUNS):
        found[name] = io.run_rows(name)
    found["previous_report_summary"] = io.previous(S.REPORT_SUMMARY)
    reports = storage.join(storage.root_of(io.settings.output.path), "reports")
    # on an object store the report is built in a local folder and uploaded beside the tables
    with io.timed("report_build"), storage.local_folder(reports) as out_dir:
        result = build_report(
            found, RunInfo(run_id=io.run_id, as_of_date=as_of, command=io.command), out_dir, io.settings
        )
        tracking.log_artifacts(Path(result.html_path).parent, "report")
    io.report_dir = storage.join(reports, io.run_id)
    # the declared schemas: an empty table (every segment under report.min_segment_size) is written empty
    frame = functools.partial(declared_frame, io.spark, fill_missing=True)
    io.write(frame(result.summary, S.REPORT_SUMMARY), S.REPORT_SUMMARY)
    io.write(frame(result.recommendations, S.RECOMMENDATIONS), S.RECOMMENDATIONS)


# The whole data flow. A stage reads and writes only what it names (StageIO enforces it).
# fmt: off
PIPELINE: tuple[Stage, ...] = (
    #      name          reads                                             writes
    Stage("ingest",     ("input:transactions", "input:customers", "input:events", "input:marketing_spend",
                         f"earlier:{S.QUARANTINE}", f"earlier:{S.ORDERS}", f"earlier:{S.ERASURES}"),
                        (S.QUARANTINE, S.INPUT_MANIFEST, "clean:orders", "clean:customers", "clean:events",
                         "clean:marketing_spend", "clean:engagement"), stage_ingest),
    Stage("silver",     ("clean:orders", f"earlier:{S.ORDERS}", f"earlier:{S.CUSTOMER_DAYS}",
                         f"earlier:{S.CUSTOMER_STATE}", f"earlier:{S.CUSTOMER_MONTHS}"),
                        (S.ORDERS, S.CUSTOMER_DAYS, S.CUSTOMER_STATE, S.CUSTOMER_MONTHS), stage_silver),
    Stage("features",   (S.CUSTOMER_STATE, S.ORDERS, "clean:customers", "clean:engagement"),
                        (S.CUSTOMER_FEATURES, S.RFM_GRID), stage_features),
    Stage("scores",     (S.CUSTOMER_DAYS, S.ORDERS),
                        (S.CLV_VALIDATION, S.CLV_FIT, S.CHURN_METRICS, S.CUSTOMER_SCORES), stage_scores),
    Stage("segments",   (S.CUSTOMER_FEATURES, S.CUSTOMER_SCORES, f"previous:{S.CLUSTER_PROFILES}"),
                        (S.CLUSTERING_SWEEP, S.CLUSTER_PROFILES, S.CUSTOMER_SEGMENTS), stage_segments),
    Stage("aggregates", (S.CUSTOMER_SEGMENTS, S.CUSTOMER_FEATURES, S.CUSTOMER_STATE, S.CUSTOMER_MONTHS,
                         S.ORDERS, f"previous:{S.CUSTOMER_SEGMENTS}", "clean:customers",
                         "clean:marketing_spend", "clean:engagement"),
                        (S.SEGMENT_KPIS, S.COHORT_RETENTION, S.LTV_CAC, S.SEGMENT_TRANSITIONS, S.DRIFT),
                        stage_aggregates),
    Stage("report",     (*REPORT_TABLES, S.QUARANTINE, S.RUNS, f"previous:{S.REPORT_SUMMARY}"),
                        (S.REPORT_SUMMARY, S.RECOMMENDATIONS), stage_report, own_runs_row=True),
)
# fmt: on
STAGE_NAMES = tuple(s.name for s in PIPELINE)
# Every command that runs stages runs a selection of PIPELINE, in its order. A selection that does
# not start with ingest reads the tables a run wrote (its date: as_of_date, else the latest).
SELECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest", "silver"),
    "features": ("ingest", "silver", "features"),
    "clv": ("ingest", "silver", "features", "scores"),
    "run": STAGE_NAMES,
    "score": STAGE_NAMES,  # the segments stage applies the registered clustering model
    "demo": STAGE_NAMES,
    "cluster": ("segments",),
    "report": ("report",),
}


def select(command: str) -> list[Stage]:
    if command not in SELECTIONS:
        raise ValueError(f"no stage selection for command {command!r}")
    return [s for s in PIPELINE if s.name in SELECTIONS[command]]


def run(ctx: RunContext, command: str | None = None) -> RunContext:
    """Run the stages ``command`` selects (``ctx.command`` by default), one commit per table.

    The stages without a runs row of their own are recorded as one ``runs`` row (succeeded, or
    failed with the error); then each stage with its own row (the report) runs and records it.
    ``score`` applies the registered clustering model instead of refitting it.
    """
    stages = select(command or ctx.command)
    ctx.cluster_mode = "score" if (command or ctx.command) == "score" else "fit"
    body = [s for s in stages if not s.own_runs_row]
    own = [s for s in stages if s.own_runs_row]
    if not body:  # a command that is one recorded stage (report)
        with recorded(ctx):
            _from_written_tables(ctx, own[0])
            tags = {"segspark.command": ctx.command}
            with tracking.parent_run(ctx.settings, ctx.run_id, tags) as mlflow_id:
                ctx.mlflow_run_id = mlflow_id
                run_stage(ctx, own[0])
        return ctx
    try:
        if body[0].name != "ingest":
            _from_written_tables(ctx, body[0])
        elif _decide_refresh(ctx) == "skip":
            record_run(ctx, "succeeded")  # one row saying so (choices["refresh"]); nothing else
            return ctx
    except BaseException as exc:
        record_failed(ctx, exc)
        raise
    with tracking.parent_run(ctx.settings, ctx.run_id, {"segspark.command": ctx.command}) as mlflow_id:
        ctx.mlflow_run_id = mlflow_id
        try:
            for stage in body:
                run_stage(ctx, stage)
        except BaseException as exc:
            record_failed(ctx, exc)
            raise
        finally:
            ctx.release_cached()
        record_run(ctx, "succeeded")
        for stage in own:
            if stage.name != "report" or ctx.settings.report.enabled:
                _run_recorded(ctx, stage)
    return ctx


def _decide_refresh(ctx: RunContext) -> str:
    """Whether the run recomputes (``segspark.refresh``), recorded in its ``runs`` row's choices."""
    from segspark import privacy

    settings = ctx.settings
    key = privacy.resolve_key(settings.privacy, demo=ctx.demo) if settings.privacy.pseudonymize else None
    state = refresh.state_hash(settings, ctx.spark, key)
    model = None
    if ctx.cluster_mode == "score" and settings.clustering.enabled:
        from segspark.clustering.tracking import resolve_model

        # resolved once, before the decision: the version compared is the version stage_segments loads
        alias = settings.clustering.model_alias
        tracking.wait_prepared()  # the store this process is creating meanwhile, if any, first
        ctx.resolved_model = resolve_model(settings.tracking.registered_model, settings.tracking_uri, alias)
        model = ctx.choices[refresh.MODEL] = ctx.resolved_model[0]
    decision = refresh.decide(settings, ctx.lake, ctx.command, state, model)
    ctx.refresh = decision
    ctx.choose("refresh", f"{decision.mode}: {decision.reason}")
    ctx.choices[refresh.STATE_HASH] = state
    ctx.choices[refresh.MANIFEST_RUN] = ctx.choices[refresh.ORDERS_RUN] = ctx.run_id
    previous = decision.previous
    if decision.mode in ("skip", "reuse") and previous is not None:
        ctx.choices[refresh.ORDERS_RUN] = previous.choices.get(refresh.ORDERS_RUN, previous.run_id)
        ctx.choices[refresh.DATA_DATE] = previous.choices.get(refresh.DATA_DATE, str(previous.as_of_date))
    if decision.mode == "skip" and previous is not None:
        ctx.choices[refresh.MANIFEST_RUN] = previous.manifest_run
        ctx.as_of_date = previous.as_of_date
    elif decision.mode == "full" and settings.refresh == "incremental":
        ctx.warn(f"refresh: incremental asked, the whole history refreshed ({decision.reason})")
    return decision.mode


def run_stage(ctx: RunContext, stage: Stage) -> StageIO:
    """One stage, timed, with exactly its declared reads and writes."""
    io = StageIO(ctx, stage)
    with ctx.timed(f"stage_{stage.name}"):
        stage.run(io)
    return io


def _run_recorded(ctx: RunContext, stage: Stage) -> None:
    """A stage with its own ``runs`` row (command: the stage's name) of the same run id."""
    sub = dataclasses.replace(
        ctx, command=stage.name, started=dt.datetime.now(dt.timezone.utc), outputs={}, timings={}, inputs={}
    )
    with recorded(sub):
        run_stage(sub, stage)
    ctx.report_dir = sub.report_dir
    ctx.outputs.update(sub.outputs)


def _from_written_tables(ctx: RunContext, first: Stage) -> None:
    """A selection that starts after ingest works on a date a run wrote: ``as_of_date`` when set,
    else the latest date of the first table its first stage reads; the report keeps the run id of
    the run that wrote that date's segments."""
    table = next(name for name in first.reads if ":" not in name)
    ctx.as_of_date = latest_date(ctx, table)
    if first.name == "report":
        row = (
            ctx.lake.read_output(S.CUSTOMER_SEGMENTS)
            .where(F.col(S.AS_OF_DATE) == F.lit(ctx.as_of_date))
            .select(S.RUN_ID)
            .first()
        )
        if row is not None:
            ctx.run_id = row[0]
