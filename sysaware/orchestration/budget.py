"""The latency budget (SLO) of a request: given with it, or a slack factor times its plan's idle latency as the pool's
measured profile predicts it (README, "Latency budgets"). ``plan_slo_s`` is the one function every driver asks, so
the simulated and the live path give the same number for the same plan.

The idle latency of a plan is computed from the profile alone, never by running anything:

    idle(plan) = max over paths to the sink of  sum over the path's slots of  call_s(slot)
    call_s(slot) = TTFT_ref(L_in(slot)) + (L_out(ref, Concise, role(slot)) - 1) x TPOT_ref
    L_in(slot)  = tokens of the slot's prompt with no upstream work + sum over its inputs of L_out(ref, Concise, role)

with ``ref`` the model of best measured Concise programmer quality (the reference executor: every step on it,
Concise) and TTFT_ref, TPOT_ref its idle latency. Why this form:
- the budget scales with the work the plan implies (a five-call debate gets more time than one agent), and parallel
  slots (a star's workers, a debate round) overlap, as they do on an idle pool (decode is memory-bound, so a few
  concurrent requests barely slow each other), hence the critical path, not the sum;
- it does not depend on the policy being evaluated, nor on the backend that will serve the request: the same
  profile gives the same budget in simulation and live, and it is known before anything runs;
- a quality-first, load-blind executor meets it on an idle pool on average (lengths are means, so a task with an
  unusually long answer can still miss it); under load only an executor that adapts keeps to it.
A bug fixer's sandbox run of the example assert adds no time here (it costs none in simulation and a fraction of a
second live).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sysaware.engines.tokens import count_prompt_tokens
from sysaware.orchestration.context import Plan, PolicyResources
from sysaware.orchestration.messages import build_messages
from sysaware.orchestration.topology import Topology
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import Strategy

DEFAULT_SLACK = 1.5  # budget = 1.5 x the plan's idle latency under the reference executor
REFERENCE_STRATEGY = Strategy.CONCISE


def check_slo_s(slo_s: float, what: str = "slo_s") -> float:
    """``slo_s`` if it is a usable budget (> 0 s, not NaN; +inf means none); ValueError naming ``what`` otherwise."""
    value = float(slo_s)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {slo_s!r}")
    return value


@dataclass(frozen=True)
class ProfileBudget:
    """Default budgets from the pool's profile (the formula in the module docstring)."""

    resources: PolicyResources
    slack: float = DEFAULT_SLACK

    def __post_init__(self) -> None:
        if not (self.slack > 0 and math.isfinite(self.slack)):
            raise ValueError(f"the slack factor must be positive and finite, got {self.slack}")

    @property
    def reference_model(self) -> str:
        return self.resources.quality.best_model(REFERENCE_STRATEGY, "programmer")

    def call_s(self, task: MbppTask, topology: Topology, slot_id: str) -> float:
        """Idle latency of one slot's call on the reference model, s."""
        ref = self.reference_model
        lengths, idle = self.resources.lengths, self.resources.idle[ref]
        slot = topology.slot(slot_id)
        prompt_tokens = count_prompt_tokens(build_messages(task, slot, (), None, REFERENCE_STRATEGY))
        prompt_tokens += sum(lengths.tokens(ref, REFERENCE_STRATEGY, topology.slot(i).role_id) for i in slot.inputs)
        output_tokens = lengths.tokens(ref, REFERENCE_STRATEGY, slot.role_id)
        return idle.call_s(round(prompt_tokens), output_tokens)

    def idle_latency_s(self, task: MbppTask, topology: Topology) -> float:
        """The plan's critical path on an idle pool under the reference executor, s."""
        finish: dict[str, float] = {}
        for slot in topology.slots:  # topological order
            start = max((finish[i] for i in slot.inputs), default=0.0)
            finish[slot.slot_id] = start + self.call_s(task, topology, slot.slot_id)
        return finish[topology.sink.slot_id]

    def default_slo_s(self, task: MbppTask, topology: Topology) -> float:
        return self.slack * self.idle_latency_s(task, topology)

    def slo_s(self, task: MbppTask, plan: Plan, seed: int = 0) -> float:
        """``plan_slo_s`` with this budget as the default. ``seed`` is accepted for callers written against the
        former measured budget and ignored: the formula needs no call seeds."""
        return plan_slo_s(task, plan, self)


def plan_slo_s(task: MbppTask, plan: Plan, budget: ProfileBudget | None) -> float:
    """The budget a request runs under, s: its own (``plan.slo_s``) if it brought one, else the default
    (``budget``). An SLO <= 0 or NaN is an error, never a silent fallback to the default."""
    if plan.slo_s is not None:
        return check_slo_s(plan.slo_s)
    if budget is None:
        raise ValueError("slo_s: the request brought none and no default budget (ProfileBudget) was given")
    return budget.default_slo_s(task, plan.topology)
