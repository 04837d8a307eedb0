"""The live driver on a real local Ray Serve pool: the same workflow state machine as in simulation, carried out
through DeploymentHandles, with sandbox feedback in a thread and a graded answer at the end.

The twin's answers are a pure function of (model, messages, seed), so the live run and a simulated run of the same
task, plan and seed must send the same prompts and reach the same answer; only the timings differ.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from serve_factories import deployed, two_model_pool

from sysaware.orchestration.executors import FixedExecutor
from sysaware.orchestration.live_driver import LiveDriver
from sysaware.orchestration.planners import FixedPlanner
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.topology import chain
from sysaware.orchestration.workflow import Workflow, WorkflowState
from sysaware.tasks.mbpp import get_task

APP = "test-live-driver"
TIME_SCALE = 20.0  # engine seconds per wall second: a call of a few engine seconds takes a fraction of a second
TASK_ID = 11  # an MBPP test-split task with recorded answers
SEED = 7
SLO_S = 120.0  # engine s




def create_planner() -> FixedPlanner:
    # A bug fixer after the programmer: its prompt needs a sandbox run of the example assert (in a thread).
    planner = FixedPlanner()
    planner.topology = chain(["programmer", "bug_fixer"])
    return planner


@pytest.fixture(scope="module")
def live(ray_session):
    yield from deployed(two_model_pool(), APP, TIME_SCALE)


def test_live_chain_runs_the_workflow_and_matches_the_simulated_twin(live):
    pool, handles, telemetry = live
    model = pool.models[1].name  # not the first: the call must reach the handle of the model chosen
    task = get_task(TASK_ID)
    driver = LiveDriver(handles, telemetry, TIME_SCALE)
    trace = asyncio.run(driver.run_workflow(task, create_planner(), FixedExecutor(None, model=model), SLO_S, SEED))

    assert [s.role_id for s in trace.steps] == ["programmer", "bug_fixer", "decision_maker"]
    assert [s.step for s in trace.steps] == [0, 1, 2]
    assert trace.task_id == TASK_ID and trace.topology == "chain" and trace.slo_s == SLO_S
    for s in trace.steps:
        assert s.model == model and s.strategy == "concise"
        assert s.prompt_tokens > 0 and s.output_tokens > 0
        assert s.ttft_s is not None and 0 < s.ttft_s <= s.latency_s
        assert s.replica_id.startswith(f"{APP}#{model}#")
    # Each step was decided after its predecessor finished, on the driver's engine clock.
    for before, after in zip(trace.steps, trace.steps[1:]):
        assert before.finished_at_s <= after.decided_at_s
    assert trace.answered_s is not None and trace.e2e_latency_s > 0
    assert trace.passed is not None and trace.grade_status
    session = driver.sessions[0]
    assert session.workflow.state is WorkflowState.DONE
    # The executor saw both served models in its telemetry.
    assert set(session.contexts[0].snapshot.models) == set(handles)

    sim = SimulatedDriver(pool, settings=SimSettings(seed=SEED))
    sim_session = sim.add(
        Workflow("sim", task, create_planner().topology, SLO_S, seed=SEED), FixedExecutor(None, model=model), at_s=1.0
    )
    (sim_trace,) = sim.run()
    # Same prompts at every step (each shows its predecessors' answers), so same texts up to the sink; same answer.
    assert [c.messages for c in session.calls] == [c.messages for c in sim_session.calls]
    assert session.workflow.answer_code == sim_session.workflow.answer_code
    assert [s.output_tokens for s in trace.steps] == [s.output_tokens for s in sim_trace.steps]
    assert (trace.passed, trace.grade_status) == (sim_trace.passed, sim_trace.grade_status)


def test_a_pushed_view_reads_its_step_phase_at_the_snapshot_time():
    # The replica pushed 4 ms into a 20 ms step; the actor's view is 2 wall ms old at a twin running 3x real time:
    # 6 engine ms later, 10 ms into the step, 10 ms left. Once the view is older than a step, the phase is unknown.
    from twin_factories import create_stats

    from sysaware.engines.types import ReplicaView, step_phase_known, step_remaining_ms

    pushed = create_stats("m#0", "m", t=1.0, num_requests_running=3, step_elapsed_ms=4.0, step_ms=20.0, step_tokens=3)
    s = ReplicaView(pushed, age_s=0.002, stale=False, tokens_per_s=0.0).stats_at_read(time_scale=3.0)
    assert s.step_elapsed_ms == pytest.approx(10.0) and s.step_ms == 20.0 and s.step_tokens == 3
    assert s == dataclasses.replace(pushed, step_elapsed_ms=s.step_elapsed_ms)  # nothing else changes
    assert step_remaining_ms(s.step_elapsed_ms, s.step_ms) == pytest.approx(10.0)
    old = ReplicaView(pushed, age_s=0.1, stale=False, tokens_per_s=0.0).stats_at_read(time_scale=3.0)
    assert not step_phase_known(old.step_elapsed_ms, old.step_ms)
    assert step_remaining_ms(old.step_elapsed_ms, old.step_ms) == 10.0  # half a step, the mean wait


def test_the_driver_reads_its_own_fresh_replicas_off_the_typed_snapshot():
    from types import SimpleNamespace

    from twin_factories import create_stats

    from sysaware.engines.types import ReplicaView, TelemetrySnapshot

    def view(rid: str, model: str, stale: bool = False, **fields) -> ReplicaView:
        return ReplicaView(create_stats(rid, model, **fields), age_s=0.0, stale=stale, tokens_per_s=0.0)

    handles = {m: SimpleNamespace(app_name="app", deployment_name=m) for m in ("a", "b")}
    snapshot = TelemetrySnapshot(0.0, 0.5, {
        "app#a#1": view("app#a#1", "a", num_requests_waiting=2),
        "app#a#2": view("app#a#2", "a", stale=True, num_requests_waiting=50),  # dead: its last queue is not load
        "other#a#3": view("other#a#3", "a", num_requests_waiting=70),  # another application's replica
    })  # fmt: skip
    system = LiveDriver(handles, telemetry=None).to_system_snapshot(snapshot, now=5.0)
    assert [s.replica_id for s in system.replicas] == ["app#a#1"]
    assert (system.load("a").replicas, system.load("a").num_requests_waiting) == (1, 2)
    assert system.load("b").replicas == 0  # nothing pushed yet: idle, but known
