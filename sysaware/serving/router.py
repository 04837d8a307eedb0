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

The scoring is the estimators' (``estimators/latency.py``: the learned F_lat by default, the queueing heuristic
``predicted_latency_ms`` as the alternative), pure functions unit-tested without Serve.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sysaware.estimators.latency import (  # noqa: F401 (predicted_latency_ms: re-exported)
    LatencyModel,
    QueueingReplicaScorer,
    ReplicaScorer,
    make_replica_scorer,
    predicted_latency_ms,
)
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica


K = TypeVar("K")

COMPLETION_MEMORY_S = 5.0  # how long a completion may still be counted in a replica's snapshot, s


def rank_by_predicted_latency(
    candidates: Sequence[tuple[K, Mapping[str, float], int, int]],
    scorer: ReplicaScorer | LatencyModel = LatencyModel(),
    rng: random.Random | None = None,
    prompt_tokens: int = 0,
) -> list[K]:
    """Order ``(key, routing_stats, inflight, departed)`` candidates best first by the scorer's predicted TTFT (a
    bare ``LatencyModel``: the queueing heuristic); equal predictions in random order (so sequential calls to idle
    replicas spread instead of always hitting the first)."""
    rng = rng or random.Random()
    if isinstance(scorer, LatencyModel):
        scorer = QueueingReplicaScorer(scorer)
    ttfts = scorer.ttft_ms([(stats, inflight, departed) for _, stats, inflight, departed in candidates], prompt_tokens)
    scored = [(ttft, rng.random(), i) for i, ttft in enumerate(ttfts)]
    scored.sort()
    return [candidates[i][0] for _, _, i in scored]


def _prompt_tokens(pending: PendingRequest | None) -> int:
    """The prompt length of the request being routed, when it is a ``GenerationRequest`` (0 otherwise)."""
    from sysaware.engines.tokens import count_prompt_tokens

    request = pending.args[0] if pending is not None and pending.args else None
    messages = getattr(request, "messages", None)
    return count_prompt_tokens(messages) if messages else 0


class LatencyAwareRouter(RequestRouter):
    """Ranks a deployment's replicas by predicted TTFT, one replica per rank (Serve then takes the first one below
    ``max_ongoing_requests``). Configure through ``request_router_kwargs``: ``estimator`` (``queueing``, the
    default: the heuristic; ``learned``: F_lat; ``auto``: F_lat where it knows ``model``), ``model``, the fields of
    ``LatencyModel`` (the heuristic's) and ``forget_after_s``.

    Why the heuristic is the router's default while the executor's is F_lat: ranking the replicas of one model
    turns on small differences near idle, and there F_lat is not monotone: it never saw an idle replica (no step in
    progress) in its Phase 2 data, and prices one 1 ms slower than a replica decoding one request (measured on the
    shipped artifacts; see ``test_the_learned_scorer_...``). Past a few requests it ranks correctly.

    Serve pickles this class by value into every process that holds a handle (the class object there is a copy,
    so class attributes are not shared with an imported ``LatencyAwareRouter``).
    """

    def initialize_state(
        self,
        min_ttft_ms: float = LatencyModel.min_ttft_ms,
        running_penalty_ms: float = LatencyModel.running_penalty_ms,
        kv_pressure_start: float = LatencyModel.kv_pressure_start,
        forget_after_s: float = 300.0,
        estimator: str = "queueing",
        model: str | None = None,
        **kwargs,
    ) -> None:
        self.latency_model = LatencyModel(min_ttft_ms, running_penalty_ms, kv_pressure_start)
        self.scorer = make_replica_scorer(estimator, model, self.latency_model)
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
        tokens = _prompt_tokens(pending_request) if self.scorer.uses_prompt_tokens else 0
        ranked = rank_by_predicted_latency(candidates, self.scorer, self._rng, tokens)
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
