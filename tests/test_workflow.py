"""The workflow state machine and the simulated driver: transitions, message passing, hidden asserts, grading,
determinism, traces."""

from __future__ import annotations

import re

import pytest

from sysaware.engines.twin.protocols import Response
from sysaware.engines.types import FinishReason, GenerationRequest, GenerationResult
from sysaware.sim.backend import SimBackend
from sysaware.orchestration.executors import FixedExecutor, RandomExecutor
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.topology import TopologyKind, chain, debate, default_topology, io, reflection, star
from sysaware.orchestration.workflow import (
    ModelCall,
    SandboxPurpose,
    SandboxRun,
    SlotReady,
    SlotState,
    Workflow,
    WorkflowError,
    WorkflowState,
)
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy
from sysaware.tasks.sandbox import ExecutionResult, ExecutionStatus
from twin_factories import default_pool as pool, default_backend as twin_backend, default_responder as twin_responder




def result_of(call: ModelCall, text: str, start_s: float = 0.0, end_s: float = 1.0) -> GenerationResult:
    return GenerationResult(
        request_id=call.call_id, model=call.model, text=text, prompt_tokens=40, output_tokens=8,
        finish_reason=FinishReason.STOP, arrival_s=start_s, first_scheduled_s=start_s + 0.05,
        first_token_s=start_s + 0.2, finished_s=end_s,
    )


def example_result(passed: bool) -> ExecutionResult:
    status = ExecutionStatus.PASSED if passed else ExecutionStatus.FAILED_ASSERT
    return ExecutionResult(passed, status, (), "", "", 0.0, "" if passed else "test 0 failed: assert f(1) == 2")


def squeeze(text: str) -> str:
    return "".join(text.split())


def hidden_asserts(task) -> list[str]:
    example = squeeze(task.example_test)
    return [squeeze(t) for t in task.test_list[1:] if squeeze(t) != example]


def decide_all(wf: Workflow, effects, now: float, strategy=Strategy.CONCISE) -> list[ModelCall]:
    return [wf.decide(e.slot_id, "m", strategy, now) for e in effects if isinstance(e, SlotReady)]


# ---------------------------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------------------------


def test_transitions_follow_the_slot_and_run_life_cycles():
    task = get_task(11)
    wf = Workflow("r", task, chain(["programmer"]), slo_s=10.0)
    assert wf.state is WorkflowState.CREATED and wf.slot_state("c0") is SlotState.BLOCKED
    [c0] = decide_all(wf, wf.start(5.0), 5.0)
    assert wf.state is WorkflowState.RUNNING and wf.slot_state("c0") is SlotState.CALLING
    assert wf.slot_state("decide") is SlotState.BLOCKED
    with pytest.raises(WorkflowError):
        wf.decide("decide", "m", Strategy.FLASH, 5.0)  # its input has not answered
    with pytest.raises(WorkflowError):
        wf.start(5.0)  # only once
    effects = wf.on_model_result("c0", result_of(c0, "```python\ndef f(x):\n    return x\n```", 5.0, 6.0), 6.0)
    assert effects == [SlotReady("r", "decide")] and wf.slot_state("decide") is SlotState.READY
    [decide] = decide_all(wf, effects, 6.5)
    [grade] = wf.on_model_result("decide", result_of(decide, "```python\ndef f(x):\n    return 2 * x\n```", 6.5, 8.0), 8.0)
    assert isinstance(grade, SandboxRun) and grade.purpose is SandboxPurpose.FINAL
    assert grade.tests == tuple(task.test_list) and "return 2 * x" in grade.code
    assert wf.state is WorkflowState.GRADING and wf.answered_s == 8.0
    with pytest.raises(WorkflowError):
        wf.on_model_result("decide", result_of(decide, "again"), 9.0)
    assert wf.on_sandbox_result(grade, example_result(False), 9.0) == []
    trace = wf.trace()
    assert wf.done and trace.passed is False and trace.e2e_latency_s == 3.0  # answered at 8.0, started at 5.0
    assert trace.met_slo is True  # 3 s <= 10 s
    # b_t = SLO - elapsed at each decision: 10 - 0 at 5.0, 10 - 1.5 at 6.5
    assert [s.remaining_budget_s for s in trace.steps] == [10.0, 8.5]
    assert [s.slot_id for s in trace.steps] == ["c0", "decide"] and trace.steps[1].latency_s == 1.5


def test_prompts_show_predecessors_outputs_labelled_by_role_and_end_with_the_strategy():
    task = get_task(11)
    wf = Workflow("r", task, chain(["algorithm_designer", "programmer"]), slo_s=10.0)
    [c0] = decide_all(wf, wf.start(0.0), 0.0, Strategy.DEEPTHINK)
    assert c0.messages[0].content == ROLES["algorithm_designer"].system_prompt
    assert c0.messages[1].content.endswith(STRATEGY_INSTRUCTIONS[Strategy.DEEPTHINK])
    assert task.example_test in c0.messages[1].content
    [c1] = decide_all(wf, wf.on_model_result("c0", result_of(c0, "Key idea: PLAN-TEXT-A"), 1.0), 1.0, Strategy.FLASH)
    user = c1.messages[1].content
    assert "### Algorithm Designer:\nKey idea: PLAN-TEXT-A" in user
    assert user.endswith(STRATEGY_INSTRUCTIONS[Strategy.FLASH])
    [d] = decide_all(wf, wf.on_model_result("c1", result_of(c1, "```python\ndef CODE_B(): pass\n```"), 2.0), 2.0)
    user = d.messages[1].content
    assert user.index("PLAN-TEXT-A") < user.index("### Programmer:") < user.index("CODE_B")  # topology order


def test_debaters_see_every_answer_of_the_previous_round():
    wf = Workflow("r", get_task(12), debate(["programmer"] * 3, rounds=2), slo_s=10.0)
    round1 = decide_all(wf, wf.start(0.0), 0.0)
    effects = []
    for call in round1:
        effects += wf.on_model_result(call.slot_id, result_of(call, f"ANSWER-{call.slot_id}"), 1.0)
    round2 = decide_all(wf, effects, 1.0)
    assert sorted(c.slot_id for c in round2) == ["r2d1", "r2d2", "r2d3"]
    for call in round2:
        user = call.messages[1].content
        for d in (1, 2, 3):
            assert f"### Programmer (debater {d}, round 1):\nANSWER-r1d{d}" in user


def test_a_bug_fixer_gets_the_example_assert_run_on_its_candidate_and_nothing_else():
    task = get_task(17)
    wf = Workflow("r", task, reflection(), slo_s=10.0)
    [answer] = decide_all(wf, wf.start(0.0), 0.0)
    [critique] = decide_all(wf, wf.on_model_result("answer", result_of(answer, "```python\ndef square_perimeter(a):\n    return 3 * a\n```"), 1.0), 1.0)
    [run] = wf.on_model_result("critique", result_of(critique, "Verdict: needs changes: fix it."), 2.0)
    assert run.purpose is SandboxPurpose.EXAMPLE and run.tests == (task.example_test,)
    assert "return 3 * a" in run.code and wf.slot_state("revise") is SlotState.TESTING
    [point] = wf.on_sandbox_result(run, example_result(False), 2.0)
    [revise] = decide_all(wf, [point], 2.0)
    user = revise.messages[1].content
    assert "### Test run of the Programmer's solution against the example test:" in user
    assert "status: failed_assert" in user and "0 of 1 tests passed" in user
    assert "### Reviewer:\nVerdict: needs changes" in user and "return 3 * a" in user


def test_hidden_asserts_written_by_an_agent_never_reach_a_later_prompt():
    task = get_task(11)
    leaked = task.test_list[1]
    wf = Workflow("r", task, chain(["test_analyst"]), slo_s=10.0)
    [c0] = decide_all(wf, wf.start(0.0), 0.0)
    text = f"Edge cases: many.\n```python\n{task.example_test}\n{leaked}\n```\nKEEP-THIS-LINE"
    [d] = decide_all(wf, wf.on_model_result("c0", result_of(c0, text), 1.0), 1.0)
    prompt = squeeze("\n".join(m.content for m in d.messages))
    assert squeeze(task.example_test) in prompt and "KEEP-THIS-LINE" in prompt
    assert not any(h in prompt for h in hidden_asserts(task))


def test_no_prompt_of_a_twin_run_contains_a_hidden_assert():
    """Every topology on several tasks with the real responder: every prompt any agent received is checked."""
    driver = SimulatedDriver(pool(), twin_backend(), SimSettings(grade=False))
    executor = RandomExecutor(None, seed=1)
    sessions = []
    task_ids = (11, 17, 71, 141, 230, 345)
    for i, task_id in enumerate(task_ids):
        for kind in TopologyKind:
            wf = Workflow(f"t{task_id}-{kind.value}", get_task(task_id), default_topology(kind), slo_s=60.0, seed=i)
            sessions.append(driver.add(wf, executor, at_s=0.1 * len(sessions)))
    driver.run()
    checked = 0
    for session in sessions:
        task = session.workflow.task
        hidden = hidden_asserts(task)
        assert hidden, "every task has hidden asserts to leak"
        for call in session.calls:
            prompt = squeeze("\n".join(m.content for m in call.messages))
            assert squeeze(task.example_test) in prompt
            assert not any(h in prompt for h in hidden), (session.run_id, call.slot_id)
            checked += 1
    assert checked == sum(len(default_topology(k).slots) for k in TopologyKind) * len(task_ids)


# ---------------------------------------------------------------------------------------------------------------
# Grading through the simulated driver
# ---------------------------------------------------------------------------------------------------------------


class ReplayResponder:
    """Every agent answers with one fixed text (a known answer), as a twin would replay a recording."""

    def __init__(self, text: str) -> None:
        self.text = text

    def respond(self, request: GenerationRequest) -> Response:
        return Response(self.text, max(len(self.text.split()), 1))


def run_replay(text: str, topology) -> tuple:
    driver = SimulatedDriver(pool(), SimBackend(pool(), ReplayResponder(text)), SimSettings())
    wf = Workflow("replay", get_task(17), topology, slo_s=30.0)
    driver.add(wf, FixedExecutor(None, model="mistral-7b-instruct"), at_s=1.0)
    [trace] = driver.run()
    return trace


@pytest.mark.parametrize("topology", [io(), reflection()], ids=["io", "reflection"])
def test_a_known_correct_answer_passes_and_a_known_wrong_one_fails(topology):
    right = "```python\ndef square_perimeter(a):\n    return 4 * a\n```"
    wrong = "```python\ndef square_perimeter(a):\n    return a * a\n```"  # passes no assert of task 17
    passed = run_replay(right, topology)
    failed = run_replay(wrong, topology)
    assert passed.passed is True and passed.grade_status == "passed"
    assert failed.passed is False and failed.grade_status == "failed_assert"
    assert len(passed.steps) == len(topology.slots)
    assert passed.answered_s is not None and passed.e2e_latency_s > 0


# ---------------------------------------------------------------------------------------------------------------
# Determinism and traces
# ---------------------------------------------------------------------------------------------------------------


def simulate(seed: int, background: int = 3) -> list:
    driver = SimulatedDriver(pool(), twin_backend(), SimSettings(background_per_model=background, seed=seed))
    executor = RandomExecutor(None, seed=seed)
    for i, (task_id, topology) in enumerate([(11, star()), (12, reflection()), (13, debate())]):
        driver.add(Workflow(f"w{i}", get_task(task_id), topology, slo_s=20.0, seed=seed + i), executor, at_s=2.0 + i)
    return driver.run()


def test_the_same_seed_gives_the_same_trace():
    first, second = simulate(seed=7), simulate(seed=7)
    assert [t.summary() for t in first] == [t.summary() for t in second]
    assert [t.step_rows() for t in first] == [t.step_rows() for t in second]
    other = simulate(seed=8)
    assert [t.step_rows() for t in other] != [t.step_rows() for t in first]


def test_traces_measure_every_step():
    traces = simulate(seed=3)
    for trace in traces:
        assert trace.complete and trace.e2e_latency_s > 0
        assert trace.e2e_latency_s == pytest.approx(max(s.finished_at_s for s in trace.steps) - trace.start_s)
        for s in trace.steps:
            assert s.prompt_tokens > 0 and s.output_tokens > 0
            assert 0 <= s.queue_time_s <= s.ttft_s <= s.latency_s
            assert s.finished_at_s == pytest.approx(s.decided_at_s + s.latency_s)  # sent the moment it was decided
            assert s.remaining_budget_s == pytest.approx(trace.slo_s - (s.decided_at_s - trace.start_s))
            assert re.fullmatch(r"[\w-]+/\d+", s.replica_id)
        budgets = [s.remaining_budget_s for s in sorted(trace.steps, key=lambda s: s.decided_at_s)]
        assert budgets == sorted(budgets, reverse=True)
