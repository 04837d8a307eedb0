"""Benchmarks of the RL policy layer (prints a small table):

1. environment decisions per wall second per env runner: SysawareEnv stepped with uniformly random masked actions
   (no policy cost) on one scenario, planner and executor decisions both counted;
2. the trained executor's decision cost (observation encoding with the latency estimators + the numpy scorer head,
   no Algorithm) on the step contexts of a contended run: p50 / p99 ms.

    python benchmarks/bench_policy.py [--scenario uniform-150] [--episodes 3] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def env_rate(scenario: str, episodes: int, embed: str) -> tuple[float, int, float]:
    from sysaware.policy.env import SysawareEnv

    env = SysawareEnv({"scenarios": [scenario], "requests_per_episode": 12, "rate_scale": 2.0, "embed": embed})
    rng = np.random.default_rng(0)
    decisions, wall = 0, 0.0
    for ep in range(episodes):
        started = time.perf_counter()
        obs, _ = env.reset(seed=ep)
        while True:
            acts = {a: int(rng.choice(np.flatnonzero(o["action_mask"]))) for a, o in obs.items()}
            obs, _, term, _, _ = env.step(acts)
            decisions += 1
            if term["__all__"]:
                break
        wall += time.perf_counter() - started
    return decisions / wall, decisions, wall


def decision_cost(scenario: str, checkpoint: str | None, embed: str) -> tuple[float, float, int]:
    import sysaware.policy  # noqa: F401
    from sysaware.orchestration.executors import make_executor
    from sysaware.orchestration.planners import make_planner
    from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
    from sysaware.orchestration.workflow import Workflow
    from sysaware.policy.world import Budgets, backend_for, load_world_scenarios, resources_for, task_pool
    from sysaware.tasks.mbpp import Split

    sc = load_world_scenarios([scenario])[0]
    pool = sc.pool
    resources = resources_for(pool)
    executor = make_executor("rl", resources, checkpoint=checkpoint, embed=embed)
    planner = make_planner("random", seed=0)
    driver = SimulatedDriver(pool, backend_for(pool), SimSettings(background=sc.background))
    budgets = Budgets(resources)
    for i, task in enumerate(task_pool(backend_for(pool), Split.TEST)[:12]):
        topo = planner.plan(task, None, None).topology
        driver.add(Workflow(f"b{i}", task, topo, budgets.slo_s(task, topo, 1.5), seed=i), executor, at_s=10.0 + i)
    driver.run()
    contexts = [c for s in driver.sessions for c in s.contexts]
    for c in contexts:  # warm the task-embedding cache: a task is embedded once per process
        executor.choose(c)
    times = []
    for _ in range(20):
        for c in contexts:
            t0 = time.perf_counter()
            executor.choose(c)
            times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3), len(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", default="uniform-150")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--checkpoint", default=None, help="policy dir (default: the one shipped for the pool)")
    p.add_argument("--embed", default="minilm")
    args = p.parse_args()
    rate, n, wall = env_rate(args.scenario, args.episodes, args.embed)
    print(f"env {args.scenario}: {n} decisions in {wall:.1f} s = {rate:.1f} decisions/s per env runner (target >= 200)")
    p50, p99, k = decision_cost(args.scenario, args.checkpoint, args.embed)
    print(f"rl executor decision cost (encoding + estimators + numpy scorer head): p50 {p50:.3f} ms, p99 {p99:.3f} ms over {k} decisions (target p99 <= 2 ms)")


if __name__ == "__main__":
    main()
