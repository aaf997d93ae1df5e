"""What a run costs by what changed (README "Refresh: what a run recomputes"). Not a test.

On the data of ``bench_pipeline.py`` (generated once per ``--lines``; transactions as Parquet), in
ONE output folder, in this order, each ``segspark run`` a process of its own:

1. ``full``: the first run of the lakehouse (the whole history);
2. ``unchanged``: the same command again (inputs, settings and code as run 1 took them);
3. ``reuse``: ``as_of_date`` a week before run 1's (the transactions' orders stand; the customer
   state on is recomputed);
4. ``full same date``: ``refresh=full`` at that date (what 3 must equal, and cost less than).

For each: wall seconds (process start to exit), the run's own seconds after its Spark session
started (``runs.duration_s``), its ``choices["refresh"]`` and its stages' seconds. ``--repeat``
runs the sequence again in a fresh folder each time; medians at the end.

    python benchmarks/bench_refresh.py --lines 1000000 --repeat 2

``--incremental``: the transactions split at a week before their last line into a history folder
and the last week's files (streamed with pyarrow, once per ``--lines``); then in one output folder:

1. ``history``: the first run, on the history alone;
2. ``incremental``: the week's files added to the folder: only their lines are validated and
   MERGEd (``refresh`` says ``incremental``);
3. ``full``: ``refresh=full`` on the same files (what 2 must equal, and cost less than); the
   silver tables of 2 and 3 are compared row by row (amounts to 9 decimals).

    python benchmarks/bench_refresh.py --incremental --lines 10000000

``--cmd LABEL=COMMAND`` (with ``--incremental``, repeatable): the same incremental run by several
codes. The history's run once (this checkout); then, per command, a fresh copy of its lakehouse
and one incremental run of that command on it, the week's files added; ``--repeat`` alternates
the order (A B, B A, ...); medians per command:

    python benchmarks/bench_refresh.py --incremental --lines 10000000 \
        --cmd "before=env PYTHONPATH=/tmp/wt-old python -m segspark" --cmd "after=python -m segspark"

``--delta`` (with ``--incremental``): the transactions a Delta path table (the history its first
commit, the week a second one): the incremental run reads only the files the new commit added.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import _env, measure, prepare, run_overrides

STEPS = ("full", "unchanged", "reuse", "full same date")
INCREMENTAL_STEPS = ("history", "incremental", "full")
SILVER = ("orders", "customer_days", "customer_state", "customer_months")


def _runs(output: Path) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(output / "tables" / "runs")).to_pyarrow_table().to_pylist()
    return sorted((r for r in rows if r["command"] == "run"), key=lambda r: r["started_at"])


def _step(
    step: str, items: list[str], output: Path, logs: Path, segspark: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``segspark run`` with ``items`` as its own process (``segspark``: the command that runs
    segspark, this checkout's by default): its ``runs`` row, and the step's figures (wall and
    after-session seconds, the refresh decision, rows in, stage seconds), printed."""
    prefix = segspark or [sys.executable, "-m", "segspark"]
    cmd = [*prefix, "run", *(x for i in items for x in ("--set", i))]
    # started from the logs' folder, not the checkout: ``python -m`` puts its working folder first on
    # the import path, so a command's PYTHONPATH (another code's worktree) would be shadowed there
    logs.mkdir(parents=True, exist_ok=True)
    run = measure(cmd, cwd=logs, env=_env(), log=logs / f"{step.replace(' ', '-')}.log", timeout=3 * 3600)
    if run.code != 0:
        raise SystemExit(f"{step}: exit {run.code}; see {logs}")
    row = _runs(output)[-1]
    choices = dict(row["choices"] or [])
    seconds = dict(row["step_seconds"] or [])
    stages = {k: round(v, 1) for k, v in seconds.items() if k.startswith("stage_")}
    # silver's commits: a full run's writes, an incremental run's MERGE and writes
    silver = {k: round(v, 1) for k, v in seconds.items() if k.split("_", 1)[-1] in SILVER}
    inputs = {i["name"]: i["rows_in"] for i in row["inputs"] or []}
    print(
        f"  {step:15s} {run.wall_s:7.1f} s wall, {row['duration_s']:7.1f} s after the session started",
        flush=True,
    )
    print(f"    {choices.get('refresh', '')[:160]}; rows in {inputs}", flush=True)
    print(f"    {stages}", flush=True)
    print(f"    silver: {silver}", flush=True)
    return row, {
        "step": step,
        "wall_s": round(run.wall_s, 1),
        "after_session_s": round(row["duration_s"], 1),
        "refresh": choices.get("refresh", ""),
        "rows_in": inputs,
        "stages": stages,
        "silver": silver,
    }


def one_sequence(data: dict[str, Any], output: Path, logs: Path, extra: list[str]) -> list[dict[str, Any]]:
    shutil.rmtree(output, ignore_errors=True)
    base = [*run_overrides(data, "tx", output), *extra]
    results: list[dict[str, Any]] = []
    week_before: str | None = None
    for step in STEPS:
        items = list(base)
        if step in ("reuse", "full same date"):
            assert week_before is not None
            items.append(f"as_of_date={week_before}")
        if step == "full same date":
            items.append("refresh=full")
        row, result = _step(step, items, output, logs)
        if week_before is None:
            week_before = (row["as_of_date"] - dt.timedelta(days=7)).isoformat()
        results.append(result)
    return results


def split_week(data: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """The Parquet transactions split at a week before their last line: (history folder, the
    week's folder), made once (pyarrow, streamed)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    where = out / "split"
    history, week = where / "history", where / "week"
    if (where / "DONE").exists():
        return history, week
    shutil.rmtree(where, ignore_errors=True)
    source = ds.dataset(data["parquet"], format="parquet")
    last = pc.max(source.to_table(columns=["order_ts"])["order_ts"]).as_py()
    cut = last - dt.timedelta(days=7)
    kind = source.schema.field("order_ts").type
    edge = pa.scalar(cut, type=kind)
    for folder, keep in ((history, ds.field("order_ts") < edge), (week, ds.field("order_ts") >= edge)):
        ds.write_dataset(
            source.filter(keep),
            folder,
            format="parquet",
            basename_template=f"{folder.name}-{{i}}.parquet",
            max_rows_per_file=2_000_000,
            min_rows_per_group=250_000,
            max_rows_per_group=500_000,
        )
    (where / "DONE").write_text(str(cut))
    return history, week


SILVER_KEYS = {
    "orders": ["customer_id", "order_id"],
    "customer_days": ["customer_id", "order_date"],
    "customer_state": ["customer_id"],
    "customer_months": ["customer_id", "month"],
}


def _silver(output: Path, name: str, version: int) -> Any:
    """Silver table ``name`` at ``version`` as Arrow: no stamps, sorted by its key. Columnar: a
    10M-line history's orders fit in memory this way, not as Python rows."""
    from deltalake import DeltaTable

    table = DeltaTable(str(output / "tables" / name), version=version).to_pyarrow_table()
    table = table.drop_columns(["run_id", "as_of_date"])
    return table.sort_by([(key, "ascending") for key in SILVER_KEYS[name]]).combine_chunks()


def _same(a: Any, b: Any) -> bool:
    """Equal tables, amounts within 1e-6 (sums added in another order differ in the last bits)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not a.schema.equals(b.schema) or a.num_rows != b.num_rows:
        return False
    for field in a.schema:
        x, y = a[field.name], b[field.name]
        if pa.types.is_floating(field.type):
            if not pc.all(pc.equal(pc.is_null(x), pc.is_null(y))).as_py():
                return False
            gap = pc.max(pc.abs(pc.subtract(x, y))).as_py()
            if gap is not None and gap > 1e-6:
                return False
        elif not x.equals(y):
            return False
    return True


def silver_equal(output: Path, incremental: dict[str, int], full: dict[str, int]) -> dict[str, bool]:
    """Each silver table as the incremental run left it against the full run's (by Delta version)."""
    return {
        name: _same(_silver(output, name, incremental[name]), _silver(output, name, full[name]))
        for name in SILVER
    }


def _delta_commit(source: Path, table: Path) -> None:
    """The Parquet files of ``source`` appended to the Delta table ``table`` as one commit (streamed)."""
    import pyarrow.dataset as ds
    from deltalake import write_deltalake

    reader = ds.dataset(source, format="parquet").scanner(batch_size=250_000).to_reader()
    write_deltalake(str(table), reader, mode="append")


def incremental_sequence(
    data: dict[str, Any], out: Path, extra: list[str], delta: bool = False
) -> list[dict[str, Any]]:
    """History, then its week's files added (incremental), then ``refresh=full`` on the same files.
    ``delta``: the transactions a Delta path table instead, the week appended as one commit."""
    history, week = split_week(data, out)
    where = out / ("incremental-delta" if delta else "incremental")
    shutil.rmtree(where, ignore_errors=True)
    folder, output, logs = where / "transactions", where / "output", where / "logs"
    if delta:
        _delta_commit(history, folder)
    else:
        shutil.copytree(history, folder)
    base = [*run_overrides({**data, "parquet": str(folder)}, "tx", output), *extra]
    if delta:
        base.append("input.transactions.format=delta")
    results: list[dict[str, Any]] = []
    versions: dict[str, dict[str, int]] = {}
    for step in INCREMENTAL_STEPS:
        items = [*base, *(["refresh=full"] if step == "full" else [])]
        if step == "incremental" and delta:
            _delta_commit(week, folder)
        elif step == "incremental":
            for f in sorted(week.iterdir()):
                shutil.copy2(f, folder / f.name)
        row, result = _step(step, items, output, logs)
        results.append(result)
        versions[step] = {o["table"]: o["version"] for o in row["outputs"] or []}
    same = silver_equal(output, versions["incremental"], versions["full"])
    print(f"  silver tables equal (incremental vs full): {same}", flush=True)
    results.append({"step": "equal", "tables": same})
    return results


def incremental_pairs(
    data: dict[str, Any], out: Path, extra: list[str], cmds: dict[str, list[str]], repeat: int
) -> dict[str, list[dict[str, Any]]]:
    """The history's run once (this checkout), its lakehouse kept; then for each repetition and
    each command (alternated: A B, B A, ...), a fresh copy of that lakehouse and ONE incremental
    run of that command on it, the week's files added to the transactions folder: the same
    incremental run by two codes, back to back. The copies' MLflow stores still name the history's
    artifact folder (its runs log there); the timings do not depend on it."""
    history, week = split_week(data, out)
    where = out / "pairs"
    shutil.rmtree(where, ignore_errors=True)
    folder, pristine, logs = where / "transactions", where / "history-output", where / "logs"
    shutil.copytree(history, folder)
    base = [*run_overrides({**data, "parquet": str(folder)}, "tx", pristine), *extra]
    _step("history", base, pristine, logs)
    for f in sorted(week.iterdir()):
        shutil.copy2(f, folder / f.name)
    found: dict[str, list[dict[str, Any]]] = {label: [] for label in cmds}
    for i in range(repeat):
        for label in list(cmds) if i % 2 == 0 else list(reversed(cmds)):
            output = where / f"{label}-{i}"
            shutil.rmtree(output, ignore_errors=True)
            shutil.copytree(pristine, output)
            items = [*run_overrides({**data, "parquet": str(folder)}, "tx", output), *extra]
            _, result = _step(f"incremental {label} #{i}", items, output, logs, cmds[label])
            found[label].append(result)
            shutil.rmtree(output, ignore_errors=True)
    print("\n| command | incremental run, wall s (median) | after session start s | runs |")
    print("| --- | --- | --- | --- |")
    for label, results in found.items():
        wall = statistics.median(r["wall_s"] for r in results)
        after = statistics.median(r["after_session_s"] for r in results)
        runs = ", ".join(f"{r['wall_s']:.1f}" for r in results)
        print(f"| {label} | {wall:.1f} | {after:.1f} | {runs} |")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/segspark-bench/pipeline", help="data (shared with bench_pipeline)")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--set", action="append", default=[], dest="extra", help="extra --set for every run")
    p.add_argument("--incremental", action="store_true", help="history, + a week's files, full (see above)")
    p.add_argument("--delta", action="store_true", help="--incremental on a Delta table (the week: a commit)")
    p.add_argument(
        "--cmd",
        action="append",
        default=[],
        help="LABEL=COMMAND running segspark (with --incremental): the history once, then one incremental "
        "run per command on its own copy of the history's lakehouse, alternated over --repeat",
    )
    args = p.parse_args()
    out = Path(args.out)
    data = prepare(out, args.lines)
    if args.incremental and args.cmd:
        cmds = {c.split("=", 1)[0]: shlex.split(c.split("=", 1)[1]) for c in args.cmd}
        where = out / "refresh" / f"incremental-{args.lines}"
        found_pairs = incremental_pairs(data, where, args.extra, cmds, args.repeat)
        (where / "pairs.json").write_text(json.dumps(found_pairs, indent=1, default=str))
        return 0
    if args.incremental:
        print(f"history + its last week on {data['lines']:,} lines", flush=True)
        where = out / "refresh" / f"incremental-{args.lines}"
        found = incremental_sequence(data, where, args.extra, args.delta)
        inc, full = found[1], found[2]
        print("\n| step | wall s | after session start s | of the full run |")
        print("| --- | --- | --- | --- |")
        for r in found[:3]:
            share = r["wall_s"] / full["wall_s"]
            print(f"| {r['step']} | {r['wall_s']:.1f} | {r['after_session_s']:.1f} | {share:.0%} |")
        after = inc["after_session_s"] / full["after_session_s"]
        print(f"incremental / full after the session started: {after:.0%}")
        (out / "refresh" / f"incremental-{args.lines}{'-delta' if args.delta else ''}.json").write_text(
            json.dumps(found, indent=1, default=str)
        )
        return 0
    every: list[list[dict[str, Any]]] = []
    for i in range(args.repeat):
        print(f"sequence {i + 1} of {args.repeat} on {data['lines']:,} lines", flush=True)
        folder = out / "refresh" / f"rep{i}"
        every.append(one_sequence(data, folder / "output", folder / "logs", args.extra))
    print("\n| step | wall s (median) | after session start s | of the full run |")
    print("| --- | --- | --- | --- |")
    full = statistics.median(r[0]["wall_s"] for r in every)
    for k, step in enumerate(STEPS):
        wall = statistics.median(r[k]["wall_s"] for r in every)
        after = statistics.median(r[k]["after_session_s"] for r in every)
        print(f"| {step} | {wall:.1f} | {after:.1f} | {wall / full:.0%} |")
    (out / "refresh" / "results.json").write_text(json.dumps(every, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
