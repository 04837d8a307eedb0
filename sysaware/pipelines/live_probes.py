"""Probes on the live pool: Ray Serve DeploymentHandles, wall clock (optionally sped up by the twin's time scale).

The live twin of ``SimProbeBackend``: the collector (collect_metrics.py) drives both the same way. Here a level's
background is N closed-loop asyncio clients per model calling ``handle.generate`` with ``PromptPoolFactory``
requests; probes go out at their scheduled engine-clock offsets (wall seconds = offset / time_scale) while the load
runs. The state at submission is the telemetry actor's snapshot of every replica of the probe's model, read just
before the probe is sent (a handle's ``stats()`` would reach whichever replica the router picks, not necessarily the
one that serves the probe); the collector keeps the served replica's (``result.replica_id``).

The backend's methods are synchronous, like the collector; the clients live on an event loop in a daemon thread, so
the background keeps running between ``measure`` calls (while a shard is written) as it does in simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sysaware.config import PoolConfig
from sysaware.engines.types import ReplicaStats, ReplicaView, TelemetrySnapshot
from sysaware.orchestration.live_driver import on_clock
from sysaware.pipelines.collect_metrics import MetricsSettings, load_prompt_rows
from sysaware.pipelines.probes import ProbeOutcome, PromptPoolFactory, ScheduledProbe

logger = logging.getLogger(__name__)

BACKGROUND_RETRY_S = 0.5  # wall pause after a failed background call, so a broken replica is not hammered


class LiveProbeBackend:
    """Probes through ``handles`` (model -> DeploymentHandle of its LLMReplica deployment) under live background load."""

    name = "live"

    def __init__(
        self,
        handles: Mapping[str, Any],
        telemetry: Any,  # the TelemetryActor handle (get_or_create_telemetry())
        time_scale: float = 1.0,  # engine seconds per wall second, as the pool was deployed with
        background: PromptPoolFactory | None = None,  # None: no background load (levels must then be 0)
        warmup_s: float = 20.0,  # engine seconds of background load before a level's first probe
        seed: int = 0,
        telemetry_wait_s: float = 30.0,  # wall seconds to wait for every model's replicas to push their first stats
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.handles = dict(handles)
        self.telemetry = telemetry
        self.time_scale = time_scale
        self.background = background
        self.warmup_s = warmup_s
        self.seed = seed
        self.telemetry_wait_s = telemetry_wait_s
        self._t0_wall_s = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[asyncio.Task] = []
        self._level = 0

    def now(self) -> float:
        """Engine seconds since the backend was built (the dataset's ``submitted_at`` clock)."""
        return (time.monotonic() - self._t0_wall_s) * self.time_scale

    # --- the ProbeBackend protocol -----------------------------------------------------------------------------
    def start_level(self, concurrency: int) -> None:
        if self._clients:
            raise RuntimeError("stop_level() before starting another level")
        if concurrency > 0 and self.background is None:
            raise ValueError("a background PromptPoolFactory is needed for a load level above 0")
        self._level += 1
        self._run(self._start_level(concurrency))

    def measure(self, probes: Sequence[ScheduledProbe]) -> list[ProbeOutcome]:
        if self._loop is None:
            raise RuntimeError("start_level() first")
        return self._run(self._measure(probes))

    def stop_level(self) -> None:
        if self._loop is None:
            return
        self._run(self._stop_clients())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    # --- the event loop thread ---------------------------------------------------------------------------------
    def _run(self, coro):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="live-probes", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _start_level(self, concurrency: int) -> None:
        for model, handle in self.handles.items():
            for client in range(concurrency):
                rng = random.Random(f"live-bg/{self.seed}/{self._level}/{model}/{client}")
                self._clients.append(asyncio.create_task(self._closed_loop(handle, model, rng)))
        started_s = time.monotonic()
        await self._wait_for_telemetry()
        if concurrency > 0:
            await self._wait_for_load(started_s)
        await asyncio.sleep(self.warmup_s / self.time_scale)

    async def _closed_loop(self, handle: Any, model: str, rng: random.Random) -> None:
        """One background client: a new request as soon as the previous answer is back."""
        while True:
            try:
                await handle.generate.remote(self.background(model, rng))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep the load up through a replica restart
                logger.warning("background call to %s failed: %r", model, e)
                await asyncio.sleep(BACKGROUND_RETRY_S)

    async def _stop_clients(self) -> None:
        for task in self._clients:
            task.cancel()  # cancelling the awaited response cancels the request on its replica
        await asyncio.gather(*self._clients, return_exceptions=True)
        self._clients = []

    async def _wait_for_telemetry(self) -> None:
        """Until every model has a replica in the telemetry snapshot: a probe's state must exist to be recorded."""
        deadline = time.monotonic() + self.telemetry_wait_s
        while True:
            missing = [m for m, states in (await self._states()).items() if not states]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no telemetry from the replicas of {missing} after {self.telemetry_wait_s} s")
            await asyncio.sleep(0.1)

    async def _wait_for_load(self, started_s: float) -> None:
        """Until every model's replicas show this level's background in stats pushed after its clients started. The
        warm-up counts from when the load is on the engines, not from when its clients were created (on a loaded
        host the first calls can take longer than a short warm-up); and a push from before the level (the previous
        level's requests, being cancelled) is not this level's load: it used to end the wait at once.

        One request per model is enough: waiting for all ``concurrency`` at once took up to 26 s on a starved host
        (a closed-loop client spends part of each round trip off the engine)."""
        deadline = time.monotonic() + self.telemetry_wait_s
        while time.monotonic() < deadline:
            level_age_s = time.monotonic() - started_s  # taken before the read: a younger push is this level's
            views = await self._views()
            if all(
                any(v.stats.num_requests_running + v.stats.num_requests_waiting for v in vs if v.age_s < level_age_s)
                for vs in views.values()
            ):
                return
            await asyncio.sleep(0.05)
        logger.warning("background load not visible in the telemetry after %s s; probing anyway", self.telemetry_wait_s)

    async def _views(self) -> dict[str, list[ReplicaView]]:
        """model -> the telemetry's views of its replicas, for this backend's deployments only (the actor is shared
        by every application on the cluster)."""
        snapshot: TelemetrySnapshot = await self.telemetry.snapshot.remote()
        return {
            model: snapshot.deployment(handle.app_name, handle.deployment_name) for model, handle in self.handles.items()
        }

    async def _states(self) -> dict[str, dict[str, ReplicaStats]]:
        """model -> replica_id -> its latest pushed stats (``_views``). A stale replica keeps its last state: if the
        router still picked it, that is the best record of it there is."""
        return {
            model: {view.replica_id: view.stats_at_read(self.time_scale) for view in views}
            for model, views in (await self._views()).items()
        }

    async def _measure(self, probes: Sequence[ScheduledProbe]) -> list[ProbeOutcome]:
        start_wall_s = time.monotonic()

        async def send(probe: ScheduledProbe) -> ProbeOutcome:
            delay_s = start_wall_s + probe.offset_s / self.time_scale - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            model = probe.request.model
            states = (await self._states())[model]
            submitted_s = self.now()
            raw = await self.handles[model].generate.remote(probe.request)
            result = on_clock(raw, self.now())  # the replica's engine clock -> this backend's; durations unchanged
            if result.replica_id not in states:
                raise RuntimeError(f"probe {probe.key}: served by {result.replica_id}, which had no telemetry")
            return ProbeOutcome(probe.key, submitted_s, states, result)

        return list(await asyncio.gather(*(send(p) for p in probes)))


DEFAULT_COLLECT_APP = "sysaware-collect-metrics"


@contextlib.contextmanager
def open_live_backend(
    pool: PoolConfig,
    models: Sequence[str],
    background: PromptPoolFactory,
    time_scale: float = 1.0,
    app_name: str | None = None,
    warmup_s: float = 20.0,
    seed: int = 0,
    port: int = 0,
) -> Iterator[LiveProbeBackend]:
    """A live backend on the connected (or a new local) Ray cluster. With ``app_name``, the running application of
    that name is used as it is (``time_scale`` must be the one it was deployed with); without, ``pool`` is deployed
    with the serving app builder as its own application and deleted afterwards."""
    import ray
    from ray import serve

    from sysaware.serving.app import build_app, deploy
    from sysaware.serving.telemetry import get_or_create_telemetry

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, logging_level="warning")
    deployed = app_name is None
    name = app_name or DEFAULT_COLLECT_APP
    if deployed:
        if port == 0:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        deploy(build_app(pool, time_scale, models=list(models)), port=port, name=name)
    try:
        handles = {m: serve.get_deployment_handle(m, app_name=name) for m in models}
        yield LiveProbeBackend(handles, get_or_create_telemetry(), time_scale, background, warmup_s, seed)
    finally:
        if deployed:
            serve.delete(name)


@contextlib.contextmanager
def live_backend_for(
    pool: PoolConfig,
    prompts_csv: str | Path,
    settings: MetricsSettings,
    time_scale: float = 1.0,
    app_name: str | None = None,
) -> Iterator[LiveProbeBackend]:
    """The live backend ``collect_metrics`` needs for ``settings``: its models, and a background drawn from the same
    harvested prompts and strategies as the simulated backend's."""
    rows = load_prompt_rows(prompts_csv, settings.num_prompts)
    background = PromptPoolFactory(rows, settings.strategies, settings.max_tokens)
    models = list(settings.models or [m.name for m in pool.models])
    with open_live_backend(pool, models, background, time_scale, app_name, settings.warmup_s, settings.seed) as backend:
        yield backend
