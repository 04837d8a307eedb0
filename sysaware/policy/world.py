"""The one adapter between the RL environment and the simulation: scenarios, budgets, resources and the stepping API.

Everything the environment needs from the layers below goes through here, so when their interfaces move (the
decision-point API, the measured pool profile, the scenario file) only this module changes.

An episode is a window of ``requests`` workflow requests on ONE simulated cluster under the scenario's background:
the requests arrive open loop (Poisson), so the RL workflows are each other's load as well as the background's,
and one cluster's background simulation is shared by many decisions (the expensive part of a simulated workflow).

``SimWorld.next_event()`` simulates until something needs the policy:
- ``Arrival``: a request arrived; the planner picks its topology (``start``), the workflow is added to the driver
  without an executor, so its decision points are handed out (external-agent mode);
- ``DecisionPoint``: a workflow waits for (model, strategy) (``driver.decide``);
- None: every request has answered and been graded in the sandbox (the driver grades in one batch at the end).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sysaware.config import PoolConfig, load_pool, REPO_ROOT
from sysaware.orchestration.context import Action, PolicyResources
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.session import DecisionPoint, WorkflowSession
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.topology import Topology
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import Workflow, call_seed
from sysaware.sim.backend import SimBackend
from sysaware.tasks.mbpp import MbppTask, Split, get_task, split_of

from sysaware.orchestration.budget import ProfileBudget
from sysaware.orchestration.scenarios import load_scenarios


# --- resources and budgets ------------------------------------------------------------------------------------------
_RESOURCES: dict[str, PolicyResources] = {}
_BACKENDS: dict[str, SimBackend] = {}


def backend_for(pool: PoolConfig) -> SimBackend:
    if pool.name not in _BACKENDS:
        _BACKENDS[pool.name] = SimBackend(pool)
    return _BACKENDS[pool.name]


def resources_for(pool: PoolConfig) -> PolicyResources:
    """What a policy may know about the pool: its measured profile (``PolicyResources.default_for``, the profile
    shipped for the pool), never the simulator's parameters."""
    if pool.name not in _RESOURCES:
        _RESOURCES[pool.name] = PolicyResources.default_for(pool)
    return _RESOURCES[pool.name]


class Budgets:
    """Default SLO = slack x the plan's idle critical path under the reference executor, from the pool profile alone
    (orchestration/budget.py's ``ProfileBudget``: the same budget the evaluation gives), cached per (task, topology)."""

    def __init__(self, resources: PolicyResources) -> None:
        self.resources = resources
        self._budget = ProfileBudget(resources, slack=1.0)
        self._idle: dict[tuple[int, str], float] = {}

    def idle_latency_s(self, task: MbppTask, topology: Topology) -> float:
        key = (task.task_id, repr(topology.slots))
        if key not in self._idle:
            self._idle[key] = self._budget.idle_latency_s(task, topology)
        return self._idle[key]

    def slo_s(self, task: MbppTask, topology: Topology, slack: float) -> float:
        return slack * self.idle_latency_s(task, topology)


# --- scenarios ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldScenario:
    """What the environment needs of a scenario (built from configs/scenarios.yaml by ``scenario_from_config``)."""

    name: str
    pool_path: str
    background: object  # orchestration/scenarios.py's Background (closed loop or phased Poisson), given to the driver
    rate_per_s: float = 0.5
    warmup_s: float = 10.0
    slacks: tuple[tuple[float, float], ...] = ((1.5, 1.0),)  # (slack, weight)

    @property
    def pool(self) -> PoolConfig:
        return _pool(self.pool_path)


@lru_cache(maxsize=None)
def _pool(path: str) -> PoolConfig:
    p = Path(path)
    return load_pool(p if p.is_absolute() else REPO_ROOT / p)


def scenario_from_config(s) -> WorldScenario:
    return WorldScenario(
        s.name, s.pool, s.background, s.requests.rate_per_s, s.requests.warmup_s,
        tuple((c.slack, c.weight) for c in s.requests.slo),
    )


def load_world_scenarios(names: Sequence[str] | None = None, path: str | Path | None = None) -> list[WorldScenario]:
    all_ = load_scenarios(path) if path else load_scenarios()
    names = list(all_) if names is None else list(names)
    if unknown := [n for n in names if n not in all_]:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {sorted(all_)}")
    return [scenario_from_config(all_[n]) for n in names]


def task_pool(backend: SimBackend, split: Split) -> list[MbppTask]:
    """Tasks of ``split`` the backend can answer (training uses Split.TRAIN only)."""
    return [get_task(t) for t in backend.answerable_task_ids if split_of(t) is split]


# --- one episode ----------------------------------------------------------------------------------------------------
@dataclass
class Request:
    index: int
    task: MbppTask
    slack: float
    arrival_s: float
    seed: int
    topology_name: str | None = None
    slo_s: float | None = None
    session: WorkflowSession | None = None


@dataclass(frozen=True)
class Arrival:
    request: Request


class SimWorld:
    def __init__(
        self,
        scenario: WorldScenario,
        tasks: Sequence[MbppTask],
        num_requests: int,
        seed: int,
        sandbox: CachedSandbox,
        rate_scale: float = 1.0,
    ) -> None:
        self.scenario = scenario
        pool = scenario.pool
        self.pool = pool
        self.backend = backend_for(pool)
        settings = SimSettings(background=scenario.background, seed=seed)
        self.driver = SimulatedDriver(pool, self.backend, settings, sandbox=sandbox)
        rng = random.Random(f"world/{scenario.name}/{seed}")
        t = scenario.warmup_s
        slacks, weights = zip(*scenario.slacks)
        self.requests: list[Request] = []
        for i in range(num_requests):
            t += rng.expovariate(scenario.rate_per_s * rate_scale)
            task = rng.choice(tasks)
            self.requests.append(Request(i, task, rng.choices(slacks, weights)[0], t, call_seed(seed, f"req-{i}")))
        self._next_arrival = 0
        self._run_of: dict[str, Request] = {}

    @property
    def now(self) -> float:
        return self.driver.now

    def snapshot(self):
        return self.driver.snapshot()

    def request_of(self, run_id: str) -> Request:
        return self._run_of[run_id]

    def next_event(self) -> Arrival | DecisionPoint | None:
        """Simulate until the next arrival or decision point (whichever is first); None when all are graded."""
        cluster = self.driver.cluster
        while self._next_arrival < len(self.requests):
            arrival = self.requests[self._next_arrival]
            if self.driver._waiting:  # a point handed out earlier and still waiting (several points at one instant)
                return self.driver.next_decision()
            if cluster.now >= arrival.arrival_s:
                self._next_arrival += 1
                return Arrival(arrival)
            paused = cluster.run(until=arrival.arrival_s)
            if paused:  # a workflow stopped the cluster at a decision point
                return self.driver.next_decision()
        return self.driver.next_decision()

    def start(self, request: Request, topology_name: str, topology: Topology, slo_s: float) -> None:
        """Add the planned workflow now; its decision points come out of ``next_event``."""
        request.topology_name, request.slo_s = topology_name, slo_s
        workflow = Workflow(f"r{request.index}-t{request.task.task_id}", request.task, topology, slo_s, seed=request.seed)
        self._run_of[workflow.run_id] = request
        request.session = self.driver.add(workflow, None, at_s=self.driver.now, planner_name="rl")

    def decide(self, point: DecisionPoint, action: Action) -> None:
        self.driver.decide(point, action)

    def trace(self, request: Request) -> RunTrace:
        assert request.session is not None
        return request.session.trace()
