"""Training F_lat and F_len: minibatch Adam on MSE (mean head) + pinball (quantile heads) in standardised log space,
keeping the epoch with the lowest held-out loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from sysaware.estimators.artifacts import build_network, load_artifact, save_artifact
from sysaware.estimators.data import fingerprint
from sysaware.estimators.embeddings import PromptEmbedder, length_embedder
from sysaware.estimators.features import FeatureSpec, latency_spec, length_embedding_of, length_spec
from sysaware.estimators.models import QuantileMLP, estimator_loss

OnEpoch = Callable[[int, dict], None]


@dataclass
class TrainConfig:
    lr: float = 1e-3  # Adam learning rate
    width: int = 128  # hidden units per layer
    depth: int = 2  # hidden layers
    dropout: float = 0.1
    emb_dim: int = 8  # size of each role / model / strategy embedding
    batch_size: int = 256
    epochs: int = 50
    seed: int = 0
    quantiles: tuple[float, ...] = (0.5, 0.9)
    weight_decay: float = 1e-5


@dataclass
class Tensors:
    numeric: torch.Tensor
    codes: torch.Tensor
    dense: torch.Tensor | None
    target: torch.Tensor | None


@dataclass
class TrainedEstimator:
    """A trained network with its spec; ``predict_frame`` answers in ms / tokens."""

    kind: str
    spec: FeatureSpec
    network: QuantileMLP
    cfg: TrainConfig
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    embedder: PromptEmbedder | None = None

    def save(self, directory: str | Path) -> Path:
        return save_artifact(directory, self.spec, self.network, self.cfg, self.metrics, self.data)

    @classmethod
    def load(cls, directory: str | Path, kind: str, embedder: PromptEmbedder | None = None) -> "TrainedEstimator":
        spec, network, cfg, metrics, data = load_artifact(directory, kind)
        return cls(kind, spec, network, cfg, metrics, data, embedder=embedder)

    def predict_tensors(self, t: Tensors) -> np.ndarray:
        """(rows, targets, 1 + quantiles) in ms / tokens: [mean, q_1, ..., q_k]."""
        self.network.eval()
        with torch.no_grad():
            z = self.network(t.numeric, t.codes, t.dense).numpy()
        # each column of z is a standardised log value of the same target: undo per target
        return self.spec.to_target_units(z.transpose(0, 2, 1)).transpose(0, 2, 1)

    def predict_frame(self, df: pd.DataFrame) -> np.ndarray:
        return self.predict_tensors(to_tensors(self.spec, df, self._embedder(), with_target=False))

    def _embedder(self) -> PromptEmbedder | None:
        if self.spec.prompt_embedding and self.embedder is None:
            self.embedder = length_embedder(length_embedding_of(self.spec))
        return self.embedder


def to_tensors(spec: FeatureSpec, df: pd.DataFrame, embedder: PromptEmbedder | None, with_target: bool) -> Tensors:
    dense = None
    if spec.prompt_embedding:
        dense = torch.from_numpy(embedder.embed(spec.embedding_texts(df)))
    return Tensors(
        numeric=torch.from_numpy(spec.numeric_features(df)),
        codes=torch.from_numpy(spec.categorical_codes(df)),
        dense=dense,
        target=torch.from_numpy(spec.targets_standardised(df)) if with_target else None,
    )


def _batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _mape(pred: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - actual) / np.maximum(actual, 1e-9)))


def _fit(kind: str, spec: FeatureSpec, train: Tensors, val: Tensors, val_actual: np.ndarray, cfg: TrainConfig,
         on_epoch: OnEpoch | None, embedder: PromptEmbedder | None) -> TrainedEstimator:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    network = build_network(spec, cfg)
    opt = torch.optim.Adam(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    q = torch.tensor(cfg.quantiles, dtype=torch.float32)
    est = TrainedEstimator(kind, spec, network, cfg, embedder=embedder)
    history: list[dict] = []
    best: tuple[float, dict] | None = None
    n = len(train.numeric)
    for epoch in range(cfg.epochs):
        network.train()
        total, count = 0.0, 0
        for idx in _batches(n, cfg.batch_size, gen):
            dense = train.dense[idx] if train.dense is not None else None
            loss = estimator_loss(network(train.numeric[idx], train.codes[idx], dense), train.target[idx], q)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        network.eval()
        with torch.no_grad():
            val_loss = float(estimator_loss(network(val.numeric, val.codes, val.dense), val.target, q))
        pred = est.predict_tensors(val)
        metrics = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss}
        metrics.update(_val_metrics(kind, pred, val_actual))
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, dict(metrics))
        if best is None or val_loss < best[0]:
            best = (val_loss, {k: v.clone() for k, v in network.state_dict().items()})
    network.load_state_dict(best[1])
    network.eval()
    est.metrics = {"history": history, "best": min(history, key=lambda m: m["val_loss"]), "config": vars(cfg) | {}}
    return est


def _val_metrics(kind: str, pred: np.ndarray, actual: np.ndarray) -> dict:
    if kind == "latency":
        return {"val_mape_ttft": _mape(pred[:, 0, 0], actual[:, 0]),
                "val_mape_tpot": _mape(pred[:, 1, 0], actual[:, 1]),
                "val_cover_p90_ttft": float(np.mean(actual[:, 0] <= pred[:, 0, -1])),
                "val_cover_p90_tpot": float(np.mean(actual[:, 1] <= pred[:, 1, -1]))}
    return {"val_mae_tokens": float(np.mean(np.abs(pred[:, 0, 0] - actual[:, 0]))),
            "val_cover_p90_tokens": float(np.mean(actual[:, 0] <= pred[:, 0, -1]))}


def train_latency(train_df: pd.DataFrame, val_df: pd.DataFrame, cfg: TrainConfig | None = None,
                  on_epoch: OnEpoch | None = None) -> TrainedEstimator:
    """F_lat: replica state + prompt size + role/model -> (TTFT, TPOT) in ms."""
    cfg = cfg or TrainConfig()
    spec = latency_spec(train_df, cfg.quantiles)
    est = _fit("latency", spec, to_tensors(spec, train_df, None, True), to_tensors(spec, val_df, None, True),
               val_df[spec.targets].to_numpy(np.float64), cfg, on_epoch, None)
    est.data = fingerprint(train_df)
    return est


def train_length(train_df: pd.DataFrame, val_df: pd.DataFrame, cfg: TrainConfig | None = None,
                 on_epoch: OnEpoch | None = None, embedder: PromptEmbedder | None = None,
                 embedding: str = "minilm") -> TrainedEstimator:
    """F_len: task embedding (``embedding``: features.LENGTH_EMBEDDINGS; ``embedder`` must compute it) +
    role/strategy/model -> output tokens."""
    cfg = cfg or TrainConfig()
    embedder = embedder or length_embedder(embedding)
    spec = length_spec(train_df, cfg.quantiles, embedding)
    est = _fit("length", spec, to_tensors(spec, train_df, embedder, True), to_tensors(spec, val_df, embedder, True),
               val_df[spec.targets].to_numpy(np.float64), cfg, on_epoch, embedder)
    est.data = fingerprint(train_df)
    return est


def load_estimator(directory: str | Path, kind: str) -> TrainedEstimator:
    return TrainedEstimator.load(directory, kind)


def load_training_data(data_dirs: list[str | Path]) -> pd.DataFrame:
    """One or more Phase 2 runs; a probe present in several (same probe_key) is kept once, from the first run."""
    from sysaware.estimators.data import load_phase2, training_rows

    frames = [load_phase2(d) for d in data_dirs]
    df = pd.concat(frames, ignore_index=True).drop_duplicates("probe_key", keep="first")
    return training_rows(df)


def train_estimators(df: pd.DataFrame, out_dir: str | Path, cfg: TrainConfig | None = None,
                     embedding_cache: str | Path | None = None, on_epoch: OnEpoch | None = None) -> dict[str, Path]:
    """Train both estimators on the train half of the report's prompt split (so the report's test rows stay unseen);
    early stopping uses a further prompt split of that half. Saves ``out_dir/{latency,length}-v<spec version of the kind>``."""
    from sysaware.estimators.data import split_by_prompt
    from sysaware.estimators.features import spec_version
    from sysaware.estimators.report import SPLIT_SEED, TEST_FRAC

    cfg = cfg or TrainConfig()
    train, _test = split_by_prompt(df, TEST_FRAC, SPLIT_SEED)
    fit, val = split_by_prompt(train, 0.1, SPLIT_SEED + 1)
    out = Path(out_dir)
    paths = {}
    def tagged(kind: str) -> OnEpoch | None:
        return (lambda e, m: on_epoch(e, {"kind": kind, **m})) if on_epoch else None

    lat = train_latency(fit, val, cfg, on_epoch=tagged("latency"))
    lat.data = fingerprint(train)
    paths["latency"] = lat.save(out / f"latency-v{spec_version('latency')}")
    length = train_length(fit, val, cfg, on_epoch=tagged("length"), embedder=PromptEmbedder(embedding_cache))
    length.data = fingerprint(train)
    paths["length"] = length.save(out / f"length-v{spec_version('length')}")
    return paths
