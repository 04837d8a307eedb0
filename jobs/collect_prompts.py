"""Ray job: Phase 1, intermediate prompts, runnable with

    ray job submit --working-dir . -- python jobs/collect_prompts.py --pool configs/pool_twin.yaml --run-dir runs/p1

The runs the CSV lacks are split into shards, each simulated by a Ray task; the driver appends each shard's rows as
it completes, so an interrupted job resumes where it stopped (rerun with the same --run-dir and --seed). Give an
absolute --run-dir to find the file outside the job's working directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ray

from sysaware.config import load_pool
from sysaware.pipelines.collect_prompts import (
    CSV_NAME,
    CollectSettings,
    RunKey,
    append_rows,
    complete_runs,
    planned_runs,
    read_existing,
    simulate_runs,
)
from sysaware.runs import new_run_dir


@ray.remote(num_cpus=1)
def _shard(pool_path: str, runs: list[RunKey], settings: CollectSettings) -> list[list[dict]]:
    from sysaware.sim.backend import SimBackend

    pool = load_pool(pool_path)
    backend = SimBackend(pool)
    out = []
    for start in range(0, len(runs), settings.batch_size):
        out += simulate_runs(pool, runs[start : start + settings.batch_size], settings, backend)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pool", default="configs/pool_twin.yaml")
    p.add_argument("--runs-per-task", type=int, default=2)
    p.add_argument("--tasks", type=int, default=None, help="only the first N train tasks (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shards", type=int, default=2, help="Ray tasks the missing runs are split into")
    p.add_argument("--run-dir", default=None)
    args = p.parse_args(argv)
    pool_path = str(Path(args.pool).resolve())
    load_pool(pool_path)  # fail fast, with the field named, before any task starts
    settings = CollectSettings(args.runs_per_task, args.tasks, args.seed, args.batch_size)
    out = new_run_dir("collect-prompts", args.run_dir)
    path = out / CSV_NAME
    done = complete_runs(path)
    known = set(read_existing(path)["prompt_id"])
    todo = [k for k in planned_runs(settings) if k.run_id not in done]
    print(f"{len(done)} runs already collected, {len(todo)} to go", flush=True)
    ray.init(ignore_reinit_error=True)
    shards = max(1, min(args.shards, len(todo)))
    pending = [_shard.remote(pool_path, todo[i::shards], settings) for i in range(shards) if todo[i::shards]]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        written = sum(append_rows(path, rows, known) for rows in ray.get(ready[0]))
        print(f"shard done: {written} prompts written, {len(pending)} shards left", flush=True)
    df = read_existing(path)
    print(f"{len(df)} prompts from {df['run_id'].nunique() if len(df) else 0} runs in {path}", flush=True)


if __name__ == "__main__":
    main()
