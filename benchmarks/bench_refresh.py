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
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import REPO, _env, measure, prepare, run_overrides

STEPS = ("full", "unchanged", "reuse", "full same date")


def _runs(output: Path) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(output / "tables" / "runs")).to_pyarrow_table().to_pylist()
    return sorted((r for r in rows if r["command"] == "run"), key=lambda r: r["started_at"])


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
        cmd = [sys.executable, "-m", "segspark", "run", *(x for i in items for x in ("--set", i))]
        run = measure(cmd, cwd=REPO, env=_env(), log=logs / f"{step.replace(' ', '-')}.log", timeout=3 * 3600)
        if run.code != 0:
            raise SystemExit(f"{step}: exit {run.code}; see {logs}")
        row = _runs(output)[-1]
        if week_before is None:
            week_before = (row["as_of_date"] - dt.timedelta(days=7)).isoformat()
        choices = dict(row["choices"] or [])
        stages = {
            k: round(v, 1) for k, v in dict(row["step_seconds"] or []).items() if k.startswith("stage_")
        }
        results.append(
            {
                "step": step,
                "wall_s": round(run.wall_s, 1),
                "after_session_s": round(row["duration_s"], 1),
                "refresh": choices.get("refresh", ""),
                "stages": stages,
            }
        )
        print(
            f"  {step:15s} {run.wall_s:7.1f} s wall, {row['duration_s']:7.1f} s after the session started",
            flush=True,
        )
        print(f"    {choices.get('refresh', '')[:140]}", flush=True)
        print(f"    {stages}", flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/segspark-bench/pipeline", help="data (shared with bench_pipeline)")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--set", action="append", default=[], dest="extra", help="extra --set for every run")
    args = p.parse_args()
    out = Path(args.out)
    data = prepare(out, args.lines)
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
