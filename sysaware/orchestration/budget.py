"""The latency budget (SLO) of a request: given with it, or a slack factor times its plan's latency on an idle
cluster (README, "Latency budgets").

The idle latency is measured, not guessed: the planned topology runs for the very task on an otherwise idle
simulated cluster with a reference executor (every step on the model with the best code quality, Concise
strategy), with the call seeds the real run will use. So the budget scales with the work the plan implies (a
five-call debate gets more time than one agent), does not depend on which policy is evaluated, and is met on an
idle system by a quality-first, load-blind executor; under load, only an executor that adapts can keep to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sysaware.config import PoolConfig
from sysaware.orchestration.context import Plan, PolicyResources
from sysaware.orchestration.executors import BestSingleModelExecutor, Executor
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.topology import Topology
from sysaware.orchestration.workflow import Workflow
from sysaware.sim.backend import SimBackend
from sysaware.tasks.mbpp import MbppTask

DEFAULT_SLACK = 1.5  # budget = 1.5 x the idle latency of the plan under the reference executor


@dataclass
class IdleBudget:
    """Measures plans on an idle simulated cluster and turns them into budgets."""

    pool: PoolConfig
    backend: SimBackend
    resources: PolicyResources
    slack: float = DEFAULT_SLACK
    sandbox: CachedSandbox = field(default_factory=CachedSandbox)
    reference: Executor | None = None  # default: BestSingleModelExecutor (Concise)
    measured: dict[tuple[int, str, int], float] = field(default_factory=dict)  # (task, topology slots, seed) -> s

    def __post_init__(self) -> None:
        if self.slack <= 0:
            raise ValueError(f"the slack factor must be positive, got {self.slack}")
        if self.reference is None:
            self.reference = BestSingleModelExecutor(self.resources)
        from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver

        # One idle driver for every measurement: each workflow runs alone and the cluster is idle again after it.
        self._driver = SimulatedDriver(self.pool, self.backend, SimSettings(grade=False), sandbox=self.sandbox)

    def idle_latency_s(self, task: MbppTask, topology: Topology, seed: int = 0) -> float:
        key = (task.task_id, repr(topology.slots), seed)
        if key not in self.measured:
            n = len(self._driver.sessions)
            workflow = Workflow(f"idle-{n}", task, topology, slo_s=math.inf, seed=seed)
            self._driver.add(workflow, self.reference, at_s=self._driver.now)
            trace = self._driver.run()[-1]
            assert trace.e2e_latency_s is not None
            self.measured[key] = trace.e2e_latency_s
        return self.measured[key]

    def slo_s(self, task: MbppTask, plan: Plan, seed: int = 0) -> float:
        """The plan's own budget if it has one, else slack x its idle latency."""
        if plan.slo_s is not None:
            return plan.slo_s
        return self.slack * self.idle_latency_s(task, plan.topology, seed)
