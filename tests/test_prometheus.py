"""/metrics text: the telemetry snapshot and the observed latencies rendered with vLLM's names, parsed back with
prometheus_client's own parser (what a Prometheus scrape does)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sysaware.engines.types import FinishReason, GenerationResult, TelemetrySnapshot
from sysaware.serving.prometheus import TTFT_BUCKETS_S, PoolMetrics
from sysaware.serving.telemetry import TelemetryState
from twin_factories import VLLM_SAMPLE_NAMES, create_stats


def create_result(
    model: str = "m", replica_id: str = "app#m#r0", ttft_s: float = 0.05, token_gaps_s: tuple[float, ...] = (0.01,) * 4,
    finish: FinishReason = FinishReason.STOP,
) -> GenerationResult:  # fmt: skip
    """A request that arrived at t=0 and emitted its first token at ``ttft_s``, then one token per gap."""
    times = [ttft_s]
    for gap in token_gaps_s:
        times.append(times[-1] + gap)
    return GenerationResult(
        request_id="r", model=model, text="x", prompt_tokens=10, output_tokens=len(times), finish_reason=finish,
        arrival_s=0.0, first_scheduled_s=0.0, first_token_s=ttft_s, finished_s=times[-1], replica_id=replica_id,
        token_times_s=times,
    )  # fmt: skip


EMPTY = TelemetrySnapshot(wall_time_s=0.0, stale_after_s=0.5)  # nobody has pushed


def telemetry_snapshot() -> TelemetrySnapshot:
    """A real TelemetryState snapshot of two replicas of model a and one of model b."""
    state = TelemetryState()
    state.push(create_stats("app#a#0", "a", t=1.0, num_requests_waiting=3, num_requests_running=5,
                            kv_cache_usage_perc=0.25, num_preemptions_total=2, prompt_tokens_total=900,
                            generation_tokens_total=4000, requests_finished_total=12))  # fmt: skip
    state.push(create_stats("app#a#1", "a", t=1.0, num_requests_running=1, kv_cache_usage_perc=0.5))
    state.push(create_stats("app#b#0", "b", t=1.0))
    return state.snapshot()


def parse(text: bytes) -> dict[str, list]:
    """Sample name -> samples, from the exposition text."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict, name: str, **labels) -> float:
    matches = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def test_text_parses_and_carries_the_vllm_names_with_model_and_replica_labels():
    metrics = PoolMetrics()
    metrics.observe(create_result("a", "app#a#0"))
    samples = parse(metrics.render(telemetry_snapshot()))
    assert VLLM_SAMPLE_NAMES <= set(samples)
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:request_success_total"):
        assert {(s.labels["model_name"], s.labels["replica"]) for s in samples[name]} == {
            ("a", "app#a#0"), ("a", "app#a#1"), ("b", "app#b#0"),
        }  # fmt: skip


def test_gauges_and_counters_are_the_snapshot_values_per_replica():
    samples = parse(PoolMetrics().render(telemetry_snapshot()))
    a0 = {"model_name": "a", "replica": "app#a#0"}
    assert value(samples, "vllm:num_requests_waiting", **a0) == 3
    assert value(samples, "vllm:num_requests_running", **a0) == 5
    assert value(samples, "vllm:kv_cache_usage_perc", **a0) == 0.25
    assert value(samples, "vllm:num_preemptions_total", **a0) == 2
    assert value(samples, "vllm:prompt_tokens_total", **a0) == 900
    assert value(samples, "vllm:generation_tokens_total", **a0) == 4000
    assert value(samples, "vllm:request_success_total", **a0) == 12
    assert value(samples, "vllm:num_requests_running", model_name="a", replica="app#a#1") == 1


def test_histograms_bin_engine_latencies_cumulatively_with_inclusive_bounds():
    metrics = PoolMetrics()
    # TTFT exactly on a bucket bound (0.1 s) counts in that bucket ("le"); the second falls in the next one.
    metrics.observe(create_result(ttft_s=0.1, token_gaps_s=(0.02, 0.03, 0.2)))
    metrics.observe(create_result(ttft_s=0.3, token_gaps_s=()))  # one token: no inter-token gap
    samples = parse(metrics.render(EMPTY))
    labels = {"model_name": "m", "replica": "app#m#r0"}
    ttft_count = value(samples, "vllm:time_to_first_token_seconds_count", **labels)
    buckets = {s.labels["le"]: s.value for s in samples["vllm:time_to_first_token_seconds_bucket"]}
    assert ttft_count == 2
    assert buckets["0.08"] == 0 and buckets["0.1"] == 1 and buckets["0.25"] == 1 and buckets["0.5"] == 2
    assert buckets["+Inf"] == 2 and len(buckets) == len(TTFT_BUCKETS_S) + 1
    assert value(samples, "vllm:time_to_first_token_seconds_sum", **labels) == pytest.approx(0.4)
    # Three gaps from the first request: 0.02 + 0.03 + 0.2 = 0.25 s.
    assert value(samples, "vllm:inter_token_latency_seconds_count", **labels) == 3
    assert value(samples, "vllm:inter_token_latency_seconds_sum", **labels) == pytest.approx(0.25)
    # E2E: 0.1 + 0.25 = 0.35 s and 0.3 s.
    assert value(samples, "vllm:e2e_request_latency_seconds_sum", **labels) == pytest.approx(0.65)


def test_aborted_requests_are_not_observed():
    metrics = PoolMetrics()
    metrics.observe(create_result(finish=FinishReason.ABORT))
    samples = parse(metrics.render(EMPTY))
    assert "vllm:time_to_first_token_seconds_count" not in samples


def test_a_stale_replica_is_flagged_and_a_silent_pool_renders_empty_families():
    now = [0.0]
    state = TelemetryState(stale_after_s=0.5, forget_after_s=60.0, clock=lambda: now[0], wall_clock=lambda: now[0])
    state.push(create_stats("app#a#0", "a", t=1.0))
    now[0] = 10.0  # silent for 10 s, 20 push periods
    samples = parse(PoolMetrics().render(state.snapshot()))
    assert value(samples, "sysaware:replica_stale", model_name="a", replica="app#a#0") == 1
    assert parse(PoolMetrics().render(EMPTY)) == {}


def test_serving_overhead_hops_from_the_stamps_render_as_one_histogram_per_hop():
    from sysaware.serving.overhead import HOPS, SERVER_HOPS, hop_durations
    from sysaware.serving.prometheus import METRIC_NAMES, OVERHEAD_METRIC

    stamps = [("client_sent", 99.993), ("ingress_in", 100.000), ("route_in", 100.0005), ("dispatch", 100.001),
              ("replica_in", 100.004), ("engine_admit", 100.005), ("engine_first_token", 100.025),
              ("replica_out", 100.026), ("ingress_first", 100.029), ("ingress_sent", 100.030)]  # fmt: skip
    hops = hop_durations(stamps, engine_ttft_s=0.030, time_scale=2.0)  # 15 ms of wall time in the engine
    assert set(hops) == set(HOPS)
    expected = {"proxy_request": 0.007, "ingress_body": 0.0005, "ingress_request": 0.0005, "handle": 0.003,
                "engine_loop": 0.006, "stream_back": 0.004, "ingress_response": 0.001, "total": 0.015}  # fmt: skip
    assert hops == pytest.approx(expected, abs=1e-9)
    # total: the server's hops (the client's proxy_request is not the server's, and only some clients send it)
    assert sum(hops[h] for h in SERVER_HOPS if h != "total") == pytest.approx(hops["total"], abs=1e-9)
    # An engine that does not stamp (vLLM, remote) and a client that sends no clock: the hops around the engine.
    plain = [s for s in stamps if not s[0].startswith(("engine", "client"))]
    assert set(hop_durations(plain, 0.03)) == {"ingress_body", "ingress_request", "handle", "ingress_response",
                                               "total"}  # fmt: skip
    # A client whose clock is not the server's (a minute off): its proxy_request is not recorded.
    skewed = [("client_sent", 100.0 - 3600.0), *stamps[1:]]
    assert "proxy_request" not in hop_durations(skewed, 0.03)
    metrics = PoolMetrics()
    metrics.observe_overhead("a", hops)
    samples = parse(metrics.render(EMPTY))
    assert OVERHEAD_METRIC in METRIC_NAMES
    counts = {s.labels["hop"]: s.value for s in samples[f"{OVERHEAD_METRIC}_count"] if s.labels["model_name"] == "a"}
    assert counts == {hop: 1.0 for hop in HOPS}
    assert value(samples, f"{OVERHEAD_METRIC}_sum", model_name="a", hop="total") == pytest.approx(0.015)
    assert value(samples, f"{OVERHEAD_METRIC}_sum", model_name="a", hop="proxy_request") == pytest.approx(0.007)


@pytest.mark.parametrize("raw", ["soon", "nan", "inf", "-5", "0", ""])
def test_a_client_clock_header_that_is_not_a_time_is_refused_naming_the_header(raw):
    from sysaware.serving.overhead import CLIENT_SENT_HEADER, client_sent_s

    with pytest.raises(ValueError, match=CLIENT_SENT_HEADER):
        client_sent_s(raw)
    assert client_sent_s(None) is None
    assert client_sent_s("1764754800.25") == 1764754800.25
