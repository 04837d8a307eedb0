"""Naive baselines the estimators must beat on the same held-out split.

- TTFT: the replica's current EMA of TTFT (what a router without a model would use).
- TPOT: the model's mean TPOT on the training split.
- Output length: the mean per (model, strategy) on the training split.
- Linear: ridge regression in log space on the estimator's own features (numeric + one-hot, plus the prompt
  embedding for length), with a P90 from the 90th percentile of its training residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sysaware.estimators.embeddings import PromptEmbedder
from sysaware.estimators.features import FeatureSpec


@dataclass
class MeanBaselines:
    tpot_by_model: dict[str, float]  # ms
    tokens_by_model_strategy: dict[tuple[str, str], float]  # tokens
    tpot_overall: float
    tokens_overall: float

    @classmethod
    def fit(cls, train: pd.DataFrame) -> "MeanBaselines":
        return cls(
            train.groupby("model_id")["actual_tpot"].mean().to_dict(),
            train.groupby(["model_id", "strategy_id"])["output_tokens"].mean().to_dict(),
            float(train["actual_tpot"].mean()), float(train["output_tokens"].mean()),
        )

    def ttft(self, df: pd.DataFrame) -> np.ndarray:
        return df["ema_ttft_ms"].to_numpy(np.float64)

    def tpot(self, df: pd.DataFrame) -> np.ndarray:
        return df["model_id"].map(self.tpot_by_model).fillna(self.tpot_overall).to_numpy(np.float64)

    def tokens(self, df: pd.DataFrame) -> np.ndarray:
        keys = list(zip(df["model_id"], df["strategy_id"]))
        return np.array([self.tokens_by_model_strategy.get(k, self.tokens_overall) for k in keys], np.float64)


class LinearBaseline:
    """Ridge in log space over the same features as the network (the spec supplies transforms and vocabularies)."""

    def __init__(self, spec: FeatureSpec, embedder: PromptEmbedder | None = None, ridge: float = 1e-2):
        self.spec = spec
        self.embedder = embedder
        self.ridge = ridge
        self.coef: np.ndarray | None = None
        self.resid_p90: np.ndarray | None = None

    def _design(self, df: pd.DataFrame) -> np.ndarray:
        parts = [np.ones((len(df), 1)), self.spec.numeric_features(df).astype(np.float64)]
        codes = self.spec.categorical_codes(df)
        for j, c in enumerate(self.spec.categorical):
            parts.append(np.eye(len(self.spec.vocabularies[c]))[codes[:, j]])
        if self.spec.prompt_embedding:
            parts.append(self.embedder.embed(self.spec.embedding_texts(df)).astype(np.float64))
        return np.concatenate(parts, axis=1)

    def fit(self, train: pd.DataFrame) -> "LinearBaseline":
        x = self._design(train)
        y = np.log(np.maximum(train[self.spec.targets].to_numpy(np.float64), 1e-3))
        self.coef = np.linalg.solve(x.T @ x + self.ridge * np.eye(x.shape[1]), x.T @ y)
        self.resid_p90 = np.quantile(y - x @ self.coef, 0.9, axis=0)
        return self

    def predict(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(mean, p90), each (rows, targets) in ms / tokens."""
        log_mean = self._design(df) @ self.coef
        return np.exp(log_mean), np.exp(log_mean + self.resid_p90)
