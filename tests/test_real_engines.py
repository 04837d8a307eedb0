"""The real engines' parts that run without vLLM: the stat-logger recorder, the /metrics parser, the remote
engine's step features, the registry's error without vLLM, and the tiny model's files."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from engine_contract import tiny_pool, vllm_model
from sysaware.engines.remote import RemoteEngine, parse_metrics
from sysaware.engines.types import step_phase_known, step_remaining_ms
from sysaware.engines.vllm.stats import StepRecorder

METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-llama"} 3.0
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-llama",reason="capacity"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.25
vllm:num_preemptions_total{engine="0",model_name="tiny-llama"} 4.0
vllm:prompt_tokens_total{engine="0",model_name="tiny-llama"} 1000.0
vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} 500.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny-llama"} 5.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny-llama"} 2.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny-llama"} 9.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="tiny-llama"} 2.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="tiny-llama"} 400.0
vllm:iteration_tokens_total_sum{engine="0",model_name="tiny-llama"} 1500.0
vllm:iteration_tokens_total_count{engine="0",model_name="tiny-llama"} 300.0
vllm:cache_config_info{block_size="32",engine="0",model_name="tiny-llama",num_gpu_blocks="128"} 1.0
vllm:num_requests_running{engine="0",model_name="other"} 7.0
"""


def test_parse_metrics_reads_vllm_names_for_one_model():
    s = parse_metrics(METRICS, "tiny-llama", wall_s=1.0)
    assert (s.running, s.waiting, s.kv_usage, s.preemptions) == (3, 2, 0.25, 4)  # waiting_by_reason not added
    assert (s.prompt_tokens, s.generation_tokens) == (1000, 500)
    assert s.success == 7  # aborted requests are not successes, as the twin counts
    assert (s.num_gpu_blocks, s.block_size) == (128, 32)
    assert (s.itl_sum_s, s.itl_count, s.iter_tokens_sum, s.iter_count) == (2.0, 400, 1500, 300)


def test_remote_stats_carry_their_age_and_the_step_as_an_unknown_phase():
    async def main():
        engine = RemoteEngine(vllm_model("remote", "http://127.0.0.1:9"), "r#0", "http://127.0.0.1:9/v1")
        assert engine.base_url == "http://127.0.0.1:9"
        engine._ensure_scraper = lambda: None  # no server: feed two scrapes by hand
        later = METRICS.replace("seconds_sum{engine=\"0\",model_name=\"tiny-llama\"} 2.0",
                                "seconds_sum{engine=\"0\",model_name=\"tiny-llama\"} 2.5")
        later = later.replace("seconds_count{engine=\"0\",model_name=\"tiny-llama\"} 400.0",
                              "seconds_count{engine=\"0\",model_name=\"tiny-llama\"} 500.0")
        later = later.replace("iteration_tokens_total_sum{engine=\"0\",model_name=\"tiny-llama\"} 1500.0",
                              "iteration_tokens_total_sum{engine=\"0\",model_name=\"tiny-llama\"} 2100.0")
        later = later.replace("iteration_tokens_total_count{engine=\"0\",model_name=\"tiny-llama\"} 300.0",
                              "iteration_tokens_total_count{engine=\"0\",model_name=\"tiny-llama\"} 400.0")
        import time

        engine._previous = parse_metrics(METRICS, "tiny-llama", time.monotonic() - 1.0)
        engine._last = parse_metrics(later, "tiny-llama", time.monotonic() - 0.3)
        stats = await engine.stats()
        await engine.close()
        return engine, stats

    import asyncio

    engine, stats = asyncio.run(main())
    assert engine.clock.now() - stats.timestamp_s == pytest.approx(0.3, abs=0.1)  # the scrape's age
    assert stats.step_ms == pytest.approx(5.0)  # 0.5 s over 100 inter-token gaps
    assert stats.step_tokens == 6  # 600 tokens over 100 steps
    assert not step_phase_known(stats.step_elapsed_ms, stats.step_ms)
    assert step_remaining_ms(stats.step_elapsed_ms, stats.step_ms) == pytest.approx(2.5)  # half a step
    assert (stats.num_gpu_blocks, stats.block_size, stats.requests_finished_total) == (128, 32, 7)


def test_a_scrape_is_stamped_when_sent_so_a_slow_server_shows_its_age():
    """A /metrics that takes 0.6 s to answer: the scrape's numbers are at least that old when they arrive."""
    import asyncio
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            time.sleep(0.6)
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    async def main():
        engine = RemoteEngine(vllm_model("remote", url), "r#0", url + "/v1")
        engine._ensure_scraper = lambda: None  # one scrape, by hand
        sent = time.monotonic()
        scrape = await engine.scrape_once()
        received = time.monotonic()
        stats = await engine.stats()
        await engine.close()
        return sent, scrape, received, engine.clock.now() - stats.timestamp_s

    try:
        sent, scrape, received, age = asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()
    assert received - sent >= 0.6
    assert sent <= scrape.wall_s <= sent + 0.1  # the send time, not the receive time
    assert age >= 0.55  # the reply's wait counts in the age


def _sched(running, waiting, kv, details=None):
    return SimpleNamespace(num_running_reqs=running, num_waiting_reqs=waiting, num_skipped_waiting_reqs=0,
                           kv_cache_usage=kv, iteration_details=details)


def _details(index, ctx_tokens, gen_tokens, elapsed_ms):
    return SimpleNamespace(iteration_index=index, num_ctx_requests=int(ctx_tokens > 0), num_ctx_tokens=ctx_tokens,
                           num_generation_requests=gen_tokens, num_generation_tokens=gen_tokens,
                           elapsed_ms=elapsed_ms, is_dummy=False)


def _iteration(prompt=0, generation=0, preempted=0, finished=(), ttfts=()):
    return SimpleNamespace(num_prompt_tokens=prompt, num_generation_tokens=generation, num_preempted_reqs=preempted,
                           finished_requests=[SimpleNamespace(finish_reason=r) for r in finished],
                           time_to_first_tokens_iter=list(ttfts))


def test_step_recorder_counts_and_times_steps():
    rec = StepRecorder("v#0", "tiny-llama")
    rec.configure(128, 32)
    rec.record(_sched(1, 0, 0.1, _details(0, 100, 0, 3.0)), _iteration(prompt=100, generation=1, ttfts=[0.05]),
               now=10.0)
    rec.record(_sched(2, 1, 0.2, _details(1, 50, 1, 2.0)), _iteration(prompt=50, generation=2, preempted=1),
               now=10.008)
    rec.record(_sched(1, 1, 0.15, _details(2, 0, 2, 1.0)), _iteration(generation=2, finished=["STOP", "ABORT"]),
               now=10.012)
    assert [s.num_tokens for s in rec.steps] == [100, 51, 2]
    # The first step's duration is its model time (nothing before it); later ones the gap while busy.
    assert [round(s.duration_s, 6) for s in rec.steps] == [0.003, 0.008, 0.004]
    stats = rec.stats(timestamp_s=5.0, now_wall_s=10.013)
    assert (stats.num_requests_running, stats.num_requests_waiting, stats.kv_cache_usage_perc) == (1, 1, 0.15)
    assert (stats.prompt_tokens_total, stats.generation_tokens_total, stats.num_preemptions_total) == (150, 5, 1)
    assert stats.requests_finished_total == 1 and stats.ema_ttft_ms == pytest.approx(50.0)
    assert (stats.num_gpu_blocks, stats.block_size) == (128, 32)
    assert (stats.step_ms, stats.step_tokens) == (pytest.approx(4.0), 2)
    assert stats.step_elapsed_ms == pytest.approx(1.0) and step_phase_known(stats.step_elapsed_ms, stats.step_ms)
    stale = rec.stats(timestamp_s=5.0, now_wall_s=10.030)  # 18 ms into a 4 ms step: the phase is unknown
    assert not step_phase_known(stale.step_elapsed_ms, stale.step_ms)
    rec.record(_sched(0, 0, 0.0), None, now=10.04)
    idle = rec.stats(timestamp_s=5.1, now_wall_s=10.05)
    assert (idle.step_ms, idle.step_elapsed_ms, idle.step_tokens) == (0.0, 0.0, 0)


def test_backend_vllm_without_vllm_says_how_to_get_it(monkeypatch):
    from sysaware.engines.registry import build_engine

    monkeypatch.setitem(sys.modules, "sysaware.engines.vllm.engine", None)  # as in the base install
    model = vllm_model("vllm")
    with pytest.raises(RuntimeError, match="make vllm-env"):
        build_engine(model, tiny_pool(), "x#0")


def test_the_tiny_model_is_built_in_code(tmp_path):
    import json

    from tokenizers import Tokenizer

    from sysaware.engines.vllm.tiny_model import ensure_tiny_model

    folder = ensure_tiny_model(tmp_path)
    assert ensure_tiny_model(tmp_path) == folder
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.get_vocab_size() <= config["vocab_size"]
    text = "def f(x):\n    return x  # ünïcode"
    assert tok.decode(tok.encode(text).ids) == text
    arch = tiny_pool().models[0].architecture
    assert (arch.num_layers, arch.hidden_size, arch.vocab_size) == (2, 128, config["vocab_size"])


class _FakeChatServer:
    """An OpenAI chat server in a thread: streams one token per 10 ms until max_tokens or the client leaves, and
    records what reaches vLLM's abort route (answered with ``abort_status``)."""

    def __init__(self, abort_status: int = 200):
        import json
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.aborts: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/inference/v1/abort_requests":
                    fake.aborts.append(body)
                    self.send_response(abort_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for n in range(1, body["max_tokens"] + 1):
                        last = n == body["max_tokens"]
                        event = {"choices": [{"delta": {"content": "x"}, "finish_reason": "length" if last else None}],
                                 "usage": {"prompt_tokens": 5, "completion_tokens": n}}
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(0.01)
                    self.wfile.write(b"data: [DONE]\n\n")
                except OSError:  # the client left
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("abort_status", [200, 403])
def test_a_cancelled_remote_call_is_aborted_by_id_and_a_server_without_the_route_is_asked_once(abort_status):
    import asyncio

    from engine_contract import tiny_messages
    from sysaware.engines.types import GenerationRequest

    server = _FakeChatServer(abort_status)

    def request(request_id, max_tokens):
        return GenerationRequest(request_id=request_id, model="tiny-llama", messages=tiny_messages(),
                                 max_tokens=max_tokens)

    async def main():
        engine = RemoteEngine(vllm_model("remote", server.url), "r#0", server.url + "/v1")
        engine._ensure_scraper = lambda: None  # no /metrics here
        done = await engine.generate(request("whole", 3))  # a call that ends: nothing to abort
        for request_id in ("left-1", "left-2"):  # 100k tokens at 10 ms each: cancelled mid-stream
            task = asyncio.ensure_future(engine.generate(request(request_id, 100_000)))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await engine.close()
        return done, engine.aborts_sent_total

    try:
        done, accepted = asyncio.run(main())
    finally:
        server.close()
    assert done.output_tokens == 3
    if abort_status == 200:
        assert server.aborts == [{"request_ids": ["chatcmpl-left-1"]}, {"request_ids": ["chatcmpl-left-2"]}]
        assert accepted == 2
    else:  # vLLM without --enable-scale-out: asked once, then the disconnect is all it gets
        assert server.aborts == [{"request_ids": ["chatcmpl-left-1"]}]
        assert accepted == 0
