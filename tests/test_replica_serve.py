"""Replicas on Ray Serve: the router's scoring (pure), a replica built directly, then real deployments through
``deployment_for``: generation and streaming through a DeploymentHandle, routing stats reaching the router, a flood
spread over both replicas, and a killed replica marked stale and replaced."""

from __future__ import annotations

import asyncio
import random
import time
from functools import lru_cache

import pytest

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.engines.types import ChatMessage, FinishReason, GenerationRequest, ReplicaView
from sysaware.estimators.latency import make_replica_scorer
from sysaware.serving.router import LatencyModel, predicted_latency_ms, rank_by_predicted_latency
from sysaware.tasks.mbpp import load_tasks
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy, task_prompt

FAST_SHUTDOWN = {"graceful_shutdown_timeout_s": 1.0, "graceful_shutdown_wait_loop_s": 0.1}
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


@lru_cache(maxsize=1)
def two_model_pool() -> PoolConfig:
    """configs/pool_twin.yaml cut to its first two models, one replica each."""
    raw = load_pool(DEFAULT_POOL).model_dump()
    raw["models"] = [dict(m, replicas=1) for m in raw["models"][:2]]
    return PoolConfig.model_validate(raw)


def create_request(model: str, task_index: int, request_id: str, strategy: Strategy = Strategy.CONCISE, **overrides):
    task = load_tasks()[task_index]
    messages = (
        ChatMessage("system", ROLES["programmer"].system_prompt),
        ChatMessage("user", f"{task_prompt(task.text, task.test_list[0])}\n{STRATEGY_INSTRUCTIONS[strategy]}"),
    )
    return GenerationRequest(request_id=request_id, model=model, messages=messages, **overrides)


# ---- the router's scoring, pure ----------------------------------------------------------------------------------


def stats(waiting=0, running=0, kv=0.0, ema=0.0) -> dict[str, float]:
    return {"queue_waiting": waiting, "queue_running": running, "kv_utilization": kv, "ema_ttft_ms": ema}


def test_predicted_latency_counts_the_requests_ahead_the_batch_and_kv_pressure():
    model = LatencyModel(min_ttft_ms=20.0, running_penalty_ms=1.0, kv_pressure_start=0.8)
    # Idle and never measured: one TTFT at the floor.
    assert predicted_latency_ms({}, model=model) == 20.0
    # 50 ms EMA, 3 waiting + 1 in flight ahead, 10 running: 50 x (1 + 4) + 1 x 10.
    assert predicted_latency_ms(stats(waiting=3, running=10, ema=50.0), inflight=1, model=model) == 260.0
    # A 90 % full cache is half-way from 0.8 to full: x 1.5.
    assert predicted_latency_ms(stats(ema=50.0, kv=0.9), model=model) == pytest.approx(75.0)
    assert predicted_latency_ms(stats(ema=50.0, kv=1.0), model=model) == pytest.approx(100.0)
    # Monotone in every load signal.
    base = predicted_latency_ms(stats(waiting=1, running=1, ema=30.0), model=model)
    for more in (stats(waiting=2, running=1, ema=30.0), stats(waiting=1, running=2, ema=30.0), stats(1, 1, ema=40.0)):
        assert predicted_latency_ms(more, model=model) > base
    assert predicted_latency_ms(stats(waiting=1, running=1, ema=30.0), inflight=1, model=model) > base
    # Requests the snapshot still counts but that completed since leave the batch first, then the queue:
    # 2 departed from (waiting 1, running 1) leave nothing: one TTFT at 30 ms.
    assert predicted_latency_ms(stats(waiting=1, running=1, ema=30.0), departed=1, model=model) == 60.0
    assert predicted_latency_ms(stats(waiting=1, running=1, ema=30.0), departed=2, model=model) == 30.0
    assert predicted_latency_ms(stats(running=1, ema=30.0), departed=5, model=model) == 30.0


def test_ranking_prefers_the_emptier_replica_and_in_flight_requests_stop_a_burst_herding():
    rng = random.Random(0)
    busy, idle = ("busy", stats(waiting=2, ema=40.0), 0, 0), ("idle", stats(ema=40.0), 0, 0)
    assert rank_by_predicted_latency([busy, idle], rng=rng) == ["idle", "busy"]
    # A replica whose snapshot still shows a request that already completed is as good as idle, no worse.
    just_done, working = ("just-done", stats(running=1, ema=40.0), 0, 1), ("working", stats(running=1, ema=40.0), 0, 0)
    assert all(rank_by_predicted_latency([working, just_done], rng=rng)[0] == "just-done" for _ in range(10))
    # A burst of 8 calls on two identical snapshots: each call counts the ones already sent (as the router does).
    sent = {"a": 0, "b": 0}
    for _ in range(8):
        best = rank_by_predicted_latency([(k, stats(ema=30.0), n, 0) for k, n in sent.items()], rng=rng)[0]
        sent[best] += 1
    assert sent == {"a": 4, "b": 4}


def test_the_learned_scorer_ranks_a_busier_replica_later_and_auto_falls_back_for_unknown_models():
    model = "mistral-7b-instruct"  # in the shipped estimators' vocabulary
    scorer = make_replica_scorer("auto", model)
    assert scorer.name == "learned"
    idle = stats(ema=30.0) | {"step_ms": 10.0, "step_tokens": 8.0}
    busy = stats(waiting=40, running=256, kv=0.95, ema=900.0) | {"step_ms": 60.0, "step_tokens": 2048.0}
    ttft_idle, ttft_busy = scorer.ttft_ms([(idle, 0, 0), (busy, 0, 0)], 300)
    assert 0 < ttft_idle < ttft_busy
    assert rank_by_predicted_latency([("busy", busy, 0, 0), ("idle", idle, 0, 0)], scorer, random.Random(0), 300) == ["idle", "busy"]
    # Requests the router sent since the snapshot count as waiting: they raise the prediction.
    assert scorer.ttft_ms([(idle, 30, 0)], 300)[0] > ttft_idle
    assert make_replica_scorer("auto", "a-model-nobody-trained-on").name == "queueing"
    # Near idle it is not monotone (why the router defaults to the heuristic): an idle replica, which its training
    # data never showed, is priced no faster than one decoding a single request.
    one = stats(running=1, kv=0.01, ema=15.0) | {"step_ms": 7.0, "step_tokens": 1.0}
    empty = stats(ema=15.0) | {"step_ms": 0.0, "step_tokens": 0.0}
    ttft_empty, ttft_one = scorer.ttft_ms([(empty, 0, 0), (one, 0, 0)], 200)
    assert ttft_empty >= ttft_one - 0.5
    assert predicted_latency_ms(empty) < predicted_latency_ms(one)
    with pytest.raises(ValueError, match="do not know model"):
        make_replica_scorer("learned", "a-model-nobody-trained-on")


# ---- a replica outside Serve ---------------------------------------------------------------------------------------


def test_a_replica_built_directly_serves_and_reports_stable_routing_stats():
    from sysaware.serving.replica import LLMReplica

    pool = two_model_pool()
    model = pool.models[0].name
    replica = LLMReplica(pool.model_dump(mode="json"), model, time_scale=20.0, telemetry=False, replica_id="direct#0")

    async def main():
        result = await replica.generate(create_request(model, 0, "d-1", max_tokens=8))
        assert (result.replica_id, result.output_tokens, result.finish_reason) == ("direct#0", 8, FinishReason.LENGTH)
        chunks = [c async for c in replica.generate_stream(create_request(model, 0, "d-2", max_tokens=8))]
        assert "".join(c.text for c in chunks) == result.text and chunks[-1].finished
        first = await replica.record_routing_stats()
        assert set(first) == {
            "queue_waiting", "queue_running", "kv_utilization", "ema_ttft_ms", "predicted_wait_ms", "stats_time_s",
            "step_ms", "step_tokens",
        }
        assert first["queue_running"] == 0 and first["ema_ttft_ms"] > 0
        # Nothing changed: the same dict (Serve broadcasts only changes), stamped with when it last changed.
        assert await replica.record_routing_stats() == first
        replica.check_health()
        assert (await replica.stats()).requests_finished_total == 2

    asyncio.run(main())


# ---- on Serve --------------------------------------------------------------------------------------------------------


def start_serve() -> None:
    from ray import serve

    from conftest import free_port

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})  # ignored when Serve already runs


def wait_for(condition, timeout_s: float, what: str, period_s: float = 0.05):
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(period_s)


def routers_in_this_process(app: str) -> list:
    """The LatencyAwareRouters Serve built for this process's handles of ``app``. Serve builds them lazily and
    unpickles the class by value, so they are found by class name, not by isinstance."""
    import gc

    return [o for o in gc.get_objects() if type(o).__name__ == "LatencyAwareRouter" and o.app_name == app]


def fresh_replicas(telemetry, prefix: str) -> dict[str, ReplicaView]:
    import ray

    replicas = ray.get(telemetry.snapshot.remote()).replicas
    return {rid: view for rid, view in replicas.items() if rid.startswith(prefix) and not view.stale}


def test_two_replicas_serve_stream_and_are_routed_by_their_stats(ray_session):
    import ray
    from ray import serve

    from sysaware.serving.replica import deployment_for
    from sysaware.serving.telemetry import get_or_create_telemetry

    pool = two_model_pool()
    model = pool.models[0].model_copy(update={"replicas": 2})
    app = "replica-routing-test"
    start_serve()
    telemetry = get_or_create_telemetry()
    t0 = time.monotonic()
    handle = serve.run(
        # Real time, so that a stats round trip and a few short requests take a small part of the long one.
        deployment_for(model, **FAST_SHUTDOWN).bind(pool.model_dump(mode="json"), model.name, 1.0),
        name=app,
        route_prefix=None,
        logging_config=QUIET,
    )
    print(f"serve.run of 2 replicas: {time.monotonic() - t0:.1f} s")
    try:
        # Non-streaming and streaming through the handle: the same seed gives the same text.
        whole = handle.generate.remote(create_request(model.name, 1, "whole", max_tokens=24, seed=3)).result()
        assert whole.output_tokens == 24 and whole.replica_id.startswith(f"{app}#{model.name}#")
        streamed = create_request(model.name, 1, "streamed", max_tokens=24, seed=3)
        chunks = list(handle.options(stream=True).generate_stream.remote(streamed))
        assert "".join(c.text for c in chunks) == whole.text
        assert chunks[-1].finished and chunks[-1].result.output_tokens == 24

        # Occupy one replica from another process (whose own router we do not see): only the routing stats can
        # tell this process's router that that replica is busy. The request runs until the checks are done and
        # then is cancelled: work of a fixed length could end before the checks on a slow machine.
        @ray.remote(num_cpus=0)
        class Elsewhere:
            def start(self, request) -> None:
                from ray import serve as serve_elsewhere

                self.response = serve_elsewhere.get_deployment_handle(model.name, app_name=app).generate.remote(
                    request)

            def finish(self) -> str:
                """How the request ends when cancelled now: "finished" if it had already run to its end."""
                import ray as ray_elsewhere

                self.response.cancel()
                try:
                    self.response.result()
                    return "finished"
                except ray_elsewhere.exceptions.TaskCancelledError:  # Serve's RequestCancelledError is one
                    return "cancelled"

        prefix = f"{app}#{model.name}#"

        def idle_after_the_first_two() -> set[str]:
            views = fresh_replicas(telemetry, prefix)
            finished = sum(v.stats.requests_finished_total for v in views.values())
            idle = all(v.stats.num_requests_running == 0 for v in views.values())
            return set(views) if len(views) == 2 and finished == 2 and idle else set()

        both = wait_for(idle_after_the_first_two, 30.0, "telemetry to show both replicas idle")
        # ~20 s if left alone (3000 tokens at ~7 ms each in real time)
        long_request = create_request(model.name, 13, "long", strategy=Strategy.DEEPTHINK, max_tokens=3000,
                                      ignore_eos=True)
        elsewhere = Elsewhere.remote()
        ray.get(elsewhere.start.remote(long_request))
        busy = wait_for(
            lambda: [rid for rid, v in fresh_replicas(telemetry, prefix).items() if v.stats.num_requests_running == 1],
            30.0,  # returns as soon as it starts; a loaded machine can take seconds to schedule the remote caller
            "the long request to start",
        )[0]
        routers = routers_in_this_process(app)
        assert len(routers) == 1
        busy_uid = busy.rsplit("#", 1)[1]
        wait_for(
            lambda: routers[0].routing_stats_seen().get(busy_uid, {}).get("queue_running") == 1,
            30.0,
            "record_routing_stats to reach the router",
        )
        short = []
        for i in range(5):
            request = create_request(model.name, 20 + i, f"short-{i}", max_tokens=2)
            short.append(handle.generate.remote(request).result())
            time.sleep(0.05)  # the router learns of a completion a moment after the caller does
        assert {r.replica_id for r in short} == both - {busy}
        assert ray.get(elsewhere.finish.remote()) == "cancelled", "the long request ended before the checks did"

        def both_idle() -> bool:
            views = fresh_replicas(telemetry, prefix).values()
            return len(views) == 2 and all(v.stats.num_requests_running == 0 for v in views)

        wait_for(both_idle, 30.0, "the cancelled request to leave its replica")

        # A flood from this process spreads over both replicas.
        requests = [create_request(model.name, 30 + i, f"flood-{i}", max_tokens=8) for i in range(16)]
        flood = [handle.generate.remote(r) for r in requests]
        results = [r.result() for r in flood]
        assert len({r.replica_id for r in results}) == 2
        assert all(r.output_tokens == 8 for r in results)
    finally:
        serve.delete(app)


def test_a_killed_replica_is_marked_stale_and_serve_replaces_it(ray_session):
    import ray
    from ray import serve

    from sysaware.serving.replica import deployment_for
    from sysaware.serving.telemetry import get_or_create_telemetry

    pool = two_model_pool()
    model = pool.models[1]
    app = "replica-kill-test"
    start_serve()
    telemetry = get_or_create_telemetry()
    handle = serve.run(
        deployment_for(model, health_check_period_s=0.5, **FAST_SHUTDOWN).bind(
            pool.model_dump(mode="json"), model.name, 20.0
        ),
        name=app,
        route_prefix=None,
        logging_config=QUIET,
    )
    prefix = f"{app}#{model.name}#"
    try:
        [victim] = wait_for(lambda: fresh_replicas(telemetry, prefix), 30.0, "the replica's first push")
        # The replica id names its actor: SERVE_REPLICA::app#deployment#unique_id.
        t_kill = time.monotonic()
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{victim}", namespace="serve"), no_restart=True)

        def victim_stale():
            view = ray.get(telemetry.snapshot.remote()).replicas.get(victim)
            return view is not None and view.stale

        wait_for(victim_stale, 30.0, "telemetry to mark the killed replica stale")
        print(f"stale after {time.monotonic() - t_kill:.2f} s")
        [replacement] = wait_for(lambda: fresh_replicas(telemetry, prefix), 60.0, "a replacement replica")
        print(f"replacement pushing after {time.monotonic() - t_kill:.2f} s")
        assert replacement != victim
        result = handle.generate.remote(create_request(model.name, 2, "after-kill", max_tokens=8)).result()
        assert result.replica_id == replacement and result.output_tokens == 8
        replicas = ray.get(telemetry.snapshot.remote()).replicas
        mine = {rid: view.stale for rid, view in replicas.items() if rid.startswith(prefix)}
        assert mine == {victim: True, replacement: False}
    finally:
        serve.delete(app)
        for rid in ray.get(telemetry.snapshot.remote()).replicas:
            if rid.startswith(prefix):
                ray.get(telemetry.forget.remote(rid))  # a killed replica never leaves by itself


def test_a_graceful_stop_leaves_the_telemetry_snapshot_and_closes_the_engine_before_returning():
    # Serve awaits what __del__ returns; the garbage collector drops it. Either way forget must reach the actor and
    # the engine be closed; a second call (Serve's, then the garbage collector's) does nothing.
    from sysaware.serving.replica import LLMReplica

    class Telemetry:  # stands in for the actor handle: forget.remote(...) is awaitable
        def __init__(self):
            self.forgotten = []
            outer = self

            class Forget:
                async def remote(self, replica_id):
                    outer.forgotten.append(replica_id)
                    return True

            self.forget = Forget()

    pool = two_model_pool()
    model = pool.models[0].name
    replica = LLMReplica(pool.model_dump(mode="json"), model, time_scale=20.0, telemetry=False, replica_id="direct#1")
    closed = []
    replica.engine.close = lambda: asyncio.sleep(0, closed.append(True))

    async def main():
        replica._telemetry = telemetry = Telemetry()
        leaving = replica.__del__()
        assert leaving is not None
        for _ in range(100):  # the garbage collector's path: nobody awaits what __del__ returned, the work runs anyway
            if closed:
                break
            await asyncio.sleep(0)
        assert telemetry.forgotten == ["direct#1"] and closed == [True]
        await leaving  # Serve's path: awaiting it returns once the work is done
        assert replica.__del__() is None

    asyncio.run(main())
