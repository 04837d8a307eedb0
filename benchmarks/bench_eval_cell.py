"""What one evaluation cell costs: the wall and CPU time of simulating one scenario's request stream under each
policy, and the oracle's cost against greedy's (the oracle forks the probed model's replicas at every decision; see
sim/forecast.py). The issue's target: an oracle cell <= 5x a greedy cell. Prints the ratio last.

The responder is built before any cell is timed (the first cell would otherwise pay its seconds of loading). With
``--repeats k`` each policy's cell runs k times and the fastest run counts (the machine is shared: the minimum is
the least disturbed). CPU time (this process's; the sandbox's grading subprocesses are not in it) is printed next to
wall time because it moves less with other load on the machine.

    python benchmarks/bench_eval_cell.py [--scenario uniform-150] [--tasks 20] [--policies greedy,oracle,...]
                                         [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from sysaware.engines.twin.factory import shared_responder
from sysaware.orchestration.scenarios import load_scenarios
from sysaware.pipelines.scenario_eval import ScenarioEvalSettings, plan_stream, run_cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="uniform-150")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--policies", default="best_single,least_queue,greedy@queueing,greedy,oracle")
    parser.add_argument("--repeats", type=int, default=1, help="runs per policy; the fastest counts")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    scenario = load_scenarios()[args.scenario]
    policies = tuple(p.strip() for p in args.policies.split(","))
    settings = ScenarioEvalSettings(policies=policies, scenarios=(args.scenario,), num_tasks=args.tasks)
    requests = plan_stream(scenario, settings)
    shared_responder(scenario.pool_config)  # loaded once per process: not any cell's cost
    walls: dict[str, float] = {}
    cpus: dict[str, float] = {}
    for policy in policies:
        runs = []
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            cell = run_cell(scenario, policy, requests, settings)
            runs.append((time.perf_counter() - w0, time.process_time() - c0))
        walls[policy] = min(w for w, _ in runs)
        cpus[policy] = min(c for _, c in runs)
        every = ", ".join(f"{w:.2f}" for w, _ in runs)
        print(f"{policy:>16}: {walls[policy]:7.2f} s wall, {cpus[policy]:7.2f} s CPU (fastest of {args.repeats}: "
              f"{every} s wall) for {len(requests)} requests ({cell.cost['decisions']} decisions, "
              f"{cell.cost['forks']} forks, {cell.cost['fork_wall_s']:.2f} s forking, "
              f"{cell.cost['virtual_s']:.0f} virtual s)", flush=True)
    for base in ("greedy@queueing", "greedy"):
        if "oracle" in walls and base in walls:
            print(f"oracle / {base} CPU time: {cpus['oracle'] / cpus[base]:.2f}x")
            print(f"oracle / {base} wall time: {walls['oracle'] / walls[base]:.2f}x")


if __name__ == "__main__":
    main()
