"""Estimator artifacts: a save/load round trip predicts the same, a mismatched spec fails with a clear message, and the
shipped defaults load in a fresh process and price every (model, strategy) candidate in one call."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from estimator_factories import MODELS, make_phase2, shared_embedder, write_phase2_run
from sysaware.config import REPO_ROOT
from sysaware.estimators.data import split_by_prompt
from sysaware.estimators.features import FeatureSpecError
from sysaware.estimators.predictor import ReplicaState, SystemEstimator
from sysaware.estimators.train import TrainConfig, TrainedEstimator, train_latency, train_length

TINY = TrainConfig(epochs=2, width=16, depth=1, batch_size=128)


@lru_cache(maxsize=1)
def data():
    df = make_phase2(prompts=12)
    return split_by_prompt(df, 0.25)


def saved_latency(tmp_path: Path) -> Path:
    train, val = data()
    return train_latency(train, val, TINY).save(tmp_path / "latency-v2")


def test_round_trip_predicts_the_same(tmp_path):
    train, val = data()
    est = train_latency(train, val, TINY)
    loaded = TrainedEstimator.load(est.save(tmp_path / "lat"), "latency")
    np.testing.assert_allclose(loaded.predict_frame(val), est.predict_frame(val), rtol=1e-6)
    for name in ("weights.pt", "feature_spec.json", "config.json", "metrics.json", "data.json"):
        assert (tmp_path / "lat" / name).exists()
    assert json.loads((tmp_path / "lat" / "data.json").read_text())["rows"] == len(train)
    assert loaded.data == est.data and loaded.data["prompts"] == train.prompt_id.nunique()


def test_a_different_feature_list_fails_to_load(tmp_path):
    path = saved_latency(tmp_path)
    spec = json.loads((path / "feature_spec.json").read_text())
    spec["numeric"] = spec["numeric"][:-1]  # an artifact trained without total_input_tokens
    (path / "feature_spec.json").write_text(json.dumps(spec))
    with pytest.raises(FeatureSpecError, match=r"mismatch on 'numeric'.*total_input_tokens"):
        TrainedEstimator.load(path, "latency")


def test_a_latency_artifact_is_not_a_length_artifact(tmp_path):
    with pytest.raises(FeatureSpecError, match="mismatch on 'kind'"):
        TrainedEstimator.load(saved_latency(tmp_path), "length")


def test_a_model_outside_the_vocabulary_is_named(tmp_path):
    est = TrainedEstimator.load(saved_latency(tmp_path), "latency")
    _, val = data()
    frame = val.head(3).assign(model_id="gpt-unknown")
    with pytest.raises(FeatureSpecError, match="gpt-unknown.*not in its vocabulary"):
        est.predict_frame(frame)


def test_an_unknown_role_uses_the_shared_slot(tmp_path):
    est = TrainedEstimator.load(saved_latency(tmp_path), "latency")
    _, val = data()
    pred = est.predict_frame(val.head(3).assign(role_id="brand_new_role"))
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)


class CountingEmbedder:
    """The real embedder, counting how many texts reach the model."""

    def __init__(self, inner):
        self.inner, self.texts = inner, 0

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)


def test_predictor_prices_all_candidates_and_caches_the_prompt(tmp_path):
    train, val = data()
    lat = train_latency(train, val, TINY)
    length = train_length(train, val, TINY, embedder=shared_embedder())
    est = SystemEstimator(lat, length)
    est.embedder = counting = CountingEmbedder(est.embedder)

    state = ReplicaState(queue_waiting=2, queue_running=30, kv_utilization=0.4, ema_ttft_ms=80.0,
                         step_remaining_ms=6.0, step_ms=14.0, step_tokens=30)
    candidates = [(m, s) for m in MODELS for s in ("flash", "concise", "deepthink")]
    states = {m: state for m in MODELS}
    first = est.predict_candidates("Write a function to add two numbers.", "programmer", states, 90, candidates)
    again = est.predict_candidates("Write a function to add two numbers.", "programmer", states, 90, candidates)
    assert counting.texts == 1  # one prompt, embedded once across both calls
    assert [(c.model, c.strategy) for c in first] == candidates
    assert first == again
    for c in first:
        assert c.t_hat_ms == pytest.approx(c.ttft_ms + c.out_tokens * c.tpot_ms)
        assert c.t_hat_p90_ms >= c.t_hat_ms > 0
    # the numpy fast path answers what the torch network answers for the same rows
    model = next(iter(MODELS))
    row = val.head(1).assign(model_id=model, role_id="programmer", strategy_id="deepthink", queue_waiting=2,
                             queue_running=30, kv_utilization=0.4, ema_ttft_ms=80.0, total_input_tokens=90,
                             step_remaining_ms=6.0, step_ms=14.0, step_tokens=30,
                             prompt_text="Write a function to add two numbers.")
    ref_lat, ref_len = lat.predict_frame(row)[0], length.predict_frame(row)[0]
    mine = next(c for c in first if c.model == model and c.strategy == "deepthink")
    assert mine.ttft_ms == pytest.approx(ref_lat[0, 0], rel=1e-4)
    assert mine.tpot_ms == pytest.approx(ref_lat[1, 0], rel=1e-4)
    assert mine.out_tokens == pytest.approx(ref_len[0, 0], rel=1e-4)
    assert mine.t_hat_p90_ms == pytest.approx(ref_lat[0, -1] + ref_len[0, -1] * ref_lat[1, -1], rel=1e-4)
    with pytest.raises(FeatureSpecError, match="gpt-unknown"):
        est.predict_candidates("x", "programmer", {"gpt-unknown": state}, 10, [("gpt-unknown", "flash")])


def test_later_steps_of_a_task_reuse_its_embedding_and_length_answer():
    # A workflow's later steps carry upstream answers (new prompts) but the same task: F_len reads the task, so only
    # the first step embeds, and a step whose task, role and candidates were priced before runs F_lat alone.
    from sysaware.tasks.prompts import ROLES, task_prompt

    train, val = data()
    est = SystemEstimator(train_latency(train, val, TINY), train_length(train, val, TINY, embedder=shared_embedder()))
    est.embedder = counting = CountingEmbedder(est.embedder)
    task = task_prompt("Write a function to add two numbers.", "assert add(1, 2) == 3")
    system = ROLES["programmer"].system_prompt
    first = f"{system}\n{task}\n\nBe brief, focus on the result."
    later = f"{system}\n{task}\n\nYour team's work so far:\n\n### Programmer:\ndef add(a, b): return a + b\n\nBe brief."
    model = next(iter(MODELS))
    state = ReplicaState(0, 10, 0.2, 50.0, 3.0, 12.0, 10)
    a = est.predict_candidates(first, "programmer", {model: state}, 90, [(model, "flash")])
    b = est.predict_candidates(later, "programmer", {model: state}, 140, [(model, "flash")])
    assert counting.texts == 1
    assert a[0].out_tokens == b[0].out_tokens and a[0].ttft_ms != b[0].ttft_ms  # F_len: same task; F_lat: new size
    ref = est.length.predict_frame(val.head(1).assign(model_id=model, role_id="programmer", strategy_id="flash",
                                                      prompt_text=later))[0]
    assert b[0].out_tokens == pytest.approx(ref[0, 0], rel=1e-4)


def test_an_unknown_step_phase_keeps_the_mean_and_prices_p90_at_a_whole_step():
    # Telemetry older than a step no longer says where in a step a request lands: the mean reads half a step (the
    # expected wait), TTFT's P90 the worst phase, a whole step; a fresh snapshot is read as it is.
    from twin_factories import create_stats

    train, val = data()
    est = SystemEstimator(train_latency(train, val, TINY), train_length(train, val, TINY, embedder=shared_embedder()))
    model = next(iter(MODELS))
    stats = create_stats(model=model, num_requests_running=30, ema_ttft_ms=60.0, step_elapsed_ms=4.0, step_ms=20.0,
                         step_tokens=30)
    fresh, stale = ReplicaState.from_stats(stats), ReplicaState.from_stats(stats, age_s=0.1)
    assert (fresh.step_remaining_ms, fresh.step_phase_known) == (16.0, True)
    assert (stale.step_remaining_ms, stale.step_phase_known) == (10.0, False)

    def price(state):
        [c] = est.predict_candidates("Write a function to add two numbers.", "programmer", {model: state}, 90,
                                     [(model, "flash")])
        return c

    guess = price(stale)
    as_if_known = price(dataclasses.replace(stale, step_phase_known=True))
    worst = price(dataclasses.replace(stale, step_remaining_ms=20.0, step_phase_known=True))
    assert guess.ttft_ms == pytest.approx(as_if_known.ttft_ms, rel=1e-12)
    assert guess.tpot_ms == pytest.approx(as_if_known.tpot_ms, rel=1e-12)
    assert guess.ttft_p90_ms == pytest.approx(max(worst.ttft_p90_ms, as_if_known.ttft_p90_ms), rel=1e-9)
    assert guess.t_hat_p90_ms == pytest.approx(guess.ttft_p90_ms + guess.out_tokens_p90 * guess.tpot_p90_ms)


SHIPPED_SCRIPT = """
import json
from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.estimators.predictor import ReplicaState, SystemEstimator

state = ReplicaState(queue_waiting=0, queue_running=8, kv_utilization=0.1, ema_ttft_ms=40.0, step_remaining_ms=5.0,
                     step_ms=9.0, step_tokens=8)

pool = load_pool(DEFAULT_POOL)
models = [m.name for m in pool.models]
est = SystemEstimator.load()
cands = [(m, s) for m in models for s in ("flash", "concise", "deepthink")]
states = {m: state for m in models}
out = est.predict_candidates("Write a function to reverse a string.", "programmer", states, 80, cands)
print(json.dumps([c.__dict__ for c in out]))
"""


def test_shipped_artifacts_price_the_default_pool_from_a_fresh_process():
    proc = subprocess.run([sys.executable, "-c", SHIPPED_SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 15  # 5 models x 3 strategies
    for r in rows:
        assert 0 < r["t_hat_ms"] <= r["t_hat_p90_ms"]
    tokens = {s: np.mean([r["out_tokens"] for r in rows if r["strategy"] == s]) for s in ("flash", "deepthink")}
    assert tokens["deepthink"] > tokens["flash"]


def test_cli_trains_then_reports_on_a_phase2_run(tmp_path):
    from typer.testing import CliRunner

    from sysaware.cli import app

    data = write_phase2_run(tmp_path / "run", make_phase2(prompts=10))
    out = tmp_path / "artifacts"
    trained = CliRunner().invoke(app, ["train-estimators", "--data", str(data), "--out", str(out), "--epochs", "2"])
    assert trained.exit_code == 0, trained.output
    assert (out / "latency-v2" / "weights.pt").exists() and (out / "length-v3" / "weights.pt").exists()
    report = CliRunner().invoke(app, ["estimator-report", "--data", str(data), "--latency-dir", str(out / "latency-v2"),
                                      "--length-dir", str(out / "length-v3"), "--plots", str(tmp_path / "plots")])
    assert report.exit_code == 0, report.output
    assert "latency=yes, length=yes" in report.output  # trained on the report's train half: test prompts unseen
    assert "N=150" in report.output and "headline: ttft_mape=" in report.output
    assert (tmp_path / "plots" / "pred_vs_actual_ttft.png").exists()
