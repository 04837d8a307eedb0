"""Where a simulated second goes: cProfile over one phase of ``bench_sim_speed``'s load (default pool, N closed-loop
clients per model, results drained every 0.25 virtual s), the top functions by own time and the Python calls per
request.

Under cProfile every call costs several times its real price, so read the shares, not the seconds (``py-spy record
-f raw`` over ``bench_sim_speed.py`` gives the same ranking without the distortion). DESIGN.md ("The twin's speed")
keeps the summary this printed.

    python benchmarks/profile_sim.py                      # steady: 240 virtual s after a 600 s warm-up, N=50
    python benchmarks/profile_sim.py --phase cold --concurrency 150
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.twin.responder.twin_responder import TwinResponder
from sysaware.sim.cluster import SimulatedCluster
from sysaware.sim.load import ClosedLoopLoad
from sysaware.sim.workload import MbppRequestFactory

sys.path.insert(0, str(Path(__file__).parent))
from bench_sim_speed import FinishedCounter  # noqa: E402

PHASES = {"cold": (0.0, 120.0), "steady": (600.0, 840.0)}  # (profiled from, to), virtual s


def main(concurrency: int, phase: str, top: int) -> None:
    pool = load_pool(DEFAULT_POOL)
    responder = TwinResponder(pool)
    cluster = SimulatedCluster.from_pool(pool, responder=responder)
    cluster.keep_results = False
    factory = MbppRequestFactory.for_split("train")
    loads = [ClosedLoopLoad(cluster, m, concurrency, factory).start() for m in cluster.models]
    finished = FinishedCounter(cluster, loads, drain=True)
    start, stop = PHASES[phase]
    cluster.run(until=start)
    done0, steps0 = finished.total, cluster.steps_executed
    profile = cProfile.Profile()
    profile.enable()
    cluster.run(until=stop)
    profile.disable()
    requests, steps = finished.total - done0, cluster.steps_executed - steps0
    stats = pstats.Stats(profile)
    calls = sum(entry[1] for entry in stats.stats.values())  # primitive + recursive calls, builtins included
    stats.sort_stats("tottime").print_stats(top)
    print(
        f"N={concurrency}, {phase} ({start:.0f}-{stop:.0f} virtual s): {requests} requests, {steps} core steps "
        f"({steps / max(requests, 1):.2f} per request), {calls / max(requests, 1):.0f} Python calls per request"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--phase", choices=sorted(PHASES), default="steady")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    main(args.concurrency, args.phase, args.top)
