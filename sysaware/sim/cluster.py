"""The simulated cluster: many twin replicas on one virtual clock.

One scheduler, two clocks (DESIGN.md): the twin core never reads a clock; here a discrete-event loop advances a
virtual one. Replicas run fast-forwarded decode runs, and a step that admits a request goes straight on with the run
behind it (``run_after_prefill``); an arrival that lands inside a run truncates it at the next step boundary, exactly
where vLLM's engine loop would pick the new request up. With ``fast_forward=False`` every replica runs one iteration
per event instead: slower, and the results are bit-identical (tests compare the two).

Event order at equal times is (time, kind, sequence number): a step's end is handled before arrivals at that
instant (so a request finishing at t frees its slot for a request arriving at t), and a replica starts its next step
only after every arrival at that instant has joined its queue.

    heap: (t, EVENT,      seq, replica, event)      -> an engine event inside a run (a first token), at its own time
          (t, STEP_END,   seq, replica, version)    -> deliver the events at the run's end, then STEP_START at t
          (t, ARRIVAL,    seq, submission, None)    -> route, add to the core (truncating a run in flight),
                                                       STEP_START if idle
          (t, TIMER,      seq, callback, None)      -> load generators' own clocks (Poisson gaps, think times)
          (t, STEP_START, seq, replica, None)       -> core.step(t) and push its EVENTs and STEP_END

Entries are plain tuples (the sequence number keeps the payloads from ever being compared).

Pausing at a decision. A callback that needs an answer from outside the simulation (an external agent choosing a
workflow's next model) calls ``pause()``: ``run`` returns right after the event being handled, with the clock still
at that event's time, and the caller resumes with ``run`` once it has its answer. A submission decided during the
pause keeps the place in the event order it would have had if it had been made inside the callback: the callback
takes a place with ``reserve_order()`` and the submission passes it as ``order``. So an answer that comes back later
(in wall time, at the same virtual instant) changes nothing in the simulation.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from sysaware.config import PoolConfig
from sysaware.engines.twin.perf.core import EngineEvent, EventKind, TwinEngineCore
from sysaware.engines.twin.protocols import Responder, Response
from sysaware.engines.types import GenerationRequest, GenerationResult, ReplicaStats
from sysaware.sim.routing import ReplicaRouter, make_router

CompletionCallback = Callable[[GenerationResult], None]
FirstTokenCallback = Callable[[str, float], None]


# Event kinds: plain ints, the second field of every heap entry (the order breaks ties at equal times).
_EVENT, _STEP_END, _ARRIVAL, _TIMER, _STEP_START = range(5)
_FIRST_TOKEN, _FINISHED, _PREEMPTED = EventKind.FIRST_TOKEN, EventKind.FINISHED, EventKind.PREEMPTED


@dataclass(slots=True)
class Submission:
    request: GenerationRequest
    on_complete: CompletionCallback | None = None
    on_first_token: FirstTokenCallback | None = None
    replica_index: int | None = None  # pin to one replica of the model; None = the router decides
    response: Response | None = None  # the answer, when the sender knows it already (None: the responder decides)

    def __deepcopy__(self, memo: dict) -> "Submission":
        # A fork (sim/forecast.py) shares the request (frozen: its prompt is most of a fork's copying otherwise) and
        # the response (immutable); the callbacks are copied, so a fork's load or driver answers to the fork.
        copied = Submission(
            self.request,
            copy.deepcopy(self.on_complete, memo),
            copy.deepcopy(self.on_first_token, memo),
            self.replica_index,
            self.response,
        )
        memo[id(self)] = copied
        return copied


@dataclass(slots=True)
class SimReplica:
    """One twin replica and the bookkeeping of the step (or run) it is executing."""

    core: TwinEngineCore
    model: str
    index: int
    step_end_s: float | None = None  # end of the step (or run) in flight; None when idle
    step_version: int = 0  # bumps on truncation, so a superseded STEP_END in the heap is ignored
    start_pending: bool = False  # a STEP_START is on the heap
    end_events: list[EngineEvent] = field(default_factory=list)  # events at step_end_s, delivered by STEP_END
    submissions: dict[str, Submission] = field(default_factory=dict)

    @property
    def replica_id(self) -> str:
        return self.core.replica_id

    @property
    def busy(self) -> bool:
        return self.step_end_s is not None


class SimulatedCluster:
    """Twin replicas of a pool on a virtual clock, with per-model routing."""

    def __init__(
        self, replicas: list[SimReplica], router: str = "least_loaded", seed: int = 0, fast_forward: bool = True
    ):
        self.replicas = replicas
        self.by_model: dict[str, list[SimReplica]] = {}
        for r in replicas:
            self.by_model.setdefault(r.model, []).append(r)
        self._routers: dict[str, ReplicaRouter] = {m: make_router(router, seed) for m in self.by_model}
        self.fast_forward = fast_forward  # False: one iteration per step() call (slow; for checks)
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.steps_executed = 0  # core.step() calls: the simulation's cost
        self.runs_truncated = 0  # runs cut short by an arrival inside them
        self.results: list[GenerationResult] = []
        self.keep_results = True
        self._pause_requested = False  # set by pause(); run() returns after the event being handled

    # --- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pool(
        cls,
        pool: PoolConfig,
        responder: Responder | None = None,
        router: str = "least_loaded",
        seed: int = 0,
        fast_forward: bool = True,
    ) -> "SimulatedCluster":
        if responder is None:
            from sysaware.engines.twin.responder.twin_responder import TwinResponder

            responder = TwinResponder(pool)
        replicas = []
        for model in pool.models:
            for i in range(model.replicas):
                core = TwinEngineCore.for_deployment(model, pool, replica_id=f"{model.name}/{i}", responder=responder)
                replicas.append(SimReplica(core=core, model=model.name, index=len(replicas)))
        return cls(replicas, router=router, seed=seed, fast_forward=fast_forward)

    @property
    def models(self) -> list[str]:
        return list(self.by_model)

    @property
    def responder(self) -> Responder | None:
        """The responder every replica shares (None if they do not share one)."""
        responders = {id(r.core.responder): r.core.responder for r in self.replicas}
        return next(iter(responders.values())) if len(responders) == 1 else None

    # --- public API ----------------------------------------------------------------------------------------------
    def submit(
        self,
        request: GenerationRequest,
        at: float | None = None,
        on_complete: CompletionCallback | None = None,
        on_first_token: FirstTokenCallback | None = None,
        replica_index: int | None = None,
        order: int | None = None,
        response: Response | None = None,
    ) -> None:
        """Schedule ``request`` to arrive at virtual time ``at`` (default: now). ``order``: a place taken earlier
        with ``reserve_order()`` (default: a new one, after every event scheduled so far). ``response``: its answer,
        when the caller has it (it must be what the replicas' responder says to ``request``; background loads look
        theirs up in ``answer_stream``)."""
        if request.model not in self.by_model:
            raise KeyError(f"unknown model {request.model!r}; known: {self.models}")
        t = self.now if at is None else at
        if t < self.now:
            raise ValueError(f"cannot submit in the past: at={t} < now={self.now}")
        sub = Submission(request, on_complete, on_first_token, replica_index, response)
        heapq.heappush(self._heap, (t, _ARRIVAL, next(self._seq) if order is None else order, sub, None))

    def reserve_order(self) -> int:
        """A place in the order of events at equal times, for a submission that is decided later at the same
        virtual instant (see the module docstring); pass it to ``submit`` as ``order``, once."""
        return next(self._seq)

    def pause(self) -> None:
        """Make the ``run`` in progress return after the event being handled, without moving the clock further
        (for a callback that needs an answer from outside the simulation). Outside a run it has no effect."""
        self._pause_requested = True

    def call_at(self, t: float, callback: Callable[[float], None]) -> None:
        """Run ``callback(t)`` at virtual time ``t`` (load generators' timers)."""
        heapq.heappush(self._heap, (max(t, self.now), _TIMER, next(self._seq), callback, None))

    def stats(self, model: str | None = None) -> list[ReplicaStats]:
        """Every replica's stats now (or one model's), as the telemetry actor would see them (inside a
        fast-forwarded run: the state at the next step boundary, as with one iteration per step)."""
        reps = self.replicas if model is None else self.by_model[model]
        return [r.core.stats(self.now) for r in reps]

    def run(self, until: float | None = None, max_events: int | None = None) -> bool:
        """Process events in time order until the heap is empty or the next event is past ``until`` (the clock
        then moves to ``until``), or until a callback calls ``pause()`` (the clock stays at that event's time).
        True when it paused."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        self._pause_requested = False
        while heap:
            t = heap[0][0]
            if until is not None and t > until:
                break
            _, kind, _, a, b = pop(heap)
            self.now = t
            if kind == _STEP_START:
                self._on_step_start(a)
            elif kind == _STEP_END:
                self._on_step_end(a, b)
            elif kind == _ARRIVAL:
                self._on_arrival(a)
            elif kind == _TIMER:
                a(t)
            else:
                self._deliver(a, b)
            if self._pause_requested:
                self._pause_requested = False
                return True
            n += 1
            if max_events is not None and n >= max_events:
                return False
        if until is not None:
            self.now = max(self.now, until)
        return False

    def idle(self) -> bool:
        return not self._heap

    # --- event handlers -------------------------------------------------------------------------------------------
    def _route(self, sub: Submission, reps: list[SimReplica]) -> SimReplica:
        if sub.replica_index is not None:
            return reps[sub.replica_index]
        return reps[self._routers[sub.request.model].choose([r.core.stats(self.now) for r in reps])]

    def _on_arrival(self, sub: Submission) -> None:
        reps = self.by_model[sub.request.model]
        replica = reps[0] if len(reps) == 1 else self._route(sub, reps)
        now = self.now
        if replica.step_end_s is not None and replica.step_end_s > now:
            # The replica is inside a fast-forwarded decode run: cut it at the first step boundary at or after now,
            # so the new request is scheduled in the very next step, as on the real engine.
            new_end = replica.core.truncate(now)
            if new_end is not None:
                self.runs_truncated += 1
                replica.step_version += 1
                replica.step_end_s = new_end
                # The cut steps had no events but the run's last; the call's first step's events (before now) are
                # on the heap already.
                replica.end_events = []
                heapq.heappush(self._heap, (new_end, _STEP_END, next(self._seq), replica, replica.step_version))
        replica.core.add_request(sub.request, now, sub.response)
        sub.response = None  # the core keeps what it needs
        replica.submissions[sub.request.request_id] = sub
        if replica.step_end_s is None and not replica.start_pending:
            replica.start_pending = True
            heapq.heappush(self._heap, (now, _STEP_START, next(self._seq), replica, None))

    def _on_step_start(self, replica: SimReplica) -> None:
        replica.start_pending = False
        core = replica.core
        if replica.step_end_s is not None or not core.has_work():
            return
        now = self.now
        if self.fast_forward:
            outcome = core.step(now, run_after_prefill=True)
        else:
            outcome = core.step(now, until=now)  # no step but the first starts before `now`
        self.steps_executed += 1
        end = outcome.end_s
        replica.step_version += 1
        replica.step_end_s = end
        heap, seq = self._heap, self._seq
        end_events = outcome.events
        if end_events and end_events[0].time_s < end:
            # Events before the end (the first step's, ahead of a run): each is delivered at its own time, if
            # anybody listens (a first token without an on_first_token callback has nothing to deliver).
            later = []
            submissions = replica.submissions
            for event in end_events:
                if event.time_s < end:
                    kind = event.kind
                    if kind is _FINISHED or (
                        kind is _FIRST_TOKEN
                        and (sub := submissions.get(event.request_id)) is not None
                        and sub.on_first_token is not None
                    ):
                        heapq.heappush(heap, (event.time_s, _EVENT, next(seq), replica, event))
                else:
                    later.append(event)
            end_events = later
        replica.end_events = end_events
        heapq.heappush(heap, (end, _STEP_END, next(seq), replica, replica.step_version))

    def _on_step_end(self, replica: SimReplica, version: int) -> None:
        if version != replica.step_version:
            return  # superseded by a truncation
        events = replica.end_events
        replica.step_end_s = None
        replica.end_events = []
        for event in events:
            self._deliver(replica, event)
        if not replica.start_pending and replica.core.has_work():
            replica.start_pending = True
            heapq.heappush(self._heap, (self.now, _STEP_START, next(self._seq), replica, None))

    def _deliver(self, replica: SimReplica, event: EngineEvent) -> None:
        kind = event.kind
        if kind is _FIRST_TOKEN:
            sub = replica.submissions.get(event.request_id)
            if sub is not None and sub.on_first_token is not None:
                sub.on_first_token(event.request_id, event.time_s)
        elif kind is _FINISHED:
            sub = replica.submissions.pop(event.request_id, None)
            if self.keep_results:
                self.results.append(event.result)
            if sub is not None and sub.on_complete is not None:
                sub.on_complete(event.result)
