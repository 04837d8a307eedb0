"""The live driver: one workflow on the served pool, through Ray Serve handles, with asyncio.

It steps the same ``WorkflowSession`` as the simulated driver (sim_driver.py); only how effects are carried out
differs:
- a DecisionPoint is answered by the workflow's agent (an executor through ``ExecutorAgent``, or any agent whose
  ``answer`` may be awaited: a policy served elsewhere), then shown to the driver's ``on_decision`` hook, which may
  log it or return another action; the session checks the final action against the point's candidates. A
  transition's points are all decided before any of its effects is carried out, as in simulation;
- a ModelCall is awaited on its model's DeploymentHandle (``generate``); calls that are ready together (a star's
  workers, a debate round) are in flight together, and each branch moves on as soon as its own call returns. Each
  call carries the run's deadline as its priority (unix seconds: the twin's deadline-first scheduling and vLLM's
  ``priority`` serve the earliest deadline first when the pool is configured so). A call whose replica died (the
  actor is gone or unavailable) is sent again, up to ``MAX_CALL_ATTEMPTS`` times in all while the run has budget
  left: Serve routes the new attempt to a live replica of the same model;
- a SandboxRun (a bug fixer's example feedback, the final grade) runs in a worker thread;
- the executor's telemetry comes from the telemetry actor's snapshot, refreshed before every step of the session.

The driver's clock is the engine clock, wall seconds x ``time_scale``, so budgets, SLOs and step times read the
same as in simulation (a twin at time_scale 20 spends 20 engine seconds per wall second). Each result is shifted
onto this clock as it comes back: replicas keep their own engine clocks, which start when the replica does.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sysaware.engines.types import GenerationResult, TelemetrySnapshot
from sysaware.orchestration.budget import ProfileBudget, plan_slo_s
from sysaware.orchestration.context import Action, Plan, all_actions
from sysaware.orchestration.executors import Executor
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.planners import Planner
from sysaware.orchestration.session import (
    Agent,
    DecisionPoint,
    DriverEffect,
    ExecutorAgent,
    SessionEffect,
    WorkflowSession,
)
from sysaware.data.telemetry import ModelLoad, SystemSnapshot, TelemetryTracker
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import ModelCall, Workflow
from sysaware.tasks.mbpp import MbppTask

logger = logging.getLogger(__name__)

MAX_CALL_ATTEMPTS = 3  # tries per model call when its replica dies (the first and two retries)
RETRY_BACKOFF_S = 0.2  # wall seconds before a retry (x the attempt number), time for Serve to drop the dead replica

# What the driver calls after each model result of a run: (session, call, result on the driver's clock, attempts).
StepHook = Callable[[WorkflowSession, ModelCall, GenerationResult, int], None]

# Sees each decision with the agent's action; returns the action to take instead, or None to keep it (may be async).
DecisionHook = Callable[[DecisionPoint, Action], "Action | None | Awaitable[Action | None]"]


class LiveDriver:
    def __init__(
        self,
        handles: Mapping[str, Any],  # model -> DeploymentHandle of its LLMReplica deployment
        telemetry: Any,  # the TelemetryActor handle (get_or_create_telemetry())
        time_scale: float = 1.0,  # engine seconds per wall second, as the pool was deployed with
        sandbox: CachedSandbox | None = None,
        sandbox_timeout_s: float = 10.0,  # wall-clock limit per sandbox run
        candidates: Sequence[Action] | None = None,
        on_decision: DecisionHook | None = None,  # a server's hook: log or override every decision
        budget: ProfileBudget | None = None,  # default SLOs for requests without one (budget.py)
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.handles = dict(handles)
        self.telemetry = telemetry
        self.time_scale = time_scale
        self.sandbox = sandbox or CachedSandbox()
        self.sandbox_timeout_s = sandbox_timeout_s
        self.candidates = tuple(candidates or all_actions(list(self.handles)))
        self.on_decision = on_decision
        self.budget = budget
        self.tracker = TelemetryTracker()  # TPOT EMA and completion rate from the results this driver sees
        self.sessions: list[WorkflowSession] = []
        self._snapshot = SystemSnapshot(0.0, {})
        self._t0_wall_s = time.monotonic()
        self._run_ids = itertools.count()
        self._step_hooks: dict[str, StepHook] = {}  # run id -> its on_step hook
        self._deadlines: dict[str, float] = {}  # run id -> deadline, unix s (the calls' priority)
        self.retries = 0  # model calls sent again after their replica died

    @property
    def models(self) -> list[str]:
        return list(self.handles)

    def now(self) -> float:
        """Engine seconds since the driver was built."""
        return (time.monotonic() - self._t0_wall_s) * self.time_scale

    # --- one workflow ------------------------------------------------------------------------------------------
    async def run_workflow(
        self,
        task: MbppTask,
        planner: Planner,
        executor: Executor | Agent,
        slo_s: float | None = None,
        seed: int = 0,
        *,
        on_step: StepHook | None = None,
        keep_session: bool = True,
        plan: Plan | None = None,
    ) -> RunTrace:
        """Plan ``task``, run its workflow on the pool within ``slo_s`` (engine s; None: the driver's default budget
        for the plan, ``plan_slo_s``, as in simulation), grade the answer. ``executor`` decides every step (an
        Executor, or any Agent). ``on_step`` sees every model result as it comes back (a server streams them);
        ``keep_session=False`` forgets the session once the run is over (a server running many); ``plan``: one
        already made (by an admission check), else the planner makes it."""
        agent = ExecutorAgent(executor) if isinstance(executor, Executor) else executor
        await self.refresh_snapshot()
        plan = plan or planner.plan(task, self._snapshot, slo_s)
        run_id = f"live-{next(self._run_ids)}-t{task.task_id}-s{seed}"
        workflow = Workflow(run_id, task, plan.topology, plan_slo_s(task, plan, self.budget), seed=seed)
        session = WorkflowSession(
            workflow,
            self.candidates,
            self._snapshot_at,
            forecaster=None,
            planner_name=planner.name,
            decider_name=agent.describe(),
        )
        self.sessions.append(session)
        self._deadlines[run_id] = time.time() + workflow.slo_s / self.time_scale
        if on_step is not None:
            self._step_hooks[run_id] = on_step
        try:
            await self.refresh_snapshot()
            await self._carry_out(session, agent, session.start(self.now()))
            if not session.done:
                raise RuntimeError(f"{run_id}: every effect was carried out but the workflow is {workflow.state.value}")
            return session.trace()
        finally:
            self._step_hooks.pop(run_id, None)
            self._deadlines.pop(run_id, None)
            if not keep_session:
                self.sessions.remove(session)

    async def _carry_out(self, session: WorkflowSession, agent: Agent, effects: list[SessionEffect]) -> None:
        ready: list[DriverEffect] = []
        for effect in effects:
            ready += await self._decide(session, agent, effect) if isinstance(effect, DecisionPoint) else [effect]
        await asyncio.gather(*(self._carry_out_one(session, agent, e) for e in ready))

    async def _decide(self, session: WorkflowSession, agent: Agent, point: DecisionPoint) -> list[DriverEffect]:
        """The agent's action, or the hook's instead, taken at the engine time it is final."""
        action = await _settle(agent.answer(point))
        if self.on_decision is not None:
            override = await _settle(self.on_decision(point, action))
            if override is not None:
                action = override
        return session.decide(point, action, self.now())

    async def _carry_out_one(self, session: WorkflowSession, agent: Agent, effect: DriverEffect) -> None:
        if isinstance(effect, ModelCall):
            raw, attempts = await self._call(session, effect)
            now = self.now()
            result = on_clock(raw, now)
            self.tracker.record(result)
            hook = self._step_hooks.get(session.run_id)
            if hook is not None:
                hook(session, effect, result, attempts)
            await self.refresh_snapshot()
            follow = session.on_model_result(effect, result, self.now())
        else:
            outcome = await asyncio.to_thread(self.sandbox.run, effect.job(self.sandbox_timeout_s))
            await self.refresh_snapshot()
            follow = session.on_sandbox_result(effect, outcome, self.now())
        await self._carry_out(session, agent, follow)

    async def _call(self, session: WorkflowSession, call: ModelCall) -> tuple[GenerationResult, int]:
        """The call's result and the attempts it took: sent again when its replica died, while tries and the run's
        budget last; any other error (a refusal) is raised at once."""
        request = call.request(priority=self._deadlines.get(session.run_id, 0.0))
        for attempt in range(1, MAX_CALL_ATTEMPTS + 1):
            # Each call in a fresh context: Ray Serve's router (2.60) keys pending requests by the caller's request
            # id, which every call made while serving one request (a solve) inherits; two concurrent calls (a
            # star's workers) would collide and the second would never be routed. So the driver cancels its own.
            response = contextvars.Context().run(self.handles[call.model].generate.remote, request)
            try:
                return await response, attempt
            except asyncio.CancelledError:
                cancel = getattr(response, "cancel", None)
                if cancel is not None:
                    cancel()
                raise
            except Exception as e:
                budget_left = session.workflow.remaining_budget_s(self.now()) > 0
                if not replica_died(e) or attempt == MAX_CALL_ATTEMPTS or not budget_left:
                    raise
                self.retries += 1
                logger.warning("%s: replica of %s died (%s); retry %d", call.call_id, call.model, type(e).__name__, attempt)
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    # --- telemetry ---------------------------------------------------------------------------------------------
    async def refresh_snapshot(self) -> SystemSnapshot:
        """Read the telemetry actor; the session's snapshot source returns this until the next refresh."""
        raw = await self.telemetry.snapshot.remote()
        self._snapshot = self.to_system_snapshot(raw, self.now())
        return self._snapshot

    def _snapshot_at(self, now: float) -> SystemSnapshot:
        return dataclasses.replace(self._snapshot, timestamp_s=now)

    def to_system_snapshot(self, raw: TelemetrySnapshot, now: float) -> SystemSnapshot:
        """The actor's snapshot -> the orchestration's, for this driver's deployments' fresh replicas only (the
        actor is shared by every application on the cluster). A model none of whose replicas has pushed yet reads
        as idle, so an executor never meets a model it may choose but cannot look up."""
        stats = [
            view.stats_at_read(self.time_scale)
            for handle in self.handles.values()
            for view in raw.deployment(handle.app_name, handle.deployment_name, fresh_only=True)
        ]
        snapshot = self.tracker.snapshot(now, stats)
        for model in self.handles:
            snapshot.models.setdefault(model, ModelLoad(model, 0, 0, 0, 0.0, 0.0, None, None))
        return snapshot


def replica_died(e: BaseException) -> bool:
    """Whether a handle call failed because its replica went away (retrying may reach a live one), as opposed to
    the replica refusing the request."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    try:
        from ray.serve.exceptions import DeploymentUnavailableError
    except ImportError:  # older Serve
        DeploymentUnavailableError = ()  # noqa: N806
    return isinstance(e, (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError))


async def _settle(value):
    """``value``, awaited if it is awaitable (an agent or a hook may answer either way)."""
    return await value if inspect.isawaitable(value) else value


def on_clock(result: GenerationResult, finished_s: float) -> GenerationResult:
    """``result`` with every time shifted so that it finished at ``finished_s`` on the driver's clock; durations
    (queue time, TTFT, TPOT, latency) are unchanged. The handle's return trip (a millisecond or so of wall time)
    counts as part of the call."""
    shift = finished_s - result.finished_s

    def move(t: float | None) -> float | None:
        return None if t is None else t + shift

    return dataclasses.replace(
        result,
        arrival_s=result.arrival_s + shift,
        first_scheduled_s=move(result.first_scheduled_s),
        first_token_s=move(result.first_token_s),
        finished_s=finished_s,
        token_times_s=tuple(t + shift for t in result.token_times_s),
    )
