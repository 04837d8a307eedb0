"""The static task embedding (MiniLM distilled into a word-piece table) and the opt-in F_len that reads it.

The table is built once per machine under the user cache (~1-3 min on a loaded 2-core machine: every word piece
through MiniLM); these tests then take a few seconds. The default F_len (MiniLM, length-v3) must answer exactly as
before: the RL policy reads its answers as features and the published evaluations must reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from sysaware.estimators import predictor
from sysaware.estimators.embeddings import PromptEmbedder
from sysaware.estimators.features import LENGTH_EMBEDDINGS, FeatureSpecError
from sysaware.estimators.predictor import LENGTH_EMBEDDER_ENV, ReplicaState, SystemEstimator
from sysaware.estimators.static_embedding import STATIC_DIMS, StaticEmbedder, sif_weights
from sysaware.tasks.mbpp import load_tasks
from sysaware.tasks.prompts import ROLES, task_prompt

STATE = ReplicaState(queue_waiting=2, queue_running=24, kv_utilization=0.4, ema_ttft_ms=180.0,
                     step_remaining_ms=12.0, step_ms=30.0, step_tokens=512)


def _candidates():
    from sysaware.config import DEFAULT_POOL, load_pool

    models = [m.name for m in load_pool(DEFAULT_POOL).models]
    return models, [(m, s) for m in models for s in ("flash", "concise", "deepthink")]


def _prices(est: SystemEstimator, tasks) -> np.ndarray:
    models, candidates = _candidates()
    out = []
    for task in tasks:
        text = f"{ROLES['programmer'].system_prompt}\n{task_prompt(task.text, task.example_test)}\n\nBe brief."
        out.append([(c.out_tokens, c.out_tokens_p90, c.ttft_ms, c.tpot_ms)
                    for c in est.predict_candidates(text, "programmer", {m: STATE for m in models}, 120, candidates)])
    return np.asarray(out)


def test_the_static_spec_is_its_own_and_the_variable_is_checked_by_name(monkeypatch):
    assert LENGTH_EMBEDDINGS["static"][1] == STATIC_DIMS and LENGTH_EMBEDDINGS["minilm"][1] == 384
    w = sif_weights(1000)
    assert np.all(np.diff(w) > 0) and 0 < w[0] < w[-1] < 1  # frequent (low-rank) pieces weigh less
    monkeypatch.delenv(LENGTH_EMBEDDER_ENV, raising=False)
    assert predictor.length_embedder_from_env() == "minilm"
    monkeypatch.setenv(LENGTH_EMBEDDER_ENV, " Static ")
    assert predictor.length_embedder_from_env() == "static"
    monkeypatch.setenv(LENGTH_EMBEDDER_ENV, "glove")
    with pytest.raises(ValueError, match=LENGTH_EMBEDDER_ENV):
        predictor.length_embedder_from_env()


def test_a_static_artifact_does_not_load_as_minilms(tmp_path):
    import json
    import shutil

    from sysaware.estimators.artifacts import default_dir
    from sysaware.estimators.train import TrainedEstimator

    # an artifact that claims MiniLM but carries the static table's width: refused with the field named
    shutil.copytree(default_dir("length", "static"), tmp_path / "bad")
    spec = json.loads((tmp_path / "bad" / "feature_spec.json").read_text())
    spec["prompt_embedding"] = LENGTH_EMBEDDINGS["minilm"][0]
    (tmp_path / "bad" / "feature_spec.json").write_text(json.dumps(spec))
    with pytest.raises(FeatureSpecError, match="prompt_embedding_dim"):
        TrainedEstimator.load(tmp_path / "bad", "length")


@pytest.mark.slow
@pytest.mark.xdist_group("static-table")  # one worker builds the table, the other test then reads it
@pytest.mark.timeout(900)  # a machine's first use builds the table (166 s on the loaded 2-core machine)
def test_static_vectors_are_deterministic_and_unit_norm():
    texts = [task_prompt(t.text, t.example_test) for t in load_tasks()[:20]] + ["short", "x " * 700]
    a, b = StaticEmbedder().embed(texts), StaticEmbedder().embed(texts)  # two loads of the table
    assert a.shape == (len(texts), STATIC_DIMS) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(StaticEmbedder().embed([texts[3]])[0], a[3])  # one at a time, as a decision
    assert len({v.tobytes() for v in a}) == len(texts)  # different tasks, different vectors
    cos = a[:20] @ a[:20].T
    assert cos[~np.eye(20, dtype=bool)].max() < 0.999
    assert not StaticEmbedder().embed([""]).any()  # no word piece: zeros, not NaN


@pytest.mark.slow
@pytest.mark.xdist_group("static-table")
@pytest.mark.timeout(900)  # as above, when this test is the first to need the table
def test_the_opt_in_f_len_prices_candidates_and_differs_only_when_opted_in(monkeypatch):
    tasks = load_tasks()[:6]
    monkeypatch.delenv(LENGTH_EMBEDDER_ENV, raising=False)
    default = SystemEstimator.load()
    assert isinstance(default.embedder, PromptEmbedder) and default.length.spec.prompt_embedding_dim == 384
    monkeypatch.setenv(LENGTH_EMBEDDER_ENV, "minilm")
    named = SystemEstimator.load()
    monkeypatch.setenv(LENGTH_EMBEDDER_ENV, "static")
    static = SystemEstimator.load()
    assert isinstance(static.embedder, StaticEmbedder) and static.length.spec.prompt_embedding_dim == STATIC_DIMS
    base, same, opted = _prices(default, tasks), _prices(named, tasks), _prices(static, tasks)
    np.testing.assert_array_equal(base, same)  # unset and "minilm" are the same F_len, the same answers
    assert np.all(np.isfinite(opted)) and np.all(opted[..., 0] > 1) and np.all(opted[..., 0] < 4096)
    assert np.all(opted[..., 1] >= 0.5 * opted[..., 0])  # a P90 near or above the mean
    np.testing.assert_array_equal(opted[..., 2:], base[..., 2:])  # F_lat reads no embedding: TTFT, TPOT unchanged
    rel = np.abs(opted[..., 0] - base[..., 0]) / base[..., 0]
    assert rel.max() > 1e-3  # another F_len: its answers differ
    assert np.median(rel) < 0.5, np.median(rel)  # ...yet price the same candidates in the same range
