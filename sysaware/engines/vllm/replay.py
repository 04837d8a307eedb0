"""Replay a trace on a real vLLM engine, step by step, recording what its scheduler did: for ``twin-check`` and
``calibrate --vllm``.

The engine is vLLM's synchronous ``LLMEngine`` with its engine core in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), driven in wall-clock time exactly as a server drives it: before every step,
the requests whose arrival time has passed are added; the step runs; its outputs are read. In process, the
scheduler is visible, so every step is recorded from the source: its shape (the ``BatchShape`` sums the twin's
step-time model takes), who was preempted, running and waiting after it, and its wall duration. Each request's
arrival, first scheduling, token times and preemptions come from the same loop, on one clock.

Prompts are random token ids of the trace's lengths (the tiny model's vocabulary) and outputs are forced to the
trace's lengths with ``ignore_eos``, so the twin can be given the very same work.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from sysaware.config import ModelDeployment
from sysaware.engines.fidelity import TraceRequest, ReplayLog, StepLog, RequestLog


def replay_on_vllm(model: ModelDeployment, trace: list[TraceRequest], seed: int = 0, warmup: bool = True,
                   **arg_overrides: Any) -> ReplayLog:
    """Run ``trace`` on a fresh in-process vLLM engine built from ``model``'s engine arguments."""
    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: its scheduler is visible
    try:
        return _replay(model, trace, seed, warmup, arg_overrides)
    finally:
        if before is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before


def _replay(model: ModelDeployment, trace: list[TraceRequest], seed: int, warmup: bool,
            arg_overrides: dict[str, Any]) -> ReplayLog:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    from sysaware.engines.types import vllm_priority
    from sysaware.engines.vllm.engine import apply_engine_env, engine_args_for

    args = engine_args_for(model, **arg_overrides)
    apply_engine_env(model)
    args["disable_log_stats"] = True
    args["enable_logging_iteration_details"] = False
    engine = LLMEngine.from_engine_args(EngineArgs(**args))
    try:
        core = engine.engine_core.engine_core  # InprocClient -> EngineCore
        scheduler = core.scheduler
        num_blocks = int(engine.vllm_config.cache_config.num_gpu_blocks)
        vocab = engine.vllm_config.model_config.get_vocab_size()
        rng = random.Random(seed)
        send_priority = args.get("scheduling_policy") == "priority"

        def params(n: int):
            return SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)

        def prompt(n: int) -> dict:
            return {"prompt_token_ids": [rng.randrange(3, vocab - 8) for _ in range(n)]}

        if warmup:  # first steps pay one-off costs (allocations, kernel selection): not the engine's steady state
            for i in range(3):
                engine.add_request(f"warmup-{i}", prompt(64), params(8))
            while engine.has_unfinished_requests():
                engine.step()

        captured: dict[str, Any] = {}
        original_schedule = scheduler.schedule

        def schedule(*a, **k):
            out = original_schedule(*a, **k)
            captured["out"] = out
            captured["shape"] = _shape(scheduler, out)
            return out

        scheduler.schedule = schedule
        log = ReplayLog(engine="vllm", num_gpu_blocks=num_blocks, block_size=int(args["block_size"]))
        requests = {r.request_id: RequestLog(r.request_id, r.prompt_tokens, r.output_tokens, r.priority)
                    for r in trace}
        pending = sorted(trace, key=lambda r: r.arrival_s)
        ours: dict[str, str] = {}  # vLLM's internal request id -> the trace's
        t0 = time.monotonic()
        i = 0
        while i < len(pending) or engine.has_unfinished_requests():
            now = time.monotonic() - t0
            while i < len(pending) and pending[i].arrival_s <= now:
                r = pending[i]
                # vLLM's scheduler knows the request by an internal id (ours plus a suffix): map it back.
                internal = engine.add_request(r.request_id, prompt(r.prompt_tokens), params(r.output_tokens),
                                              priority=vllm_priority(r.priority) if send_priority else 0)
                ours[internal if isinstance(internal, str) else r.request_id] = r.request_id
                # The request was sent at its trace time; the engine sees it at the next step boundary, as a
                # server's engine does (the wait for the step in progress is part of its TTFT, in vLLM and the twin).
                requests[r.request_id].arrival_s = r.arrival_s
                i += 1
            if not engine.has_unfinished_requests():
                time.sleep(max(pending[i].arrival_s - (time.monotonic() - t0), 0.0))
                continue
            start = time.monotonic() - t0
            captured.clear()
            outputs = engine.step()
            end = time.monotonic() - t0
            out = captured.get("out")
            if out is None or not out.total_num_scheduled_tokens:
                continue
            preempted = sorted(ours.get(rid, rid) for rid in (getattr(out, "preempted_req_ids", None) or ()))
            log.steps.append(StepLog(start, end, *captured["shape"], len(scheduler.running),
                                     len(scheduler.waiting) + len(getattr(scheduler, "kv_holding_waiting", ()) or ()),
                                     preempted))
            for rid in out.num_scheduled_tokens:
                req = requests.get(ours.get(rid, rid))
                if req is not None and req.first_scheduled_s is None:
                    req.first_scheduled_s = start
            for rid in preempted:
                if rid in requests:
                    requests[rid].num_preemptions += 1
            for o in outputs:
                req = requests.get(ours.get(o.request_id, o.request_id))
                if req is None:
                    continue
                new = len(o.outputs[0].token_ids) - len(req.token_times_s)
                req.token_times_s.extend([end] * max(new, 0))
        log.requests = list(requests.values())
        return log
    finally:
        scheduler_ = getattr(getattr(getattr(engine, "engine_core", None), "engine_core", None), "scheduler", None)
        if scheduler_ is not None:
            scheduler_.__dict__.pop("schedule", None)
        engine.engine_core.shutdown()


def _shape(scheduler, out) -> tuple[int, int, int, int]:
    """(prefill_tokens, prefill_attended, decode_seqs, decode_context) of a step, the twin's BatchShape sums.
    vLLM has already added the scheduled tokens to num_computed_tokens when schedule() returns."""
    prefill_tokens = prefill_attended = decode_seqs = decode_context = 0
    for rid, n in out.num_scheduled_tokens.items():
        req = scheduler.requests[rid]
        before = req.num_computed_tokens - n
        if n == 1 and req.num_output_tokens > 0 and before == req.num_tokens - 1:
            decode_seqs += 1
            decode_context += req.num_tokens
        else:
            prefill_tokens += n
            prefill_attended += n * (before + n)
    return prefill_tokens, prefill_attended, decode_seqs, decode_context
