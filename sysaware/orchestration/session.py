"""A workflow with its executor: decision points are resolved here, so a driver only carries out model calls and
sandbox runs. This is the seam between the workflow and its drivers:

    driver                               session                          workflow
    ------                               -------                          --------
    start(now) ------------------------> start ------------------------> start -> [DecisionPoint, ...]
                                         DecisionPoint -> StepContext -> executor.act -> decide -> ModelCall
    <---------------------------------- [ModelCall | SandboxRun, ...]
    carry out a call, then
    on_model_result(call, result, now) -> on_model_result -------------> ... same loop
    carry out a sandbox run, then
    on_sandbox_result(run, result, now)-> on_sandbox_result -----------> ...

The simulated driver carries out calls on a SimulatedCluster (virtual clock). A live driver does the same with
asyncio: it sends each ModelCall's ``request()`` through the model's Ray Serve handle and, when the result comes
back, calls ``on_model_result`` with the wall clock; it runs SandboxRuns in a worker thread; its snapshot source
reads the telemetry actor. Neither touches the workflow or the policies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sysaware.engines.tokens import count_prompt_tokens
from sysaware.engines.types import GenerationResult
from sysaware.orchestration.context import Action, Forecaster, StepContext
from sysaware.orchestration.executors import Executor
from sysaware.data.telemetry import SystemSnapshot
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import DecisionPoint, Effect, ModelCall, SandboxRun, Workflow
from sysaware.tasks.prompts import Strategy
from sysaware.tasks.sandbox import ExecutionResult

SnapshotSource = Callable[[float], SystemSnapshot]  # the telemetry as of ``now``
DriverEffect = ModelCall | SandboxRun


class WorkflowSession:
    def __init__(
        self,
        workflow: Workflow,
        executor: Executor,
        candidates: Sequence[Action],
        snapshot: SnapshotSource,
        forecaster: Forecaster | None = None,
        planner_name: str = "",
    ) -> None:
        self.workflow = workflow
        self.executor = executor
        self.candidates = tuple(candidates)
        self.snapshot = snapshot
        self.forecaster = forecaster
        self.planner_name = planner_name
        self.calls: list[ModelCall] = []  # every call sent, in order (Phase 1 saves their prompts)
        self.contexts: list[StepContext] = []  # what the executor saw at each decision

    @property
    def run_id(self) -> str:
        return self.workflow.run_id

    @property
    def done(self) -> bool:
        return self.workflow.done

    def start(self, now: float) -> list[DriverEffect]:
        return self._resolve(self.workflow.start(now), now)

    def on_model_result(self, call: ModelCall, result: GenerationResult, now: float) -> list[DriverEffect]:
        return self._resolve(self.workflow.on_model_result(call.slot_id, result, now), now)

    def on_sandbox_result(self, run: SandboxRun, result: ExecutionResult, now: float) -> list[DriverEffect]:
        return self._resolve(self.workflow.on_sandbox_result(run, result, now), now)

    def trace(self) -> RunTrace:
        trace = self.workflow.trace()
        trace.planner = self.planner_name
        trace.executor = self.executor.describe()
        return trace

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
        )

    def _resolve(self, effects: list[Effect], now: float) -> list[DriverEffect]:
        out: list[DriverEffect] = []
        for effect in effects:
            if isinstance(effect, DecisionPoint):
                ctx = self.context(effect.slot_id, now)
                self.contexts.append(ctx)
                action = self.executor.act(ctx)
                call = self.workflow.decide(effect.slot_id, action.model, action.strategy, now)
                self.calls.append(call)
                out.append(call)
            else:
                out.append(effect)
        return out
