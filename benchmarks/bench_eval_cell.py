"""What one evaluation cell costs: the wall time of simulating one scenario's request stream under each policy, and
the oracle's cost against greedy's (the oracle forks the probed model's replicas at every decision; see
sim/forecast.py). Prints the ratio last.

    python benchmarks/bench_eval_cell.py [--scenario uniform-150] [--tasks 20] [--policies greedy,oracle,...]
"""

from __future__ import annotations

import argparse
import time

from sysaware.orchestration.scenarios import load_scenarios
from sysaware.pipelines.scenario_eval import ScenarioEvalSettings, plan_stream, run_cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="uniform-150")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--policies", default="best_single,least_queue,greedy@queueing,greedy,oracle")
    args = parser.parse_args()
    scenario = load_scenarios()[args.scenario]
    policies = tuple(p.strip() for p in args.policies.split(","))
    settings = ScenarioEvalSettings(policies=policies, scenarios=(args.scenario,), num_tasks=args.tasks)
    requests = plan_stream(scenario, settings)
    walls = {}
    for policy in policies:
        started = time.perf_counter()
        cell = run_cell(scenario, policy, requests, settings)
        walls[policy] = time.perf_counter() - started
        print(f"{policy:>16}: {walls[policy]:7.2f} s wall for {len(requests)} requests "
              f"({cell.cost['decisions']} decisions, {cell.cost['forks']} forks, {cell.cost['virtual_s']:.0f} virtual s)")
    if "oracle" in walls and "greedy" in walls:
        print(f"oracle / greedy wall time: {walls['oracle'] / walls['greedy']:.2f}x")
    if "oracle" in walls and "greedy@queueing" in walls:
        print(f"oracle / greedy@queueing wall time: {walls['oracle'] / walls['greedy@queueing']:.2f}x")


if __name__ == "__main__":
    main()
