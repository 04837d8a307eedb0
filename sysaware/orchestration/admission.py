"""Admission control for one request: never accept work it is known to fail.

Before a workflow starts, every candidate plan (the menu of topologies with their default roles, plus the plan the
planner chose) is priced twice with the queueing formula (estimators/latency.py), each slot on its fastest
(model, strategy) and the plan's critical path summed as in ``budget.py``:

- on an idle pool (the profile's idle latencies): a lower bound no load can beat;
- under the current load (the telemetry snapshot): what the pool can do right now.

Then, against the request's SLO (engine seconds):

| fastest plan, idle | fastest plan, now | planned plan, now | verdict                                          |
|--------------------|-------------------|-------------------|--------------------------------------------------|
| misses             | -                 | -                 | ``refuse``: 422 ``slo_unattainable`` (any mode)   |
| fits               | misses            | -                 | ``refuse``: 503 ``slo_unattainable_under_load``,  |
|                    |                   |                   | Retry-After = the backlog the pool must clear     |
| fits               | fits              | misses            | mode ``degrade``: run the fastest plan instead;   |
|                    |                   |                   | mode ``refuse``: 503 as above                     |
| fits               | fits              | fits              | ``admit`` the planned plan                        |

Mode ``off`` admits everything (a benchmark that wants to measure misses). ``degrade`` is the default: a request
that can still make its deadline gets the plan that can. The estimates are means: a request admitted may still
miss, one refused would have missed on average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from sysaware.data.telemetry import ModelLoad, SystemSnapshot
from sysaware.engines.tokens import count_prompt_tokens
from sysaware.estimators.latency import QueueingLatencyEstimator
from sysaware.orchestration.context import PolicyResources
from sysaware.orchestration.messages import build_messages
from sysaware.orchestration.topology import Topology, TopologyKind, default_topology
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import Strategy


class AdmissionMode(str, Enum):
    DEGRADE = "degrade"  # fall back to the fastest plan when the planned one would miss (default)
    REFUSE = "refuse"  # refuse (503) when the planned plan would miss under the current load
    OFF = "off"  # admit everything


class Verdict(str, Enum):
    ADMIT = "admit"
    DEGRADE = "degrade"  # admitted on the fastest plan instead of the planned one
    UNATTAINABLE = "slo_unattainable"  # even an idle pool cannot make it: 422
    UNDER_LOAD = "slo_unattainable_under_load"  # the current load cannot: 503 + Retry-After


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    topology: Topology  # the plan to run (planned, or the fastest when degraded)
    slo_s: float
    planned_s: float  # the planned plan's predicted latency under the current load, engine s
    fastest_idle_s: float  # the fastest plan's on an idle pool
    fastest_now_s: float  # the fastest plan's under the current load
    fastest_topology: str
    retry_after_s: float | None = None  # engine s before the backlog clears (UNDER_LOAD only)

    @property
    def admitted(self) -> bool:
        return self.verdict in (Verdict.ADMIT, Verdict.DEGRADE)

    @property
    def reason(self) -> str:
        if self.verdict is Verdict.UNATTAINABLE:
            return (f"slo_s={self.slo_s:g} s cannot be met: the fastest plan ({self.fastest_topology}) takes "
                    f"{self.fastest_idle_s:.2f} s on an idle pool")
        if self.verdict is Verdict.UNDER_LOAD:
            return (f"slo_s={self.slo_s:g} s cannot be met under the current load: the fastest plan "
                    f"({self.fastest_topology}) is predicted to take {self.fastest_now_s:.2f} s now "
                    f"({self.fastest_idle_s:.2f} s idle)")
        if self.verdict is Verdict.DEGRADE:
            return (f"the planned plan is predicted to take {self.planned_s:.2f} s > slo_s={self.slo_s:g} s; "
                    f"running the fastest plan ({self.fastest_topology}, {self.fastest_now_s:.2f} s) instead")
        return "admitted"

    def as_dict(self) -> dict:
        return {
            "verdict": self.verdict.value,
            "topology": self.topology.name,
            "slo_s": self.slo_s,
            "planned_s": self.planned_s,
            "fastest_idle_s": self.fastest_idle_s,
            "fastest_now_s": self.fastest_now_s,
            "fastest_topology": self.fastest_topology,
            "retry_after_s": self.retry_after_s,
            "reason": self.reason,
        }


def idle_snapshot(models: Sequence[str]) -> SystemSnapshot:
    return SystemSnapshot(0.0, {m: ModelLoad(m, 1, 0, 0, 0.0, 0.0, None, None) for m in models})


@dataclass
class AdmissionController:
    """Prices plans for one pool (its profile's tables) and judges requests; ``candidates``: the plans it may fall
    back to (default: every topology kind with its default roles)."""

    resources: PolicyResources
    mode: AdmissionMode = AdmissionMode.DEGRADE
    candidates: tuple[Topology, ...] = field(default_factory=lambda: tuple(default_topology(k) for k in TopologyKind))
    strategies: tuple[Strategy, ...] = tuple(Strategy)

    def __post_init__(self) -> None:
        self.mode = AdmissionMode(self.mode)
        r = self.resources
        self.estimator = QueueingLatencyEstimator(r.idle.models, r.lengths.tokens)
        self._idle = idle_snapshot(r.models)

    def slot_s(self, task: MbppTask, topology: Topology, slot_id: str, snapshot: SystemSnapshot) -> float:
        """The slot's call on its fastest (model, strategy) under ``snapshot``, engine s."""
        slot = topology.slot(slot_id)
        base = count_prompt_tokens(build_messages(task, slot, (), None, Strategy.CONCISE))
        lengths = self.resources.lengths
        best = math.inf
        for model in self.resources.models:
            load = snapshot.load(model)
            for strategy in self.strategies:
                prompt = base + sum(lengths.tokens(model, strategy, topology.slot(i).role_id) for i in slot.inputs)
                out = lengths.tokens(model, strategy, slot.role_id)
                best = min(best, self.estimator.estimate_s(model, load, round(prompt), out))
        return best

    def plan_s(self, task: MbppTask, topology: Topology, snapshot: SystemSnapshot) -> float:
        """The plan's critical path with every slot on its fastest action, engine s."""
        finish: dict[str, float] = {}
        for slot in topology.slots:
            start = max((finish[i] for i in slot.inputs), default=0.0)
            finish[slot.slot_id] = start + self.slot_s(task, topology, slot.slot_id, snapshot)
        return finish[topology.sink.slot_id]

    def judge(self, task: MbppTask, planned: Topology, slo_s: float, snapshot: SystemSnapshot) -> Admission:
        planned_s = self.plan_s(task, planned, snapshot)
        plans = {t.name: t for t in (*self.candidates, planned)}
        idle = {name: self.plan_s(task, t, self._idle) for name, t in plans.items()}
        now = {name: (planned_s if t is planned else self.plan_s(task, t, snapshot)) for name, t in plans.items()}
        fastest = min(now, key=now.get)
        fastest_idle = min(idle.values())

        def verdict(v: Verdict, topology: Topology, retry: float | None = None) -> Admission:
            return Admission(v, topology, slo_s, planned_s, fastest_idle, now[fastest], fastest, retry)

        if self.mode is AdmissionMode.OFF or planned_s <= slo_s:
            return verdict(Verdict.ADMIT, planned)
        if fastest_idle > slo_s:
            return verdict(Verdict.UNATTAINABLE, planned)
        # Retry-After: the backlog, how much longer than idle the plan now takes, at least what the SLO is short by.
        if now[fastest] > slo_s:
            backlog = max(now[fastest] - idle[fastest], now[fastest] - slo_s)
            return verdict(Verdict.UNDER_LOAD, planned, backlog)
        if self.mode is AdmissionMode.REFUSE:
            backlog = max(planned_s - idle[planned.name], planned_s - slo_s)
            return verdict(Verdict.UNDER_LOAD, planned, backlog)
        return verdict(Verdict.DEGRADE, plans[fastest])
