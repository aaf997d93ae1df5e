"""What a run recomputes: ``refresh: auto | incremental | full`` (README, "Refresh: what a run recomputes").

Before ingest reads a row, the run lists its inputs (``io.manifest``: data files with size and
modification time, or a Delta input's version) and compares them with what the last successful run
of the same command took (its ``input_manifest`` rows). The decision:

- ``skip``: every input is as that run took it, the effective configuration (``config_hash``, which
  holds ``as_of_date``) and the segspark version are the same, and its tables are all there. Nothing
  is recomputed: the run records one ``runs`` row saying so (``choices["refresh"]``) and ends.
- ``reuse``: the transactions are as the run that validated them took them: its orders stand, the
  per-customer state on is recomputed (a new as_of_date, other CRM or model settings).
- ``incremental``: files were only added to a Parquet or CSV transactions folder: only their lines
  are validated (``ingest.increment``) and MERGEd into ``orders`` and ``customer_days``; a batch a
  full refresh would judge otherwise turns the run into a ``full`` one in ingest, with the reason.
- ``full``: anything else, with the reason recorded (``choices["refresh"]``): the first run, a
  retry of a run id, ``refresh: full``, settings or code changed, an input rewritten, removed or not
  listable from here, ``orders`` committed to since the run that validated it (other than by
  an erasure that recorded what it took: ``erasure_effect``), or Delta commits of the
  transactions since that removed rows.

``refresh: incremental`` decides like ``auto``, and records a full refresh as a warning of the run
(a scheduler watching ``runs.warnings`` sees that a weekly run cost a whole history).

Every run records in ``choices`` the hash of the settings that shape the orders and the per-customer
state (``refresh.state_hash``: the inputs' mappings, quality rules, purchase definition, the
pseudonym key's keyed tag and the session time zone) and the run whose manifest describes the
inputs it stands on (``refresh.manifest_run``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pyspark.sql import functions as F

from segspark import schema as S
from segspark import tables
from segspark.config import ERASED_RULE
from segspark.io.manifest import Fingerprint, InputFile, compare, delta_batch, fingerprint
from segspark.version import code_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from segspark.config import Settings
    from segspark.ingest.result import IngestResult
    from segspark.io import Lakehouse

log = logging.getLogger(__name__)

INPUTS = ("transactions", "customers", "events", "marketing_spend")
STATE_HASH = "refresh.state_hash"
ORDERS_LAYOUT = 2
MANIFEST_RUN = "refresh.manifest_run"
# what a run took of each input: its files, or its Delta version (``input_manifest`` rows)
Taken = dict[str, tuple[list[InputFile] | None, int | None]]
ORDERS_RUN = "refresh.orders_run"  # the run that validated the transactions behind ``orders``
DATA_DATE = "refresh.data_date"  # the date of that run's last clean line (the default as_of_date)
# ``score``: the registered clustering model version the run applies (its alias resolved before the
# decision), so a moved alias is never skipped
MODEL = "refresh.model"
# the version of ``orders`` after the run that validated its transactions last wrote it: any other
# commit since (an erasure, a crashed run's MERGE) rules out standing on it
ORDERS_VERSION = "refresh.orders_version"
# the amount_outlier rule's bound over the whole transactions input (``repr`` of the float)
OUTLIER_BOUND = "refresh.outlier_bound"
NEW_FILES = "refresh.new_files"  # an incremental refresh: the new transaction files it validated
NEW_ROWS = "refresh.new_rows"  # ... and their lines (rows in; the input's whole count is in ``inputs``)
# an incremental refresh: the per-customer tables' rows of customers without new orders kept and
# the touched customers' recomputed (``kept: ...``), or both rebuilt from every order, and why
STATE = "refresh.state"
# ``segspark erase``: the ``orders`` version before its delete (its ``refresh.orders_version`` is the
# one after, its ``refresh.orders_run`` the run whose orders it erased from), the erased customers'
# clean lines in those orders and their quarantine rows of that run's transactions: what a full
# refresh would now quarantine as ``erased_customer``, so the next run stays incremental; or why it
# cannot (``erase.full``)
ERASE_FROM = "erase.orders_from"
ERASED_CLEAN = "erase.clean_lines"
ERASED_QUARANTINED = "erase.quarantined_lines"
ERASE_FULL = "erase.full"


@dataclass(frozen=True)
class Previous:
    """The last successful run of a command in this lakehouse (its ``runs`` row)."""

    run_id: str
    as_of_date: dt.date
    config_hash: str
    code_version: str
    choices: dict[str, str]
    outputs: tuple[str, ...]
    inputs: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # rows in, clean, quarantined

    @property
    def manifest_run(self) -> str:
        return self.choices.get(MANIFEST_RUN, self.run_id)


@dataclass
class Decision:
    mode: Literal["full", "skip", "reuse", "incremental"]
    reason: str
    previous: Previous | None = None
    inputs: dict[str, Fingerprint] = field(default_factory=dict)
    # reuse: the run that validated the transactions behind ``orders`` (its counts and last line's
    # date), and its quarantine rows of the transactions by rule
    source: Previous | None = None
    reused_rules: dict[str, int] = field(default_factory=dict)
    # incremental: the transactions' new files (paths relative to the input's path)
    new_files: tuple[str, ...] = ()
    # reuse and incremental: the lines of customers erased since the run that validated the
    # transactions (clean, quarantined): ``erased_customer`` lines now (``reused_transactions``)
    erased: tuple[int, int] = (0, 0)


def state_hash(settings: Settings, spark: SparkSession, key: bytes | None) -> str:
    """The hash of what shapes ``orders`` and the per-customer state: a change means no earlier
    state can be reused. The key enters as a keyed tag (an HMAC of a constant), never itself."""
    shaping = {
        # the columns the orders table holds: a new one (2: ``returns``) means orders written
        # before it cannot be merged into or reused
        "orders_layout": ORDERS_LAYOUT,
        "input": settings.input.model_dump(mode="json"),
        "quality": settings.quality.model_dump(mode="json"),
        "purchase": settings.purchase.model_dump(mode="json"),
        "privacy": settings.privacy.model_dump(mode="json"),
        "channels": list(settings.rfm.channels),
        "key": hmac.new(key, b"segspark state", hashlib.sha256).hexdigest()[:16] if key else None,
        "time_zone": spark.conf.get("spark.sql.session.timeZone"),
    }
    blob = json.dumps(shaping, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def last_succeeded(lake: Lakehouse, command: str | None = None, run_id: str | None = None) -> Previous | None:
    """The newest succeeded ``runs`` row of ``command`` (or of run ``run_id``): one row to the
    driver; None without one."""
    if not lake.exists(S.RUNS):
        return None
    # a run id's own row, not its report's (same run id, command "report", no inputs)
    by_id = (F.col(S.RUN_ID) == run_id) & (F.col("command") != "report")
    which = F.col("command") == command if command is not None else by_id
    row = (
        lake.read_output(S.RUNS)
        .where((F.col("status") == "succeeded") & which)
        .orderBy(F.col("ended_at").desc())
        .select(S.RUN_ID, S.AS_OF_DATE, "config_hash", "code_version", "choices", "outputs", "inputs")
        .first()
    )
    if row is None:
        return None
    outputs = tuple(o["table"] for o in (row["outputs"] or []))
    choices = dict(row["choices"] or {})
    hashes = row["config_hash"], row["code_version"]
    counts = {i["name"]: (i["rows_in"], i["rows_clean"], i["rows_quarantined"]) for i in row["inputs"] or []}
    return Previous(row[S.RUN_ID], row[S.AS_OF_DATE], *hashes, choices, outputs, counts)


def taken(lake: Lakehouse, run_id: str) -> Taken:
    """What run ``run_id`` took of each input: its files, or its Delta version (a few rows per input)."""
    if not lake.exists(S.INPUT_MANIFEST):
        return {}
    rows = (
        lake.read_output(S.INPUT_MANIFEST)
        .where(F.col(S.RUN_ID) == run_id)
        .select("input", "path", "size", F.unix_micros("modification_time").alias("us"), "delta_version")
        .collect()
    )
    out: Taken = {}
    for r in rows:
        files, version = out.get(r["input"], (None, None))
        if r["path"] is not None:
            files = [*(files or []), InputFile(r["path"], int(r["size"]), int(r["us"]))]
        if r["delta_version"] is not None:
            version = int(r["delta_version"])
        out[r["input"]] = (files, version)
    return out


def decide(
    settings: Settings, lake: Lakehouse, command: str, state: str, model: str | None = None
) -> Decision:
    """Skip, reuse or refresh fully, and why (the module docstring). ``model``: the registered model
    version a ``score`` run applies; a skip needs the run it stands on to have applied the same."""
    prints = {
        name: fingerprint(name, getattr(settings.input, name))
        for name in INPUTS
        if getattr(settings.input, name).configured
    }
    if settings.refresh == "full":
        return Decision("full", "refresh: full", None, prints)
    previous = last_succeeded(lake, command=command)
    if previous is None:
        return Decision("full", f"no earlier successful {command} in this lakehouse", None, prints)
    took = taken(lake, previous.manifest_run)  # read once: the skip and the reuse both compare it
    reason = _why_not_skip(settings, lake, previous, prints, took, state)
    if reason is None and model is not None and previous.choices.get(MODEL) != model:
        applied = previous.choices.get(MODEL, "no recorded version")
        reason = f"the registered model is now {model} (run {previous.run_id} applied {applied})"
    if reason is not None:
        return _reuse_or_full(lake, previous, prints, took, reason)
    return Decision(
        "skip",
        f"inputs, settings and code as run {previous.run_id} took them (as_of_date {previous.as_of_date}): "
        "nothing recomputed",
        previous,
        prints,
    )


def _reuse_or_full(
    lake: Lakehouse,
    previous: Previous,
    prints: dict[str, Fingerprint],
    took: Taken,
    why_not_skip: str,
) -> Decision:
    """``reuse`` when the transactions, and what shapes the orders, are as the run that wrote
    ``orders`` took them: its orders and its transactions' quarantine stand, and everything from
    the per-customer state on is recomputed (a new as_of_date, new CRM or events, other model
    settings). ``full`` otherwise, with the first reason that rules reuse out."""
    full = Decision("full", why_not_skip, previous, prints)
    orders_run, tx = previous.choices.get(ORDERS_RUN), prints.get("transactions")
    if why_not_skip.startswith(("a retry", "segspark ", "the key")) or orders_run is None or tx is None:
        return full
    source = last_succeeded(lake, run_id=orders_run)
    if source is None or DATA_DATE not in source.choices or "transactions" not in source.inputs:
        return full
    tx_took = took.get("transactions")  # (the state hash was compared: "the key ..." above)
    tx_state = compare(tx, *tx_took)[0] if tx_took is not None else "unknown"
    # new files of a Parquet or CSV input, or the files new commits of a Delta path table added:
    # their lines alone are validated (``incremental``)
    appended = tx_state == "appended" and tx_took is not None
    if tx_state != "unchanged" and not appended:
        return full
    if not (lake.exists(S.ORDERS) and lake.exists(S.CUSTOMER_DAYS) and lake.exists(S.QUARANTINE)):
        return full
    erasures = _erasures_since(lake, orders_run)
    blocked = next((e[ERASE_FULL] for e in erasures if ERASE_FULL in e), None)
    if blocked is not None:
        return Decision("full", f"{why_not_skip}; {blocked}", previous, prints)
    moved = _orders_moved(lake, source, orders_run, erasures)
    if moved is not None:
        return Decision("full", moved, previous, prints)
    erased = (
        sum(int(e.get(ERASED_CLEAN, "0")) for e in erasures),
        sum(int(e.get(ERASED_QUARANTINED, "0")) for e in erasures),
    )
    rules = {
        r[S.Q_RULE]: int(r["n"])
        for r in _carried_quarantine(lake, orders_run)
        .groupBy(S.Q_RULE)
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    }
    if sum(rules.values()) + erased[1] != source.inputs["transactions"][2]:  # an erasure took rows
        return Decision("full", f"quarantine rows of run {orders_run} were erased since", previous, prints)
    if sum(erased):  # what a full refresh now quarantines of the erased customers' lines
        rules[ERASED_RULE] = rules.get(ERASED_RULE, 0) + sum(erased)
    if appended:
        assert tx_took is not None
        new, what = _new_files(tx, tx_took)
        why_full = _why_not_incremental(lake, source, rules) if new is not None else what
        if why_full is not None:
            return Decision("full", f"{why_not_skip}; {why_full}", previous, prints)
        assert new is not None
        if new:
            reason = (
                f"input 'transactions': {what}: only their lines validated, "
                f"merged into the orders of run {orders_run}"
            )
            return Decision("incremental", reason, previous, prints, source, rules, new, erased)
        why_not_skip = f"{why_not_skip}; {what}: no new rows"  # e.g. only an OPTIMIZE: reuse
    reason = f"transactions as run {orders_run} took them: its orders reused ({why_not_skip})"
    return Decision("reuse", reason, previous, prints, source, rules, erased=erased)


def _new_files(
    tx: Fingerprint, took: tuple[list[InputFile] | None, int | None]
) -> tuple[tuple[str, ...] | None, str]:
    """The transactions' files added since the run took them, relative to the input's path, and
    what they are (``(None, why)`` when they cannot be read apart): a folder's new files, or the
    files new commits of a Delta path table added (``manifest.delta_batch``)."""
    files, version = took
    if tx.files is not None and files is not None:
        taken_paths = {f.path for f in files}
        new = tuple(f.path for f in tx.files if f.path not in taken_paths)
        return new, f"{len(new)} new file(s)"
    assert tx.version is not None and version is not None
    return delta_batch(tx.location, version, tx.version)


def _orders_moved(
    lake: Lakehouse, source: Previous, orders_run: str, erasures: list[dict[str, str]]
) -> str | None:
    """Why ``orders`` is not what run ``orders_run`` left less what ``erasures`` (the ``segspark
    erase`` runs since, oldest first) deleted (None: it is): a commit since the version it recorded
    that no erasure accounts for, or (runs before that record) a row stamped by another run."""
    recorded = source.choices.get(ORDERS_VERSION)
    if recorded is not None:
        now, at = lake.version(S.ORDERS), int(recorded)
        # a later OPTIMIZE or VACUUM (``segspark vacuum``) rewrites no rows: the orders stand
        for erasure in erasures:  # each erasure's delete: from the version before it to the one after
            start = int(erasure[ERASE_FROM])
            if start < at or (start > at and lake.rows_changed(S.ORDERS, at, start)):
                break
            at = int(erasure[ORDERS_VERSION])
        else:
            if now is not None and now >= at and (now == at or not lake.rows_changed(S.ORDERS, at, now)):
                return None
        return f"orders changed since run {orders_run} wrote them (version {recorded}, now {now})"
    stamp = lake.read_output(S.ORDERS).select(S.RUN_ID).first()
    if stamp is not None and stamp[0] != orders_run:
        return f"orders were written by run {stamp[0]}, not run {orders_run}"
    return None


def _erasures_since(lake: Lakehouse, orders_run: str) -> list[dict[str, str]]:
    """The choices of the ``segspark erase`` runs that erased from the orders of run ``orders_run``
    (``erasure_effect``), oldest first: a few rows."""
    runs = lake.read_output(S.RUNS)
    rows = (
        runs.where(
            (F.col("status") == "succeeded")
            & (F.col("command") == "erase")
            & (F.try_element_at(F.col("choices"), F.lit(ORDERS_RUN)) == F.lit(orders_run))
        )
        .orderBy("ended_at")
        .select("choices")
        .collect()
    )
    return [dict(r["choices"]) for r in rows]


def erasure_effect(lake: Lakehouse, keys: list[str], erased_at: dt.datetime) -> dict[str, str]:
    """What ``segspark erase`` of ``keys`` (as the tables hold them) means for the next run's refresh,
    read before its deletes (``ERASE_*`` choices of its ``runs`` row): the run whose orders it erases
    from, the version they are at, and the customers' clean lines in them and quarantine rows of
    that run's transactions, which a full refresh would quarantine as ``erased_customer`` now. Or why
    the next run must refresh fully: an erased order dated after the erasure (a full refresh takes
    it), or on the date of the input's last clean line (the default as_of_date may move). Empty when
    ``orders`` does not stand on a run that validated them (the next run is a full one anyway)."""
    if not (lake.exists(S.ORDERS) and lake.exists(S.RUNS) and lake.exists(S.QUARANTINE)):
        return {}
    now = lake.version(S.ORDERS)
    stood = _orders_source(lake, now)
    if now is None or stood is None:
        return {}
    source = last_succeeded(lake, run_id=stood)
    if source is None or DATA_DATE not in source.choices:
        return {}
    mine = F.col(S.CUSTOMER_ID).isin(sorted(set(keys)))
    data_date = dt.date.fromisoformat(source.choices[DATA_DATE])
    row = (
        lake.read_output(S.ORDERS)
        .where(mine)
        .agg(
            F.coalesce(F.sum(S.LINES), F.lit(0)).alias("lines"),
            F.count_if(F.col(S.ORDER_TS) > F.lit(erased_at)).alias("after"),
            F.count_if(F.col(S.ORDER_DATE) >= F.lit(data_date)).alias("last_day"),
        )
        .first()
    )
    assert row is not None
    quarantined = _carried_quarantine(lake, stood).where(mine).count()
    effect = {
        ORDERS_RUN: stood,
        ERASE_FROM: str(now),
        ERASED_CLEAN: str(int(row["lines"])),
        ERASED_QUARANTINED: str(quarantined),
    }
    if row["after"]:
        effect[ERASE_FULL] = "an erased customer's order is dated after the erasure"
    elif row["last_day"]:
        effect[ERASE_FULL] = f"an erased customer's order is on the input's last date ({data_date})"
    return effect


def _orders_source(lake: Lakehouse, now: int | None) -> str | None:
    """The run that validated the transactions behind ``orders`` at version ``now``: the newest
    succeeded run (or erasure) that recorded the version it left, when no rows changed since."""
    row = (
        lake.read_output(S.RUNS)
        .where(
            (F.col("status") == "succeeded")
            & F.try_element_at(F.col("choices"), F.lit(ORDERS_VERSION)).isNotNull()
        )
        .orderBy(F.col("ended_at").desc())
        .select(S.RUN_ID, "choices")
        .first()
    )
    if row is None or now is None:
        return None
    choices = dict(row["choices"])
    left = int(choices[ORDERS_VERSION])
    if left > now or (left < now and lake.rows_changed(S.ORDERS, left, now)):
        return None
    return choices.get(ORDERS_RUN, row[S.RUN_ID])


def _why_not_incremental(lake: Lakehouse, source: Previous, rules: dict[str, int]) -> str | None:
    """Why new transaction files cannot be validated alone against what run ``source`` left (None:
    they can): lines it quarantined as in the future may be valid now; without the outlier bound it
    used, or the line hashes of its orders, a new line cannot be judged as a full refresh would."""
    if rules.get("future_timestamp"):
        return f"run {source.run_id} quarantined lines dated in the future, which a new run may take"
    if OUTLIER_BOUND not in source.choices:
        return f"run {source.run_id} recorded no outlier bound"
    if S.LINE_HASHES not in lake.read_output(S.ORDERS).columns:
        return "orders were written before their line hashes were kept"
    return None


def _carried_quarantine(lake: Lakehouse, orders_run: str) -> DataFrame:
    """The transactions' quarantine rows of the run that validated them (no stamp columns)."""
    q = lake.read_output(S.QUARANTINE)
    return q.where((F.col(S.RUN_ID) == orders_run) & (F.col(S.Q_SOURCE_TABLE) == "transactions")).drop(
        S.RUN_ID, S.AS_OF_DATE
    )


def reused_transactions(lake: Lakehouse, decision: Decision, pseudonymized: bool) -> IngestResult:
    """The transactions as the run that wrote ``orders`` validated them, nothing read from the
    input: its counts, and its quarantine rows to append again under this run's id (a run's
    quarantine rows are its whole input's, as a full run's are). No orders: they stand. The lines of
    customers erased since are ``erased_customer`` rows, without key or values, as a full refresh
    quarantines them (``Decision.erased``)."""
    from segspark.ingest.result import IngestResult

    source = decision.source
    assert source is not None and decision.mode in ("reuse", "incremental")
    rows_in, rows_clean, rows_quarantined = source.inputs["transactions"]
    carried = _carried_quarantine(lake, source.run_id)
    clean_erased, quarantined_erased = decision.erased
    if clean_erased + quarantined_erased:
        carried = carried.unionByName(_erased_rows(lake.spark, clean_erased + quarantined_erased))
    last = dt.datetime.combine(dt.date.fromisoformat(source.choices[DATA_DATE]), dt.time(0))
    return IngestResult(
        table="transactions",
        clean=None,
        quarantine=carried,
        rows_in=rows_in,
        rows_clean=rows_clean - clean_erased,
        rows_quarantined=rows_quarantined + clean_erased,
        by_rule=dict(decision.reused_rules),
        pseudonymized=pseudonymized,
        last_clean_ts=last,
    )


def _erased_rows(spark: SparkSession, n: int) -> DataFrame:
    """``n`` quarantine rows of the transactions' rule ``erased_customer``: neither key nor values."""
    from segspark.ingest.rules import ERASED_REASON

    return spark.range(n).select(
        F.lit("transactions").alias(S.Q_SOURCE_TABLE),
        F.lit(None).cast("string").alias(S.CUSTOMER_ID),
        F.lit(ERASED_RULE).alias(S.Q_RULE),
        F.lit(ERASED_REASON).alias(S.Q_REASON),
        F.lit(None).cast("string").alias(S.Q_RAW),
    )


def _why_not_skip(
    settings: Settings,
    lake: Lakehouse,
    previous: Previous,
    prints: dict[str, Fingerprint],
    took: Taken,
    state: str,
) -> str | None:
    """Why the run cannot stand on ``previous`` (None: it can)."""
    if settings.run_id == previous.run_id:
        return f"a retry of run {previous.run_id}: every table is committed once"
    if previous.choices.get(STATE_HASH) != state:
        what = "the key, time zone, settings or columns that shape the orders"
        return f"{what} changed since run {previous.run_id}"
    if previous.config_hash != settings.config_hash():
        return f"settings changed since run {previous.run_id}"
    if previous.code_version != code_version():
        return f"segspark {code_version()} differs from {previous.code_version} of run {previous.run_id}"
    if set(took) != set(prints):
        return f"other inputs configured than run {previous.run_id} took"
    for name, now in prints.items():
        found, why = compare(now, *took[name])
        if found != "unchanged":
            return why
    outputs = previous.outputs  # a skipped run wrote none: those of the run it stood on
    if not outputs and previous.manifest_run != previous.run_id:
        stood = last_succeeded(lake, run_id=previous.manifest_run)
        outputs = stood.outputs if stood is not None else ()
    missing = [t for t in outputs if not lake.exists(t)]
    if missing:
        return f"table(s) {', '.join(missing)} of run {previous.run_id} are gone"
    return None


def manifest_frame(spark: SparkSession, prints: dict[str, Fingerprint]) -> DataFrame:
    """The ``input_manifest`` rows of this run: a row per data file, or per Delta input."""
    rows: list[tuple[object, ...]] = []
    for name, p in prints.items():
        if p.files is not None:
            rows += [(name, p.location, f.path, f.size, _utc(f.modified_us), None) for f in p.files]
        elif p.version is not None:
            rows.append((name, p.location, None, None, None, p.version))
    return spark.createDataFrame(rows, tables.INPUT_MANIFEST_SCHEMA)


def _utc(us: int) -> dt.datetime:
    """Microseconds since the epoch as the timestamp Spark stores (read back with ``unix_micros``)."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)
