"""A workflow with its decisions handed out: the stepping API between a workflow and whoever decides for it.

The session turns each slot the workflow makes ready into a ``DecisionPoint`` carrying everything a policy may see
(the StepContext: task, role, history, remaining budget b_t, steps left, telemetry snapshot, candidates, prompt
tokens, ...) and takes an ``Action`` back. It never decides and never waits, so anyone can stand at a decision
point (an executor, an RL agent, a server that logs or overrides), and the rules are the same for all of them: the
action must be one of the point's candidates, and each point is decided once.

    driver                                   session                               workflow
    ------                                   -------                               --------
    start(now) ----------------------------> start -----------------------------> start
                                             SlotReady -> DecisionPoint <--------- [SlotReady | SandboxRun, ...]
                                             (context built now: what the policy sees)
    <-------------------------------------- [DecisionPoint | SandboxRun, ...]
    hand the point to the decider
    (now, or later at the same instant)
    decide(point, action, now) ------------> check: pending, among candidates ---> decide -> ModelCall
    <-------------------------------------- [ModelCall]
    carry out a call, then
    on_model_result(call, result, now) ----> on_model_result ------------------> ... same loop
    carry out a sandbox run, then
    on_sandbox_result(run, result, now) ---> on_sandbox_result ----------------> ...

Every driver steps a session this way; only who decides, and when, differs:
- the simulated driver (sim_driver.py) with an executor answers each point inside the simulator's callback, through
  ``ExecutorAgent``; without one it pauses the virtual clock at the point and hands it out (``next_decision`` /
  ``decide``): the external-agent mode an RL environment steps;
- the live driver (live_driver.py) awaits its agent at each point, then an optional ``on_decision`` hook.

A point's context is built when the workflow reaches it, not when it is decided: a decider that answers later (an
external agent, an awaited policy) sees the system as it was at the point, as an executor deciding at once would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sysaware.engines.tokens import count_prompt_tokens
from sysaware.engines.types import GenerationResult
from sysaware.orchestration.context import Action, Forecaster, StepContext, check_action
from sysaware.data.telemetry import SystemSnapshot
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import Effect, ModelCall, SandboxRun, SlotReady, Workflow
from sysaware.tasks.prompts import Strategy
from sysaware.tasks.sandbox import ExecutionResult

if TYPE_CHECKING:
    from sysaware.orchestration.executors import Executor

SnapshotSource = Callable[[float], SystemSnapshot]  # the telemetry as of ``now``
EXTERNAL_DECIDER = "external"  # a trace's executor when its decisions came from outside (next_decision / decide)


@dataclass(frozen=True)
class DecisionPoint:
    """A workflow waiting for a_t = (model, strategy) at one slot: what the policy may see (``context``) and the
    identity ``decide`` checks (a run decides each slot once, so (run, slot) names the point)."""

    run_id: str
    slot_id: str
    context: StepContext = field(compare=False, repr=False)

    @property
    def candidates(self) -> tuple[Action, ...]:
        return self.context.candidates


DriverEffect = ModelCall | SandboxRun  # what a driver carries out
SessionEffect = DecisionPoint | ModelCall | SandboxRun  # what a session hands a driver


class DecisionError(RuntimeError):
    """``decide`` for a point that is not waiting: decided already, or another session's."""


class Agent(Protocol):
    """Whoever answers decision points. The simulated driver needs ``answer`` to return the action; the live driver
    also awaits it when it returns an awaitable (a policy served elsewhere)."""

    def answer(self, point: DecisionPoint) -> Action: ...

    def describe(self) -> str: ...


class ExecutorAgent:
    """An executor as one client of the stepping API: it answers a point with ``executor.act`` on its context. The
    executor keeps its own bookkeeping; the session checks the action like any other decider's."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def answer(self, point: DecisionPoint) -> Action:
        return self.executor.act(point.context)

    def describe(self) -> str:
        return self.executor.describe()


class WorkflowSession:
    def __init__(
        self,
        workflow: Workflow,
        candidates: Sequence[Action],
        snapshot: SnapshotSource,
        forecaster: Forecaster | None = None,
        planner_name: str = "",
        decider_name: str = EXTERNAL_DECIDER,  # the trace's ``executor``
    ) -> None:
        self.workflow = workflow
        self.candidates = tuple(candidates)
        self.snapshot = snapshot
        self.forecaster = forecaster
        self.planner_name = planner_name
        self.decider_name = decider_name
        self.calls: list[ModelCall] = []  # every call sent, in order (Phase 1 saves their prompts)
        self.contexts: list[StepContext] = []  # every point's context, in the order the points were handed out
        self.pending: dict[str, DecisionPoint] = {}  # slot -> point handed out and not decided yet

    @property
    def run_id(self) -> str:
        return self.workflow.run_id

    @property
    def done(self) -> bool:
        return self.workflow.done

    # --- transitions -------------------------------------------------------------------------------------------
    def start(self, now: float) -> list[SessionEffect]:
        return self._hand_out(self.workflow.start(now), now)

    def on_model_result(self, call: ModelCall, result: GenerationResult, now: float) -> list[SessionEffect]:
        return self._hand_out(self.workflow.on_model_result(call.slot_id, result, now), now)

    def on_sandbox_result(self, run: SandboxRun, result: ExecutionResult, now: float) -> list[SessionEffect]:
        return self._hand_out(self.workflow.on_sandbox_result(run, result, now), now)

    def decide(self, point: DecisionPoint, action: Action, now: float) -> list[DriverEffect]:
        """Take ``action`` for ``point``: the call to send. A rejected action (``InvalidAction``) leaves the point
        waiting, so the decider may answer again."""
        if point.run_id != self.run_id or self.pending.get(point.slot_id) != point:
            raise DecisionError(f"{point.run_id}/{point.slot_id}: no decision is waiting there in run {self.run_id}")
        action = check_action(action, point.candidates, where=f"{point.run_id}/{point.slot_id}")
        del self.pending[point.slot_id]
        call = self.workflow.decide(point.slot_id, action.model, action.strategy, now)
        self.calls.append(call)
        return [call]

    def trace(self) -> RunTrace:
        trace = self.workflow.trace()
        trace.planner = self.planner_name
        trace.executor = self.decider_name
        return trace

    # --- what a policy sees ------------------------------------------------------------------------------------
    def context(self, slot_id: str, now: float) -> StepContext:
        wf = self.workflow
        messages = {s: wf.messages_for(slot_id, s) for s in Strategy}
        first = self.candidates[0].strategy if self.candidates else Strategy.CONCISE
        return StepContext(
            run_id=wf.run_id,
            task=wf.task,
            topology=wf.topology.name,
            slot=wf.topology.slot(slot_id),
            step=wf.topology.index(slot_id),
            history=tuple(wf.history()),
            now_s=now,
            slo_s=wf.slo_s,
            remaining_budget_s=wf.remaining_budget_s(now),
            steps_left=wf.steps_left(slot_id),
            snapshot=self.snapshot(now),
            candidates=self.candidates,
            prompt_tokens=count_prompt_tokens(messages[first]),
            messages_by_strategy=messages,
            seed=wf.seed_of(slot_id),
            max_tokens=wf.max_tokens,
            forecaster=self.forecaster,
            plan_topology=wf.topology,
        )

    def _hand_out(self, effects: list[Effect], now: float) -> list[SessionEffect]:
        """The workflow's effects with each ready slot as a decision point, its context taken now."""
        out: list[SessionEffect] = []
        for effect in effects:
            if isinstance(effect, SlotReady):
                ctx = self.context(effect.slot_id, now)
                self.contexts.append(ctx)
                point = DecisionPoint(effect.run_id, effect.slot_id, ctx)
                self.pending[effect.slot_id] = point
                out.append(point)
            else:
                out.append(effect)
        return out
