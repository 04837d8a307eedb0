"""True latencies for the oracle, by forking the simulated cluster (simulation only).

A fork is a deep copy of the cluster: every replica's scheduler, KV pool and in-flight requests, the event heap
and the background clients with their random generators, so the copy's future is the real one's. Shared, not
copied: the responders, step-time models, settings and the background's task list (read-only). The driver's own
callbacks become no-ops in the copy (``DriverCallback.__deepcopy__``), so the fork carries the other workflows'
calls already in flight but not the calls they would make later, nor workflows that have not arrived yet: the
oracle knows the background exactly and the other workflows up to now.

One fork per model, not per candidate: every strategy's answer is decided by the responder (a pure function of
the request), so its length is known up front; the fork runs only the longest candidate and reads each shorter
one's latency off the time its last token would have come (token k of the longest). The prompts differ by the
strategy sentence only (a few tokens of prefill). The other models' background clients stop in the fork (their
replicas drain), since they cannot affect this model's replica.

Cost: at every decision, per model, a deep copy of the whole cluster plus simulating the probe model's replica
(with its background) until the longest candidate finishes or the horizon passes. ``forks`` and ``fork_wall_s``
count it (the evaluation's cost.csv). Measured on the default pool, 40 workflows (139 decisions, 5 models), on a
busy 2-core machine: 19 ms per fork at N=1 background client per model, 73 ms at N=50, 0.16 s at N=150, 0.24 s at
N=300, i.e. 14 s, 51 s, 110 s and 213 s of forking against 0.2-15 s for simulating any other policy's whole run.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from sysaware.engines.types import GenerationRequest, GenerationResult
from sysaware.sim.backend import SimBackend
from sysaware.sim.cluster import SimulatedCluster


class ForkableDriver(Protocol):
    """What a forecaster reads of the driver it forecasts for (the simulated driver in orchestration)."""

    backend: SimBackend
    cluster: SimulatedCluster
    loads: dict[str, Any]  # model -> its ClosedLoopLoad


class ForkForecaster:
    def __init__(self, driver: ForkableDriver, chunk_s: float = 0.5) -> None:
        self.driver = driver
        self.chunk_s = chunk_s  # virtual seconds simulated between checks for the probe's end
        self.forks = 0
        self.fork_wall_s = 0.0

    def forecast(self, requests: Sequence[GenerationRequest], horizon_s: float | None = None) -> list[float]:
        latency: dict[str, float] = {}
        by_model: dict[str, list[GenerationRequest]] = {}
        for r in requests:
            by_model.setdefault(r.model, []).append(r)
        responder = self.driver.backend.responder
        for model, reqs in by_model.items():
            lengths = [min(responder.respond(r).output_tokens, r.max_tokens) for r in reqs]
            longest = reqs[max(range(len(reqs)), key=lengths.__getitem__)]
            token_times, arrival = self._run_fork(longest, horizon_s)
            for r, n in zip(reqs, lengths):
                latency[r.request_id] = token_times[n - 1] - arrival if len(token_times) >= n else math.inf
        return [latency[r.request_id] for r in requests]

    def fork(self, keep_background_of: str | None = None):
        """A deep copy of the driver's cluster; background clients of models other than ``keep_background_of``
        stop sending in the copy (all keep sending when it is None)."""
        cluster = self.driver.cluster
        memo: dict[int, object] = {}
        for replica in cluster.replicas:
            core = replica.core
            for shared in (core.responder, core.step_time, core.settings, core.tokenizer_count):
                memo[id(shared)] = shared
        for load in self.driver.loads.values():
            memo[id(load.completed)] = []
            tasks = getattr(load.factory, "tasks", None)
            if tasks is not None:
                memo[id(tasks)] = tasks
        forked = copy.deepcopy(cluster, memo)
        if keep_background_of is not None:
            for model, load in self.driver.loads.items():
                copied = memo.get(id(load))
                if model != keep_background_of and copied is not None:
                    copied.stop_s = forked.now
        return forked

    def _run_fork(self, probe: GenerationRequest, horizon_s: float | None) -> tuple[Sequence[float], float]:
        """Token emission times of ``probe`` sent now in a fork (those up to the horizon), and its arrival time."""
        started = time.perf_counter()
        forked = self.fork(keep_background_of=probe.model)
        self.forks += 1
        probe = GenerationRequest(
            f"oracle-probe/{self.forks}/{probe.request_id}", probe.model, probe.messages, probe.max_tokens, probe.temperature, probe.seed
        )
        done: list[GenerationResult] = []
        forked.submit(probe, on_complete=done.append)
        deadline = math.inf if horizon_s is None else forked.now + horizon_s
        while not done and forked.now < deadline:
            forked.run(until=min(forked.now + self.chunk_s, deadline))
        self.fork_wall_s += time.perf_counter() - started
        if done:
            return done[0].token_times_s, done[0].arrival_s
        # Not finished within the horizon: cancel it in the copy to read the tokens it emitted so far.
        for replica in forked.replicas:
            if probe.request_id in replica.core.requests:
                partial = replica.core.abort(probe.request_id, forked.now)
                return [t for t in partial.token_times_s if t <= forked.now], partial.arrival_s
        return [], forked.now
