"""Ray job: train the planner and executor (multi-agent PPO with the Lagrangian update), runnable with

    ray job submit --working-dir . -- python jobs/train_policy.py \
        --config rllib_configs/default.yaml --run-dir /abs/runs/policy-default

Resumable: submit again with ``--resume /abs/runs/policy-default/checkpoint`` (same --run-dir) to continue from the
last checkpoint (written every 5 iterations and at the end) with its lambda. Progress is printed one line per
iteration; metrics.csv, TensorBoard events (tb/), curves.png and the exported policy/ land under --run-dir.
"""

from __future__ import annotations

import argparse

from sysaware.policy.train import load_config, train
from sysaware.runs import new_run_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="rllib_configs/default.yaml")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", default=None, help="<run>/checkpoint to continue from")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--wall-minutes", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config)
    if args.seed is not None:
        cfg["seed"] = args.seed
    out = new_run_dir("train-policy", args.run_dir).resolve()
    outcome = train(
        cfg, out, resume=args.resume, iterations=args.iterations, wall_minutes=args.wall_minutes,
        progress=lambda row: print({k: row[k] for k in ("iteration", "wall_s", "requests", "goodput", "violation_rate", "lambda")}, flush=True),
    )
    print(f"policy in {outcome.policy_dir}", flush=True)


if __name__ == "__main__":
    main()
