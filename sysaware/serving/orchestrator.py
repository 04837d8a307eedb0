"""The orchestrator as a Ray Serve deployment: planner + executor + the live driver, one workflow per solve.

``Orchestrator.solve_stream(body)`` is the whole life of one ``POST /v1/solve``, as a stream of events the ingress
forwards (server-sent events) or collects (one JSON answer):

    {"event": "admission", ...}   the plan and the admission verdict (orchestration/admission.py)
    {"event": "step", ...}        each agent call as it finishes: role, model, strategy, predicted vs measured
                                  TTFT / TPOT / latency, the budget left when it was decided
    {"event": "final", ...}       the code, the verdict of the tests, e2e latency, SLO met (a SolveResponse)
    {"event": "error", ...}       instead of the rest: status (4xx/503), code, message, param, retry_after_s

Many solves run at once on one replica (asyncio; the model calls are awaited on the pool's handles, the sandbox
runs in threads). Each solve's deadline goes down with every call as its priority (live_driver.py); a call whose
replica dies is retried there. Executors are built once per policy name and shared (they keep only counters).
The telemetry is the live actor's, read before every step.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.engines.types import GenerationResult
from sysaware.orchestration.admission import AdmissionController, AdmissionMode, Verdict
from sysaware.orchestration.budget import ProfileBudget
from sysaware.orchestration.context import Action, Plan, PolicyResources
from sysaware.orchestration.executors import EXECUTORS, Executor, make_executor, step_query
from sysaware.orchestration.live_driver import LiveDriver
from sysaware.orchestration.planners import make_planner
from sysaware.orchestration.session import DecisionPoint, WorkflowSession
from sysaware.orchestration.workflow import ModelCall
from sysaware.serving.solve_metrics import SolveMetrics
from sysaware.serving.solve_types import SolveRequest, SolveResponse, SolveStep
from sysaware.tasks.mbpp import MbppTask, find_task_in_text

logger = logging.getLogger(__name__)

ORCHESTRATOR_NAME = "orchestrator"


class SolveSettings(BaseModel):
    """How the orchestrator runs solves (``build_app(solve=SolveSettings(...))``, or ``solve_*`` app arguments)."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(default="rl", description="Default executor: 'rl' (the shipped trained policy) or a baseline.")
    fallback_policy: str = Field(
        default="greedy", description="Executor used when the default cannot be built on this pool (logged, reported)."
    )
    planner: str = Field(default="fixed", description="Planner: 'fixed' (one topology), 'random', or 'rl'.")
    topology: str = Field(default="chain", description="The fixed planner's topology: io, chain, star, debate, reflection.")
    admission: AdmissionMode = Field(
        default=AdmissionMode.DEGRADE,
        description="When the planned workflow is predicted to miss its SLO: 'degrade' (run the fastest plan), "
        "'refuse' (503 with Retry-After), 'off' (run it anyway). An SLO no plan can meet on an idle pool is "
        "always a 422.",
    )
    sandbox_timeout_s: float = Field(default=10.0, gt=0, description="Wall limit of one sandbox run.")


def resources_for(pool: PoolConfig) -> PolicyResources:
    """The pool's policy tables; a sub-pool of the default pool (``--models``) gets the default profile's rows for
    its models."""
    from sysaware.data.profile import PoolProfile, ProfileError
    from sysaware.orchestration.latency import IdleProfile
    from sysaware.orchestration.tables import LengthTable, QualityTable

    try:
        return PolicyResources.default_for(pool)
    except ProfileError:
        full = load_pool(DEFAULT_POOL)
        names = [m.name for m in pool.models]
        if full.name != pool.name or not set(names) <= {m.name for m in full.models}:
            raise
        profile = PoolProfile.default_for(full)
        return PolicyResources(
            pool,
            QualityTable.from_profile(profile, names),
            LengthTable.from_profile(profile, names),
            IdleProfile.from_profile(profile, names),
        )


class SolveError(Exception):
    """A solve refused or failed: rendered as an ``error`` event (and by the ingress as an HTTP status)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.code, self.param, self.retry_after_s = status, code, param, retry_after_s

    def event(self) -> dict:
        return {"event": "error", "status": self.status, "code": self.code, "message": str(self),
                "param": self.param, "retry_after_s": self.retry_after_s}


def task_of(body: SolveRequest, task_id: int) -> tuple[MbppTask, int | None]:
    """The workflow's task: the MBPP task the problem names (the twin recognises its statement), with the request's
    tests if it brought some; else a new task from the text. Returns (task, MBPP id or None)."""
    mbpp = find_task_in_text(body.problem)
    if mbpp is not None:
        tests = tuple(body.tests) if body.tests else mbpp.test_list
        return MbppTask(mbpp.task_id, mbpp.text, mbpp.reference_code, tests, mbpp.test_setup_code, mbpp.test_imports), mbpp.task_id
    if body.tests:
        tests = tuple(body.tests)
    elif body.entry_point:
        tests = (f"assert callable({body.entry_point})",)
    else:
        tests = ("assert True",)
    return MbppTask(task_id, body.problem, "", tests), None


class Orchestrator:
    """Ray Serve deployment body. ``handles``: model -> DeploymentHandle (as the ingress gets them)."""

    def __init__(self, pool: PoolConfig | dict, handles: Mapping, time_scale: float = 1.0,
                 settings: SolveSettings | dict | None = None) -> None:
        import sysaware.policy  # noqa: F401  (registers the trained policy as executor/planner "rl")
        from sysaware.estimators.latency import QueueingLatencyEstimator
        from sysaware.serving.telemetry import get_or_create_telemetry

        self.pool = pool if isinstance(pool, PoolConfig) else PoolConfig.model_validate(pool)
        self.settings = settings if isinstance(settings, SolveSettings) else SolveSettings.model_validate(settings or {})
        self.time_scale = time_scale
        self.resources = resources_for(self.pool)
        self.driver = LiveDriver(
            dict(handles), get_or_create_telemetry(), time_scale,
            sandbox_timeout_s=self.settings.sandbox_timeout_s,
            on_decision=self._on_decision,
            budget=ProfileBudget(self.resources),
        )
        self.admission = AdmissionController(self.resources, self.settings.admission)
        if self.settings.planner == "rl":
            self.planner = make_planner("rl", resources=self.resources)
        elif self.settings.planner == "fixed":
            self.planner = make_planner("fixed", topology=self.settings.topology)
        else:
            self.planner = make_planner(self.settings.planner)
        self.predictor = QueueingLatencyEstimator(self.resources.idle.models, self.resources.lengths.tokens)
        self.metrics = SolveMetrics()
        self._executors: dict[str, Executor] = {}
        self._executor_errors: dict[str, str] = {}
        self._predicted: dict[tuple[str, str], dict] = {}  # (run, slot) -> the prediction at its decision
        self._ids = itertools.count()
        self.default_policy = self._default_policy()

    def _default_policy(self) -> str:
        try:
            self.executor(self.settings.policy)
            return self.settings.policy
        except Exception as e:
            logger.warning("default policy %r cannot run on pool %s (%s); using %r", self.settings.policy,
                           self.pool.name, e, self.settings.fallback_policy)
            self.executor(self.settings.fallback_policy)
            return self.settings.fallback_policy

    def executor(self, name: str) -> Executor:
        """The executor ``name``, built once; ValueError naming why it cannot be."""
        if name in self._executors:
            return self._executors[name]
        if name.split("@")[0] not in EXECUTORS or name.split("@")[0] == "oracle":
            known = sorted(n for n in EXECUTORS if n != "oracle")
            raise ValueError(f"unknown policy {name!r}; known: {known} (oracle runs only in simulation)")
        if name in self._executor_errors:
            raise ValueError(self._executor_errors[name])
        try:
            executor = make_executor(name, self.resources)
        except Exception as e:
            self._executor_errors[name] = f"policy {name!r} cannot run on pool {self.pool.name} ({len(self.resources.models)} models): {type(e).__name__}: {e}"
            raise ValueError(self._executor_errors[name]) from None
        self._executors[name] = executor
        return executor

    # --- what the ingress calls --------------------------------------------------------------------------------
    async def info(self) -> dict:
        return {"default_policy": self.default_policy, "admission": self.settings.admission.value,
                "planner": self.settings.planner, "counts": dict(self.metrics.counts), "retries": self.driver.retries,
                "in_flight": self.metrics._running}

    async def solve(self, body: dict) -> dict:
        """The final event (or the error event) of ``solve_stream``."""
        last: dict = {}
        async for event in self.solve_stream(body):
            last = event
        return last

    async def solve_stream(self, body: dict) -> AsyncIterator[dict]:
        request = SolveRequest.model_validate(body)
        policy = request.policy or self.default_policy
        self.metrics.started()
        try:
            async for event in self._solve(request, policy):
                yield event
        except SolveError as e:
            self.metrics.outcome(f"refused_{e.status}" if e.status in (422, 503) else f"error_{e.status}", policy)
            yield e.event()
        except Exception as e:  # a bug or a failure the retries did not cover: the client gets it, not a hang
            logger.exception("solve failed")
            self.metrics.outcome("error", policy)
            yield SolveError(503, "solve_failed", f"the solve failed: {type(e).__name__}: {e}").event()
        finally:
            self.metrics.ended()

    async def _solve(self, request: SolveRequest, policy: str) -> AsyncIterator[dict]:
        try:
            executor = self.executor(policy)
        except ValueError as e:
            raise SolveError(400, "invalid_value", str(e), param="policy") from None
        n = next(self._ids)
        solve_id = f"solve-{n}-{hashlib.sha1(request.problem.encode()).hexdigest()[:8]}"
        task, mbpp_id = task_of(request, 1_000_000 + n)
        snapshot = await self.driver.refresh_snapshot()
        planned = self.planner.plan(task, snapshot, request.slo_s)
        budget = self.driver.budget
        slo_s = request.slo_s if request.slo_s is not None else budget.default_slo_s(task, planned.topology)
        verdict = self.admission.judge(task, planned.topology, slo_s, snapshot)
        if verdict.verdict is Verdict.UNATTAINABLE:
            raise SolveError(422, "slo_unattainable", verdict.reason, param="slo_s")
        if verdict.verdict is Verdict.UNDER_LOAD:
            retry = max(1.0, math.ceil(verdict.retry_after_s / self.time_scale))
            raise SolveError(503, "slo_unattainable_under_load", verdict.reason, param="slo_s", retry_after_s=retry)
        yield {"event": "admission", "id": solve_id, "policy": policy, **verdict.as_dict()}

        queue: asyncio.Queue = asyncio.Queue()
        steps: list[SolveStep] = []
        sessions: list[WorkflowSession] = []  # the run's session, once its first call returns (the answer is there)

        def on_step(session: WorkflowSession, call: ModelCall, result: GenerationResult, attempts: int) -> None:
            sessions[:] = [session]
            step = self._step(session, call, result, attempts)
            steps.append(step)
            queue.put_nowait(step)

        plan = Plan(verdict.topology, slo_s)
        run = asyncio.ensure_future(self.driver.run_workflow(
            task, self.planner, executor, slo_s, request.seed, on_step=on_step, keep_session=False, plan=plan,
        ))
        try:
            while not (run.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, run}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield {"event": "step", "id": solve_id, **getter.result().model_dump()}
                else:
                    getter.cancel()
            trace = run.result()
        finally:
            if not run.done():
                run.cancel()
            for session in sessions:  # predictions of calls that never returned
                for key in [k for k in self._predicted if k[0] == session.run_id]:
                    del self._predicted[key]
        e2e = trace.e2e_latency_s or 0.0
        passed = trace.passed if request.tests else None
        retries = sum(s.attempts - 1 for s in steps)
        self.metrics.finished(policy, e2e, e2e <= slo_s, passed, retries)
        response = SolveResponse(
            id=solve_id, policy=executor.describe(), topology=trace.topology,
            admission=verdict.verdict.value if self.settings.admission is not AdmissionMode.OFF else "off",
            code=(sessions[0].workflow.answer_code if sessions else None) or "", passed=passed, grade_status=trace.grade_status, e2e_s=e2e, slo_s=slo_s,
            slo_met=e2e <= slo_s, retries=retries, mbpp_task_id=mbpp_id, trace=steps,
        )
        yield {"event": "final", **response.model_dump()}

    # --- hooks --------------------------------------------------------------------------------------------------
    def _on_decision(self, point: DecisionPoint, action: Action) -> None:
        """Records what the orchestrator predicted for the action taken (the queueing formula on the snapshot the
        decision saw), to show beside what was measured."""
        try:
            estimates = self.predictor.estimate(step_query(point.context))
            e = next(e for e, a in zip(estimates, point.candidates) if a == action)
            self._predicted[(point.run_id, point.slot_id)] = {
                "predicted_ttft_s": e.ttft_ms / 1e3, "predicted_tpot_s": e.tpot_ms / 1e3,
                "predicted_latency_s": e.t_hat_ms / 1e3, "remaining_budget_s": point.context.remaining_budget_s,
            }
        except Exception as e:  # a prediction is for display only
            logger.debug("no prediction for %s/%s: %s", point.run_id, point.slot_id, e)
            self._predicted[(point.run_id, point.slot_id)] = {"remaining_budget_s": point.context.remaining_budget_s}
        return None

    def _step(self, session: WorkflowSession, call: ModelCall, result: GenerationResult, attempts: int) -> SolveStep:
        predicted = self._predicted.pop((call.run_id, call.slot_id), {})
        return SolveStep(
            step=session.workflow.topology.index(call.slot_id), slot_id=call.slot_id, role=call.role_id,
            model=call.model, strategy=call.strategy.value,
            remaining_budget_s=predicted.pop("remaining_budget_s", float("nan")), **predicted,
            ttft_s=result.ttft_s, tpot_s=result.tpot_s, latency_s=result.e2e_s, output_tokens=result.output_tokens,
            replica_id=result.replica_id, attempts=attempts,
        )
