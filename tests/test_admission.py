"""Admission control (orchestration/admission.py) and the live driver's retry of a call whose replica died, without
Ray: the verdict table for each mode, and a fake handle whose first answers are a dead actor."""

from __future__ import annotations

import asyncio
from functools import cache

import pytest

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.data.telemetry import ModelLoad, SystemSnapshot
from sysaware.orchestration.admission import AdmissionController, AdmissionMode, Verdict, idle_snapshot
from sysaware.orchestration.context import PolicyResources
from sysaware.orchestration.topology import chain, default_topology, io
from sysaware.tasks.mbpp import get_task

TASK = get_task(11)


@cache
def resources() -> PolicyResources:
    return PolicyResources.default_for(load_pool(DEFAULT_POOL))


def busy_snapshot(waiting: int = 40) -> SystemSnapshot:
    """Every model with a queue: ``waiting`` requests at 2 completions a second, 150 ms per token."""
    return SystemSnapshot(0.0, {m: ModelLoad(m, 1, waiting, 64, 0.9, 800.0, 150.0, 2.0) for m in resources().models})


def controller(mode: AdmissionMode = AdmissionMode.DEGRADE) -> AdmissionController:
    return AdmissionController(resources(), mode)


def test_a_plan_costs_its_critical_path_and_load_makes_it_slower():
    c = controller()
    idle = idle_snapshot(resources().models)
    one, three = c.plan_s(TASK, io(), idle), c.plan_s(TASK, default_topology("chain"), idle)
    assert 0 < one < three
    assert c.plan_s(TASK, io(), busy_snapshot()) > one


@pytest.mark.parametrize("mode", list(AdmissionMode))
def test_an_slo_the_planned_plan_meets_is_admitted_in_every_mode(mode):
    a = controller(mode).judge(TASK, default_topology("chain"), 1_000.0, idle_snapshot(resources().models))
    assert a.verdict is Verdict.ADMIT and a.admitted and a.topology.name == "chain" and a.retry_after_s is None


@pytest.mark.parametrize("mode", [AdmissionMode.DEGRADE, AdmissionMode.REFUSE])
def test_an_slo_even_an_idle_pool_cannot_meet_is_unattainable(mode):
    a = controller(mode).judge(TASK, default_topology("chain"), 0.01, idle_snapshot(resources().models))
    assert a.verdict is Verdict.UNATTAINABLE and not a.admitted
    assert "idle pool" in a.reason and a.fastest_idle_s > 0.01


def test_degrade_runs_the_fastest_plan_when_only_it_meets_the_slo():
    c = controller()
    idle = idle_snapshot(resources().models)
    between = (c.plan_s(TASK, io(), idle) + c.plan_s(TASK, chain(["programmer", "bug_fixer"]), idle)) / 2
    a = c.judge(TASK, chain(["programmer", "bug_fixer"]), between, idle)
    assert a.verdict is Verdict.DEGRADE and a.admitted and a.topology.name == "io"
    assert "instead" in a.reason


def test_refuse_answers_503_where_degrade_would_fall_back():
    c = controller(AdmissionMode.REFUSE)
    idle = idle_snapshot(resources().models)
    between = (c.plan_s(TASK, io(), idle) + c.plan_s(TASK, default_topology("chain"), idle)) / 2
    a = c.judge(TASK, default_topology("chain"), between, idle)
    assert a.verdict is Verdict.UNDER_LOAD and a.retry_after_s > 0


@pytest.mark.parametrize("mode", [AdmissionMode.DEGRADE, AdmissionMode.REFUSE])
def test_an_slo_only_the_load_defeats_is_refused_with_a_retry_after(mode):
    c = controller(mode)
    idle = idle_snapshot(resources().models)
    slo = 2 * c.plan_s(TASK, io(), idle)  # an idle pool meets it with one agent
    a = c.judge(TASK, default_topology("chain"), slo, busy_snapshot())
    assert a.verdict is Verdict.UNDER_LOAD and not a.admitted
    assert a.fastest_now_s > slo >= a.fastest_idle_s
    assert a.retry_after_s >= a.fastest_now_s - slo
    assert "current load" in a.reason


def test_off_admits_what_it_knows_will_miss():
    a = controller(AdmissionMode.OFF).judge(TASK, default_topology("chain"), 0.01, busy_snapshot())
    assert a.verdict is Verdict.ADMIT and a.topology.name == "chain"


def test_an_unknown_mode_is_an_error_naming_it():
    with pytest.raises(ValueError, match="sometimes"):
        AdmissionController(resources(), "sometimes")


# --- the live driver's retries ------------------------------------------------------------------------------------


class DyingThenFine:
    """A handle whose first ``deaths`` calls fail as a dead replica's, then answers like the twin (FakeHandle)."""

    def __init__(self, inner, deaths: int, error: type[Exception]) -> None:
        self.inner, self.deaths, self.error = inner, deaths, error
        self.app_name, self.deployment_name = inner.app_name, inner.deployment_name
        self.generate = self
        self.calls = 0
        self.priorities: list[float] = []

    def remote(self, request):
        self.calls += 1
        self.priorities.append(request.priority)
        if self.calls <= self.deaths:
            async def die():
                raise self.error()
            return die()
        return self.inner.generate.remote(request)


def _driver(deaths: int, error=None):
    from ray.exceptions import ActorDiedError
    from test_stepping import FakeHandle, FakeTelemetry

    from sysaware.orchestration.live_driver import LiveDriver

    models = resources().models[:1]
    handles = {m: DyingThenFine(FakeHandle(m), deaths, error or ActorDiedError) for m in models}
    return LiveDriver(handles, FakeTelemetry()), handles[models[0]]


def test_a_call_whose_replica_died_is_retried_and_the_run_completes():
    from sysaware.orchestration.executors import FixedExecutor
    from sysaware.orchestration.planners import FixedPlanner

    driver, handle = _driver(deaths=2)
    seen = []
    trace = asyncio.run(driver.run_workflow(
        TASK, FixedPlanner(topology="io"), FixedExecutor(None, model=handle.deployment_name), slo_s=60.0,
        on_step=lambda session, call, result, attempts: seen.append(attempts), keep_session=False,
    ))
    assert trace.complete and seen == [3] and driver.retries == 2 and driver.sessions == []
    # Every attempt carried the run's deadline (unix s) as its priority.
    assert len(set(handle.priorities)) == 1 and handle.priorities[0] > 1e9


def test_a_fourth_death_or_a_refusal_fails_the_run():
    from sysaware.orchestration.executors import FixedExecutor
    from sysaware.orchestration.planners import FixedPlanner

    from ray.exceptions import ActorDiedError

    for deaths, error, calls in ((3, ActorDiedError, 3), (1, ValueError, 1)):
        driver, handle = _driver(deaths, error)
        with pytest.raises(error):
            asyncio.run(driver.run_workflow(
                TASK, FixedPlanner(topology="io"), FixedExecutor(None, model=handle.deployment_name), slo_s=60.0,
            ))
        assert handle.calls == calls
