"""``backend: vllm``: the replica hosts vLLM's ``AsyncLLM`` (its engine core runs in a child process vLLM spawns).

    generate / generate_stream   AsyncLLM.generate with DELTA outputs; the request's priority (our deadline, s) goes
                                 to vLLM as an int in ms when the pool's scheduling_policy is priority
    abort                        closing the stream or cancelling the caller: AsyncLLM.generate aborts in the core
    stats                        a StatLoggerBase subclass fed once per engine step (engines/vllm/stats.py)
    GenerationResult times       the core's own timestamps (queued, scheduled, first token; time.monotonic, the
                                 same clock in both processes) on this replica's EngineClock

Engine arguments come from the pool file: the scheduler limits in ``twin`` (the twin and vLLM read the same
numbers) and the rest in ``engine`` (config.EngineSettings). Prefix caching is off: the twin has none, and MBPP
prompts share long system prompts, so it would make vLLM and its twin disagree by design.

Importing this module imports vLLM; ``engines.registry`` does so only for ``backend: vllm``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sysaware.config import ModelDeployment, SchedulingPolicy
from sysaware.engines.clock import EngineClock
from sysaware.engines.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ReplicaStats,
    StreamChunk,
    check_served,
    last_result,
    vllm_priority,
)
from sysaware.engines.vllm.stats import StepRecorder

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


def resolve_model_path(model: ModelDeployment, cache_dir: Path | None = None) -> str:
    """What vLLM loads: ``engine.model_path`` (default ``hf_id``); ``builtin:tiny-llama`` is built here, in code."""
    path = model.engine.model_path or model.hf_id
    if path.startswith(BUILTIN_PREFIX):
        from sysaware.engines.vllm.tiny_model import DEFAULT_NAME, ensure_tiny_model

        name = path[len(BUILTIN_PREFIX):]
        if name != DEFAULT_NAME:
            raise ValueError(f"{model.name}: unknown builtin model {name!r}; known: {DEFAULT_NAME!r}")
        return str(ensure_tiny_model(cache_dir))
    return path


def apply_engine_env(model: ModelDeployment) -> None:
    """The pool file's ``engine.env``, into this process's environment before vLLM starts (its engine core and
    workers inherit it)."""
    os.environ.update(model.engine.env)


def engine_args_for(model: ModelDeployment, **overrides: Any) -> dict[str, Any]:
    """vLLM ``EngineArgs`` keywords for ``model`` as the pool file describes it."""
    twin, engine = model.twin, model.engine
    path = resolve_model_path(model)
    args: dict[str, Any] = {
        "model": path,
        "tokenizer": path,
        "served_model_name": [model.name],
        "tensor_parallel_size": model.tensor_parallel,
        "max_num_seqs": twin.max_num_seqs,
        "max_num_batched_tokens": twin.max_num_batched_tokens,
        "block_size": twin.block_size,
        "gpu_memory_utilization": twin.gpu_memory_utilization,
        "scheduling_policy": "priority" if twin.scheduling_policy is SchedulingPolicy.PRIORITY else "fcfs",
        "enable_prefix_caching": False,
        "enable_chunked_prefill": True,
        "load_format": engine.load_format,
        "dtype": engine.dtype,
        "enforce_eager": engine.enforce_eager,
        "enable_logging_iteration_details": True,
        "disable_log_stats": True,  # our stat logger only (custom loggers still get every step)
    }
    if not twin.reserve_full_sequence:  # vLLM's default is on; older vLLMs have no such argument
        args["scheduler_reserve_full_isl"] = False
    if engine.max_model_len is not None:
        args["max_model_len"] = engine.max_model_len
    if engine.num_gpu_blocks is not None:
        args["num_gpu_blocks_override"] = engine.num_gpu_blocks
    if engine.kv_cache_memory_bytes is not None:
        args["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
    args.update(engine.extra_args)
    args.update(overrides)
    return args


def logger_class(recorder: StepRecorder):
    """A vLLM stat logger class (vLLM builds it with ``(vllm_config, engine_index)``) that feeds ``recorder``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SysawareStatLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            cache = vllm_config.cache_config
            recorder.configure(cache.num_gpu_blocks, cache.block_size)
            self.cache_config = cache

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            if not recorder.num_gpu_blocks and self.cache_config.num_gpu_blocks:
                recorder.configure(self.cache_config.num_gpu_blocks, self.cache_config.block_size)
            recorder.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            recorder.configure(self.cache_config.num_gpu_blocks, self.cache_config.block_size)

    return SysawareStatLogger


class VllmEngine:
    """One ``AsyncLLM`` serving one model of the pool; speaks the ``Engine`` protocol."""

    def __init__(self, model: ModelDeployment, replica_id: str, **arg_overrides: Any) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model = model
        self.replica_id = replica_id
        self.clock = EngineClock(1.0)
        self.recorder = StepRecorder(replica_id, model.name, ema_alpha=model.twin.ema_alpha)
        self.send_priority = model.twin.scheduling_policy is SchedulingPolicy.PRIORITY
        self.engine_args = engine_args_for(model, **arg_overrides)
        apply_engine_env(model)
        t0 = time.monotonic()
        self.llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**self.engine_args), stat_loggers=[logger_class(self.recorder)]
        )
        cache = self.llm.vllm_config.cache_config
        self.recorder.configure(cache.num_gpu_blocks, cache.block_size)
        self.max_model_len = self.llm.vllm_config.model_config.max_model_len
        self.tokenizer = self.llm.get_tokenizer()
        self._closed = False
        logger.info("%s: vLLM engine up in %.1f s (%s KV blocks of %s tokens)", replica_id, time.monotonic() - t0,
                    cache.num_gpu_blocks, cache.block_size)

    @property
    def num_gpu_blocks(self) -> int:
        return int(self.llm.vllm_config.cache_config.num_gpu_blocks or 0)

    # ---- requests ---------------------------------------------------------------------------------------------

    def prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        """The chat template applied to the messages (plain joined text for a tokenizer without one)."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # a BatchEncoding in newer transformers
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tokenizer.encode(request.prompt_text()))

    def _sampling_params(self, request: GenerationRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            min_tokens=request.min_tokens,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await last_result(self.generate_stream(request))

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """DELTA outputs as chunks; the last carries the result. Closing or cancelling aborts in the engine core."""
        self.check_health()
        check_served(request, self.model.name)
        if not request.messages:
            raise ValueError(f"request {request.request_id!r} has no messages")
        if request.max_tokens < 1:
            raise ValueError(f"request {request.request_id!r}: max_tokens must be at least 1, got {request.max_tokens}")
        prompt_ids = self.prompt_token_ids(request)
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(
                f"request {request.request_id!r}: prompt of {len(prompt_ids)} tokens does not fit the model context "
                f"of {self.max_model_len} tokens (max_model_len) with room for one output token"
            )
        params = self._sampling_params(request)
        arrival_wall = time.monotonic()
        token_times: list[float] = []
        parts: list[str] = []
        finish: FinishReason | None = None
        metrics = None
        num_preemptions = 0
        stream = self.llm.generate(
            {"prompt_token_ids": prompt_ids},
            params,
            request.request_id,
            priority=vllm_priority(request.priority) if self.send_priority else 0,
        )
        ended = False
        try:
            async for out in stream:
                now = self.clock.now()
                completion = out.outputs[0]
                new = len(completion.token_ids)
                token_times.extend([now] * new)
                parts.append(completion.text)
                if completion.finish_reason:
                    finish = _FINISH.get(str(completion.finish_reason), FinishReason.STOP)
                metrics = out.metrics if out.metrics is not None else metrics
                if new or completion.text:
                    yield StreamChunk(text=completion.text, num_tokens=len(token_times))
            ended = True
        finally:
            await stream.aclose()  # AsyncLLM.generate aborts the request when closed before its end ...
            if not ended:
                # ... but only once its add_request has returned (vLLM 0.32, v1/engine/async_llm.py: `if q is not
                # None`): a cancel that lands while the request is being admitted leaks it to its end. An abort by
                # our id covers that window (one already gone is a no-op); shielded, so a second cancel can't cut it.
                await asyncio.shield(self.llm.abort(request.request_id))
        if metrics is not None:
            num_preemptions = int(getattr(metrics, "num_preemptions", 0))
        result = GenerationResult(
            request_id=request.request_id,
            model=request.model,
            text="".join(parts),
            prompt_tokens=len(prompt_ids),
            output_tokens=len(token_times),
            finish_reason=finish or FinishReason.STOP,
            arrival_s=self._engine_s(arrival_wall),
            first_scheduled_s=self._engine_s(getattr(metrics, "scheduled_ts", 0.0)) if metrics else None,
            first_token_s=self._core_or(getattr(metrics, "first_token_ts", 0.0), token_times[0] if token_times else None),
            finished_s=token_times[-1] if token_times else self.clock.now(),
            num_preemptions=num_preemptions,
            replica_id=self.replica_id,
            token_times_s=tuple(token_times),
        )
        yield StreamChunk(text="", num_tokens=len(token_times), finished=True, result=result)

    def _engine_s(self, monotonic_s: float) -> float | None:
        """A time.monotonic() stamp (the engine core's clock) on this engine's clock; None for an unset stamp."""
        if not monotonic_s:
            return None
        return (monotonic_s - self.clock.wall_deadline(0.0)) * self.clock.time_scale

    def _core_or(self, core_s: float, fallback: float | None) -> float | None:
        """The core's own stamp when it has one, else when the frontend saw it."""
        stamp = self._engine_s(core_s) if core_s else None
        return stamp if stamp is not None else fallback

    # ---- state ------------------------------------------------------------------------------------------------

    async def stats(self) -> ReplicaStats:
        return self.recorder.stats(self.clock.now())

    def check_health(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.replica_id}: the vLLM engine was closed")
        if self.llm.errored:
            raise RuntimeError(f"{self.replica_id}: the vLLM engine died: {self.llm.dead_error!r}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.llm.shutdown)


def build_vllm_engine(model: ModelDeployment, replica_id: str) -> VllmEngine:
    return VllmEngine(model, replica_id)
