"""The responder's identity and per-text memos (speed only) never change an answer."""

from __future__ import annotations

import random

from sysaware.config import CONFIG_DIR, load_pool
from sysaware.engines.tokens import count_tokens
from sysaware.engines.twin.responder.counted_text import counted
from sysaware.engines.twin.responder.hidden_asserts import strip_hidden_asserts, without_hidden_asserts
from sysaware.engines.twin.responder.twin_responder import TwinResponder
from sysaware.engines.types import ChatMessage, GenerationRequest
from sysaware.sim.workload import MbppRequestFactory
from sysaware.tasks.mbpp import Split, load_tasks


def create_requests(n: int, seed: int = 0) -> list[GenerationRequest]:
    """Background requests over every model of the pool; the factory reuses its message tuples."""
    pool = load_pool(CONFIG_DIR / "pool_twin.yaml")
    factory, rng = MbppRequestFactory.for_split("train"), random.Random(seed)
    return [factory(pool.models[i % len(pool.models)].name, rng) for i in range(n)]


def with_messages(request: GenerationRequest, messages) -> GenerationRequest:
    return GenerationRequest(request.request_id, request.model, messages, request.max_tokens, request.temperature,
                             request.seed)


def test_a_reused_tuple_a_list_and_an_equal_copy_get_the_same_answer():
    requests = create_requests(200)
    pool = load_pool(CONFIG_DIR / "pool_twin.yaml")
    shared, fresh = TwinResponder(pool), TwinResponder(pool)
    for req in requests + requests:  # the second pass finds every prompt by identity
        copied = tuple(ChatMessage(m.role, m.content) for m in req.messages)
        expected = fresh.respond(with_messages(req, list(req.messages)))  # a list never goes through the memo
        assert shared.respond(req) == expected
        assert shared.respond(with_messages(req, copied)) == expected


def test_the_filter_gives_the_line_by_line_result_again_from_its_memo():
    for task in load_tasks(Split.TRAIN, sanitized=True)[:30]:
        leaking = f"Checked with:\n```python\n{chr(10).join(task.test_list)}\n```"
        for text in (leaking, f"Only the example: {task.example_test}", "Nothing to see here."):
            for _ in range(2):  # computed, then remembered
                filtered = without_hidden_asserts(counted(text), task)
                assert filtered.text == strip_hidden_asserts(text, task)
                assert filtered.tokens == count_tokens(filtered.text)
