"""One replica of one model of the pool: an engine, its stats pushed to telemetry, its routing stats to Serve.

``LLMReplica`` is a plain class (the builder wraps it with ``serve.deployment``; tests may build it directly):
it gets the pool and a model name, builds its engine through an injectable factory (``build_engine`` picks the twin
or, later, vLLM) and never looks at which engine it has. ``deployment_for(model)`` gives the Serve deployment with
the pool's replica count, the latency-aware router and fast health checks; the ingress binds it as
``deployment_for(m).bind(pool_dict, m.name, time_scale)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sysaware.config import ModelDeployment, PoolConfig
from sysaware.engines.types import GenerationRequest, GenerationResult, ReplicaStats
from sysaware.engines.registry import build_engine
from sysaware.engines.types import Engine, StreamChunk, coalesce
from sysaware.serving.router import LatencyAwareRouter, predicted_latency_ms

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ModelDeployment, PoolConfig, str, float], Engine]

ROUTING_STATS_PERIOD_S = 0.1  # how often Serve's controller polls record_routing_stats

# Ray Serve 2.60 runs a replica's user code on a thread of its own and a handle's router on a loop of its own
# (ray/serve/_private/constants.py): every request and every streamed chunk then crosses threads twice. Our user
# code is async and never blocks its loop (counting long prompts goes to a worker thread), so it runs on Serve's own
# loop instead. Measured (benchmarks/bench_serving_overhead.py, loaded 2-core host): the idle client-minus-engine
# TTFT median went 30.1 -> 28.5 ms, within noise (the hop the setting targets, handle, did not move).
SAME_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
# Ray Serve 2.60's gRPC transport: Serve's HTTP proxy and every deployment handle reach replicas over the replicas'
# inter-deployment gRPC servers, arguments and results by value, instead of as Ray actor tasks through the object
# store. The proxy reads it when it starts, so it must be in the cluster's environment (``sysaware serve`` sets it
# before starting its Ray); the deployments get it in their runtime_env.
GRPC_ENV = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}


# Ray Serve 2.60's direct ingress: the ingress replica serves HTTP itself, on a port the controller allocates from
# a range, so a request skips Serve's proxy: the proxy's hop to the ingress and the ingress's call back to the proxy
# for the body (the ingress_body hop). Measured the biggest cut of the serving overhead
# (benchmarks/bench_serving_overhead.py). The controller and the ingress read it when they start: it must be in the
# cluster's environment (``sysaware serve --direct-ingress`` sets it, with the range one port wide, for the Ray it
# starts). The proxy still runs (on the head node), on another port.
DIRECT_INGRESS_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}


def direct_ingress_env(port: int) -> dict[str, str]:
    """``DIRECT_INGRESS_ENV`` with the ingress's HTTP port range reduced to ``port`` (one ingress replica; its gRPC
    server stays off unless Serve's gRPC options name servicers)."""
    if not 0 < port < 65535:
        raise ValueError(f"the direct-ingress port must be in 1-65534, got {port}")
    return {
        **DIRECT_INGRESS_ENV,
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive (node_port_manager: range(min, max))
    }


# How Serve moves requests between its proxy and the deployments: "actor" (Ray actor tasks, Serve's default) or
# "grpc" (GRPC_ENV).
TRANSPORTS: dict[str, dict[str, str]] = {"actor": {}, "grpc": GRPC_ENV}


def transport_env(transport: str) -> dict[str, str]:
    """The environment that selects Serve's ``transport``; ValueError naming the setting for an unknown one."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, got {transport!r}")
    return dict(TRANSPORTS[transport])


def actor_options(same_loop: bool = False, transport: str = "actor") -> dict[str, Any]:
    """Serve actor options of the pool's deployments (ingress and replicas): no CPU reserved (the twin's compute
    is simulated) and, with ``same_loop``, ``SAME_LOOP_ENV``; ``transport``'s environment (``TRANSPORTS``: the
    deployments' handles then call replicas over it)."""
    options: dict[str, Any] = {"num_cpus": 0}
    env = {**(SAME_LOOP_ENV if same_loop else {}), **transport_env(transport)}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options


def serve_replica_id() -> str | None:
    """``app#deployment#unique_id`` inside a Serve replica (its actor is named ``SERVE_REPLICA::`` + that), else
    None."""
    try:
        from ray.serve.context import _get_internal_replica_context
    except ImportError:
        return None
    context = _get_internal_replica_context()
    if context is None:
        return None
    rid = context.replica_id
    return f"{rid.deployment_id.app_name}#{rid.deployment_id.name}#{rid.unique_id}"


class LLMReplica:
    """Hosts one engine; Serve calls ``generate`` / ``generate_stream`` through a DeploymentHandle."""

    def __init__(
        self,
        pool: PoolConfig | dict,
        model_name: str,
        time_scale: float = 1.0,
        telemetry: bool = True,
        push_period_s: float = 0.1,
        engine_factory: EngineFactory | None = None,
        replica_id: str | None = None,
    ) -> None:
        self.pool = pool if isinstance(pool, PoolConfig) else PoolConfig.model_validate(pool)
        self.model = self.pool.model(model_name)
        self.replica_id = serve_replica_id() or replica_id or f"{model_name}#local"
        self.time_scale = time_scale
        factory = engine_factory or build_engine
        self.engine: Engine = factory(self.model, self.pool, self.replica_id, time_scale)
        self.telemetry_enabled = telemetry
        self.push_period_s = push_period_s
        self.pushes_sent = 0  # pushes the telemetry actor acknowledged
        self._telemetry: Any = None  # the actor handle, resolved lazily and again after a failure
        self._push_task: asyncio.Task | None = None
        self._routing_content: tuple | None = None
        self._routing_since_s = 0.0  # wall time when the routing stats last changed
        self._closed = False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # built outside an event loop (a unit test): background work starts with the first call
        self._start_background()  # Serve runs a sync __init__ on the replica's event loop

    # ---- generation ---------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self._start_background()
        return await self.engine.generate(request)

    async def generate_stream(self, request: GenerationRequest, stream_interval: int = 1) -> AsyncIterator[StreamChunk]:
        """Chunks for ``handle.options(stream=True).generate_stream.remote(request, stream_interval)``: one per
        engine step, or per ``stream_interval`` tokens (vLLM's setting; coalesced here, before the hop to the
        ingress); the last one carries the result. The first chunk gains the replica's wall stamps (serving
        overhead). A caller that goes away cancels this generator and the engine aborts the request."""
        replica_in = time.time()
        self._start_background()
        first = True
        async for chunk in coalesce(self.engine.generate_stream(request), stream_interval):
            if first:
                first = False
                stamps = (("replica_in", replica_in), *chunk.stamps_s, ("replica_out", time.time()))
                chunk = dataclasses.replace(chunk, stamps_s=stamps)
            yield chunk

    # ---- state out ----------------------------------------------------------------------------------------------

    async def stats(self) -> ReplicaStats:
        return await self.engine.stats()

    async def record_routing_stats(self) -> dict[str, float]:
        """What the request router ranks replicas by (Serve's controller polls it every ~0.1 s).

        ``stats_time_s`` is the wall time when the content last changed, not when it was polled: the dict stays
        identical while nothing changes (so Serve broadcasts nothing), and the router counts requests it sent
        after that time as not yet in the snapshot.
        """
        s = await self.engine.stats()
        content = (
            float(s.num_requests_waiting),
            float(s.num_requests_running),
            round(s.kv_cache_usage_perc, 3),
            round(s.ema_ttft_ms, 1),
            # The step, coarsely (the learned scorer reads it; finer values would change the dict every step and
            # make Serve broadcast it every poll): ms, and tokens to 32.
            float(round(s.step_ms)),
            float(32 * round(s.step_tokens / 32)),
        )
        if content != self._routing_content:
            self._routing_content = content
            self._routing_since_s = time.time()
        waiting, running, kv, ema, step_ms, step_tokens = content
        stats = {"queue_waiting": waiting, "queue_running": running, "kv_utilization": kv, "ema_ttft_ms": ema,
                 "step_ms": step_ms, "step_tokens": step_tokens}
        stats["predicted_wait_ms"] = round(predicted_latency_ms(stats), 1)
        stats["stats_time_s"] = self._routing_since_s
        return stats

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising gets the replica replaced."""
        self.engine.check_health()
        if self._push_task is not None and self._push_task.done() and not self._push_task.cancelled():
            raise RuntimeError(f"telemetry push loop of {self.replica_id} stopped: {self._push_task.exception()!r}")

    # ---- telemetry ----------------------------------------------------------------------------------------------

    def _start_background(self) -> None:
        if self.telemetry_enabled and self._push_task is None and not self._closed:
            self._push_task = asyncio.get_running_loop().create_task(self._push_forever(), name="telemetry-push")

    async def _push_forever(self) -> None:
        """Push stats every push_period_s. One push in flight at most; a failed actor is looked up again (it may
        be restarting, or not created yet); generation never waits on any of this."""
        from ray.exceptions import RayActorError, RayError

        from sysaware.serving.telemetry import get_or_create_telemetry

        next_tick = time.monotonic()
        failures = 0
        while True:
            try:
                if self._telemetry is None:
                    self._telemetry = await asyncio.to_thread(get_or_create_telemetry)
                stats = await self.engine.stats()
                await asyncio.wait_for(self._telemetry.push.remote(stats), timeout=max(1.0, 10 * self.push_period_s))
                self.pushes_sent += 1
                failures = 0
            except asyncio.TimeoutError:
                pass  # the actor is slow; keep the handle and try again next tick
            except (RayActorError, RayError, ValueError) as e:
                failures += 1
                self._telemetry = None
                if failures in (1, 10) or failures % 100 == 0:
                    logger.warning("%s: telemetry push failed (%d in a row): %r", self.replica_id, failures, e)
            next_tick += self.push_period_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # fell behind (slow actor, busy loop): skip the missed ticks instead of bursting
                next_tick = time.monotonic()
                delay = 0.0
            await asyncio.sleep(delay)

    def __del__(self):
        """Graceful stop (Serve calls it on scale-down or delete): stop pushing and leave the snapshot, so only a
        replica that died is ever reported stale.

        Inside a running loop the work starts at once as a task, and the returned coroutine waits for it: Serve
        (Ray 2.60, ``_call_func_or_gen``) awaits a coroutine that ``__del__`` returns, so the actor exits only after
        ``forget`` arrived (sent fire-and-forget, it could still be unsent when the process went, leaving the replica
        in the snapshot until it turned stale). Called by the garbage collector instead, the task runs all the same.
        """
        if self._closed:
            return None
        self._closed = True
        task = self._push_task
        if task is not None and not task.done():
            task.cancel()
        try:
            leaving = asyncio.get_running_loop().create_task(self._leave())
        except RuntimeError:  # garbage collection outside a loop (interpreter exit): nothing left to tidy
            return None
        return _wait_for(leaving)

    async def _leave(self) -> None:
        """Leave the telemetry snapshot (waited for, bounded) and close the engine."""
        if self._telemetry is not None or self._push_task is not None:  # it may be in the snapshot (even if a failed
            # push dropped the handle)
            try:
                if self._telemetry is None:
                    from sysaware.serving.telemetry import existing_telemetry

                    self._telemetry = await asyncio.to_thread(existing_telemetry)
                await asyncio.wait_for(self._telemetry.forget.remote(self.replica_id), timeout=2.0)
            except Exception as e:  # the actor is gone or slow: the replica turns stale and is forgotten later
                logger.warning("%s: could not leave the telemetry snapshot: %r", self.replica_id, e)
        close = getattr(self.engine, "close", None)
        if close is not None:
            await close()


async def _wait_for(task: asyncio.Task) -> None:
    await asyncio.shield(task)


def deployment_for(
    model: ModelDeployment,
    *,
    max_ongoing_requests: int | None = None,
    health_check_period_s: float = 1.0,
    router_kwargs: dict[str, Any] | None = None,
    same_loop: bool = False,
    transport: str = "actor",
    **options: Any,
):
    """The Serve deployment of ``model``: one LLMReplica per pool replica, routed by predicted latency.

    ``max_ongoing_requests`` defaults to twice the engine's ``max_num_seqs``: enough for a full batch plus a queue
    behind it, so a backlog shows in the engine's own waiting queue (what telemetry and the router see) rather than
    hiding in Serve's. ``same_loop``: user code and routers on Serve's own loop (``SAME_LOOP_ENV``); ``transport``:
    Serve's transport for the replica's own handles (``TRANSPORTS``). ``options`` go to ``Deployment.options`` (e.g.
    graceful_shutdown_timeout_s).
    """
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    router_config = RequestRouterConfig(
        request_router_class=LatencyAwareRouter,
        request_router_kwargs={"model": model.name, **(router_kwargs or {})},
        request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
        request_routing_stats_timeout_s=1.0,
    )
    settings: dict[str, Any] = {
        "name": model.name,
        "num_replicas": model.replicas,
        "ray_actor_options": actor_options(same_loop, transport),
        "max_ongoing_requests": max_ongoing_requests or 2 * model.twin.max_num_seqs,
        "health_check_period_s": health_check_period_s,
        "request_router_config": router_config,
    }
    settings.update(options)
    return serve.deployment(LLMReplica).options(**settings)
