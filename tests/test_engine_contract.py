"""The engine contract, on every backend this environment has: the twin always; vLLM in process and a remote vLLM
OpenAI server when ``SYSAWARE_VLLM_TESTS=1`` (``make test-vllm``). The backends not available here are not
parametrized at all (so the main suite counts no skips for them).

Every engine: generate; streaming gives the non-streamed text; usage (prompt and output tokens, finish reason);
stats fields and units; an abort (a closed stream, a cancelled call) frees the request and its KV blocks; a bad
request raises ValueError and the engine goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from engine_contract import VLLM_TESTS, EngineUnderTest, free_port, tiny_messages, vllm_model
from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.types import FinishReason, GenerationRequest, StreamChunk

BACKENDS = ["twin"] + (["vllm", "remote"] if VLLM_TESTS else [])
TWIN_TIME_SCALE = 20.0
DELIVERY_S = 2.0  # how long a made token may take to reach the caller on a loaded machine
# The tiny model's max_model_len (8192) less room for the prompt: ~45 s of decoding on vLLM/CPU here.
UNENDING_TINY_TOKENS = 7600


def _twin(loop: asyncio.AbstractEventLoop) -> EngineUnderTest:
    from sysaware.engines.registry import build_engine
    from sysaware.tasks.mbpp import load_tasks
    from sysaware.tasks.prompts import ROLES, task_prompt
    from sysaware.engines.types import ChatMessage

    pool = load_pool(DEFAULT_POOL)
    model = pool.models[0]
    engine = build_engine(model, pool, "contract-twin#0", TWIN_TIME_SCALE)
    task = load_tasks()[0]
    messages = (ChatMessage("system", ROLES["programmer"].system_prompt),
                ChatMessage("user", task_prompt(task.text, task.test_list[0])))
    return EngineUnderTest("twin", engine, model, loop, messages, long_output_tokens=4000, unending_tokens=4000)


def _vllm(loop: asyncio.AbstractEventLoop) -> EngineUnderTest:
    from sysaware.engines.registry import build_engine

    model = vllm_model("vllm")
    engine = build_engine(model, load_pool_for(model), "contract-vllm#0")
    return EngineUnderTest("vllm", engine, model, loop, tiny_messages(), long_output_tokens=1900,
                           unending_tokens=UNENDING_TINY_TOKENS)


def _remote(loop: asyncio.AbstractEventLoop, tmp: Path) -> EngineUnderTest:
    from sysaware.engines.registry import build_engine
    from sysaware.engines.vllm.server import VllmServer

    server = VllmServer(vllm_model("vllm"), free_port(), log_path=tmp / "vllm-server.log")
    try:
        server.wait_ready(timeout_s=float(os.environ.get("SYSAWARE_VLLM_START_TIMEOUT_S", "600")))
    except BaseException:
        server.stop()
        raise
    model = vllm_model("remote", endpoint=server.url)
    engine = build_engine(model, load_pool_for(model), "contract-remote#0")
    eut = EngineUnderTest("remote", engine, model, loop, tiny_messages(), long_output_tokens=1900,
                          unending_tokens=UNENDING_TINY_TOKENS, stats_lag_s=1.0)
    eut.closers.append(server.stop)
    return eut


def load_pool_for(model):
    from engine_contract import tiny_pool

    pool = tiny_pool()
    return pool.model_copy(update={"models": [model]})


@pytest.fixture(scope="module", params=BACKENDS)
def eut(request, tmp_path_factory):
    loop = asyncio.new_event_loop()
    backend = request.param
    if backend == "twin":
        built = _twin(loop)
    elif backend == "vllm":
        built = loop.run_until_complete(_in_loop(_vllm, loop))
    else:
        built = _remote(loop, tmp_path_factory.mktemp("remote"))
    try:
        yield built
    finally:
        loop.run_until_complete(built.engine.close())
        for close in built.closers:
            close()
        loop.close()


async def _in_loop(build, loop):
    return build(loop)


async def _collect(stream) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


# ---- generate -------------------------------------------------------------------------------------------------


def test_generate_returns_a_whole_result(eut: EngineUnderTest):
    request = eut.request(max_tokens=12)
    result = eut.run(eut.engine.generate(request))
    assert result.request_id == request.request_id and result.model == eut.model.name
    assert isinstance(result.text, str)
    assert result.output_tokens == 12 and result.finish_reason is FinishReason.LENGTH  # ignore_eos: all 12
    assert result.prompt_tokens > 0
    assert len(result.token_times_s) == result.output_tokens
    assert list(result.token_times_s) == sorted(result.token_times_s)
    # Engine-clock times in order: arrival <= (scheduled) <= first token <= finished.
    assert result.first_token_s is not None and result.arrival_s <= result.first_token_s <= result.finished_s
    if result.first_scheduled_s is not None:
        assert result.arrival_s <= result.first_scheduled_s <= result.first_token_s
    assert result.ttft_s > 0 and result.tpot_s is not None and result.tpot_s >= 0
    # The same first token, stamped where the engine made it and where the caller received it: the second is not
    # earlier, and later by at most the delivery hop (vLLM: engine core process -> frontend; under a load of 15 on
    # 2 cores it measured 0.42 s).
    assert result.first_token_s - 1e-6 <= result.token_times_s[0] <= result.first_token_s + DELIVERY_S


def test_stream_concatenates_to_the_non_streamed_text(eut: EngineUnderTest):
    whole = eut.run(eut.engine.generate(eut.request(max_tokens=24, seed=3)))
    chunks = eut.run(_collect(eut.engine.generate_stream(eut.request(max_tokens=24, seed=3))))
    assert "".join(c.text for c in chunks) == whole.text
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
    counts = [c.num_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == whole.output_tokens == 24
    assert all(c.result is None for c in chunks[:-1])
    last = chunks[-1].result
    assert last is not None and last.text == whole.text
    assert (last.prompt_tokens, last.output_tokens, last.finish_reason) == (
        whole.prompt_tokens, whole.output_tokens, whole.finish_reason)


def test_usage_counts_the_prompt_and_caps_at_max_tokens(eut: EngineUnderTest):
    short = eut.run(eut.engine.generate(eut.request(max_tokens=1)))
    assert short.output_tokens == 1 and short.finish_reason is FinishReason.LENGTH and short.tpot_s is None
    longer = eut.run(eut.engine.generate(eut.request(max_tokens=5)))
    assert longer.prompt_tokens == short.prompt_tokens  # same prompt, same count
    assert longer.output_tokens == 5
    # Without ignore_eos the model may stop early, never late.
    free = eut.run(eut.engine.generate(eut.request(max_tokens=8, ignore_eos=False)))
    assert 1 <= free.output_tokens <= 8
    assert free.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert (free.finish_reason is FinishReason.LENGTH) == (free.output_tokens == 8) or free.output_tokens == 8


# ---- stats ----------------------------------------------------------------------------------------------------


def test_stats_fields_and_units(eut: EngineUnderTest):
    async def main():
        before = await eut.wait_stats(lambda s: s.num_requests_running == 0 and s.num_requests_waiting == 0)
        result = await eut.engine.generate(eut.request(max_tokens=10))
        after = await eut.wait_stats(lambda s: s.requests_finished_total >= before.requests_finished_total + 1
                                     and s.generation_tokens_total >= before.generation_tokens_total + 10
                                     and _idle(s))
        return before, result, after

    before, result, after = eut.run(main())
    assert after.model == eut.model.name and after.replica_id
    assert after.requests_finished_total == before.requests_finished_total + 1
    assert after.generation_tokens_total == before.generation_tokens_total + result.output_tokens
    assert after.prompt_tokens_total == before.prompt_tokens_total + result.prompt_tokens
    assert after.num_preemptions_total >= before.num_preemptions_total >= 0
    assert after.num_gpu_blocks > 0 and after.block_size > 0
    assert 0.0 <= after.kv_cache_usage_perc <= 1.0
    assert after.num_requests_running == after.num_requests_waiting == 0
    assert after.step_ms >= 0 and after.step_elapsed_ms >= 0 and after.step_tokens >= 0
    assert after.ema_ttft_ms >= 0
    assert after.timestamp_s >= before.timestamp_s


def test_stats_show_running_requests_and_their_kv_blocks(eut: EngineUnderTest):
    async def main():
        # Eight long requests, each followed by another as it ends, until the stats have shown the engine busy: a
        # remote server's stats are a scrape, and on a fast engine with a loaded front end a fixed batch of work can
        # end before a scrape sent after it started is answered (seen in CI: eight 1900-token requests came and went
        # unseen by ~380 scrapes). Kept busy, the engine is observed however the two speeds compare.
        firsts: list[StreamChunk] = []

        async def one_after_another():
            while True:
                stream = eut.engine.generate_stream(eut.request(max_tokens=eut.long_output_tokens))
                try:
                    firsts.append(await anext(stream))
                    async for _ in stream:
                        pass
                finally:
                    await stream.aclose()

        load = [asyncio.ensure_future(one_after_another()) for _ in range(8)]
        busy = await eut.wait_stats(lambda s: s.num_requests_running >= 1 and s.kv_cache_usage_perc > 0
                                    and s.step_ms > 0)
        if not busy.num_requests_running:  # say what the engine saw, to tell a slow scraper from a wrong one
            print(f"busy never seen; requests sent: {len(firsts)}; load ended: {[t.done() for t in load]}; "
                  f"scrapes: {getattr(eut.engine, 'scrapes_total', '-')}, "
                  f"failed: {getattr(eut.engine, 'scrape_failures_total', '-')}")
        for task in load:
            task.cancel()
        ended = await asyncio.gather(*load, return_exceptions=True)
        await eut.wait_stats(_idle)
        return firsts, busy, ended

    firsts, busy, ended = eut.run(main())
    assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended  # no request failed on the way
    assert firsts and all(f.num_tokens >= 1 for f in firsts)
    assert busy.num_requests_running >= 1 and 0 < busy.kv_cache_usage_perc <= 1.0
    assert busy.step_ms > 0 and busy.step_tokens >= 1  # a busy engine has a step in progress


# ---- abort ----------------------------------------------------------------------------------------------------


def _idle(s) -> bool:
    return s.num_requests_running == 0 and s.num_requests_waiting == 0 and s.kv_cache_usage_perc == 0.0


def test_closing_a_stream_aborts_the_request_and_frees_its_blocks(eut: EngineUnderTest):
    async def main():
        stream = eut.engine.generate_stream(eut.request(max_tokens=eut.long_output_tokens))
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        return await eut.wait_stats(_idle)

    idle = eut.run(main())
    assert _idle(idle), idle


def test_cancelling_a_call_aborts_the_request_and_frees_its_blocks(eut: EngineUnderTest):
    async def main():
        before = await eut.wait_stats(_idle)
        task = asyncio.ensure_future(eut.engine.generate(eut.request(max_tokens=eut.unending_tokens)))
        # Cancelled once the engine shows it running (an abort of a request that is decoding is what this pins
        # down), on a request no stall of this process outlasts: CI once saw a 1900-token request, cancelled while
        # running, end as a success ~11 s later, and a local loop of this test saw the test process stall ~8 s
        # (its scrapes timed out) while the server decoded on.
        seen = await eut.wait_stats(lambda s: s.num_requests_running >= 1)
        assert seen.num_requests_running >= 1 and not task.done(), (seen, task)
        seen_at = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        idle = await eut.wait_stats(_idle)
        return before, idle, time.monotonic() - seen_at

    before, idle, took_s = eut.run(main())
    assert _idle(idle), idle
    # An abort is not a success.
    assert idle.requests_finished_total == before.requests_finished_total, f"idle {took_s:.1f} s after the cancel"
    if eut.backend == "remote":  # beside the disconnect, vLLM's abort route took the request's id
        assert eut.engine.aborts_sent_total >= 1


def test_a_call_cancelled_while_it_is_admitted_never_runs_to_its_end(eut: EngineUnderTest):
    """Cancels at moments from the first loop turn on: an engine that starts work before its first await and forgets
    it on a cancel fails here. (vLLM 0.32's AsyncLLM.generate leaks a request cancelled inside add_request's last
    await; VllmEngine aborts by id to cover that window, which these delays were not seen to hit.)"""
    if eut.backend == "remote":
        pytest.skip("a remote server's admission is the server's own race: a client's abort can arrive before the "
                    "server has admitted the request (RemoteEngine narrows it with vLLM's abort route)")

    async def main():
        before = await eut.wait_stats(_idle)
        for delay_s in (0.0, 0.001, 0.003, 0.01, 0.03, 0.1):
            task = asyncio.ensure_future(eut.engine.generate(eut.request(max_tokens=eut.unending_tokens)))
            await asyncio.sleep(delay_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return before, await eut.wait_stats(_idle)

    before, idle = eut.run(main())
    assert _idle(idle), idle
    assert idle.requests_finished_total == before.requests_finished_total  # none ran to its end


# ---- bad requests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["max_tokens_zero", "unknown_model", "prompt_too_long"])
def test_a_bad_request_raises_value_error_and_the_engine_goes_on(eut: EngineUnderTest, case):
    if case == "max_tokens_zero":
        bad = eut.request(max_tokens=0)
    elif case == "unknown_model":
        bad = eut.request(model="no-such-model")
    else:
        bad = eut.request(messages=(eut.messages[0].__class__("user", "x " * 40_000),))

    async def main():
        with pytest.raises(ValueError):
            await eut.engine.generate(bad)
        return await eut.engine.generate(eut.request(max_tokens=3))

    ok = eut.run(main())
    assert ok.output_tokens == 3
    eut.engine.check_health()
