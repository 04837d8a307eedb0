"""A request's deadline reaches vLLM as its priority: with ``scheduling_policy: priority`` and the engine saturated,
the request with the earlier deadline gets its first token first, though it arrived later. (Under FCFS the later
arrival would wait; so this fails if the priority is dropped on the way, sent with the wrong sign, or ignored.)"""

from __future__ import annotations

import asyncio
import time

from engine_contract import tiny_messages, tiny_pool, vllm_model
from sysaware.config import ModelDeployment, SchedulingPolicy
from sysaware.engines.types import GenerationRequest

SLOTS = 2  # max_num_seqs: two long fillers saturate the engine


def _priority_model() -> ModelDeployment:
    model = vllm_model("vllm")
    twin = model.twin.model_copy(update={"max_num_seqs": SLOTS, "scheduling_policy": SchedulingPolicy.PRIORITY})
    return ModelDeployment.model_validate({**model.model_dump(), "twin": twin.model_dump()})


def _request(name: str, max_tokens: int, deadline_s: float) -> GenerationRequest:
    return GenerationRequest(f"prio-{name}", "tiny-llama", tiny_messages(), max_tokens=max_tokens, temperature=0.0,
                             seed=1, priority=deadline_s, ignore_eos=True)


async def _until(engine, what, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = await engine.stats()
        if what(stats):
            return stats
        await asyncio.sleep(0.02)
    return None


def test_an_earlier_deadline_gets_its_first_token_first_when_the_engine_is_saturated():
    from sysaware.engines.registry import build_engine

    model = _priority_model()
    pool = tiny_pool().model_copy(update={"models": [model]})
    loop = asyncio.new_event_loop()

    async def build():
        return build_engine(model, pool, "priority-vllm#0")

    engine = loop.run_until_complete(build())

    async def main():
        # Two fillers with the best priority (deadline 0: never preempted for the others) and different lengths,
        # so one slot frees at a time; then a late-deadline request, then an early-deadline one, both queued.
        fillers = [asyncio.ensure_future(engine.generate(_request(f"filler{i}", n, 0.0)))
                   for i, n in enumerate((600, 1200))]
        saturated = await _until(engine, lambda s: s.num_requests_running == SLOTS)
        late = asyncio.ensure_future(engine.generate(_request("late", 4, 100.0)))
        late_queued = await _until(engine, lambda s: s.num_requests_waiting >= 1)
        early = asyncio.ensure_future(engine.generate(_request("early", 4, 10.0)))
        both_queued = await _until(engine, lambda s: s.num_requests_waiting >= 2)
        results = await asyncio.gather(*fillers, late, early)
        return saturated, late_queued, both_queued, results

    try:
        saturated, late_queued, both_queued, (short, long_, late, early) = loop.run_until_complete(main())
    finally:
        loop.run_until_complete(engine.close())
        loop.close()
    assert saturated is not None and late_queued is not None, "the engine was never saturated"
    assert both_queued is not None and both_queued.num_requests_running == SLOTS, both_queued  # both waited
    assert late.arrival_s < early.arrival_s
    assert early.first_token_s < late.first_token_s, (early, late)  # the earlier deadline went first
    assert short.finished_s <= early.first_token_s < long_.finished_s  # into the first slot that freed
