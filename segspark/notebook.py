"""Helpers for the notebooks in ``notebooks/``: open a run's output and look at it.

Everything here reads tables a run already wrote (through :class:`segspark.io.Lakehouse`, so Delta
on the embedded engine, ``delta-spark`` and Unity Catalog names alike) and returns small pandas
frames: aggregate tables, aggregates of customer-level tables, or ``limit``-ed previews. Nothing
brings a whole customer-level table to the driver. The notebooks hold no logic of their own: what
they show comes from here, from the pipeline's own modules, or from the report's files.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark.sql import functions as F

from segspark import cli, cohorts
from segspark import schema as S
from segspark.config import Settings, load_settings
from segspark.io import storage
from segspark.io.lakehouse import OUTPUT_TABLES, Lakehouse
from segspark.kpis import UNASSIGNED
from segspark.report.render import FIGURES, LATEST
from segspark.session import delta_jars_for, get_spark

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pyspark.sql import DataFrame, SparkSession

# The charts a first look needs, in reading order (file stems of ``reports/<run>/figures/*.png``).
KEY_CHARTS: tuple[str, ...] = (
    "revenue_by_segment",
    "lifecycle_funnel",
    "cluster_profiles",
    "cohort_retention",
    "clv_distribution",
    "impact_effort",
)
SEGMENT_TYPES: tuple[str, ...] = ("rfm_segment", "lifecycle_stage", "persona", "value_tier")
# segment_kpis rows a segment-size table shows, in this order
SIZE_KPIS: tuple[str, ...] = ("customers", "customer_share", "revenue_share", "avg_clv", "churn_rate")
NEW = "(new)"  # segment_transitions: customers without a segment in the previous run
TOTAL_BUCKET = "__total__"  # segspark.drift: the row carrying a dimension's PSI
CLV_QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
# percentile_approx accuracy: relative rank error 1/accuracy, plenty for a quantile table
_ACCURACY = 10_000


def env_path(variable: str, default: str | Path) -> Path:
    """``$variable`` as an absolute path, or ``default`` when it is unset or empty (notebook parameters)."""
    return Path(os.environ.get(variable) or default).resolve()


def conf_files(variable: str = "SEGSPARK_CONF") -> list[str]:
    """The config files named in ``$variable`` (``os.pathsep``-separated; none when unset)."""
    return [p for p in (os.environ.get(variable) or "").split(os.pathsep) if p]


def set_args(items: Iterable[str]) -> list[str]:
    """``--set`` arguments for :func:`segspark.cli.main`, one per ``key=value`` item."""
    return [arg for item in items for arg in ("--set", item)]


def conf_args(files: Iterable[str | Path]) -> list[str]:
    """``--conf`` arguments for :func:`segspark.cli.main`, one per file."""
    return [arg for path in files for arg in ("--conf", str(path))]


def run_cli(args: Sequence[str]) -> None:
    """Run ``segspark <args>`` in this process (:func:`segspark.cli.main`); raise when it fails, so a
    notebook stops at the failing step with the CLI's one-line error above."""
    from segspark.cli import main

    code = main(list(args))
    if code != 0:
        raise RuntimeError(f"segspark {args[0] if args else ''} exited with code {code}")


def generated_inputs(data_dir: str | Path) -> list[str]:
    """The ``--set`` items pointing a run at the tables ``segspark generate --out data_dir`` wrote."""
    from segspark import generate

    root = Path(data_dir).resolve()
    return generate.demo_overrides({name: str(root / name) for name in generate.INPUTS})


def session(conf: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> SparkSession:
    """The notebook's Spark session, built from the job's own config (``spark.*`` keys).

    Not owned by the CLI: :func:`segspark.cli.main` called in the notebook reuses it and leaves it
    running, so generate, run and the reading cells share one JVM. Stop it in the last cell.
    """
    return _session(load_settings(list(conf), list(overrides)))


def _session(settings: Settings) -> SparkSession:
    """The session of ``settings``, kept running: Delta's jars as the engine asks, and Hadoop's S3A
    connector with the store's settings where a location is on ``s3a://`` (a session already
    running gets the settings it lacks)."""
    delta = delta_jars_for(settings.lakehouse.engine)
    return get_spark(settings.spark, owned=False, delta=delta, s3a=storage.s3a_conf(settings))


def figure_image(fig: Figure, dpi: int = 100) -> Any:
    """A matplotlib figure of :mod:`segspark.report.charts` as an inline IPython image.

    The report's figures are drawn without pyplot, so IPython has no display hook for them.
    """
    from IPython.display import Image
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # the report's figures are drawn without pyplot: give them a canvas
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return Image(data=buf.getvalue(), format="png")


def images(paths: Iterable[Path]) -> list[Any]:
    """The PNG files as IPython images (``display(*images(...))``)."""
    from IPython.display import Image

    return [Image(filename=str(path)) for path in paths]


@dataclass
class RunOutput:
    """The tables and report under one output location (``output.path`` or catalog + schema)."""

    lake: Lakehouse

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        conf: Sequence[str | Path] = (),
        overrides: Sequence[str] = (),
        spark: SparkSession | None = None,
    ) -> RunOutput:
        """Open the output of ``path`` (else ``output.path`` of the config; a local folder or
        ``s3a://``) on ``spark`` (else the session the config describes, kept running)."""
        items = list(overrides) + ([f"output.path={storage.root_of(str(path))}"] if path is not None else [])
        settings = load_settings(list(conf), items)
        return cls(Lakehouse(spark or _session(settings), settings))

    @property
    def spark(self) -> SparkSession:
        return self.lake.spark

    @property
    def settings(self) -> Settings:
        return self.lake.settings

    @property
    def root(self) -> Path:
        return self.lake.root

    # ---- tables --------------------------------------------------------------------------------
    def tables(self) -> pd.DataFrame:
        """Every output table written so far with its latest Delta version."""
        rows = [(name, self.lake.version(name)) for name in sorted(OUTPUT_TABLES) if self.lake.exists(name)]
        return pd.DataFrame(rows, columns=["table", "version"])

    def latest_as_of(self, name: str = S.CUSTOMER_SEGMENTS) -> dt.date | None:
        """The newest ``as_of_date`` of a snapshot table (from the Delta log); None before any run."""
        latest = self.lake.read_latest_snapshot(name, before=dt.date.max)
        if latest is None:
            return None
        row = latest.select(S.AS_OF_DATE).first()
        return None if row is None else row[0]

    def as_of_dates(self, name: str = S.CUSTOMER_SEGMENTS) -> list[dt.date]:
        """Every ``as_of_date`` snapshot of a table, oldest first (the partition column only)."""
        if not self.lake.exists(name):
            return []
        rows = self.lake.read_output(name).select(S.AS_OF_DATE).distinct().orderBy(S.AS_OF_DATE).collect()
        return [row[0] for row in rows]

    def snapshot(self, name: str, as_of_date: dt.date | None = None) -> DataFrame:
        """One ``as_of_date`` partition of a snapshot table as a Spark DataFrame; by default the latest
        run's date (that of ``customer_segments``): a table the run wrote empty (``drift`` on a first
        run) gives no rows rather than an older date's."""
        date = as_of_date or self.latest_as_of() or self.latest_as_of(name)
        if date is None:
            raise LookupError(f"no {name} snapshot under {self.lake.target(name)}: run the pipeline first")
        return self.lake.read_snapshot(name, date)

    def head(self, name: str, n: int = 10, as_of_date: dt.date | None = None) -> pd.DataFrame:
        """The first ``n`` rows of a table (a snapshot table's latest date): a preview, never the table."""
        df = self.snapshot(name, as_of_date) if name in S.SNAPSHOT_TABLES else self.lake.read_output(name)
        return df.limit(n).toPandas()

    def runs(self, n: int = 10) -> pd.DataFrame:
        """The latest ``n`` rows of ``runs`` (command, status, timings, warnings)."""
        cols = ["run_id", "command", "status", "as_of_date", "started_at", "duration_s", "engine", "warnings"]
        df = self.lake.read_output(S.RUNS).select(*cols).orderBy(F.col("started_at").desc())
        return df.limit(n).toPandas()

    # ---- segments ------------------------------------------------------------------------------
    def kpis(
        self, segment_type: str, kpis: Sequence[str] | None = None, as_of_date: dt.date | None = None
    ) -> pd.DataFrame:
        """``segment_kpis`` of one segment type pivoted to segment x KPI (largest segment first)."""
        long = (
            self.snapshot(S.SEGMENT_KPIS, as_of_date)
            .where(F.col("segment_type") == segment_type)
            .select("segment", "kpi", "value")
            .toPandas()  # an aggregate table: a few rows per segment
        )
        wide = long.pivot(index="segment", columns="kpi", values="value")
        if kpis is not None:
            wide = wide.reindex(columns=list(kpis))
        if "customers" in wide.columns:
            wide = wide.sort_values("customers", ascending=False)
        wide.columns.name = None
        return wide

    def segment_sizes(self, segment_type: str, as_of_date: dt.date | None = None) -> pd.DataFrame:
        """Customers, shares of customers and revenue, average CLV and churn rate per segment."""
        return self.kpis(segment_type, SIZE_KPIS, as_of_date)

    def clv_by_segment(
        self, segment_type: str = "persona", as_of_date: dt.date | None = None
    ) -> pd.DataFrame:
        """The CLV distribution per segment of ``customer_segments``: count, mean, total and quantiles
        (approximate, computed by Spark: only one row per segment reaches the driver)."""
        df = self.snapshot(S.CUSTOMER_SEGMENTS, as_of_date)
        if segment_type not in df.columns:
            raise LookupError(f"customer_segments has no column {segment_type!r} (clustering off?)")
        quantiles = F.percentile_approx(F.col("clv"), list(CLV_QUANTILES), _ACCURACY)
        agg = (
            df.groupBy(F.coalesce(F.col(segment_type), F.lit(UNASSIGNED)).alias("segment"))
            .agg(
                F.count(F.lit(1)).alias("customers"),
                F.avg("clv").alias("mean"),
                F.sum("clv").alias("total"),
                quantiles.alias("q"),
            )
            .select(
                "segment",
                "customers",
                "mean",
                "total",
                *[F.col("q")[i].alias(f"p{round(q * 100)}") for i, q in enumerate(CLV_QUANTILES)],
            )
            .toPandas()
        )
        return agg.sort_values("total", ascending=False).set_index("segment")

    def clv_validity(self, as_of_date: dt.date | None = None) -> pd.DataFrame:
        """The ``clv_fit`` rows saying whether each CLV model is valid and why (section ``validity``)."""
        return (
            self.snapshot(S.CLV_FIT, as_of_date)
            .where(F.col("section") == "validity")
            .select("model", "chosen", "name", "value", "text")
            .orderBy(F.col("chosen").desc(), "model", "name")
            .toPandas()
        )

    # ---- cohorts -------------------------------------------------------------------------------
    def cohort_matrix(
        self, value: str = cohorts.RETENTION_RATE, as_of_date: dt.date | None = None, last_cohorts: int = 24
    ) -> pd.DataFrame:
        """Cohort month x months since first purchase (all customers), as the report draws it."""
        table = self.snapshot(S.COHORT_RETENTION, as_of_date)
        return cohorts.cohort_matrix(table, value=value, last_cohorts=last_cohorts)

    def cohort_heatmap(self, as_of_date: dt.date | None = None) -> Any:
        """The report's retention heatmap of :meth:`cohort_matrix`, as an inline image."""
        from segspark.report.charts import cohort_chart

        return figure_image(cohort_chart(self.cohort_matrix(as_of_date=as_of_date)))

    # ---- drift and transitions -----------------------------------------------------------------
    def previous_as_of(self, as_of_date: dt.date | None = None) -> dt.date | None:
        """The snapshot before ``as_of_date`` (latest by default) that drift compares with, if any."""
        date = as_of_date or self.latest_as_of()
        if date is None:
            return None
        previous = self.lake.read_latest_snapshot(S.CUSTOMER_SEGMENTS, before=date)
        if previous is None:
            return None
        row = previous.select(S.AS_OF_DATE).first()
        return None if row is None else row[0]

    def drift_note(self, as_of_date: dt.date | None = None) -> str:
        """One line saying which snapshots ``drift`` compares, or that there is no earlier one yet."""
        date = as_of_date or self.latest_as_of()
        if date is None:
            return "no customer_segments snapshot yet: run the pipeline first"
        previous = self.previous_as_of(date)
        if previous is None:
            return (
                f"no customer_segments snapshot before {date}: drift and transitions need a previous run "
                "(run or score a later as_of_date, then `segspark monitor`); nothing to compare yet"
            )
        return f"drift of the {date} snapshot against the previous one, {previous} (PSI per dimension)"

    def drift(self, as_of_date: dt.date | None = None) -> pd.DataFrame:
        """PSI and status per monitored dimension (the ``__total__`` rows of ``drift``); empty on a
        first run, when there is no earlier snapshot to compare with."""
        return (
            self.snapshot(S.DRIFT, as_of_date)
            .where(F.col("bucket") == TOTAL_BUCKET)
            .select("dimension", "kind", "psi", "status")
            .orderBy(F.col("psi").desc())
            .toPandas()
        )

    def drift_buckets(self, dimension: str, as_of_date: dt.date | None = None) -> pd.DataFrame:
        """The previous and current share of every bucket of one drift dimension."""
        return (
            self.snapshot(S.DRIFT, as_of_date)
            .where((F.col("dimension") == dimension) & (F.col("bucket") != TOTAL_BUCKET))
            .select("bucket", "previous_share", "current_share")
            .orderBy("bucket")
            .toPandas()
        )

    def transitions(self, dimension: str = "rfm_segment", as_of_date: dt.date | None = None) -> pd.DataFrame:
        """Customers moving from each segment (rows; ``(new)`` on a first run) to each segment (columns)."""
        long = (
            self.snapshot(S.SEGMENT_TRANSITIONS, as_of_date)
            .where(F.col("dimension") == dimension)
            .select(
                F.coalesce(F.col("from_segment"), F.lit(NEW)).alias("from"),
                F.coalesce(F.col("to_segment"), F.lit(UNASSIGNED)).alias("to"),
                "customers",
            )
            .toPandas()
        )
        wide = long.pivot_table(index="from", columns="to", values="customers", aggfunc="sum")
        wide.columns.name = None
        return wide.fillna(0).astype("int64")

    # ---- the report ----------------------------------------------------------------------------
    @property
    def report_dir(self) -> Path:
        """The latest report's folder (``<output.path>/reports/latest``)."""
        return self.root / "reports" / LATEST

    def chart_files(self) -> list[Path]:
        """Every chart the latest report drew (PNG files, sorted by name)."""
        return sorted((self.report_dir / FIGURES).glob("*.png"))

    def key_charts(self, names: Sequence[str] = KEY_CHARTS) -> list[Path]:
        """The report's key charts that this run drew, in :data:`KEY_CHARTS` order (a chart the data
        did not allow is absent, as in the report)."""
        folder = self.report_dir / FIGURES
        return [folder / f"{name}.png" for name in names if (folder / f"{name}.png").is_file()]


# ---- the Databricks notebook (notebooks/03_databricks_job.py) -----------------------------------------
# widget -> (default, label). Empty values leave the job's own default (the config files' value).
JOB_WIDGETS: dict[str, tuple[str, str]] = {
    "command": ("run", "command: run (monthly refit) or score (weekly)"),
    "conf": ("", "config files, comma-separated (workspace files or volume paths)"),
    "as_of_date": ("", "as_of_date YYYY-MM-DD (empty: date of the last clean order)"),
    "catalog": ("", "Unity Catalog catalog of the output tables"),
    "schema": ("", "schema of the output tables"),
    "output_path": ("", "folder for the report and MLflow artifacts (a volume path)"),
}
# the job's commands, not the interactive or data-changing ones a scheduled notebook must not run
JOB_COMMANDS: tuple[str, ...] = tuple(
    c for c in cli.COMMANDS if c not in ("demo", "generate", "erase", "vacuum")
)


def job_args(
    command: str = "run",
    conf: str = "",
    as_of_date: str = "",
    catalog: str = "",
    schema: str = "",
    output_path: str = "",
    run_id: str = "",
) -> list[str]:
    """The ``segspark-job`` arguments for the Databricks notebook's widget values (all strings, as
    widgets give them): ``--conf`` per comma-separated file and one ``--set`` per non-empty value."""
    args = [command.strip() or "run"]
    args += conf_args(p.strip() for p in conf.split(",") if p.strip())
    if run_id.strip():
        args += ["--run-id", run_id.strip()]
    items = {
        "as_of_date": as_of_date,
        "output.catalog": catalog,
        "output.schema": schema,
        "output.path": output_path,
    }
    return args + set_args(f"{key}={value.strip()}" for key, value in items.items() if value.strip())


def job_status(args: Sequence[str], exit_code: int) -> str:
    """The JSON a Databricks notebook exits with: command, exit code and status."""
    import json

    status = "succeeded" if exit_code == 0 else "failed"
    return json.dumps({"command": args[0] if args else None, "exit_code": exit_code, "status": status})
