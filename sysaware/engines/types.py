"""What crosses the engine boundary: requests in, results and replica stats out.

Every engine (twin, vLLM, remote) speaks these types, so the layers above never know which one runs.
Field names follow vLLM's metrics (``num_requests_waiting`` is ``vllm:num_requests_waiting``); units are in the
names (``_s`` seconds, ``_ms`` milliseconds, ``_perc`` a fraction in [0, 1]).

Replica stats travel one way, typed all along, and only the ends rename them:

    replica --ReplicaStats (push)--> telemetry actor --TelemetrySnapshot of ReplicaViews--> live driver, probes, ingress
    simulated cluster --ReplicaStats--------------------------------------------------------> sim driver, sim probes
    Phase 2 dataset row <--metrics_schema.replica_state_columns(ReplicaStats)-- either probe backend
    /v1/telemetry JSON <--serving.telemetry.snapshot_json(TelemetrySnapshot)-- the ingress
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class FinishReason(str, Enum):
    STOP = "stop"  # the model ended its answer
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # cancelled by the client


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request, as an OpenAI chat call would carry it."""

    request_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 1024
    temperature: float = 0.0
    seed: int = 0  # the twin's answer (and its length noise) is a pure function of (model, messages, seed)
    priority: float = 0.0  # lower is served first under priority scheduling (e.g. the deadline, in seconds)
    # vLLM's sampling extras that set the output length (load generators use them to fix it):
    ignore_eos: bool = False  # the model never ends its answer: it generates exactly max_tokens
    min_tokens: int = 0  # the model may not end its answer before this many output tokens

    def prompt_text(self) -> str:
        return "\n".join(m.content for m in self.messages)


@dataclass
class GenerationResult:
    """What one request measured, end to end, on the engine's clock."""

    request_id: str
    model: str
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    arrival_s: float  # engine clock when the request arrived
    first_scheduled_s: float | None  # when it first got compute (end of queueing)
    first_token_s: float | None  # when the first output token was emitted
    finished_s: float  # when the last token was emitted (or it was aborted)
    num_preemptions: int = 0
    replica_id: str = ""
    token_times_s: tuple[float, ...] = ()  # emission time of every output token

    @property
    def queue_time_s(self) -> float:
        return (self.first_scheduled_s if self.first_scheduled_s is not None else self.finished_s) - self.arrival_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean inter-token latency after the first token (vLLM's TPOT); None with fewer than two tokens."""
        if self.first_token_s is None or self.output_tokens < 2:
            return None
        return (self.finished_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float:
        return self.finished_s - self.arrival_s


@dataclass(frozen=True)
class ReplicaStats:
    """A snapshot of one replica's scheduler, with vLLM's metric names."""

    replica_id: str
    model: str
    timestamp_s: float  # engine clock when the snapshot was taken
    num_requests_waiting: int  # vllm:num_requests_waiting
    num_requests_running: int  # vllm:num_requests_running
    kv_cache_usage_perc: float  # vllm:kv_cache_usage_perc, fraction of KV blocks in use
    ema_ttft_ms: float  # exponential moving average of recent TTFTs (0 before the first)
    prompt_tokens_total: int  # vllm:prompt_tokens_total
    generation_tokens_total: int  # vllm:generation_tokens_total
    num_preemptions_total: int  # vllm:num_preemptions_total
    requests_finished_total: int  # vllm:request_success_total
    num_gpu_blocks: int  # KV cache capacity, blocks
    block_size: int  # tokens per block
    # The engine step in progress at timestamp_s (0 and 0 when idle). A new request waits for it to end before its
    # prefill can start, up to a whole step: at N>=10 that wait is most of the TTFT noise the gauges cannot see.
    step_elapsed_ms: float = 0.0  # time since the in-progress step began
    step_ms: float = 0.0  # its expected duration: the previous step's, all an engine knows before the step ends
    step_tokens: int = 0  # tokens scheduled in it (decodes + prefill chunks): vllm:iteration_tokens_total's sample


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the telemetry actor holds it: the stats it last pushed, and what only the actor knows (how
    old they are, whether the replica went silent, its token rate)."""

    stats: ReplicaStats
    age_s: float  # actor wall seconds since this push arrived
    stale: bool  # silent for longer than the actor's stale_after_s: its last state is not load
    tokens_per_s: float  # generation tokens per engine second over the actor's rate window

    @property
    def replica_id(self) -> str:
        return self.stats.replica_id

    @property
    def model(self) -> str:
        return self.stats.model

    def stats_at_read(self, time_scale: float = 1.0) -> ReplicaStats:
        """The stats as of the snapshot, not the push: the in-progress step's elapsed time is carried forward by the
        view's age (wall s x ``time_scale`` engine s per wall s), so ``step_remaining_ms`` reads the phase at the time
        the snapshot was taken. The age is folded in: pass these on with age 0 (``ReplicaState.from_stats(stats)``)."""
        elapsed_ms = self.stats.step_elapsed_ms + self.age_s * time_scale * 1e3
        return dataclasses.replace(self.stats, step_elapsed_ms=elapsed_ms)


@dataclass(frozen=True)
class TelemetrySnapshot:
    """The telemetry actor's answer: every replica it has heard from lately, fresh or stale, by replica id (sorted).
    The actor is shared by every application on the cluster: a reader keeps its own deployments' replicas
    (``deployment``)."""

    wall_time_s: float  # the actor's wall clock (time.time()) when it answered
    stale_after_s: float  # silence after which a replica is stale
    replicas: Mapping[str, ReplicaView] = dataclasses.field(default_factory=dict)

    def deployment(self, app_name: str, deployment_name: str, fresh_only: bool = False) -> list[ReplicaView]:
        """The replicas of one Serve deployment (replica ids are ``app#deployment#unique``), the stale ones too
        unless ``fresh_only``."""
        prefix = f"{app_name}#{deployment_name}#"
        return [v for rid, v in self.replicas.items() if rid.startswith(prefix) and not (fresh_only and v.stale)]


def vllm_priority(priority: float) -> int:
    """vLLM's ``priority`` is an int, lower first; ours is seconds (a deadline): milliseconds keep the order."""
    return int(round(priority * 1000.0))


def step_remaining_ms(step_elapsed_ms: float, step_ms: float, age_s: float = 0.0) -> float:
    """Expected time until the in-progress step ends, seen ``age_s`` after the stats were taken.

    Fresh stats (the engine's own, or a simulation's) give the phase: the previous step's duration minus the time
    this one has run. Once that is used up (stats older than a step, as pushed telemetry is: every 0.1 s, 5-10
    steps; or a step outlasting the previous one) the phase is unknown, and a request arriving at a random instant
    waits half a step on average. (Extrapolating the phase over equal steps was tried: on the live pool it kept no
    correlation with the real wait, since live step times vary.)
    """
    if step_ms <= 0.0:
        return 0.0
    if not step_phase_known(step_elapsed_ms, step_ms, age_s):
        return step_ms / 2
    return min(step_ms - _elapsed_ms(step_elapsed_ms, age_s), step_ms)


def step_phase_known(step_elapsed_ms: float, step_ms: float, age_s: float = 0.0) -> bool:
    """Whether ``step_remaining_ms`` is a phase and not the half-step guess (idle counts as known: no wait)."""
    return step_ms <= 0.0 or _elapsed_ms(step_elapsed_ms, age_s) < step_ms


def _elapsed_ms(step_elapsed_ms: float, age_s: float) -> float:
    return step_elapsed_ms + max(age_s, 0.0) * 1e3


@dataclass(frozen=True)
class StreamChunk:
    """One piece of a streamed completion. Concatenating every chunk's ``text`` gives the non-streamed text."""

    text: str  # new text since the previous chunk (may be empty on the last one)
    num_tokens: int  # output tokens emitted so far, tokens
    finished: bool = False
    result: GenerationResult | None = None  # the whole request's measurements; on the last chunk only
    # (hop, time.time()) stamps each hop added on its way to the client (engine admission, first token, replica
    # in and out): the serving overhead per hop (serving/overhead.py). On a stream's first chunk only.
    stamps_s: tuple[tuple[str, float], ...] = ()


async def coalesce(chunks: AsyncIterator[StreamChunk], interval: int) -> AsyncIterator[StreamChunk]:
    """vLLM's ``stream_interval``: the first chunk at once (TTFT is not delayed), then one chunk per ``interval``
    output tokens, and the last one whenever it comes; texts are concatenated, stamps kept. ``interval`` 1 passes
    the engine's chunks (one per engine step) through unchanged."""
    if interval < 1:
        raise ValueError(f"stream_interval must be at least 1, got {interval}")
    if interval == 1:
        async for chunk in chunks:
            yield chunk
        return
    sent_tokens = 0
    pending: list[StreamChunk] = []
    first = True
    async for chunk in chunks:
        pending.append(chunk)
        if first or chunk.finished or chunk.num_tokens - sent_tokens >= interval:
            first = False
            sent_tokens = chunk.num_tokens
            stamps = tuple(s for c in pending for s in c.stamps_s)
            yield StreamChunk("".join(c.text for c in pending), chunk.num_tokens, chunk.finished, chunk.result, stamps)
            pending = []


async def last_result(chunks: AsyncIterator[StreamChunk]) -> GenerationResult:
    """The whole result of a streamed generation (its last chunk carries it): ``generate`` for an engine whose
    natural form is its stream."""
    result = None
    async for chunk in chunks:
        result = chunk.result
    if result is None:
        raise RuntimeError("the stream ended without a finished chunk")
    return result


def check_served(request: GenerationRequest, served_model: str) -> None:
    """A request for another model is a routing bug: refuse it, naming both."""
    if request.model != served_model:
        raise ValueError(
            f"request {request.request_id!r} is for model {request.model!r} but this replica serves {served_model!r}"
        )


class Engine(Protocol):
    """The async surface every backend offers (the twin driven in wall-clock time, vLLM, a remote server).

    A Serve replica hosts one and never asks which; ``engines.registry.build_engine`` picks it from the pool file.
    """

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Serve ``request`` to the end; cancelling the caller aborts it (its KV blocks are freed)."""
        ...

    def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """The same request as chunks; the last one is ``finished`` and carries the whole result."""
        ...

    async def stats(self) -> ReplicaStats: ...

    def check_health(self) -> None:
        """Raise if the engine can no longer serve (the replica is then replaced)."""
        ...

    async def close(self) -> None: ...
