"""Latency budgets: the default SLO is slack x the plan's idle critical path predicted from the profile alone, the
simulated and the live path give the same number for the same plan, a request's own SLO wins, and an SLO <= 0 or
NaN is an error naming slo_s (never a silent fallback)."""

from __future__ import annotations

import asyncio
import math

import pytest

from sysaware.data.profile import IdleLatencyMeasurement
from sysaware.engines.tokens import count_prompt_tokens
from sysaware.engines.types import FinishReason, GenerationResult, TelemetrySnapshot
from sysaware.orchestration.budget import DEFAULT_SLACK, ProfileBudget, check_slo_s, plan_slo_s
from sysaware.orchestration.context import Plan, PolicyResources
from sysaware.orchestration.executors import make_executor
from sysaware.orchestration.live_driver import LiveDriver
from sysaware.orchestration.messages import build_messages
from sysaware.orchestration.planners import make_planner
from sysaware.orchestration.topology import Slot, chain, debate, io, reflection, star
from sysaware.orchestration.workflow import Workflow
from sysaware.pipelines.evaluate import EvalSettings, plan_requests
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.prompts import Strategy
from profile_factories import hand_made_profile
from twin_factories import default_pool as pool

REF = "codellama-34b-instruct"  # the best Concise coder of the hand-made profile
ROLE_TOKENS = {"programmer": 100.0, "reviewer": 60.0, "bug_fixer": 80.0, "decision_maker": 90.0,
               "algorithm_designer": 120.0, "test_analyst": 70.0}


def idle_of(model: str) -> IdleLatencyMeasurement:
    if model == REF:
        return IdleLatencyMeasurement(ttft_base_s=0.05, ttft_per_prompt_token_s=0.001, tpot_s=0.02)
    return IdleLatencyMeasurement(ttft_base_s=1.0, ttft_per_prompt_token_s=0.01, tpot_s=0.5)  # never the reference


def budget(slack: float = DEFAULT_SLACK) -> ProfileBudget:
    profile = hand_made_profile(pool(), tokens=lambda m, s, r: ROLE_TOKENS[r] * (1 if s is Strategy.CONCISE else 3), idle=idle_of)
    return ProfileBudget(PolicyResources.from_profile(pool(), profile), slack)


def by_hand_s(task, slot: Slot, upstream_roles: list[str]) -> float:
    """One call on the reference model: TTFT(prompt with its inputs' mean lengths) + (L_out - 1) x TPOT."""
    prompt = count_prompt_tokens(build_messages(task, slot, (), None, Strategy.CONCISE)) + sum(ROLE_TOKENS[r] for r in upstream_roles)
    return 0.05 + 0.001 * prompt + (ROLE_TOKENS[slot.role_id] - 1) * 0.02


def test_the_idle_latency_is_the_critical_path_of_reference_calls():
    b, task = budget(), get_task(17)
    assert b.reference_model == REF
    one = io()
    assert b.idle_latency_s(task, one) == pytest.approx(by_hand_s(task, one.slot("answer"), []))
    r = reflection()  # answer -> critique -> revise: all sequential
    expected = (
        by_hand_s(task, r.slot("answer"), [])
        + by_hand_s(task, r.slot("critique"), ["programmer"])
        + by_hand_s(task, r.slot("revise"), ["programmer", "reviewer"])
    )
    assert b.idle_latency_s(task, r) == pytest.approx(expected)
    s = star(["algorithm_designer", "programmer", "test_analyst"])  # parallel workers: the slowest, then the aggregate
    workers = max(by_hand_s(task, s.slot(f"w{i}"), []) for i in range(3))
    aggregate = by_hand_s(task, s.slot("aggregate"), ["algorithm_designer", "programmer", "test_analyst"])
    assert b.idle_latency_s(task, s) == pytest.approx(workers + aggregate)
    assert b.default_slo_s(task, s) == pytest.approx(DEFAULT_SLACK * (workers + aggregate))
    # more work, more budget
    assert b.idle_latency_s(task, io()) < b.idle_latency_s(task, chain()) < b.idle_latency_s(task, debate(["programmer"] * 3, rounds=3))
    with pytest.raises(ValueError, match="slack"):
        budget(slack=0.0)


def test_a_requests_own_slo_wins_and_a_non_positive_one_is_rejected():
    b, task = budget(), get_task(17)
    assert plan_slo_s(task, Plan(io(), slo_s=7.5), b) == 7.5
    assert plan_slo_s(task, Plan(io(), slo_s=7.5), None) == 7.5
    assert plan_slo_s(task, Plan(io()), b) == pytest.approx(b.default_slo_s(task, io()))
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="slo_s"):
            plan_slo_s(task, Plan(io(), slo_s=bad), b)
        with pytest.raises(ValueError, match="slo_s"):
            check_slo_s(bad)
        with pytest.raises(ValueError, match="slo_s"):
            Workflow("w", task, io(), slo_s=bad)
    with pytest.raises(ValueError, match="slo_s"):
        plan_slo_s(task, Plan(io()), None)  # no SLO and no default: an error, not a guess


# --- the live path, with fake Serve handles (no Ray) ------------------------------------------------------------


class _Generate:
    def __init__(self, model: str) -> None:
        self.model = model

    async def remote(self, request) -> GenerationResult:
        return GenerationResult(
            request_id=request.request_id, model=self.model, text="```python\ndef answer(x):\n    return x\n```",
            prompt_tokens=10, output_tokens=3, finish_reason=FinishReason.STOP, arrival_s=0.0, first_scheduled_s=0.0,
            first_token_s=0.01, finished_s=0.03, replica_id=f"app#{self.model}#0", token_times_s=(0.01, 0.02, 0.03),
        )


class FakeHandle:
    app_name = "app"

    def __init__(self, model: str) -> None:
        self.deployment_name = model
        self.generate = _Generate(model)


class _Snapshot:
    async def remote(self) -> TelemetrySnapshot:
        return TelemetrySnapshot(wall_time_s=0.0, stale_after_s=0.5)  # nobody has pushed: every model reads idle


class FakeTelemetry:
    snapshot = _Snapshot()


def live_driver(b: ProfileBudget | None) -> LiveDriver:
    return LiveDriver({m.name: FakeHandle(m.name) for m in pool().models}, FakeTelemetry(), budget=b)


def test_the_default_slo_is_the_same_number_on_the_simulated_and_the_live_path():
    b = budget()
    tasks = [get_task(t) for t in (11, 17)]
    settings = EvalSettings(planner="fixed")  # chain: designer -> programmer -> decision maker
    simulated = {r.task.task_id: r.slo_s for r in plan_requests(tasks, settings, b)}
    driver = live_driver(b)
    executor = make_executor("random", None)  # any executor: the budget does not depend on it
    for task in tasks:
        trace = asyncio.run(driver.run_workflow(task, make_planner("fixed"), executor, seed=1))
        assert trace.slo_s == simulated[task.task_id] == pytest.approx(b.default_slo_s(task, chain()))
    # a request's own SLO wins live too; zero is rejected, not replaced by the default
    own = asyncio.run(driver.run_workflow(tasks[0], make_planner("fixed"), executor, slo_s=7.5))
    assert own.slo_s == 7.5
    with pytest.raises(ValueError, match="slo_s"):
        asyncio.run(driver.run_workflow(tasks[0], make_planner("fixed"), executor, slo_s=0.0))
    with pytest.raises(ValueError, match="slo_s"):
        asyncio.run(live_driver(None).run_workflow(tasks[0], make_planner("fixed"), executor))
