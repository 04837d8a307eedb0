"""Evaluate every policy on every contention scenario, as Ray tasks, with a cache that makes a rerun resume.

One **cell** is (scenario, policy): a fresh simulated cluster of the scenario's pool under its background load, and
every request of the scenario's stream. Everything but the executor is fixed per scenario, so policies are compared
on common ground and pairwise, request by request: the tasks (every MBPP test-split task the pool answers, or a
seeded sample), each task's plan (the planner seeded per task), SLO (slack x the plan's idle latency from the pool
profile; a mixed-SLO scenario draws each request's slack), arrival time (Poisson), call seeds and the background's
seed.

Cells run as Ray tasks (``ray.remote``): on a laptop they share its cores, on a cluster they fan out over its
workers, unchanged. Each finished cell is written to ``<run_dir>/cells/<scenario>__<policy>__<key>.parquet``, where
the key hashes everything the cell's result depends on (scenario, policy, seeds, tasks, plans, SLOs, arrivals, the
package version); a rerun reads the cells it has and runs only the missing ones, so an interrupted evaluation
resumes and gives the same table.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from sysaware.orchestration.scenarios import DEFAULT_SCENARIOS, Scenario, load_scenarios, select
from sysaware.orchestration.workflow import call_seed

CELL_SCHEMA_VERSION = 1  # bump when a cell's columns or meaning change: old cached cells are then recomputed
LOAD_BLIND = ("random", "fixed", "best_single", "static_qmp")
DEFAULT_POLICIES = ("random", "fixed", "best_single", "static_qmp", "least_queue", "greedy", "oracle")


@dataclass(frozen=True)
class ScenarioEvalSettings:
    policies: tuple[str, ...] = DEFAULT_POLICIES  # executor names (``greedy@queueing``: an estimator variant)
    scenarios: tuple[str, ...] | None = None  # names in the scenario file (None: every one)
    scenario_file: str = str(DEFAULT_SCENARIOS)
    num_tasks: int | None = None  # None: every test-split task the pool answers
    planner: str = "random"
    seed: int = 0
    profile: str | None = None  # a pool profile file (default: the one shipped for the scenario's pool)


@dataclass(frozen=True)
class Request:
    """One workflow request of a scenario's stream, the same for every policy."""

    index: int
    task_id: int
    topology: dict  # the plan's topology (Topology.to_json)
    slo_s: float
    slack: float
    arrival_s: float
    seed: int


@dataclass
class CellResult:
    scenario: str
    policy: str
    runs: pd.DataFrame
    steps: pd.DataFrame
    cost: dict = field(default_factory=dict)


def load_resources(pool, profile_path: str | None):
    """What policies may know of ``pool``: its measured profile (a file, or the one shipped for the pool)."""
    from sysaware.data.profile import PoolProfile
    from sysaware.orchestration.context import PolicyResources

    profile = PoolProfile.load(profile_path, pool) if profile_path else PoolProfile.default_for(pool)
    return PolicyResources.from_profile(pool, profile)


def plan_stream(scenario: Scenario, settings: ScenarioEvalSettings) -> list[Request]:
    """The scenario's requests: tasks, plans, SLOs, arrivals and seeds (policy-independent)."""
    from sysaware.orchestration.budget import ProfileBudget
    from sysaware.orchestration.planners import make_planner
    from sysaware.pipelines.evaluate import evaluation_tasks
    from sysaware.sim.backend import SimBackend

    pool = scenario.pool_config
    tasks = evaluation_tasks(SimBackend(pool), settings.num_tasks, settings.seed)
    resources = load_resources(pool, settings.profile)
    planner = make_planner(settings.planner, seed=settings.seed)
    stream = scenario.requests
    slacks = stream.slacks(len(tasks), settings.seed)
    arrivals = stream.arrivals(len(tasks), settings.seed)
    budgets = {s: ProfileBudget(resources, slack=s) for s in set(slacks)}
    out = []
    for i, task in enumerate(tasks):
        plan = planner.plan(task, None, None)
        seed = call_seed(settings.seed, f"task-{task.task_id}")
        slo = budgets[slacks[i]].slo_s(task, plan, seed)
        out.append(Request(i, task.task_id, plan.topology.to_json(), slo, slacks[i], arrivals[i], seed))
    return out


def _policy_artifact(scenario: Scenario, policy: str) -> str | None:
    """The trained policy's fingerprint (a new checkpoint must not reuse the cells of the old one): the shipped
    policy's for ``rl``, the named directory's for ``rl@<policy dir>``."""
    name, _, path = policy.partition("@")
    if name != "rl":
        return None
    from sysaware.policy.serve import policy_fingerprint, shipped_policy_dir

    return policy_fingerprint(path or shipped_policy_dir(scenario.pool_config.name))


def cell_key(scenario: Scenario, policy: str, requests: Sequence[Request], settings: ScenarioEvalSettings) -> str:
    from sysaware import __version__

    blob = json.dumps(
        {
            "v": CELL_SCHEMA_VERSION,
            "package": __version__,
            "scenario": scenario.model_dump(mode="json"),
            "policy": policy,
            "seed": settings.seed,
            "profile": settings.profile,
            "requests": [asdict(r) for r in requests],
            **({"artifact": a} if (a := _policy_artifact(scenario, policy)) else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_cell(scenario: Scenario, policy: str, requests: Sequence[Request], settings: ScenarioEvalSettings) -> CellResult:
    """Simulate one (scenario, policy) cell: every request of the stream under the scenario's background."""
    import sysaware.policy  # noqa: F401  (registers the trained policy "rl" in this worker)
    from sysaware.orchestration.executors import make_executor
    from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
    from sysaware.orchestration.topology import Topology
    from sysaware.orchestration.workflow import Workflow
    from sysaware.sim.backend import SimBackend
    from sysaware.tasks.mbpp import get_task

    pool = scenario.pool_config
    resources = load_resources(pool, settings.profile)
    driver = SimulatedDriver(pool, SimBackend(pool), SimSettings(background=scenario.background, seed=settings.seed))
    executor = make_executor(policy, resources, seed=settings.seed)
    for r in requests:
        workflow = Workflow(
            f"{scenario.name}/{policy}/r{r.index}-t{r.task_id}", get_task(r.task_id), Topology.from_json(r.topology),
            r.slo_s, seed=r.seed,
        )
        driver.add(workflow, executor, at_s=r.arrival_s, planner_name=settings.planner)
    started = time.perf_counter()
    traces = driver.run()
    wall_s = time.perf_counter() - started
    runs = pd.DataFrame([t.summary() for t in traces])
    runs.insert(0, "request", [r.index for r in requests])
    runs = runs.assign(scenario=scenario.name, policy=policy, executor=executor.describe(),
                       slack=[r.slack for r in requests])
    steps = pd.DataFrame([row for t in traces for row in t.step_rows()]).assign(scenario=scenario.name, policy=policy)
    cost = {"scenario": scenario.name, "policy": policy, "wall_s": wall_s, "virtual_s": driver.now,
            "decisions": sum(len(t.steps) for t in traces), "forks": driver.forecaster.forks,
            "fork_wall_s": driver.forecaster.fork_wall_s}
    return CellResult(scenario.name, policy, runs, steps, cost)


def _cell_paths(cells_dir: Path, scenario: str, policy: str, key: str) -> tuple[Path, Path, Path]:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", policy.replace("@", "-at-"))  # rl@runs/x/policy: no slashes in names
    stem = cells_dir / f"{scenario}__{safe}__{key}"
    return stem.with_suffix(".runs.parquet"), stem.with_suffix(".steps.parquet"), stem.with_suffix(".cost.json")


def save_cell(result: CellResult, cells_dir: Path, key: str) -> None:
    """Write a finished cell; the cost file goes last and marks it complete (a crash mid-write leaves no marker)."""
    runs_path, steps_path, cost_path = _cell_paths(cells_dir, result.scenario, result.policy, key)
    cells_dir.mkdir(parents=True, exist_ok=True)
    result.runs.to_parquet(runs_path, index=False)
    result.steps.to_parquet(steps_path, index=False)
    tmp = cost_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.cost))
    tmp.replace(cost_path)


def load_cell(cells_dir: Path, scenario: str, policy: str, key: str) -> CellResult | None:
    runs_path, steps_path, cost_path = _cell_paths(cells_dir, scenario, policy, key)
    if not cost_path.exists():
        return None
    return CellResult(scenario, policy, pd.read_parquet(runs_path), pd.read_parquet(steps_path),
                      json.loads(cost_path.read_text()))


def _remote_cell(scenario_json: str, policy: str, requests: list[Request], settings: ScenarioEvalSettings,
                 cells_dir: str, key: str) -> dict:
    """What a Ray task runs: the cell, saved where the driver will read it (the return value is only its cost)."""
    scenario = Scenario.model_validate_json(scenario_json)
    result = run_cell(scenario, policy, requests, settings)
    save_cell(result, Path(cells_dir), key)
    return result.cost


def evaluate_scenarios(
    settings: ScenarioEvalSettings,
    run_dir: Path,
    on_cell: Callable[[dict, bool], None] | None = None,
    use_ray: bool = True,
) -> list[CellResult]:
    """Every (scenario, policy) cell, cached under ``run_dir/cells``; ``on_cell(cost, cached)`` after each."""
    scenarios = select(load_scenarios(settings.scenario_file), list(settings.scenarios) if settings.scenarios else None)
    cells_dir = run_dir / "cells"
    streams = {s.name: plan_stream(s, settings) for s in scenarios}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "requests.json").write_text(json.dumps({k: [asdict(r) for r in v] for k, v in streams.items()}))
    todo, keys = [], {}
    for s in scenarios:
        for policy in settings.policies:
            key = keys[(s.name, policy)] = cell_key(s, policy, streams[s.name], settings)
            cached = load_cell(cells_dir, s.name, policy, key)
            if cached is not None:
                if on_cell:
                    on_cell(cached.cost, True)
            else:
                todo.append((s, policy, key))
    if todo:
        if use_ray:
            _run_on_ray(todo, streams, settings, cells_dir, on_cell)
        else:
            for s, policy, key in todo:
                result = run_cell(s, policy, streams[s.name], settings)
                save_cell(result, cells_dir, key)
                if on_cell:
                    on_cell(result.cost, False)
    out = []
    for s in scenarios:
        for policy in settings.policies:
            cell = load_cell(cells_dir, s.name, policy, keys[(s.name, policy)])
            assert cell is not None, f"cell {s.name}/{policy} did not finish"
            out.append(cell)
    return out


def _run_on_ray(todo, streams, settings, cells_dir: Path, on_cell) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(logging_level="warning", include_dashboard=False)
    remote = ray.remote(num_cpus=1, max_retries=1)(_remote_cell)
    pending = {
        remote.remote(s.model_dump_json(), policy, streams[s.name], settings, str(cells_dir), key): (s.name, policy)
        for s, policy, key in todo
    }
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            pending.pop(ref)
            cost = ray.get(ref)  # raises the cell's error, naming it
            if on_cell:
                on_cell(cost, False)


def tables(cells: Sequence[CellResult]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, steps, cost) over every cell."""
    runs = pd.concat([c.runs for c in cells], ignore_index=True)
    steps = pd.concat([c.steps for c in cells], ignore_index=True)
    cost = pd.DataFrame([c.cost for c in cells])
    return runs, steps, cost
