"""One request inside the twin's scheduler: its status and token accounting, as vLLM v1's ``Request`` keeps them.

Token accounting follows vLLM exactly, because preemption and chunked prefill both fall out of it:

- ``num_tokens`` = prompt + output tokens so far: the sequence the model has seen or produced.
- ``num_computed_tokens`` = tokens whose KV is in the cache.

A step schedules ``num_tokens - num_computed_tokens`` tokens (capped by the budget). When a step brings
``num_computed_tokens`` up to ``num_tokens`` the model samples one new output token; a partial prefill chunk samples
nothing. A decode is the case where exactly one token is missing (the last sampled one). Preemption by recompute
sets ``num_computed_tokens`` to 0 and keeps the output, so the resumed request re-prefills prompt + output.

Life cycle (every transition is a method that asserts where it starts from)::

    WAITING --start_running--> RUNNING --finish--> FINISHED_STOPPED | FINISHED_LENGTH_CAPPED
                                |    ^                  |
                         preempt|    |start_running     |reopen: a driver cut short the fast-forwarded run
                                v    |                  |        that finished it; RUNNING again
                               PREEMPTED (front of the waiting queue)
    WAITING | RUNNING | PREEMPTED --finish(FINISHED_ABORTED)--> FINISHED_ABORTED   (abort)
"""

from __future__ import annotations

import enum

import numpy as np

from sysaware.engines.types import FinishReason, GenerationResult


class RequestStatus(enum.IntEnum):
    """Ordered like vLLM's: everything after PREEMPTED is finished."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH_CAPPED: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
}


class TwinRequest:
    """Scheduler-side state of one request. Plain slots: this object is touched every step."""

    __slots__ = (
        "request_id",
        "model",
        "priority",
        "arrival_s",
        "arrival_seq",
        "num_prompt_tokens",
        "num_target_tokens",
        "stop_status",
        "response_text",
        "response_tokens",
        "status",
        "num_tokens",
        "num_computed_tokens",
        "num_output_tokens",
        "num_blocks",
        "num_preemptions",
        "first_scheduled_s",
        "first_token_s",
        "finished_s",
        "token_time_chunks",
    )

    def __init__(
        self,
        request_id: str,
        model: str,
        arrival_s: float,
        arrival_seq: int,
        num_prompt_tokens: int,
        num_target_tokens: int,
        capped: bool,
        response_text: str,
        response_tokens: int,
        priority: float = 0.0,
    ) -> None:
        assert num_prompt_tokens >= 1 and num_target_tokens >= 1
        self.request_id = request_id
        self.model = model
        self.priority = priority  # lower is more urgent (priority scheduling)
        self.arrival_s = arrival_s  # engine clock, s
        self.arrival_seq = arrival_seq  # admission order, breaks ties between equal arrival times
        self.num_prompt_tokens = num_prompt_tokens
        self.num_target_tokens = num_target_tokens  # output tokens it will emit: min(answer, max_tokens, context)
        # How it ends when it reaches its target: cut by max_tokens/context, or the model's own stop.
        self.stop_status = RequestStatus.FINISHED_LENGTH_CAPPED if capped else RequestStatus.FINISHED_STOPPED
        self.response_text = response_text  # the whole answer the responder chose
        self.response_tokens = response_tokens  # its full length, tokens (>= num_target_tokens)

        self.status = RequestStatus.WAITING
        self.num_tokens = num_prompt_tokens  # prompt + output so far
        self.num_computed_tokens = 0  # tokens with KV in the cache
        self.num_output_tokens = 0
        self.num_blocks = 0  # KV blocks held
        self.num_preemptions = 0
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.finished_s: float | None = None
        # Emission times of the output tokens, in order: a float per single step, or one numpy array per
        # fast-forwarded run (the same array object is shared by every request of that run).
        self.token_time_chunks: list[float | np.ndarray] = []

    # ---- derived --------------------------------------------------------------------------------------------

    @property
    def priority_key(self) -> tuple[float, float, int]:
        """Sort key under priority scheduling: most urgent first, then oldest (vLLM: (priority, arrival_time))."""
        return (self.priority, self.arrival_s, self.arrival_seq)

    @property
    def is_decoding(self) -> bool:
        """Only the last sampled token lacks KV: the next step is a one-token decode."""
        return self.num_output_tokens > 0 and self.num_computed_tokens == self.num_tokens - 1

    @property
    def remaining_output_tokens(self) -> int:
        return self.num_target_tokens - self.num_output_tokens

    # ---- transitions -----------------------------------------------------------------------------------------

    def start_running(self, now: float) -> None:
        """WAITING or PREEMPTED -> RUNNING: admitted into the batch."""
        assert self.status is RequestStatus.WAITING or self.status is RequestStatus.PREEMPTED, self.status
        self.status = RequestStatus.RUNNING
        if self.first_scheduled_s is None:
            self.first_scheduled_s = now

    def preempt(self) -> None:
        """RUNNING -> PREEMPTED by recompute. The caller frees the blocks first; generated tokens are kept."""
        assert self.status is RequestStatus.RUNNING, self.status
        assert self.num_blocks == 0, "free the KV blocks before preempting"
        self.status = RequestStatus.PREEMPTED
        self.num_computed_tokens = 0
        self.num_preemptions += 1

    def finish(self, status: RequestStatus, t: float) -> None:
        """Any unfinished status -> a FINISHED_* status. The caller frees the blocks first."""
        assert not self.status.is_finished, f"{self.request_id} already {self.status.name}"
        assert status.is_finished, status
        assert self.num_blocks == 0, "free the KV blocks before finishing"
        self.status = status
        self.finished_s = t

    def reopen(self) -> None:
        """FINISHED_STOPPED or FINISHED_LENGTH_CAPPED -> RUNNING: the fast-forwarded run that finished it was cut
        short before its last step (the driver learnt of an earlier arrival). The caller restores its blocks."""
        assert self.status is RequestStatus.FINISHED_STOPPED or self.status is RequestStatus.FINISHED_LENGTH_CAPPED
        self.status = RequestStatus.RUNNING
        self.finished_s = None

    # ---- token emission --------------------------------------------------------------------------------------

    def emit_token(self, t: float) -> bool:
        """One sampled token at time ``t``; True if it is the request's first (its TTFT)."""
        self.num_output_tokens += 1
        self.num_tokens += 1
        self.token_time_chunks.append(t)
        if self.first_token_s is None:
            self.first_token_s = t
            return True
        return False

    def emit_decode_run(self, times_s: np.ndarray) -> None:
        """``len(times_s)`` consecutive decode steps in one go (their KV blocks are accounted by the caller)."""
        n = len(times_s)
        self.num_computed_tokens += n
        self.num_output_tokens += n
        self.num_tokens += n
        self.token_time_chunks.append(times_s)

    def undo_decode_steps(self, num_steps: int, kept_times_s: np.ndarray) -> None:
        """Take back the last ``num_steps`` steps of the decode run that ``emit_decode_run`` recorded last."""
        self.num_computed_tokens -= num_steps
        self.num_output_tokens -= num_steps
        self.num_tokens -= num_steps
        self.token_time_chunks[-1] = kept_times_s

    def token_times_s(self) -> list[float]:
        times: list[float] = []
        append, extend = times.append, times.extend
        for chunk in self.token_time_chunks:
            if chunk.__class__ is float:  # single steps stamp plain floats (the core passes float(t))
                append(chunk)
            else:
                extend(chunk.tolist())
        return times

    # ---- what leaves the engine ------------------------------------------------------------------------------

    def result(self, replica_id: str) -> GenerationResult:
        assert self.status.is_finished and self.finished_s is not None
        text = self.response_text
        if self.num_output_tokens < self.response_tokens:
            # Capped or aborted: keep the share of the answer that was emitted, approximated by characters.
            text = text[: len(text) * self.num_output_tokens // self.response_tokens]
        return GenerationResult(
            request_id=self.request_id,
            model=self.model,
            text=text,
            prompt_tokens=self.num_prompt_tokens,
            output_tokens=self.num_output_tokens,
            finish_reason=self.status.finish_reason,
            arrival_s=self.arrival_s,
            first_scheduled_s=self.first_scheduled_s,
            first_token_s=self.first_token_s,
            finished_s=self.finished_s,
            num_preemptions=self.num_preemptions,
            replica_id=replica_id,
            token_times_s=self.token_times_s(),
        )

    def __repr__(self) -> str:
        return (
            f"TwinRequest({self.request_id!r}, {self.status.name}, computed={self.num_computed_tokens}/"
            f"{self.num_tokens}, out={self.num_output_tokens}/{self.num_target_tokens}, blocks={self.num_blocks})"
        )
