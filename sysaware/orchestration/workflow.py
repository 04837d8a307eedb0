"""One request's workflow as a pure state machine: it says what must happen next, drivers make it happen.

The workflow never sleeps, reads a clock or does I/O (DESIGN.md): every transition is a named method that checks
where it starts from, takes the driver's ``now`` when time matters, and returns the effects that follow:

    SlotReady(slot)      a slot waits for its (model, strategy): a decision point   -> ``decide``
                         (the session, session.py, hands it out to be decided)
    ModelCall            send these messages to that model                          -> ``on_model_result``
    SandboxRun           run code against asserts (the example for a bug fixer,     -> ``on_sandbox_result``
                         every assert for the final grade)

A slot's life:  BLOCKED --inputs done--> [TESTING --example run-->] READY --decide--> CALLING --result--> DONE
The run's:      CREATED --start--> RUNNING --sink answered--> GRADING --graded--> DONE

Slots whose inputs are done become ready together, so parallel slots (a star's workers, a debate round) are
called concurrently. The simulated driver (virtual clock) and the live driver (Ray Serve handles, wall clock) run
this same code; only how they carry out effects differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum

from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult
from sysaware.orchestration.messages import ExampleRun, UpstreamOutput, build_messages
from sysaware.orchestration.topology import Slot, Topology
from sysaware.orchestration.trace import RunTrace, StepRecord
from sysaware.tasks.extract import extract_code
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import RoleKind, Strategy
from sysaware.tasks.sandbox import ExecutionResult, SandboxJob

# Roles that see the example assert run against the candidate they are given (Self-Debug style feedback).
ROLES_WITH_TEST_RUN = frozenset({"bug_fixer"})
DEFAULT_MAX_TOKENS = 2048  # per call; the twin's longest DeepThink answers to MBPP stay well below


class WorkflowState(str, Enum):
    CREATED = "created"
    RUNNING = "running"
    GRADING = "grading"  # the sink answered (the latency clock stopped); the hidden-test grade is pending
    DONE = "done"


class SlotState(str, Enum):
    BLOCKED = "blocked"  # an input has not answered yet
    TESTING = "testing"  # a bug fixer's candidate is being run against the example assert
    READY = "ready"  # waiting for the executor's (model, strategy)
    CALLING = "calling"  # the model call is in flight
    DONE = "done"


class SandboxPurpose(str, Enum):
    EXAMPLE = "example"  # feedback for an agent: the example assert only
    FINAL = "final"  # the score: every assert of the task (never shown to any agent)


@dataclass(frozen=True)
class SlotReady:
    """A slot waits for its (model, strategy). The workflow only names it; the session (session.py) turns it into
    the DecisionPoint it hands out, with everything a policy may see."""

    run_id: str
    slot_id: str


@dataclass(frozen=True)
class ModelCall:
    run_id: str
    slot_id: str
    role_id: str
    model: str
    strategy: Strategy
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    seed: int  # the twin's answer is a function of (model, messages, seed)

    @property
    def call_id(self) -> str:
        return f"{self.run_id}/{self.slot_id}"

    def request(self, priority: float = 0.0) -> GenerationRequest:
        return GenerationRequest(
            request_id=self.call_id,
            model=self.model,
            messages=self.messages,
            max_tokens=self.max_tokens,
            seed=self.seed,
            priority=priority,
        )


@dataclass(frozen=True)
class SandboxRun:
    run_id: str
    slot_id: str  # the bug fixer waiting for feedback (EXAMPLE), or the sink whose answer is graded (FINAL)
    purpose: SandboxPurpose
    code: str
    tests: tuple[str, ...]
    setup_code: str = ""

    def job(self, timeout_s: float = 10.0) -> SandboxJob:
        return SandboxJob(code=self.code, tests=self.tests, setup_code=self.setup_code, timeout_s=timeout_s)


Effect = SlotReady | ModelCall | SandboxRun


class WorkflowError(RuntimeError):
    """A transition called from the wrong state: a driver bug."""


def call_seed(run_seed: int, slot_id: str) -> int:
    """Each slot's own seed, stable across processes: two debaters on one model still answer independently."""
    digest = hashlib.sha256(f"{run_seed}\x1f{slot_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def setup_code_of(task: MbppTask) -> str:
    return "\n".join(part for part in (task.test_setup_code, *task.test_imports) if part)


@dataclass
class _SlotRun:
    slot: Slot
    state: SlotState = SlotState.BLOCKED
    example_run: ExampleRun | None = None
    call: ModelCall | None = None
    decided_at_s: float = 0.0
    budget_at_decision_s: float = 0.0
    result: GenerationResult | None = None


@dataclass
class Workflow:
    """One task through one topology, within a latency budget ``slo_s``."""

    run_id: str
    task: MbppTask
    topology: Topology
    slo_s: float
    seed: int = 0
    max_tokens: int = DEFAULT_MAX_TOKENS
    state: WorkflowState = WorkflowState.CREATED
    start_s: float = 0.0
    answered_s: float | None = None
    grade: ExecutionResult | None = None
    _slots: dict[str, _SlotRun] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.slo_s > 0:  # also NaN; +inf (no budget) is allowed
            raise ValueError(f"{self.run_id}: slo_s must be a positive number of seconds, got {self.slo_s!r}")
        self._slots = {s.slot_id: _SlotRun(s) for s in self.topology.slots}

    # --- queries -----------------------------------------------------------------------------------------------
    def slot_state(self, slot_id: str) -> SlotState:
        return self._slots[slot_id].state

    def slots_in(self, state: SlotState) -> list[str]:
        return [sid for sid, run in self._slots.items() if run.state is state]

    def remaining_budget_s(self, now: float) -> float:
        """b_t = SLO - elapsed, s."""
        return self.slo_s - (now - self.start_s)

    def steps_left(self, slot_id: str) -> int:
        """Sequential calls still needed from this slot to the answer, this one included."""
        return self.topology.steps_to_sink(slot_id)

    def upstream(self, slot_id: str) -> list[UpstreamOutput]:
        """The outputs a slot's prompt shows: its inputs' answers, in the topology's order."""
        out = []
        for i in self.topology.slot(slot_id).inputs:
            result = self._slots[i].result
            assert result is not None, f"{slot_id} asked for {i}'s output before it answered"
            out.append(UpstreamOutput(self.topology.slot(i), result.text))
        return out

    def messages_for(self, slot_id: str, strategy: Strategy) -> tuple[ChatMessage, ...]:
        """The exact chat ``slot_id`` would receive under ``strategy`` (READY or later)."""
        run = self._require(slot_id, SlotState.READY, SlotState.CALLING, SlotState.DONE)
        return build_messages(self.task, run.slot, self.upstream(slot_id), run.example_run, strategy)

    def seed_of(self, slot_id: str) -> int:
        return call_seed(self.seed, slot_id)

    def history(self) -> list[StepRecord]:
        """Steps answered so far, in the order they finished."""
        done = [r for r in self._slots.values() if r.result is not None]
        return [self._record(r) for r in sorted(done, key=lambda r: (r.result.finished_s, self.topology.index(r.slot.slot_id)))]

    @property
    def answer_code(self) -> str | None:
        result = self._slots[self.topology.sink.slot_id].result
        return None if result is None else extract_code(result.text)

    @property
    def done(self) -> bool:
        return self.state is WorkflowState.DONE

    # --- transitions -------------------------------------------------------------------------------------------
    def start(self, now: float) -> list[Effect]:
        """CREATED -> RUNNING at ``now`` (the budget starts counting); the slots without inputs become ready."""
        if self.state is not WorkflowState.CREATED:
            raise WorkflowError(f"{self.run_id}: start() in state {self.state.value}")
        self.state = WorkflowState.RUNNING
        self.start_s = now
        effects: list[Effect] = []
        for slot in self.topology.slots:
            if not slot.inputs:
                effects += self._unblock(slot.slot_id)
        return effects

    def decide(self, slot_id: str, model: str, strategy: Strategy, now: float) -> ModelCall:
        """READY -> CALLING: the executor chose; the call to send."""
        run = self._require(slot_id, SlotState.READY)
        strategy = Strategy(strategy)
        run.call = ModelCall(
            run_id=self.run_id,
            slot_id=slot_id,
            role_id=run.slot.role_id,
            model=model,
            strategy=strategy,
            messages=self.messages_for(slot_id, strategy),
            max_tokens=self.max_tokens,
            seed=self.seed_of(slot_id),
        )
        run.decided_at_s = now
        run.budget_at_decision_s = self.remaining_budget_s(now)
        run.state = SlotState.CALLING
        return run.call

    def on_model_result(self, slot_id: str, result: GenerationResult, now: float) -> list[Effect]:
        """CALLING -> DONE; successors whose inputs are now all done unblock; the sink's answer starts grading."""
        run = self._require(slot_id, SlotState.CALLING)
        if self.state is not WorkflowState.RUNNING:
            raise WorkflowError(f"{self.run_id}: a model result in state {self.state.value}")
        run.result = result
        run.state = SlotState.DONE
        if slot_id == self.topology.sink.slot_id:
            return [self._answered(now)]
        effects: list[Effect] = []
        for successor in self.topology.successors(slot_id):
            inputs = self.topology.slot(successor).inputs
            if all(self._slots[i].state is SlotState.DONE for i in inputs):
                effects += self._unblock(successor)
        return effects

    def on_sandbox_result(self, run: SandboxRun, result: ExecutionResult, now: float) -> list[Effect]:
        """An example run: TESTING -> READY (the fixer's prompt now shows it). The final grade: GRADING -> DONE."""
        if run.purpose is SandboxPurpose.FINAL:
            if self.state is not WorkflowState.GRADING:
                raise WorkflowError(f"{self.run_id}: a final grade in state {self.state.value}")
            self.grade = result
            self.state = WorkflowState.DONE
            return []
        slot_run = self._require(run.slot_id, SlotState.TESTING)
        source = self.topology.slot(self._code_source(run.slot_id))
        slot_run.example_run = ExampleRun(source, result)
        slot_run.state = SlotState.READY
        return [SlotReady(self.run_id, run.slot_id)]

    # --- trace -------------------------------------------------------------------------------------------------
    def trace(self) -> RunTrace:
        return RunTrace(
            run_id=self.run_id,
            task_id=self.task.task_id,
            topology=self.topology.name,
            slo_s=self.slo_s,
            start_s=self.start_s,
            steps=self.history(),
            answered_s=self.answered_s,
            passed=None if self.grade is None else self.grade.passed,
            grade_status="" if self.grade is None else self.grade.status.value,
        )

    # --- internals ---------------------------------------------------------------------------------------------
    def _require(self, slot_id: str, *states: SlotState) -> _SlotRun:
        run = self._slots.get(slot_id)
        if run is None:
            raise WorkflowError(f"{self.run_id}: no slot {slot_id!r} in {self.topology.name}")
        if run.state not in states:
            raise WorkflowError(
                f"{self.run_id}/{slot_id}: expected {'/'.join(s.value for s in states)}, found {run.state.value}"
            )
        return run

    def _code_source(self, slot_id: str) -> str | None:
        """The latest input that wrote code: the candidate a bug fixer's test run checks."""
        for i in reversed(self.topology.slot(slot_id).inputs):
            if self.topology.slot(i).role.kind is RoleKind.CODE:
                return i
        return None

    def _unblock(self, slot_id: str) -> list[Effect]:
        """BLOCKED -> TESTING (a fixer with a candidate to run) or READY."""
        run = self._require(slot_id, SlotState.BLOCKED)
        source = self._code_source(slot_id) if run.slot.role_id in ROLES_WITH_TEST_RUN else None
        if source is not None:
            run.state = SlotState.TESTING
            code = extract_code(self._slots[source].result.text)
            return [SandboxRun(self.run_id, slot_id, SandboxPurpose.EXAMPLE, code, (self.task.example_test,), setup_code_of(self.task))]
        run.state = SlotState.READY
        return [SlotReady(self.run_id, slot_id)]

    def _answered(self, now: float) -> SandboxRun:
        self.state = WorkflowState.GRADING
        self.answered_s = now
        sink = self.topology.sink.slot_id
        return SandboxRun(
            self.run_id, sink, SandboxPurpose.FINAL, self.answer_code or "", tuple(self.task.test_list), setup_code_of(self.task)
        )

    def _record(self, run: _SlotRun) -> StepRecord:
        call, result = run.call, run.result
        assert call is not None and result is not None
        return StepRecord(
            run_id=self.run_id,
            step=self.topology.index(run.slot.slot_id),
            slot_id=run.slot.slot_id,
            role_id=run.slot.role_id,
            model=call.model,
            strategy=call.strategy.value,
            upstream_roles=tuple(self.topology.slot(i).role_id for i in run.slot.inputs),
            decided_at_s=run.decided_at_s,
            remaining_budget_s=run.budget_at_decision_s,
            prompt_tokens=result.prompt_tokens,
            output_tokens=result.output_tokens,
            queue_time_s=result.queue_time_s,
            ttft_s=result.ttft_s,
            tpot_s=result.tpot_s,
            latency_s=result.e2e_s,
            finished_at_s=result.finished_s,
            finish_reason=result.finish_reason.value,
            replica_id=result.replica_id,
            num_preemptions=result.num_preemptions,
        )
