"""Simulated seconds per wall second for the default pool with N=50 closed-loop clients per model.

Target: at least 200x real time. Prints core steps per simulated second too: fast-forward makes cost follow events
(arrivals, finishes), not tokens.
"""

from __future__ import annotations

import time

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.twin.responder import TwinResponder
from sysaware.sim.cluster import SimulatedCluster
from sysaware.sim.load import ClosedLoopLoad
from sysaware.sim.workload import MbppRequestFactory


def main(concurrency: int = 50, virtual_s: float = 120.0) -> None:
    pool = load_pool(DEFAULT_POOL)
    responder = TwinResponder(pool)
    cluster = SimulatedCluster.from_pool(pool, responder=responder)
    cluster.keep_results = False
    factory = MbppRequestFactory.for_split("train")
    loads = [ClosedLoopLoad(cluster, m, concurrency, factory).start() for m in cluster.models]
    # Warm the responder's caches so the figure is the steady state of a long run.
    cluster.run(until=5.0)
    steps0, done0, t0 = cluster.steps_executed, sum(len(l.completed) for l in loads), time.perf_counter()
    cluster.run(until=5.0 + virtual_s)
    wall = time.perf_counter() - t0
    steps = cluster.steps_executed - steps0
    done = sum(len(l.completed) for l in loads) - done0
    tokens = sum(r.output_tokens for l in loads for r in l.completed)
    print(f"pool {pool.name}: {len(cluster.replicas)} replicas, N={concurrency} clients per model")
    print(f"virtual {virtual_s:.0f} s in {wall:.2f} wall s; {steps} core steps ({steps / virtual_s:.0f} per virtual s)")
    print(f"{done} requests completed, {tokens} output tokens generated in total")
    print(f"simulated seconds per wall second: {virtual_s / wall:.0f}x (target >= 200x)")


if __name__ == "__main__":
    main()
