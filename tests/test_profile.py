"""The pool profile: every policy built from a profile alone, the artifact's round trip and its errors, and
profile-pool measuring one on the simulated twin pool."""

from __future__ import annotations

import json

import pytest

from sysaware.data.profile import PROFILE_VERSION, PoolProfile, ProfileError, pool_fingerprint, wilson_ci95
from sysaware.orchestration.context import PolicyResources, all_actions
from sysaware.orchestration.executors import EXECUTORS, make_executor
from sysaware.orchestration.planners import PLANNERS, make_planner
from sysaware.pipelines.profile_pool import PROBES, ProfileSettings, SimProfileDriver, profile_pool, select_tasks
from sysaware.tasks.mbpp import Split, get_task, split_of
from sysaware.tasks.prompts import ROLES, Strategy
from profile_factories import hand_made_profile
from test_policies import context
from twin_factories import default_pool as pool


class InstantForecaster:
    """Every candidate takes one second (the oracle needs some forecaster to decide)."""

    def forecast(self, requests, horizon_s=None):
        return [1.0 for _ in requests]


@pytest.fixture
def no_responder(monkeypatch):
    """Fail any attempt to build the twin's responder or read its parameter file while policies are built and act."""
    import sysaware.engines.twin.factory as factory
    import sysaware.engines.twin.responder.params as params
    import sysaware.engines.twin.responder.twin_responder as responder

    def refuse(*_args, **_kwargs):
        raise AssertionError("a policy built or read the twin's responder")

    monkeypatch.setattr(responder.TwinResponder, "__init__", refuse)
    monkeypatch.setattr(params, "load_responder_params", refuse)
    monkeypatch.setattr(responder, "load_responder_params", refuse)
    monkeypatch.setattr(factory, "shared_responder", refuse)


def test_every_executor_and_planner_is_built_from_a_profile_alone(tmp_path, no_responder):
    path = hand_made_profile(pool()).save(tmp_path / "profile.json")
    resources = PolicyResources.from_profile(pool(), PoolProfile.load(path, pool()))
    for name in EXECUTORS:
        executor = make_executor(name, resources)
        for role in ROLES:
            ctx = context(role, budget_s=10.0, forecaster=InstantForecaster())
            assert executor.act(ctx) in all_actions(resources.models)
        assert executor.decisions == len(ROLES)
    for name in PLANNERS:
        if name == "rl":  # registered once sysaware.policy is imported (test_policy.py, same worker); needs a checkpoint
            continue
        plan = make_planner(name).plan(get_task(11), None, None)
        assert plan.topology.slots and plan.slo_s is None


def test_the_policy_modules_import_no_simulator_or_twin():
    """Stricter than test_layers for the policies and their resources: not even the simulated cluster."""
    import ast
    import importlib

    for module in ("executors", "planners", "context", "tables", "latency", "budget"):
        source = importlib.import_module(f"sysaware.orchestration.{module}").__file__
        tree = ast.parse(open(source).read())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith(("sysaware.engines.twin", "sysaware.sim"))], module


# --- the artifact --------------------------------------------------------------------------------------------


def test_a_profile_round_trips_through_json(tmp_path):
    profile = hand_made_profile(pool())
    path = profile.save(tmp_path / "p.json")
    loaded = PoolProfile.load(path, pool())
    assert loaded == profile
    assert loaded.pool.fingerprint == pool_fingerprint(pool()) and loaded.version == PROFILE_VERSION
    assert loaded.quality("codellama-34b-instruct", "concise", "programmer") == pytest.approx(0.57)
    assert loaded.cell("codellama-34b-instruct", Strategy.CONCISE, "programmer").quality_n == 100


def write(tmp_path, raw) -> str:
    path = tmp_path / "bad.json"
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return str(path)


def test_bad_profiles_fail_with_the_field_named(tmp_path):
    good = json.loads(hand_made_profile(pool()).model_dump_json())
    with pytest.raises(ProfileError, match="not found"):
        PoolProfile.load(tmp_path / "missing.json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        PoolProfile.load(write(tmp_path, "{"))
    with pytest.raises(ProfileError, match="version 99"):
        PoolProfile.load(write(tmp_path, {**good, "version": 99}))
    with pytest.raises(ProfileError, match="format"):
        PoolProfile.load(write(tmp_path, {**good, "format": "something-else"}))
    bad = json.loads(json.dumps(good))
    bad["models"]["wizardlm-13b"]["roles"]["reviewer"]["flash"]["quality"] = 1.5
    with pytest.raises(ProfileError, match=r"models\.wizardlm-13b\.roles\.reviewer\.flash\.quality"):
        PoolProfile.load(write(tmp_path, bad))
    bad = json.loads(json.dumps(good))
    del bad["models"]["wizardlm-13b"]["idle"]["tpot_s"]
    with pytest.raises(ProfileError, match=r"models\.wizardlm-13b\.idle\.tpot_s"):
        PoolProfile.load(write(tmp_path, bad))
    bad = json.loads(json.dumps(good))
    del bad["models"]["yi-34b-chat"]["roles"]["bug_fixer"]
    with pytest.raises(ProfileError, match="missing.*bug_fixer"):
        PoolProfile.load(write(tmp_path, bad))
    # measured on another pool, or on this pool before its configuration changed
    other = pool().model_copy(update={"name": "another-pool"})
    with pytest.raises(ProfileError, match="pool.name"):
        PoolProfile.load(write(tmp_path, good), other)
    changed = pool().model_copy(update={"gpus_per_node": 16})
    with pytest.raises(ProfileError, match="pool.fingerprint"):
        PoolProfile.load(write(tmp_path, good), changed)
    with pytest.raises(ProfileError, match="pool.fingerprint"):
        PolicyResources.from_profile(changed, hand_made_profile(pool()))
    with pytest.raises(ProfileError, match="no profile"):
        PoolProfile.default_for(changed)


def test_the_shipped_profile_is_the_default_for_the_default_pool():
    profile = PoolProfile.default_for(pool())
    assert profile.model_names == [m.name for m in pool().models] and profile.provenance.backend == "sim"
    assert all(split_of(t) is not Split.TEST for t in profile.provenance.task_ids)
    assert set(profile.provenance.quality_probes) == set(ROLES)
    resources = PolicyResources.default_for(pool())
    assert resources.quality.best_model() == profile.provenance.reference_model


def test_every_scenario_pool_has_a_shipped_profile():
    from sysaware.orchestration.scenarios import load_scenarios

    for name, scenario in load_scenarios().items():
        assert PoolProfile.default_for(scenario.pool_config).pool.name == scenario.pool_config.name, name


def test_wilson_interval():
    assert wilson_ci95(0, 10)[0] == 0.0 and wilson_ci95(10, 10)[1] == 1.0
    lo, hi = wilson_ci95(57, 100)
    assert lo < 0.57 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    with pytest.raises(ValueError):
        wilson_ci95(0, 0)


# --- measuring -----------------------------------------------------------------------------------------------

STRONG, WEAK = "codellama-34b-instruct", "mistral-7b-instruct"
TASKS = (555, 576, 578)  # validation tasks: both models' recorded answers pass on 555, only codellama's on 576, 578


class FewTasks(SimProfileDriver):
    def answerable_task_ids(self):
        return TASKS


def test_task_selection_takes_validation_then_train_and_never_test():
    picked = select_tasks([11, 700, 520, 515, 650, 600], 4)
    assert [t.task_id for t in picked] == [515, 520, 600, 650]
    assert [t.task_id for t in select_tasks([11, 700, 520])] == [520, 700]
    with pytest.raises(ValueError, match="test split"):
        select_tasks([11, 12], 3)


def test_profile_pool_measures_a_strong_coder_above_a_weak_one_deterministically():
    settings = ProfileSettings(num_tasks=3, seed=0, command="test")
    profile = profile_pool(pool(), FewTasks(pool()), settings)
    profile.check_pool(pool())
    assert profile.provenance.task_ids == list(TASKS)
    cell = profile.cell(STRONG, Strategy.CONCISE, "programmer")
    assert cell.quality_n == 3 and cell.output_tokens_n == 3
    assert cell.quality > profile.quality(WEAK, Strategy.CONCISE, "programmer")
    quality = PolicyResources.from_profile(pool(), profile).quality
    assert profile.provenance.reference_model == quality.best_model()
    for m in profile.model_names:
        # DeepThink reasons before answering: longer than Flash, for every model
        assert profile.output_tokens(m, "deepthink", "programmer") > profile.output_tokens(m, "flash", "programmer")
        idle = profile.idle(m)
        assert idle.tpot_s > 0 and idle.ttft_base_s >= 0 and idle.ttft_per_prompt_token_s > 0
        for role in ROLES:
            for s in Strategy:
                c = profile.cell(m, s, role)
                assert c.quality_n == 3 and 0 <= c.quality <= 1 and c.quality_ci95[0] <= c.quality <= c.quality_ci95[1]
    # a 34B dense model decodes slower than a 7B one on the same GPU
    assert profile.idle(STRONG).tpot_s > profile.idle(WEAK).tpot_s
    again = profile_pool(pool(), FewTasks(pool()), settings)
    assert again.models == profile.models  # deterministic for a seed
    assert again.provenance.data_fingerprint == profile.provenance.data_fingerprint


def test_a_given_reference_plays_the_other_roles():
    settings = ProfileSettings(num_tasks=1, reference_model=WEAK, command="test")
    profile = profile_pool(pool(), FewTasks(pool()), settings)
    assert profile.provenance.reference_model == WEAK
    with pytest.raises(ValueError, match="reference model"):
        profile_pool(pool(), FewTasks(pool()), ProfileSettings(num_tasks=1, reference_model="gpt-9"))


def test_every_role_has_a_probe_with_the_role_in_its_probed_slot():
    assert set(PROBES) == set(ROLES)
    for role, probe in PROBES.items():
        assert probe.topology.slot(probe.slot_id).role_id == role


def test_phase2_lengths_replace_the_probes_where_the_dataset_has_rows(tmp_path):
    from sysaware.data import dataset_store as store
    from test_dataset_report import MEAN_TOKENS, make_dataset

    df = make_dataset(prompts=4)
    df["model_id"] = df["model_id"].map({"model-a": STRONG, "model-b": "gpt-9"})  # gpt-9: not in the pool, ignored
    df["role_id"] = "reviewer"
    df["probe_key"] = df["probe_key"] + "|" + df["model_id"]
    for level, rows in df.groupby("concurrency"):
        store.write_shard(tmp_path, int(level), rows)
    settings = ProfileSettings(num_tasks=1, phase2=tmp_path, command="test")
    profile = profile_pool(pool(), FewTasks(pool()), settings)
    probed = profile_pool(pool(), FewTasks(pool()), ProfileSettings(num_tasks=1, command="test"))
    for s in Strategy:
        expected = df[(df.model_id == STRONG) & (df.strategy_id == s.value)]["output_tokens"].mean()
        assert profile.output_tokens(STRONG, s, "reviewer") == pytest.approx(expected)
        assert abs(expected - MEAN_TOKENS[s.value]) < 0.2 * MEAN_TOKENS[s.value]
        assert profile.cell(STRONG, s, "reviewer").output_tokens_n == len(df[(df.model_id == STRONG) & (df.strategy_id == s.value)])
        # every other cell keeps the probes' lengths
        assert profile.output_tokens(WEAK, s, "reviewer") == probed.output_tokens(WEAK, s, "reviewer")
        assert profile.output_tokens(STRONG, s, "programmer") == probed.output_tokens(STRONG, s, "programmer")
    assert "Phase 2" in profile.provenance.lengths_source
    assert profile.provenance.data_fingerprint != probed.provenance.data_fingerprint
    assert profile.models[WEAK] == probed.models[WEAK]
