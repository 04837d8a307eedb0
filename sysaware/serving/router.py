"""Ray Serve request router: send each call to the replica of a model with the lowest predicted latency.

Replicas report ``record_routing_stats()`` (queue_waiting, queue_running, kv_utilization, ema_ttft_ms,
stats_time_s); the controller polls them every ~0.1 s and broadcasts them to every router (one per deployment in
each process holding a handle). Two things make a snapshot mislead:

- it is up to ~0.2 s old, and a burst of N calls runs ``choose_replicas`` N times before any of them reaches a
  replica: ranked on the snapshot alone, the whole burst herds onto one replica;
- so the router corrects each replica's snapshot with what it knows to be newer: the requests it sent after the
  snapshot was taken and that have not completed yet are added to the queue, and the ones it sent before the
  snapshot that have completed since are taken out of the running batch (a short request finishes long before the
  next snapshot shows it gone, and would otherwise make its replica look busy).

The scoring is a pure function (``predicted_latency_ms``) so it is unit-tested without Serve.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica


@dataclass(frozen=True)
class LatencyModel:
    """The heuristic that turns a replica's stats into a predicted TTFT for one more request.

    predicted_ms = ttft_ms x (1 + ahead) + running_penalty_ms x queue_running, then x (1 + kv pressure)

    - ttft_ms: the replica's EMA TTFT (it already carries the queueing of recent requests), at least
      ``min_ttft_ms`` so that an unmeasured replica still counts the requests ahead of a new one;
    - ahead: requests that must be prefilled before a new one: queue_waiting plus the in-flight ones the snapshot
      does not show yet; each costs about one TTFT;
    - running: a bigger decode batch makes every step slightly slower and brings KV pressure closer;
    - kv pressure: above ``kv_pressure_start`` a replica admits little and starts preempting; the factor grows
      linearly to 2 at a full cache.
    """

    min_ttft_ms: float = 20.0
    running_penalty_ms: float = 1.0
    kv_pressure_start: float = 0.8


def predicted_latency_ms(
    stats: Mapping[str, float],
    inflight: int = 0,
    departed: int = 0,
    model: LatencyModel = LatencyModel(),
) -> float:
    """Predicted TTFT (ms) of one more request on a replica with these routing stats, ``inflight`` requests sent to
    it since the stats were taken and ``departed`` requests the stats still count that have completed since.
    Empty stats (a replica not polled yet) read as an idle replica."""
    ttft = max(float(stats.get("ema_ttft_ms", 0.0)), model.min_ttft_ms)
    waiting = float(stats.get("queue_waiting", 0.0))
    running = float(stats.get("queue_running", 0.0))
    # A completed request most likely left the running batch; any excess came from the queue.
    gone_running = min(float(departed), running)
    running -= gone_running
    waiting = max(waiting - (departed - gone_running), 0.0)
    ahead = waiting + inflight
    predicted = ttft * (1.0 + ahead) + model.running_penalty_ms * running
    kv = float(stats.get("kv_utilization", 0.0))
    if kv > model.kv_pressure_start:
        predicted *= 1.0 + min(kv - model.kv_pressure_start, 1.0 - model.kv_pressure_start) / (
            1.0 - model.kv_pressure_start
        )
    return predicted


K = TypeVar("K")

COMPLETION_MEMORY_S = 5.0  # how long a completion may still be counted in a replica's snapshot, s


def rank_by_predicted_latency(
    candidates: Sequence[tuple[K, Mapping[str, float], int, int]],
    model: LatencyModel = LatencyModel(),
    rng: random.Random | None = None,
) -> list[K]:
    """Order ``(key, routing_stats, inflight, departed)`` candidates best first; equal predictions in random order
    (so sequential calls to idle replicas spread instead of always hitting the first)."""
    rng = rng or random.Random()
    scored = [
        (predicted_latency_ms(stats, inflight, departed, model), rng.random(), i)
        for i, (_, stats, inflight, departed) in enumerate(candidates)
    ]
    scored.sort()
    return [candidates[i][0] for _, _, i in scored]


class LatencyAwareRouter(RequestRouter):
    """Ranks a deployment's replicas by ``predicted_latency_ms``, one replica per rank (Serve then takes the
    first one below ``max_ongoing_requests``). Configure through ``request_router_kwargs``: the fields of
    ``LatencyModel`` and ``forget_after_s``.

    Serve pickles this class by value into every process that holds a handle (the class object there is a copy,
    so class attributes are not shared with an imported ``LatencyAwareRouter``).
    """

    def initialize_state(
        self,
        min_ttft_ms: float = LatencyModel.min_ttft_ms,
        running_penalty_ms: float = LatencyModel.running_penalty_ms,
        kv_pressure_start: float = LatencyModel.kv_pressure_start,
        forget_after_s: float = 300.0,
        **kwargs,
    ) -> None:
        self.latency_model = LatencyModel(min_ttft_ms, running_penalty_ms, kv_pressure_start)
        # Requests cancelled before dispatch never complete: forget an assignment after this long.
        self.forget_after_s = forget_after_s
        self._rng = random.Random()
        # internal_request_id -> (replica it was sent to, wall time when it was sent, s)
        self._sent: dict[str, tuple[ReplicaID, float]] = {}
        # (replica, sent at, completed at) of recent completions, wall s: the snapshots may still count them.
        self._completed: deque[tuple[ReplicaID, float, float]] = deque()

    def routing_stats_seen(self) -> dict[str, dict]:
        """The latest routing stats this router received, by replica unique id."""
        return {rid.unique_id: dict(r.routing_stats) for rid, r in self.curr_replicas.items()}

    def corrections(self, replica_id: ReplicaID, snapshot_s: float) -> tuple[int, int]:
        """(inflight, departed) for a replica whose snapshot was taken at wall time ``snapshot_s``: requests sent
        after it and not completed, and requests sent before it that have completed since."""
        inflight = sum(1 for rid, t in self._sent.values() if rid == replica_id and t > snapshot_s)
        departed = sum(1 for rid, sent, done in self._completed if rid == replica_id and sent <= snapshot_s < done)
        return inflight, departed

    def _expire(self, now: float) -> None:
        # Snapshots are ~0.1-0.2 s old; a completion older than a few seconds is in every snapshot already.
        while self._completed and now - self._completed[0][2] > COMPLETION_MEMORY_S:
            self._completed.popleft()
        if len(self._sent) >= 64:
            for k in [k for k, (_, t) in self._sent.items() if now - t > self.forget_after_s]:
                del self._sent[k]

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        now = time.time()
        self._expire(now)
        candidates = [
            (r, r.routing_stats, *self.corrections(r.replica_id, float(r.routing_stats.get("stats_time_s", 0.0))))
            for r in candidate_replicas
        ]
        ranked = rank_by_predicted_latency(candidates, self.latency_model, self._rng)
        if ranked and pending_request is not None:
            # Optimistic: the first rank takes it unless full; on_request_routed corrects it, a retry overwrites it.
            self._sent[pending_request.metadata.internal_request_id] = (ranked[0].replica_id, now)
        return [[r] for r in ranked]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        key = pending_request.metadata.internal_request_id
        sent = self._sent.get(key)
        self._sent[key] = (replica_id, sent[1] if sent else time.time())

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        sent = self._sent.pop(internal_request_id, None)
        if sent is not None:
            self._completed.append((replica_id, sent[1], time.time()))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for key in [k for k, (rid, _) in self._sent.items() if rid == replica_id]:
            del self._sent[key]
        self._completed = deque(c for c in self._completed if c[0] != replica_id)
