"""The pool's HTTP API on a real local Ray Serve, driven with the real ``openai`` client (and raw httpx where a
client library would refuse to send the bad input).

One application per module: the first two models of configs/pool_twin.yaml, one replica each, the twins at
TIME_SCALE x real time. The first model's engine takes at most FLOOD_MAX_NUM_SEQS requests at once, so a flood of
requests builds a waiting queue that telemetry must show.
"""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.engines.tokens import count_prompt_tokens
from sysaware.engines.types import ChatMessage
from sysaware.serving.app import build_app, deploy, select_models
from sysaware.sim.workload import MbppRequestFactory
from twin_factories import VLLM_SAMPLE_NAMES

APP = "test-ingress"
TIME_SCALE = 2.0  # engine seconds per wall second: a typical answer (~80 tokens) takes ~0.3-0.6 s wall
FLOOD_MAX_NUM_SEQS = 4


def create_pool() -> PoolConfig:
    """The first two models of the default pool, one replica each; the first admits 4 requests at a time."""
    pool = select_models(load_pool(DEFAULT_POOL), [m.name for m in load_pool(DEFAULT_POOL).models[:2]], replicas=1)
    raw = pool.model_dump(mode="json")
    raw["models"][0]["twin"]["max_num_seqs"] = FLOOD_MAX_NUM_SEQS
    return PoolConfig.model_validate(raw)


@pytest.fixture(scope="module")
def live(ray_session):
    from ray import serve

    pool = create_pool()
    url = deploy(build_app(pool, TIME_SCALE), port=free_port(), name=APP)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60.0)
    yield SimpleNamespace(
        url=url,
        root=url.removesuffix("/v1"),
        pool=pool,
        client=client,
        flooded=pool.models[0].name,
        other=pool.models[1].name,
        cache={},
    )
    serve.delete(APP)


def create_messages(n: int = 1, seed: int = 0) -> list[list[dict]]:
    """``n`` MBPP chats as an agent sends them (role system prompt, task, strategy)."""
    factory = MbppRequestFactory.for_split("train")
    rng = random.Random(seed)
    return [[{"role": m.role, "content": m.content} for m in factory("any", rng).messages] for _ in range(n)]


def model_state(snapshot: dict, model: str) -> dict:
    """This app's fresh replicas of ``model`` in a telemetry snapshot, summed (other apps may share the actor)."""
    rows = [
        r for rid, r in snapshot["replicas"].items() if rid.startswith(f"{APP}#{model}#") and not r["stale"]
    ]  # fmt: skip
    assert rows, f"no fresh replica of {model} in telemetry: {sorted(snapshot['replicas'])}"
    keys = ("queue_waiting", "queue_running", "generation_tokens_total", "requests_finished_total")
    state = {k: sum(r[k] for r in rows) for k in keys}
    state["kv_utilization"] = max(r["kv_utilization"] for r in rows)
    state["age_s"] = max(r["age_s"] for r in rows)
    return state


def telemetry(live) -> dict:
    response = httpx.get(f"{live.url}/telemetry", timeout=10.0)
    response.raise_for_status()
    return response.json()


def wait_until_idle(live, model: str, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = model_state(telemetry(live), model)
        if state["queue_waiting"] == 0 and state["queue_running"] == 0 and state["kv_utilization"] == 0:
            return state
        assert time.monotonic() < deadline, f"{model} did not drain: {state}"
        time.sleep(0.05)


def test_chat_completion_returns_text_and_usage(live):
    messages = create_messages()[0]
    reply = live.client.chat.completions.create(model=live.other, messages=messages, seed=7)
    prompt_tokens = count_prompt_tokens(tuple(ChatMessage(m["role"], m["content"]) for m in messages))
    assert reply.model == live.other and reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    timings = reply.model_extra["sysaware"]  # the engine's own clock: queue <= TTFT <= e2e
    assert timings["replica_id"].startswith(f"{APP}#{live.other}#")
    assert 0 <= timings["queue_time_s"] <= timings["ttft_s"] <= timings["e2e_s"]

    capped = live.client.chat.completions.create(model=live.other, messages=messages, seed=7, max_tokens=3)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3
    assert reply.choices[0].message.content.startswith(capped.choices[0].message.content)


def test_stream_concatenates_to_the_non_streamed_text_for_the_same_seed(live):
    messages = create_messages(seed=1)[0]
    whole = live.client.chat.completions.create(model=live.flooded, messages=messages, seed=11)
    stream = live.client.chat.completions.create(
        model=live.flooded, messages=messages, seed=11, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content
    assert len(content_chunks) > 1, "the answer should arrive in pieces"
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"


def test_models_lists_the_pool(live):
    models = live.client.models.list().data
    assert [m.id for m in models] == [m.name for m in live.pool.models]
    assert [m.model_extra["max_model_len"] for m in models] == [
        m.architecture.max_position_embeddings for m in live.pool.models
    ]
    assert httpx.get(f"{live.root}/health").json()["time_scale"] == TIME_SCALE


async def _flood(live, n: int) -> tuple[list[int], list[dict], float]:
    """``n`` concurrent requests to the flooded model while /v1/telemetry is polled every 50 ms; returns the
    statuses, the samples (seconds since the flood began, both models' state) and when the flood ended."""
    bodies = [{"model": live.flooded, "messages": m, "seed": i} for i, m in enumerate(create_messages(n, seed=2))]
    samples: list[dict] = []
    async with httpx.AsyncClient(timeout=120.0, limits=httpx.Limits(max_connections=None)) as client:
        t0 = time.monotonic()
        requests = asyncio.gather(*(client.post(f"{live.url}/chat/completions", json=b) for b in bodies))
        flood = asyncio.ensure_future(requests)
        while not flood.done():
            snapshot = (await client.get(f"{live.url}/telemetry")).json()
            samples.append(
                {
                    "t": time.monotonic() - t0,
                    "flooded": model_state(snapshot, live.flooded),
                    "other": model_state(snapshot, live.other),
                }
            )
            await asyncio.sleep(0.05)
        responses = await flood
        return [r.status_code for r in responses], samples, time.monotonic() - t0


def test_flooding_one_model_shows_its_queue_in_telemetry_and_it_drains(live):
    wait_until_idle(live, live.flooded)
    n = 8 * FLOOD_MAX_NUM_SEQS
    statuses, samples, flood_s = asyncio.run(_flood(live, n))
    assert statuses == [200] * n
    queued = [s for s in samples if s["flooded"]["queue_waiting"] > 0]
    assert queued, f"no waiting queue seen in {len(samples)} samples over {flood_s:.1f}s"
    first = queued[0]
    age = first["flooded"]["age_s"]
    print(f"\nqueue_waiting > 0 seen {first['t']:.2f}s after the flood began (snapshot age {age:.2f}s)")
    # The snapshot describes the engine at most one push period (+ the RPC) ago: well inside 0.5 s.
    assert first["flooded"]["age_s"] < 0.5
    # It shows while the flood is young: within 1.5 s, or the first half of the flood on a machine so loaded that
    # the HTTP requests themselves take longer to arrive (seen with other test suites sharing the 2 cores).
    assert first["t"] < max(0.5 + 1.0, flood_s / 2), f"the queue showed only {first['t']:.1f}s into a {flood_s:.1f}s flood"
    # The engine admits max_num_seqs at a time; the rest wait in it (or in Serve, past max_ongoing_requests).
    assert max(s["flooded"]["queue_running"] for s in samples) <= FLOOD_MAX_NUM_SEQS
    assert all(s["other"]["queue_waiting"] == 0 and s["other"]["queue_running"] == 0 for s in samples)
    drained = wait_until_idle(live, live.flooded, timeout_s=10.0)
    assert drained["queue_waiting"] == 0 and drained["kv_utilization"] == 0


GOOD_MESSAGES = [{"role": "user", "content": "Write a function that adds two numbers."}]
BAD_INPUTS = [
    # (body changes, expected status, error param, words the message must contain)
    ({"model": "no-such-model"}, 404, "model", ["no-such-model", "mistral-7b-instruct", "wizardlm-13b"]),
    ({"model": None}, 400, "model", ["model"]),
    ({"messages": None}, 400, "messages", ["messages", "required"]),
    ({"messages": []}, 400, "messages", ["at least 1"]),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role", ["system", "user", "assistant"]),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content", ["required"]),
    ({"max_tokens": 0}, 400, "max_tokens", ["greater than or equal to 1"]),
    ({"max_tokens": -5}, 400, "max_tokens", ["greater than or equal to 1"]),
    ({"max_tokens": 10**9}, 400, "max_tokens", ["1048576"]),
    ({"max_tokens": 5000}, 400, "max_tokens", ["4096"]),  # wizardlm-13b's context is 4096 tokens
    ({"max_completion_tokens": 0}, 400, "max_completion_tokens", ["greater than or equal to 1"]),
    ({"messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages", ["4096"]),
    ({"n": 2}, 400, "n", ["n=1"]),
    ({"temperature": 3}, 400, "temperature", ["2"]),
]


@pytest.mark.parametrize("change,status,param,words", BAD_INPUTS, ids=[str(b[0])[:40] for b in BAD_INPUTS])
def test_bad_input_gets_its_4xx_naming_the_field_and_the_next_request_succeeds(live, change, status, param, words):
    body = {"model": live.other, "messages": GOOD_MESSAGES} | change
    body = {k: v for k, v in body.items() if v is not None}
    response = httpx.post(f"{live.url}/chat/completions", json=body, timeout=30.0)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"], (word, error["message"])
    good = live.client.chat.completions.create(model=live.other, messages=GOOD_MESSAGES, max_tokens=2)
    assert good.usage.completion_tokens == 2


def test_malformed_json_and_the_openai_client_errors(live):
    response = httpx.post(
        f"{live.url}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.NotFoundError) as not_found:
        live.client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        live.client.chat.completions.create(
            model=live.other, messages=[{"role": "user", "content": "word " * 5000}], stream=True
        )
    assert too_long.value.body["code"] == "context_length_exceeded"
    reply = live.client.chat.completions.create(model=live.other, messages=create_messages()[0])
    assert reply.choices[0].message.content


def long_answer(live, model: str, candidates: int = 6) -> tuple[list[dict], int, int]:
    """(messages, seed, completion tokens) of the longest answer among a few MBPP chats: a request that stays in
    the engine long enough (hundreds of tokens, about a second of wall time) to be interfered with."""
    key = ("long_answer", model)
    if key not in live.cache:
        chats = create_messages(candidates, seed=4)
        lengths = [
            live.client.chat.completions.create(model=model, messages=m, seed=5).usage.completion_tokens for m in chats
        ]
        longest = max(range(candidates), key=lengths.__getitem__)
        live.cache[key] = (chats[longest], 5, lengths[longest])
    return live.cache[key]


def test_engine_refusal_is_a_400_and_the_server_keeps_serving(live):
    """The engine refuses a second request with the id of one still in flight (a ValueError in the replica)."""
    messages, seed, _ = long_answer(live, live.other)
    body = {"model": live.other, "messages": messages, "seed": seed, "stream": True, "request_id": "dup-1"}
    url = f"{live.url}/chat/completions"
    with httpx.Client(timeout=30.0) as client, client.stream("POST", url, json=body) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # keep a reference: a collected iterator closes the connection
        next(lines)  # dup-1 is now in the engine
        duplicate = client.post(f"{live.url}/chat/completions", json=body | {"stream": False})
    assert duplicate.status_code == 400, duplicate.text
    assert duplicate.json()["error"]["code"] == "engine_rejected" and "dup-1" in duplicate.json()["error"]["message"]
    wait_until_idle(live, live.other)
    assert live.client.chat.completions.create(model=live.other, messages=messages).usage.completion_tokens > 0


def test_a_client_that_goes_away_mid_stream_frees_its_request(live):
    """The stream is closed after its first event: the engine aborts it (not a success, fewer tokens generated
    than the whole answer) and its KV blocks are free again."""
    messages, seed, length = long_answer(live, live.other)
    before = wait_until_idle(live, live.other)
    body = {"model": live.other, "messages": messages, "seed": seed, "stream": True}
    with httpx.Client(timeout=30.0) as client, client.stream("POST", f"{live.url}/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    after = wait_until_idle(live, live.other)
    assert after["requests_finished_total"] == before["requests_finished_total"]
    assert after["generation_tokens_total"] - before["generation_tokens_total"] < length


def test_metrics_parse_and_carry_the_vllm_names(live):
    live.client.chat.completions.create(model=live.flooded, messages=create_messages()[0], max_tokens=4)
    text = httpx.get(f"{live.root}/metrics").text
    ours = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("replica", "").startswith(f"{APP}#")
    ]
    samples = {s.name: s for s in ours}
    for name in sorted(VLLM_SAMPLE_NAMES):
        assert name in samples, name
    ttft_counts = [
        s.value
        for s in ours
        if s.name == "vllm:time_to_first_token_seconds_count" and s.labels["model_name"] == live.flooded
    ]
    assert sum(ttft_counts) >= 1
