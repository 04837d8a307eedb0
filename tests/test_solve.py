"""POST /v1/solve through real HTTP on a real local Ray Serve pool (the twin): the orchestrator deployment runs an
MBPP test-split problem end to end (planner, executor, live driver, sandboxed grading), streams its steps, refuses
bad input and SLOs it cannot meet, survives a model replica killed mid-solve, and fails fast when the orchestrator
itself dies."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
import requests
from conftest import free_port

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.serving.app import build_app, deploy, select_models
from sysaware.serving.ingress_settings import IngressSettings
from sysaware.orchestration.topology import default_topology
from sysaware.serving.orchestrator import SolveSettings
from sysaware.tasks.mbpp import get_task

APP = "test-solve"
TIME_SCALE = 10.0  # engine seconds per wall second
TASK = get_task(11)
STAR = default_topology("star")  # three workers in parallel, then an aggregator  # an MBPP test-split task with recorded answers
SLO_S = 120.0  # engine s: a three-step chain takes ~5-20
MAX_BODY = 64_000


def create_pool() -> PoolConfig:
    """The default pool's first two models; the first (the cheap one 'fixed' runs on) with two replicas."""
    base = load_pool(DEFAULT_POOL)
    raw = select_models(base, [m.name for m in base.models[:2]], replicas=1).model_dump(mode="json")
    raw["models"][0]["replicas"] = 2
    return PoolConfig.model_validate(raw)


@pytest.fixture(scope="module")
def live(ray_session):
    from ray import serve

    pool = create_pool()
    # A star (parallel workers: concurrent calls from one solve); admission 'refuse', so an SLO the star misses but
    # a single agent meets is a 503.
    solve = SolveSettings(policy="fixed", planner="fixed", topology="star", admission="refuse")
    app = build_app(pool, TIME_SCALE, settings=IngressSettings(max_body_bytes=MAX_BODY), solve=solve,
                    health_check_period_s=0.5)
    url = deploy(app, port=free_port(), name=APP)
    yield SimpleNamespace(url=url, pool=pool)
    serve.delete(APP)


def body(**extra) -> dict:
    return {"problem": TASK.text, "tests": list(TASK.test_list), "slo_s": SLO_S, **extra}


def post(live, payload, **kw) -> requests.Response:
    return requests.post(f"{live.url}/solve", json=payload, timeout=120, **kw)


def read_events(response: requests.Response):
    event = None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["event"] == event
            yield data


def test_a_solve_returns_code_verdict_and_trace(live):
    r = post(live, body())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mbpp_task_id"] == TASK.task_id and out["topology"] == "star" and out["admission"] == "admit"
    assert out["code"] and f"def {TASK.entry_point}" in out["code"]
    assert isinstance(out["passed"], bool) and out["grade_status"]
    assert out["e2e_s"] > 0 and out["slo_met"] == (out["e2e_s"] <= SLO_S) and out["slo_s"] == SLO_S
    trace = out["trace"]
    assert sorted(s["slot_id"] for s in trace) == sorted(s.slot_id for s in STAR.slots)
    assert trace[-1]["slot_id"] == "aggregate" and trace[-1]["role"] == "decision_maker"
    for s in trace:
        assert s["role"] == STAR.slot(s["slot_id"]).role_id
        assert s["model"] == live.pool.models[0].name and s["strategy"] == "concise"
        assert s["predicted_latency_s"] > 0 and s["predicted_ttft_s"] > 0 and s["latency_s"] > 0
        assert 0 < s["ttft_s"] <= s["latency_s"] and s["output_tokens"] > 0
        assert s["remaining_budget_s"] <= SLO_S
    assert trace[-1]["remaining_budget_s"] < min(s["remaining_budget_s"] for s in trace[:-1])


def test_streamed_steps_arrive_in_step_order_then_the_result(live):
    # Parallel workers finish in any order; a step's event always comes after those of the steps it read.
    with requests.post(f"{live.url}/solve", json=body(stream=True), stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(read_events(r))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "admission" and kinds[-1] == "final" and set(kinds[1:-1]) == {"step"}
    order = [e["slot_id"] for e in events[1:-1]]
    assert sorted(order) == sorted(s.slot_id for s in STAR.slots)
    for i, slot_id in enumerate(order):
        assert set(STAR.slot(slot_id).inputs) <= set(order[:i])
    assert [e["slot_id"] for e in events[1:-1]] == [s["slot_id"] for s in events[-1]["trace"]]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"tests": ["assert True"]}, "problem"),
        (body(slo_s=-1), "slo_s"),
        (body(slo_s="soon"), "slo_s"),
        (body(tests=["print(1)"]), "tests"),
        (body(entry_point="not an identifier"), "entry_point"),
        (body(colour="blue"), "colour"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(live, payload, param):
    r = post(live, payload)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_an_unknown_policy_is_a_400_naming_it(live):
    r = post(live, body(policy="clairvoyant"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "policy"
    assert "clairvoyant" in r.json()["error"]["message"]


def test_an_oversized_body_is_refused_before_it_is_read(live):
    r = post(live, body(problem="x" * (MAX_BODY + 1)))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_admission_refuses_an_slo_no_plan_can_meet_with_422(live):
    r = post(live, body(slo_s=0.01))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "slo_unattainable" and r.json()["error"]["param"] == "slo_s"


def test_admission_refuses_an_slo_only_a_faster_plan_meets_with_503_and_retry_after(live):
    # Between a single agent's idle latency and the star's: mode 'refuse' does not fall back to the faster plan.
    r = post(live, body(slo_s=1.0))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "slo_unattainable_under_load" and int(r.headers["Retry-After"]) >= 1


def test_a_model_replica_killed_during_a_solve_costs_a_retry_not_the_solve(live):
    import ray

    from sysaware.serving.telemetry import get_or_create_telemetry

    model = live.pool.models[0].name
    prefix = f"{APP}#{model}#"
    telemetry = get_or_create_telemetry()
    replicas = [rid for rid, v in ray.get(telemetry.snapshot.remote()).replicas.items()
                if rid.startswith(prefix) and not v.stale]
    assert len(replicas) == 2
    with requests.post(f"{live.url}/solve", json=body(stream=True, seed=1), stream=True, timeout=120) as r:
        assert r.status_code == 200
        events = read_events(r)
        assert next(events)["event"] == "admission"
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{replicas[0]}", namespace="serve"), no_restart=True)
        rest = list(events)
    final = rest[-1]
    assert final["event"] == "final", rest
    assert final["code"] and isinstance(final["passed"], bool)
    print(f"retries after the kill: {final['retries']}")


def test_an_orchestrator_that_dies_gives_its_client_an_error_not_a_hang(live):
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if a["name"].startswith(f"SERVE_REPLICA::{APP}#orchestrator#")]
    assert len(actors) == 1
    result = {}

    def client():
        t0 = time.monotonic()
        result["response"] = post(live, body(seed=2))
        result["wall_s"] = time.monotonic() - t0

    from sysaware.serving.telemetry import get_or_create_telemetry

    telemetry = get_or_create_telemetry()
    models = {m.name for m in live.pool.models}

    def calls_seen() -> tuple[int, int]:
        """(in flight, finished) over this app's model replicas: only the orchestrator calls them."""
        views = [v for rid, v in ray.get(telemetry.snapshot.remote()).replicas.items()
                 if rid.startswith(f"{APP}#") and v.model in models]
        return (sum(v.stats.num_requests_running + v.stats.num_requests_waiting for v in views),
                sum(v.stats.requests_finished_total for v in views))

    finished_before = calls_seen()[1]
    thread = threading.Thread(target=client)
    thread.start()
    # The kill must land while the solve is under way (its calls are on the replicas), however long the POST takes
    # to get there.
    deadline = time.monotonic() + 60
    while (seen := calls_seen())[0] == 0 and seen[1] == finished_before:
        assert time.monotonic() < deadline, "the solve never reached the model replicas"
        time.sleep(0.02)
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
    thread.join(60)
    assert not thread.is_alive()
    r = result["response"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "orchestrator_failed", r.text
