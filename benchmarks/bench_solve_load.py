"""Many concurrent solves through POST /v1/solve for a bounded time: throughput, goodput, errors, memory.

A local Ray cluster (started here), the default pool's first two models on the twin plus the orchestrator, and
``clients`` closed-loop HTTP clients posting MBPP test-split problems (with their tests, no SLO: the default
budget) for ``duration_s`` wall seconds. Reported: solves/s, goodput (passed within the SLO), every non-200 by
status, and the orchestrator replica's RSS at the start and the end of the window (it must stay flat: no session,
prediction or executor state may be kept per solve). Bounded in count and time; local only.

    python benchmarks/bench_solve_load.py [duration_s=120] [clients=16] [time_scale=4] [policy=greedy]

At time_scale 20 every solve misses its SLO (goodput 0.00, e2e p50 11.9 engine s): the HTTP, orchestration and
sandbox wall time is multiplied by the scale in engine seconds. At 4 (measured: 1932 solves in 151 s, 12.8/s, goodput
0.46, 0 errors, orchestrator RSS 795 -> 840 MiB) the budget still means what it means.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import time
from collections import Counter

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orchestrator_rss_mib(app: str) -> float:
    """The orchestrator replica's resident memory, found by the process title Ray gives its actors
    (``ray::ServeReplica:<app>:orchestrator``): local only, and no dashboard needed."""
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("ray::") and app in title and "orchestrator" in title:
                for line in (proc / "status").read_text().splitlines():  # Linux
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:  # not a process, or it ended
            continue
    return float("nan")


async def drive(url: str, tasks, duration_s: float, clients: int, policy: str) -> tuple[Counter, list[float]]:
    outcomes: Counter = Counter()
    latencies: list[float] = []
    stop = time.monotonic() + duration_s
    async with httpx.AsyncClient(timeout=600.0) as client:

        async def worker(i: int) -> None:
            rng = random.Random(i)
            while time.monotonic() < stop:
                task = rng.choice(tasks)
                body = {"problem": task.text, "tests": list(task.test_list), "policy": policy, "seed": rng.randrange(4)}
                try:
                    r = await client.post(f"{url}/solve", json=body)
                except httpx.HTTPError as e:
                    outcomes[f"transport:{type(e).__name__}"] += 1
                    continue
                if r.status_code != 200:
                    outcomes[f"status:{r.status_code}"] += 1
                    continue
                out = r.json()
                outcomes["solved"] += 1
                outcomes["goodput"] += bool(out["passed"] and out["slo_met"])
                latencies.append(out["e2e_s"])

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return outcomes, latencies


def main(duration_s: float = 120.0, clients: int = 16, time_scale: float = 4.0, policy: str = "greedy") -> None:
    import numpy as np
    import ray

    from sysaware.config import DEFAULT_POOL, load_pool
    from sysaware.serving.app import build_app, deploy, select_models
    from sysaware.serving.orchestrator import SolveSettings
    from sysaware.tasks.mbpp import Split, get_task, split_of

    base = load_pool(DEFAULT_POOL)
    pool = select_models(base, [m.name for m in base.models[:2]], replicas=1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    app = "bench-solve"
    try:
        t0 = time.perf_counter()
        url = deploy(build_app(pool, time_scale, solve=SolveSettings(policy=policy)), port=free_port(), name=app,
                     log_level="ERROR")
        print(f"deployed in {time.perf_counter() - t0:.1f} s; {clients} clients for {duration_s:.0f} s, policy {policy}")
        tasks = [get_task(t) for t in range(11, 60) if split_of(t) is Split.TEST]
        asyncio.run(drive(url, tasks[:2], 5.0, 2, policy))  # warm: the responder, the sandbox, the executor
        rss0 = orchestrator_rss_mib(app)
        t1 = time.perf_counter()
        outcomes, latencies = asyncio.run(drive(url, tasks, duration_s, clients, policy))
        wall = time.perf_counter() - t1
        rss1 = orchestrator_rss_mib(app)
    finally:
        ray.shutdown()
    solved = outcomes["solved"]
    errors = sum(v for k, v in outcomes.items() if k not in ("solved", "goodput"))
    p50, p95 = (np.percentile(latencies, [50, 95]) if latencies else (float("nan"),) * 2)
    print(f"solves: {solved} in {wall:.0f} s = {solved / wall:.2f}/s; goodput {outcomes['goodput'] / max(solved, 1):.2f}; "
          f"errors {errors} {dict((k, v) for k, v in outcomes.items() if k not in ('solved', 'goodput'))}")
    print(f"e2e engine s: p50 {p50:.2f}, p95 {p95:.2f}")
    print(f"orchestrator RSS: {rss0:.0f} MiB -> {rss1:.0f} MiB ({rss1 - rss0:+.0f} MiB)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(f(a) for f, a in zip((float, int, float, str), args)))
