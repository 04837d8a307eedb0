"""Behaviour cloning of the oracle executor: a warm start for the RL executor (and, on its own, a trained executor).

Why: PPO from scratch on 2 cores (24 iterations, 14k decisions) learned a policy that only matched greedy; the
oracle executor (greedy with each candidate's TRUE latency, from forking the simulated cluster) is ~10 goodput points
above greedy in the contended scenarios. Its decisions are a dense, per-step training signal available in
simulation exactly like the RL reward is: we roll the training environment (env.py, train-split tasks, the
training scenarios) with the oracle answering every decision point, record (executor observation, oracle action),
and fit the executor's ``CandidateScorerModule`` by masked cross-entropy. The student still sees only its
observation (spaces.py: task sketch, b_t, profile quality, estimator T_hat/P90, queue/KV), never a fork: at serving
it is the same RLModule as a PPO-trained one. ``dagger_rounds`` > 0 adds DAgger rounds (Ross et al., 2011): the
student acts, the oracle labels the states the student reaches, and the model is refit on the union.

    sysaware imitate-policy --config rllib_configs/imitate.yaml --run-dir runs/bc-s0 --seed 0

Writes ``<run>/policy`` in the layout serving loads (``executor/``, ``encoder.json``, ``lagrange.json``,
``meta.json``) and ``<run>/data.npz`` (the labelled decisions). The PPO fine-tune starts from it with
``train-policy --init-policy <run>/policy``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sysaware.policy.env import EXECUTOR, SysawareEnv


@dataclass
class Decisions:
    obs: list[np.ndarray]
    mask: list[np.ndarray]
    action: list[int]

    def extend(self, other: "Decisions") -> None:
        self.obs += other.obs
        self.mask += other.mask
        self.action += other.action

    def save(self, path: Path) -> None:
        np.savez_compressed(path, obs=np.asarray(self.obs), mask=np.asarray(self.mask), action=np.asarray(self.action))


def collect(env: SysawareEnv, episodes: int, student=None, seed: int = 0, progress=None,
            shard_dir: Path | None = None) -> tuple[Decisions, list[dict]]:
    """Roll ``episodes`` episodes with the oracle labelling every executor decision; ``student`` (obs -> index) acts
    when given (DAgger), else the oracle does. Planner decisions (planner: rl) are random menu picks. With
    ``shard_dir`` each episode's decisions are also saved there as they finish (``load_shards`` reads them back),
    so a long collection can be cut short, or spread over processes, without losing what it labelled."""
    from sysaware.orchestration.executors import OracleExecutor

    oracle = OracleExecutor(env.resources)
    rng = np.random.default_rng(seed)
    data, stats = Decisions([], [], []), []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 100_003 + ep)
        done = False
        first = len(data.action)
        while not done:
            (agent, o), = obs.items()
            _, event = env._current
            if agent.startswith(EXECUTOR):
                label = env.enc_spec.action_index(oracle.choose(event.context))
                data.obs.append(o["observations"]), data.mask.append(o["action_mask"]), data.action.append(label)
                act = label if student is None else student(o)
            else:
                act = int(rng.integers(len(env.enc_spec.menu)))
            obs, _, term, _, _ = env.step({agent: act})
            done = term["__all__"]
        stats.append(dict(env.last_episode_stats or {}))
        if shard_dir is not None:
            shard_dir.mkdir(parents=True, exist_ok=True)
            Decisions(data.obs[first:], data.mask[first:], data.action[first:]).save(shard_dir / f"s{seed}-e{ep:04d}.npz")
            (shard_dir / f"s{seed}-e{ep:04d}.json").write_text(json.dumps(stats[-1]))
        if progress:
            progress(ep, stats[-1], len(data.action))
    return data, stats


def load_shards(*dirs: Path, bootstrap_seed: int | None = None) -> tuple[Decisions, list[dict]]:
    """Every episode shard ``collect`` saved under ``dirs`` (in name order), and their episode stats. With
    ``bootstrap_seed``, a bootstrap resample of the episodes instead (as many, drawn with replacement): what makes
    training seeds differ in their data as well as in their init and minibatch order."""
    files = [f for d in dirs for f in sorted(Path(d).glob("*.npz"))]
    if bootstrap_seed is not None:
        rng = np.random.default_rng(bootstrap_seed)
        files = [files[i] for i in rng.integers(len(files), size=len(files))]
    data, stats = Decisions([], [], []), []
    for f in files:
        z = np.load(f)
        data.extend(Decisions(list(z["obs"]), list(z["mask"]), [int(a) for a in z["action"]]))
        meta = f.with_suffix(".json")
        if meta.exists():
            stats.append(json.loads(meta.read_text()))
    return data, stats


ESTIMATE_COLUMNS = slice(3, 9)  # spaces.ROW_COLUMNS: log_t_hat .. p90_fits_b (the v_estimates block)


def strip_estimates(data: Decisions, ctx_dim: int, row_dim: int) -> Decisions:
    """The same decisions as an encoder with ``use_estimates`` off would have observed them: the T_hat/P90
    columns of every row zeroed (spaces.py writes zeros there when the block is off)."""
    from sysaware.policy.spaces import ROW_COLUMNS

    assert ROW_COLUMNS[ESTIMATE_COLUMNS] == ("log_t_hat", "log_t_hat_over_share", "t_hat_over_b", "log_p90_over_share",
                                             "p90_fits_share", "p90_fits_b"), "spaces.ROW_COLUMNS moved"
    obs = []
    for o in data.obs:
        o = np.array(o, copy=True)
        rows = o[ctx_dim:].reshape(-1, row_dim)
        rows[:, ESTIMATE_COLUMNS] = 0.0
        obs.append(o)
    return Decisions(obs, list(data.mask), list(data.action))


def build_module(env: SysawareEnv, hidden: list[int]):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from sysaware.policy.modules import CandidateScorerModule

    obs_space, act_space = env._spaces[EXECUTOR]
    spec = RLModuleSpec(
        module_class=CandidateScorerModule, observation_space=obs_space, action_space=act_space,
        model_config={"hidden": hidden, "ctx_dim": env.enc_spec.executor_ctx_dim, "row_dim": env.enc_spec.executor_row_dim,
                      "num_candidates": env.enc_spec.num_actions},
    )
    return spec.build()


def fit(module, data: Decisions, epochs: int = 60, lr: float = 3e-3, batch: int = 256, seed: int = 0) -> dict:
    """Masked cross-entropy of the module's logits against the oracle's actions (Adam, minibatches)."""
    import torch
    from ray.rllib.core.columns import Columns

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny batches: threads only contend on a shared 2-core machine (as serve.load_module)
    x = torch.as_tensor(np.asarray(data.obs), dtype=torch.float32)
    m = torch.as_tensor(np.asarray(data.mask), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(data.action), dtype=torch.int64)
    params = list(module.trunk.parameters()) + list(module.logit.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    n = len(y)
    g = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            logits = module._forward({Columns.OBS: {"observations": x[idx], "action_mask": m[idx]}})[Columns.ACTION_DIST_INPUTS]
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    module.eval()
    with torch.no_grad():
        logits = module._forward({Columns.OBS: {"observations": x, "action_mask": m}})[Columns.ACTION_DIST_INPUTS]
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(-1) == y).float().mean())
    return {"loss": loss, "accuracy": acc, "decisions": n}


def student_of(module):
    from sysaware.policy.modules import NumpyScorer

    head = NumpyScorer.from_module(module)
    return head.act


def summarise(stats: list[dict]) -> dict:
    tot = Counter()
    for s in stats:
        tot.update({k: v for k, v in s.items() if isinstance(v, (int, float)) and k != "lambda"})
    n = max(tot["requests"], 1)
    return {"requests": tot["requests"], "goodput": tot["goodput"] / n, "pass_rate": tot["passed"] / n,
            "violation_rate": tot["violations"] / n,
            "strategy": {k.split(":", 1)[1]: v for k, v in tot.items() if k.startswith("strategy:")}}


def imitate(cfg: dict, run_dir: str | Path, episodes: int | None = None, dagger_rounds: int | None = None,
            progress=None) -> Path:
    """Collect oracle decisions, fit, optionally DAgger; export the policy directory serving loads."""
    from sysaware.policy.reward import LagrangeMultiplier

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    im = cfg.get("imitate", {})
    episodes = episodes if episodes is not None else im.get("episodes", 40)
    rounds = dagger_rounds if dagger_rounds is not None else im.get("dagger_rounds", 1)
    dagger_episodes = im.get("dagger_episodes", max(episodes // 2, 1))
    seed = int(cfg.get("seed", 0))
    env = SysawareEnv({**cfg["env"], "seed": seed, "lambda": cfg.get("lagrange", {}).get("init", 1.0)})
    t0 = time.perf_counter()
    if im.get("data"):  # oracle decisions already collected (shards of ``collect``): fit on them
        data, stats = load_shards(*[Path(d) for d in im["data"]], bootstrap_seed=seed if im.get("bootstrap") else None)
        if not env.enc_spec.use_estimates:  # shards are collected with the estimates on: the ablation drops them
            data = strip_estimates(data, env.enc_spec.executor_ctx_dim, env.enc_spec.executor_row_dim)
    else:
        data, stats = collect(env, episodes, seed=seed, progress=progress, shard_dir=run_dir / "shards")
    data.save(run_dir / "data0.npz")  # the oracle's own decisions (round 0), reusable by ablations
    log = [{"round": 0, "teacher": summarise(stats), "collect_s": round(time.perf_counter() - t0, 1)}]
    hidden = list(cfg.get("model", {}).get("hidden", [64, 64]))
    import torch

    torch.manual_seed(seed)
    module = build_module(env, hidden)
    log[-1]["fit"] = fit(module, data, epochs=im.get("epochs", 60), lr=im.get("lr", 3e-3), seed=seed)
    for r in range(1, rounds + 1):
        t1 = time.perf_counter()
        more, st = collect(env, dagger_episodes, student=student_of(module), seed=seed + 1000 * r, progress=progress,
                           shard_dir=run_dir / f"dagger{r}")
        data.extend(more)
        log.append({"round": r, "student": summarise(st), "collect_s": round(time.perf_counter() - t1, 1)})
        log[-1]["fit"] = fit(module, data, epochs=im.get("epochs", 60), lr=im.get("lr", 3e-3), seed=seed + r)
    data.save(run_dir / "data.npz")
    out = run_dir / "policy"
    out.mkdir(parents=True, exist_ok=True)
    module.save_to_path(str(out / EXECUTOR))
    env.enc_spec.save(out / "encoder.json")
    lag = cfg.get("lagrange", {})
    LagrangeMultiplier(lag.get("init", 1.0), lag.get("lr", 2.0), lag.get("delta", 0.01), lag.get("max", 20.0)).save(out / "lagrange.json")
    meta = {"config": cfg, "method": "behaviour cloning of the oracle executor" + (f" + {rounds} DAgger round(s)" if rounds else ""),
            "rounds": log, "wall_s": round(time.perf_counter() - t0, 1),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    (run_dir / "imitate.json").write_text(json.dumps(log, indent=1, default=str) + "\n")
    return out
