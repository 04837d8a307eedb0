"""Multi-agent PPO (RLlib new API stack) for the planner and the executor, with the Lagrangian dual update.

    sysaware train-policy --config rllib_configs/default.yaml --run-dir runs/policy-default

One YAML per experiment (rllib_configs/): the env (scenarios, requests per episode, encoder switches, reward), PPO
hyper-parameters, the MLP sizes, the Lagrange multiplier (init, step size, target delta) and the budget (iterations,
wall minutes). Each iteration: ``algo.train()`` samples complete episodes on the env runner(s) and runs PPO on both
modules; then the dual step.

Where lambda lives, and why: in the driver's training loop (``LagrangeMultiplier`` here), updated after every
``algo.train()`` from the violation rate of the requests that iteration's episodes finished (the env runners report
them through ``SysawareCallbacks.on_episode_end``), and pushed to every env runner's environment
(``foreach_env_runner``) before the next sampling round. Rewards are priced in the environments, so the new price
must reach them; it is a dual variable of the whole problem, not a parameter of either agent, so it is not a Learner
hook (a Learner sees only batches already priced); and keeping it in the driver makes it one number however many
env runners there are, saved beside each checkpoint (``lagrange.json``) and restored on resume.

Outputs under the run directory: ``metrics.csv`` (one row per iteration: goodput, pass rate, violation rate,
lambda, returns, losses, wall time), TensorBoard events (``tb/``), ``checkpoint/`` (the full Algorithm, resumable
with ``--resume``), ``policy/`` (the two RLModules alone, ``encoder.json`` and ``lagrange.json``: what serving loads)
and ``curves.png`` (goodput, violation rate, lambda and the strategy share over iterations).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from sysaware.policy.reward import LagrangeMultiplier
from sysaware.policy.train_metrics import TrainMetrics

STAT_KEYS = ("requests", "passed", "violations", "goodput")
ROOT = "sysaware"  # env runner metrics: result["env_runners"]["sysaware"][<stat>]


def load_config(path: str | Path) -> dict:
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    cfg.setdefault("name", Path(path).stem)
    for key in ("env", "ppo", "model", "lagrange", "budget"):
        cfg.setdefault(key, {})
    cfg.setdefault("seed", 0)
    return cfg


def sysaware_envs(env) -> list:
    """The SysawareEnv instances behind an env runner's (vectorised) env."""
    if env is None:
        return []
    env = getattr(env, "unwrapped", env)
    subs = getattr(env, "envs", None)
    if subs is None:
        return [env] if hasattr(env, "set_lambda") else []
    return [getattr(e, "unwrapped", e) for e in subs if hasattr(getattr(e, "unwrapped", e), "set_lambda")]


def _callbacks_class():
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class SysawareCallbacks(RLlibCallback):
        """Reports each finished episode's request outcomes (env.last_episode_stats) as summed metrics."""

        def on_episode_end(self, *, episode, env_runner=None, metrics_logger=None, env=None, env_index=0, **kw):
            stats = getattr(sysaware_envs(env)[env_index] if sysaware_envs(env) else None, "last_episode_stats", None)
            if not stats or metrics_logger is None:
                return
            for k, v in stats.items():
                if isinstance(v, (int, float)) and k != "lambda":
                    metrics_logger.log_value((ROOT, k), float(v), reduce="sum")

    return SysawareCallbacks


def build_algo_config(cfg: dict, lam: float):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from sysaware.policy.env import EXECUTOR, PLANNER, SysawareEnv, policy_mapping_fn
    from sysaware.policy.modules import CandidateScorerModule, MaskedMLPModule

    env_config = {**cfg["env"], "lambda": lam, "seed": cfg["seed"]}
    probe = SysawareEnv(env_config)  # spaces (and a check that the config builds)
    hidden = cfg["model"].get("hidden", [64, 64])
    modules = {
        EXECUTOR: RLModuleSpec(
            module_class=CandidateScorerModule, observation_space=probe._spaces[EXECUTOR][0],
            action_space=probe._spaces[EXECUTOR][1],
            model_config={
                "hidden": hidden, "ctx_dim": probe.enc_spec.executor_ctx_dim, "row_dim": probe.enc_spec.executor_row_dim,
                "num_candidates": probe.enc_spec.num_actions,
            },
        )
    }
    if probe.use_planner:
        modules[PLANNER] = RLModuleSpec(
            module_class=MaskedMLPModule, observation_space=probe._spaces[PLANNER][0],
            action_space=probe._spaces[PLANNER][1], model_config={"hidden": cfg["model"].get("planner_hidden", hidden)},
        )
    ppo = {
        "lr": 3e-4, "gamma": 0.99, "lambda_": 0.95, "train_batch_size_per_learner": 400, "minibatch_size": 100,
        "num_epochs": 6, "entropy_coeff": 0.01, "clip_param": 0.2, "vf_loss_coeff": 0.5, **cfg["ppo"],
    }
    runners = cfg.get("env_runners", {})
    config = (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(SysawareEnv, env_config=env_config, disable_env_checking=True)
        .framework("torch")
        .multi_agent(policies=set(modules), policy_mapping_fn=policy_mapping_fn, policies_to_train=list(modules))
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs=modules))
        .env_runners(
            num_env_runners=runners.get("num_env_runners", 0), batch_mode="complete_episodes",
            rollout_fragment_length=runners.get("rollout_fragment_length", "auto"), num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0)
        .training(**ppo)
        .callbacks(_callbacks_class())
        .debugging(seed=cfg["seed"], log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=20)
    )
    return config, probe


def _get(d: dict, *path, default=math.nan):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def push_lambda(algo, value: float) -> None:
    def _set(runner):
        for env in sysaware_envs(getattr(runner, "env", None)):
            env.set_lambda(value)

    algo.env_runner_group.foreach_env_runner(_set, local_env_runner=True)


def load_initial_weights(algo, policy_dir: str | Path) -> list[str]:
    """Start PPO from a policy directory's modules (e.g. imitate.py's behaviour-cloned executor): their weights go
    into the learner's modules and from there to every env runner. Modules absent from the directory keep their
    random init. Returns the module ids loaded."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from sysaware.policy.serve import policy_paths

    loaded = {}
    for module_id in algo.config.policies:
        try:
            path, _ = policy_paths(policy_dir, module_id)
        except FileNotFoundError:
            continue
        loaded[module_id] = RLModule.from_checkpoint(str(Path(path).resolve())).state_dict()

    def _load(learner):
        for mid, sd in loaded.items():
            learner.module[mid].load_state_dict(sd)

    algo.learner_group.foreach_learner(_load)
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
    return list(loaded)


@dataclass
class TrainOutcome:
    run_dir: Path
    policy_dir: Path
    rows: list[dict]
    wall_s: float


def export_policy(algo, probe, lam: LagrangeMultiplier, out: Path, meta: dict) -> Path:
    """The RLModules alone (what serving loads), the encoder spec and lambda."""
    out.mkdir(parents=True, exist_ok=True)
    for module_id in algo.config.policies:
        algo.get_module(module_id).save_to_path(str(out / module_id))
    probe.enc_spec.save(out / "encoder.json")
    lam.save(out / "lagrange.json")
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return out


def train(
    cfg: dict,
    run_dir: str | Path,
    resume: str | Path | None = None,
    iterations: int | None = None,
    wall_minutes: float | None = None,
    progress: Callable[[dict], None] | None = None,
    checkpoint_every: int = 5,
    init_policy: str | Path | None = None,
) -> TrainOutcome:
    import ray
    from tensorboardX import SummaryWriter

    run_dir = Path(run_dir).resolve()  # RLlib's checkpoints take absolute paths (pyarrow's filesystem)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    lag = cfg["lagrange"]
    lam = LagrangeMultiplier(lag.get("init", 1.0), lag.get("lr", 2.0), lag.get("delta", 0.01), lag.get("max", 20.0), history=[])
    start_iter, prev_wall = 0, 0.0
    if resume is not None:
        resume = Path(resume).resolve()
        state = json.loads((resume / "progress.json").read_text())
        start_iter, prev_wall = state["iteration"], state["wall_s"]
        lam = LagrangeMultiplier.load(resume / "lagrange.json")
        lam.history = []
    iterations = iterations if iterations is not None else cfg["budget"].get("iterations", 20)
    wall_minutes = wall_minutes if wall_minutes is not None else cfg["budget"].get("wall_minutes", 20.0)
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`: the job's cluster
            ray.init()
        else:  # a local cluster sized for a shared 2-core machine
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    config, probe = build_algo_config(cfg, lam.value)
    algo = config.build_algo()
    if resume is not None:
        algo.restore_from_path(str(resume))
    elif init_policy is not None:
        load_initial_weights(algo, init_policy)
    push_lambda(algo, lam.value)
    live = TrainMetrics(run_dir.name)  # ray_sysaware_train_* gauges for the dashboard
    writer = SummaryWriter(str(run_dir / "tb"))
    csv_path = run_dir / "metrics.csv"
    rows: list[dict] = []
    if resume is not None and csv_path.exists():
        with csv_path.open() as f:
            rows = list(csv.DictReader(f))
    started = time.perf_counter()
    it = start_iter
    ckpt = run_dir / "checkpoint"

    def save(final: bool = False) -> None:
        algo.save_to_path(str(ckpt))
        lam.save(ckpt / "lagrange.json")
        probe.enc_spec.save(ckpt / "encoder.json")
        (ckpt / "progress.json").write_text(json.dumps({"iteration": it, "wall_s": prev_wall + time.perf_counter() - started}))

    try:
        while it < iterations and (time.perf_counter() - started) < wall_minutes * 60:
            result = algo.train()
            it += 1
            er = result.get("env_runners", {})
            mine = er.get(ROOT, {})
            stats = {k: float(mine.get(k, 0.0)) for k in STAT_KEYS}
            n = stats["requests"]
            lam_used = lam.value
            lam.update(int(stats["violations"]), int(n))
            push_lambda(algo, lam.value)
            learners = result.get("learners", {})
            row = {
                "iteration": it,
                "wall_s": round(prev_wall + time.perf_counter() - started, 1),
                "requests": int(n),
                "goodput": stats["goodput"] / n if n else math.nan,
                "pass_rate": stats["passed"] / n if n else math.nan,
                "violation_rate": stats["violations"] / n if n else math.nan,
                "lambda_used": lam_used,
                "lambda": lam.value,
                "env_steps": _get(result, "env_runners", "num_env_steps_sampled", default=math.nan),
                "env_steps_lifetime": _get(result, "env_runners", "num_env_steps_sampled_lifetime", default=math.nan),
                "episode_return_mean": _get(er, "episode_return_mean"),
                "executor_return_mean": _get(er, "module_episode_returns_mean", "executor"),
                "planner_return_mean": _get(er, "module_episode_returns_mean", "planner"),
                "executor_entropy": _get(learners, "executor", "entropy"),
                "planner_entropy": _get(learners, "planner", "entropy"),
                "executor_vf_loss": _get(learners, "executor", "vf_loss"),
            }
            for k, v in mine.items():
                if k not in STAT_KEYS and isinstance(v, (int, float)):
                    row[k] = float(v)
            rows.append(row)
            live.record(row)
            for k, v in row.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) and k != "iteration":
                    writer.add_scalar(k, v, it)
            _write_csv(csv_path, rows)
            if progress:
                progress(row)
            if it % checkpoint_every == 0:
                save()
        save(final=True)
        meta = {"config": cfg, "iterations": it, "wall_s": prev_wall + time.perf_counter() - started, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        policy_dir = export_policy(algo, probe, lam, run_dir / "policy", meta)
    finally:
        writer.close()
        algo.stop()
    plot_curves(rows, run_dir / "curves.png")
    return TrainOutcome(run_dir, policy_dir, rows, time.perf_counter() - started)


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot_curves(rows: list[dict], out: Path) -> Path | None:
    """``plots.plot_training`` over the iterations so far. Rows read back from metrics.csv hold strings and a
    missing cell is '' (0.0 is a value, not missing): both become numbers or NaN."""
    if not rows:
        return None
    import pandas as pd

    from sysaware.policy.plots import plot_training

    return plot_training(pd.DataFrame(rows).apply(pd.to_numeric, errors="coerce"), out)
