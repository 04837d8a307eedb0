"""The decision path's memory: bounded (least recently used evicted), and a remembered answer is the answer the
estimator computes from scratch on the same inputs; the serving encoder's thread setting stays inside it."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import pytest

from estimator_factories import MODELS, make_phase2
from sysaware.estimators import predictor
from sysaware.estimators.data import split_by_prompt
from sysaware.estimators.embeddings import PromptEmbedder, onnx_available
from sysaware.estimators.lru import LRUCache
from sysaware.estimators.predictor import ReplicaState, SystemEstimator
from sysaware.estimators.train import TrainConfig, TrainedEstimator, train_latency, train_length
from sysaware.tasks.prompts import ROLES, task_prompt

TINY = TrainConfig(epochs=2, width=16, depth=1, batch_size=128)


class HashEmbedder:
    """A stand-in for MiniLM (unit vectors seeded by the text): what is cached matters here, not what it means."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        out = np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=384)
                        for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@lru_cache(maxsize=1)
def trained():
    train, val = split_by_prompt(make_phase2(prompts=12), 0.25)
    return train_latency(train, val, TINY), train_length(train, val, TINY, embedder=HashEmbedder())


def estimator() -> SystemEstimator:
    lat, length = trained()
    return SystemEstimator(lat, length, embedder=HashEmbedder())


def step_prompt(i: int, upstream: str = "") -> str:
    task = task_prompt(f"Write a function number {i} that adds two numbers.", f"assert add{i}(1, 2) == 3")
    return f"{ROLES['programmer'].system_prompt}\n{task}\n\n{upstream}Be brief."


STATE = ReplicaState(2, 30, 0.4, 80.0, 6.0, 14.0, 30)
CANDIDATES = [(m, s) for m in MODELS for s in ("flash", "concise", "deepthink")]


def price(est: SystemEstimator, prompt: str):
    return est.predict_candidates(prompt, "programmer", {m: STATE for m in MODELS}, 120, CANDIDATES)


def test_lru_keeps_the_most_recently_used():
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent: b goes first
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    with pytest.raises(ValueError, match="max_entries"):
        LRUCache(0)


def test_a_remembered_answer_is_the_answer_from_scratch():
    # 4 steps of one task (later ones carry upstream work) priced by one estimator, each against a fresh estimator
    # that has seen nothing: the same numbers, and the task embedded once.
    warm = estimator()
    prompts = [step_prompt(7, upstream) for upstream in ("", "Plan: add.\n\n", "Code: a + b.\n\n", "Review: ok.\n\n")]
    for p in prompts:
        assert price(warm, p) == price(estimator(), p)
    assert warm.embedder.calls == 1


def test_the_caches_are_bounded_and_an_evicted_task_prices_the_same(monkeypatch):
    monkeypatch.setattr(predictor, "EMBEDDING_CACHE_SIZE", 3)
    monkeypatch.setattr(predictor, "LENGTH_CACHE_SIZE", 4)
    est = estimator()
    first = price(est, step_prompt(0))
    for i in range(1, 12):
        price(est, step_prompt(i))
    assert len(est._embedding_cache) == 3 and len(est._length_cache) == 4
    calls = est.embedder.calls
    assert price(est, step_prompt(0)) == first  # evicted long ago: embedded again, same answer
    assert est.embedder.calls == calls + 1
    price(est, step_prompt(0))
    assert est.embedder.calls == calls + 1  # and remembered again


def test_the_serving_embedders_memory_is_bounded():
    class Encoder:
        def __init__(self) -> None:
            self.texts: list[str] = []

        def encode(self, texts):
            self.texts += texts
            return HashEmbedder().embed(texts)

    embedder = PromptEmbedder(threads=1, runtime="torch", max_entries=2)
    embedder._encoder = encoder = Encoder()  # no model load: only the memory around it is under test
    a = embedder.embed(["a", "b", "a"])  # a text twice in one call: encoded once
    np.testing.assert_array_equal(embedder.embed(["a"])[0], a[2])  # remembered; "a" now the most recent
    embedder.embed(["c"])  # evicts "b"
    assert len(embedder._cache) == 2 and encoder.texts == ["a", "b", "c"]
    embedder.embed(["a"])
    assert encoder.texts == ["a", "b", "c"]
    embedder.embed(["b"])
    assert encoder.texts == ["a", "b", "c", "b"]


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_the_onnx_encoders_thread_leaves_the_callers_torch_threads_alone():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        vec = PromptEmbedder(threads=1, runtime="onnx").embed(["Write a function that adds two numbers."])
        assert vec.shape == (1, 384) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_the_int8_decision_path_prices_near_the_fp32_one():
    # the shipped artifacts, the serving encoder in each precision, 12 MBPP tasks x 15 candidates. Measured on 7,560
    # held-out probes: F_len's mean head moves 3.2% at the median, 19.5% at p99, 34% at most (length MAPE 19.1% ->
    # 20.5%, which is why fp32 stays the default); F_lat reads no embedding, so TTFT and TPOT are identical.
    from sysaware.config import DEFAULT_POOL, load_pool
    from sysaware.tasks.mbpp import load_tasks

    models = [m.name for m in load_pool(DEFAULT_POOL).models]
    candidates = [(m, s) for m in models for s in ("flash", "concise", "deepthink")]
    fp32, int8 = (SystemEstimator(*_shipped(), embedder=predictor.serving_embedder(p)) for p in ("fp32", "int8"))
    rel = []
    for task in load_tasks()[:12]:
        text = f"{ROLES['programmer'].system_prompt}\n{task_prompt(task.text, task.example_test)}\n\nBe brief."
        states = {m: STATE for m in models}
        a, b = (e.predict_candidates(text, "programmer", states, 120, candidates) for e in (fp32, int8))
        assert [(x.ttft_ms, x.tpot_ms) for x in a] == [(x.ttft_ms, x.tpot_ms) for x in b]
        rel += [abs(y.out_tokens - x.out_tokens) / x.out_tokens for x, y in zip(a, b)]
    assert np.median(rel) <= 0.10 and max(rel) <= 0.50, (np.median(rel), max(rel))


def _shipped():
    from sysaware.estimators.artifacts import default_dir

    return (TrainedEstimator.load(default_dir("latency"), "latency"), TrainedEstimator.load(default_dir("length"), "length"))
