"""The item-response model behind the twin's answers: fit, calibration to published pass@1, persistence."""

from __future__ import annotations

import json

import numpy as np
from scipy.special import expit
from scipy.stats import spearmanr

from sysaware.config import CONFIG_DIR, load_pool
from sysaware.engines.twin.responder.irt import (
    IRT_FIT_JSON,
    IrtModel,
    ability_for_pass_rate,
    correctness_matrix,
    fit_irt_model,
    fit_rasch,
    load_irt_model,
)
from sysaware.tasks.mbpp import load_tasks


def make_rasch_data(n_models: int = 12, n_tasks: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ability = rng.normal(0.0, 1.0, n_models)
    difficulty = rng.normal(0.0, 1.5, n_tasks)
    y = (rng.random((n_models, n_tasks)) < expit(ability[:, None] - difficulty[None, :])).astype(float)
    return ability, difficulty, y


def test_fit_recovers_synthetic_parameters():
    ability, difficulty, y = make_rasch_data()
    y[0, :10] = np.nan  # missing grades are skipped, not counted as failures
    fit = fit_rasch(y)
    assert fit.converged
    assert np.corrcoef(fit.ability, ability)[0, 1] > 0.95
    # 12 binary answers per task: difficulties are noisy but clearly recovered
    assert np.corrcoef(fit.difficulty, difficulty)[0, 1] > 0.8


def test_ability_for_pass_rate_hits_the_target():
    difficulties = np.linspace(-3, 3, 101)
    for rate in (0.1, 0.5, 0.728, 0.95):
        a = ability_for_pass_rate(difficulties, rate)
        assert abs(expit(a - difficulties).mean() - rate) < 1e-6


def test_unrecorded_models_match_their_published_pass_at_1_within_one_point():
    irt = load_irt_model()
    pool = load_pool(CONFIG_DIR / "pool_llama3.yaml")
    for model in pool.models:
        assert model.recorded_as is None and model.mbpp_pass_at_1 is not None
        ability = irt.ability_for_pass_at_1(model.mbpp_pass_at_1)
        assert abs(100 * irt.mean_p_correct(ability) - model.mbpp_pass_at_1) < 1.0, model.name


def test_recorded_abilities_reproduce_each_models_pass_rate():
    irt = load_irt_model()
    models, _, y = correctness_matrix()
    for i, model in enumerate(models):
        observed = np.nanmean(y[i])
        assert abs(irt.mean_p_correct(irt.ability[model]) - observed) < 0.01, model
    # and abilities rank models as their pass rates do
    rates = np.nanmean(y, axis=1)
    assert spearmanr([irt.ability[m] for m in models], rates)[0] > 0.95


def test_difficulties_follow_the_fraction_of_models_failing():
    irt = load_irt_model()
    _, task_ids, y = correctness_matrix()
    failing = 1.0 - np.nanmean(y, axis=0)
    difficulty = [irt.difficulty[t] for t in task_ids]
    assert spearmanr(difficulty, failing)[0] > 0.9
    # a task every model failed is harder than one every model solved
    hardest = task_ids[int(np.argmax(failing))]
    easiest = task_ids[int(np.argmin(failing))]
    assert irt.difficulty[hardest] > irt.difficulty[easiest] + 2.0


def test_tasks_without_recordings_get_a_finite_predicted_difficulty():
    irt = load_irt_model()
    unrecorded = [t.task_id for t in load_tasks("test") if t.task_id not in irt.difficulty][:20]
    assert unrecorded
    values = [irt.task_difficulty(t) for t in unrecorded]
    lo, hi = min(irt.difficulty.values()), max(irt.difficulty.values())
    assert all(lo - 1 <= v <= hi + 1 for v in values)
    assert irt.task_difficulty(10**6) == irt.predictor.mean  # not an MBPP task at all


def test_saved_fit_is_what_a_refit_gives():
    saved = load_irt_model()
    refit = fit_irt_model()
    stale = "irt_fit.json is stale (regrade.csv changed?): refit with python -m sysaware.engines.twin.responder.irt"
    assert set(saved.difficulty) == set(refit.difficulty), stale
    assert max(abs(saved.difficulty[t] - refit.difficulty[t]) for t in saved.difficulty) < 1e-3, stale
    assert max(abs(saved.ability[m] - refit.ability[m]) for m in saved.ability) < 1e-3
    diagnostics = json.loads(IRT_FIT_JSON.read_text())["diagnostics"]
    assert diagnostics["converged"] and diagnostics["log_loss"] < diagnostics["log_loss_model_rate_only"]


def test_json_round_trip(tmp_path):
    model = load_irt_model()
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(model.to_json()))
    again = IrtModel.from_json(json.loads(path.read_text()))
    assert again.difficulty == {t: round(b, 6) for t, b in model.difficulty.items()}
    assert again.predictor.used == model.predictor.used
