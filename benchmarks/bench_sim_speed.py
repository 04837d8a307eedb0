"""Simulated seconds per wall second for the default pool with N=50 closed-loop clients per model.

Target: at least 200x real time. Two phases are reported, because the responder caches everything that does not
depend on the seed per (model, prompt): the first virtual minutes meet mostly new prompts (cold: 120 train tasks x
6 roles x 3 strategies x 5 models ~ 10.8k distinct prompts), a long run meets known ones (steady state). Also printed:
core steps per virtual second (fast-forward makes cost follow events, not tokens) and the CPU time, which is less
sensitive than wall time to other load on the machine.
"""

from __future__ import annotations

import time

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.twin.responder import TwinResponder
from sysaware.sim.cluster import SimulatedCluster
from sysaware.sim.load import ClosedLoopLoad
from sysaware.sim.workload import MbppRequestFactory


def _phase(cluster: SimulatedCluster, loads: list[ClosedLoopLoad], start_s: float, virtual_s: float) -> dict:
    steps0, done0 = cluster.steps_executed, sum(len(l.completed) for l in loads)
    w0, c0 = time.perf_counter(), time.process_time()
    cluster.run(until=start_s + virtual_s)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "virtual_s": virtual_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": cluster.steps_executed - steps0,
        "requests": sum(len(l.completed) for l in loads) - done0,
    }


def main(concurrency: int = 50, cold_s: float = 120.0, steady_s: float = 240.0) -> None:
    pool = load_pool(DEFAULT_POOL)
    t0 = time.perf_counter()
    responder = TwinResponder(pool)
    cluster = SimulatedCluster.from_pool(pool, responder=responder)
    cluster.keep_results = False
    factory = MbppRequestFactory.for_split("train")
    loads = [ClosedLoopLoad(cluster, m, concurrency, factory).start() for m in cluster.models]
    setup = time.perf_counter() - t0
    cold = _phase(cluster, loads, 0.0, cold_s)
    steady = _phase(cluster, loads, cold_s, steady_s)
    print(f"pool {pool.name}: {len(cluster.replicas)} replicas, N={concurrency} clients per model; setup {setup:.2f} s")
    for name, p in (("cold  ", cold), ("steady", steady)):
        print(
            f"{name}: {p['virtual_s']:.0f} virtual s in {p['wall_s']:.2f} wall s ({p['cpu_s']:.2f} CPU s); "
            f"{p['requests']} requests, {p['steps'] / p['virtual_s']:.0f} core steps per virtual s; "
            f"{p['virtual_s'] / p['wall_s']:.0f}x wall, {p['virtual_s'] / p['cpu_s']:.0f}x CPU"
        )
    print(
        f"simulated seconds per wall second: cold {cold['virtual_s'] / cold['wall_s']:.0f}x, "
        f"steady state {steady['virtual_s'] / steady['wall_s']:.0f}x (target >= 200x)"
    )


if __name__ == "__main__":
    main()
