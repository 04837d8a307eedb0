"""The simulated driver: many workflows at once on a SimulatedCluster, under closed-loop background load, in
virtual time. Deterministic for a seed: the cluster's event order, the load's draws, the workflows' call seeds and
the executors' generators are all seeded, and nothing reads the wall clock.

Sandbox runs cost no virtual time: a bug fixer's example run happens the instant its inputs are done (on a live
pool it takes a fraction of a second of wall time), and final grades run in one batch after the simulation, since
they do not change any latency.

Who decides. A workflow added with an executor is decided inside the simulator's callbacks, the instant it reaches
a decision point (``run``). A workflow added without one is decided from outside, the way an RL environment steps:

    point = driver.next_decision()      # simulate until a workflow waits for a decision (None: all answered)
    while point is not None:
        driver.decide(point, agent(point.context))
        point = driver.next_decision()
    traces = driver.traces()

At a point the callback parks it with a reserved place in the event order (``SimulatedCluster.reserve_order``) and
pauses the cluster, which stops right after that event: the virtual clock stands at the point until ``decide``, and
the call then arrives exactly where an executor's would have. So an agent that answers as an executor would gets
the executor's results, bit for bit. Points that wait together (a star's workers) are handed out one at a time, in
the order the simulation reached them. The one difference is the oracle's fork forecaster: it forks the cluster
when asked, which for an external agent is between events, and inside the event for an executor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sysaware.config import PoolConfig
from sysaware.engines.types import GenerationResult
from sysaware.orchestration.context import Action, all_actions
from sysaware.orchestration.executors import Executor
from sysaware.sim.forecast import ForkForecaster
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.session import (
    EXTERNAL_DECIDER,
    Agent,
    DecisionError,
    DecisionPoint,
    ExecutorAgent,
    SessionEffect,
    WorkflowSession,
)
from sysaware.data.telemetry import SystemSnapshot, TelemetryTracker
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import ModelCall, SandboxPurpose, SandboxRun, Workflow, WorkflowState
from sysaware.sim.backend import SimBackend
from sysaware.orchestration.scenarios import Background, ClosedLoopBackground
from sysaware.sim.load import ClosedLoopLoad, PhasedPoissonLoad
from sysaware.sim.workload import MbppRequestFactory, RequestFactory


@dataclass(frozen=True)
class SimSettings:
    background_per_model: int = 0  # N closed-loop background clients per model
    background: Background | None = None  # a scenario's background (orchestration/scenarios.py); overrides the above
    background_start_s: float = 0.0  # when they start (workflows should start after a warm-up)
    telemetry_period_s: float = 0.25  # how often background completions reach the telemetry tracker, virtual s
    seed: int = 0
    sandbox_timeout_s: float = 10.0  # wall-clock limit per sandbox run
    grade: bool = True  # run the final hidden-test grade (the SLO measurement does not need it)
    max_virtual_s: float = 3600.0  # a run that has not answered by then is a bug, not a slow system
    chunk_s: float = 5.0  # virtual seconds simulated between checks for the end


class DriverCallback:
    """A callback the driver hands to the cluster. A deep copy of it (a forked cluster, see forecast.py) is a no-op:
    a fork must not advance the real workflows."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable, *args) -> None:
        self.fn = fn
        self.args = args

    def __call__(self, *more):
        return self.fn(*self.args, *more)

    def __deepcopy__(self, memo: dict) -> Callable:
        return _ignore


def _ignore(*_args) -> None:
    return None


@dataclass(frozen=True)
class _Waiting:
    """A decision point handed out to the external agent, and where its call will go when it is decided."""

    session: WorkflowSession
    point: DecisionPoint
    order: int  # the call's place in the cluster's event order, reserved when the point was reached
    at_s: float  # the virtual time of the point: the clock must still read it at ``decide``


class SimulatedDriver:
    def __init__(
        self,
        pool: PoolConfig,
        backend: SimBackend | None = None,
        settings: SimSettings = SimSettings(),
        sandbox: CachedSandbox | None = None,
        background: RequestFactory | None = None,
    ) -> None:
        self.pool = pool
        self.backend = backend or SimBackend(pool)
        if self.backend.pool != pool:
            raise ValueError(f"the backend simulates pool {self.backend.pool.name!r}, not {pool.name!r}")
        self.settings = settings
        self.sandbox = sandbox or CachedSandbox()
        self.cluster = self.backend.cluster(seed=settings.seed)
        self.cluster.keep_results = False
        self.tracker = TelemetryTracker()
        self.sessions: list[WorkflowSession] = []
        self._agents: dict[WorkflowSession, Agent | None] = {}  # None: decided from outside (next_decision)
        self._waiting: deque[_Waiting] = deque()  # points handed out to the external agent, oldest first
        self._grades: list[tuple[WorkflowSession, SandboxRun]] = []
        self.loads: dict[str, ClosedLoopLoad | PhasedPoissonLoad] = {}
        spec = settings.background
        if spec is None and settings.background_per_model > 0:
            spec = ClosedLoopBackground(per_model=settings.background_per_model)
        if spec is not None:
            factory = background or MbppRequestFactory.for_split("train", prefix="bg")
            for m in self.cluster.models:
                if isinstance(spec, ClosedLoopBackground):
                    if spec.clients(m) > 0:
                        self.loads[m] = ClosedLoopLoad(self.cluster, m, spec.clients(m), factory, seed=settings.seed)
                else:
                    phases = tuple((p.rate_per_s, p.duration_s) for p in spec.phases)
                    self.loads[m] = PhasedPoissonLoad(self.cluster, m, phases, factory, seed=settings.seed)
            for load in self.loads.values():
                load.start(at=settings.background_start_s)
        self.cluster.call_at(settings.telemetry_period_s, DriverCallback(self._sample))
        self.forecaster = ForkForecaster(self)  # only the oracle asks it anything

    @property
    def models(self) -> list[str]:
        return self.cluster.models

    @property
    def now(self) -> float:
        return self.cluster.now

    def snapshot(self, now: float | None = None) -> SystemSnapshot:
        return self.tracker.snapshot(self.cluster.now if now is None else now, self.cluster.stats())

    # --- workflows ---------------------------------------------------------------------------------------------
    def add(
        self,
        workflow: Workflow,
        executor: Executor | None,
        at_s: float,
        candidates: Sequence[Action] | None = None,
        planner_name: str = "",
    ) -> WorkflowSession:
        """Start ``workflow`` at virtual time ``at_s``, its actions chosen among ``candidates`` (default: every
        model of the pool with every strategy) by ``executor``, or, when it is None, by whoever steps this driver
        with ``next_decision`` and ``decide``."""
        agent = None if executor is None else ExecutorAgent(executor)
        session = WorkflowSession(
            workflow,
            candidates or all_actions(self.models),
            self.snapshot,
            forecaster=self.forecaster,
            planner_name=planner_name,
            decider_name=EXTERNAL_DECIDER if agent is None else agent.describe(),
        )
        self.sessions.append(session)
        self._agents[session] = agent
        self.cluster.call_at(at_s, DriverCallback(self._start, session))
        return session

    def run(self) -> list[RunTrace]:
        """Simulate until every workflow has answered, then grade the answers; the traces, in the order added.
        Every workflow must have an executor (step the others with ``next_decision`` and ``decide``)."""
        while not self._all_answered():
            if self._waiting:
                point = self._waiting[0].point
                raise DecisionError(
                    f"{point.run_id}/{point.slot_id} waits for a decision from outside: a workflow added without an "
                    "executor is stepped with next_decision() and decide(), not run()"
                )
            self._advance()
        self._grade_all()
        return self.traces()

    def traces(self) -> list[RunTrace]:
        """Every workflow's trace, in the order added (graded once ``run`` or ``next_decision`` has finished)."""
        return [x.trace() for x in self.sessions]

    # --- decisions from outside --------------------------------------------------------------------------------
    def next_decision(self) -> DecisionPoint | None:
        """Simulate until a workflow added without an executor waits for a decision, and hand it out: the clock
        stands at it until ``decide``. None once every workflow has answered (the answers are graded then). Points
        that wait together come one at a time, in the order the simulation reached them."""
        while not self._waiting:
            if self._all_answered():
                self._grade_all()
                return None
            self._advance()
        return self._waiting[0].point

    def decide(self, point: DecisionPoint, action: Action) -> None:
        """Answer the point ``next_decision`` handed out. Its call arrives at the point's instant, in the place of
        the event order it would have had if an executor had decided it there. An action outside the point's
        candidates raises ``InvalidAction`` and the point stays handed out."""
        if not self._waiting or self._waiting[0].point != point:
            expected = self._waiting[0].point if self._waiting else None
            raise DecisionError(
                f"{point.run_id}/{point.slot_id} is not the decision handed out "
                f"({'none is' if expected is None else f'{expected.run_id}/{expected.slot_id} is'}): "
                "decide the points in the order next_decision() hands them out"
            )
        waiting = self._waiting[0]
        if self.cluster.now != waiting.at_s:
            raise RuntimeError(f"the virtual clock moved from {waiting.at_s} to {self.cluster.now} at a decision")
        [call] = waiting.session.decide(point, action, self.cluster.now)
        self._waiting.popleft()
        self._submit(waiting.session, call, order=waiting.order)

    # --- carrying out effects ----------------------------------------------------------------------------------
    @staticmethod
    def _answered(session: WorkflowSession) -> bool:
        return session.workflow.state in (WorkflowState.GRADING, WorkflowState.DONE)

    def _all_answered(self) -> bool:
        return all(self._answered(x) for x in self.sessions)

    def _advance(self) -> None:
        """Simulate one chunk, or less if a workflow stops it at a decision point."""
        s = self.settings
        if self.cluster.idle():
            stuck = [x.run_id for x in self.sessions if not self._answered(x)]
            raise RuntimeError(f"the cluster went idle with workflows unanswered: {stuck[:5]}")
        if self.cluster.now >= s.max_virtual_s:
            raise RuntimeError(f"workflows still running after {s.max_virtual_s} virtual s")
        self.cluster.run(until=self.cluster.now + s.chunk_s)

    def _start(self, session: WorkflowSession, now: float) -> None:
        self._carry_out(session, session.start(now))

    def _on_result(self, session: WorkflowSession, call: ModelCall, result: GenerationResult) -> None:
        self.tracker.record(result)
        self._carry_out(session, session.on_model_result(call, result, self.cluster.now))

    def _carry_out(self, session: WorkflowSession, effects: list[SessionEffect]) -> None:
        """Inside a callback: the effects in order. A decision point without an executor is parked with the place
        its call will take, and the cluster stops after this event."""
        queue = deque(self._decide_now(session, effects))
        while queue:
            effect = queue.popleft()
            if isinstance(effect, DecisionPoint):
                self._waiting.append(_Waiting(session, effect, self.cluster.reserve_order(), self.cluster.now))
                self.cluster.pause()
            elif isinstance(effect, ModelCall):
                self._submit(session, effect)
            elif effect.purpose is SandboxPurpose.EXAMPLE:
                result = self.sandbox.run(effect.job(self.settings.sandbox_timeout_s))
                queue.extend(self._decide_now(session, session.on_sandbox_result(effect, result, self.cluster.now)))
            elif self.settings.grade:
                self._grades.append((session, effect))

    def _decide_now(self, session: WorkflowSession, effects: list[SessionEffect]) -> list[SessionEffect]:
        """Every point of ``effects`` answered by the session's executor, before any effect is carried out; the
        points of a workflow without one stay, to be handed out."""
        agent = self._agents[session]
        if agent is None:
            return effects
        out: list[SessionEffect] = []
        for effect in effects:
            if isinstance(effect, DecisionPoint):
                out += session.decide(effect, agent.answer(effect), self.cluster.now)
            else:
                out.append(effect)
        return out

    def _submit(self, session: WorkflowSession, call: ModelCall, order: int | None = None) -> None:
        self.cluster.submit(call.request(), on_complete=DriverCallback(self._on_result, session, call), order=order)

    def _grade_all(self) -> None:
        if not self._grades:
            return
        jobs = [run.job(self.settings.sandbox_timeout_s) for _, run in self._grades]
        for (session, run), result in zip(self._grades, self.sandbox.run_batch(jobs)):
            session.on_sandbox_result(run, result, self.cluster.now)
        self._grades.clear()

    def _sample(self, now: float) -> None:
        """Feed the background's finished requests to the telemetry (the histograms a live actor would read)."""
        for load in self.loads.values():
            self.tracker.record_all(load.completed)
            load.completed.clear()  # the driver owns these loads; nothing else reads their results
        self.cluster.call_at(now + self.settings.telemetry_period_s, DriverCallback(self._sample))
