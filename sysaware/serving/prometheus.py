"""Prometheus text for the pool, with vLLM's metric names, so dashboards and scrapers built for vLLM work as is.

Two sources, one registry:
- gauges and counters come from the telemetry actor's snapshot (per replica: what the engine itself counts, so
  they cover every request, whoever sent it);
- latency histograms are observed by the ingress from the results it returns (vLLM observes them in the engine;
  the twin's results carry the same engine-clock times, so the values match what a vLLM replica would report).

Labels are ``model_name`` (as vLLM) and ``replica`` (the Serve replica id, where vLLM has ``engine``). Histogram
buckets are vLLM's (``vllm/v1/metrics/loggers.py``), in seconds of engine time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import attrgetter

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sysaware.engines.types import FinishReason, GenerationResult, ReplicaView, TelemetrySnapshot

LABELS = ("model_name", "replica")

# vLLM's bucket boundaries, seconds.
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                  40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                 80.0)  # fmt: skip
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


# (name, help text as vLLM writes it, the ReplicaView field it reads). Counters are named without "_total":
# prometheus_client appends it on the wire, giving vLLM's "vllm:num_preemptions_total".
GAUGES = (
    ("vllm:num_requests_waiting", "Requests waiting to be processed.", "stats.num_requests_waiting"),
    ("vllm:num_requests_running", "Requests in model execution batches.", "stats.num_requests_running"),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "stats.kv_cache_usage_perc"),
    ("sysaware:replica_stale", "1 when the replica stopped reporting its stats.", "stale"),
)
COUNTERS = (
    ("vllm:num_preemptions", "Cumulative number of preemptions.", "stats.num_preemptions_total"),
    ("vllm:prompt_tokens", "Number of prefill tokens processed.", "stats.prompt_tokens_total"),
    ("vllm:generation_tokens", "Number of generation tokens processed.", "stats.generation_tokens_total"),
    ("vllm:request_success", "Count of successfully processed requests.", "stats.requests_finished_total"),
)


# Serving overhead per hop (serving/overhead.py): milliseconds to a second, wall seconds.
OVERHEAD_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
                      0.5, 1.0)  # fmt: skip
OVERHEAD_METRIC = "sysaware:serving_overhead_seconds"
OVERHEAD_LABELS = ("model_name", "hop")

# Every family /metrics exports (Prometheus names, before the _total/_bucket suffixes), for dashboards to check.
METRIC_NAMES = (
    *(name for name, _, _ in GAUGES),
    *(name for name, _, _ in COUNTERS),
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    OVERHEAD_METRIC,
)


class BucketedHistogram:
    """A Prometheus histogram per label set, filled many values at a time (a request's inter-token gaps are
    hundreds of values; numpy bins them in one call instead of one locked ``observe`` each)."""

    def __init__(self, bounds_s: Sequence[float], labels: tuple[str, ...] = LABELS) -> None:
        self.bounds = np.asarray(bounds_s, dtype=float)
        self.labels = labels
        self._counts: dict[tuple[str, ...], np.ndarray] = {}  # per label values: count per bucket, +Inf last
        self._sums: dict[tuple[str, ...], float] = {}

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float] | np.ndarray) -> None:
        values = np.asarray(values, dtype=float)
        if values.size == 0:
            return
        counts = self._counts.setdefault(labels, np.zeros(len(self.bounds) + 1, dtype=np.int64))
        # Prometheus buckets are "le": a value equal to a bound falls in that bound's bucket.
        np.add.at(counts, np.searchsorted(self.bounds, values, side="left"), 1)
        self._sums[labels] = self._sums.get(labels, 0.0) + float(values.sum())

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=self.labels)
        for labels, counts in sorted(self._counts.items()):
            cumulative = np.cumsum(counts)
            buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1])]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric(list(labels), buckets, self._sums[labels])
        return family

    def count(self, labels: tuple[str, ...]) -> int:
        counts = self._counts.get(labels)
        return 0 if counts is None else int(counts.sum())


def _le(bound: float) -> str:
    return repr(float(bound))


class PoolMetrics(Collector):
    """The collector behind the ingress's ``/metrics``: ``render(snapshot)`` returns the exposition text."""

    def __init__(self) -> None:
        self.ttft = BucketedHistogram(TTFT_BUCKETS_S)
        self.inter_token = BucketedHistogram(ITL_BUCKETS_S)
        self.e2e = BucketedHistogram(E2E_BUCKETS_S)
        self.overhead = BucketedHistogram(OVERHEAD_BUCKETS_S, OVERHEAD_LABELS)
        self._replicas: list[ReplicaView] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, result: GenerationResult) -> None:
        """Record one answered request's latencies (engine seconds). Aborted requests are not observed, as in vLLM."""
        if result.finish_reason is FinishReason.ABORT:
            return
        labels = (result.model, result.replica_id)
        if result.ttft_s is not None:
            self.ttft.observe_many(labels, [result.ttft_s])
        if len(result.token_times_s) > 1:
            self.inter_token.observe_many(labels, np.diff(np.asarray(result.token_times_s, dtype=float)))
        self.e2e.observe_many(labels, [result.e2e_s])

    def observe_overhead(self, model: str, hops: Mapping[str, float]) -> None:
        """Record one streamed request's serving overhead per hop (wall seconds; ``overhead.hop_durations``)."""
        for hop, seconds in hops.items():
            self.overhead.observe_many((model, hop), [seconds])

    def render(self, snapshot: TelemetrySnapshot) -> bytes:
        self._replicas = list(snapshot.replicas.values())
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        views = self._replicas
        for name, doc, field in GAUGES:
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            read = attrgetter(field)
            for v in views:
                family.add_metric([v.model, v.replica_id], float(read(v)))
            yield family
        for name, doc, field in COUNTERS:
            family = CounterMetricFamily(name, doc, labels=LABELS)
            read = attrgetter(field)
            for v in views:
                family.add_metric([v.model, v.replica_id], float(read(v)))
            yield family
        yield self.ttft.family("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.")
        yield self.inter_token.family(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds."
        )
        yield self.e2e.family("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.")
        yield self.overhead.family(
            OVERHEAD_METRIC,
            "Serving overhead of streamed requests before their first token, per hop, wall seconds (total: ingress "
            "entry to first event, less the engine TTFT; proxy_request: client send to ingress entry, for clients "
            "that send x-sysaware-sent-at).",
        )
