"""Calibrate the budget shield's margin on TRAINING episodes (train-split tasks, the training scenarios), never on
the test split: roll the environment with an executor policy, record at every decision the estimators' T_hat/P90
of the chosen candidate, and read the call's measured latency when the episode ends.

The margin that makes the queueing formula's P90 (= its mean) a tail bound is a quantile of the measured ratio
latency / P90_hat: with margin m = the ratio's q-quantile, a candidate the shield allows overruns its allowance
with probability <= 1 - q (split-conformal style; the ratios of one episode are not independent, so it is a
guide, checked by the evaluation).

    python -m sysaware.policy.calibrate --config rllib_configs/fixed_planner.yaml --episodes 30 --out runs/cal
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.policy.env import EXECUTOR, SysawareEnv


def roll(env: SysawareEnv, executor, episodes: int, seed: int = 0, estimators: tuple[str, ...] = ("queueing",)) -> pd.DataFrame:
    """One row per executor decision: scenario, role, chosen model/strategy, b_t, steps_left, each estimator's
    T_hat/P90 of the chosen candidate (s), the measured latency (s) and whether the request met its SLO."""
    from sysaware.orchestration.executors import step_query

    ests = {name: env.encoder._make_estimator(name) for name in estimators}
    rng = np.random.default_rng(seed)
    rows = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 100_003 + ep)
        decided: dict[tuple[str, str], dict] = {}
        done = False
        while not done:
            (agent, o), = obs.items()
            _, event = env._current
            if agent.startswith(EXECUTOR):
                ctx = event.context
                action = executor.choose(ctx)
                row = {"scenario": env.scenario.name, "episode": ep, "run_id": ctx.run_id, "slot_id": ctx.slot.slot_id,
                       "role": ctx.role_id, "model": action.model, "strategy": action.strategy.value,
                       "b": ctx.remaining_budget_s, "steps_left": ctx.steps_left, "slo": ctx.slo_s}
                for name, est in ests.items():
                    e = est.estimate(step_query(ctx))[list(ctx.candidates).index(action)]
                    row[f"t_{name}"], row[f"p90_{name}"] = e.t_hat_ms / 1e3, e.t_hat_p90_ms / 1e3
                decided[(ctx.run_id, ctx.slot.slot_id)] = row
                act = env.enc_spec.action_index(action)
            else:
                act = int(rng.integers(len(env.enc_spec.menu)))
            obs, _, term, _, _ = env.step({agent: act})
            done = term["__all__"]
        for request in env.world.requests:
            trace = env.world.trace(request)
            for rec in request.session.workflow.history():
                row = decided.get((request.session.workflow.run_id, rec.slot_id))
                if row is not None:
                    rows.append({**row, "latency": rec.latency_s, "met_slo": bool(trace.met_slo), "passed": bool(trace.passed)})
    return pd.DataFrame(rows)


def margins(df: pd.DataFrame, estimator: str = "queueing", quantiles=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99)) -> dict:
    """Quantiles of latency / P90_hat, overall and per strategy."""
    ratio = df["latency"] / df[f"p90_{estimator}"].clip(lower=1e-3)
    out = {"all": {str(q): round(float(ratio.quantile(q)), 3) for q in quantiles}}
    for s, r in ratio.groupby(df["strategy"]):
        out[s] = {str(q): round(float(r.quantile(q)), 3) for q in quantiles} | {"n": int(r.size)}
    return out


def main(argv=None) -> None:
    import sysaware.policy  # noqa: F401
    from sysaware.orchestration.executors import make_executor
    from sysaware.policy.train import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="rllib_configs/fixed_planner.yaml")
    ap.add_argument("--policy", default="rl", help="executor name (rl, rl@<dir>, greedy@queueing, ...)")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--estimators", default="queueing")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    env = SysawareEnv({**cfg["env"], "seed": args.seed})
    executor = make_executor(args.policy, env.resources)
    df = roll(env, executor, args.episodes, args.seed, tuple(args.estimators.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "decisions.parquet")
    res = {e: margins(df, e) for e in args.estimators.split(",")}
    res["requests"] = int(df.groupby(["episode", "run_id"]).ngroups)
    res["violation_rate"] = float(1 - df.groupby(["episode", "run_id"]).met_slo.first().mean())
    (out / "margins.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
