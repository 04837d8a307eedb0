"""The RL policy layer: the Lagrange multiplier, the reward, the encoders, the MultiAgentEnv's protocol, and (with
Ray) a smoke training run whose checkpoint is served without the Algorithm."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from sysaware.orchestration.context import Action
from sysaware.policy.reward import LagrangeMultiplier, RewardConfig, final_reward, quality_advantage, step_overrun, step_reward
from sysaware.tasks.prompts import Strategy


# --- lambda and reward ----------------------------------------------------------------------------------------------
def test_lambda_rises_when_violations_exceed_delta_and_falls_otherwise():
    lam = LagrangeMultiplier(value=1.0, lr=2.0, delta=0.01)
    assert lam.update(violations=10, requests=100) == pytest.approx(1.0 + 2.0 * (0.10 - 0.01))
    before = lam.value
    assert lam.update(violations=0, requests=100) == pytest.approx(before - 2.0 * 0.01)
    assert lam.update(violations=0, requests=0) == pytest.approx(before - 2.0 * 0.01)  # nothing measured: no step


def test_lambda_is_clipped_at_zero_and_at_its_max():
    lam = LagrangeMultiplier(value=0.005, lr=1.0, delta=0.5)
    assert lam.update(0, 10) == 0.0
    assert lam.update(0, 10) == 0.0
    hi = LagrangeMultiplier(value=9.9, lr=10.0, delta=0.0, max_value=10.0)
    assert hi.update(10, 10) == 10.0


def test_lambda_state_round_trips(tmp_path):
    lam = LagrangeMultiplier(value=2.5, lr=0.5, delta=0.02)
    lam.save(tmp_path / "l.json")
    back = LagrangeMultiplier.load(tmp_path / "l.json")
    assert (back.value, back.lr, back.delta) == (2.5, 0.5, 0.02)


def test_reward_terms():
    assert step_overrun(1.0, remaining_budget_s=4.0, steps_left=2, slo_s=10.0) == 0.0  # within its 2 s share
    assert step_overrun(3.0, remaining_budget_s=4.0, steps_left=2, slo_s=10.0) == pytest.approx(0.1)
    assert step_overrun(1.0, remaining_budget_s=-1.0, steps_left=1, slo_s=10.0) == pytest.approx(0.1)
    cfg = RewardConfig()
    assert final_reward(cfg, 3.0, passed=True, violated=False) == 1.0
    assert final_reward(cfg, 3.0, passed=True, violated=True) == pytest.approx(-2.0)
    assert final_reward(cfg, 0.0, passed=False, violated=True) == 0.0


def test_quality_shaping_is_the_advantage_over_the_valid_candidates_mean():
    q = np.array([0.30, 0.50, 0.70, 0.90], np.float32)
    mask = np.array([1, 1, 1, 0], np.float32)  # the 0.90 cell is masked: it does not raise the mean
    assert quality_advantage(q, mask, 2) == pytest.approx(0.70 - 0.50)
    assert quality_advantage(q, mask, 0) == pytest.approx(0.30 - 0.50)
    assert quality_advantage(q, np.zeros(4, np.float32), 0) == 0.0
    # shaping weight 1.0, no lambda on it: 1.0 x 0.2; the overrun term is priced by lambda alone
    assert step_reward(RewardConfig(quality_shaping=1.0), 3.0, 0.0, 0.2) == pytest.approx(0.2)
    assert step_reward(RewardConfig(quality_shaping=1.0, step_penalty=0.5), 2.0, 0.1, 0.0) == pytest.approx(-0.1)


def test_lambda_of_the_shipped_configs_is_capped_at_3():
    """lambda reached 6.8 with cap 10 and drowned the quality signal: the configs cap it at 3, step 0.5."""
    from sysaware.policy.train import load_config

    for name in ("default", "fixed_planner", "no_estimates"):
        lag = load_config(f"rllib_configs/{name}.yaml")["lagrange"]
        assert (lag["lr"], lag["max"]) == (0.5, 3.0), name
        lam = LagrangeMultiplier(lag["init"], lag["lr"], lag["delta"], lag["max"])
        for _ in range(20):
            lam.update(violations=100, requests=100)
        assert lam.value == 3.0


# --- encoders and the environment -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env():
    from sysaware.policy.env import SysawareEnv

    return SysawareEnv({"scenarios": ["idle"], "requests_per_episode": 3, "embed": "hash", "task_dims": 8})


def test_action_codec_round_trips(env):
    spec = env.enc_spec
    for i, a in enumerate(spec.actions):
        assert spec.action_index(a) == i and spec.action_of(i) == a
    mask = env.encoder.executor_mask([Action(spec.models[1], Strategy.FLASH)])
    assert mask.sum() == 1 and mask[spec.action_index(Action(spec.models[1], Strategy.FLASH))] == 1


def _masked_random(obs, rng):
    return {a: int(rng.choice(np.flatnonzero(o["action_mask"]))) for a, o in obs.items()}


def test_episode_protocol(env):
    """One acting agent per step; the planner first for each request; every agent that acted ends with a last
    observation and terminated=True; episodes are never truncated; observations lie in their spaces."""
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=1)
    returns: dict[str, float] = {}
    planners_seen, steps = [], 0
    while True:
        assert len(obs) == 1
        (agent, o), = obs.items()
        assert env.get_observation_space(agent).contains(o), agent
        if agent.startswith("planner/"):
            planners_seen.append(agent)
        else:
            assert f"planner/{agent.split('/')[1]}" in planners_seen  # the plan comes before the request's steps
        obs, rew, term, trunc, _ = env.step(_masked_random(obs, rng))
        steps += 1
        assert trunc == {"__all__": False}
        for k, v in rew.items():
            assert math.isfinite(v)
            returns[k] = returns.get(k, 0.0) + v
        if term["__all__"]:
            break
        assert term == {"__all__": False}
    assert set(obs) == {a for a in term if a != "__all__"}
    assert all(term[a] for a in obs)
    assert len(planners_seen) == 3 and {f"executor/{i}" for i in range(3)} <= set(obs)
    stats = env.last_episode_stats
    assert stats["requests"] == 3
    # the planner's return is the request's end reward: passed - lambda x missed
    for i in range(3):
        r = returns.get(f"planner/{i}", 0.0)
        assert r in (pytest.approx(1.0), pytest.approx(0.0), pytest.approx(-env.lam), pytest.approx(1.0 - env.lam))


def test_masked_action_is_rejected(env):
    obs, _ = env.reset(seed=2)
    (agent, o), = obs.items()
    while agent.startswith("planner/"):
        obs, *_ = env.step({agent: 0})
        (agent, o), = obs.items()
    masked = np.flatnonzero(o["action_mask"] == 0)
    if len(masked):
        with pytest.raises(ValueError, match="masked action"):
            env.step({agent: int(masked[0])})


def test_lambda_reaches_the_rewards(env):
    env.set_lambda(0.0)
    rng = np.random.default_rng(3)
    obs, _ = env.reset(seed=3)
    total = 0.0
    while True:
        obs, rew, term, *_ = env.step(_masked_random(obs, rng))
        total += sum(v for k, v in rew.items() if k.startswith("planner/"))
        if term["__all__"]:
            break
    assert total == pytest.approx(env.last_episode_stats["passed"])  # lambda 0: the planner earns pass@1 only
    env.set_lambda(1.0)


def test_masked_module_never_samples_a_masked_action():
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.models.torch.torch_distributions import TorchCategorical

    from sysaware.policy.modules import MaskedMLPModule
    from sysaware.policy.spaces import _masked_space
    import gymnasium as gym

    module = MaskedMLPModule(observation_space=_masked_space(6, 15), action_space=gym.spaces.Discrete(15), model_config={"hidden": [8]})
    rng = np.random.default_rng(0)
    n = 4000
    mask = (rng.random((n, 15)) < 0.3).astype(np.float32)
    mask[np.arange(n), rng.integers(0, 15, n)] = 1.0
    batch = {Columns.OBS: {"observations": torch.randn(n, 6) * 5, "action_mask": torch.from_numpy(mask)}}
    for forward in (module.forward_exploration, module.forward_inference, module.forward_train):
        logits = forward(batch)[Columns.ACTION_DIST_INPUTS]
        actions = TorchCategorical(logits=logits).sample().numpy()
        assert mask[np.arange(n), actions].all()
        assert mask[np.arange(n), logits.argmax(-1).numpy()].all()


def _scorer(num_candidates=15, ctx_dim=6, row_dim=14, hidden=(16, 16)):
    import gymnasium as gym

    from sysaware.policy.modules import CandidateScorerModule
    from sysaware.policy.spaces import _masked_space

    return CandidateScorerModule(
        observation_space=_masked_space(ctx_dim + num_candidates * row_dim, num_candidates),
        action_space=gym.spaces.Discrete(num_candidates),
        model_config={"hidden": list(hidden), "ctx_dim": ctx_dim, "row_dim": row_dim, "num_candidates": num_candidates},
    )


def _random_masked_batch(n, dim, k, rng):
    import torch

    mask = (rng.random((n, k)) < 0.3).astype(np.float32)
    mask[np.arange(n), rng.integers(0, k, n)] = 1.0
    return torch.from_numpy((rng.standard_normal((n, dim)) * 3).astype(np.float32)), mask


def test_candidate_scorer_never_samples_or_picks_a_masked_action():
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.models.torch.torch_distributions import TorchCategorical

    module = _scorer()
    rng = np.random.default_rng(0)
    x, mask = _random_masked_batch(4000, 6 + 15 * 14, 15, rng)
    batch = {Columns.OBS: {"observations": x, "action_mask": torch.from_numpy(mask)}}
    for forward in (module.forward_exploration, module.forward_inference, module.forward_train):
        logits = forward(batch)[Columns.ACTION_DIST_INPUTS]
        actions = TorchCategorical(logits=logits).sample().numpy()
        assert mask[np.arange(4000), actions].all()
        assert mask[np.arange(4000), logits.argmax(-1).numpy()].all()
    values = module.compute_values(batch)
    assert values.shape == (4000,) and torch.isfinite(values).all()


def test_numpy_head_equals_the_module_forward_inference():
    """Serving's numpy head (modules.NumpyScorer) picks what the RLModule's forward_inference picks."""
    import torch
    from ray.rllib.core.columns import Columns

    from sysaware.policy.modules import NumpyScorer

    module = _scorer(hidden=(64, 64))
    with torch.no_grad():  # weights away from the near-zero init so the logits actually differ between rows
        module.logit.weight.mul_(100.0)
    head = NumpyScorer.from_module(module)
    rng = np.random.default_rng(1)
    x, mask = _random_masked_batch(500, 6 + 15 * 14, 15, rng)
    with torch.no_grad():
        logits = module.forward_inference({Columns.OBS: {"observations": x, "action_mask": torch.from_numpy(mask)}})[Columns.ACTION_DIST_INPUTS]
    expected = logits.argmax(-1).numpy()
    got = np.array([head.act({"observations": x[i].numpy(), "action_mask": mask[i]}) for i in range(500)])
    assert (got == expected).all()
    raw = head.logits(x[0, :6].numpy(), x[0, 6:].numpy().reshape(15, 14))
    assert np.allclose(raw[mask[0] > 0], logits[0].numpy()[mask[0] > 0], atol=1e-4)


def _first_decision_point(scenario: str):
    from sysaware.orchestration.session import DecisionPoint
    from sysaware.policy.env import SysawareEnv

    env = SysawareEnv({"scenarios": [scenario], "requests_per_episode": 2, "embed": "hash", "planner": "io"})
    env.reset(seed=0)
    _, point = env._current
    assert isinstance(point, DecisionPoint)
    return env, point


@pytest.mark.parametrize("scenario", ["uniform-150", "lab-a100"])
def test_shipped_policy_loads_and_decides_on_a_real_decision_point(scenario):
    """The shipped checkpoint (sysaware/resources/policy/twin-h100x8) serves its own pool and, through its
    model-agnostic rows, lab-a100x4 (which ships none)."""
    import sysaware.policy  # noqa: F401
    from sysaware.orchestration.executors import make_executor
    from sysaware.policy.serve import shipped_policy_dir

    env, point = _first_decision_point(scenario)
    assert shipped_policy_dir(env.pool.name).name == "twin-h100x8"
    executor = make_executor("rl", env.resources, embed="hash")
    action = executor.choose(point.context)
    assert action in point.candidates
    env.world.decide(point, action)  # the driver accepts it


# --- the budget shield (shield.py) ----------------------------------------------------------------------------------
def test_shield_mask_keeps_what_fits_and_else_only_the_fastest():
    from sysaware.policy.shield import shield_mask

    mask = np.array([1, 1, 0, 1], np.float32)
    p90 = np.array([1.0, 3.0, 0.1, 2.0])
    assert shield_mask(mask, p90, allowance=2.0).tolist() == [1, 0, 0, 1]  # 3.0 is over; the invalid 0.1 stays off
    assert shield_mask(mask, p90, allowance=2.0, margin=1.5).tolist() == [1, 0, 0, 0]  # 1.5 x 2.0 = 3.0 > 2.0
    # nothing fits (a spent budget): only the fastest VALID candidate, never the invalid faster one
    assert shield_mask(mask, p90, allowance=0.5).tolist() == [1, 0, 0, 0]
    assert shield_mask(mask, p90, allowance=-1.0).tolist() == [1, 0, 0, 0]
    assert shield_mask(np.zeros(4, np.float32), p90, allowance=9.0).sum() == 0
    # fallback "abstain": with nothing fitting the mask is left as it was; with something fitting, it still shields
    assert shield_mask(mask, p90, allowance=0.5, fallback="abstain").tolist() == [1, 1, 0, 1]
    assert shield_mask(mask, p90, allowance=2.0, fallback="abstain").tolist() == [1, 0, 0, 1]


def test_shield_spec_parses_and_rejects_bad_fields():
    from sysaware.policy.shield import ShieldSpec

    assert not ShieldSpec.parse(None).on and ShieldSpec.parse("share").on
    assert ShieldSpec.parse({"mode": "share", "margin": 2.0}).margin == 2.0
    with pytest.raises(ValueError, match="shield.mode"):
        ShieldSpec.parse("sometimes")
    with pytest.raises(ValueError, match="shield.margin"):
        ShieldSpec.parse({"mode": "share", "margin": 0})
    with pytest.raises(ValueError, match="unknown field"):
        ShieldSpec.parse({"mode": "share", "marg": 2})
    with pytest.raises(ValueError, match="shield.fallback"):
        ShieldSpec.parse({"mode": "share", "fallback": "pray"})
    with pytest.raises(ValueError, match="shield.split"):
        ShieldSpec.parse({"mode": "share", "split": "uneven"})


def test_profile_split_gives_each_step_its_part_of_the_budget():
    """The profile split: io's one step may take all of b_t; in a chain the first step its call's share of the
    chain, the last step all that is left; parallel workers of a star each their path's share."""
    from sysaware.orchestration.topology import chain, io, star
    from sysaware.policy.shield import ProfileSplit
    from sysaware.policy.world import load_world_scenarios, resources_for
    from sysaware.tasks.mbpp import load_tasks

    split = ProfileSplit(resources_for(load_world_scenarios(["idle"])[0].pool))
    task = load_tasks("test")[0]
    assert split.fraction(task, io(), io().sink.slot_id) == pytest.approx(1.0)
    c = chain(["programmer", "reviewer"])
    first, last = c.slots[0].slot_id, c.sink.slot_id
    call = [split.budget.call_s(task, c, s.slot_id) for s in c.slots]  # a chain: every slot on the one path
    assert split.fraction(task, c, first) == pytest.approx(call[0] / sum(call))
    assert split.fraction(task, c, last) == pytest.approx(1.0)
    st = star(["programmer", "algorithm_designer"])
    for w in st.slots[:-1]:
        f = split.fraction(task, st, w.slot_id)
        assert 0 < f < 1


def _shield_allowed(encoder, ctx) -> set:
    """The candidates the shield must allow at ``ctx``, computed independently of the encoder's mask."""
    from sysaware.orchestration.executors import step_query

    from sysaware.orchestration.budget import ProfileBudget

    sh = encoder.spec.shield
    est = encoder._make_estimator(sh.estimator or encoder.spec.estimator).estimate(step_query(ctx))
    p90 = {Action(e.model, Strategy(e.strategy)): e.t_hat_p90_ms / 1e3 for e in est}
    allowance = ctx.remaining_budget_s / max(ctx.steps_left, 1)
    if sh.split == "profile":  # b_t x call(slot) / (call(slot) + the longest path after it), by brute force
        budget, topo = ProfileBudget(encoder.resources, slack=1.0), ctx.plan_topology
        call = lambda sid: budget.call_s(ctx.task, topo, sid)  # noqa: E731
        path = lambda sid: call(sid) + max((path(n) for n in topo.successors(sid)), default=0.0)  # noqa: E731
        allowance = ctx.remaining_budget_s * call(ctx.slot.slot_id) / path(ctx.slot.slot_id)
    fits = {a for a in ctx.candidates if sh.margin * p90[a] <= allowance}
    if not fits and sh.fallback == "abstain":
        return set(ctx.candidates)
    return fits or {min(ctx.candidates, key=lambda a: p90[a])}


@pytest.mark.parametrize("split", ["even", "profile"])
def test_env_applies_the_shield_to_the_executor_mask_and_rejects_shielded_actions(split):
    """Training: with the shield on, every executor observation's mask is exactly the shield's set (a candidate
    over the allowance is never offered; when none fits, only the fastest); choosing a shielded one raises."""
    from sysaware.orchestration.session import DecisionPoint
    from sysaware.policy.env import SysawareEnv

    env = SysawareEnv({"scenarios": ["uniform-150"], "requests_per_episode": 3, "embed": "hash", "planner": "random",
                       "shield": {"mode": "share", "margin": 2.0, "split": split}, "warmup_s": 2.0})
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    checked = shielded = rejected = 0
    while True:
        (agent, o), = obs.items()
        _, point = env._current
        assert isinstance(point, DecisionPoint)
        allowed = {env.enc_spec.action_of(i) for i in np.flatnonzero(o["action_mask"])}
        assert allowed == _shield_allowed(env.encoder, point.context)
        checked += 1
        shielded += len(allowed) < len(point.candidates)
        over = [env.enc_spec.action_index(a) for a in point.candidates if a not in allowed]
        if over and not rejected:
            with pytest.raises(ValueError, match="masked action"):
                env.step({agent: over[0]})
            rejected += 1
        obs, _, term, *_ = env.step({agent: int(rng.choice(np.flatnonzero(o["action_mask"])))})
        if term["__all__"]:
            break
    assert checked >= 3 and shielded >= 1 and rejected == 1
    assert env.last_episode_stats["shielded_decisions"] == shielded


def test_rl_executor_never_chooses_over_the_shield_and_falls_back_to_the_fastest(tmp_path):
    """Serving: the shipped weights under a shield (a shielded copy: a policy of its own, other fingerprint) choose
    within the shield's set; with the budget spent, the fastest candidate."""
    import dataclasses

    import sysaware.policy  # noqa: F401
    from sysaware.orchestration.executors import make_executor
    from sysaware.policy.serve import policy_fingerprint, shipped_policy_dir
    from sysaware.policy.shield import shielded_copy
    from sysaware.policy.spaces import EncoderSpec

    env, point = _first_decision_point("uniform-150")
    shipped = shipped_policy_dir(env.pool.name)
    policy = shielded_copy(shipped, tmp_path / "shielded", {"mode": "share", "margin": 3.0})
    assert EncoderSpec.load(policy / "encoder.json").shield.margin == 3.0
    assert not EncoderSpec.load(shipped / "encoder.json").shield.on  # the shipped spec, read back: no shield
    assert policy_fingerprint(policy) != policy_fingerprint(shipped)
    executor = make_executor(f"rl@{policy}", env.resources, embed="hash")
    assert "shield share x3" in executor.describe()
    enc = executor.inference.encoder
    ctx = point.context
    for budget in (ctx.remaining_budget_s, 2.0, 1.0, 0.5, 0.0, -1.0):
        c = dataclasses.replace(ctx, remaining_budget_s=budget)
        allowed = _shield_allowed(enc, c)
        assert executor.choose(c) in allowed
        if budget <= 0:
            assert len(allowed) == 1  # nothing fits a spent budget: the fastest alone


# --- behaviour cloning of the oracle (no Ray) -----------------------------------------------------------------------
def test_imitation_labels_with_the_oracle_fits_and_serves(tmp_path):
    """imitate.py: every executor decision is labelled with a candidate of its point (the label is never masked);
    the fit learns the labels of its own data; the exported policy loads through make_executor('rl@<dir>') (the
    name evaluate uses) and decides on a real decision point; its fingerprint differs from the shipped one."""
    import sysaware.policy  # noqa: F401
    from sysaware.orchestration.executors import make_executor
    from sysaware.policy.imitate import imitate
    from sysaware.policy.serve import policy_fingerprint, shipped_policy_dir

    cfg = {"name": "t", "seed": 0, "env": {"scenarios": ["idle"], "requests_per_episode": 3, "embed": "hash",
                                           "task_dims": 8, "planner": "random", "warmup_s": 2.0},
           "model": {"hidden": [16]}, "lagrange": {"init": 1.0},
           "imitate": {"episodes": 2, "dagger_rounds": 1, "dagger_episodes": 1, "epochs": 40, "lr": 0.01}}
    policy = imitate(cfg, tmp_path / "bc")
    data = np.load(tmp_path / "bc" / "data.npz")
    assert len(data["action"]) >= 6
    assert all(m[a] == 1.0 for m, a in zip(data["mask"], data["action"]))  # the oracle's choice is a candidate
    import json

    log = json.loads((tmp_path / "bc" / "imitate.json").read_text())
    assert [r["round"] for r in log] == [0, 1] and log[-1]["fit"]["accuracy"] > 0.5
    env, point = _first_decision_point("uniform-150")
    executor = make_executor(f"rl@{policy}", env.resources, embed="hash")
    assert executor.choose(point.context) in point.candidates
    assert policy_fingerprint(policy) != policy_fingerprint(shipped_policy_dir(env.pool.name))


def test_executor_at_names_set_the_executors_option():
    """greedy@queueing sets greedy's estimator; rl@<dir> the rl checkpoint (a missing one names the path)."""
    import sysaware.policy  # noqa: F401
    from sysaware.orchestration.executors import make_executor
    from sysaware.policy.world import load_world_scenarios, resources_for

    resources = resources_for(load_world_scenarios(["idle"])[0].pool)
    assert "queueing" in make_executor("greedy@queueing", resources).describe()
    with pytest.raises(FileNotFoundError, match="no-such-policy"):
        make_executor("rl@/tmp/no-such-policy", resources)


# --- training, checkpoint, serving (Ray) ----------------------------------------------------------------------------
def test_smoke_training_checkpoint_and_serving(tmp_path, ray_session):
    """Two tiny PPO iterations (a masked action chosen during sampling would raise in the env), then the exported
    RLModules serve workflows through make_executor('rl', checkpoint=...) without the Algorithm."""
    from sysaware.orchestration.executors import make_executor
    from sysaware.orchestration.planners import make_planner
    from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
    from sysaware.orchestration.workflow import Workflow
    from sysaware.policy import RLExecutor  # noqa: F401  (registers "rl")
    from sysaware.policy.train import load_config, train
    from sysaware.policy.world import Budgets, backend_for, load_world_scenarios, resources_for, task_pool
    from sysaware.tasks.mbpp import Split

    from sysaware.policy.shield import ShieldSpec
    from sysaware.policy.spaces import EncoderSpec

    cfg = load_config("rllib_configs/smoke.yaml")
    # the budget shield through RLlib: sampling must respect the shielded mask (the env raises on a shielded
    # action), and the exported policy carries the shield it was trained with, which serving then applies
    shield = {"mode": "share", "margin": 1.5, "split": "profile"}
    cfg["env"]["shield"] = shield
    outcome = train(cfg, tmp_path / "run")  # on the suite's Ray session (train() reuses a running one)
    rows = outcome.rows
    assert len(rows) == 2 and all(r["requests"] > 0 for r in rows)
    assert rows[1]["lambda_used"] == rows[0]["lambda"]  # the dual step reached the next iteration's rewards
    for name in ("metrics.csv", "curves.png", "checkpoint/lagrange.json", "policy/encoder.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert EncoderSpec.load(outcome.policy_dir / "encoder.json").shield == ShieldSpec.parse(shield)

    # serving: from the exported policy dir and from the Algorithm checkpoint
    pool = load_world_scenarios(["idle"])[0].pool
    resources = resources_for(pool)
    for ckpt in (outcome.policy_dir, tmp_path / "run" / "checkpoint"):
        executor = make_executor("rl", resources, checkpoint=ckpt, embed="hash")
        assert executor.inference.spec.shield.margin == 1.5  # serving applies the trained-with shield
        planner = make_planner("rl", resources=resources, checkpoint=ckpt, embed="hash")
        driver = SimulatedDriver(pool, backend_for(pool), SimSettings(background_per_model=2))
        budgets = Budgets(resources)
        for i, task in enumerate(task_pool(backend_for(pool), Split.TRAIN)[:3]):
            plan = planner.plan(task, driver.snapshot(), None)
            driver.add(Workflow(f"s{i}", task, plan.topology, budgets.slo_s(task, plan.topology, 1.5), seed=i), executor, at_s=1.0 + i)
        traces = driver.run()
        assert all(t.complete for t in traces) and executor.decisions >= 3
        # decision cost, estimators included, on the contexts the run saw: CPU time (a descheduled process on a
        # shared machine does not count) and the median (a guard against work per decision that should be cached,
        # such as embedding a seen prompt again; the benchmark reports the real figures)
        contexts = [c for s in driver.sessions for c in s.contexts]
        cpu_s = []
        for _ in range(20):
            for c in contexts:
                t0 = time.process_time()
                executor.choose(c)
                cpu_s.append(time.process_time() - t0)
        p50_ms = float(np.percentile(cpu_s, 50) * 1e3)
        print(f"rl decision CPU p50 {p50_ms:.3f} ms, p99 {np.percentile(cpu_s, 99) * 1e3:.3f} ms")
        assert p50_ms < 50.0


def test_init_policy_weights_reach_the_learner_and_the_env_runner(tmp_path, ray_session):
    """train-policy --init-policy: a behaviour-cloned executor's weights are what PPO starts from, in the learner
    (what it updates) and in the env runner (what samples), so fine-tuning starts at the imitation."""
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    from sysaware.policy.imitate import imitate
    from sysaware.policy.train import build_algo_config, load_config, load_initial_weights

    cfg = load_config("rllib_configs/smoke.yaml")
    cfg["env"]["planner"] = "random"
    cfg["imitate"] = {"episodes": 1, "dagger_rounds": 0, "epochs": 3}
    policy = imitate(cfg, tmp_path / "bc")
    algo = build_algo_config(cfg, 1.0)[0].build_algo()
    try:
        assert load_initial_weights(algo, policy) == ["executor"]
        ref = RLModule.from_checkpoint(str(policy / "executor")).state_dict()
        learner = algo.learner_group._learner.module["executor"].state_dict()
        runner = algo.env_runner.module["executor"].state_dict()
        for k, v in ref.items():
            assert torch.equal(learner[k], v), k
            assert torch.equal(runner[k], v), k
    finally:
        algo.stop()


# --- length feedback in the executor's context (spaces.py, opt-in) --------------------------------------------------


def test_shipped_policy_has_no_length_feedback_and_decides_as_before():
    """The shipped encoder.json predates the switch: it loads with it off, the observation keeps the dims the module
    was trained on, and a finished step that overran (4x its expected length) gives the same observation and action
    as one that did not."""
    import dataclasses

    import sysaware.policy  # noqa: F401
    from sysaware.orchestration.executors import make_executor
    from sysaware.policy.serve import shipped_policy_dir
    from sysaware.policy.spaces import EncoderSpec

    env, point = _first_decision_point("uniform-150")
    raw = json.loads((shipped_policy_dir(env.pool.name) / "encoder.json").read_text())
    assert "length_feedback" not in raw
    executor = make_executor("rl", env.resources, embed="hash")
    enc = executor.inference.encoder
    assert not enc.spec.length_feedback and enc.spec.executor_ctx_dim == executor.head.ctx_dim
    ctx = point.context
    on_len = dataclasses.replace(ctx, history=(_finished_step(env.resources, ctx, factor=1.0),))
    overrun = dataclasses.replace(ctx, history=(_finished_step(env.resources, ctx, factor=4.0),))
    assert enc.executor_obs(overrun)["observations"].shape == (enc.spec.executor_dim,)
    assert np.array_equal(enc.executor_obs(on_len)["observations"], enc.executor_obs(overrun)["observations"])
    assert executor.choose(on_len) == executor.choose(overrun)
    assert EncoderSpec.load(shipped_policy_dir(env.pool.name) / "encoder.json") == enc.spec


def _finished_step(resources, ctx, factor: float, model: str | None = None, finished_at_s: float = 1.0):
    """A finished step of ``ctx``'s request whose output was ``factor`` x the profile's expected length."""
    from sysaware.orchestration.trace import StepRecord

    a = ctx.candidates[0] if model is None else next(c for c in ctx.candidates if c.model == model)
    tokens = round(factor * resources.lengths.tokens(a.model, a.strategy, "programmer"))
    idle = resources.idle[a.model]
    latency = idle.ttft_s(200) + factor * tokens * idle.tpot_s
    return StepRecord(ctx.run_id, 0, "s0", "programmer", a.model, a.strategy.value, (), 0.0, ctx.slo_s, 200, tokens,
                      0.0, 0.1, idle.tpot_s, latency, finished_at_s, "stop", "r0")


def test_length_feedback_grows_the_context_by_its_columns_and_moves_after_an_overrun(tmp_path):
    """With the switch on: the context grows by exactly the feedback columns, which are 0 on a request's first
    step (no finished step) and positive after an overrun; the env's observations carry them and lie in the space."""
    import dataclasses

    from sysaware.policy.env import SysawareEnv
    from sysaware.policy.spaces import LENGTH_FEEDBACK_COLUMNS, EncoderSpec

    env = SysawareEnv({"scenarios": ["uniform-150"], "requests_per_episode": 2, "embed": "hash", "planner": "chain:programmer,reviewer",
                       "length_feedback": True, "warmup_s": 2.0})
    off = dataclasses.replace(env.enc_spec, length_feedback=False)
    k = len(LENGTH_FEEDBACK_COLUMNS)
    assert env.enc_spec.executor_ctx_dim == off.executor_ctx_dim + k and env.enc_spec.executor_dim == off.executor_dim + k
    obs, _ = env.reset(seed=0)
    ctx_dim = env.enc_spec.executor_ctx_dim
    seen_first = seen_later = 0
    rng = np.random.default_rng(0)
    while True:
        (agent, o), = obs.items()
        _, point = env._current
        assert env.observation_spaces[agent].contains(o)
        feats = o["observations"][ctx_dim - k: ctx_dim]
        if not point.context.history:
            assert np.all(feats == 0)
            seen_first += 1
        else:
            assert np.any(feats != 0)
            seen_later += 1
        obs, _, term, *_ = env.step({agent: int(rng.choice(np.flatnonzero(o["action_mask"])))})
        if term["__all__"]:
            break
    assert seen_first >= 2 and seen_later >= 2
    # an overrun (4x the expected length) against an on-length step: the features rise, and the mean tracks both
    enc, ctx = env.encoder, point.context
    feats = lambda *steps: enc.executor_context(dataclasses.replace(ctx, history=steps))[-k:]  # noqa: E731
    on_len = _finished_step(env.resources, ctx, factor=1.0, finished_at_s=1.0)
    over = _finished_step(env.resources, ctx, factor=4.0, finished_at_s=2.0)
    assert abs(feats(on_len)[0]) < 0.05 and feats(over)[0] > 1.0
    last, mean, lat = feats(on_len, over)
    assert last == pytest.approx(feats(over)[0]) and 0.5 < mean < last and lat > feats(on_len)[2]
    assert EncoderSpec.load(env.enc_spec.save(tmp_path / "encoder.json")).length_feedback
