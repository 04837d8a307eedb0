"""Contention scenarios and their evaluation: validation names the field; a tiny evaluation is deterministic for a
seed; an interrupted evaluation resumes to the same table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sysaware.orchestration.scenarios import DEFAULT_SCENARIOS, ScenarioError, load_scenarios, select
from sysaware.orchestration.topology import Topology, chain, debate, io, reflection, star
from sysaware.pipelines import scenario_eval
from sysaware.pipelines.eval_report import summarise
from sysaware.pipelines.scenario_eval import ScenarioEvalSettings, evaluate_scenarios, plan_stream, tables


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenarios.yaml"
    path.write_text(text)
    return path


def test_the_shipped_scenarios_load_and_name_their_pools():
    scenarios = load_scenarios()
    assert {"idle", "uniform-150", "skew-cheap-hot", "skew-strong-hot", "bursty", "mixed-slo", "lab-a100"} <= set(scenarios)
    assert scenarios["lab-a100"].pool_config.name == "lab-a100x4"
    hot = scenarios["skew-cheap-hot"].background
    assert hot.clients("mistral-7b-instruct") == 400 and hot.clients("codellama-34b-instruct") == 1
    assert [s.name for s in select(scenarios, "idle,bursty")] == ["idle", "bursty"]


@pytest.mark.parametrize(
    "body, field",
    [
        ("scenarios:\n  x:\n    background: {kind: closed, per_model: -1}\n", "scenarios.x.background.closed.per_model"),
        ("scenarios:\n  x:\n    background: {kind: closed, models: {no-such-model: 5}}\n", "scenarios.x.background.models.no-such-model"),
        ("scenarios:\n  x:\n    background: {kind: poisson, phases: []}\n", "scenarios.x.background.poisson.phases"),
        ("scenarios:\n  x:\n    background: {kind: magic}\n", "scenarios.x.background"),
        ("scenarios:\n  x:\n    requests: {rate_per_s: 0}\n", "scenarios.x.requests.rate_per_s"),
        ("scenarios:\n  x:\n    requests: {rate_per_s: 1, slo: [{slack: -2}]}\n", "scenarios.x.requests.slo.0.slack"),
        ("scenarios:\n  x:\n    requests: {rate_per_s: 1}\n    typo_field: 3\n", "scenarios.x.typo_field"),
        ("scenarios: [1, 2]\n", "expected a mapping"),
    ],
)
def test_a_bad_scenario_file_is_refused_with_the_field_named(tmp_path, body, field):
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        load_scenarios(write(tmp_path, body))


def test_an_unknown_scenario_name_is_refused():
    with pytest.raises(ScenarioError, match="unknown scenario"):
        select(load_scenarios(), "idle,nope")


def test_topologies_round_trip_through_json():
    for t in (io(), chain(), star(["programmer", "test_analyst"]), debate(["programmer"] * 2, rounds=2), reflection()):
        assert Topology.from_json(t.to_json()) == t


TINY = """
scenarios:
  calm:
    background: {kind: closed, per_model: 1}
    requests: {rate_per_s: 1.0, warmup_s: 2.0}
  bursts:
    background: {kind: poisson, phases: [{rate_per_s: 20, duration_s: 3}, {rate_per_s: 1, duration_s: 3}]}
    requests: {rate_per_s: 1.0, warmup_s: 2.0, slo: [{slack: 1.2}, {slack: 3.0}]}
    contended: true
"""


def settings(path: Path, **kw) -> ScenarioEvalSettings:
    base = dict(policies=("fixed", "least_queue"), scenario_file=str(path), num_tasks=3, seed=4)
    return ScenarioEvalSettings(**(base | kw))


def test_the_request_stream_is_the_same_for_every_policy_and_seeded(tmp_path):
    path = write(tmp_path, TINY)
    s = load_scenarios(path)["bursts"]
    first, again = plan_stream(s, settings(path)), plan_stream(s, settings(path))
    assert first == again and len(first) == 3
    assert sorted({r.slack for r in plan_stream(s, settings(path, num_tasks=12))}) == [1.2, 3.0]  # mixed SLOs
    assert all(b.arrival_s > a.arrival_s >= 2.0 for a, b in zip(first, first[1:]))
    assert plan_stream(s, settings(path, seed=5)) != first


def test_a_tiny_evaluation_is_deterministic_and_resumes_to_the_same_table(tmp_path, monkeypatch):
    path = write(tmp_path, TINY)
    first = tables(evaluate_scenarios(settings(path), tmp_path / "a", use_ray=False))[0]
    again = tables(evaluate_scenarios(settings(path), tmp_path / "b", use_ray=False))[0]
    columns = ["scenario", "policy", "request", "task_id", "e2e_latency_s", "passed", "met_slo", "models", "strategies"]
    pd.testing.assert_frame_equal(first[columns], again[columns])
    assert set(first.scenario) == {"calm", "bursts"} and set(first.policy) == {"fixed", "least_queue"}

    # Interrupt a run after its first cell, then rerun: the cached cell is read, the rest run, the table is equal.
    ran: list[tuple[str, str]] = []
    real = scenario_eval.run_cell

    def once_then_crash(scenario, policy, requests, s):
        if ran:
            raise KeyboardInterrupt
        ran.append((scenario.name, policy))
        return real(scenario, policy, requests, s)

    monkeypatch.setattr(scenario_eval, "run_cell", once_then_crash)
    with pytest.raises(KeyboardInterrupt):
        evaluate_scenarios(settings(path), tmp_path / "c", use_ray=False)
    monkeypatch.setattr(scenario_eval, "run_cell", real)
    seen = []
    resumed = tables(evaluate_scenarios(settings(path), tmp_path / "c", use_ray=False, on_cell=lambda c, cached: seen.append(cached)))[0]
    assert seen.count(True) == 1 and seen.count(False) == 3
    pd.testing.assert_frame_equal(first[columns], resumed[columns])
    summary = summarise(first, resamples=200)
    assert set(summary.vs_baseline.dropna()) == {"fixed"}  # the only load-blind policy here
    fixed = summary[summary.policy == "fixed"]
    assert (fixed.goodput_diff == 0).all()


def test_the_default_scenario_file_is_the_one_in_configs():
    assert DEFAULT_SCENARIOS.name == "scenarios.yaml" and DEFAULT_SCENARIOS.exists()
