"""The system state an executor sees: per-model load from replica stats, plus what counters and histograms add.

Replica stats (vLLM's gauges: waiting, running, KV use, EMA of TTFT) are instantaneous. Two more numbers need a
window, the way Prometheus reads vLLM: the mean time per output token of requests that finished lately (vLLM's
``vllm:time_per_output_token_seconds`` histogram, sum over count) and the completion rate (``rate()`` of
``vllm:request_success_total``). ``TelemetryTracker`` keeps both from the results it is shown; the simulated driver
shows it every finished request, the live telemetry actor would read the histograms.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sysaware.engines.types import GenerationResult, ReplicaStats


@dataclass(frozen=True)
class ModelLoad:
    model: str
    replicas: int
    num_requests_waiting: int  # summed over replicas
    num_requests_running: int  # summed over replicas
    kv_cache_usage_perc: float  # mean over replicas, fraction
    ema_ttft_ms: float  # mean over replicas that have served a request (0 before any)
    ema_tpot_ms: float | None  # EMA of the TPOT of recently finished requests; None before any
    finished_per_s: float | None  # completions per second over the window, all replicas; None without a window

    @property
    def in_system_per_replica(self) -> float:
        """Requests waiting or running per replica: the llm-d queue scorer's load."""
        return (self.num_requests_waiting + self.num_requests_running) / max(self.replicas, 1)


@dataclass(frozen=True)
class SystemSnapshot:
    timestamp_s: float
    models: dict[str, ModelLoad]
    replicas: tuple[ReplicaStats, ...] = ()

    def load(self, model: str) -> ModelLoad:
        return self.models[model]


class TelemetryTracker:
    """Windowed figures per model: EMA of TPOT from finished requests, and the completion rate."""

    def __init__(self, window_s: float = 5.0, ema_alpha: float = 0.2) -> None:
        self.window_s = window_s  # completions counted over this many seconds
        self.ema_alpha = ema_alpha  # weight of the newest request's TPOT
        self._ema_tpot_s: dict[str, float] = {}
        self._finishes: dict[str, deque[float]] = {}

    def record(self, result: GenerationResult) -> None:
        """One finished request (any client's): its TPOT and its completion time."""
        self._finishes.setdefault(result.model, deque()).append(result.finished_s)
        tpot = result.tpot_s
        if tpot is not None:
            old = self._ema_tpot_s.get(result.model)
            a = self.ema_alpha
            self._ema_tpot_s[result.model] = tpot if old is None else a * tpot + (1 - a) * old

    def record_all(self, results: Iterable[GenerationResult]) -> None:
        for r in results:
            self.record(r)

    def snapshot(self, now: float, stats: Sequence[ReplicaStats]) -> SystemSnapshot:
        by_model: dict[str, list[ReplicaStats]] = {}
        for s in stats:
            by_model.setdefault(s.model, []).append(s)
        models = {}
        for model, reps in by_model.items():
            finishes = self._finishes.get(model, deque())
            while finishes and finishes[0] < now - self.window_s:
                finishes.popleft()
            served = [r.ema_ttft_ms for r in reps if r.requests_finished_total or r.ema_ttft_ms]
            tpot = self._ema_tpot_s.get(model)
            models[model] = ModelLoad(
                model=model,
                replicas=len(reps),
                num_requests_waiting=sum(r.num_requests_waiting for r in reps),
                num_requests_running=sum(r.num_requests_running for r in reps),
                kv_cache_usage_perc=sum(r.kv_cache_usage_perc for r in reps) / len(reps),
                ema_ttft_ms=sum(served) / len(served) if served else 0.0,
                ema_tpot_ms=None if tpot is None else tpot * 1e3,
                finished_per_s=len(finishes) / self.window_s if now >= self.window_s else None,
            )
        return SystemSnapshot(now, models, tuple(stats))
