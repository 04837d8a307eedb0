"""Evaluation: task selection, the default budgets it plans with, a tiny policy x load run, and the summary's
arithmetic."""

from __future__ import annotations

import pandas as pd
import pytest

from sysaware.engines.twin.responder.answers import load_recorded_answers
from sysaware.orchestration.budget import ProfileBudget
from sysaware.orchestration.context import PolicyResources
from sysaware.pipelines.evaluate import EvalSettings, evaluate, evaluation_tasks, plan_requests, summarise
from sysaware.tasks.mbpp import Split, get_task, split_of
from profile_factories import hand_made_profile
from twin_factories import default_pool as pool, default_backend as twin_backend


def test_evaluation_tasks_are_test_split_tasks_with_recorded_answers():
    recorded = set(load_recorded_answers().task_ids)
    every = evaluation_tasks(twin_backend(), None)
    assert all(split_of(t.task_id) is Split.TEST and t.task_id in recorded for t in every)
    assert len(every) == len({t for t in recorded if split_of(t) is Split.TEST})
    sample = evaluation_tasks(twin_backend(), 10, seed=1)
    assert [t.task_id for t in sample] == sorted(t.task_id for t in sample) == [t.task_id for t in evaluation_tasks(twin_backend(), 10, seed=1)]
    assert [t.task_id for t in sample] != [t.task_id for t in evaluation_tasks(twin_backend(), 10, seed=2)]


def test_planned_requests_get_the_profile_budget_of_their_plan():
    budget = ProfileBudget(PolicyResources.from_profile(pool(), hand_made_profile(pool())), slack=2.0)
    tasks = [get_task(t) for t in (11, 12, 13, 14)]
    requests = plan_requests(tasks, EvalSettings(planner="random", warmup_s=3.0, arrival_interval_s=2.0), budget)
    for i, r in enumerate(requests):
        assert r.slo_s == pytest.approx(budget.default_slo_s(r.task, r.plan.topology)) and r.slo_s > 0
        assert r.arrival_s == 3.0 + 2.0 * i


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
