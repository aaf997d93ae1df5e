"""The command line: ``segspark <command> [--conf FILE]... [--set key=value]...``.

Exit codes: 0 success; 2 bad configuration or arguments; 3 input data failed a blocking rule;
1 anything else. One clear line on stderr; the full traceback only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segspark.errors import ConfigError, SegsparkError

log = logging.getLogger("segspark")

if TYPE_CHECKING:
    from segspark.config import Settings
    from segspark.context import RunContext


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config file (repeatable, later wins)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one config key, e.g. --set clv.model=pareto_nbd (repeatable)",
    )
    p.add_argument(
        "--run-id", default=None, help="reuse a run id to retry a failed run without duplicating commits"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segspark", description="Customer segmentation strategy on Spark and Delta."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    _pipeline_commands(sub)
    _maintenance_commands(sub)
    return parser


def _data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``demo`` and ``generate``: synthetic data."""
    p = sub.add_parser("demo", help="generate a synthetic lakehouse and run everything on it")
    _common(p)
    p.add_argument(
        "--out", default="./segspark-demo", help="folder for the data, tables, report and MLflow store"
    )
    p.add_argument(
        "--customers", type=int, default=20_000, help="number of synthetic customers (default 20000)"
    )
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("generate", help="write a synthetic multi-table lakehouse with planted segments")
    _common(p)
    p.add_argument("--out", required=True, help="folder for the Delta tables")
    p.add_argument("--customers", type=int, required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--dirty", action="store_true", help="plant bad rows of every kind the quality rules catch"
    )
    p.add_argument(
        "--uniform-spend",
        action="store_true",
        help="one mean order value for every archetype: spend does not depend on purchase frequency",
    )


def _pipeline_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The pipeline and its stages, each with the common options only."""
    for name, text in [
        ("run", "the whole pipeline (refits the clustering: the monthly job)"),
        ("score", "the whole pipeline, clusters assigned by the registered model (the weekly job)"),
        ("ingest", "validate the inputs: quarantine, reconciliation, quality summary"),
        ("features", "ingest + the customer_features and rfm_grid tables"),
        ("clv", "ingest + features + CLV and churn fits (logged to MLflow)"),
        ("cluster", "refit the clustering on the written tables of as_of_date (latest if unset)"),
        ("report", "rebuild the report from the written tables of as_of_date (latest if unset)"),
        ("monitor", "drift of the latest customer_segments snapshot against the previous one"),
    ]:
        _common(sub.add_parser(name, help=text))


def _maintenance_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``erase`` and ``vacuum``: commands on the whole output lakehouse."""
    p = sub.add_parser("erase", help="delete customers from every output table (right to erasure)")
    _common(p)
    p.add_argument(
        "--customer-id",
        action="append",
        required=True,
        dest="customer_ids",
        help="source customer id to erase (repeatable); pseudonymized with the configured key",
    )
    p = sub.add_parser(
        "vacuum",
        help="compact the tables with a partition of lakehouse.compact_min_files small files or more, "
        "then delete table files older than lakehouse.vacuum_retention_hours that the latest version "
        "does not use (erased rows in earlier versions, leftovers of crashed writes, files a "
        "compaction replaced)",
    )
    _common(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="allow a retention under Delta's 168 h safety minimum (no job may be writing or reading "
        "an older version meanwhile)",
    )
    p.add_argument(
        "--no-compact",
        dest="compact",
        action="store_false",
        help="skip compacting small files (OPTIMIZE) before the vacuum; compaction is on by default",
    )


def _settings(args: argparse.Namespace, extra: list[str] | None = None) -> Settings:
    from segspark.config import load_settings

    overrides = list(args.overrides) + list(extra or [])
    if getattr(args, "run_id", None):
        overrides.append(f"run_id={args.run_id}")
    return load_settings(args.conf, overrides)


def cmd_generate(args: argparse.Namespace) -> int:
    from segspark import generate
    from segspark.io import storage

    settings = _settings(args)
    storage.check(args.out, "--out")
    started = time.perf_counter()
    result = generate.write_lakehouse(
        settings, args.out, args.customers, seed=args.seed, dirty=args.dirty, uniform_spend=args.uniform_spend
    )
    elapsed = time.perf_counter() - started
    tx = result["rows"].get("transactions", 0)
    print(
        f"generated {args.customers} customers, {tx} transactions in {elapsed:.1f} s "
        f"({tx / elapsed:,.0f} transactions/s) under {storage.root_of(args.out)}"
    )
    for name, path in result["paths"].items():
        print(f"  {name:16s} {result['rows'][name]:>12,} rows  {path}")
    return 0


def cmd_run(args: argparse.Namespace, extra: list[str] | None = None, demo: bool = False) -> int:
    from segspark import pipeline, tracking
    from segspark.context import open_context

    settings = _settings(args, extra)
    _check_key(settings, demo)
    check_inputs(settings)
    check_storage(settings)
    tracking.prepare(settings)  # the MLflow store is made ready while the session starts
    ctx = open_context(settings, args.command, demo=demo)
    pipeline.run(ctx)
    _print_run(ctx)
    return 0


def _print_run(ctx: RunContext) -> None:
    from segspark.io import storage

    settings = ctx.settings
    print(f"run {ctx.run_id} succeeded (as_of_date {ctx.as_of_date}, engine {ctx.lake.engine})")
    if ctx.refresh is not None and ctx.refresh.mode == "skip":
        print(f"  {ctx.refresh.reason} (refresh: {settings.refresh}; --set refresh=full recomputes)")
    print(f"  tables: {storage.join(ctx.lake.location, 'tables')}")
    for name, version in sorted(ctx.outputs.items()):
        print(f"    {name:22s} version {version}")
    if ctx.report_dir:
        print(f"  report: {ctx.report_dir}")
    for q in ctx.quality:
        rules = ", ".join(f"{r}={n}" for r, n in q["by_rule"].items()) or "none"
        print(
            f"  {q['table']}: {q['rows_in']:,} rows in = {q['rows_clean']:,} clean"
            f" + {q['rows_quarantined']:,} quarantined ({rules})"
        )
    if settings.tracking.enabled:
        print(f"  MLflow: {settings.tracking_uri} (experiment '{settings.tracking.experiment}')")


def cmd_stage(args: argparse.Namespace) -> int:
    from segspark import drift, maintenance, pipeline, tracking
    from segspark.context import open_context

    settings = _settings(args)
    if args.command == "vacuum":  # refused before Spark starts
        from segspark.io.lakehouse import check_vacuum_retention

        check_vacuum_retention(settings.lakehouse.vacuum_retention_hours, args.force)
    check_storage(settings)
    if args.command in pipeline.SELECTIONS:  # a parent MLflow run: its store made ready meanwhile
        tracking.prepare(settings)
    ctx = open_context(settings, args.command)
    if args.command in pipeline.SELECTIONS:  # cluster, report: stages of the pipeline on written tables
        pipeline.run(ctx)
    elif args.command == "monitor":
        totals = drift.monitor(ctx).collect()  # one row per monitored dimension
        if not totals:
            print(
                f"no earlier snapshot than {ctx.as_of_date}: nothing to compare (drift table written empty)"
            )
        for row in totals:
            print(f"  {row['dimension']:18s} PSI {row['psi']:.3f}  {row['status']}")
    elif args.command == "erase":
        deleted = maintenance.erase(ctx, args.customer_ids)
        print(
            f"erased {len(args.customer_ids)} customer(s): "
            + (", ".join(f"{t}={n}" for t, n in deleted.items()) or "no rows found")
        )
        return 0
    elif args.command == "vacuum":
        removed = maintenance.vacuum(ctx, force=args.force, compact=args.compact)
        hours = settings.lakehouse.vacuum_retention_hours
        print(
            f"vacuumed {len(removed)} table(s) (retention {hours} h): {sum(removed.values())} file(s) deleted"
            + "".join(f"\n    {name:22s} {n} file(s)" for name, n in sorted(removed.items()) if n)
        )
        for key, figures in sorted(ctx.choices.items()):
            if key.startswith("compaction."):
                print(f"  compaction {key.removeprefix('compaction.'):22s} {figures}")
        return 0
    _print_run(ctx)
    return 0


def check_inputs(settings: Settings) -> None:
    """Inputs that cannot be there are found before Spark starts (no runs row, no MLflow store):
    transactions must be configured, and a local input path must exist (a Delta one with its log).
    Cloud paths, catalog tables and paths on a remote Spark are left to the reader, which names
    the input too."""
    from segspark.config import InputConfig
    from segspark.errors import InputError

    tx = settings.input.transactions
    if not tx.configured:
        raise InputError(
            "input 'transactions' is not configured: set input.transactions.path "
            "(or input.transactions.table) and input.transactions.format"
        )
    remote = settings.spark.remote
    if remote and not remote.startswith("local"):
        return  # the paths are the cluster's, not this machine's
    for name in InputConfig.model_fields:
        cfg = getattr(settings.input, name)
        if cfg.table or not cfg.path or "://" in cfg.path or cfg.path.startswith("dbfs:"):
            continue
        path = Path(cfg.path)
        if not path.exists():
            raise InputError(f"input '{name}': no {cfg.format} data at {cfg.path} (input.{name}.path)")
        if cfg.format == "delta" and not (path / "_delta_log").is_dir():
            raise InputError(
                f"input '{name}': {cfg.path} is not a Delta table (no _delta_log); "
                f"set input.{name}.format to parquet or csv"
            )


def check_storage(settings: Settings) -> None:
    """Object-store locations are checked before Spark starts (exit 2 with one line naming the path
    and the problem: no such bucket, refused credentials, unreachable endpoint), and a run whose
    output is on an object store has somewhere to keep its MLflow store (``tracking.uri``). Paths on
    a remote Spark or on Databricks are reached with the cluster's credentials: left to it."""
    import os

    from segspark.io import storage

    if settings.tracking.enabled:
        settings.tracking_uri  # noqa: B018  (raises ConfigError when it has nowhere to go)
    remote = settings.spark.remote
    if (remote and not remote.startswith("local")) or "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return  # a cluster's or the platform's own credentials (an instance profile, Unity Catalog)
    storage.check_locations(settings)


def _check_key(settings: Settings, demo: bool) -> None:
    """A missing pseudonymization key is a configuration error: say so before Spark starts."""
    if settings.privacy.pseudonymize:
        from segspark import privacy

        privacy.resolve_key(settings.privacy, demo=demo)


DEMO_ENGINE = "delta-rs"


def cmd_demo(args: argparse.Namespace) -> int:
    from segspark import generate, tracking

    out = Path(args.out).resolve()
    # the embedded engine unless the user chose one: no Maven download on a newcomer's first run
    engine = [] if _settings(args).lakehouse.engine != "auto" else [f"lakehouse.engine={DEMO_ENGINE}"]
    settings = _settings(args, [f"output.path={out}", *engine])
    started = time.perf_counter()
    tracking.prepare(settings)  # the run's MLflow store, made ready while the data are generated
    data = generate.write_lakehouse(settings, str(out / "data"), args.customers, seed=args.seed)
    print(
        f"generated {args.customers} customers ({data['rows']['transactions']:,} transactions) "
        f"in {time.perf_counter() - started:.1f} s under {out / 'data'}"
    )
    # the run reads the same config file the follow-up commands are given: what is printed works
    conf = write_demo_config(out, data["paths"], engine)
    args.conf = [*args.conf, str(conf)]
    args.command = "demo"
    code = cmd_run(args, demo=True)
    print(f"demo finished in {time.perf_counter() - started:.1f} s")
    print(demo_follow_ups(conf, settings, example_id=generate.example_customer_id(data["paths"])))
    return code


def write_demo_config(out: Path, data_paths: dict[str, str], extra: list[str] | None = None) -> Path:
    """``<out>/segspark-demo.yaml``: the demo's inputs, output folder and engine, for follow-up commands."""
    import yaml

    from segspark import generate
    from segspark.config import parse_override

    data: dict[str, Any] = {}
    for item in [f"output.path={out}", *generate.demo_overrides(data_paths), *(extra or [])]:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path = out / "segspark-demo.yaml"
    path.write_text(
        "# Written by `segspark demo`: its generated inputs and output folder.\n"
        "# Pass it to any command: segspark <command> --conf "
        + str(path)
        + "\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return path


def demo_follow_ups(conf: Path, settings: Settings, example_id: str | None) -> str:
    """The follow-up commands that work on the demo's output, key included when the demo's own."""
    import os

    from segspark.privacy import DEMO_KEY

    env = settings.privacy.key_env
    # the demo pseudonymizes with its public key unless the user set one: erase and score must use it
    prefix = "" if os.environ.get(env) else f"{env}={DEMO_KEY} "
    who = example_id or "<source customer id>"
    lines = [
        f"config for follow-up commands: {conf}",
        f"  {prefix}segspark score   --conf {conf}    # the weekly job: personas from the registered model",
        f"  {prefix}segspark monitor --conf {conf}    # drift against the previous snapshot",
        f"  {prefix}segspark report  --conf {conf}    # rebuild the report from the tables",
        f"  {prefix}segspark erase   --conf {conf} --customer-id {who}    # right to erasure",
        f"  {prefix}segspark vacuum  --conf {conf}    # purge file versions older than the retention",
    ]
    if prefix:
        lines.append(f"  ({env}={DEMO_KEY} is the demo's public key; real data needs your own secret key)")
    return "\n".join(lines)


COMMANDS = {
    "generate": cmd_generate,
    "run": cmd_run,
    "score": cmd_run,
    "ingest": cmd_run,
    "features": cmd_run,
    "clv": cmd_run,
    "demo": cmd_demo,
    "cluster": cmd_stage,
    "report": cmd_stage,
    "monitor": cmd_stage,
    "erase": cmd_stage,
    "vacuum": cmd_stage,
}


def _dispatch(args: argparse.Namespace) -> int:
    from segspark.session import check_pyspark, stop_owned

    check_pyspark()
    try:
        return COMMANDS[args.command](args)
    finally:
        stop_owned()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "urllib3", "mlflow", "alembic", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except SegsparkError as exc:
        if args.verbose:
            traceback.print_exc()
        kind = "configuration error" if isinstance(exc, ConfigError) else "error"
        print(f"segspark: {kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("segspark: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"segspark: unexpected {type(exc).__name__}: {first} (rerun with --verbose for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
