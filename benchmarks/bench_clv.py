"""CLV fit benchmark: compressed-statistics fit vs the lifetimes package on the same summary data.

Summary data (x, t_x, T on a day grid, mean spend) is simulated with numpy from known BG/NBD and
Gamma-Gamma parameters (CDNOW-like), so no transactions or Spark are needed for the fit timing.
For each size it prints: distinct (x, t_x, T) rows, time to compress (in production Spark's
group-by does this), fit time of BG/NBD + Gamma-Gamma with peak traced memory, the estimates, and the
same for lifetimes where it finishes (skipped above ``--lifetimes-max``) with the largest relative
difference of the estimates. The 1-minute load average is printed with each size: other work on the
machine inflates the times.

    python benchmarks/bench_clv.py --sizes 100000 1000000 10000000 --lifetimes-max 1000000
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from segspark.clv import models as M

TRUE_BG = [0.243, 4.414, 0.793, 2.426]
TRUE_GG = [6.25, 3.74, 15.44]


def simulate(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    T_days = rng.integers(0, 78 * 7, n)  # first purchases spread over 78 weeks, daily grid
    T = T_days / 7.0
    x, t_x = M.simulate(M.BGNBD, TRUE_BG, T, seed=seed + 1)
    t_x = np.minimum(np.round(t_x * 7.0), T_days) / 7.0  # purchases land on days
    m = M.simulate_spend(TRUE_GG, x, seed=seed + 2)
    m = np.round(m, 2)
    return x, t_x, T, m


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, secs, peak / 2**20


def ours(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, m: np.ndarray) -> dict[str, Any]:
    def compress() -> tuple[M.RfmStats, M.SpendStats]:
        # what Spark's group-by hands the driver: distinct triples, and (x, log-spend bin) groups
        rfm = M.RfmStats.from_arrays(x, t_x, T).compress()
        rep = x > 0
        xs, ms = x[rep], m[rep]
        bins = np.floor(np.log(ms) / np.log1p(1e-4))
        df = pd.DataFrame({"x": xs, "b": bins, "m": ms, "lm": np.log(ms)})
        g = df.groupby(["x", "b"], sort=True).agg(n=("m", "size"), sum_lm=("lm", "sum"), mean_m=("m", "mean"))
        spend = M.SpendStats(
            x=g.index.get_level_values("x").to_numpy(np.float64),
            weight=g["n"].to_numpy(np.float64),
            sum_log_m=g["sum_lm"].to_numpy(np.float64),
            mean_m=g["mean_m"].to_numpy(np.float64),
        )
        return rfm, spend

    (rfm, spend), c_secs, c_mem = measure(compress)

    def fit() -> tuple[M.FitResult, M.FitResult]:
        return M.fit_transactions(M.BGNBD, rfm), M.fit_gamma_gamma(spend)

    (bg, gg), f_secs, f_mem = measure(fit)
    return {
        "rows": rfm.n_rows,
        "spend_rows": len(spend.x),
        "compress_s": c_secs,
        "compress_mb": c_mem,
        "fit_s": f_secs,
        "fit_mb": f_mem,
        "bg": bg.params,
        "gg": gg.params,
    }


def theirs(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, m: np.ndarray) -> dict[str, Any]:
    import lifetimes

    def fit() -> tuple[Any, Any]:
        bg = lifetimes.BetaGeoFitter().fit(x, t_x, T)
        rep = x > 0
        gg = lifetimes.GammaGammaFitter().fit(x[rep], m[rep])
        return bg, gg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (bg, gg), secs, mem = measure(fit)
    return {"fit_s": secs, "fit_mb": mem, "bg": dict(bg.params_), "gg": dict(gg.params_)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--lifetimes-max", type=int, default=1_000_000, help="largest size to run lifetimes on")
    args = ap.parse_args(argv)
    for n in args.sizes:
        x, t_x, T, m = simulate(n)
        o = ours(x, t_x, T, m)
        print(
            f"n={n:>11,}  distinct (x,t_x,T)={o['rows']:>9,}  spend groups={o['spend_rows']:>9,}  "
            f"compress {o['compress_s']:.2f}s/{o['compress_mb']:.0f}MB  "
            f"fit BG/NBD+GG {o['fit_s']:.2f}s peak {o['fit_mb']:.0f}MB  "
            f"(compress+fit {o['compress_s'] + o['fit_s']:.2f}s, load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
        print(
            "    segspark  BG/NBD",
            {k: round(v, 4) for k, v in o["bg"].items()},
            " GG",
            {k: round(v, 3) for k, v in o["gg"].items()},
        )
        if n <= args.lifetimes_max:
            t = theirs(x, t_x, T, m)
            print(
                f"    lifetimes fit {t['fit_s']:.2f}s peak {t['fit_mb']:.0f}MB  "
                f"speed-up x{t['fit_s'] / o['fit_s']:.1f}  (load {os.getloadavg()[0]:.2f})"
            )
            print(
                "    lifetimes BG/NBD",
                {k: round(v, 4) for k, v in t["bg"].items()},
                " GG",
                {k: round(v, 3) for k, v in t["gg"].items()},
            )
            diff = max(abs(o["bg"][k] / t["bg"][k] - 1) for k in o["bg"])
            gg_ref = dict(zip(o["gg"], t["gg"].values(), strict=True))  # lifetimes calls gamma "v"
            gg_diff = max(abs(o["gg"][k] / gg_ref[k] - 1) for k in o["gg"])
            print(
                f"    max relative difference vs lifetimes: BG/NBD {diff:.2e}, Gamma-Gamma {gg_diff:.2e}",
                flush=True,
            )
        else:
            print("    lifetimes: not run at this size (--lifetimes-max)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
