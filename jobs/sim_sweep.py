"""Ray job: the simulated load sweep, runnable with

    ray job submit --working-dir . -- python jobs/sim_sweep.py --pool configs/pool_twin.yaml

Each load level runs as a Ray task, so a cluster runs the three levels in parallel; locally it is the same code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import ray

from sysaware.config import load_pool
from sysaware.runs import new_run_dir
from sysaware.sim.sweep import SweepSettings, run_level, summarise_level


@ray.remote(num_cpus=1)
def _level(pool_path: str, n: int, settings: SweepSettings) -> tuple[pd.DataFrame, float]:
    run = run_level(load_pool(pool_path), n, settings)
    return summarise_level(run, settings), run.wall_s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pool", default="configs/pool_twin.yaml")
    p.add_argument("--levels", default="1,10,50")
    p.add_argument("--warmup-s", type=float, default=20.0)
    p.add_argument("--measure-s", type=float, default=60.0)
    p.add_argument("--run-dir", default=None)
    args = p.parse_args(argv)
    load_pool(args.pool)  # fail fast, with the field named, before any task starts
    settings = SweepSettings(tuple(int(x) for x in args.levels.split(",")), args.warmup_s, args.measure_s)
    ray.init(ignore_reinit_error=True)
    refs = {n: _level.remote(str(Path(args.pool).resolve()), n, settings) for n in settings.concurrency_levels}
    tables = []
    for n, ref in refs.items():
        df, wall = ray.get(ref)
        print(f"N={n}: {settings.warmup_s + settings.measure_s:.0f} virtual s in {wall:.1f} wall s", flush=True)
        tables.append(df)
    out = new_run_dir("sim-sweep", args.run_dir)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "sim_sweep.csv", index=False)
    print(table.to_string(index=False))
    print(f"written {out / 'sim_sweep.csv'}")


if __name__ == "__main__":
    main()
