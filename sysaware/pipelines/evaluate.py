"""Evaluate (first version, simulation): every executor baseline x background load N on MBPP test tasks that have
recorded answers; pass@1, SLO attainment, end-to-end latency p50/p95 and mean steps per policy and load.

For a comparison on common ground, everything but the executor is fixed per task: the plan (the planner is seeded
per task), the budget (slack x the plan's idle latency predicted from the pool's profile, budget.py), the arrival
time, the call seeds and the background's seed. Policies see the pool's measured profile (``PoolProfile``; the
shipped one by default), never the simulator's parameters. For each load level N and each policy a fresh simulated
cluster gets N closed-loop background clients per model, a warm-up, then the workflows arriving every
``arrival_interval_s``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sysaware.config import PoolConfig
from sysaware.data.profile import PoolProfile
from sysaware.orchestration.budget import DEFAULT_SLACK, ProfileBudget, plan_slo_s
from sysaware.orchestration.context import Plan, PolicyResources
from sysaware.orchestration.executors import make_executor
import sysaware.policy  # noqa: F401  (registers the trained policy as executor/planner "rl")
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.planners import make_planner
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.workflow import Workflow, call_seed
from sysaware.sim.backend import SimBackend
from sysaware.tasks.mbpp import MbppTask, Split, get_task, split_of

DEFAULT_POLICIES = ("random", "fixed", "best_single", "static_qmp", "least_queue", "greedy", "oracle")
DEFAULT_LEVELS = (1, 10, 50)


@dataclass(frozen=True)
class EvalSettings:
    policies: tuple[str, ...] = DEFAULT_POLICIES  # executor names (executors.EXECUTORS)
    levels: tuple[int, ...] = DEFAULT_LEVELS  # background closed-loop clients per model
    num_tasks: int | None = 40  # a seeded sample of the test tasks with recorded answers (None: all)
    planner: str = "random"  # planners.PLANNERS; seeded per task, so every policy gets the same plan
    slack: float = DEFAULT_SLACK  # budget = slack x the plan's idle latency (from the profile)
    warmup_s: float = 10.0  # virtual seconds of background load before the first workflow
    arrival_interval_s: float = 2.0  # virtual seconds between workflow arrivals
    seed: int = 0


@dataclass(frozen=True)
class PlannedRequest:
    task: MbppTask
    plan: Plan
    slo_s: float
    arrival_s: float
    seed: int


def evaluation_tasks(backend: SimBackend, num_tasks: int | None = None, seed: int = 0) -> list[MbppTask]:
    """MBPP test-split tasks (ids 11-510) the backend can answer: a seeded sample, in task order."""
    ids = [t for t in backend.answerable_task_ids if split_of(t) is Split.TEST]
    if num_tasks is not None and num_tasks < len(ids):
        ids = sorted(random.Random(f"eval-tasks/{seed}").sample(ids, num_tasks))
    return [get_task(t) for t in ids]


def plan_requests(
    tasks: Sequence[MbppTask], settings: EvalSettings, budget: ProfileBudget
) -> list[PlannedRequest]:
    planner = make_planner(settings.planner, seed=settings.seed)
    out = []
    for i, task in enumerate(tasks):
        plan = planner.plan(task, None, None)
        seed = call_seed(settings.seed, f"task-{task.task_id}")
        out.append(
            PlannedRequest(task, plan, plan_slo_s(task, plan, budget), settings.warmup_s + i * settings.arrival_interval_s, seed)
        )
    return out


def run_policy(
    pool: PoolConfig,
    backend: SimBackend,
    resources: PolicyResources,
    requests: Sequence[PlannedRequest],
    policy: str,
    level: int,
    settings: EvalSettings,
    sandbox: CachedSandbox,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """One (policy, load) cell: per-run rows, per-step rows, and what the simulation cost."""
    driver = SimulatedDriver(
        pool, backend, SimSettings(background_per_model=level, seed=settings.seed), sandbox=sandbox
    )
    executor = make_executor(policy, resources, seed=settings.seed)
    for r in requests:
        workflow = Workflow(f"{policy}-N{level}-t{r.task.task_id}", r.task, r.plan.topology, r.slo_s, seed=r.seed)
        driver.add(workflow, executor, at_s=r.arrival_s, planner_name=settings.planner)
    started = time.perf_counter()
    traces = driver.run()
    wall_s = time.perf_counter() - started
    runs = pd.DataFrame([t.summary() for t in traces]).assign(policy=policy, load=level)
    steps = pd.DataFrame([row for t in traces for row in t.step_rows()]).assign(policy=policy, load=level)
    cost = {
        "policy": policy,
        "load": level,
        "wall_s": wall_s,
        "virtual_s": driver.now,
        "forks": driver.forecaster.forks,
        "fork_wall_s": driver.forecaster.fork_wall_s,
    }
    return runs, steps, cost


def evaluate(
    pool: PoolConfig,
    settings: EvalSettings = EvalSettings(),
    backend: SimBackend | None = None,
    on_cell: Callable[[dict], None] | None = None,
    profile: PoolProfile | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every (load, policy) cell; returns (runs, steps, cost) tables. ``profile``: what the policies see (default:
    the one shipped for ``pool``)."""
    backend = backend or SimBackend(pool)
    resources = PolicyResources.from_profile(pool, profile or PoolProfile.default_for(pool))
    sandbox = CachedSandbox()
    budget = ProfileBudget(resources, slack=settings.slack)
    requests = plan_requests(evaluation_tasks(backend, settings.num_tasks, settings.seed), settings, budget)
    runs, steps, costs = [], [], []
    for level in settings.levels:
        for policy in settings.policies:
            r, s, c = run_policy(pool, backend, resources, requests, policy, level, settings, sandbox)
            runs.append(r)
            steps.append(s)
            costs.append(c)
            if on_cell is not None:
                on_cell(c)
    return pd.concat(runs, ignore_index=True), pd.concat(steps, ignore_index=True), pd.DataFrame(costs)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy, load): pass@1, SLO attainment, e2e latency p50/p95, mean steps and output tokens."""
    rows = []
    for (policy, level), g in runs.groupby(["policy", "load"], sort=False):
        latency = g["e2e_latency_s"].to_numpy(dtype=float)
        rows.append(
            {
                "policy": policy,
                "load": int(level),
                "runs": len(g),
                "pass_at_1": float(g["passed"].astype(float).mean()),
                "slo_attainment": float(g["met_slo"].astype(float).mean()),
                "e2e_p50_s": float(np.percentile(latency, 50)),
                "e2e_p95_s": float(np.percentile(latency, 95)),
                "mean_steps": float(g["steps"].mean()),
                "mean_output_tokens": float(g["output_tokens"].mean()),
                "mean_slo_s": float(g["slo_s"].mean()),
            }
        )
    return pd.DataFrame(rows)
