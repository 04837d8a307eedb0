"""Evaluation: task selection, the default budget, a tiny policy x load run, and the summary's arithmetic."""

from __future__ import annotations

import math
from functools import lru_cache

import pandas as pd
import pytest

from sysaware.engines.twin.responder.answers import load_recorded_answers
from sysaware.orchestration.budget import IdleBudget
from sysaware.orchestration.context import Plan, PolicyResources
from sysaware.orchestration.executors import make_executor
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.topology import reflection, star
from sysaware.orchestration.workflow import Workflow
from sysaware.pipelines.evaluate import EvalSettings, evaluate, evaluation_tasks, summarise
from sysaware.tasks.mbpp import Split, get_task, split_of
from twin_factories import default_pool as pool, default_backend as twin_backend, default_responder as twin_responder




@lru_cache(maxsize=1)
def resources() -> PolicyResources:
    return PolicyResources.build(pool(), twin_backend())


def test_evaluation_tasks_are_test_split_tasks_with_recorded_answers():
    recorded = set(load_recorded_answers().task_ids)
    every = evaluation_tasks(twin_backend(), None)
    assert all(split_of(t.task_id) is Split.TEST and t.task_id in recorded for t in every)
    assert len(every) == len({t for t in recorded if split_of(t) is Split.TEST})
    sample = evaluation_tasks(twin_backend(), 10, seed=1)
    assert [t.task_id for t in sample] == sorted(t.task_id for t in sample) == [t.task_id for t in evaluation_tasks(twin_backend(), 10, seed=1)]
    assert [t.task_id for t in sample] != [t.task_id for t in evaluation_tasks(twin_backend(), 10, seed=2)]


def test_the_default_budget_is_slack_times_the_plan_on_an_idle_cluster():
    budget = IdleBudget(pool(), twin_backend(), resources(), slack=2.0)
    task = get_task(17)
    idle = budget.idle_latency_s(task, reflection(), seed=4)
    # the same workflow with the reference executor (best model, Concise) on a fresh idle cluster takes exactly that
    driver = SimulatedDriver(pool(), twin_backend(), SimSettings(grade=False))
    driver.add(Workflow("w", task, reflection(), slo_s=math.inf, seed=4), make_executor("best_single", resources()), at_s=3.0)
    [trace] = driver.run()
    assert trace.e2e_latency_s == pytest.approx(idle)
    assert budget.slo_s(task, Plan(reflection()), seed=4) == pytest.approx(2.0 * idle)
    assert budget.slo_s(task, Plan(reflection(), slo_s=7.5), seed=4) == 7.5  # a request's own budget wins
    # more work, more budget: a star with three workers and an aggregator vs one reflection
    assert budget.idle_latency_s(task, star(["programmer"] * 3), seed=4) > 0
    with pytest.raises(ValueError, match="slack"):
        IdleBudget(pool(), twin_backend(), resources(), slack=0.0)


def test_a_tiny_evaluation_compares_policies_on_the_same_plans_and_budgets():
    settings = EvalSettings(policies=("fixed", "greedy", "oracle"), levels=(2,), num_tasks=3, warmup_s=2.0, arrival_interval_s=1.0)
    runs, steps, cost = evaluate(pool(), settings, backend=twin_backend())
    assert len(runs) == 9 and set(runs["policy"]) == {"fixed", "greedy", "oracle"} and set(runs["load"]) == {2}
    per_task = runs.groupby("task_id")
    assert (per_task["slo_s"].nunique() == 1).all() and (per_task["topology"].nunique() == 1).all()
    assert (per_task["steps"].nunique() == 1).all() and (per_task["start_s"].nunique() == 1).all()
    assert runs["passed"].notna().all() and runs["e2e_latency_s"].gt(0).all()
    assert len(steps) == runs["steps"].sum()
    assert cost.set_index("policy")["forks"].to_dict()["fixed"] == 0 and cost.set_index("policy")["forks"]["oracle"] > 0
    summary = summarise(runs)
    assert list(summary["policy"]) == ["fixed", "greedy", "oracle"]
    assert summary["pass_at_1"].between(0, 1).all() and summary["slo_attainment"].between(0, 1).all()
    assert (summary["e2e_p50_s"] <= summary["e2e_p95_s"]).all()


def test_summary_arithmetic():
    runs = pd.DataFrame(
        {
            "policy": ["a"] * 4 + ["b"] * 2,
            "load": [1] * 4 + [1] * 2,
            "passed": [True, False, True, True, False, False],
            "met_slo": [True, True, False, True, True, False],
            "e2e_latency_s": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0],
            "steps": [1, 3, 3, 5, 2, 2],
            "output_tokens": [10, 20, 30, 40, 50, 60],
            "slo_s": [5.0] * 6,
        }
    )
    s = summarise(runs).set_index("policy")
    assert s.loc["a", "pass_at_1"] == 0.75 and s.loc["a", "slo_attainment"] == 0.75
    assert s.loc["a", "e2e_p50_s"] == 2.5 and s.loc["a", "mean_steps"] == 3.0
    assert s.loc["b", "pass_at_1"] == 0.0 and s.loc["b", "e2e_p95_s"] == pytest.approx(19.5)  # 10 + 0.95 x 10
