"""How faithfully the live driver (sysaware.engines.twin.live) reproduces the simulated twin, and what it adds.

Real stack: roofline step times and the recorded-answer responder for mistral-7b-instruct (configs/pool_twin.yaml),
programmer prompts over MBPP tasks. Three measurements:

1. Startup: building the responder (once per process), the core, and warming up.
2. Idle replica, one request at a time, at several time scales: the wall-clock TTFT a streaming client sees
   (x time_scale, in engine ms) against the simulated TTFT of the same request. The engine-clock TTFT is exactly
   the simulated one; the gap is the responder's CPU time plus event-loop latency, multiplied by time_scale.
3. Loaded replica: Poisson arrivals replayed in wall time; then the same requests at the same engine-clock
   arrival times through the simulated driver (a virtual clock, like sysaware.sim). Per-request TTFT and end-to-end
   latency must agree: any gap means the live driver lost engine time (lag it had to drop) or cut runs wrongly.

    python benchmarks/bench_live_driver.py [time_scale_for_load=10] [rate_per_engine_s=8] [duration_engine_s=30]

The headline, printed last: max |TTFT live - simulated| on the engine clock under load, and the wall-clock TTFT
overhead at idle.
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.engines.twin.perf.core import EventKind, TwinEngineCore
from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult
from sysaware.engines.twin.factory import shared_responder, warm_up
from sysaware.engines.twin.live import LiveTwinEngine
from sysaware.tasks.mbpp import load_tasks
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy, task_prompt


def two_model_pool() -> PoolConfig:
    raw = load_pool(DEFAULT_POOL).model_dump()
    raw["models"] = [dict(m, replicas=1) for m in raw["models"][:2]]
    return PoolConfig.model_validate(raw)


POOL = two_model_pool()
MODEL = POOL.models[0]
STRATEGIES = list(Strategy)


def create_request(i: int, prefix: str) -> GenerationRequest:
    task = load_tasks()[i % 900]
    strategy = STRATEGIES[i % len(STRATEGIES)]
    messages = (
        ChatMessage("system", ROLES["programmer"].system_prompt),
        ChatMessage("user", f"{task_prompt(task.text, task.test_list[0])}\n{STRATEGY_INSTRUCTIONS[strategy]}"),
    )
    return GenerationRequest(f"{prefix}-{i}", MODEL.name, messages, seed=i)


def create_core(replica_id: str) -> TwinEngineCore:
    return TwinEngineCore.for_deployment(MODEL, POOL, replica_id, responder=shared_responder(POOL))


def simulate(arrivals: list[tuple[float, GenerationRequest]]) -> dict[str, GenerationResult]:
    """The simulated driver: a virtual clock; an arrival bounds the step before it (same as truncating)."""
    core = create_core("sim")
    pending = sorted(arrivals, key=lambda a: a[0])
    results: dict[str, GenerationResult] = {}
    now, i = 0.0, 0
    while i < len(pending) or core.has_work():
        while i < len(pending) and pending[i][0] <= now:
            core.add_request(pending[i][1], pending[i][0])
            i += 1
        if not core.has_work():
            now = pending[i][0]
            continue
        outcome = core.step(now, pending[i][0] if i < len(pending) else None)
        now += outcome.duration_s
        for event in outcome.events:
            if event.kind is EventKind.FINISHED:
                results[event.request_id] = event.result
    return results


def pct(values, q) -> float:
    return float(np.percentile(values, q))


async def idle_run(time_scale: float, n: int) -> list[float]:
    """Wall TTFT x scale - simulated TTFT (engine ms) of n requests on an idle replica."""
    engine = LiveTwinEngine(create_core(f"idle-{time_scale}"), time_scale)
    gaps, engine_gaps = [], []
    for i in range(n):
        request = create_request(100 + i, f"idle{time_scale}")
        sim_ttft = simulate([(0.0, request)])[request.request_id].ttft_s
        t0 = time.monotonic()
        stream = engine.generate_stream(request)
        await anext(stream)
        wall_ttft = (time.monotonic() - t0) * time_scale
        async for chunk in stream:
            pass
        engine_gaps.append(abs(chunk.result.ttft_s - sim_ttft) * 1e3)
        gaps.append((wall_ttft - sim_ttft) * 1e3)
        await asyncio.sleep(0.02)
    await engine.close()
    return gaps, engine_gaps, engine.driver_stats.dropped_lag_s


async def loaded_run(time_scale: float, rate: float, duration_s: float):
    rng = np.random.default_rng(0)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.5))
    times = np.cumsum(gaps)
    times = times[times < duration_s]
    requests = [create_request(300 + i, "load") for i in range(len(times))]
    engine = LiveTwinEngine(create_core("live"), time_scale)
    t_start = time.monotonic()

    async def send(at_engine_s: float, request: GenerationRequest) -> GenerationResult:
        await asyncio.sleep(max(0.0, t_start + at_engine_s / time_scale - time.monotonic()))
        return await engine.generate(request)

    results = await asyncio.gather(*(send(t, r) for t, r in zip(times, requests)))
    wall = time.monotonic() - t_start
    stats = engine.driver_stats
    await engine.close()
    return results, wall, stats


def main() -> None:
    load_scale = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0

    print("== startup")
    t = time.perf_counter()
    responder = shared_responder(POOL)
    print(f"TwinResponder(pool) build: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    warm_up(responder, MODEL.name)
    print(f"warm-up (first respond): {time.perf_counter() - t:.3f} s")
    t = time.perf_counter()
    create_core("startup")
    print(f"core for_deployment: {time.perf_counter() - t:.3f} s")

    print("\n== idle replica: wall TTFT x time_scale - simulated TTFT (engine ms), 20 requests")
    idle_p50 = {}
    for scale in (1.0, 10.0, 50.0):
        gaps, engine_gaps, dropped_s = asyncio.run(idle_run(scale, 20))
        idle_p50[scale] = pct(gaps, 50)
        print(
            f"time_scale {scale:>4g}: gap p50 {pct(gaps, 50):7.2f} ms  p95 {pct(gaps, 95):7.2f} ms  "
            f"(wall: p50 {pct(gaps, 50) / scale:.2f} ms)  min {min(gaps):.2f} ms; engine-clock TTFT vs sim max "
            f"{max(engine_gaps):.4f} ms; dropped lag {dropped_s * 1e3:.1f} engine ms"
        )

    print(f"\n== loaded replica: Poisson {rate:g} req/engine-s for {duration:g} engine-s at time_scale {load_scale:g}")
    results, wall, stats = asyncio.run(loaded_run(load_scale, rate, duration))
    requests = [create_request(300 + i, "load") for i in range(len(results))]
    sim = simulate([(r.arrival_s, request) for r, request in zip(results, requests)])
    ttft_diff = np.array([(r.ttft_s - sim[r.request_id].ttft_s) * 1e3 for r in results])
    e2e_diff = np.array([(r.e2e_s - sim[r.request_id].e2e_s) * 1e3 for r in results])
    same_text = all(r.text == sim[r.request_id].text for r in results)
    ttfts = np.array([r.ttft_s * 1e3 for r in results])
    late = np.array(stats.late_wakeups) * 1e3
    print(
        f"{len(results)} requests in {wall:.2f} s wall; driver: {stats.steps} steps, {stats.iterations} iterations, "
        f"{stats.truncations} truncations, dropped lag {stats.dropped_lag_s * 1e3:.1f} engine ms"
    )
    print(f"wake-up lateness (wall ms): p50 {pct(late, 50):.3f}  p95 {pct(late, 95):.3f}  max {late.max():.3f}")
    print(f"TTFT live p50 {pct(ttfts, 50):.1f} ms  p95 {pct(ttfts, 95):.1f} ms (engine clock)")
    print(f"same text as simulated: {same_text}")
    print(f"|e2e live - sim|: max {np.abs(e2e_diff).max():.4f} ms")
    print(
        f"HEADLINE: under load, |TTFT live - simulated| max {np.abs(ttft_diff).max():.4f} ms, mean "
        f"{np.abs(ttft_diff).mean():.4f} ms (engine clock, same arrivals); idle wall-clock TTFT overhead p50 "
        f"{idle_p50[1.0]:.2f} ms at time_scale 1, {idle_p50[10.0]:.2f} ms at 10 (engine ms)"
    )


if __name__ == "__main__":
    main()
