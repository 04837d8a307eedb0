"""Versioned artifact directories: weights, feature spec (with normalisation), hyper-parameters, metrics, data
fingerprint. Loading checks the spec against the code's and fails with a clear message on mismatch.

Layout of one directory (e.g. ``resources/estimators/latency-v2``, ``length-v3``)::

    weights.pt         torch state_dict of QuantileMLP
    feature_spec.json  columns, vocabularies, embedding model, quantiles, normalisation, spec version
    config.json        the TrainConfig that built the network (width, depth, ...)
    metrics.json       training history and held-out metrics
    data.json          fingerprint of the training data
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from sysaware.estimators.features import (FeatureSpec, FeatureSpecError, expected_spec, length_embedding_of,
                                          spec_version)
from sysaware.estimators.models import QuantileMLP

RESOURCE_DIR = Path(__file__).resolve().parent.parent / "resources" / "estimators"


def default_dir(kind: str, length_embedding: str = "minilm") -> Path:
    """The shipped artifact of ``kind`` ("latency" | "length"); F_len on the static embedding is ``length-v3-static``
    (``features.LENGTH_EMBEDDINGS``)."""
    suffix = "" if kind != "length" or length_embedding == "minilm" else f"-{length_embedding}"
    return RESOURCE_DIR / f"{kind}-v{spec_version(kind)}{suffix}"


def build_network(spec: FeatureSpec, cfg) -> QuantileMLP:
    return QuantileMLP(
        num_numeric=len(spec.numeric),
        vocab_sizes=[len(spec.vocabularies[c]) for c in spec.categorical],
        dense_dim=spec.prompt_embedding_dim,
        num_targets=len(spec.targets),
        num_quantiles=len(spec.quantiles),
        width=cfg.width, depth=cfg.depth, dropout=cfg.dropout, emb_dim=cfg.emb_dim,
    )


def save_artifact(directory: str | Path, spec: FeatureSpec, network: QuantileMLP, cfg, metrics: dict,
                  data: dict) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).clone() for k, v in network.state_dict().items()}
    torch.save(state, d / "weights.pt")
    (d / "feature_spec.json").write_text(json.dumps(spec.to_json(), indent=2))
    (d / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (d / "data.json").write_text(json.dumps(data, indent=2))
    return d


def load_artifact(directory: str | Path, kind: str):
    """(spec, network in eval mode, TrainConfig, metrics, data fingerprint) from ``directory``; FeatureSpecError on
    any mismatch."""
    from sysaware.estimators.train import TrainConfig

    d = Path(directory)
    for name in ("weights.pt", "feature_spec.json", "config.json"):
        if not (d / name).exists():
            raise FeatureSpecError(f"{d}: not a {kind} estimator artifact ({name} missing)")
    spec = FeatureSpec.from_json(json.loads((d / "feature_spec.json").read_text()))
    embedding = length_embedding_of(spec) if kind == "length" else "minilm"
    spec.check_compatible(expected_spec(kind, embedding), source=str(d))
    cfg = TrainConfig(**{k: (tuple(v) if k == "quantiles" else v)
                         for k, v in json.loads((d / "config.json").read_text()).items()})
    network = build_network(spec, cfg)
    network.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
    network.eval()
    metrics, data = ({} if not (d / name).exists() else json.loads((d / name).read_text())
                     for name in ("metrics.json", "data.json"))
    return spec, network, cfg, metrics, data
