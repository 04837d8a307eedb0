"""vLLM's ``ignore_eos`` and ``min_tokens`` in the twin core: the answer (8 tokens from the fake responder) is
extended with filler to the floor, and the request then runs like any other of that length."""

from __future__ import annotations

import dataclasses

import pytest

from sysaware.engines.twin.perf.length_floor import FILLER
from sysaware.engines.types import FinishReason
from twin_factories import assert_drained, create_core, create_requests, drive

ANSWER_TOKENS = 8  # the fake responder's answer: "abc " x 8

CASES = [
    # (max_tokens, ignore_eos, min_tokens, output tokens, finish reason)
    (128, False, 0, 8, FinishReason.STOP),  # the answer ends by itself
    (128, True, 0, 128, FinishReason.LENGTH),  # never ends: max_tokens cuts it
    (5, True, 0, 5, FinishReason.LENGTH),  # longer than max_tokens anyway
    (128, False, 20, 20, FinishReason.STOP),  # may end at 20, and does
    (128, False, 3, 8, FinishReason.STOP),  # already longer than min_tokens
    (10, False, 20, 10, FinishReason.LENGTH),  # min_tokens past max_tokens: the cap wins
]


@pytest.mark.parametrize("max_tokens,ignore_eos,min_tokens,tokens,reason", CASES)
def test_the_output_length_follows_ignore_eos_and_min_tokens(max_tokens, ignore_eos, min_tokens, tokens, reason):
    core = create_core(output_tokens=ANSWER_TOKENS)
    (base,) = create_requests(1, max_tokens=max_tokens)
    request = dataclasses.replace(base, ignore_eos=ignore_eos, min_tokens=min_tokens)
    result = drive(core, [(0.0, request)]).results[request.request_id]
    assert (result.output_tokens, result.finish_reason) == (tokens, reason)
    assert len(result.token_times_s) == tokens
    if tokens > ANSWER_TOKENS:  # the whole answer, then filler (under ignore_eos cut by characters, as any cap)
        padded = "abc " * ANSWER_TOKENS + FILLER * (tokens - ANSWER_TOKENS)
        assert result.text == padded if reason is FinishReason.STOP else padded.startswith(result.text)
        assert result.text.startswith("abc " * ANSWER_TOKENS + FILLER)
    assert_drained(core)


def test_an_ignore_eos_request_holds_kv_for_its_whole_length():
    """Padding is real work: 32 prompt + 128 output tokens hold ceil(159 / 16) = 10 blocks at the last step."""
    core = create_core(output_tokens=ANSWER_TOKENS)
    (base,) = create_requests(1, prompt_tokens=32, max_tokens=128)
    core.add_request(dataclasses.replace(base, ignore_eos=True), 0.0)
    peak = 0
    now = 0.0
    while core.has_work():
        outcome = core.step(now, now)  # one iteration per call
        now = outcome.end_s
        peak = max(peak, core.kv_cache.num_blocks - core.kv_cache.num_free_blocks)
    assert peak == 10
