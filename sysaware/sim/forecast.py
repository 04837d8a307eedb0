"""True latencies for the oracle, by forking the simulated cluster (simulation only).

A fork is a deep copy of the cluster: every replica's scheduler, KV pool and in-flight requests, the event heap
and the background clients with their random generators, so the copy's future is the real one's. Only what a
simulation changes is copied: a request's token spans and batch (``TwinRequest.__deepcopy__``), a submission's
callbacks (``Submission.__deepcopy__``); its prompt, answer and request are shared, as are the responders,
step-time models, settings, the background's task list and the request factory's memo of built prompts (a pure
function's memo; thousands of message tuples at steady state, most of a fork's copying when it was copied). The
driver's own callbacks become no-ops in the copy (``DriverCallback.__deepcopy__``), so the fork carries the other
workflows' calls already in flight but not the calls they would make later, nor workflows that have not arrived
yet: the oracle knows the background exactly and the other workflows up to now. A fork stops at the probe's last
token (its callback pauses the copy): nothing after it changes the forecast.

One fork per model, not per candidate: every strategy's answer is decided by the responder (a pure function of
the request), so its length is known up front; the fork runs only the longest candidate and reads each shorter
one's latency off the time its last token would have come (token k of the longest). The prompts differ by the
strategy sentence only (a few tokens of prefill).

Only the probed model is forked (``fork_model``): its replicas, its router, its background load and the heap's
events that belong to them. Nothing of another model can change when this model's replica serves the probe (each
model has its own replicas, router and load; a workflow's next call waits for this one, whose callbacks are no-ops
in a fork), so the answer is exactly the whole cluster's fork's, at a fraction of the copying and simulating: the
other models' replicas and clients are neither copied nor run. (``fork`` still copies the whole cluster.)

Cost: at every decision, per model, a deep copy of that model's replicas and load plus simulating them until the
longest candidate finishes or the horizon passes. ``forks`` and ``fork_wall_s`` count it (the evaluation's
cost.csv). Measured on uniform-150 (default pool, N=150 per model, ~149 requests in flight per replica), 20
workflows, 395 forks, on a busy 2-core machine: 175 s of forking (0.44 s a fork, nearly all ``copy.deepcopy``)
before the copies shared prompts and requests and stopped at the probe's end, 34 s after (86 ms a fork, wall);
copying one model's replica and load alone is ~4.5 ms CPU. ``benchmarks/bench_eval_cell.py`` prints the
oracle/greedy cell ratio.
"""

from __future__ import annotations

import copy
import heapq
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from sysaware.engines.types import GenerationRequest, GenerationResult
from sysaware.sim.backend import SimBackend
from sysaware.sim.cluster import _ARRIVAL, _TIMER, SimulatedCluster


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
        memo = self._shared()
        forked = copy.deepcopy(cluster, memo)
        if keep_background_of is not None:
            for model, load in self.driver.loads.items():
                copied = memo.get(id(load))
                if model != keep_background_of and copied is not None:
                    copied.stop_s = forked.now
        return forked

    def _shared(self) -> dict[int, object]:
        """What a fork shares with the real cluster rather than copies (read-only, or replaced)."""
        memo: dict[int, object] = {}
        for replica in self.driver.cluster.replicas:
            core = replica.core
            for shared in (core.responder, core.step_time, core.settings, core.tokenizer_count):
                memo[id(shared)] = shared
        for load in self.driver.loads.values():
            memo[id(load.completed)] = []
            # The factory is copied (its request counter moves on in the fork), its tasks and its memo of built
            # prompts are not: a pure function's memo (thousands of message tuples at steady state, most of a fork's
            # copying when it was copied) changes no result by being shared.
            for name in ("tasks", "_messages"):
                shared = getattr(load.factory, name, None)
                if shared is not None:
                    memo[id(shared)] = shared
        return memo

    def fork_model(self, model: str) -> SimulatedCluster:
        """A cluster of ``model``'s replicas alone: deep copies of them, of their router and background load, and of
        the pending events that belong to them (their steps, arrivals for ``model``, the load's own timers)."""
        cluster = self.driver.cluster
        replicas = cluster.by_model[model]
        mine = {id(r) for r in replicas}

        def belongs(entry: tuple) -> bool:
            kind, a = entry[1], entry[3]
            if kind == _ARRIVAL:
                return a.request.model == model
            if kind == _TIMER:
                return getattr(getattr(a, "__self__", None), "model", None) == model
            return id(a) in mine  # step starts, step ends and events of a replica

        sub = SimulatedCluster([], fast_forward=cluster.fast_forward)  # filled below, once the copies point at it
        memo = self._shared()
        memo[id(cluster)] = sub  # the copied load sends to the sub-cluster
        load = self.driver.loads.get(model)
        heap = [e for e in cluster._heap if belongs(e)]
        copied_replicas, copied_heap, _, router, seq = copy.deepcopy(
            (replicas, heap, load, cluster._routers[model], cluster._seq), memo
        )
        heapq.heapify(copied_heap)  # a filtered heap is not a heap
        sub.replicas = copied_replicas
        sub.by_model = {model: copied_replicas}
        sub._routers = {model: router}
        sub._heap = copied_heap
        sub._seq = seq
        sub.now = cluster.now
        sub.keep_results = False
        return sub

    def _run_fork(self, probe: GenerationRequest, horizon_s: float | None) -> tuple[Sequence[float], float]:
        """Token emission times of ``probe`` sent now in a fork (those up to the horizon), and its arrival time."""
        started = time.perf_counter()
        forked = self.fork_model(probe.model)
        self.forks += 1
        probe = GenerationRequest(
            f"oracle-probe/{self.forks}/{probe.request_id}", probe.model, probe.messages, probe.max_tokens, probe.temperature, probe.seed
        )
        done: list[GenerationResult] = []

        def finished(result: GenerationResult) -> None:
            done.append(result)
            forked.pause()  # nothing after the probe's last token matters: stop there, not at the chunk's end

        forked.submit(probe, on_complete=finished)
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
