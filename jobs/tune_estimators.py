"""Ray job: the estimators' hyper-parameter sweep (Ray Tune, ASHA), runnable with

    ray job submit --working-dir . -- python jobs/tune_estimators.py \
        --data /abs/runs/p2 --run-dir /abs/runs/tune --num-samples 16 --epochs 30

Each trial runs in its own Ray actor with 1 CPU; the driver retrains the best config of each estimator on all the
non-test prompts and writes latency-v*/ and length-v*/ artifacts and tune_results.csv under --run-dir. Give
absolute paths to find the files outside the job's working directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ray

from sysaware.estimators.train import load_training_data
from sysaware.estimators.tune import TuneSettings, parse_estimators, summary_lines, tune_estimators
from sysaware.runs import new_run_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="Phase 2 run folder (repeatable)")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--estimator", default="both", help="latency | length | both")
    p.add_argument("--num-samples", type=int, default=TuneSettings.num_samples, help="trials per estimator")
    p.add_argument("--epochs", type=int, default=TuneSettings.epochs, help="epochs of a trial ASHA never stops")
    p.add_argument("--grace-period", type=int, default=TuneSettings.grace_period)
    p.add_argument("--max-concurrent", type=int, default=TuneSettings.max_concurrent_trials)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = TuneSettings(
        estimators=parse_estimators(args.estimator),
        num_samples=args.num_samples,
        epochs=args.epochs,
        grace_period=args.grace_period,
        max_concurrent_trials=args.max_concurrent,
        seed=args.seed,
    )
    out = new_run_dir("tune-estimators", args.run_dir).resolve()
    data = [Path(d).resolve() for d in args.data]
    df = load_training_data(data)
    print(f"{len(df)} training rows from {len(data)} Phase 2 run(s)", flush=True)
    ray.init(ignore_reinit_error=True)  # inside a job: connects to the job's cluster, its CPUs
    outcomes = tune_estimators(df, out, settings, embedding_cache=data[0] / "embeddings-minilm.npz")
    for line in summary_lines(outcomes):
        print(line, flush=True)
    print(f"tune_results.csv and artifacts in {out}", flush=True)


if __name__ == "__main__":
    main()
