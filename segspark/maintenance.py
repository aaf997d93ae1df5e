"""Commands on the whole output lakehouse that are not the pipeline: ``erase`` (right to erasure) and
``vacuum`` (compact small files, then purge file versions older than the retention), each recorded as
a ``runs`` row."""

from __future__ import annotations

import datetime as dt
import logging

from segspark import refresh
from segspark import schema as S
from segspark.context import RunContext, recorded
from segspark.io.engine import MIN_SAFE_RETENTION_HOURS
from segspark.io.lakehouse import OUTPUT_TABLES, check_vacuum_retention

log = logging.getLogger(__name__)


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
        at = _record_erasures(ctx, keys)
        # read before the deletes: what they take from the orders and quarantine the next run stands on
        effect = refresh.erasure_effect(ctx.lake, keys, at)
        ctx.choices.update(effect)
        for name in sorted(OUTPUT_TABLES):
            n = ctx.lake.delete_keys(name, S.CUSTOMER_ID, keys)
            if n:
                deleted[name] = n
                ctx.outputs[name] = ctx.lake.version(name)
        if effect:  # the version the next run's refresh finds this erasure's delete at
            ctx.choices[refresh.ORDERS_VERSION] = str(ctx.lake.version(S.ORDERS))
    log.info(
        "erased %d customer key(s): %s; earlier table versions keep them until 'segspark vacuum' "
        "(lakehouse.vacuum_retention_hours=%s)",
        len(keys),
        deleted,
        settings.lakehouse.vacuum_retention_hours,
    )
    return deleted


def _record_erasures(ctx: RunContext, keys: list[str]) -> dt.datetime:
    """Append the erased keys' tags (SHA-256 of the key as the tables hold it, never the key) and the
    erasure's time to ``erasures``, before any row is deleted: a later run quarantines their rows
    dated up to now without key or values (rule ``erased_customer``), so re-reading an input that
    still holds them does not bring them back; a row dated after the erasure (a purchase since) is
    taken. Returns the erasure's time (UTC), which ``refresh.erasure_effect`` compares orders with."""
    import hashlib

    from segspark import tables

    at = ctx.started.astimezone(dt.timezone.utc)  # aware: Spark stores the instant, whatever the local zone
    rows = [(hashlib.sha256(k.encode("utf-8")).hexdigest(), at) for k in sorted(set(keys))]
    df = ctx.spark.createDataFrame(rows, tables.ERASURES_SCHEMA)
    res = ctx.lake.write(df, S.ERASURES, run_id=ctx.run_id, as_of_date=ctx.as_of_date or at.date())
    ctx.outputs[S.ERASURES] = res.version
    return at


def vacuum(ctx: RunContext, *, force: bool = False, compact: bool = True) -> dict[str, int]:
    """Compact every output table's small files (``compact``, the default; only a table with a partition
    of ``lakehouse.compact_min_files`` files or more), then delete from it the
    files its latest version does not reference and older than ``lakehouse.vacuum_retention_hours``
    (what erasure needs to reach earlier versions, the leftovers of crashed writes, and files a
    compaction replaced); returns files deleted per table.

    Per table, the live files and bytes before and after compaction (or why it was left alone) are
    logged and recorded in the ``runs`` row's ``choices`` (``compaction.<table>``). Below Delta's
    safety minimum of 168 h only with ``force`` (``ConfigError`` otherwise): a shorter retention
    deletes files that a running job or a reader of an older version may still need.
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
            if compact:
                with ctx.timed(f"compact_{name}"):
                    done = ctx.lake.compact(name)
                if done is not None:
                    log.info("compaction of %s: %s", name, done.describe())
                    ctx.choices[f"compaction.{name}"] = done.describe()
            with ctx.timed(f"vacuum_{name}"):
                removed[name] = len(ctx.lake.vacuum(name, force=force))
            ctx.outputs[name] = ctx.lake.version(name)
    log.info("vacuum (retention %s h): %s files deleted", hours, sum(removed.values()))
    return removed
