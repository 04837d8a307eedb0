"""The simulated cluster: many twin replicas on one virtual clock.

One scheduler, two clocks (DESIGN.md): the twin core never reads a clock; here a discrete-event loop advances a
virtual one. Replicas run fast-forwarded decode runs; an arrival that lands inside a run truncates it at the next
step boundary, exactly where vLLM's engine loop would pick the new request up.

Event order at equal times is (time, kind, sequence number): a step's end is handled before arrivals at that
instant (so a request finishing at t frees its slot for a request arriving at t), and a replica starts its next step
only after every arrival at that instant has joined its queue.

    heap: (t, STEP_END, seq, replica)   -> deliver the step's events to their callbacks, then STEP_START at t
          (t, ARRIVAL,  seq, submission)-> route, add to the core (truncating a run in flight), STEP_START if idle
          (t, TIMER,    seq, callback)  -> load generators' own clocks (Poisson gaps, think times)
          (t, STEP_START, seq, replica) -> core.step(t, until=None) and push its STEP_END
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from sysaware.config import PoolConfig
from sysaware.engines.twin.core import EventKind, StepOutcome, TwinEngineCore
from sysaware.engines.twin.protocols import Responder
from sysaware.engines.types import GenerationRequest, GenerationResult, ReplicaStats
from sysaware.sim.routing import ReplicaRouter, make_router

CompletionCallback = Callable[[GenerationResult], None]


class _Kind(IntEnum):
    STEP_END = 0
    ARRIVAL = 1
    TIMER = 2
    STEP_START = 3


@dataclass
class Submission:
    request: GenerationRequest
    on_complete: CompletionCallback | None = None
    on_first_token: Callable[[str, float], None] | None = None
    replica_index: int | None = None  # pin to one replica of the model; None = the router decides


@dataclass
class SimReplica:
    """One twin replica and the bookkeeping of the step it is executing."""

    core: TwinEngineCore
    model: str
    index: int
    step_end_s: float | None = None  # end of the step (or run) in flight; None when idle
    step_version: int = 0  # bumps on truncation, so a superseded STEP_END in the heap is ignored
    pending: StepOutcome | None = None
    submissions: dict[str, Submission] = field(default_factory=dict)

    @property
    def replica_id(self) -> str:
        return self.core.replica_id

    @property
    def busy(self) -> bool:
        return self.step_end_s is not None


class SimulatedCluster:
    """Twin replicas of a pool on a virtual clock, with per-model routing."""

    def __init__(self, replicas: list[SimReplica], router: str = "least_loaded", seed: int = 0):
        self.replicas = replicas
        self.by_model: dict[str, list[SimReplica]] = {}
        for r in replicas:
            self.by_model.setdefault(r.model, []).append(r)
        self._routers: dict[str, ReplicaRouter] = {m: make_router(router, seed) for m in self.by_model}
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.steps_executed = 0  # core.step() calls: the simulation's cost
        self.results: list[GenerationResult] = []
        self.keep_results = True

    # --- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pool(
        cls,
        pool: PoolConfig,
        responder: Responder | None = None,
        router: str = "least_loaded",
        seed: int = 0,
    ) -> "SimulatedCluster":
        if responder is None:
            from sysaware.engines.twin.responder import TwinResponder

            responder = TwinResponder(pool)
        replicas = []
        for model in pool.models:
            for i in range(model.replicas):
                core = TwinEngineCore.for_deployment(model, pool, replica_id=f"{model.name}/{i}", responder=responder)
                replicas.append(SimReplica(core=core, model=model.name, index=len(replicas)))
        return cls(replicas, router=router, seed=seed)

    @property
    def models(self) -> list[str]:
        return list(self.by_model)

    # --- public API ----------------------------------------------------------------------------------------------
    def submit(
        self,
        request: GenerationRequest,
        at: float | None = None,
        on_complete: CompletionCallback | None = None,
        on_first_token: Callable[[str, float], None] | None = None,
        replica_index: int | None = None,
    ) -> None:
        """Schedule ``request`` to arrive at virtual time ``at`` (default: now)."""
        if request.model not in self.by_model:
            raise KeyError(f"unknown model {request.model!r}; known: {self.models}")
        t = self.now if at is None else at
        if t < self.now:
            raise ValueError(f"cannot submit in the past: at={t} < now={self.now}")
        sub = Submission(request, on_complete, on_first_token, replica_index)
        self._push(t, _Kind.ARRIVAL, sub)

    def call_at(self, t: float, callback: Callable[[float], None]) -> None:
        """Run ``callback(t)`` at virtual time ``t`` (load generators' timers)."""
        self._push(max(t, self.now), _Kind.TIMER, callback)

    def stats(self, model: str | None = None) -> list[ReplicaStats]:
        """Every replica's stats now (or one model's), as the telemetry actor would see them."""
        reps = self.replicas if model is None else self.by_model[model]
        return [r.core.stats(self.now) for r in reps]

    def run(self, until: float | None = None, max_events: int | None = None) -> None:
        """Process events in time order until the heap is empty or the next event is past ``until``."""
        n = 0
        while self._heap:
            t = self._heap[0][0]
            if until is not None and t > until:
                break
            _, kind, _, payload = heapq.heappop(self._heap)
            self.now = t
            if kind == _Kind.STEP_END:
                self._on_step_end(*payload)
            elif kind == _Kind.ARRIVAL:
                self._on_arrival(payload)
            elif kind == _Kind.TIMER:
                payload(t)
            else:
                self._on_step_start(payload)
            n += 1
            if max_events is not None and n >= max_events:
                return
        if until is not None:
            self.now = max(self.now, until)

    def idle(self) -> bool:
        return not self._heap

    # --- event handlers -------------------------------------------------------------------------------------------
    def _push(self, t: float, kind: _Kind, payload) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), payload))

    def _route(self, sub: Submission) -> SimReplica:
        reps = self.by_model[sub.request.model]
        if sub.replica_index is not None:
            return reps[sub.replica_index]
        if len(reps) == 1:
            return reps[0]
        return reps[self._routers[sub.request.model].choose([r.core.stats(self.now) for r in reps])]

    def _on_arrival(self, sub: Submission) -> None:
        replica = self._route(sub)
        if replica.busy and replica.step_end_s > self.now:
            # The replica is inside a fast-forwarded decode run: cut it at the first step boundary at or after now,
            # so the new request is scheduled in the very next step, as on the real engine.
            new_end = replica.core.truncate(self.now)
            if new_end is not None and new_end < replica.step_end_s:
                replica.step_version += 1
                replica.step_end_s = new_end
                replica.pending = replica.core.last_outcome
                self._push(new_end, _Kind.STEP_END, (replica, replica.step_version))
        replica.core.add_request(sub.request, self.now)
        replica.submissions[sub.request.request_id] = sub
        if not replica.busy:
            self._push(self.now, _Kind.STEP_START, replica)

    def _on_step_start(self, replica: SimReplica) -> None:
        if replica.busy or not replica.core.has_work():
            return
        outcome = replica.core.step(self.now)
        self.steps_executed += 1
        replica.step_version += 1
        replica.step_end_s = self.now + outcome.duration_s
        replica.pending = outcome
        self._push(replica.step_end_s, _Kind.STEP_END, (replica, replica.step_version))

    def _on_step_end(self, replica: SimReplica, version: int) -> None:
        if version != replica.step_version:
            return  # superseded by a truncation
        outcome = replica.pending
        replica.step_end_s = None
        replica.pending = None
        for event in outcome.events:
            sub = replica.submissions.get(event.request_id)
            if event.kind is EventKind.FIRST_TOKEN:
                if sub is not None and sub.on_first_token is not None:
                    sub.on_first_token(event.request_id, event.time_s)
            elif event.kind is EventKind.FINISHED:
                replica.submissions.pop(event.request_id, None)
                if self.keep_results:
                    self.results.append(event.result)
                if sub is not None and sub.on_complete is not None:
                    sub.on_complete(event.result)
        if replica.core.has_work():
            self._push(self.now, _Kind.STEP_START, replica)
