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

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from sysaware.config import PoolConfig, load_pool, REPO_ROOT
from sysaware.engines.tokens import count_prompt_tokens
from sysaware.orchestration.context import Action, PolicyResources
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.messages import build_messages
from sysaware.orchestration.session import DecisionPoint, WorkflowSession
from sysaware.orchestration.sim_driver import DriverCallback, SimSettings, SimulatedDriver
from sysaware.orchestration.topology import Topology
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import Workflow, call_seed
from sysaware.sim.backend import SimBackend
from sysaware.sim.load import ClosedLoopLoad, PhasedPoissonLoad
from sysaware.sim.workload import MbppRequestFactory
from sysaware.tasks.mbpp import MbppTask, Split, get_task, split_of
from sysaware.tasks.prompts import Strategy

try:  # the scenario file (configs/scenarios.yaml)
    from sysaware.orchestration.scenarios import Scenario, load_scenarios
except ImportError:  # pragma: no cover - before scenarios landed
    Scenario = None  # type: ignore[assignment]
    load_scenarios = None  # type: ignore[assignment]


# --- resources and budgets ------------------------------------------------------------------------------------------
_RESOURCES: dict[str, PolicyResources] = {}
_BACKENDS: dict[str, SimBackend] = {}


def backend_for(pool: PoolConfig) -> SimBackend:
    if pool.name not in _BACKENDS:
        _BACKENDS[pool.name] = SimBackend(pool)
    return _BACKENDS[pool.name]


def resources_for(pool: PoolConfig) -> PolicyResources:
    """What a policy may know about the pool: the measured profile where one is shipped (``PolicyResources
    .default_for``), else (before the profile work lands) the tables main builds today."""
    if pool.name not in _RESOURCES:
        if hasattr(PolicyResources, "default_for"):
            _RESOURCES[pool.name] = PolicyResources.default_for(pool)
        else:  # pragma: no cover - replaced by the profile's tables after the merge
            _RESOURCES[pool.name] = PolicyResources.build(pool, backend_for(pool))
    return _RESOURCES[pool.name]


REFERENCE_STRATEGY = Strategy.CONCISE


class Budgets:
    """Default SLO = slack x the plan's idle critical path under the reference executor (best Concise programmer),
    computed from the profile alone (the formula of orchestration/budget.py's ``ProfileBudget``; used directly when
    that lands). Cached per (task, topology)."""

    def __init__(self, resources: PolicyResources) -> None:
        self.resources = resources
        self._idle: dict[tuple[int, str], float] = {}
        try:
            from sysaware.orchestration.budget import ProfileBudget  # type: ignore[attr-defined]

            self._profile_budget = ProfileBudget(resources, slack=1.0)
        except ImportError:
            self._profile_budget = None

    @property
    def reference_model(self) -> str:
        return self.resources.quality.best_model(REFERENCE_STRATEGY, "programmer")

    def idle_latency_s(self, task: MbppTask, topology: Topology) -> float:
        key = (task.task_id, repr(topology.slots))
        if key not in self._idle:
            if self._profile_budget is not None:
                self._idle[key] = self._profile_budget.idle_latency_s(task, topology)
            else:
                self._idle[key] = self._critical_path(task, topology)
        return self._idle[key]

    def _critical_path(self, task: MbppTask, topology: Topology) -> float:
        ref = self.reference_model
        lengths, idle = self.resources.lengths, self.resources.idle[ref]
        finish: dict[str, float] = {}
        for slot in topology.slots:
            prompt = count_prompt_tokens(build_messages(task, slot, (), None, REFERENCE_STRATEGY))
            prompt += sum(lengths.tokens(ref, REFERENCE_STRATEGY, topology.slot(i).role_id) for i in slot.inputs)
            out = lengths.tokens(ref, REFERENCE_STRATEGY, slot.role_id)
            call = idle.ttft_s(round(prompt)) + max(out - 1.0, 0.0) * idle.tpot_s
            finish[slot.slot_id] = max((finish[i] for i in slot.inputs), default=0.0) + call
        return finish[topology.sink.slot_id]

    def slo_s(self, task: MbppTask, topology: Topology, slack: float) -> float:
        return slack * self.idle_latency_s(task, topology)


# --- scenarios ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldScenario:
    """What the environment needs of a scenario (built from configs/scenarios.yaml by ``scenario_from_config``)."""

    name: str
    pool_path: str
    closed: dict[str, int] = field(default_factory=dict)  # model -> closed-loop clients (kind closed)
    phases: tuple[tuple[float, float], ...] = ()  # (rate per s, duration s) per model (kind poisson)
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
    bg = s.background
    models = [m.name for m in s.pool_config.models]
    closed, phases = {}, ()
    if bg.kind == "closed":
        closed = {m: bg.clients(m) for m in models}
    else:
        phases = tuple((p.rate_per_s, p.duration_s) for p in bg.phases)
    return WorldScenario(
        s.name, s.pool, closed, phases, s.requests.rate_per_s, s.requests.warmup_s,
        tuple((c.slack, c.weight) for c in s.requests.slo),
    )


def load_world_scenarios(names: Sequence[str] | None = None, path: str | Path | None = None) -> list[WorldScenario]:
    if load_scenarios is None:  # pragma: no cover
        raise RuntimeError("configs/scenarios.yaml support (orchestration/scenarios.py) is missing")
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
        self.driver = SimulatedDriver(pool, self.backend, SimSettings(seed=seed), sandbox=sandbox)
        cluster = self.driver.cluster
        factory = MbppRequestFactory.for_split("train", prefix="bg")
        for m in cluster.models:
            if scenario.phases:
                self.driver.loads[m] = PhasedPoissonLoad(cluster, m, scenario.phases, factory, seed=seed).start(0.0)
            elif scenario.closed.get(m, 0) > 0:
                self.driver.loads[m] = ClosedLoopLoad(cluster, m, scenario.closed[m], factory, seed=seed).start(0.0)
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
