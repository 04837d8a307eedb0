"""The twin engine core: one vLLM v1 replica's scheduler and KV cache, driven step by step, without a clock.

``add_request(req, now)``, ``step(now, until) -> StepOutcome``, ``abort(id, now)``, ``stats(now)``: the caller owns
time. A live driver sleeps ``duration_s / time_scale`` between steps; a simulated driver advances a virtual clock on
an event heap. Every time the core reports is ``now`` plus the durations of the steps it ran, added one step at a
time, so a fast-forwarded run stamps exactly the floats that stepping one iteration per call would.

Simulation cost follows events, not tokens: a step that is a steady decode batch (see
``Scheduler.next_step_is_steady``) is fast-forwarded over all the identical steps that follow, up to the first
internal event (a request finishing, a block allocation that would fail) and never starting a step at or after
``until``, the driver's next external event. The run's durations come from one vectorised
``StepTimeModel.decode_run_s`` call, its token times are one slice of the replica's ``StepTimeline``, and its
requests are not touched one by one (``DecodeBatch``). With ``run_after_prefill``, a step that admits or prefills
is followed in the same call by the steady run behind it; its events then carry their own times (a FIRST_TOKEN at
the first step's end, FINISHED at the run's end) and a driver delivers each at its ``time_s``.

A driver that cannot know its next event in advance calls ``step(now)`` and, when an arrival lands inside the run,
``truncate(t)``: the result is the same as ``step(now, until=t)``. Until then, ``stats(t)`` reports the state at
``t`` as if the run had been cut there.
"""

from __future__ import annotations

import enum
import itertools
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from typing import Callable

from sysaware.config import ModelDeployment, PoolConfig, TwinSettings
from sysaware.engines.tokens import PROMPT_COUNT_CACHE_SIZE, count_prompt_tokens, count_tokens
from sysaware.engines.twin.perf.kv_cache import BlockPool, num_gpu_blocks_for
from sysaware.engines.twin.perf.length_floor import at_least, length_floor
from sysaware.engines.twin.protocols import BatchShape, Responder, Response, StepTimeModel
from sysaware.engines.twin.perf.request import StepTimeline, TwinRequest
from sysaware.engines.twin.perf.scheduler import DecodeRun, Scheduler
from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult, ReplicaStats

# Iteration times a replica keeps before it drops those no live request needs (small: forks copy them).
TIMELINE_COMPACT_AT = 8192


@lru_cache(maxsize=None)
def shared_count_cache(count: Callable[[str], int]) -> Callable[[str], int]:
    """A memo of ``count`` shared by every replica that counts with it: agents resend the same system prompts and
    tasks to every model, and a real tokenizer costs tens of microseconds a text. (A pure function's memo: sharing
    it changes no result.)"""
    return lru_cache(maxsize=PROMPT_COUNT_CACHE_SIZE)(count)


class EventKind(enum.IntEnum):
    """What happened inside a step. The order breaks ties between events at the same time."""

    PREEMPTED = 0  # at the step's start: the request went back to the waiting queue
    FIRST_TOKEN = 1  # at the step's end: its first output token (TTFT)
    FINISHED = 2  # at the step's end: its last token; carries the GenerationResult


_PREEMPTED, _FIRST_TOKEN, _FINISHED = EventKind.PREEMPTED, EventKind.FIRST_TOKEN, EventKind.FINISHED


# Read-only by convention, not frozen: a frozen dataclass costs six times as much to build, and the core builds one
# per event and per step.
@dataclass(slots=True)
class EngineEvent:
    kind: EventKind
    request_id: str
    time_s: float  # engine clock, s
    result: GenerationResult | None = None  # FINISHED only


@dataclass(slots=True)
class StepOutcome:
    duration_s: float  # from `now` to the end of the last iteration run, s (0 when it only preempted)
    events: list[EngineEvent]  # in time order, each at its own time_s
    num_iterations: int = 1  # scheduler iterations simulated by this call (> 1 when fast-forwarded)
    # Engine clock at the end of the last iteration, s: `now + duration_s` as the core added it, step by step (a
    # driver that continues from here stays bit-identical to one that stepped one iteration per call).
    end_s: float | None = None


@dataclass(slots=True)
class _LastRun:
    """The latest step()'s fast-forwarded run, while a driver may still cut it short."""

    run: DecodeRun
    times_s: list[float]  # end of each of its steps, engine clock, s
    call_start_s: float  # the `now` of the step() call
    run_start_s: float  # start of its first step: call_start_s, or the end of the step the call began with
    prefix_events: list[EngineEvent] = field(default_factory=list)  # that first step's events (never cut)
    prefix_iterations: int = 0  # 1 when the call began with a step outside the run


class TwinEngineCore:
    """Scheduler + KV cache + step-time model + responder of one replica."""

    def __init__(
        self,
        model: str,
        replica_id: str,
        step_time: StepTimeModel,
        responder: Responder,
        num_gpu_blocks: int,
        settings: TwinSettings = TwinSettings(),
        tokenizer_count: Callable[[str], int] = count_tokens,
        *,
        max_model_len: int | None = None,
    ) -> None:
        self.model = model
        self.replica_id = replica_id
        self.step_time = step_time
        # Optional beyond the protocol: the same floats as decode_run_s(...).tolist(), without numpy for short runs.
        self._decode_run_list_s = getattr(step_time, "decode_run_list_s", None)
        # Optional too: step_time_s from the shape's four sums, so the hot path builds no BatchShape.
        self._step_time_parts_s = getattr(step_time, "step_time_parts_s", None)
        self.responder = responder
        self.settings = settings
        self.tokenizer_count = tokenizer_count
        self._count_cached = shared_count_cache(tokenizer_count)
        self.max_model_len = max_model_len  # context length, tokens (None: only the KV cache limits it)
        self.kv_cache = BlockPool(num_gpu_blocks, settings.block_size)
        self._max_cached_tokens = num_gpu_blocks * settings.block_size  # what the whole cache holds, tokens
        self.scheduler = Scheduler(settings, self.kv_cache)
        self.timeline = StepTimeline()  # end time of every iteration, by index: the requests' token times
        self._timeline_compact_at = TIMELINE_COMPACT_AT
        self.requests: dict[str, TwinRequest] = {}  # unfinished requests by id
        self._arrival_seq = itertools.count()
        # Counters (vLLM's names in ReplicaStats).
        self.prompt_tokens_total = 0  # counted when a request's prefill completes (its first token)
        self.generation_tokens_total = 0
        self.requests_finished_total = 0  # stopped or length-capped; aborts are not successes
        self.ema_ttft_ms = 0.0
        self._has_ttft = False
        self.last_outcome: StepOutcome | None = None  # what the latest step() (or truncate()) returned
        self._last_run: _LastRun | None = None
        # The latest call's run for step timing only (stats' step fields): like _last_run, but an abort, which ends
        # the driver's right to cut the run, does not end the steps already running.
        self._run_timing: _LastRun | None = None
        self._step_before_call_s = 0.0  # the iteration before the latest step() call, s (what stats() expects next)
        self._first_step_tokens = 0  # tokens scheduled in the latest call's first iteration, when not a decode run
        # The four sums of the latest call's first iteration (twin-check reads them as ``last_shape``).
        self._last_shape_sums: tuple[int, int, int, int] | None = None

    @classmethod
    def for_deployment(
        cls,
        model: ModelDeployment,
        pool: PoolConfig,
        replica_id: str,
        responder: Responder,
        step_time: StepTimeModel | None = None,
        tokenizer_count: Callable[[str], int] = count_tokens,
    ) -> "TwinEngineCore":
        """A replica of ``model`` as the pool deploys it: roofline step times and a KV cache sized like vLLM's.

        ``step_time`` must also offer ``weight_bytes_per_gpu()`` and ``kv_bytes_per_token_per_gpu()`` (the
        roofline model does); it defaults to the roofline of the model on its GPU.
        """
        gpu = pool.gpu_of(model)
        if step_time is None:
            from sysaware.engines.twin.perf.measured_step_time import step_time_for

            step_time = step_time_for(model, pool)  # a profile measured on the engine itself, else the roofline
        settings = model.twin
        # The engine's KV block count when the pool file fixes it (vLLM's num_gpu_blocks_override), less the one
        # block vLLM v1 keeps as its null block; else sized from memory as vLLM profiles it.
        fixed = model.engine.num_gpu_blocks
        num_blocks = fixed - 1 if fixed else num_gpu_blocks_for(
            memory_gib=gpu.memory_gib,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            weight_bytes_per_gpu=step_time.weight_bytes_per_gpu(),
            activation_reserve_gib=settings.activation_reserve_gib,
            kv_bytes_per_token_per_gpu=step_time.kv_bytes_per_token_per_gpu(),
            block_size=settings.block_size,
        )
        return cls(
            model.name,
            replica_id,
            step_time,
            responder,
            num_blocks,
            settings,
            tokenizer_count,
            max_model_len=model.architecture.max_position_embeddings,
        )

    @property
    def last_shape(self) -> BatchShape | None:
        """The shape of the latest call's first iteration (built when asked: only twin-check asks)."""
        sums = self._last_shape_sums
        return None if sums is None else BatchShape(*sums)

    @property
    def iterations_total(self) -> int:
        """Scheduler iterations simulated, fast-forwarded ones included."""
        return self.scheduler.iteration

    # ---- requests in ----------------------------------------------------------------------------------------

    def add_request(self, req: GenerationRequest, now: float, response: Response | None = None) -> None:
        """Queue ``req``, arrived at ``now``. Its answer (text and length) is decided here, once, by the responder,
        unless the caller passes it (``response``: what the responder says to ``req``, known in advance).

        Raises ValueError when the request can never be served: a duplicate id, no messages, max_tokens < 1, a
        prompt that leaves no room in the model context, or prompt + answer that would not fit in the whole KV
        cache (it would preempt itself forever).
        """
        rid = req.request_id
        if rid in self.requests:
            raise ValueError(f"request {rid!r} is already in the engine")
        if not req.messages:
            raise ValueError(f"request {rid!r} has no messages")
        if req.max_tokens < 1:
            raise ValueError(f"request {rid!r}: max_tokens must be at least 1, got {req.max_tokens}")
        prompt_tokens = count_prompt_tokens(req.messages, self._count_cached)
        max_len = self.max_model_len
        if max_len is not None and prompt_tokens >= max_len:
            raise ValueError(
                f"request {rid!r}: prompt of {prompt_tokens} tokens does not fit the model context of {max_len} "
                f"tokens (max_model_len) with room for one output token"
            )

        if response is None:
            response = self.responder.respond(req)
        response = at_least(response, length_floor(req))  # ignore_eos / min_tokens
        target = min(response.output_tokens, req.max_tokens)
        if max_len is not None:
            target = min(target, max_len - prompt_tokens)

        # The KV cache holds prompt + output - 1 tokens at the last step (the last sampled token is never cached).
        if prompt_tokens + target - 1 > self._max_cached_tokens:
            blocks = self.kv_cache.blocks_needed(prompt_tokens + target - 1)
            raise ValueError(
                f"request {rid!r}: {prompt_tokens} prompt + {target} output tokens need {blocks} KV blocks but the "
                f"cache has only {self.kv_cache.num_blocks} (num_gpu_blocks x block_size = "
                f"{self.kv_cache.num_blocks * self.kv_cache.block_size} tokens)"
            )

        request = TwinRequest(
            rid,  # request_id
            self.model,  # model
            now,  # arrival_s
            next(self._arrival_seq),  # arrival_seq
            prompt_tokens,  # num_prompt_tokens
            target,  # num_target_tokens
            target < response.output_tokens,  # capped
            response.text,  # response_text
            response.output_tokens,  # response_tokens
            req.priority,  # priority
        )
        self.requests[rid] = request
        self.scheduler.add_request(request)

    def abort(self, request_id: str, now: float) -> GenerationResult | None:
        """Cancel a request: its blocks are freed and it finishes ABORTED with what it emitted so far.
        None when the id is unknown or already finished (an abort can race with the last token).
        Inside a fast-forwarded run, ``truncate(now)`` first: the abort closes the run."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        self._last_run = None
        self.scheduler.abort(request, now)
        return request.result(self.replica_id, self.timeline)

    # ---- one step -----------------------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Whether ``step()`` would do anything (a request is waiting or running)."""
        return self.scheduler.has_work()

    def step(self, now: float, until: float | None = None, *, run_after_prefill: bool = False) -> StepOutcome:
        """Run one scheduler iteration starting at ``now``; when it is a steady decode batch, also every identical
        iteration after it that starts before ``until`` (None: no bound) and before the first internal event.

        ``run_after_prefill``: when the first iteration is not such a step (it admits, prefills or preempts) but
        leaves the batch steady, go on with the steady run in the same call, unless the iteration finished a
        request (its driver is likely to send more work at that moment). Events then carry their own times.
        """
        scheduler = self.scheduler
        if not scheduler.has_work():
            raise RuntimeError("step() called with no request waiting or running; check has_work() first")
        self._step_before_call_s = self._last_iteration_s()
        self._last_run = self._run_timing = None
        self._compact_timeline()
        if scheduler.next_step_is_steady():
            return self._fast_forward(now, now, until, [], 0)

        out = scheduler.schedule(now)
        self._first_step_tokens = out.num_tokens
        events = [EngineEvent(_PREEMPTED, r.request_id, now) for r in out.preempted]
        if not out.num_tokens:
            # The request that needed a block preempted itself: nothing runs this iteration.
            self.last_outcome = StepOutcome(0.0, events, 0, now)
            return self.last_outcome

        sums = self._last_shape_sums = (out.prefill_tokens, out.prefill_attended, out.decode_seqs, out.decode_context)
        parts_s = self._step_time_parts_s
        t_end = now + (parts_s(*sums) if parts_s is not None else self.step_time.step_time_s(BatchShape(*sums)))
        self.timeline.append(t_end)
        num_sampled, first_tokens, finished = scheduler.update_from_output(out, t_end)
        self.generation_tokens_total += num_sampled
        alpha = self.settings.ema_alpha
        for req in first_tokens:
            self.prompt_tokens_total += req.num_prompt_tokens
            ttft_ms = (t_end - req.arrival_s) * 1e3
            self.ema_ttft_ms = alpha * ttft_ms + (1.0 - alpha) * self.ema_ttft_ms if self._has_ttft else ttft_ms
            self._has_ttft = True
            events.append(EngineEvent(_FIRST_TOKEN, req.request_id, t_end))
        if finished:
            self._finished_events(finished, t_end, events)
        elif run_after_prefill and (until is None or t_end < until) and scheduler.next_step_is_steady():
            return self._fast_forward(now, t_end, until, events, 1)
        self.last_outcome = StepOutcome(t_end - now, events, 1, t_end)
        return self.last_outcome

    def _fast_forward(
        self, call_start_s: float, run_start_s: float, until: float | None, events: list[EngineEvent], prefix: int
    ) -> StepOutcome:
        """The steady decode run from ``run_start_s`` (``prefix`` iterations of this call already ran)."""
        scheduler = self.scheduler
        batch = scheduler.batch
        num_steps = scheduler.steady_run_steps()
        num_seqs = batch.num_seqs
        context = batch.context_tokens()
        self._last_shape_sums = (0, 0, num_seqs, context)  # the run's first step
        if self._decode_run_list_s is not None:
            durations = self._decode_run_list_s(num_seqs, context, num_steps)
        else:
            durations = self.step_time.decode_run_s(num_seqs, context, num_steps).tolist()
        # Each end is the previous end plus one duration, in that order: the floats single steps would give.
        ends = list(accumulate(durations, initial=run_start_s))
        del ends[0]
        if until is not None and num_steps > 1:
            # Step k+1 starts when step k ends: keep the first step and those that start before `until`.
            num_steps = 1 + bisect_left(ends, until, 0, num_steps - 1)
            del ends[num_steps:]
        t_end = ends[-1]
        self.timeline.extend(ends)
        run = scheduler.advance_decode_run(num_steps, t_end)
        self.generation_tokens_total += num_seqs * num_steps
        self._last_run = self._run_timing = _LastRun(run, ends, call_start_s, run_start_s, list(events), prefix)
        if not prefix:
            self._first_step_tokens = num_seqs  # the call began with the run's first decode step
        if run.finished:
            self._finished_events(run.finished, t_end, events)
        self.last_outcome = StepOutcome(t_end - call_start_s, events, prefix + num_steps, t_end)
        return self.last_outcome

    def truncate(self, now: float) -> float | None:
        """Cut the fast-forwarded run of the latest ``step()`` at the first step boundary at or after ``now``, as
        if that step had been called with ``until=now``; returns the run's new end time, or None when there is
        nothing to cut (no run, or ``now`` falls in its last step). ``last_outcome`` then holds the shorter run
        (with the events of the step the call began with, if any: they happened before ``now``).

        For drivers that learn of an arrival only once it happens. Call it before anything but ``add_request``
        touches the core (``step`` and ``abort`` close the run).
        """
        last = self._last_run
        if last is None:
            return None
        run = last.run
        keep = _run_steps_started_before(last, now)
        if keep >= run.num_steps:
            return None
        for req in run.finished:  # they finish in the run's last step, which is now undone
            self.requests[req.request_id] = req
        self.requests_finished_total -= len(run.finished)
        self.generation_tokens_total -= run.num_seqs * (run.num_steps - keep)
        self.timeline.truncate(run.start_iteration + keep)
        shortened = self.scheduler.truncate_decode_run(run, keep)
        t_end = last.times_s[keep - 1] if keep else last.run_start_s
        self._last_run = self._run_timing = (
            _LastRun(shortened, last.times_s[:keep], last.call_start_s, last.run_start_s, last.prefix_events,
                     last.prefix_iterations)
            if keep
            else None
        )
        self.last_outcome = StepOutcome(
            t_end - last.call_start_s, list(last.prefix_events), last.prefix_iterations + keep, t_end
        )
        return t_end

    def run_step_ends_s(self) -> list[float]:
        """End time (engine clock) of every iteration the latest ``step()`` ran, after any ``truncate``: one for a
        single iteration, one per step of a fast-forwarded run, none when it only preempted. A live driver uses it
        to hand out tokens step by step (one stream chunk per engine step, as vLLM streams)."""
        outcome = self.last_outcome
        if outcome is None or outcome.num_iterations == 0 or outcome.end_s is None:
            return []
        last = self._run_timing
        if last is None or last.times_s[-1] != outcome.end_s:
            return [outcome.end_s]
        return ([last.run_start_s] if last.prefix_iterations else []) + list(last.times_s)

    def _finished_events(self, finished: list[TwinRequest], t_end: float, events: list[EngineEvent]) -> None:
        requests, replica_id, timeline = self.requests, self.replica_id, self.timeline
        for req in finished:
            del requests[req.request_id]
            events.append(EngineEvent(_FINISHED, req.request_id, t_end, req.result(replica_id, timeline)))
        self.requests_finished_total += len(finished)

    def _compact_timeline(self) -> None:
        """Now and then, forget the iteration times no live request refers to (memory stays bounded)."""
        timeline = self.timeline
        if timeline.num_kept > self._timeline_compact_at:
            oldest = min((r.token_spans[0] for r in self.requests.values() if r.token_spans), default=len(timeline))
            timeline.forget_before(oldest)
            self._timeline_compact_at = max(TIMELINE_COMPACT_AT, 2 * timeline.num_kept)

    # ---- state out ----------------------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    def stats(self, now: float) -> ReplicaStats:
        """The replica's state at ``now``. Inside the latest fast-forwarded run, the state at the first step
        boundary at or after ``now``: what ``truncate(now)`` would leave, and what one-iteration steps would show."""
        scheduler, pool = self.scheduler, self.kv_cache
        num_running = len(scheduler.running)
        used_blocks = pool.num_blocks - pool.num_free_blocks
        generation_tokens = self.generation_tokens_total
        requests_finished = self.requests_finished_total
        last = self._last_run
        if last is not None and now < last.times_s[-1]:
            run = last.run
            keep = _run_steps_started_before(last, now)
            if keep < run.num_steps:
                used_blocks -= scheduler.blocks_returned_by_cut(run, keep)
                generation_tokens -= run.num_seqs * (run.num_steps - keep)
                num_running += len(run.finished)
                requests_finished -= len(run.finished)
        step_start, step_estimate_s, step_tokens = self._step_in_progress(now)
        return ReplicaStats(
            replica_id=self.replica_id,
            model=self.model,
            timestamp_s=now,
            num_requests_waiting=len(scheduler.waiting),
            num_requests_running=num_running,
            kv_cache_usage_perc=used_blocks / pool.num_blocks,
            ema_ttft_ms=self.ema_ttft_ms,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=generation_tokens,
            num_preemptions_total=scheduler.num_preemptions_total,
            requests_finished_total=requests_finished,
            num_gpu_blocks=pool.num_blocks,
            block_size=pool.block_size,
            step_elapsed_ms=(now - step_start) * 1e3,
            step_ms=step_estimate_s * 1e3,
            step_tokens=step_tokens,
        )

    def _step_in_progress(self, now: float) -> tuple[float, float, int]:
        """(start, expected duration, scheduled tokens) of the iteration running at ``now``; (now, 0, 0) when the
        engine is idle then.

        The expected duration is the previous iteration's, as a real engine would know it (its own step time is
        only known once it ends): exact inside a decode run, short of a step that admits a prefill.
        """
        outcome = self.last_outcome
        if outcome is None or outcome.end_s is None or now >= outcome.end_s or outcome.num_iterations == 0:
            return now, 0.0, 0
        last = self._run_timing
        if last is None:  # a single iteration
            return outcome.end_s - outcome.duration_s, self._step_before_call_s, self._first_step_tokens
        if last.prefix_iterations and now < last.run_start_s:  # the step the call began with, before the run
            return last.call_start_s, self._step_before_call_s, self._first_step_tokens
        times, num_seqs = last.times_s, last.run.num_seqs  # a decode run schedules one token per sequence
        k = bisect_right(times, now)
        if (times[k - 1] if k else last.run_start_s) == now and (k or last.prefix_iterations):
            return now, 0.0, 0  # on a boundary, as one-iteration stepping sees it between two calls
        if k == 0:  # the run's first step: after the call's own first step, or the previous call's last
            before = last.run_start_s - last.call_start_s if last.prefix_iterations else self._step_before_call_s
            return last.run_start_s, before, num_seqs
        start = times[k - 1]
        return start, start - (times[k - 2] if k >= 2 else last.run_start_s), num_seqs

    def _last_iteration_s(self) -> float:
        """Duration of the latest call's last iteration (0 before any)."""
        outcome, last = self.last_outcome, self._run_timing
        if last is not None:
            times = last.times_s
            return times[-1] - (times[-2] if len(times) >= 2 else last.run_start_s)
        if outcome is None or outcome.num_iterations == 0:
            return self._step_before_call_s
        return outcome.duration_s


def _run_steps_started_before(last: _LastRun, t: float) -> int:
    """Steps of the run that start before ``t`` (those a driver learning of an event at ``t`` cannot undo); the
    first step of a call always counts, since it started at the call's ``now``."""
    times = last.times_s
    started = bisect_left(times, t, 0, len(times) - 1) + (last.run_start_s < t)
    return started if last.prefix_iterations else max(started, 1)
