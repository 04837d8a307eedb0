"""The pool's HTTP API on a real local Ray Serve, driven with the real ``openai`` client (and raw httpx where a
client library would refuse to send the bad input).

One application per module: the first two models of configs/pool_twin.yaml, one replica each, the twins at
TIME_SCALE x real time. The first model's engine takes at most FLOOD_MAX_NUM_SEQS requests at once, so a flood of
requests builds a waiting queue that telemetry must show. The API wants a key (API_KEY; AUTH is its header), as a
server reachable from a network would.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.engines.tokens import count_prompt_tokens
from sysaware.engines.types import ChatMessage
from sysaware.serving.app import build_app, deploy, select_models
from sysaware.serving.ingress_settings import IngressSettings
from sysaware.sim.workload import MbppRequestFactory
from twin_factories import VLLM_SAMPLE_NAMES

APP = "test-ingress"
TIME_SCALE = 2.0  # engine seconds per wall second: a typical answer (~80 tokens) takes ~0.3-0.6 s wall
FLOOD_MAX_NUM_SEQS = 4
API_KEY = f"sk-test-{secrets.token_hex(16)}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


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
    settings = IngressSettings(api_keys=(SecretStr(API_KEY),))
    url = deploy(build_app(pool, TIME_SCALE, settings=settings), port=free_port(), name=APP)
    client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=60.0)
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
    response = httpx.get(f"{live.url}/telemetry", headers=AUTH, timeout=10.0)
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
    # 200 tokens each (~1 s of wall time at TIME_SCALE): the engine's slots stay full long enough for the ingress
    # to queue the rest behind them on a slow machine too.
    bodies = [{"model": live.flooded, "messages": m, "seed": i, "max_tokens": 200, "ignore_eos": True}
              for i, m in enumerate(create_messages(n, seed=2))]
    samples: list[dict] = []
    async with httpx.AsyncClient(timeout=120.0, headers=AUTH, limits=httpx.Limits(max_connections=None)) as client:
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
    # When it first shows is not asserted: that is how fast the ingress feeds the engine, a speed that belongs in a
    # benchmark (it was 7.2 s into a 12.8 s flood once on a loaded machine, against ~1 s on a quiet one). What the
    # telemetry owes is freshness (above) and the queue seen while the flood runs (samples stop when it ends).
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


def assert_refused(live, route: str, body: dict, change: dict, status: int, param: str, words: list[str]) -> None:
    """POST ``body`` with ``change`` applied (a None value removes the field) to ``route``: the status, an OpenAI
    error naming ``param``, and every one of ``words`` in its message."""
    body = {k: v for k, v in (body | change).items() if v is not None}
    response = httpx.post(f"{live.url}/{route}", json=body, headers=AUTH, timeout=30.0)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    for word in words:
        assert word in error["message"], (word, error["message"])


@pytest.mark.parametrize("change,status,param,words", BAD_INPUTS, ids=[str(b[0])[:40] for b in BAD_INPUTS])
def test_bad_input_gets_its_4xx_naming_the_field_and_the_next_request_succeeds(live, change, status, param, words):
    body = {"model": live.other, "messages": GOOD_MESSAGES}
    assert_refused(live, "chat/completions", body, change, status, param, words)
    good = live.client.chat.completions.create(model=live.other, messages=GOOD_MESSAGES, max_tokens=2)
    assert good.usage.completion_tokens == 2


def test_malformed_json_and_the_openai_client_errors(live):
    response = httpx.post(
        f"{live.url}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"} | AUTH,
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


# A request that stays in the engine until the client closes it (ignore_eos: ~15 s of wall time at TIME_SCALE if left
# alone), so whatever a test does to it meanwhile happens while it runs, however slow the machine.
UNENDING = {"max_tokens": 3000, "ignore_eos": True}


def test_engine_refusal_is_a_400_and_the_server_keeps_serving(live):
    """The engine refuses a second request with the id of one still in flight (a ValueError in the replica)."""
    messages = create_messages(1, seed=4)[0]
    body = {"model": live.other, "messages": messages, "seed": 5, "stream": True, "request_id": "dup-1", **UNENDING}
    url = f"{live.url}/chat/completions"
    with httpx.Client(timeout=30.0, headers=AUTH) as client, client.stream("POST", url, json=body) as first:
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
    messages = create_messages(1, seed=4)[0]
    before = wait_until_idle(live, live.other)
    body = {"model": live.other, "messages": messages, "seed": 5, "stream": True, **UNENDING}
    url = f"{live.url}/chat/completions"
    with httpx.Client(timeout=30.0, headers=AUTH) as client, client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    after = wait_until_idle(live, live.other)
    assert after["requests_finished_total"] == before["requests_finished_total"]
    assert after["generation_tokens_total"] - before["generation_tokens_total"] < UNENDING["max_tokens"]


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


# ---- the guard: body limit, prompt bound, API keys ------------------------------------------------------------

MIB = 1 << 20
UPLOAD_DEADLINE_S = 5.0  # functional bound for a refusal on a loaded 2-core machine (measured: well under 1 s)
HEALTH_DEADLINE_S = 2.0  # no /health answer may take longer while a client uploads


def chat_body(model: str, content_chars: int) -> bytes:
    """A valid chat request to ``model`` whose one message is ``content_chars`` characters of words."""
    words = "word " * (content_chars // 5)
    return json.dumps({"model": model, "messages": [{"role": "user", "content": words}]}).encode()


async def _post_while_polling_health(live, content, headers: dict) -> tuple[httpx.Response, float, list[float]]:
    """POST ``content`` to chat completions while /health is polled every 20 ms on other connections; returns the
    response, its latency (s) and every /health latency (s) seen meanwhile (at least one)."""
    async with httpx.AsyncClient(timeout=60.0) as poster, httpx.AsyncClient(timeout=60.0) as poller:

        async def post() -> tuple[httpx.Response, float]:
            t0 = time.perf_counter()
            response = await poster.post(f"{live.url}/chat/completions", content=content, headers=headers)
            return response, time.perf_counter() - t0

        upload = asyncio.ensure_future(post())
        health_s: list[float] = []
        while not upload.done() or not health_s:
            t0 = time.perf_counter()
            health = await poller.get(f"{live.root}/health")
            assert health.status_code == 200, health.text
            health_s.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
        response, latency_s = await upload
    return response, latency_s, health_s


async def _chunks(total: int, size: int = MIB):
    for _ in range(total // size):
        yield b"x" * size


UPLOADS = [
    # (what is sent, the body factory, with the key?, expected status, expected code)
    ("20 MB chat, Content-Length", lambda live: chat_body(live.other, 20 * MIB), True, 413, "request_too_large"),
    ("20 MB chunked", lambda live: _chunks(20 * MIB), True, 413, "request_too_large"),
    ("20 MB chat, no key", lambda live: chat_body(live.other, 20 * MIB), False, 401, "missing_api_key"),
    # 1 MiB of characters is more than 4096 tokens can hold at 16 characters a token: refused uncounted.
    ("1 MB prompt, 4096-token model", lambda live: chat_body(live.other, MIB), True, 400, "context_length_exceeded"),
    # 500,000 characters pass that bound for a 32768-token model; 100,000 words are counted off the event loop.
    ("500k-char prompt, counted", lambda live: chat_body(live.flooded, 500_000), True, 400, "context_length_exceeded"),
]
COUNTED = {"500k-char prompt, counted"}  # refused after counting: how long that takes is CPU speed, not a guard


@pytest.mark.parametrize("what,content,keyed,status,code", UPLOADS, ids=[u[0] for u in UPLOADS])
def test_an_oversized_upload_is_refused_at_once_while_health_answers(live, what, content, keyed, status, code):
    headers = {"content-type": "application/json"} | (AUTH if keyed else {})
    response, latency_s, health_s = asyncio.run(_post_while_polling_health(live, content(live), headers))
    print(f"\n{what}: {response.status_code} in {latency_s * 1000:.0f} ms; /health answered {len(health_s)} times "
          f"meanwhile, slowest {max(health_s) * 1000:.0f} ms")
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    if what not in COUNTED:  # refused before any prompt is counted (most before the body is read): at once
        assert latency_s < UPLOAD_DEADLINE_S
    assert max(health_s) < HEALTH_DEADLINE_S  # whatever the refusal costs, the event loop stays free
    good = live.client.chat.completions.create(model=live.other, messages=GOOD_MESSAGES, max_tokens=2)
    assert good.usage.completion_tokens == 2


def test_a_chunked_body_under_the_limit_is_served(live):
    """A body without Content-Length is counted, then replayed whole to the route."""
    body = json.dumps({"model": live.other, "messages": GOOD_MESSAGES, "max_tokens": 3}).encode()

    def pieces():
        yield from (body[i : i + 7] for i in range(0, len(body), 7))

    response = httpx.post(
        f"{live.url}/chat/completions", content=pieces(), headers={"content-type": "application/json"} | AUTH
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


WRONG_AUTH = [
    # (Authorization header or None, expected error code)
    (None, "missing_api_key"),
    ("Bearer", "missing_api_key"),
    (f"Basic {API_KEY}", "missing_api_key"),
    ("Bearer sk-wrong", "invalid_api_key"),
    (f"Bearer {API_KEY}x", "invalid_api_key"),
    (f"Bearer {API_KEY[:-1]}", "invalid_api_key"),
]


@pytest.mark.parametrize("authorization,code", WRONG_AUTH, ids=[f"{str(a).split(' ')[0]}-{c}" for a, c in WRONG_AUTH])
def test_without_the_right_key_the_api_is_401_and_the_next_good_request_succeeds(live, authorization, code):
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"model": live.other, "messages": GOOD_MESSAGES, "max_tokens": 2}
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/telemetry")]:
        response = httpx.request(method, f"{live.root}{path}", json=body, headers=headers, timeout=30.0)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"] | {"message": ""} == {
            "message": "",
            "type": "invalid_request_error",
            "param": None,
            "code": code,
        }
        assert response.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in response.text
    good = live.client.chat.completions.create(model=live.other, messages=GOOD_MESSAGES, max_tokens=2)
    assert good.usage.completion_tokens == 2


def test_open_paths_need_no_key_and_the_openai_client_sees_authentication_errors(live):
    assert httpx.get(f"{live.root}/health").status_code == 200
    assert httpx.get(f"{live.root}/metrics").status_code == 200
    stranger = openai.OpenAI(base_url=live.url, api_key="sk-wrong", max_retries=0, timeout=30.0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.chat.completions.create(model=live.other, messages=GOOD_MESSAGES)
    assert refused.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    assert [m.id for m in live.client.models.list().data] == [m.name for m in live.pool.models]


# ---- text completions and vLLM's sampling extras (the load generators' requests) -------------------------------

HELLO = "Hello! Tell me about yourself."  # not an MBPP task: the twin's short canned answer (66 tokens)


def user_prompt(seed: int = 0) -> str:
    """An MBPP task prompt as a plain string: the last message of an agent's chat."""
    return create_messages(seed=seed)[0][-1]["content"]


def test_text_completions_streamed_and_not_through_the_openai_client(live):
    prompt = user_prompt()
    whole = live.client.completions.create(model=live.other, prompt=prompt, max_tokens=48, seed=3)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-") and whole.model == live.other
    assert len(whole.choices) == 1 and whole.choices[0].index == 0 and whole.choices[0].text
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens == count_prompt_tokens((ChatMessage("user", prompt),))  # one user message
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert whole.choices[0].model_extra["sysaware"]["replica_id"].startswith(f"{APP}#{live.other}#")

    stream = live.client.completions.create(
        model=live.other, prompt=prompt, max_tokens=48, seed=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id} and {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) > 1, "the text should arrive in pieces"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_a_list_of_prompts_gets_one_choice_each_and_the_summed_usage(live):
    prompts = [user_prompt(seed=5), HELLO]
    whole = live.client.completions.create(model=live.other, prompt=prompts, max_tokens=24, seed=1)
    assert [c.index for c in whole.choices] == [0, 1]
    singles = [live.client.completions.create(model=live.other, prompt=p, max_tokens=24, seed=1) for p in prompts]
    assert [c.text for c in whole.choices] == [s.choices[0].text for s in singles]
    assert whole.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    assert whole.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)

    stream = live.client.completions.create(
        model=live.other, prompt=prompts, max_tokens=24, seed=1, stream=True, stream_options={"include_usage": True}
    )
    texts = ["", ""]
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [c.text for c in whole.choices]
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_ignore_eos_generates_exactly_max_tokens(live, route):
    """The canned answer to HELLO is 66 tokens; with ignore_eos the twin goes on to the cap, as vLLM would."""
    if route == "chat":
        reply = live.client.chat.completions.create(
            model=live.other,
            messages=[{"role": "user", "content": HELLO}],
            max_completion_tokens=128,
            extra_body={"ignore_eos": True},
        )
        text = reply.choices[0].message.content
    else:
        reply = live.client.completions.create(
            model=live.other, prompt=HELLO, max_tokens=128, extra_body={"ignore_eos": True}
        )
        text = reply.choices[0].text
    assert reply.usage.completion_tokens == 128 and reply.choices[0].finish_reason == "length"
    natural = live.client.completions.create(model=live.other, prompt=HELLO, max_tokens=128)
    assert natural.usage.completion_tokens < 128 and natural.choices[0].finish_reason == "stop"
    assert text.startswith(natural.choices[0].text.strip()[:40])  # the same answer, then filler


def test_min_tokens_and_continuous_usage_stats_while_streaming(live):
    stream = live.client.completions.create(
        model=live.other,
        prompt=HELLO,
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"min_tokens": 100, "unknown_knob": 7, "top_k": 5},  # unknown fields are ignored
    )
    chunks = list(stream)
    usages = [c.usage for c in chunks]
    assert all(u is not None for u in usages), "every chunk carries the usage so far"
    completion = [u.completion_tokens for u in usages]
    assert completion == sorted(completion) and completion[-1] == 100
    assert {u.prompt_tokens for u in usages} == {count_prompt_tokens((ChatMessage("user", HELLO),))}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_completions_count_in_the_vllm_metrics(live):
    def ttft_count() -> float:
        text = httpx.get(f"{live.root}/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "vllm:time_to_first_token_seconds_count"
            and s.labels.get("model_name") == live.other
            and s.labels.get("replica", "").startswith(f"{APP}#")
        )

    before = ttft_count()
    live.client.completions.create(model=live.other, prompt=HELLO, max_tokens=4)
    list(live.client.completions.create(model=live.other, prompt=HELLO, max_tokens=4, stream=True))
    assert ttft_count() == before + 2


COMPLETION_BAD_INPUTS = [
    # (body changes, expected status, error param, words the message must contain)
    ({"echo": True}, 400, "echo", ["echo is not supported"]),
    ({"prompt": [1, 2, 3]}, 400, "prompt", ["token-id prompts"]),
    ({"prompt": []}, 400, "prompt", ["at least one prompt"]),
    ({"prompt": None}, 400, "prompt", ["required"]),
    ({"best_of": 3}, 400, "best_of", ["best_of=1"]),
    ({"stream_interval": 0, "stream": True}, 400, "stream_interval", ["greater than or equal to 1"]),
    ({"min_tokens": 20, "max_tokens": 10}, 400, "min_tokens", ["min_tokens (20)", "10"]),
    ({"max_tokens": 5000}, 400, "max_tokens", ["4096"]),
    ({"prompt": "word " * 5000}, 400, "prompt", ["4096", "prompt"]),
    ({"model": "gpt-3.5-turbo-instruct"}, 404, "model", ["gpt-3.5-turbo-instruct", "wizardlm-13b"]),
]


@pytest.mark.parametrize(
    "change,status,param,words", COMPLETION_BAD_INPUTS, ids=[str(b[0])[:40] for b in COMPLETION_BAD_INPUTS]
)
def test_bad_completion_input_gets_its_4xx_naming_the_field(live, change, status, param, words):
    assert_refused(live, "completions", {"model": live.other, "prompt": HELLO}, change, status, param, words)


@pytest.mark.parametrize(
    "method,path,status,code",
    [("GET", "/v1/nope", 404, "not_found"), ("POST", "/v1/embeddings", 404, "not_found"),
     ("POST", "/v1/models", 405, "method_not_allowed"), ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
     ("GET", "/v1/completions", 405, "method_not_allowed")],
)  # fmt: skip
def test_routes_that_do_not_exist_get_openai_error_bodies(live, method, path, status, code):
    response = httpx.request(method, f"{live.root}{path}", headers=AUTH, timeout=30.0)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and path in body["error"].pop("message")
    assert body["error"] == {"type": "invalid_request_error", "param": None, "code": code}


def test_a_client_that_goes_away_frees_every_request_of_a_streamed_batch(live):
    """Two prompts, each of an answer that only the client's leaving ends: the stream is closed after its first
    event, so both requests are aborted (no success, fewer tokens generated than asked) and their KV blocks are
    free again."""
    before = wait_until_idle(live, live.other)
    body = {"model": live.other, "prompt": [HELLO, user_prompt()], "stream": True, **UNENDING}
    with httpx.Client(timeout=30.0, headers=AUTH) as client:
        with client.stream("POST", f"{live.url}/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())
    after = wait_until_idle(live, live.other)
    assert after["requests_finished_total"] == before["requests_finished_total"]
    assert after["generation_tokens_total"] - before["generation_tokens_total"] < 2 * UNENDING["max_tokens"]


def stream_token_counts(live, n: int, **extra) -> list[int]:
    """Output tokens so far at each text chunk of a streamed completion of exactly ``n`` tokens (ignore_eos)."""
    stream = live.client.completions.create(
        model=live.other, prompt=HELLO, max_tokens=n, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True, **extra},
    )  # fmt: skip
    return [c.usage.completion_tokens for c in stream if c.choices and c.choices[0].text]


def test_streams_send_one_chunk_per_engine_step_unless_stream_interval_coalesces(live):
    """Like vLLM: a lone request emits a token per engine step, and by default each step is its own SSE chunk
    (a client timing chunks measures the real inter-token latency); ``stream_interval`` k sends the first token at
    once, then a chunk per k tokens."""
    wait_until_idle(live, live.other)
    n = 30
    assert stream_token_counts(live, n) == list(range(1, n + 1))
    assert stream_token_counts(live, n, stream_interval=8) == [1, 9, 17, 25, 30]


def test_serving_overhead_per_hop_is_on_the_metrics_after_a_streamed_request(live):
    """Every server hop after any streamed request; proxy_request (client -> ingress, through Serve's proxy) only
    after one whose client sent its clock; a header that is not a time is a 400 naming it."""
    from sysaware.serving.overhead import CLIENT_SENT_HEADER, HOPS, SERVER_HOPS

    def overhead(kind: str) -> dict[str, float]:
        text = httpx.get(f"{live.root}/metrics").text
        return {
            s.labels["hop"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == f"sysaware:serving_overhead_seconds_{kind}" and s.labels.get("model_name") == live.other
        }

    def stream(**headers) -> None:
        list(live.client.chat.completions.create(
            model=live.other, messages=[{"role": "user", "content": HELLO}], max_tokens=3, stream=True,
            extra_headers=headers,
        ))  # fmt: skip

    before = overhead("count")
    stream()
    after = overhead("count")
    assert set(SERVER_HOPS) <= set(after)
    assert all(after[h] == before.get(h, 0) + 1 for h in SERVER_HOPS), (before, after)
    assert after.get("proxy_request", 0) == before.get("proxy_request", 0)

    sums_before = overhead("sum")
    stream(**{CLIENT_SENT_HEADER: repr(time.time())})  # this test shares the server's clock
    counts, sums = overhead("count"), overhead("sum")
    assert set(counts) == set(HOPS)
    assert all(counts[h] == after[h] + 1 for h in SERVER_HOPS)
    assert counts["proxy_request"] == after.get("proxy_request", 0) + 1
    assert 0 < sums["proxy_request"] - sums_before.get("proxy_request", 0) < 5.0  # s: one loaded local hop

    body = {"model": live.other, "prompt": HELLO, "max_tokens": 2, "stream": True}
    response = httpx.post(f"{live.url}/completions", json=body, headers={**AUTH, CLIENT_SENT_HEADER: "yesterday"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == CLIENT_SENT_HEADER
