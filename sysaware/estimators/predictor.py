"""SystemEstimator: for one step, T_hat = ttft + L_out x tpot for every (model, strategy) candidate in one batched call.

P90 of T_hat: ttft_p90 + L_out_p90 x tpot_p90. The sum and product of per-term P90s upper-bounds the P90 of the total
when the terms are positively dependent (long answers and a busy replica both slow a step), so it is conservative:
it over-covers rather than under-covers.

F_len embeds the task part of the prompt (feature spec v3, ``tasks.prompts.task_in_prompt``): a workflow's later
steps carry new upstream answers, but their task is the one already embedded, so only a task's first decision runs
MiniLM (one intra-op thread: ``PromptEmbedder(threads=1)``). F_len's answer depends on nothing else but the role,
model and strategy, so it is remembered per (task, role, candidates): a cached decision runs F_lat alone. Both
memories are bounded, least recently used evicted (``EMBEDDING_CACHE_SIZE`` tasks, ``LENGTH_CACHE_SIZE`` answers): a
server meets new tasks forever, and a running workflow's task, touched at each step, stays while finished ones go.

A replica whose step phase is unknown (telemetry older than a step) is priced at the expected wait, half a step, for
the mean, and at the worst phase, a whole step, for TTFT's P90: the network learned its quantiles where the phase was
known, and read at half a step they covered 61% of live TTFTs instead of 90% (88% at the worst phase).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sysaware.data.metrics_schema import replica_state_columns
from sysaware.engines.types import ReplicaStats, step_phase_known
from sysaware.estimators.artifacts import default_dir
from sysaware.estimators.embeddings import MAX_SEQ_LENGTH, PromptEmbedder, length_embedder, precision_from_env
from sysaware.estimators.features import LENGTH_EMBEDDINGS, embedded_text, length_embedding_of
from sysaware.estimators.lru import LRUCache
from sysaware.estimators.models import NumpyQuantileMLP
from sysaware.estimators.train import TrainedEstimator


SERVING_THREADS = 1  # the encoder's intra-op threads on the decision path (see the module docstring)
# word pieces of a task text the decision path embeds: MiniLM's whole window. 128 was measured (held-out F_len MAE
# +0.01 tokens, 95% CI [-0.07, +0.10]; 64 would cost +1.2 [+0.6, +2.0]; the 10 longest MBPP test tasks, 125-1,304 word
# pieces: CPU per embedding median 149 -> 99 ms, max 250 -> 144 ms) but not taken: it moved no p99 measurably over
# 100 tasks, and it would change F_len's answers on the longest tasks, so published evaluations would no longer
# reproduce from the code
SERVING_MAX_WORD_PIECES = MAX_SEQ_LENGTH
EMBEDDING_CACHE_SIZE = 1 << 12  # embedded texts (tasks) remembered, least recently used evicted: ~6 MB
LENGTH_CACHE_SIZE = 1 << 14  # F_len answers remembered per (task, role, candidates), least recently used evicted
# F_len's task embedding on the decision path when the caller names no artifact: "minilm" (unset; the reference,
# what the RL policy was trained on) or "static" (estimators/static_embedding.py, artifact length-v3-static)
LENGTH_EMBEDDER_ENV = "SYSAWARE_LENGTH_EMBEDDER"


def length_embedder_from_env() -> str:
    """``SYSAWARE_LENGTH_EMBEDDER`` (minilm when unset); an unknown value is an error naming the variable."""
    value = os.environ.get(LENGTH_EMBEDDER_ENV, "minilm").strip().lower() or "minilm"
    if value not in LENGTH_EMBEDDINGS:
        raise ValueError(f"{LENGTH_EMBEDDER_ENV}={value!r}: expected one of {list(LENGTH_EMBEDDINGS)}")
    return value


class ReplicaStateLike(Protocol):
    queue_waiting: int
    queue_running: int
    kv_utilization: float  # fraction
    ema_ttft_ms: float
    step_remaining_ms: float  # expected wait for the replica's in-progress step (engines.types.step_remaining_ms)
    step_ms: float  # the replica's latest step duration
    step_tokens: int  # tokens scheduled in its in-progress step
    # optional: False when step_remaining_ms is the half-step guess (see the module docstring); absent means True


@dataclass(frozen=True)
class ReplicaState:
    """What F_lat reads of a replica, from its stats as the caller saw them ``age_s`` after they were taken (0 for
    stats whose age is already folded into step_elapsed_ms, as the live driver's are)."""

    queue_waiting: int
    queue_running: int
    kv_utilization: float  # fraction
    ema_ttft_ms: float
    step_remaining_ms: float
    step_ms: float
    step_tokens: int
    step_phase_known: bool = True

    @classmethod
    def from_stats(cls, stats: ReplicaStats, age_s: float = 0.0) -> "ReplicaState":
        """The columns the dataset recorded for a probe (``replica_state_columns``), read off the same stats."""
        known = step_phase_known(stats.step_elapsed_ms, stats.step_ms, age_s)
        return cls(**replica_state_columns(stats, age_s), step_phase_known=known)


@dataclass(frozen=True)
class CandidateEstimate:
    model: str
    strategy: str
    ttft_ms: float  # mean-head TTFT
    tpot_ms: float  # mean-head TPOT
    out_tokens: float  # mean-head output length, tokens
    t_hat_ms: float  # ttft + out_tokens x tpot
    t_hat_p90_ms: float  # ttft_p90 + out_tokens_p90 x tpot_p90 (conservative, see module doc)
    ttft_p90_ms: float
    tpot_p90_ms: float
    out_tokens_p90: float


def serving_embedder(precision: str | None = None, embedding: str = "minilm"):
    """The decision path's encoder: one thread, a bounded memory, fp32 unless ``precision`` (or
    ``SYSAWARE_EMBEDDING_PRECISION``) says int8; the static table when F_len reads it (``embedding``)."""
    if embedding != "minilm":
        return length_embedder(embedding)
    return PromptEmbedder(threads=SERVING_THREADS, max_entries=EMBEDDING_CACHE_SIZE,
                          precision=precision or precision_from_env(), max_word_pieces=SERVING_MAX_WORD_PIECES)


def _to_units(spec, z: np.ndarray) -> np.ndarray:
    """(rows, targets, 1 + K) standardised log -> ms / tokens."""
    return spec.to_target_units(z.transpose(0, 2, 1)).transpose(0, 2, 1)


def _index(vocab: list[str]) -> dict[str, int]:
    return {v: i for i, v in enumerate(vocab)}


class SystemEstimator:
    def __init__(self, latency: TrainedEstimator, length: TrainedEstimator, embedder: PromptEmbedder | None = None):
        self.latency = latency
        self.length = length
        self.embedder = embedder or length.embedder or serving_embedder(embedding=length_embedding_of(length.spec))
        self.length.embedder = self.embedder
        self._embedding_cache: LRUCache[str, np.ndarray] = LRUCache(EMBEDDING_CACHE_SIZE)  # text -> (1, 384) float64
        # (embedded text, role, candidates) -> F_len's output
        self._length_cache: LRUCache[tuple, np.ndarray] = LRUCache(LENGTH_CACHE_SIZE)
        self._lat_net = NumpyQuantileMLP(latency.network)
        self._len_net = NumpyQuantileMLP(length.network)
        self._lat_index = {c: _index(latency.spec.vocabularies[c]) for c in latency.spec.categorical}
        self._len_index = {c: _index(length.spec.vocabularies[c]) for c in length.spec.categorical}

    @classmethod
    def load(cls, latency_dir: str | Path | None = None, length_dir: str | Path | None = None,
             length_embedding: str | None = None) -> "SystemEstimator":
        """Defaults: the artifacts shipped in sysaware/resources/estimators; F_len's is the one of ``length_embedding``
        (else ``SYSAWARE_LENGTH_EMBEDDER``, else MiniLM's ``length-v3``)."""
        latency = TrainedEstimator.load(latency_dir or default_dir("latency"), "latency")
        embedding = length_embedding or length_embedder_from_env()
        length = TrainedEstimator.load(length_dir or default_dir("length", embedding), "length")
        return cls(latency, length)

    @property
    def models(self) -> list[str]:
        return [m for m in self.latency.spec.vocabularies["model_id"][1:] if m in self._len_index["model_id"]]

    def embedded_text(self, prompt_text: str) -> str:
        """The part of ``prompt_text`` whose embedding F_len reads."""
        return embedded_text(prompt_text, self.length.spec.embedded_text or "prompt")

    def prompt_embedding(self, text: str) -> np.ndarray:
        """The embedding of ``text`` (already the embedded part of a prompt), (1, 384) float64, once per text."""
        emb = self._embedding_cache.get(text)
        if emb is None:
            emb = self.embedder.embed([text]).astype(np.float64)
            self._embedding_cache.put(text, emb)
        return emb

    def warm_up(self) -> "SystemEstimator":
        """Load the encoder (exporting it on a machine's first use) before the first decision needs it."""
        self.embedder.warm_up()
        return self

    def predict_candidates(self, prompt_text: str, role_id: str, states: dict[str, ReplicaStateLike],
                           input_tokens: int, candidates: list[tuple[str, str]]) -> list[CandidateEstimate]:
        if not candidates:
            return []
        lat_rows = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in candidates))}
        models = list(lat_rows)
        missing = [m for m in models if m not in states]
        if missing:
            raise KeyError(f"no replica state for model(s) {missing}")
        lat = self._latency_batch(role_id, [(m, states[m]) for m in models], input_tokens)  # (models, 2, 1+K)
        length = self._length_batch(prompt_text, role_id, candidates)  # (candidates, 1, 1+K)
        out = []
        for j, (model, strategy) in enumerate(candidates):
            ttft, tpot = lat[lat_rows[model], 0], lat[lat_rows[model], 1]
            tokens = length[j, 0]
            out.append(CandidateEstimate(
                model, strategy, float(ttft[0]), float(tpot[0]), float(tokens[0]),
                t_hat_ms=float(ttft[0] + tokens[0] * tpot[0]),
                t_hat_p90_ms=float(ttft[-1] + tokens[-1] * tpot[-1]),
                ttft_p90_ms=float(ttft[-1]), tpot_p90_ms=float(tpot[-1]), out_tokens_p90=float(tokens[-1]),
            ))
        return out

    def _code(self, index: dict[str, dict[str, int]], column: str, value: str, kind: str) -> int:
        code = index[column].get(value)
        if code is None:
            if column == "role_id":
                return 0  # <unk>: a role the training data did not have
            from sysaware.estimators.features import FeatureSpecError

            raise FeatureSpecError(f"{kind} estimator: {column} {value!r} not in its vocabulary "
                                   f"{list(index[column])}; retrain with `sysaware train-estimators`")
        return code

    def predict_ttft_ms(self, model: str, states: list[ReplicaStateLike], input_tokens: int,
                        role_id: str = "<unk>") -> np.ndarray:
        """F_lat's mean-head TTFT (ms) of one more request on each of ``model``'s replicas in ``states`` (the request
        router's question: which replica of this model answers first)."""
        return self._latency_batch(role_id, [(model, st) for st in states], input_tokens)[:, 0, 0]

    def _latency_batch(self, role_id: str, rows: list[tuple[str, ReplicaStateLike]], input_tokens: int) -> np.ndarray:
        """(rows, 2 targets, 1 + K quantiles) in ms, one row per (model, replica state)."""
        spec = self.latency.spec
        models = [m for m, _ in rows]
        raw = np.array([[getattr(st, c) if c != "total_input_tokens" else input_tokens for c in spec.numeric]
                        for _, st in rows], dtype=np.float64)
        unknown = [i for i, (_, st) in enumerate(rows) if not getattr(st, "step_phase_known", True)]
        if unknown:  # one more row each, at the worst phase (a whole step to wait), for TTFT's P90
            worst = raw[unknown].copy()
            worst[:, spec.numeric.index("step_remaining_ms")] = worst[:, spec.numeric.index("step_ms")]
            raw = np.concatenate([raw, worst])
        log_cols = [i for i, c in enumerate(spec.numeric) if c != "kv_utilization"]
        raw[:, log_cols] = np.log1p(np.maximum(raw[:, log_cols], 0.0))
        numeric = (raw - np.asarray(spec.numeric_mean)) / np.asarray(spec.numeric_std)
        codes = np.array([[self._code(self._lat_index, c, role_id if c == "role_id" else m, "latency")
                           for c in spec.categorical] for m in models + [models[i] for i in unknown]], dtype=np.int64)
        out = _to_units(self.latency.spec, self._lat_net(numeric, codes))
        if unknown:
            out[unknown, 0, -1] = np.maximum(out[unknown, 0, -1], out[len(models):, 0, -1])
            out = out[: len(models)]
        return out

    def _length_batch(self, prompt_text: str, role_id: str, candidates: list[tuple[str, str]]) -> np.ndarray:
        """(candidates, 1 target, 1 + K) tokens. Read-only: a remembered answer may be returned again."""
        spec = self.length.spec
        text = self.embedded_text(prompt_text)
        key = (text, role_id, tuple(candidates)) if not spec.numeric else None
        if key is not None and (out := self._length_cache.get(key)) is not None:
            return out
        values = {"role_id": lambda m, s: role_id, "model_id": lambda m, s: m, "strategy_id": lambda m, s: s}
        codes = np.array([[self._code(self._len_index, c, values[c](m, s), "length") for c in spec.categorical]
                          for m, s in candidates], dtype=np.int64)
        dense = np.broadcast_to(self.prompt_embedding(text), (len(candidates), spec.prompt_embedding_dim))
        out = _to_units(spec, self._len_net(np.zeros((len(candidates), 0)), codes, dense))
        if key is not None:
            out.setflags(write=False)
            self._length_cache.put(key, out)
        return out
