"""Does a step's length overrun predict the next step's within one request? Measured on the cached cells of a
scenario evaluation (every policy's steps, the default pool's scenarios), before any training:

    PYTHONPATH=. python docs/rl-length-feedback/persistence.py --run-dir runs/lf-eval

A step's overrun: log(output tokens / the profile's mean output tokens of its (model, strategy, role)). For each
step after a request's first, the steps of that request that had finished when it was decided give the last
finished step's overrun and the mean overrun; printed: their correlation with the step's own overrun, and
P(step > 1.5x | last finished > 1.5x) against the base rate, with 95% intervals from a bootstrap over requests
(steps of one request are not independent).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.policy.world import load_world_scenarios, resources_for
from sysaware.tasks.prompts import Strategy


def pairs(run_dir: Path) -> pd.DataFrame:
    rows, res = [], {}
    for f in sorted((run_dir / "cells").glob("*.steps.parquet")):
        d = pd.read_parquet(f)
        sc = load_world_scenarios([d.scenario.iloc[0]])[0]
        if sc.pool.name not in res:
            res[sc.pool.name] = resources_for(sc.pool)
        r = res[sc.pool.name]
        expected = [r.lengths.tokens(m, Strategy(s), role) for m, s, role in zip(d.model, d.strategy, d.role_id)]
        d = d.assign(over=np.log(d.output_tokens.clip(lower=1) / np.asarray(expected)))
        for run, g in d.sort_values("decided_at_s").groupby("run_id"):
            for i in range(1, len(g)):
                done = g.iloc[:i]
                done = done[done.finished_at_s <= g.decided_at_s.iloc[i] + 1e-9].sort_values("finished_at_s")
                if len(done):
                    rows.append((f"{d.scenario.iloc[0]}/{run}", done.over.iloc[-1], done.over.mean(), g.over.iloc[i]))
    return pd.DataFrame(rows, columns=["request", "last", "mean", "next"])


def _per_request(p: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Per request: the sums the statistics need (so a bootstrap over requests is a weighted sum of them)."""
    q = p.assign(one=1.0, hi=(p["last"] > np.log(1.5)).astype(float), nx=(p["next"] > np.log(1.5)).astype(float))
    q = q.assign(hi_nx=q.hi * q.nx)
    cols = []
    for x in ("last", "mean"):
        q[f"{x}2"], q[f"{x}_next"] = q[x] ** 2, q[x] * q["next"]
        cols += [x, f"{x}2", f"{x}_next"]
    q["next2"] = q["next"] ** 2
    cols += ["next", "next2", "one", "hi", "nx", "hi_nx"]
    g = q.groupby("request")[cols].sum()
    return cols, g.to_numpy()


def stats(cols: list[str], sums: np.ndarray) -> dict[str, float]:
    s = dict(zip(cols, sums))
    n = s["one"]
    out = {}
    for x in ("last", "mean"):
        cov = s[f"{x}_next"] / n - s[x] / n * s["next"] / n
        vx, vy = s[f"{x}2"] / n - (s[x] / n) ** 2, s["next2"] / n - (s["next"] / n) ** 2
        out[f"corr({x}, next)"] = cov / np.sqrt(vx * vy)
    out["P(next>1.5x | last>1.5x)"] = s["hi_nx"] / s["hi"]
    out["P(next>1.5x)"] = s["nx"] / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    p = pairs(args.run_dir)
    cols, per = _per_request(p)
    point = stats(cols, per.sum(axis=0))
    rng = np.random.default_rng(0)
    weights = rng.multinomial(len(per), np.full(len(per), 1.0 / len(per)), size=args.resamples)
    boots = [stats(cols, w @ per) for w in weights]
    print(f"{len(p)} steps with a finished step before them, {len(per)} requests (cells x requests)")
    for k, v in point.items():
        lo, hi = np.quantile([b[k] for b in boots], [0.025, 0.975])
        print(f"{k}: {v:.3f} [{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
