"""What one workflow run measured: a record per agent step, and the run's outcome.

Times are on the driver's clock (virtual seconds in simulation, wall seconds live); every field says its unit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class StepRecord:
    run_id: str
    step: int  # the slot's position in the topology's topological order
    slot_id: str
    role_id: str
    model: str
    strategy: str
    upstream_roles: tuple[str, ...]  # roles whose outputs the prompt showed
    decided_at_s: float  # when the executor chose (model, strategy) and the call was sent
    remaining_budget_s: float  # b_t = SLO - elapsed at that moment, s (negative once the SLO is blown)
    prompt_tokens: int
    output_tokens: int
    queue_time_s: float  # arrival at the replica to first scheduled
    ttft_s: float | None  # arrival to first token
    tpot_s: float | None  # mean time per output token after the first
    latency_s: float  # the call end to end: arrival to last token
    finished_at_s: float
    finish_reason: str
    replica_id: str
    num_preemptions: int = 0


@dataclass
class RunTrace:
    run_id: str
    task_id: int
    topology: str
    slo_s: float  # the latency budget of the whole run, s
    start_s: float
    steps: list[StepRecord] = field(default_factory=list)
    answered_s: float | None = None  # when the sink's answer arrived (end of the run's latency)
    passed: bool | None = None  # the answer against every MBPP assert of the task, in the sandbox
    grade_status: str = ""  # the sandbox's status of that run ("passed", "failed_assert", ...)
    planner: str = ""
    executor: str = ""

    @property
    def e2e_latency_s(self) -> float | None:
        return None if self.answered_s is None else self.answered_s - self.start_s

    @property
    def met_slo(self) -> bool | None:
        latency = self.e2e_latency_s
        return None if latency is None else latency <= self.slo_s

    @property
    def complete(self) -> bool:
        return self.passed is not None

    def summary(self) -> dict:
        """One flat row for tables: the outcome and the totals over steps."""
        return {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "topology": self.topology,
            "planner": self.planner,
            "executor": self.executor,
            "slo_s": self.slo_s,
            "start_s": self.start_s,
            "e2e_latency_s": self.e2e_latency_s,
            "met_slo": self.met_slo,
            "passed": self.passed,
            "grade_status": self.grade_status,
            "steps": len(self.steps),
            "prompt_tokens": sum(s.prompt_tokens for s in self.steps),
            "output_tokens": sum(s.output_tokens for s in self.steps),
            "models": ";".join(s.model for s in self.steps),
            "strategies": ";".join(s.strategy for s in self.steps),
        }

    def step_rows(self) -> list[dict]:
        rows = []
        for s in self.steps:
            row = asdict(s)
            row["upstream_roles"] = ";".join(s.upstream_roles)
            rows.append(row)
        return rows
