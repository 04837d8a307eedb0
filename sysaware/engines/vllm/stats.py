"""What a vLLM engine's stat loggers tell us, kept as ``ReplicaStats`` fields and per-step records.

vLLM calls every stat logger's ``record(scheduler_stats, iteration_stats)`` once per engine step (from AsyncLLM's
output handler). ``StepRecorder`` is the plain-Python half (no vLLM import, unit-tested on its own); the
``StatLoggerBase`` subclass that feeds it is made by ``logger_class`` inside ``engine.py`` where vLLM is imported.

With ``enable_logging_iteration_details`` the scheduler stats carry the step's shape (prefill ("context") requests
and tokens, decode requests and tokens) and its model time; the step's wall duration is the time between two
records while the engine was busy (the engine core runs steps back to back), which is what a request arriving
mid-step waits for.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from sysaware.engines.types import ReplicaStats


@dataclass(frozen=True)
class StepRecord:
    """One engine step as the stat logger saw it."""

    index: int  # the engine's iteration index
    end_wall_s: float  # time.monotonic() when the record arrived (the step's outputs reached the frontend)
    duration_s: float  # wall time since the previous record when the engine was busy then, else model_s
    model_s: float  # model execution time reported by the engine core (iteration details' elapsed_ms)
    prefill_reqs: int  # requests with a prefill chunk in the step ("context" requests)
    prefill_tokens: int  # their tokens
    decode_reqs: int
    decode_tokens: int
    num_running: int  # after the step, as the scheduler reported it
    num_waiting: int
    kv_cache_usage_perc: float
    num_preempted: int  # requests preempted in this step (from the iteration stats of the same output batch)

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


class StepRecorder:
    """Counters and recent steps of one engine, fed by its stat logger, read by ``stats()``."""

    def __init__(self, replica_id: str, model: str, ema_alpha: float = 0.2, keep_steps: int = 100_000) -> None:
        self.replica_id = replica_id
        self.model = model
        self.ema_alpha = ema_alpha
        self.num_gpu_blocks = 0
        self.block_size = 0
        self.num_running = 0
        self.num_waiting = 0
        self.kv_cache_usage_perc = 0.0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_preemptions_total = 0
        self.requests_finished_total = 0
        self.ema_ttft_ms = 0.0
        self._has_ttft = False
        self.steps: deque[StepRecord] = deque(maxlen=keep_steps)
        self._last_record_wall_s: float | None = None
        self._busy_after_last = False

    def configure(self, num_gpu_blocks: int | None, block_size: int | None) -> None:
        self.num_gpu_blocks = int(num_gpu_blocks or 0)
        self.block_size = int(block_size or 0)

    # ---- fed by the logger ------------------------------------------------------------------------------------

    def record(self, scheduler_stats, iteration_stats, now: float | None = None) -> None:
        """One ``StatLoggerBase.record`` call (duck-typed: SchedulerStats / IterationStats or look-alikes)."""
        now = time.monotonic() if now is None else now
        preempted = 0
        if iteration_stats is not None:
            self.prompt_tokens_total += int(iteration_stats.num_prompt_tokens)
            self.generation_tokens_total += int(iteration_stats.num_generation_tokens)
            preempted = int(iteration_stats.num_preempted_reqs)
            self.num_preemptions_total += preempted
            for finished in iteration_stats.finished_requests:
                if str(getattr(finished.finish_reason, "name", finished.finish_reason)).upper() not in ("ABORT", "ERROR"):
                    self.requests_finished_total += 1
            alpha = self.ema_alpha
            for ttft_s in iteration_stats.time_to_first_tokens_iter:
                ttft_ms = ttft_s * 1e3
                self.ema_ttft_ms = alpha * ttft_ms + (1 - alpha) * self.ema_ttft_ms if self._has_ttft else ttft_ms
                self._has_ttft = True
        if scheduler_stats is None:
            return
        self.num_running = int(scheduler_stats.num_running_reqs)
        self.num_waiting = int(scheduler_stats.num_waiting_reqs) + int(
            getattr(scheduler_stats, "num_skipped_waiting_reqs", 0)
        )
        self.kv_cache_usage_perc = float(scheduler_stats.kv_cache_usage)
        details = getattr(scheduler_stats, "iteration_details", None)
        if details is not None and not getattr(details, "is_dummy", False):
            model_s = details.elapsed_ms / 1e3
            gap = None if self._last_record_wall_s is None else now - self._last_record_wall_s
            duration = gap if (gap is not None and self._busy_after_last) else model_s
            self.steps.append(
                StepRecord(
                    index=int(details.iteration_index),
                    end_wall_s=now,
                    duration_s=duration,
                    model_s=model_s,
                    prefill_reqs=int(details.num_ctx_requests),
                    prefill_tokens=int(details.num_ctx_tokens),
                    decode_reqs=int(details.num_generation_requests),
                    decode_tokens=int(details.num_generation_tokens),
                    num_running=self.num_running,
                    num_waiting=self.num_waiting,
                    kv_cache_usage_perc=self.kv_cache_usage_perc,
                    num_preempted=preempted,
                )
            )
            self._last_record_wall_s = now
            self._busy_after_last = self.num_running + self.num_waiting > 0

    # ---- read by the engine -----------------------------------------------------------------------------------

    def stats(self, timestamp_s: float, now_wall_s: float | None = None) -> ReplicaStats:
        """The snapshot at ``timestamp_s`` (engine clock). The step in progress: begun when the last one's record
        arrived, expected to last as long as that one; once it outlasts it, ``step_remaining_ms`` reads the phase
        as unknown (half a step)."""
        now_wall_s = time.monotonic() if now_wall_s is None else now_wall_s
        busy = self.num_running + self.num_waiting > 0
        step_elapsed_ms = step_ms = 0.0
        step_tokens = 0
        if busy and self.steps:
            last = self.steps[-1]
            step_ms = last.duration_s * 1e3
            step_tokens = last.num_tokens
            step_elapsed_ms = max(now_wall_s - last.end_wall_s, 0.0) * 1e3
        return ReplicaStats(
            replica_id=self.replica_id,
            model=self.model,
            timestamp_s=timestamp_s,
            num_requests_waiting=self.num_waiting,
            num_requests_running=self.num_running,
            kv_cache_usage_perc=self.kv_cache_usage_perc,
            ema_ttft_ms=self.ema_ttft_ms,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions_total=self.num_preemptions_total,
            requests_finished_total=self.requests_finished_total,
            num_gpu_blocks=self.num_gpu_blocks,
            block_size=self.block_size,
            step_elapsed_ms=step_elapsed_ms,
            step_ms=step_ms,
            step_tokens=step_tokens,
        )
