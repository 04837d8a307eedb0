"""The stepping API: decision points handed out by the session, decided by an executor, an external agent (the way an
RL environment steps the simulated driver) or the live driver's agent and hook, all through ``session.decide``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from sysaware.data.telemetry import SystemSnapshot
from sysaware.engines.types import FinishReason, GenerationRequest, GenerationResult, TelemetrySnapshot
from sysaware.orchestration.context import Action, InvalidAction, all_actions, check_action
from sysaware.orchestration.executors import Executor, FixedExecutor, LeastQueueExecutor
from sysaware.orchestration.live_driver import LiveDriver
from sysaware.orchestration.planners import FixedPlanner
from sysaware.orchestration.session import DecisionError, DecisionPoint, WorkflowSession
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.topology import chain, debate, reflection, star
from sysaware.orchestration.workflow import Workflow
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.prompts import Strategy
from twin_factories import default_backend as twin_backend, default_pool as pool, default_responder as twin_responder

SEED = 4
WORKFLOWS = [(11, star()), (12, reflection()), (13, debate()), (14, chain(["programmer", "bug_fixer"])), (15, star())]


def driver_with(executor: Executor | None, background: int = 2) -> SimulatedDriver:
    """The same workflows under the same background load, decided by ``executor`` (None: from outside)."""
    driver = SimulatedDriver(pool(), twin_backend(), SimSettings(background_per_model=background, seed=SEED))
    for i, (task_id, topology) in enumerate(WORKFLOWS):
        workflow = Workflow(f"w{i}", get_task(task_id), topology, slo_s=20.0, seed=SEED + i)
        driver.add(workflow, executor, at_s=1.0 + 0.4 * i)  # start times close enough that runs overlap
    return driver


def step_through(driver: SimulatedDriver, policy: Callable[[DecisionPoint], Action]) -> list[tuple]:
    """Drive every external decision with ``policy``, checking the clock stands still at each; the points handed
    out, as (run, slot, virtual time)."""
    handed_out = []
    while (point := driver.next_decision()) is not None:
        assert driver.now == point.context.now_s  # paused exactly at the point
        assert driver.next_decision() is point  # asking again hands out the same point, and simulates nothing
        action = policy(point)
        assert driver.now == point.context.now_s
        driver.decide(point, action)
        assert driver.now == point.context.now_s  # deciding sends the call; it does not simulate
        handed_out.append((point.run_id, point.slot_id, point.context.now_s))
    return handed_out


def first_candidate(point: DecisionPoint) -> Action:
    return point.candidates[0]


def without_decider(traces) -> list:
    return [dataclasses.replace(t, executor="") for t in traces]


# ---- the simulated driver's external-agent mode ---------------------------------------------------------------


def test_an_external_agent_gets_the_results_of_the_executor_making_the_same_choices():
    external = driver_with(None)
    handed_out = step_through(external, first_candidate)
    first = all_actions(external.models)[0]
    reference = driver_with(FixedExecutor(None, model=first.model, strategy=first.strategy))
    expected = reference.run()
    traces = external.traces()

    assert len(handed_out) == sum(len(t.slots) for _, t in WORKFLOWS)
    assert without_decider(traces) == without_decider(expected)
    assert all(t.passed is not None for t in traces)  # graded when next_decision returned None
    assert {t.executor for t in traces} == {"external"}
    assert [s.calls for s in external.sessions] == [s.calls for s in reference.sessions]
    # The whole simulation is the same, not only the workflows: the background load is where it would be. (The two
    # stopped at different times: each checks for the end between chunks, and pauses shift the chunks.)
    end = max(external.now, reference.now) + 1.0
    for driver in (external, reference):
        driver.cluster.run(until=end)
    assert external.cluster.steps_executed == reference.cluster.steps_executed
    assert external.cluster.stats() == reference.cluster.stats()


def test_a_load_aware_agent_outside_sees_what_the_executor_sees_inside():
    # least_queue reads the telemetry snapshot: equal choices mean the contexts handed out equal the executor's.
    external = driver_with(None)
    agent = LeastQueueExecutor(None)
    step_through(external, lambda point: agent.act(point.context))
    reference = driver_with(LeastQueueExecutor(None))
    assert without_decider(external.traces()) == without_decider(reference.run())
    for ours, theirs in zip(external.sessions, reference.sessions):
        assert [c.snapshot for c in ours.contexts] == [c.snapshot for c in theirs.contexts]
    models = {s.model for t in external.traces() for s in t.steps}
    assert len(models) > 1  # the load moved some steps away from the first model


def test_points_waiting_together_are_handed_out_one_by_one_in_a_deterministic_order():
    external = driver_with(None, background=0)
    point = external.next_decision()
    assert (point.run_id, point.slot_id) == ("w0", "w0")
    # The star's three workers became ready together: the cluster stopped at that instant with all three waiting.
    waiting = external.sessions[0].pending
    assert list(waiting) == ["w0", "w1", "w2"]
    assert all(p.context.now_s == point.context.now_s == 1.0 for p in waiting.values())
    with pytest.raises(DecisionError, match="in the order next_decision"):
        external.decide(waiting["w2"], first_candidate(waiting["w2"]))
    external.decide(point, first_candidate(point))
    assert [(p.run_id, p.slot_id) for p in [external.next_decision()]] == [("w0", "w1")]
    # The same seed hands out the same points at the same times.
    rest = step_through(external, first_candidate)
    again = driver_with(None, background=0)
    assert step_through(again, first_candidate)[1:] == rest


def test_a_bad_action_is_rejected_and_the_point_stays_handed_out():
    external = driver_with(None, background=0)
    point = external.next_decision()
    with pytest.raises(InvalidAction, match=r"w0/w0: gpt-9/flash is not among the candidates: mistral-7b-instruct/flash"):
        external.decide(point, Action("gpt-9", Strategy.FLASH))
    with pytest.raises(InvalidAction, match="not a \\(model, strategy\\) action"):
        external.decide(point, ("mistral-7b-instruct", "verbose"))
    assert external.next_decision() is point and external.now == point.context.now_s
    external.decide(point, ("mistral-7b-instruct", "flash"))  # a plain pair with the strategy's name is accepted
    with pytest.raises(DecisionError):
        external.decide(point, first_candidate(point))  # decided already
    with pytest.raises(DecisionError, match="next_decision\\(\\) and decide\\(\\), not run\\(\\)"):
        external.run()  # run() cannot decide for a workflow added without an executor


def test_an_executor_choosing_outside_the_candidates_is_stopped_by_the_session():
    class Stubborn(Executor):
        name = "stubborn"

        def choose(self, ctx):
            return Action("gpt-9", Strategy.FLASH)

    driver = SimulatedDriver(pool(), twin_backend(), SimSettings(grade=False))
    driver.add(Workflow("w", get_task(11), chain(["programmer"]), slo_s=20.0), Stubborn(None), at_s=0.0)
    with pytest.raises(InvalidAction, match="w/c0: gpt-9/flash is not among the candidates"):
        driver.run()


def test_check_action_names_the_point_and_the_candidates():
    candidates = (Action("a", Strategy.FLASH), Action("b", Strategy.CONCISE))
    assert check_action(("b", "concise"), candidates) == Action("b", Strategy.CONCISE)
    with pytest.raises(InvalidAction, match="^r/s: a/concise is not among the candidates: a/flash, b/concise$"):
        check_action(Action("a", Strategy.CONCISE), candidates, where="r/s")
    with pytest.raises(InvalidAction):
        check_action("a", candidates)


# ---- the live driver: an awaited agent and the on_decision hook (fake handles, no Ray) ---------------------------


class _Remote:
    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    async def remote(self, *args):
        return self.fn(*args)


class FakeHandle:
    """A DeploymentHandle's surface the live driver uses: ``generate.remote`` answers with the twin's text."""

    app_name = "fake-app"

    def __init__(self, model: str) -> None:
        self.deployment_name = model
        self.generate = _Remote(self.answer)

    def answer(self, request: GenerationRequest) -> GenerationResult:
        response = twin_responder().respond(request)
        return GenerationResult(
            request.request_id, request.model, response.text, 50, response.output_tokens, FinishReason.STOP,
            arrival_s=0.0, first_scheduled_s=0.0, first_token_s=0.01, finished_s=0.05, replica_id=f"{request.model}/0",
        )


class FakeTelemetry:
    def __init__(self) -> None:
        self.snapshot = _Remote(lambda: TelemetrySnapshot(wall_time_s=0.0, stale_after_s=0.5))  # nobody pushed


class AsyncAgent:
    """A policy served elsewhere: its answer is awaited."""

    def __init__(self, action: Action) -> None:
        self.action = action
        self.seen: list[DecisionPoint] = []

    async def answer(self, point: DecisionPoint) -> Action:
        self.seen.append(point)
        await asyncio.sleep(0)
        return self.action

    def describe(self) -> str:
        return "async-agent"


def test_the_live_driver_awaits_its_agent_and_lets_the_hook_log_and_override():
    models = [m.name for m in pool().models[:2]]
    handles = {m: FakeHandle(m) for m in models}
    logged: list[tuple[str, Action]] = []

    async def on_decision(point: DecisionPoint, action: Action):
        logged.append((point.slot_id, action))
        if point.slot_id == sink:
            return Action(models[1], Strategy.FLASH)  # the server overrides the aggregator's model
        return None  # keep the agent's

    planner = FixedPlanner(topology="star")
    sink = planner.topology.sink.slot_id
    agent = AsyncAgent(Action(models[0], Strategy.CONCISE))
    driver = LiveDriver(handles, FakeTelemetry(), time_scale=1.0, on_decision=on_decision)
    trace = asyncio.run(driver.run_workflow(get_task(11), planner, agent, slo_s=60.0))

    slots = [s.slot_id for s in planner.topology.slots]
    assert [p.slot_id for p in agent.seen] == [slot for slot, _ in logged] == slots
    assert all(set(p.context.snapshot.models) == set(models) for p in agent.seen)
    assert {(s.slot_id, s.model, s.strategy) for s in trace.steps} == {
        *((w, models[0], "concise") for w in slots[:-1]),
        (sink, models[1], "flash"),
    }
    assert trace.executor == "async-agent" and trace.passed is not None

    def bad_hook(point, action):
        return Action("gpt-9", Strategy.FLASH)

    driver = LiveDriver(handles, FakeTelemetry(), on_decision=bad_hook)
    with pytest.raises(InvalidAction, match="gpt-9/flash is not among the candidates"):
        asyncio.run(driver.run_workflow(get_task(11), planner, agent, slo_s=60.0))


def test_a_session_checks_the_point_it_is_asked_to_decide():
    snapshot = SystemSnapshot(0.0, {})
    session = WorkflowSession(Workflow("r", get_task(11), chain(["programmer"]), 10.0), [Action("m", Strategy.FLASH)], lambda now: snapshot)
    other = WorkflowSession(Workflow("q", get_task(11), chain(["programmer"]), 10.0), [Action("m", Strategy.FLASH)], lambda now: snapshot)
    [point] = session.start(0.0)
    [foreign] = other.start(0.0)
    assert isinstance(point, DecisionPoint) and session.pending == {"c0": point}
    with pytest.raises(DecisionError, match="q/c0: no decision is waiting there in run r"):
        session.decide(foreign, Action("m", Strategy.FLASH), 0.0)
    [call] = session.decide(point, Action("m", Strategy.FLASH), 0.5)
    assert (call.model, call.strategy, session.pending) == ("m", Strategy.FLASH, {})
    assert session.calls == [call] and session.contexts == [point.context]
