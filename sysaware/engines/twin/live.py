"""The twin core driven in wall-clock time: what a Serve replica hosts when its backend is the twin.

The core is clock-free (``step(now, until)`` returns how long the step took); this driver gives it a clock:

    engine clock = (time.monotonic() - t0) x time_scale        (seconds of simulated GPU time; engines/clock.py)

One background task per engine, on the replica's event loop, runs the core back to back: ``step(start)``, then
``await`` until the wall clock reaches the step's end, then deliver its events (first tokens, finished requests,
stream progress), then the next step. Everything runs in one asyncio loop, so the core is never touched by two
coroutines at once.

Two rules keep the live engine equal to the simulated one:

- An arrival (or an abort) stamps itself with the engine clock and first brings the engine to that time: steps the
  driver has not finished yet because it woke late are finished, the ones the engine would have started before the
  arrival are run, and a fast-forwarded decode run in flight is cut at the first step boundary at or after the
  arrival (``core.truncate``). The request then joins the very next step, as on vLLM and as in the simulated
  cluster, whatever the event loop's latency.
- Steps are chained on the engine clock (the next starts where the last ended), not on the wall clock when the
  driver woke up: a late wake-up (timer granularity, a busy loop) is caught up instead of slowing the simulated GPU
  down. The only exceptions: a step never starts before the newest arrival it may serve, and a driver more than
  ``max_lag_wall_s`` behind (a process descheduled that long) gives up the lag rather than burst through it.

The engine clock stands still while the responder decides an arriving request's answer: that CPU time is the
simulation's, not the simulated GPU's (wall-clock latencies still include it).

Runs are also bounded to ``max_run_wall_s`` of wall time, so streams receive tokens at least that often and stats
(which describe the end of the step in flight) are never more than that ahead of the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sysaware.engines.twin.perf.core import EventKind, StepOutcome, TwinEngineCore
from sysaware.engines.clock import EngineClock
from sysaware.engines.types import (
    ChatMessage,
    GenerationRequest,
    GenerationResult,
    ReplicaStats,
    StreamChunk,
    check_served,
)


def emitted_text(text: str, response_tokens: int, num_tokens: int) -> str:
    """The share of ``text`` emitted after ``num_tokens`` of its ``response_tokens`` tokens, by characters.

    The same rule as ``TwinRequest.result`` applies to a capped or aborted request, so every streamed prefix is a
    prefix of the final text.
    """
    if num_tokens >= response_tokens:
        return text
    return text[: len(text) * num_tokens // response_tokens]


@dataclass(eq=False)
class _Tracked:
    """A request the driver owes an answer to."""

    request_id: str
    done: asyncio.Future  # resolves to its GenerationResult when it finishes
    response_text: str  # the whole answer the responder chose
    response_tokens: int  # its length, tokens
    progress: asyncio.Event | None = None  # streams only: set whenever num_tokens grows or the request finishes
    num_tokens: int = 0  # output tokens emitted by the end of the latest delivered step
    # Streams only: num_tokens after each delivered engine step that emitted tokens, not yet streamed (one chunk each).
    steps: deque[int] = field(default_factory=deque)
    admitted_wall_s: float = 0.0  # time.time() when the engine took the request (serving-overhead stamps)
    first_token_wall_s: float | None = None  # time.time() when its first token was handed out


@dataclass
class _StepInFlight:
    start_s: float  # engine clock
    end_s: float  # engine clock; moves earlier when an arrival truncates the run
    is_run: bool  # a fast-forwarded decode run, which an arrival may cut
    delivered: int = 0  # steps of the run whose tokens were already handed to the streams (before its end)
    bases: dict[str, int] = field(default_factory=dict)  # streams' num_tokens when the run started


@dataclass
class DriverStats:
    """How the driver itself behaves, for benchmarks: wake-ups, truncations, the lag it dropped."""

    steps: int = 0  # core.step() calls
    iterations: int = 0  # scheduler iterations, fast-forwarded ones included
    truncations: int = 0  # runs cut short by an arrival or an abort
    dropped_lag_s: float = 0.0  # engine seconds given up because the driver fell behind the wall clock
    late_wakeups: list[float] = field(default_factory=list)  # wall seconds past a step's deadline (last 1000)


class LiveTwinEngine:
    """A ``TwinEngineCore`` served in real time (``time_scale`` x faster), with streaming and cancellation."""

    def __init__(
        self,
        core: TwinEngineCore,
        time_scale: float = 1.0,
        *,
        max_run_wall_s: float = 0.02,
        max_lag_wall_s: float = 0.5,
    ) -> None:
        self.clock = EngineClock(time_scale)  # raises for a scale <= 0
        self.core = core
        self.time_scale = time_scale
        self.max_run_s = max_run_wall_s * time_scale  # engine seconds a fast-forwarded run may cover
        self.max_lag_s = max_lag_wall_s * time_scale  # engine seconds of lag caught up before it is dropped
        self.driver_stats = DriverStats()
        self._clock_s = 0.0  # engine time where the previous step ended (the core's own clock)
        self._newest_arrival_s = 0.0
        self._step: _StepInFlight | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task | None = None
        self._failure: BaseException | None = None

    # ---- clock ------------------------------------------------------------------------------------------------

    def now(self) -> float:
        """The engine clock, s."""
        return self.clock.now()

    def _wall_deadline(self, engine_s: float) -> float:
        return self.clock.wall_deadline(engine_s)

    # ---- requests in --------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Serve ``request`` to the end. Cancelling the caller aborts it in the core (its KV blocks are freed)."""
        tracked = self._admit(request, stream=False)
        try:
            return await tracked.done
        except asyncio.CancelledError:
            self._abort(request.request_id)
            raise

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Serve ``request`` as chunks: one per engine step that emitted tokens for it (as vLLM streams, even when
        the core fast-forwarded a run of steps, and even when the consumer fell behind), the last one carrying the
        result. The first chunk carries wall-clock stamps (engine admission, first token) for the serving-overhead
        metric. A consumer that stops early (closes the generator, or is cancelled) aborts the request.
        """
        tracked = self._admit(request, stream=True)
        assert tracked.progress is not None
        sent_tokens, sent_chars = 0, 0
        try:
            while True:
                while tracked.steps:
                    sent_tokens = tracked.steps.popleft()
                    prefix = emitted_text(tracked.response_text, tracked.response_tokens, sent_tokens)
                    delta, sent_chars = prefix[sent_chars:], len(prefix)
                    yield StreamChunk(text=delta, num_tokens=sent_tokens, stamps_s=self._stamps(tracked))
                if tracked.done.done():
                    break
                await tracked.progress.wait()
                tracked.progress.clear()
            result: GenerationResult = tracked.done.result()
            stamps = self._stamps(tracked)
            yield StreamChunk(result.text[sent_chars:], result.output_tokens, True, result, stamps)
        finally:
            if not tracked.done.done():
                self._abort(request.request_id)

    @staticmethod
    def _stamps(tracked: _Tracked) -> tuple[tuple[str, float], ...]:
        """The engine's serving-overhead stamps (wall clock), on a stream's first chunk only."""
        if not tracked.admitted_wall_s:
            return ()
        first = tracked.first_token_wall_s or time.time()
        stamps = (("engine_admit", tracked.admitted_wall_s), ("engine_first_token", first))
        tracked.admitted_wall_s = 0.0  # stamped once
        return stamps

    def _admit(self, request: GenerationRequest, stream: bool) -> _Tracked:
        wall_in = time.time()
        self.check_health()
        check_served(request, self.core.model)
        self._ensure_driver()
        now = self.now()
        self._catch_up(now)
        t_admit = time.monotonic()
        try:
            self.core.add_request(request, now)  # ValueError for a request that can never be served
        finally:
            # The responder's CPU time (deciding the answer, milliseconds; more on a first call) is the
            # simulation's cost, not the GPU's: the engine clock stands still meanwhile, so it neither shows in
            # this request's TTFT nor slows the steps of the others.
            self.clock.hold(time.monotonic() - t_admit)
        self._newest_arrival_s = max(self._newest_arrival_s, now)
        twin_request = self.core.requests[request.request_id]
        tracked = _Tracked(
            request_id=request.request_id,
            done=asyncio.get_running_loop().create_future(),
            response_text=twin_request.response_text,
            response_tokens=twin_request.response_tokens,
            progress=asyncio.Event() if stream else None,
        )
        tracked.admitted_wall_s = wall_in if stream else 0.0
        self._tracked[request.request_id] = tracked
        assert self._wake is not None
        self._wake.set()
        return tracked

    def _abort(self, request_id: str) -> None:
        """The client went away: drop the request from the core now, freeing its KV blocks."""
        tracked = self._tracked.pop(request_id, None)
        if tracked is None:
            return
        if not tracked.done.done():
            tracked.done.cancel()
        now = self.now()
        self._catch_up(now)  # abort closes a run for good, so it is cut first (it may hold the aborted request)
        self.core.abort(request_id, now)

    # ---- state out ----------------------------------------------------------------------------------------------

    def stats_now(self) -> ReplicaStats:
        """The scheduler's state, stamped with the engine clock (during a step: the state at its end)."""
        return self.core.stats(self.now())

    async def stats(self) -> ReplicaStats:
        return self.stats_now()

    @property
    def num_tracked(self) -> int:
        """Requests admitted and not yet answered or aborted."""
        return len(self._tracked)

    def check_health(self) -> None:
        if self._failure is not None:
            message = f"the twin driver of {self.core.replica_id} stopped: {self._failure!r}"
            raise RuntimeError(message) from self._failure

    # ---- the driver ---------------------------------------------------------------------------------------------

    def _ensure_driver(self) -> None:
        if self._driver is None:
            self._wake = asyncio.Event()
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name=f"twin-{self.core.replica_id}")

    def _start_step(self, until: float | None = None) -> None:
        """Run the core's next step, chained on the engine clock, bounded to one wall-clock horizon."""
        start = max(self._clock_s, self._newest_arrival_s)
        floor = self.now() - self.max_lag_s
        if start < floor:
            self.driver_stats.dropped_lag_s += floor - start
            start = floor
        horizon = start + self.max_run_s
        outcome = self.core.step(start, horizon if until is None else min(until, horizon))
        self.driver_stats.steps += 1
        # The core's own end time (it adds step durations one by one), not start + duration: bit-identical to sim.
        step = self._step = _StepInFlight(start, outcome.end_s, outcome.num_iterations > 1)
        if step.is_run:
            step.bases = {t.request_id: t.num_tokens for t in self._tracked.values() if t.progress is not None}

    def _next_step_end(self, step: _StepInFlight) -> tuple[float, bool]:
        """(engine time of the next end to wake up at, whether it is a step inside the run): inside a run, each step
        end while a stream is waiting for tokens, so chunks leave at the times a real engine would send them."""
        if step.is_run and step.bases:
            ends = self.core.run_step_ends_s()
            if step.delivered < len(ends) - 1:
                return ends[step.delivered], True
        return step.end_s, False

    def _deliver_run_steps(self, step: _StepInFlight, upto: int) -> None:
        """Hand the streams the tokens of the run's steps up to ``upto`` (exclusive of the run's last step, which
        ``_finish_step`` delivers with its events): a request in the run gains one token a step."""
        if not step.bases or step.delivered >= upto:
            return
        outcome = self.core.last_outcome
        finished = {e.request_id: e.result.output_tokens for e in (outcome.events if outcome else ())
                    if e.kind is EventKind.FINISHED and e.result is not None}
        requests = self.core.requests
        now_wall = time.time()
        for k in range(step.delivered + 1, upto + 1):
            for rid, base in step.bases.items():
                tracked = self._tracked.get(rid)
                if tracked is None:
                    continue
                twin_request = requests.get(rid)
                final = twin_request.num_output_tokens if twin_request is not None else finished.get(rid, base)
                count = min(final, base + k)
                if count > tracked.num_tokens:
                    self._emit(tracked, count, now_wall)
        step.delivered = upto

    @staticmethod
    def _emit(tracked: _Tracked, count: int, wall_s: float) -> None:
        if tracked.first_token_wall_s is None:
            tracked.first_token_wall_s = wall_s
        tracked.num_tokens = count
        tracked.steps.append(count)
        assert tracked.progress is not None
        tracked.progress.set()

    def _finish_step(self) -> None:
        """The step in flight has ended (on the engine clock): hand its events out."""
        step = self._step
        assert step is not None
        outcome = self.core.last_outcome  # a truncation replaced it with the shorter run
        assert outcome is not None
        self._deliver_run_steps(step, len(self.core.run_step_ends_s()) - 1)
        self._clock_s = step.end_s
        self._step = None
        self.driver_stats.iterations += outcome.num_iterations
        self._deliver(outcome)

    def _catch_up(self, t: float) -> None:
        """Bring the engine to engine time ``t`` before an external event (an arrival, an abort) happens there.

        The driver may be behind: steps that ended before ``t`` are finished and the ones the engine would have
        started before ``t`` are run, exactly as the simulated driver does with ``until=t``; a fast-forwarded run
        that spans ``t`` is cut at the first step boundary at or after ``t``. Afterwards no step starts before
        ``t`` that could serve the new event, and none that started before ``t`` is skipped.
        """
        while True:
            step = self._step
            if step is not None:
                if step.end_s > t:
                    if step.is_run:
                        new_end = self.core.truncate(t)
                        if new_end is not None and new_end < step.end_s:
                            step.end_s = new_end
                            self.driver_stats.truncations += 1
                    break
                self._finish_step()
            if not self.core.has_work() or max(self._clock_s, self._newest_arrival_s) >= t:
                break
            self._start_step(until=t)
        if self._wake is not None:
            self._wake.set()  # the driver's deadline may have moved

    async def _drive(self) -> None:
        """Start a step, sleep until the wall clock reaches its end (an arrival may move or finish it meanwhile),
        hand its events out, repeat; sleep while there is no work."""
        assert self._wake is not None
        wake = self._wake
        try:
            while True:
                step = self._step
                if step is None:
                    if self.core.has_work():
                        self._start_step()
                    else:
                        wake.clear()
                        await wake.wait()
                    continue
                end_s, inside_run = self._next_step_end(step)
                delay = self._wall_deadline(end_s) - time.monotonic()
                if delay <= 0 and inside_run:
                    self._deliver_run_steps(step, step.delivered + 1)
                    continue
                if delay > 0:
                    wake.clear()
                    try:
                        async with asyncio.timeout(delay):
                            await wake.wait()
                    except TimeoutError:
                        pass
                    continue  # look again: the step may have been cut or finished by _catch_up
                late = self.driver_stats.late_wakeups
                late.append(-delay)
                if len(late) > 1000:
                    del late[:500]
                self._finish_step()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug in the core: fail every waiter instead of leaving them hanging
            self._failure = e
            for tracked in self._tracked.values():
                if not tracked.done.done():
                    tracked.done.set_exception(RuntimeError(f"twin driver failed: {e!r}"))
                if tracked.progress is not None:
                    tracked.progress.set()
            self._tracked.clear()
            raise

    def _deliver(self, outcome: StepOutcome) -> None:
        """Hand the step's events to the waiting requests; streams also learn how many tokens they have."""
        for event in outcome.events:
            if event.kind is not EventKind.FINISHED:
                continue
            tracked = self._tracked.pop(event.request_id, None)
            if tracked is None:
                continue  # aborted meanwhile
            if not tracked.done.done():
                tracked.done.set_result(event.result)
            if tracked.progress is not None:
                if tracked.first_token_wall_s is None:
                    tracked.first_token_wall_s = time.time()
                tracked.progress.set()
        requests = self.core.requests
        now_wall = time.time()
        for tracked in self._tracked.values():
            if tracked.progress is None:
                continue
            twin_request = requests.get(tracked.request_id)
            if twin_request is not None and twin_request.num_output_tokens > tracked.num_tokens:
                self._emit(tracked, twin_request.num_output_tokens, now_wall)

    async def close(self) -> None:
        """Stop the driver; requests still in flight are aborted (their callers see CancelledError)."""
        for request_id in list(self._tracked):
            self._abort(request_id)
        if self._driver is not None:
            self._driver.cancel()
            try:
                await self._driver
            except (asyncio.CancelledError, Exception):
                pass
