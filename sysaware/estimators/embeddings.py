"""Prompt sentence embeddings (offline MiniLM), cached by text: a prompt is embedded once per process.

A disk cache (npz keyed by text hash) lets training reuse the embeddings of a 100k-probe dataset across runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class PromptEmbedder:
    def __init__(self, cache_path: str | Path | None = None):
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        self._cache_path = Path(cache_path) if cache_path else None
        if self._cache_path and self._cache_path.exists():
            with np.load(self._cache_path) as z:
                self._cache = {k: z[k] for k in z.files}

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            from sysaware.engines.tokens import minilm_model_dir

            self._model = SentenceTransformer(str(minilm_model_dir()), device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32, unit-normalised; only texts not seen before go through the model."""
        keys = [text_key(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in self._cache}
        if todo:
            vecs = self._load().encode(list(todo.values()), batch_size=64, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
            for k, v in zip(todo, vecs):
                self._cache[k] = v.astype(np.float32)
            if self._cache_path:
                self._cache_path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(self._cache_path, **self._cache)
        return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)
