"""Background load generators on the simulated cluster's virtual clock.

Closed loop: N clients, each sends a request, waits for its answer (plus an optional think time) and sends the next,
so N requests are always in the system: the load level of the research notes (N = 1, 10, 50). Open loop: Poisson
arrivals at a fixed rate, whatever the system does, which is how overload builds queues without bound.

Every load draws its requests from one seeded generator, in order, so their answers are looked up in a file built
at first use (``answer_stream.py``) rather than composed, when the factory and the responder can key them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sysaware.engines.types import GenerationResult
from sysaware.sim.answer_stream import stream_for
from sysaware.sim.cluster import SimulatedCluster
from sysaware.sim.workload import RequestFactory


def _open_stream(load, key: str) -> None:
    """The load's k-th request is the same in every simulation (its generator, seeded by ``key``, draws requests and
    gaps in a fixed order): its answer may be on file already (``answer_stream``)."""
    load._stream = stream_for(load.cluster.responder, load.model, load.factory, key)
    load._sent = 0


def _submit_next(load, t: float, on_complete) -> None:
    """Draw the load's next request and send it at ``t``, with its answer when the stream has it."""
    request = load.factory(load.model, load._rng)
    stream = load._stream
    if stream is None:
        load.cluster.submit(request, at=t, on_complete=on_complete)
    else:
        load._sent = index = load._sent + 1
        load.cluster.submit(request, at=t, on_complete=on_complete, response=stream.answer(index - 1, request))


@dataclass
class ClosedLoopLoad:
    """``concurrency`` clients hammering one model back to back until ``stop_s``."""

    cluster: SimulatedCluster
    model: str
    concurrency: int
    factory: RequestFactory
    seed: int = 0
    think_time_s: float = 0.0
    stop_s: float = float("inf")
    completed: list[GenerationResult] = field(default_factory=list)

    def start(self, at: float = 0.0) -> "ClosedLoopLoad":
        if self.concurrency < 0:
            raise ValueError("concurrency must be >= 0")
        self._rng = random.Random(f"closed/{self.model}/{self.seed}")
        _open_stream(self, f"closed/{self.model}/{self.seed}")
        for i in range(self.concurrency):
            # Stagger the first requests by a few ms so the clients do not arrive in lock-step.
            self._send(at + i * 0.002)
        return self

    def _send(self, t: float) -> None:
        if t >= self.stop_s:
            return
        _submit_next(self, t, self._on_complete)

    def _on_complete(self, result: GenerationResult) -> None:
        self.completed.append(result)
        self._send(self.cluster.now + self.think_time_s)


@dataclass
class PoissonLoad:
    """Open-loop arrivals at ``rate_per_s`` to one model until ``stop_s``."""

    cluster: SimulatedCluster
    model: str
    rate_per_s: float
    factory: RequestFactory
    seed: int = 0
    stop_s: float = float("inf")
    completed: list[GenerationResult] = field(default_factory=list)

    def start(self, at: float = 0.0) -> "PoissonLoad":
        if self.rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self._rng = random.Random(f"poisson/{self.model}/{self.seed}")
        _open_stream(self, f"poisson/{self.model}/{self.seed}/{self.rate_per_s!r}/{at!r}")
        self.cluster.call_at(at + self._rng.expovariate(self.rate_per_s), self._arrive)
        return self

    def _arrive(self, t: float) -> None:
        if t >= self.stop_s:
            return
        _submit_next(self, t, self._record)
        self.cluster.call_at(t + self._rng.expovariate(self.rate_per_s), self._arrive)

    def _record(self, result: GenerationResult) -> None:
        # A method, not ``self.completed.append``: deepcopy treats a builtin bound method as atomic, so a forked
        # cluster's in-flight requests would append their results to this (the real) load's list.
        self.completed.append(result)


@dataclass
class PhasedPoissonLoad:
    """Open-loop arrivals to one model whose rate cycles through ``phases`` ((rate per s, duration s), ...): bursts
    and lulls. Within a phase arrivals are Poisson; a gap drawn at one phase's rate that crosses into the next is
    redrawn from the boundary at the next phase's rate (memorylessness makes that exact)."""

    cluster: SimulatedCluster
    model: str
    phases: tuple[tuple[float, float], ...]
    factory: RequestFactory
    seed: int = 0
    stop_s: float = float("inf")
    completed: list[GenerationResult] = field(default_factory=list)

    def start(self, at: float = 0.0) -> "PhasedPoissonLoad":
        if not self.phases or any(rate <= 0 or length <= 0 for rate, length in self.phases):
            raise ValueError("phases need a positive rate and duration each")
        self._rng = random.Random(f"phased/{self.model}/{self.seed}")
        _open_stream(self, f"phased/{self.model}/{self.seed}/{self.phases!r}/{at!r}")
        self._t0 = at
        self._cycle_s = sum(length for _, length in self.phases)
        self._schedule(at)
        return self

    def phase_at(self, t: float) -> tuple[float, float]:
        """(rate, end of the phase) at virtual time ``t``."""
        offset = (t - self._t0) % self._cycle_s
        start = t - offset
        for rate, length in self.phases:
            if offset < length:
                return rate, start + length
            offset -= length
            start += length
        return self.phases[-1][0], start  # float edge: the cycle's very end

    def _schedule(self, t: float) -> None:
        while t < self.stop_s:
            rate, end = self.phase_at(t)
            nxt = t + self._rng.expovariate(rate)
            if nxt < end:
                self.cluster.call_at(nxt, self._arrive)
                return
            t = end

    def _arrive(self, t: float) -> None:
        if t >= self.stop_s:
            return
        _submit_next(self, t, self._record)
        self._schedule(t)

    def _record(self, result: GenerationResult) -> None:
        self.completed.append(result)  # a method for forks' sake (see PoissonLoad._record)
