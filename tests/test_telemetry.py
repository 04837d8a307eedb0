"""Telemetry: the pure state (aggregation, staleness, bounded history, tokens/s) on a fake clock, then the named
actor in a real local Ray receiving pushes from a replica deployed with serve.run."""

from __future__ import annotations

import json
import time

import pytest

from sysaware.engines.types import ReplicaStats, ReplicaView, TelemetrySnapshot
from sysaware.serving.telemetry import TelemetryState, snapshot_json
from twin_factories import create_stats


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def create_state(**overrides) -> tuple[TelemetryState, FakeClock]:
    clock = FakeClock()
    settings = {"stale_after_s": 0.5, "history_len": 5, "rate_window_s": 1.0} | overrides
    return TelemetryState(clock=clock, wall_clock=clock, **settings), clock


def test_snapshot_aggregates_each_model_over_its_replicas():
    state, _ = create_state()
    load = ("num_requests_waiting", "num_requests_running", "kv_cache_usage_perc", "ema_ttft_ms")
    pushed = create_stats("a#1", "a", **dict(zip(load, (1, 7, 0.4, 60.0))))
    state.push(create_stats("a#0", "a", **dict(zip(load, (3, 5, 0.2, 40.0)))))
    state.push(pushed)
    state.push(create_stats("b#0", "b", num_preemptions_total=2))
    typed = state.snapshot()
    assert list(typed.replicas) == ["a#0", "a#1", "b#0"]
    assert typed.replicas["a#1"] == ReplicaView(pushed, age_s=0.0, stale=False, tokens_per_s=0.0)  # pushed just now
    snap = snapshot_json(typed)
    json.dumps(snap)  # what the ingress serves as /v1/telemetry
    assert set(snap["replicas"]) == {"a#0", "a#1", "b#0"}
    assert snap["replicas"]["a#1"]["queue_running"] == 7 and snap["replicas"]["a#1"]["age_s"] == 0.0
    a = snap["models"]["a"]
    # Sums for queues (3 + 1, 5 + 7), means for utilisation ((0.2 + 0.4) / 2) and TTFT ((40 + 60) / 2).
    assert (a["replicas"], a["queue_waiting"], a["queue_running"]) == (2, 4, 12)
    assert a["kv_utilization"] == pytest.approx(0.3)
    assert a["ema_ttft_ms"] == pytest.approx(50.0)
    assert snap["models"]["b"]["preemptions"] == 2 and snap["models"]["b"]["queue_waiting"] == 0


def test_a_silent_replica_turns_stale_and_leaves_its_models_aggregates():
    state, clock = create_state(stale_after_s=0.5, forget_after_s=10.0)
    state.push(create_stats("a#0", "a", num_requests_waiting=4))
    state.push(create_stats("a#1", "a", num_requests_waiting=1))
    clock.t += 0.4
    state.push(create_stats("a#1", "a", t=0.4, num_requests_waiting=2))
    assert state.stale_replicas() == []  # 0.4 s of silence < 0.5 s
    clock.t += 0.2
    typed = state.snapshot()
    # a#0 has been silent 0.6 s, a#1 0.2 s.
    assert typed.replicas["a#0"].stale and typed.replicas["a#0"].age_s == pytest.approx(0.6)
    assert not typed.replicas["a#1"].stale
    snap = snapshot_json(typed)
    assert (snap["models"]["a"]["replicas"], snap["models"]["a"]["stale_replicas"]) == (1, 1)
    assert snap["models"]["a"]["queue_waiting"] == 2  # the dead replica's last queue is not load
    clock.t += 10.0
    assert state.snapshot().replicas == {}  # silent past forget_after_s: gone
    state.push(create_stats("a#2", "a"))
    assert state.forget("a#2") and not state.forget("a#2")
    assert snapshot_json(state.snapshot())["models"] == {}


def test_a_push_that_arrives_after_its_replica_left_does_not_bring_it_back():
    # Ray does not order an async actor's calls from one caller: the push a replica sent just before its goodbye
    # can run after it. Seen in CI: the deleted replica stayed in the snapshot until forget_after_s.
    state, clock = create_state(stale_after_s=0.5, late_push_window_s=30.0)
    state.push(create_stats("app#a#1", "a"))
    assert state.forget("app#a#1")
    clock.t += 0.1
    assert state.push(create_stats("app#a#1", "a", t=0.1)) is None
    assert "app#a#1" not in state.snapshot().replicas
    clock.t += 31.0  # an id seen again long after it left is a new replica under that name
    assert state.push(create_stats("app#a#1", "a", t=0.0)) is not None
    assert "app#a#1" in state.snapshot().replicas


def test_a_reader_keeps_its_own_deployments_replicas():
    # The actor is shared by every application on the cluster; Serve's replica ids are app#deployment#unique.
    state, clock = create_state(stale_after_s=0.5)
    state.push(create_stats("app#a#1", "a"))
    clock.t += 1.0
    for rid in ("app#a#2", "app#ab#3", "other#a#4"):
        state.push(create_stats(rid, rid.split("#")[1]))
    snap = state.snapshot()
    assert [v.replica_id for v in snap.deployment("app", "a")] == ["app#a#1", "app#a#2"]
    assert [v.replica_id for v in snap.deployment("app", "a", fresh_only=True)] == ["app#a#2"]  # a#1 went silent


def test_history_is_bounded_per_replica_and_merges_by_model():
    state, clock = create_state(history_len=5)
    for i in range(8):
        state.push(create_stats("a#0", "a", t=0.1 * i, num_requests_waiting=i))
        clock.t += 0.05
        state.push(create_stats("a#1", "a", t=0.1 * i, num_requests_waiting=100 + i))
        clock.t += 0.05
    own = state.history("a#0", last_n=100)
    assert [r["queue_waiting"] for r in own] == [3, 4, 5, 6, 7]  # 8 pushes, 5 kept
    assert [r["queue_waiting"] for r in state.history("a#0", last_n=2)] == [6, 7]
    merged = state.history("a", last_n=4)
    assert [r["queue_waiting"] for r in merged] == [6, 106, 7, 107]  # time order across replicas
    assert {r["replica_id"] for r in merged} == {"a#0", "a#1"}
    assert state.history("nobody") == []


def test_tokens_per_s_comes_from_counter_deltas_over_the_engine_clock():
    state, clock = create_state(rate_window_s=1.0, history_len=100)
    state.push(create_stats(t=10.0, generation_tokens_total=0))
    # 0.1 s wall apart but 0.2 s of engine time each (a twin at time_scale 2): the rate is per engine second.
    for i in range(1, 6):
        clock.t += 0.1
        delta = state.push(create_stats(t=10.0 + 0.2 * i, generation_tokens_total=300 * i))
    assert delta.generation_tokens == 300 and delta.interval_s == pytest.approx(0.1)
    assert delta.tokens_per_s == pytest.approx(1500.0)  # 1500 tokens over 1.0 engine s
    assert state.snapshot().replicas["m#0"].tokens_per_s == pytest.approx(1500.0)
    # The window slides: after 1.2 s wall without new tokens the rate is 0.
    for i in range(6, 18):
        clock.t += 0.1
        state.push(create_stats(t=10.0 + 0.2 * i, generation_tokens_total=1500))
    assert state.snapshot().replicas["m#0"].tokens_per_s == 0.0
    # A replica that restarted under the same id (engine clock back to 0) starts its counters again.
    delta = state.push(create_stats(t=0.05, generation_tokens_total=20))
    assert (delta.generation_tokens, delta.interval_s, delta.tokens_per_s) == (20, None, 0.0)


# ---- the actor in Ray ---------------------------------------------------------------------------------------------


def wait_for_exported(replica_id: str, sample_name: str, expected: float, timeout_s: float = 15.0) -> float:
    """Poll the node's metrics endpoint until ``sample_name`` for ``replica_id`` reads ``expected`` (Ray exports
    every second, so earlier scrapes may show an older value); returns the last value seen."""
    import urllib.request

    import ray
    from prometheus_client.parser import text_string_to_metric_families

    port = ray.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + timeout_s
    value = None
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == sample_name and sample.labels.get("replica") == replica_id:
                    value = sample.value
    return value


def test_the_telemetry_actor_lists_a_replica_deployed_with_serve(ray_session):
    import ray
    from ray import serve

    from conftest import free_port
    from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
    from sysaware.engines.types import ChatMessage, GenerationRequest
    from sysaware.serving.replica import deployment_for
    from sysaware.serving.telemetry import TELEMETRY_ACTOR_NAME, TELEMETRY_NAMESPACE, get_or_create_telemetry

    raw = load_pool(DEFAULT_POOL).model_dump()
    raw["models"] = [dict(m, replicas=1) for m in raw["models"][:2]]
    pool = PoolConfig.model_validate(raw)
    model = pool.models[1]
    app = "telemetry-test"

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})  # ignored if Serve already runs
    telemetry = get_or_create_telemetry()
    assert ray.get_actor(TELEMETRY_ACTOR_NAME, namespace=TELEMETRY_NAMESPACE)._actor_id == telemetry._actor_id
    handle = serve.run(
        deployment_for(model, graceful_shutdown_timeout_s=10.0, graceful_shutdown_wait_loop_s=0.1).bind(
            pool.model_dump(mode="json"), model.name, 20.0
        ),
        name=app,
        route_prefix=None,
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    try:
        prefix = f"{app}#{model.name}#"
        deadline = time.monotonic() + 10.0
        while True:
            snapshot = ray.get(telemetry.snapshot.remote())
            mine = snapshot.deployment(app, model.name)
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # Typed records all the way from the replica's push through the actor: fields, not keys.
        assert isinstance(snapshot, TelemetrySnapshot) and len(mine) == 1
        [view] = mine
        assert isinstance(view, ReplicaView) and isinstance(view.stats, ReplicaStats)
        replica_id = view.replica_id
        assert replica_id.startswith(prefix) and snapshot.replicas[replica_id] == view
        # Pushed within the last stale_after_s: the replica is live in the snapshot.
        assert not view.stale and view.age_s < snapshot.stale_after_s and view.model == model.name
        assert view.stats.num_gpu_blocks > 0 and view.stats.block_size > 0
        assert snapshot_json(snapshot)["replicas"][replica_id]["model"] == model.name

        request = GenerationRequest("t-1", model.name, (ChatMessage("user", "Write a function that adds two ints."),))
        result = handle.generate.remote(request).result()
        assert result.replica_id == replica_id and result.output_tokens > 0
        def counted_tokens() -> int:
            return ray.get(telemetry.snapshot.remote()).replicas[replica_id].stats.generation_tokens_total

        deadline = time.monotonic() + 5.0
        while counted_tokens() < result.output_tokens:
            assert time.monotonic() < deadline, "the replica's counters never reached the telemetry actor"
            time.sleep(0.05)
        assert ray.get(telemetry.history.remote(replica_id, 5))[-1]["generation_tokens_total"] == result.output_tokens
        # The same state as Ray metrics on the node's Prometheus endpoint (exported every second in tests).
        tokens = wait_for_exported(replica_id, "ray_sysaware_generation_tokens_total", result.output_tokens)
        assert tokens == result.output_tokens
    finally:
        serve.delete(app)
    # A graceful stop leaves the snapshot instead of turning stale. Serve kills a replica whose stop outlasts
    # graceful_shutdown_timeout_s: at 1 s, on a starved machine, it was killed before its goodbye reached the actor
    # (the snapshot then kept it, stale, last pushed just before the delete); the stop itself ends as soon as it is done.
    deadline = time.monotonic() + 15.0
    while (left := ray.get(telemetry.snapshot.remote()).replicas.get(replica_id)) is not None:
        assert time.monotonic() < deadline, f"a deleted replica stayed in the telemetry snapshot: {left}"
        time.sleep(0.05)
