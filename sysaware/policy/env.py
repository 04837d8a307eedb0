"""The planner/executor CMDP as one RLlib ``MultiAgentEnv`` over the decision-point API (world.py).

An episode is a window of ``requests_per_episode`` requests on one simulated cluster (world.py: they share the
background and load each other). Every request brings two agents, mapped to two RLModules:

- ``planner/<i>`` acts once, when request i arrives (the hierarchy's reset for that request): topology from the menu;
- ``executor/<i>`` acts at each of request i's decision points: (model, strategy), masked to the point's candidates.

The observation dict of ``reset``/``step`` holds only the agent that acts next (points come one at a time, in the
order the simulation reaches them). Rewards are given as soon as they are known, to agents that may not be acting:
RLlib adds them up until that agent's next transition, so a step's latency penalty reaches the executor action that
caused it and the request's outcome reaches the planner at the end. Episodes end by termination only (every
request answered and graded; never truncated, so no agent is left with an action hanging), with one last
observation and ``terminated`` for every agent that acted.

Rewards (reward.py): the executor gets, per step, -lambda x step_penalty x overrun and, when it decides, the
profile-quality shaping quality_shaping x (q(chosen) - mean q of the valid candidates), and at the end
Q_sem - lambda x 1[SLO missed]; the planner gets the same end reward.
lambda is set from outside (``set_lambda``: the Lagrange callback in train.py pushes it to every env runner).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.session import DecisionPoint
from sysaware.policy.shield import ShieldSpec
from sysaware.policy.reward import RewardConfig, final_reward, quality_advantage, step_overrun, step_reward
from sysaware.policy.spaces import Encoder, EncoderSpec, TOPOLOGY_MENU, hash_embed, menu_topology
from sysaware.policy.world import Arrival, Budgets, SimWorld, WorldScenario, load_world_scenarios, resources_for, task_pool
from sysaware.tasks.mbpp import Split

PLANNER, EXECUTOR = "planner", "executor"


def module_of(agent_id: str) -> str:
    return agent_id.split("/", 1)[0]


def policy_mapping_fn(agent_id, episode=None, **kwargs) -> str:
    return module_of(agent_id)


DEFAULT_ENV_CONFIG: dict[str, Any] = {
    "scenarios": ["idle", "uniform-50", "uniform-150", "skew-cheap-hot", "skew-strong-hot", "mixed-slo"],
    "requests_per_episode": 12,
    "rate_scale": 1.0,  # x the scenario's request rate (more RL workflows per simulated second)
    "warmup_s": None,  # virtual seconds of background before the first request (None: the scenario's)
    "planner": "rl",  # "rl" (the planner agent), "random" (planners.py's random shapes), or a menu name (fixed)
    "embed": "minilm",  # "minilm" (the offline MiniLM) or "hash" (a seeded stand-in: tests, smoke runs)
    "task_dims": 16,
    "use_estimates": True,
    "estimator": "queueing",
    "shield": "off",  # the budget shield on the executor's mask (shield.py): "off", "share" or {mode, margin, estimator}
    "length_feedback": False,  # the request's own length overruns in the executor's context (spaces.py); opt-in
    "lambda": 1.0,
    "reward": {},
    "split": "train",
    "seed": 0,
}


class SysawareEnv(MultiAgentEnv):
    def __init__(self, config: dict | None = None) -> None:
        super().__init__()
        cfg = {**DEFAULT_ENV_CONFIG, **dict(config or {})}
        self.cfg = cfg
        self.scenarios: list[WorldScenario] = load_world_scenarios(cfg["scenarios"])
        if cfg["warmup_s"] is not None:
            self.scenarios = [dataclasses.replace(s, warmup_s=float(cfg["warmup_s"])) for s in self.scenarios]
        pools = {s.pool.name for s in self.scenarios}
        if len(pools) != 1:
            raise ValueError(f"one env trains on one pool; scenarios {cfg['scenarios']} span {sorted(pools)}")
        self.pool = self.scenarios[0].pool
        self.resources = resources_for(self.pool)
        self.budgets = Budgets(self.resources)
        self.enc_spec = EncoderSpec(
            models=tuple(self.resources.models), task_dims=cfg["task_dims"], use_estimates=cfg["use_estimates"],
            estimator=cfg["estimator"], shield=ShieldSpec.parse(cfg["shield"]), length_feedback=bool(cfg["length_feedback"]),
        )
        self.encoder = Encoder.build(self.enc_spec, self.resources, hash_embed if cfg["embed"] == "hash" else None)
        self.reward_cfg = RewardConfig(**cfg["reward"])
        self.lam = float(cfg["lambda"])
        from sysaware.policy.world import backend_for

        self.tasks = task_pool(backend_for(self.pool), Split(cfg["split"]))
        self.sandbox = CachedSandbox()
        self.use_planner = cfg["planner"] == "rl"
        self._spaces = {
            PLANNER: (self.enc_spec.planner_space(), gym.spaces.Discrete(len(self.enc_spec.menu))),
            EXECUTOR: (self.enc_spec.executor_space(), gym.spaces.Discrete(self.enc_spec.num_actions)),
        }
        # Agents come and go with requests; their ids are per request slot of the window, so they are known upfront
        # (RLlib's connectors look spaces up by agent id).
        kinds = (PLANNER, EXECUTOR) if self.use_planner else (EXECUTOR,)
        self.possible_agents = [f"{k}/{i}" for i in range(cfg["requests_per_episode"]) for k in kinds]
        self.agents = []
        self.observation_spaces = {a: self._spaces[module_of(a)][0] for a in self.possible_agents}
        self.action_spaces = {a: self._spaces[module_of(a)][1] for a in self.possible_agents}
        self._episodes = 0
        self._rng = random.Random(f"env/{cfg['seed']}")
        self.last_episode_stats: dict | None = None
        self.decisions = 0

    # RLlib asks for spaces per agent id; every id of a kind has that kind's spaces.
    def get_observation_space(self, agent_id):
        return self._spaces[module_of(agent_id)][0]

    def get_action_space(self, agent_id):
        return self._spaces[module_of(agent_id)][1]

    def set_lambda(self, value: float) -> None:
        self.lam = float(value)

    # --- episode ---------------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = random.Random(f"env/{seed}")
        self._episodes += 1
        scenario = self._rng.choice(self.scenarios)
        if options and "scenario" in options:
            scenario = next(s for s in self.scenarios if s.name == options["scenario"])
        self.scenario = scenario
        self.world = SimWorld(
            scenario, self.tasks, self.cfg["requests_per_episode"], self._rng.randrange(2**31), self.sandbox,
            rate_scale=self.cfg["rate_scale"],
        )
        self._last_obs: dict[str, dict] = {}
        self._acted: set[str] = set()
        self._charged: dict[str, int] = defaultdict(int)  # executor agent -> steps already charged
        self._rewards: dict[str, float] = defaultdict(float)
        self._stats = Counter()
        self._current: tuple[str, Any] | None = None
        obs, done = self._advance()
        assert not done, "an episode with no decision"
        self.agents = list(obs)
        return obs, {}

    def step(self, action_dict: dict):
        assert self._current is not None
        agent, event = self._current
        if agent not in action_dict:
            raise ValueError(f"expected an action for {agent}, got {list(action_dict)}")
        a = int(np.asarray(action_dict[agent]).reshape(()))
        self._acted.add(agent)
        self.decisions += 1
        if isinstance(event, Arrival):
            name = self.enc_spec.menu[a]
            self._start(event.request, name)
            self._stats[f"topology:{name}"] += 1
        else:
            point: DecisionPoint = event
            action = self.enc_spec.action_of(a)
            mask = self._last_obs[agent]["action_mask"]  # the candidates, less any the budget shield removed
            if action not in point.candidates or not mask[a] > 0:
                raise ValueError(f"masked action {action} chosen at {point.run_id}/{point.slot_id}")
            self.world.decide(point, action)
            self._stats[f"strategy:{action.strategy.value}"] += 1
            self._stats[f"model:{action.model}"] += 1
            if int(mask.sum()) < len(point.candidates):
                self._stats["shielded_decisions"] += 1
            if self.reward_cfg.quality_shaping:
                q = self.encoder.quality_row(point.context.role_id)
                self._rewards[agent] += step_reward(self.reward_cfg, 0.0, 0.0, quality_advantage(q, mask, a))
        obs, done = self._advance()
        # Every agent that gets an observation gets a reward entry (0.0 when nothing is due: RLlib requires one for an
        # agent that acted and observes again in the same step); others get theirs only when something is due.
        rewards = {k: v for k, v in self._rewards.items() if v != 0.0}
        for k in obs:
            rewards.setdefault(k, 0.0)
        self._rewards.clear()
        if done:
            terminateds = {k: True for k in obs}
            terminateds["__all__"] = True
        else:
            terminateds = {"__all__": False}
        self.agents = [] if done else list(obs)
        return obs, rewards, terminateds, {"__all__": False}, {}

    # --- internals -------------------------------------------------------------------------------------------------
    def _start(self, request, name: str) -> None:
        topology = menu_topology(name)
        self.world.start(request, name, topology, self.budgets.slo_s(request.task, topology, request.slack))

    def _planner_obs(self, request) -> dict:
        return self.encoder.planner_obs(
            request.task, self.world.snapshot(), request.slack,
            lambda topo: self.budgets.slo_s(request.task, topo, request.slack),
        )

    def _advance(self) -> tuple[dict, bool]:
        """Simulate to the next decision the agents make; (obs of the acting agent, False), or at the end (final
        obs of every agent that acted, True). Fixed planners (not ``rl``) are answered here without an agent."""
        while True:
            event = self.world.next_event()
            self._charge_steps()
            if event is None:
                return self._finish(), True
            if isinstance(event, Arrival):
                agent = f"{PLANNER}/{event.request.index}"
                if not self.use_planner:
                    self._start(event.request, self._fixed_plan(event.request))
                    continue
                obs = self._planner_obs(event.request)
            else:
                request = self.world.request_of(event.run_id)
                agent = f"{EXECUTOR}/{request.index}"
                obs = self.encoder.executor_obs(event.context)
            self._last_obs[agent] = obs
            self._current = (agent, event)
            return {agent: obs}, False

    def _fixed_plan(self, request) -> str:
        mode = self.cfg["planner"]
        if mode == "random":
            return self._rng.choice([n for n, _ in TOPOLOGY_MENU])
        return mode

    def _charge_steps(self) -> None:
        """Latency penalties of calls that finished since the last check, to the executor agent that made them."""
        lam, cfg = self.lam, self.reward_cfg
        for request in self.world.requests:
            if request.session is None:
                continue
            agent = f"{EXECUTOR}/{request.index}"
            wf = request.session.workflow
            history = wf.history()
            if len(history) <= self._charged[agent]:
                continue
            for rec in history[self._charged[agent]:]:
                over = step_overrun(rec.latency_s, rec.remaining_budget_s, wf.steps_left(rec.slot_id), wf.slo_s)
                self._rewards[agent] += step_reward(cfg, lam, over)
            self._charged[agent] = len(history)

    def _finish(self) -> dict:
        lam, cfg = self.lam, self.reward_cfg
        stats = self._stats
        for request in self.world.requests:
            trace = self.world.trace(request)
            passed, violated = bool(trace.passed), not bool(trace.met_slo)
            r = final_reward(cfg, lam, passed, violated)
            for kind in (PLANNER, EXECUTOR):
                agent = f"{kind}/{request.index}"
                if agent in self._acted:
                    self._rewards[agent] += r
            stats["requests"] += 1
            stats["passed"] += passed
            stats["violations"] += violated
            stats["goodput"] += passed and not violated
        self.last_episode_stats = {"scenario": self.scenario.name, "lambda": self.lam, **stats}
        return {agent: self._last_obs[agent] for agent in sorted(self._acted)}
