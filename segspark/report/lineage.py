"""The run's lineage and data quality for the report: its row of ``runs`` (inputs, outputs, config
hash, code version, warnings) and its quarantined rows per source table and rule."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.report.aggregates import small_table
from segspark.report.data import PIPELINE_COMMANDS, RunLineage


def _plain(value: Any) -> Any:
    """A Spark Row (struct) or map as a plain dict; anything else unchanged."""
    if hasattr(value, "asDict"):
        return value.asDict(recursive=True)
    return value


def run_lineage(runs: DataFrame, run_id: str) -> RunLineage | None:
    """The run's row of ``runs``: the latest ``ended_at`` among the pipeline's commands (succeeded
    first), else among any command's rows for the run id; None when the run left no row."""
    q = runs.where(F.col(S.RUN_ID) == F.lit(run_id)) if S.RUN_ID in runs.columns else runs
    rows = [r.asDict(recursive=True) for r in q.limit(1000).collect()]  # a row per attempt of one run
    if not rows:
        return None
    pipeline = [r for r in rows if r.get("command") in PIPELINE_COMMANDS]
    pool = pipeline or rows
    succeeded = [r for r in pool if r.get("status") == "succeeded"]
    pool = succeeded or pool
    epoch = dt.datetime.min.replace(tzinfo=dt.timezone.utc)

    def ended(r: dict[str, Any]) -> dt.datetime:
        t = r.get("ended_at")
        if not isinstance(t, dt.datetime):
            return epoch
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)

    row = max(pool, key=ended)
    inputs = [
        {
            "name": i.get("name"),
            "location": i.get("location") or "",
            "format": i.get("format") or "",
            "version": i.get("version"),
            "rows_in": i.get("rows_in"),
            "rows_clean": i.get("rows_clean"),
            "rows_quarantined": i.get("rows_quarantined"),
        }
        for i in (_plain(x) for x in row.get("inputs") or [])
    ]
    outputs = {str(o["table"]): o.get("version") for o in (_plain(x) for x in row.get("outputs") or [])}
    steps = {str(k): float(v) for k, v in (row.get("step_seconds") or {}).items() if v is not None}
    return RunLineage(
        command=row.get("command"),
        status=row.get("status"),
        started_at=row.get("started_at"),
        ended_at=row.get("ended_at"),
        config_hash=row.get("config_hash"),
        code_version=row.get("code_version"),
        engine=row.get("engine"),
        mlflow_run_id=row.get("mlflow_run_id"),
        inputs=inputs,
        outputs=outputs,
        step_seconds=steps,
        warnings=[str(w) for w in row["warnings"] or [] if w] if "warnings" in row else None,
    )


def quality_table(
    run_id: str, quarantine: DataFrame | None, lineage: RunLineage | None
) -> pd.DataFrame | None:
    """Quarantined rows by source table and rule, from the run's quarantine rows; without that
    table, the per-input totals of the runs row (rule not recorded)."""
    if quarantine is not None and S.Q_RULE in quarantine.columns:
        q = quarantine
        if S.RUN_ID in q.columns and run_id:
            q = q.where(F.col(S.RUN_ID) == F.lit(run_id))
        src = S.Q_SOURCE_TABLE if S.Q_SOURCE_TABLE in q.columns else None
        keys = [F.col(src).alias("source_table")] if src else [F.lit("").alias("source_table")]
        # one row per (source table, rule): the quality rules are a fixed list
        counts = q.groupBy(*keys, F.col(S.Q_RULE).alias("rule")).agg(F.count(F.lit(1)).alias("rows"))
        pdf = small_table(counts, S.QUARANTINE + " (rule counts)", 5_000)
        return pdf.sort_values(["source_table", "rows", "rule"], ascending=[True, False, True]).reset_index(
            drop=True
        )
    if lineage is None or not lineage.inputs:
        return None
    rows = [
        {
            "source_table": i["name"],
            "rule": "(all rules; no quarantine table)",
            "rows": int(i["rows_quarantined"]),
        }
        for i in lineage.inputs
        if i.get("rows_quarantined")
    ]
    return pd.DataFrame(rows, columns=["source_table", "rule", "rows"])
