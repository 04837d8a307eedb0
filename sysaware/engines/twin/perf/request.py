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

A RUNNING request that is decoding usually sits in the scheduler's ``DecodeBatch``, which advances all its members
together without touching them: while ``batch`` is set, the token counts are derived from the batch's iteration
counter (``num_computed_tokens = batch.iteration + batch_offset``), so a decode step costs nothing per request. The
properties below read either form; only the scheduler writes them, and only while the request is out of the batch.

Token times are not stored per request either: every replica keeps one ``StepTimeline`` (the end time of each
iteration it ran, by iteration index) and a request keeps the index spans of the iterations that sampled one of its
tokens. A request samples at every iteration from its first token until it finishes or is preempted, so this is one
span, or one per preemption. ``result()`` slices the timeline once, at the end.
"""

from __future__ import annotations

import copy
import enum
from typing import TYPE_CHECKING

from sysaware.engines.types import FinishReason, GenerationResult

if TYPE_CHECKING:
    from sysaware.engines.twin.perf.scheduler import DecodeBatch


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
        return self._value_ > _PREEMPTED  # plain ints: this is asserted on every transition

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)


# Members as module constants: looking an enum member up on its class costs ~10x a global in Python 3.11.
_WAITING, _RUNNING, _PREEMPTED_STATUS = RequestStatus.WAITING, RequestStatus.RUNNING, RequestStatus.PREEMPTED
_PREEMPTED = RequestStatus.PREEMPTED.value
_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH_CAPPED: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
}


class StepTimeline:
    """End time of every scheduler iteration one replica ran, by iteration index (0-based), engine clock, s.

    A plain list of floats: runs between two events are a handful of steps, where numpy's per-call cost exceeds the
    work, and a request's token times are then one list slice. The prefix that no live request refers to any more
    is dropped now and then (``forget_before``), so a long simulation keeps memory bounded by its live requests.
    """

    __slots__ = ("_times", "_offset")

    def __init__(self) -> None:
        self._times: list[float] = []
        self._offset = 0  # iteration index of _times[0]

    def __deepcopy__(self, memo: dict) -> "StepTimeline":
        # Floats are immutable: a copy of the list is a deep copy, and costs a memcpy rather than a Python call per
        # element (a forked simulation copies every replica's timeline).
        copied = StepTimeline()
        copied._times, copied._offset = self._times.copy(), self._offset
        return copied

    def __len__(self) -> int:
        """Iterations recorded (the index the next one gets)."""
        return self._offset + len(self._times)

    @property
    def num_kept(self) -> int:
        """Times held in memory."""
        return len(self._times)

    def append(self, t: float) -> None:
        self._times.append(t)

    def extend(self, times_s: list[float]) -> None:
        self._times += times_s

    def truncate(self, length: int) -> None:
        """Forget the iterations from index ``length`` on (a driver cut a run short)."""
        assert self._offset <= length <= len(self), (self._offset, length, len(self))
        del self._times[length - self._offset :]

    def forget_before(self, index: int) -> None:
        """Drop the times of iterations before ``index`` (no live request refers to them)."""
        index = min(index, len(self))
        if index > self._offset:
            del self._times[: index - self._offset]
            self._offset = index

    def times(self, start: int, stop: int) -> list[float]:
        """Times of iterations ``start`` .. ``stop - 1``."""
        assert self._offset <= start <= stop <= len(self), (self._offset, start, stop, len(self))
        return self._times[start - self._offset : stop - self._offset]


class TwinRequest:
    """Scheduler-side state of one request. Plain slots: this object is touched every step it is not batched."""

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
        "_num_tokens",
        "_num_computed_tokens",
        "_num_blocks",
        "num_preemptions",
        "first_scheduled_s",
        "first_token_s",
        "finished_s",
        "token_spans",
        "running_seq",
        "batch",
        "batch_offset",
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
        self._num_tokens = num_prompt_tokens  # prompt + output so far (valid while out of the batch)
        self._num_computed_tokens = 0  # tokens with KV in the cache (valid while out of the batch)
        self._num_blocks = 0  # KV blocks held (valid while out of the batch)
        self.num_preemptions = 0
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.finished_s: float | None = None
        # Iterations that sampled its tokens, as flat [start, stop) index pairs into the replica's StepTimeline;
        # while batched, the last pair's stop is the batch's iteration counter.
        self.token_spans: list[int] = []
        self.running_seq = -1  # position in the running order (set on every admission; orders same-step events)
        self.batch: DecodeBatch | None = None  # the decode batch that advances it, if any
        self.batch_offset = 0  # while batched: num_computed_tokens - batch.iteration

    def __deepcopy__(self, memo: dict) -> "TwinRequest":
        # A forked simulation copies every in-flight request: only the span list and the batch change in place; every
        # other field is an immutable value (ids, counts, times, the status, the answer's text), shared by reference.
        # Several times cheaper than the generic copy of the slots, which a fork at N=150 makes hundreds of times.
        copied = _new_request(TwinRequest)
        memo[id(self)] = copied
        for name in _SHARED_SLOTS:
            setattr(copied, name, getattr(self, name))
        copied.token_spans = self.token_spans.copy()  # ints
        batch = self.batch
        copied.batch = None if batch is None else copy.deepcopy(batch, memo)
        return copied

    # ---- token counts (derived from the batch while batched) -------------------------------------------------

    @property
    def num_computed_tokens(self) -> int:
        batch = self.batch
        return self._num_computed_tokens if batch is None else batch.iteration + self.batch_offset

    @num_computed_tokens.setter
    def num_computed_tokens(self, value: int) -> None:
        assert self.batch is None, "a batched request's counts move with its batch"
        self._num_computed_tokens = value

    @property
    def num_tokens(self) -> int:
        """Prompt + output so far. Batched, it is always decoding: one more than the computed tokens."""
        batch = self.batch
        return self._num_tokens if batch is None else batch.iteration + self.batch_offset + 1

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def num_blocks(self) -> int:
        """KV blocks held. Between steps a running request holds exactly the blocks of its computed tokens."""
        batch = self.batch
        if batch is None:
            return self._num_blocks
        return -(-(batch.iteration + self.batch_offset) // batch.block_size)

    @num_blocks.setter
    def num_blocks(self, value: int) -> None:
        assert self.batch is None, "a batched request's blocks move with its batch"
        self._num_blocks = value

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

    def start_running(self, now: float, running_seq: int, num_blocks: int) -> None:
        """WAITING or PREEMPTED -> RUNNING: admitted into the batch, at position ``running_seq`` of the order, with
        the ``num_blocks`` KV blocks its first chunk needs."""
        assert self.status is _WAITING or self.status is _PREEMPTED_STATUS, self.status
        assert self.batch is None and self._num_blocks == 0 and self._num_computed_tokens == 0, self
        self.status = _RUNNING
        self.running_seq = running_seq
        self._num_blocks = num_blocks
        if self.first_scheduled_s is None:
            self.first_scheduled_s = now

    def preempt(self) -> None:
        """RUNNING -> PREEMPTED by recompute. The caller frees the blocks first; generated tokens are kept."""
        assert self.status is _RUNNING, self.status
        assert self.batch is None, "take it out of the decode batch first"
        assert self._num_blocks == 0, "free the KV blocks before preempting"
        self.status = _PREEMPTED_STATUS
        self._num_computed_tokens = 0
        self.num_preemptions += 1

    def finish(self, status: RequestStatus, t: float) -> None:
        """Any unfinished status -> a FINISHED_* status. The caller frees the blocks first."""
        assert self.status._value_ <= _PREEMPTED, f"{self.request_id} already {self.status.name}"
        assert status._value_ > _PREEMPTED, status
        assert self.batch is None, "take it out of the decode batch first"
        assert self._num_blocks == 0, "free the KV blocks before finishing"
        self.status = status
        self.finished_s = t

    def reopen(self) -> None:
        """FINISHED_STOPPED or FINISHED_LENGTH_CAPPED -> RUNNING: the fast-forwarded run that finished it was cut
        short before its last step (the driver learnt of an earlier arrival). The caller restores its blocks."""
        assert self.status is RequestStatus.FINISHED_STOPPED or self.status is RequestStatus.FINISHED_LENGTH_CAPPED
        self.status = _RUNNING
        self.finished_s = None

    # ---- the decode batch ------------------------------------------------------------------------------------

    def join_batch(self, batch: DecodeBatch) -> int:
        """Hand the token counts over to ``batch`` (between steps, while decoding); returns the offset."""
        assert self.batch is None and self.status is _RUNNING, self
        computed = self._num_computed_tokens
        assert self._num_tokens == computed + 1 and computed >= self.num_prompt_tokens, self  # decoding
        assert self._num_blocks == -(-computed // batch.block_size), self  # exactly its computed tokens' blocks
        iteration = batch.iteration
        offset = computed - iteration
        self.batch, self.batch_offset = batch, offset
        spans = self.token_spans
        if spans[-1] != iteration:  # it did not sample in the last iteration: a new span starts here
            spans += (iteration, iteration)
        return offset

    def leave_batch(self) -> None:
        """Take the token counts back from the batch, as they stand at its current iteration."""
        batch = self.batch
        assert batch is not None
        iteration = batch.iteration
        computed = iteration + self.batch_offset
        self._num_computed_tokens = computed
        self._num_tokens = computed + 1
        self._num_blocks = -(-computed // batch.block_size)
        spans = self.token_spans
        spans[-1] = iteration
        if spans[-2] == iteration:  # joined and left without a step in between: drop the empty span
            del spans[-2:]
        self.batch = None

    # ---- token emission --------------------------------------------------------------------------------------

    def compute(self, num_new: int, iteration: int, t: float) -> int:
        """Iteration ``iteration``, which ended at ``t``, computed ``num_new`` of its tokens. Returns how many it
        sampled: 0 (a partial prefill chunk), 1, or 2 for one that is its first (its TTFT). Only for a request out
        of the batch (the batch's members advance without being touched)."""
        computed = self._num_computed_tokens + num_new
        self._num_computed_tokens = computed
        if computed < self._num_tokens:
            return 0
        self._num_tokens = computed + 1
        spans = self.token_spans
        if spans and spans[-1] == iteration:
            spans[-1] = iteration + 1
        else:
            spans += (iteration, iteration + 1)
        if self.first_token_s is None:
            self.first_token_s = t
            return 2
        return 1

    @property
    def reached_target(self) -> bool:
        """It has emitted every token it will (only out of the batch; the batch knows its members' finishes)."""
        return self._num_tokens - self.num_prompt_tokens >= self.num_target_tokens

    def token_times_s(self, timeline: StepTimeline) -> tuple[float, ...]:
        """A tuple, not a list: a tuple of floats drops out of the garbage collector's sight after one pass, so the
        many finished results a long simulation keeps (hundreds of times each) do not slow every full collection."""
        spans = self.token_spans
        if len(spans) == 2:
            return tuple(timeline.times(spans[0], spans[1]))
        times: list[float] = []
        for i in range(0, len(spans), 2):
            times += timeline.times(spans[i], spans[i + 1])
        return tuple(times)

    # ---- what leaves the engine ------------------------------------------------------------------------------

    def result(self, replica_id: str, timeline: StepTimeline) -> GenerationResult:
        status = self.status
        assert status._value_ > _PREEMPTED and self.finished_s is not None and self.batch is None
        num_output = self._num_tokens - self.num_prompt_tokens
        text = self.response_text
        if num_output < self.response_tokens:
            # Capped or aborted: keep the share of the answer that was emitted, approximated by characters.
            text = text[: len(text) * num_output // self.response_tokens]
        return GenerationResult(  # positional, in the field order (one per request: the hot path)
            self.request_id,  # request_id
            self.model,  # model
            text,  # text
            self.num_prompt_tokens,  # prompt_tokens
            num_output,  # output_tokens
            _FINISH_REASONS[status],  # finish_reason
            self.arrival_s,  # arrival_s
            self.first_scheduled_s,  # first_scheduled_s
            self.first_token_s,  # first_token_s
            self.finished_s,  # finished_s
            self.num_preemptions,  # num_preemptions
            replica_id,  # replica_id
            self.token_times_s(timeline),  # token_times_s
        )

    def __repr__(self) -> str:
        return (
            f"TwinRequest({self.request_id!r}, {self.status.name}, computed={self.num_computed_tokens}/"
            f"{self.num_tokens}, out={self.num_output_tokens}/{self.num_target_tokens}, blocks={self.num_blocks}"
            f"{', batched' if self.batch is not None else ''})"
        )


_new_request = object.__new__
# The slots a fork shares with the original (immutable values); the two mutable ones are copied in __deepcopy__.
_SHARED_SLOTS = tuple(name for name in TwinRequest.__slots__ if name not in ("token_spans", "batch"))
