"""The pool's live state: every replica pushes its stats here about every 100 ms; everyone else reads snapshots.

A snapshot is typed (``TelemetrySnapshot`` of ``ReplicaView``s, engines/types.py): readers take fields, not keys.
``snapshot_json`` renders it for the ingress's ``/v1/telemetry`` (the one place the JSON names live).

``TelemetryState`` holds the logic in plain Python (tested without Ray); ``TelemetryActor`` is the one named Ray
actor per cluster that wraps it and exports Ray metrics (``ray_sysaware_*`` on the node's Prometheus endpoint and in
the dashboard). Get it with ``get_or_create_telemetry()``.

Two clocks, on purpose:
- ages and staleness use the actor's wall clock (when a push arrived): a replica that stopped pushing is stale;
- rates use the replica's engine clock (``ReplicaStats.timestamp_s``): tokens/s is what the simulated GPU did per
  simulated second (for a real engine the two clocks agree), so it does not scale with the twin's time_scale.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import ray

from sysaware.engines.types import ReplicaStats, ReplicaView, TelemetrySnapshot

TELEMETRY_ACTOR_NAME = "sysaware-telemetry"
TELEMETRY_NAMESPACE = "sysaware"


@dataclass(frozen=True)
class PushDelta:
    """What one push added since the replica's previous one (counters for Ray metrics)."""

    generation_tokens: int  # tokens
    prompt_tokens: int  # tokens
    preemptions: int
    requests_finished: int
    interval_s: float | None  # wall seconds since the previous push (None for the first)
    tokens_per_s: float  # the replica's generation rate after this push, tokens per engine second


@dataclass
class _Replica:
    latest: ReplicaStats
    received_s: float  # actor clock when the latest push arrived, s
    tokens_per_s: float  # generation tokens per engine second, over the rate window
    history: deque  # of (received_s, wall_time_s, ReplicaStats, tokens_per_s)


class TelemetryState:
    """Latest stats, a bounded history and derived rates per replica; aggregates per model; staleness.

    ``clock`` measures ages (monotonic seconds); ``wall_clock`` stamps history records for people to read.
    """

    def __init__(
        self,
        stale_after_s: float = 0.5,
        history_len: int = 600,
        rate_window_s: float = 1.0,
        forget_after_s: float = 300.0,
        late_push_window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.stale_after_s = stale_after_s  # a few push periods of silence
        self.history_len = history_len  # records kept per replica (600 x 0.1 s = the last minute)
        self.rate_window_s = rate_window_s  # tokens/s is measured over about this much wall time
        self.forget_after_s = forget_after_s  # a replica silent this long leaves the snapshot
        # A replica that left on purpose may still have a push on the wire (sent before it said goodbye; Ray does
        # not order an async actor's calls from one caller), which would bring it back for forget_after_s. Its
        # pushes are dropped this long after it left; an id that comes back later is a new replica.
        self.late_push_window_s = late_push_window_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._replicas: dict[str, _Replica] = {}
        self._departed: dict[str, float] = {}  # replica id -> actor clock when it left (inside the window only)

    # ---- in ------------------------------------------------------------------------------------------------------

    def push(self, stats: ReplicaStats) -> PushDelta | None:
        """Record one push; None when it is a late push from a replica that has left (dropped)."""
        now = self.clock()
        if self._departed_recently(stats.replica_id, now):
            return None
        wall = self.wall_clock()
        replica = self._replicas.get(stats.replica_id)
        if replica is None or stats.timestamp_s < replica.latest.timestamp_s:
            # New replica, or one that restarted under the same id (its engine clock began again): counters anew.
            previous = None
            replica = _Replica(stats, now, 0.0, deque(maxlen=self.history_len))
            self._replicas[stats.replica_id] = replica
        else:
            previous = replica.latest
            replica.latest = stats
        interval = None if previous is None else now - replica.received_s
        replica.received_s = now
        replica.tokens_per_s = self._tokens_per_s(replica, stats, now)
        replica.history.append((now, wall, stats, replica.tokens_per_s))
        if previous is None:
            return PushDelta(
                stats.generation_tokens_total,
                stats.prompt_tokens_total,
                stats.num_preemptions_total,
                stats.requests_finished_total,
                None,
                replica.tokens_per_s,
            )
        return PushDelta(
            stats.generation_tokens_total - previous.generation_tokens_total,
            stats.prompt_tokens_total - previous.prompt_tokens_total,
            stats.num_preemptions_total - previous.num_preemptions_total,
            stats.requests_finished_total - previous.requests_finished_total,
            interval,
            replica.tokens_per_s,
        )

    def _tokens_per_s(self, replica: _Replica, stats: ReplicaStats, now: float) -> float:
        """Counter delta over the oldest record still inside the rate window (engine seconds)."""
        base = None
        for received, _, old, _ in replica.history:  # oldest first
            if now - received <= self.rate_window_s:
                base = old
                break
        if base is None:
            if not replica.history:
                return 0.0
            base = replica.history[-1][2]  # all older than the window: use the previous push
        dt = stats.timestamp_s - base.timestamp_s
        if dt <= 0:
            return replica.tokens_per_s
        return max(stats.generation_tokens_total - base.generation_tokens_total, 0) / dt

    def forget(self, replica_id: str) -> bool:
        """Drop a replica that left on purpose (graceful shutdown); True if it was known."""
        now = self.clock()
        self._departed = {rid: t for rid, t in self._departed.items() if now - t <= self.late_push_window_s}
        self._departed[replica_id] = now
        return self._replicas.pop(replica_id, None) is not None

    def _departed_recently(self, replica_id: str, now: float) -> bool:
        left = self._departed.get(replica_id)
        if left is None:
            return False
        if now - left <= self.late_push_window_s:
            return True
        del self._departed[replica_id]
        return False

    # ---- out -----------------------------------------------------------------------------------------------------

    def is_stale(self, replica_id: str) -> bool:
        return self.clock() - self._replicas[replica_id].received_s > self.stale_after_s

    def stale_replicas(self) -> list[str]:
        now = self.clock()
        return [rid for rid, r in self._replicas.items() if now - r.received_s > self.stale_after_s]

    def _prune(self, now: float) -> None:
        gone = [rid for rid, r in self._replicas.items() if now - r.received_s > self.forget_after_s]
        for rid in gone:
            del self._replicas[rid]

    def snapshot(self) -> TelemetrySnapshot:
        """Every replica heard from within ``forget_after_s``, with its age and staleness now."""
        now = self.clock()
        self._prune(now)
        replicas = {
            rid: ReplicaView(r.latest, now - r.received_s, now - r.received_s > self.stale_after_s, r.tokens_per_s)
            for rid, r in sorted(self._replicas.items())
        }
        return TelemetrySnapshot(self.wall_clock(), self.stale_after_s, replicas)

    def history(self, key: str, last_n: int = 100) -> list[dict]:
        """The last ``last_n`` records of one replica (``key`` a replica id) or of a model's replicas merged in
        time order (``key`` a model name). Unknown keys give an empty list."""
        if key in self._replicas:
            sources = [(key, self._replicas[key])]
        else:
            sources = [(rid, r) for rid, r in self._replicas.items() if r.latest.model == key]
        records = []
        for rid, replica in sources:
            for received, wall, s, tps in list(replica.history)[-last_n:]:
                records.append(
                    {
                        "replica_id": rid,
                        "model": s.model,
                        "wall_time_s": wall,
                        "received_s": received,
                        "queue_waiting": s.num_requests_waiting,
                        "queue_running": s.num_requests_running,
                        "kv_utilization": s.kv_cache_usage_perc,
                        "ema_ttft_ms": s.ema_ttft_ms,
                        "tokens_per_s": tps,
                        "generation_tokens_total": s.generation_tokens_total,
                        "engine_time_s": s.timestamp_s,
                    }
                )
        records.sort(key=lambda r: r["received_s"])
        return records[-last_n:]

    def latest(self, replica_id: str) -> ReplicaStats | None:
        replica = self._replicas.get(replica_id)
        return None if replica is None else replica.latest


# ---- the HTTP view ----------------------------------------------------------------------------------------------


def replica_json(view: ReplicaView) -> dict:
    """One replica of ``/v1/telemetry``."""
    s = view.stats
    return {
        "model": s.model,
        "queue_waiting": s.num_requests_waiting,
        "queue_running": s.num_requests_running,
        "kv_utilization": s.kv_cache_usage_perc,
        "ema_ttft_ms": s.ema_ttft_ms,
        "step_elapsed_ms": s.step_elapsed_ms,
        "step_ms": s.step_ms,
        "step_tokens": s.step_tokens,
        "tokens_per_s": view.tokens_per_s,
        "preemptions": s.num_preemptions_total,
        "prompt_tokens_total": s.prompt_tokens_total,
        "generation_tokens_total": s.generation_tokens_total,
        "requests_finished_total": s.requests_finished_total,
        "num_gpu_blocks": s.num_gpu_blocks,
        "block_size": s.block_size,
        "engine_time_s": s.timestamp_s,
        "age_s": view.age_s,
        "stale": view.stale,
    }


def snapshot_json(snapshot: TelemetrySnapshot) -> dict:
    """The ingress's ``/v1/telemetry``: ``{"replicas": {id: {...}}, "models": {name: {...}}, ...}``.

    A model's aggregates cover its fresh replicas only (a dead replica's last queue is not load); its stale ones
    are counted in ``stale_replicas``.
    """
    replicas = {rid: replica_json(view) for rid, view in snapshot.replicas.items()}
    models: dict[str, dict] = {}
    for view in replicas.values():
        agg = models.setdefault(
            view["model"],
            {
                "replicas": 0,
                "stale_replicas": 0,
                "queue_waiting": 0,
                "queue_running": 0,
                "kv_utilization": 0.0,
                "ema_ttft_ms": 0.0,
                "tokens_per_s": 0.0,
                "preemptions": 0,
            },
        )
        if view["stale"]:
            agg["stale_replicas"] += 1
            continue
        agg["replicas"] += 1
        agg["queue_waiting"] += view["queue_waiting"]
        agg["queue_running"] += view["queue_running"]
        agg["kv_utilization"] += view["kv_utilization"]  # mean below
        agg["ema_ttft_ms"] += view["ema_ttft_ms"]  # mean below
        agg["tokens_per_s"] += view["tokens_per_s"]
        agg["preemptions"] += view["preemptions"]
    for agg in models.values():
        if agg["replicas"]:
            agg["kv_utilization"] /= agg["replicas"]
            agg["ema_ttft_ms"] /= agg["replicas"]
    return {
        "time_s": snapshot.wall_time_s,
        "stale_after_s": snapshot.stale_after_s,
        "replicas": replicas,
        "models": models,
    }


# ---- Ray metrics -------------------------------------------------------------------------------------------------


class _RayMetrics:
    """The state as Ray metrics (exported with a ``ray_`` prefix; counters get ``_total``)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = ("model", "replica")

        def gauge(name: str, description: str) -> Gauge:
            return Gauge(name, description=description, tag_keys=tags)

        def counter(name: str, description: str) -> Counter:
            return Counter(name, description=description, tag_keys=tags)

        self.waiting = gauge("sysaware_num_requests_waiting", "Requests queued (vllm:num_requests_waiting)")
        self.running = gauge("sysaware_num_requests_running", "Requests in the batch (vllm:num_requests_running)")
        self.kv = gauge("sysaware_kv_cache_usage_perc", "Fraction of KV blocks in use (vllm:kv_cache_usage_perc)")
        self.ema_ttft = gauge("sysaware_ema_ttft_ms", "Exponential moving average of recent TTFTs, ms")
        self.tokens_per_s = gauge("sysaware_generation_tokens_per_s", "Generated tokens per engine second")
        self.stale = gauge("sysaware_replica_stale", "1 when the replica has not pushed stats for stale_after_s")
        self.generation_tokens = counter("sysaware_generation_tokens", "Generated tokens (vllm:generation_tokens)")
        self.prompt_tokens = counter("sysaware_prompt_tokens", "Prefilled prompt tokens (vllm:prompt_tokens)")
        self.preemptions = counter("sysaware_num_preemptions", "Preemptions (vllm:num_preemptions)")
        self.finished = counter("sysaware_request_success", "Requests finished (vllm:request_success)")
        self.push_interval = Histogram(
            "sysaware_telemetry_push_interval_ms",
            description="Wall time between two pushes of one replica, ms (health of the telemetry path)",
            boundaries=[50, 100, 150, 200, 300, 500, 1000, 5000],
            tag_keys=("model",),
        )

    def record(self, stats: ReplicaStats, delta: PushDelta) -> None:
        tags = {"model": stats.model, "replica": stats.replica_id}
        self.waiting.set(stats.num_requests_waiting, tags=tags)
        self.running.set(stats.num_requests_running, tags=tags)
        self.kv.set(stats.kv_cache_usage_perc, tags=tags)
        self.ema_ttft.set(stats.ema_ttft_ms, tags=tags)
        self.tokens_per_s.set(delta.tokens_per_s, tags=tags)
        self.stale.set(0, tags=tags)
        for metric, value in (
            (self.generation_tokens, delta.generation_tokens),
            (self.prompt_tokens, delta.prompt_tokens),
            (self.preemptions, delta.preemptions),
            (self.finished, delta.requests_finished),
        ):
            if value > 0:
                metric.inc(value, tags=tags)
        if delta.interval_s is not None:
            self.push_interval.observe(delta.interval_s * 1e3, tags={"model": stats.model})

    def mark_stale(self, model: str, replica_id: str) -> None:
        self.stale.set(1, tags={"model": model, "replica": replica_id})


@ray.remote(num_cpus=0)
class TelemetryActor:
    """One per cluster (named ``sysaware-telemetry`` in namespace ``sysaware``): replicas push, readers snapshot.

    An async actor, so a background sweep can flag stale replicas in the Ray metrics even when nobody asks.
    """

    def __init__(self, stale_after_s: float = 0.5, history_len: int = 600) -> None:
        self.state = TelemetryState(stale_after_s=stale_after_s, history_len=history_len)
        self.metrics = _RayMetrics()
        self._sweeper: asyncio.Task | None = None

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.state.stale_after_s / 2)
            for rid in self.state.stale_replicas():
                latest = self.state.latest(rid)
                if latest is not None:
                    self.metrics.mark_stale(latest.model, rid)

    async def push(self, stats: ReplicaStats) -> None:
        self._ensure_sweeper()
        delta = self.state.push(stats)
        if delta is not None:
            self.metrics.record(stats, delta)

    async def snapshot(self) -> TelemetrySnapshot:
        self._ensure_sweeper()
        return self.state.snapshot()

    async def history(self, key: str, last_n: int = 100) -> list[dict]:
        return self.state.history(key, last_n)

    async def forget(self, replica_id: str) -> bool:
        return self.state.forget(replica_id)

    async def config(self) -> dict:
        return {"stale_after_s": self.state.stale_after_s, "history_len": self.state.history_len}


def get_or_create_telemetry(stale_after_s: float = 0.5) -> "ray.actor.ActorHandle":
    """The cluster's telemetry actor, created on first use. Detached: it outlives the replica or driver that
    created it (a replica being killed must not take the pool's telemetry down). ``stale_after_s`` only applies
    when this call creates it."""
    return TelemetryActor.options(
        name=TELEMETRY_ACTOR_NAME,
        namespace=TELEMETRY_NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
    ).remote(stale_after_s)


def existing_telemetry() -> "ray.actor.ActorHandle":
    """The cluster's telemetry actor if it exists; raises ValueError if not (a replica leaving must not create
    one)."""
    return ray.get_actor(TELEMETRY_ACTOR_NAME, namespace=TELEMETRY_NAMESPACE)
