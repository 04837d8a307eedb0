"""The load sweep on the simulated cluster: per model, TTFT and TPOT under N concurrent background clients.

For each load level N a fresh cluster is built; every model gets N closed-loop clients; after a warm-up, the requests
that arrive in the measurement window are measured, and the replicas' stats are sampled every 100 ms as the
telemetry actor would. The same table comes from the live pool later (`sysaware load-sweep`); both run one engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sysaware.config import PoolConfig
from sysaware.sim.backend import SimBackend
from sysaware.sim.load import ClosedLoopLoad
from sysaware.sim.workload import MbppRequestFactory

DEFAULT_LEVELS = (1, 10, 50)


@dataclass(frozen=True)
class SweepSettings:
    concurrency_levels: Sequence[int] = DEFAULT_LEVELS  # background clients per model
    warmup_s: float = 20.0  # virtual seconds before measuring (queues reach steady state)
    measure_s: float = 60.0  # virtual seconds of measurement
    telemetry_period_s: float = 0.1  # how often replica stats are sampled
    seed: int = 0


@dataclass(frozen=True)
class LevelRun:
    concurrency: int
    cluster: SimulatedCluster
    loads: dict[str, ClosedLoopLoad]
    telemetry: pd.DataFrame  # one row per (sample time, replica)
    wall_s: float  # wall-clock seconds the simulation took


def run_level(
    pool: PoolConfig, concurrency: int, settings: SweepSettings, backend: SimBackend | None = None
) -> LevelRun:
    cluster = (backend or SimBackend(pool)).cluster(seed=settings.seed)
    factory = MbppRequestFactory.for_split("train", prefix=f"n{concurrency}")
    stop = settings.warmup_s + settings.measure_s
    loads = {
        m: ClosedLoopLoad(cluster, m, concurrency, factory, seed=settings.seed, stop_s=stop).start()
        for m in cluster.models
    }
    samples: list[dict] = []

    def sample(t: float) -> None:
        if t >= settings.warmup_s:
            for s in cluster.stats():
                samples.append(
                    {
                        "t_s": t,
                        "model": s.model,
                        "replica_id": s.replica_id,
                        "queue_waiting": s.num_requests_waiting,
                        "queue_running": s.num_requests_running,
                        "kv_utilization": s.kv_cache_usage_perc,
                        "ema_ttft_ms": s.ema_ttft_ms,
                    }
                )
        if t + settings.telemetry_period_s < stop:
            cluster.call_at(t + settings.telemetry_period_s, sample)

    cluster.call_at(0.0, sample)
    started = time.perf_counter()
    cluster.run(until=stop)
    wall = time.perf_counter() - started
    return LevelRun(concurrency, cluster, loads, pd.DataFrame(samples), wall)


def latency_row(
    model: str,
    concurrency: int,
    ttft_ms: np.ndarray,
    tpot_ms: np.ndarray,
    output_tokens: Sequence[int],
    telemetry: pd.DataFrame,
    preemptions: int,
) -> dict:
    """The per-model row both sweeps print (live and simulated), so their tables compare column for column."""
    tel = telemetry[telemetry.model == model] if len(telemetry) else telemetry
    return {
        "model": model,
        "concurrency": concurrency,
        "requests": len(output_tokens),
        "ttft_p50_ms": _pct(ttft_ms, 50),
        "ttft_p95_ms": _pct(ttft_ms, 95),
        "tpot_p50_ms": _pct(tpot_ms, 50),
        "tpot_p95_ms": _pct(tpot_ms, 95),
        "out_tokens_mean": float(np.mean(output_tokens)) if len(output_tokens) else float("nan"),
        "queue_waiting_mean": float(tel.queue_waiting.mean()) if len(tel) else float("nan"),
        "queue_running_mean": float(tel.queue_running.mean()) if len(tel) else float("nan"),
        "kv_util_mean": float(tel.kv_utilization.mean()) if len(tel) else float("nan"),
        "preemptions": int(preemptions),
    }


def summarise_level(run: LevelRun, settings: SweepSettings) -> pd.DataFrame:
    """One row per model: latency percentiles of requests that arrived in the window, and the mean state seen."""
    rows = []
    for model, load in run.loads.items():
        done = [r for r in load.completed if r.arrival_s >= settings.warmup_s and r.ttft_s is not None]
        ttft = np.array([r.ttft_s for r in done]) * 1e3
        tpot = np.array([r.tpot_s for r in done if r.tpot_s is not None]) * 1e3
        rows.append(
            latency_row(
                model,
                run.concurrency,
                ttft,
                tpot,
                [r.output_tokens for r in done],
                run.telemetry,
                sum(r.num_preemptions for r in done),
            )
        )
    return pd.DataFrame(rows)


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def sweep(
    pool: PoolConfig,
    settings: SweepSettings = SweepSettings(),
    backend: SimBackend | None = None,
    on_level: Callable[[LevelRun], None] | None = None,
) -> pd.DataFrame:
    """Run every load level; returns the per-model table (and calls ``on_level`` after each, for progress)."""
    backend = backend or SimBackend(pool)
    tables = []
    for n in settings.concurrency_levels:
        run = run_level(pool, n, settings, backend)
        tables.append(summarise_level(run, settings))
        if on_level is not None:
            on_level(run)
    return pd.concat(tables, ignore_index=True)
