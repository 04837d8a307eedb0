"""Ray job: Phase 2, hardware metrics under load, runnable with

    ray job submit --working-dir . -- python jobs/collect_metrics.py \
        --prompts /abs/runs/p1/intermediate_prompts.csv --run-dir /abs/runs/p2

Every harvested prompt x strategy x model is probed under N background clients per model, on the simulated cluster
(virtual time). The dataset is written as Parquet shards after every chunk of probes; kill the job at any point and
submit it again with the same --run-dir to finish it (no probe lost, none twice). With --parallel each load level
runs in its own Ray task (collect_metrics_on_ray: the tasks return their rows, the driver writes them); without it
the driver runs the levels itself and needs no Ray at all. Give absolute paths to find the files outside the job's working directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sysaware.config import load_pool
from sysaware.data import dataset_store as store
from sysaware.pipelines.collect_metrics import MetricsSettings, collect_metrics, collect_metrics_on_ray, load_dataset
from sysaware.runs import new_run_dir
from sysaware.tasks.prompts import Strategy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", default="configs/pool_twin.yaml")
    p.add_argument("--prompts", required=True, help="intermediate_prompts.csv from Phase 1")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--levels", default="1,10,50", help="background clients per model, comma-separated")
    p.add_argument("--strategies", default=",".join(s.value for s in Strategy))
    p.add_argument("--models", default=None, help="only these models of the pool, comma-separated")
    p.add_argument("--num-prompts", type=int, default=None, help="only the first N prompts (default: all)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--probe-rate", type=float, default=MetricsSettings.probe_rate_per_s, help="probes/s per model")
    p.add_argument("--chunk-size", type=int, default=MetricsSettings.chunk_size, help="probes per shard")
    p.add_argument("--warmup-s", type=float, default=MetricsSettings.warmup_s)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", action="store_true", help="also write metrics.csv")
    p.add_argument("--parallel", action="store_true", help="one Ray task per load level")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> MetricsSettings:
    return MetricsSettings(
        levels=tuple(int(x) for x in args.levels.split(",") if x.strip()),
        strategies=tuple(Strategy(s.strip()) for s in args.strategies.split(",") if s.strip()),
        models=None if args.models is None else tuple(m.strip() for m in args.models.split(",") if m.strip()),
        num_prompts=args.num_prompts,
        repeats=args.repeats,
        probe_rate_per_s=args.probe_rate,
        chunk_size=args.chunk_size,
        warmup_s=args.warmup_s,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pool_path = str(Path(args.pool).resolve())
    pool = load_pool(pool_path)  # fail fast, with the field named
    settings = settings_from(args)
    out = new_run_dir("collect-metrics", args.run_dir)
    prompts = str(Path(args.prompts).resolve())
    store.remove_stale_temp(out)
    before = len(store.existing_keys(out))
    print(f"{before} probes already collected in {store.dataset_dir(out)}", flush=True)
    if args.parallel and len(settings.levels) > 1:
        import ray

        ray.init(ignore_reinit_error=True)
        collect_metrics_on_ray(pool, prompts, out, settings, progress=not args.no_progress)
    else:
        collect_metrics(pool, prompts, out, settings, progress=not args.no_progress)
    if args.csv:
        store.write_csv(out)
    df = load_dataset(out)
    print(f"{len(df)} probes ({len(df) - before} new) in {store.dataset_dir(out)}", flush=True)


if __name__ == "__main__":
    main()
