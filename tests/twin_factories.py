"""Factories and fakes for tests that drive the twin engine core.

``create_core(**overrides)`` builds a core with fakes (any TwinSettings field can be overridden by name),
``create_requests(n, ...)`` builds chat requests whose prompt length is exact under the fake tokenizer, and
``drive(core, arrivals)`` is a minimal simulated driver (virtual clock, external events = arrivals). The fakes
implement the real protocols (StepTimeModel, Responder), so the core under test is the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from sysaware.config import DEFAULT_POOL, PoolConfig, TwinSettings, load_pool
from sysaware.engines.tokens import CHAT_TEMPLATE_TOKENS_PER_MESSAGE
from sysaware.engines.twin.perf.core import EventKind, TwinEngineCore
from sysaware.engines.twin.protocols import BatchShape, Response
from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult, ReplicaStats

MODEL = "fake-model"
CHARS_PER_TOKEN = 4  # the fake answers' text length per token, so truncation is checkable


def count_words(text: str) -> int:
    """The fake tokenizer: one token per whitespace-separated word (fast, and prompt lengths are exact)."""
    return len(text.split())


class FakeStepTime:
    """A linear step-time model: fixed overhead + cost per scheduled token + cost per attended context token.

    ``step_time_s`` and ``decode_run_s`` agree exactly on decode-only steps, like a real model must. Records every
    shape it was asked about (``shapes``) and how many decode runs it computed, so tests can see the batches.
    """

    def __init__(
        self,
        overhead_s: float = 0.005,
        per_token_s: float = 1e-4,
        per_context_token_s: float = 1e-6,
        per_attended_pair_s: float = 1e-9,
        weight_bytes_per_gpu: float = 14 * 2**30,
        kv_bytes_per_token_per_gpu: float = 131072,
    ) -> None:
        self.overhead_s = overhead_s
        self.per_token_s = per_token_s
        self.per_context_token_s = per_context_token_s
        self.per_attended_pair_s = per_attended_pair_s
        self._weight_bytes = weight_bytes_per_gpu
        self._kv_bytes = kv_bytes_per_token_per_gpu
        self.shapes: list[BatchShape] = []
        self.num_decode_runs = 0

    def step_time_s(self, shape: BatchShape) -> float:
        self.shapes.append(shape)
        return (
            self.overhead_s
            + self.per_token_s * shape.num_tokens
            + self.per_context_token_s * shape.decode_context
            + self.per_attended_pair_s * shape.prefill_attended
        )

    def decode_run_s(self, num_seqs: int, context_total: int, num_steps: int) -> np.ndarray:
        self.num_decode_runs += 1
        context = context_total + num_seqs * np.arange(num_steps, dtype=np.float64)
        return self.overhead_s + self.per_token_s * num_seqs + self.per_context_token_s * context

    def weight_bytes_per_gpu(self) -> float:
        return self._weight_bytes

    def kv_bytes_per_token_per_gpu(self) -> float:
        return self._kv_bytes


class FakeResponder:
    """Answers of a chosen length: an int for all, a mapping by request id, or a function of the request.
    The text is CHARS_PER_TOKEN characters per token. Counts calls (the answer must be decided once)."""

    def __init__(self, output_tokens: int | Mapping[str, int] | Callable[[GenerationRequest], int] = 8) -> None:
        self.output_tokens = output_tokens
        self.num_calls = 0

    def respond(self, request: GenerationRequest) -> Response:
        self.num_calls += 1
        spec = self.output_tokens
        if isinstance(spec, int):
            n = spec
        elif isinstance(spec, Mapping):
            n = spec[request.request_id]
        else:
            n = spec(request)
        return Response(text="abc " * n, output_tokens=n)


_CORE_ARGS = {"model", "replica_id", "step_time", "responder", "num_gpu_blocks", "tokenizer_count", "max_model_len"}


def create_core(**overrides) -> TwinEngineCore:
    """A core with fakes. Overrides: any constructor argument, any TwinSettings field, or ``output_tokens`` (for
    the default FakeResponder)."""
    settings_fields = set(TwinSettings.model_fields)
    unknown = set(overrides) - _CORE_ARGS - settings_fields - {"output_tokens", "settings"}
    if unknown:
        raise TypeError(f"create_core: unknown overrides {sorted(unknown)}")
    settings = overrides.get("settings") or TwinSettings(
        **{k: v for k, v in overrides.items() if k in settings_fields}
    )
    return TwinEngineCore(
        model=overrides.get("model", MODEL),
        replica_id=overrides.get("replica_id", "replica-0"),
        step_time=overrides.get("step_time") or FakeStepTime(),
        responder=overrides.get("responder") or FakeResponder(overrides.get("output_tokens", 8)),
        num_gpu_blocks=overrides.get("num_gpu_blocks", 1000),
        settings=settings,
        tokenizer_count=overrides.get("tokenizer_count", count_words),
        max_model_len=overrides.get("max_model_len"),
    )


def create_requests(
    n: int,
    prompt_tokens: int | Sequence[int] = 32,
    max_tokens: int = 1024,
    priority: float = 0.0,
    prefix: str = "req",
    seed: int = 0,
) -> list[GenerationRequest]:
    """``n`` one-message chat requests named ``{prefix}-{i}``, whose prompts count exactly ``prompt_tokens``
    under ``count_words`` plus the chat-template overhead."""
    lengths = [prompt_tokens] * n if isinstance(prompt_tokens, int) else list(prompt_tokens)
    assert len(lengths) == n
    requests = []
    for i, length in enumerate(lengths):
        words = length - CHAT_TEMPLATE_TOKENS_PER_MESSAGE
        assert words >= 0, f"a prompt has at least {CHAT_TEMPLATE_TOKENS_PER_MESSAGE} tokens of template"
        requests.append(
            GenerationRequest(
                request_id=f"{prefix}-{i}",
                model=MODEL,
                messages=(ChatMessage("user", " ".join(["w"] * words)),),
                max_tokens=max_tokens,
                seed=seed + i,
                priority=priority,
            )
        )
    return requests


@dataclass
class DriveLog:
    results: dict[str, GenerationResult] = field(default_factory=dict)
    num_step_calls: int = 0
    num_iterations: int = 0
    end_s: float = 0.0


def drive(
    core: TwinEngineCore,
    arrivals: Sequence[tuple[float, GenerationRequest]],
    single_step: bool = False,
    start_s: float = 0.0,
    max_calls: int = 1_000_000,
    run_after_prefill: bool = False,
    learn_late: bool = False,
) -> DriveLog:
    """Run ``core`` until every arrival is served: a virtual clock, arrivals as the only external events.

    An arrival is delivered before the first step that starts at or after its time, stamped with its own time.
    ``single_step`` bounds every step by ``now`` so the core runs one iteration per call. ``learn_late`` drives like
    a live driver: ``step(now)`` without a bound, then ``truncate(arrival)`` when the next arrival lands inside the
    run. ``start_s`` is the clock where a test that stepped the core by hand left it. The clock moves to each
    outcome's ``end_s``, so times are the core's own floats.
    """
    pending = sorted(arrivals, key=lambda a: a[0])
    log = DriveLog()
    now = start_s
    i = 0
    while i < len(pending) or core.has_work():
        while i < len(pending) and pending[i][0] <= now:
            core.add_request(pending[i][1], pending[i][0])
            i += 1
        if not core.has_work():
            now = pending[i][0]
            continue
        next_arrival = pending[i][0] if i < len(pending) else None
        if single_step:
            until = now
        elif learn_late:
            until = None
        else:
            until = next_arrival
        outcome = core.step(now, until, run_after_prefill=run_after_prefill)
        if learn_late and next_arrival is not None and next_arrival < outcome.end_s:
            if core.truncate(next_arrival) is not None:
                outcome = core.last_outcome
        log.num_step_calls += 1
        log.num_iterations += outcome.num_iterations
        assert log.num_step_calls <= max_calls, "the core does not make progress"
        assert outcome.end_s == now + outcome.duration_s or abs(outcome.end_s - now - outcome.duration_s) < 1e-9
        now = outcome.end_s
        for event in outcome.events:
            if event.kind is EventKind.FINISHED:
                log.results[event.request_id] = event.result
    log.end_s = now
    return log


def assert_drained(core: TwinEngineCore) -> None:
    """Teardown check: nothing queued, nothing held, no request left behind."""
    assert not core.has_work()
    assert core.requests == {}
    assert core.kv_cache.num_free_blocks == core.kv_cache.num_blocks


@lru_cache(maxsize=1)
def default_pool() -> PoolConfig:
    """configs/pool_twin.yaml, parsed once per test process."""
    return load_pool(DEFAULT_POOL)


@lru_cache(maxsize=1)
def default_responder():
    """The real TwinResponder of the default pool, built once per test process (it loads the recordings)."""
    from sysaware.engines.twin.responder.twin_responder import TwinResponder

    return TwinResponder(default_pool())


def default_backend():
    """The simulated backend of the default pool over ``default_responder``."""
    from sysaware.sim.backend import SimBackend

    return SimBackend(default_pool(), default_responder())


# Samples a vLLM dashboard reads, by vLLM's names: what the pool's Prometheus text must carry.
VLLM_SAMPLE_NAMES = {
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_count",
}


def create_stats(replica_id: str = "m#0", model: str = "m", t: float = 0.0, **fields) -> ReplicaStats:
    """Stats of an idle replica at engine time ``t``, with any field overridden."""
    values = {
        "num_requests_waiting": 0,
        "num_requests_running": 0,
        "kv_cache_usage_perc": 0.0,
        "ema_ttft_ms": 0.0,
        "prompt_tokens_total": 0,
        "generation_tokens_total": 0,
        "num_preemptions_total": 0,
        "requests_finished_total": 0,
        "num_gpu_blocks": 1000,
        "block_size": 16,
    } | fields
    return ReplicaStats(replica_id=replica_id, model=model, timestamp_s=t, **values)
