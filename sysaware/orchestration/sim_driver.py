"""The simulated driver: many workflows at once on a SimulatedCluster, under closed-loop background load, in
virtual time. Deterministic for a seed: the cluster's event order, the load's draws, the workflows' call seeds and
the executors' generators are all seeded, and nothing reads the wall clock.

Sandbox runs cost no virtual time: a bug fixer's example run happens the instant its inputs are done (on a live
pool it takes a fraction of a second of wall time), and final grades run in one batch after the simulation, since
they do not change any latency.
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
from sysaware.orchestration.session import DriverEffect, WorkflowSession
from sysaware.data.telemetry import SystemSnapshot, TelemetryTracker
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import ModelCall, SandboxPurpose, SandboxRun, Workflow, WorkflowState
from sysaware.sim.backend import SimBackend
from sysaware.sim.load import ClosedLoopLoad
from sysaware.sim.workload import MbppRequestFactory, RequestFactory


@dataclass(frozen=True)
class SimSettings:
    background_per_model: int = 0  # N closed-loop background clients per model
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
        self._grades: list[tuple[WorkflowSession, SandboxRun]] = []
        self.loads: dict[str, ClosedLoopLoad] = {}
        if settings.background_per_model > 0:
            factory = background or MbppRequestFactory.for_split("train", prefix="bg")
            for m in self.cluster.models:
                self.loads[m] = ClosedLoopLoad(
                    self.cluster, m, settings.background_per_model, factory, seed=settings.seed
                ).start(at=settings.background_start_s)
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
        executor: Executor,
        at_s: float,
        candidates: Sequence[Action] | None = None,
        planner_name: str = "",
    ) -> WorkflowSession:
        """Start ``workflow`` at virtual time ``at_s`` with ``executor`` choosing among ``candidates`` (default:
        every model of the pool with every strategy)."""
        session = WorkflowSession(
            workflow,
            executor,
            candidates or all_actions(self.models),
            self.snapshot,
            forecaster=self.forecaster,
            planner_name=planner_name,
        )
        self.sessions.append(session)
        self.cluster.call_at(at_s, DriverCallback(self._start, session))
        return session

    def run(self) -> list[RunTrace]:
        """Simulate until every workflow has answered, then grade the answers; the traces, in the order added."""
        s = self.settings
        while not all(self._answered(x) for x in self.sessions):
            if self.cluster.idle():
                stuck = [x.run_id for x in self.sessions if not self._answered(x)]
                raise RuntimeError(f"the cluster went idle with workflows unanswered: {stuck[:5]}")
            if self.cluster.now >= s.max_virtual_s:
                raise RuntimeError(f"workflows still running after {s.max_virtual_s} virtual s")
            self.cluster.run(until=self.cluster.now + s.chunk_s)
        self._grade_all()
        return [x.trace() for x in self.sessions]

    # --- carrying out effects ----------------------------------------------------------------------------------
    @staticmethod
    def _answered(session: WorkflowSession) -> bool:
        return session.workflow.state in (WorkflowState.GRADING, WorkflowState.DONE)

    def _start(self, session: WorkflowSession, now: float) -> None:
        self._carry_out(session, session.start(now))

    def _on_result(self, session: WorkflowSession, call: ModelCall, result: GenerationResult) -> None:
        self.tracker.record(result)
        self._carry_out(session, session.on_model_result(call, result, self.cluster.now))

    def _carry_out(self, session: WorkflowSession, effects: list[DriverEffect]) -> None:
        queue = deque(effects)
        while queue:
            effect = queue.popleft()
            if isinstance(effect, ModelCall):
                self.cluster.submit(effect.request(), on_complete=DriverCallback(self._on_result, session, effect))
            elif effect.purpose is SandboxPurpose.EXAMPLE:
                result = self.sandbox.run(effect.job(self.settings.sandbox_timeout_s))
                queue.extend(session.on_sandbox_result(effect, result, self.cluster.now))
            elif self.settings.grade:
                self._grades.append((session, effect))

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
