"""Feature specs: which columns an estimator reads, how they are transformed, and the vocabularies of its embeddings.

The spec is saved beside the weights; loading compares it with the code's spec so that an artifact trained on other
features (or asked about a model it never saw) fails with a message instead of predicting nonsense.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

SPEC_VERSION = 2  # latency: 2: step_remaining_ms, step_ms and step_tokens joined the latency features
# Per kind: an artifact directory is ``<kind>-v<version>`` (artifacts.default_dir). Length 3: F_len embeds the task
# part of the prompt (``tasks.prompts.task_in_prompt``) instead of the whole prompt, so a decision embeds a task once
# and every later step of it (whose prompt is new: it carries upstream answers) finds the embedding cached.
SPEC_VERSIONS = {"latency": SPEC_VERSION, "length": 3}
UNKNOWN = "<unk>"  # roles outside the vocabulary share this slot (new topologies add roles); models may not

# Replica state at submission + prompt size; all log1p-scaled except kv_utilization (already a fraction).
# The in-progress engine step (expected remaining time, the previous step's duration, its scheduled tokens) is
# beyond the list: a new request waits for that step to end, up to a whole step, and without it TTFT MAPE
# stalls near 17% whatever the model (the gauges cannot see where inside a step a request lands).
LATENCY_NUMERIC: tuple[str, ...] = (
    "queue_waiting", "queue_running", "kv_utilization", "ema_ttft_ms",
    "step_remaining_ms", "step_ms", "step_tokens", "total_input_tokens",
)
LATENCY_CATEGORICAL: tuple[str, ...] = ("role_id", "model_id")
LATENCY_TARGETS: tuple[str, ...] = ("actual_ttft", "actual_tpot")  # ms, learned as log(ms)
LENGTH_NUMERIC: tuple[str, ...] = ()
LENGTH_CATEGORICAL: tuple[str, ...] = ("role_id", "strategy_id", "model_id")
LENGTH_TARGETS: tuple[str, ...] = ("output_tokens",)  # tokens, learned as log(tokens)
LENGTH_EMBEDDED_TEXT = "task"
NOT_LOG_SCALED = frozenset({"kv_utilization"})
STRICT_VOCABULARIES = frozenset({"model_id", "strategy_id"})
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
EMBEDDED_TEXTS = ("prompt", "task")  # what of a prompt F_len embeds: all of it (spec v2) or its task (v3)
# F_len's task embeddings: name -> (model recorded in the spec, dimensions). "minilm" is the default and the reference;
# "static" is MiniLM distilled into a table (estimators/static_embedding.py), an opt-in with its own artifact.
LENGTH_EMBEDDINGS = {"minilm": (EMBEDDING_MODEL, EMBEDDING_DIM),
                     "static": ("model2vec:sentence-transformers/all-MiniLM-L6-v2:pca256:sif0.0001", 256)}


def length_embedding_of(spec: "FeatureSpec") -> str:
    """Which of LENGTH_EMBEDDINGS an F_len spec reads ("minilm" for an unknown one, so its check names the mismatch)."""
    for name, (model, dim) in LENGTH_EMBEDDINGS.items():
        if spec.prompt_embedding == model and spec.prompt_embedding_dim == dim:
            return name
    return "minilm"


def spec_version(kind: str) -> int:
    if kind not in SPEC_VERSIONS:
        raise FeatureSpecError(f"unknown estimator kind {kind!r}")
    return SPEC_VERSIONS[kind]


def embedded_text(prompt_text: str, what: str = "task") -> str:
    """The text of a prompt that F_len embeds (``what``: see EMBEDDED_TEXTS)."""
    if what == "task":
        from sysaware.tasks.prompts import task_in_prompt

        return task_in_prompt(prompt_text)
    return prompt_text


class FeatureSpecError(ValueError):
    """An artifact whose features do not match the code, or an input outside its vocabularies."""


@dataclass
class FeatureSpec:
    kind: str  # "latency" | "length"
    numeric: list[str]
    categorical: list[str]
    targets: list[str]
    vocabularies: dict[str, list[str]]
    quantiles: list[float]
    prompt_embedding: str | None = None  # sentence model name for F_len, None for F_lat
    prompt_embedding_dim: int = 0
    embedded_text: str | None = None  # what of the prompt is embedded (EMBEDDED_TEXTS); None without an embedding
    version: int = SPEC_VERSION
    # per numeric column: mean and std of the transformed value (train split)
    numeric_mean: list[float] = field(default_factory=list)
    numeric_std: list[float] = field(default_factory=list)
    # per target: mean and std of log(target) (train split), so the network learns standardised values
    target_mean: list[float] = field(default_factory=list)
    target_std: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "FeatureSpec":
        return cls(**data)

    # --- checks -------------------------------------------------------------------------------------------------
    def check_compatible(self, expected: "FeatureSpec", source: str) -> None:
        """Fail if this (loaded) spec reads other features than the code's spec for the same kind."""
        checked = ("kind", "version", "numeric", "categorical", "targets", "prompt_embedding", "prompt_embedding_dim",
                   "embedded_text")
        for name in checked:
            got, want = getattr(self, name), getattr(expected, name)
            if got != want:
                raise FeatureSpecError(
                    f"{source}: feature spec mismatch on {name!r}: artifact has {got!r}, this code expects {want!r}; "
                    "retrain with `sysaware train-estimators`"
                )

    # --- transforms ---------------------------------------------------------------------------------------------
    def embedding_texts(self, df: pd.DataFrame) -> list[str]:
        """Per row, the text whose embedding the network reads (``embedded_text`` of its prompt)."""
        texts = df["prompt_text"].astype(str)
        if self.embedded_text and self.embedded_text != "prompt":
            texts = texts.map(lambda t: embedded_text(t, self.embedded_text))
        return texts.tolist()

    def numeric_raw(self, df: pd.DataFrame) -> np.ndarray:
        cols = []
        for c in self.numeric:
            v = df[c].to_numpy(dtype=np.float64)
            cols.append(v if c in NOT_LOG_SCALED else np.log1p(np.maximum(v, 0.0)))
        return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0))

    def fit_normalisation(self, df: pd.DataFrame) -> None:
        raw = self.numeric_raw(df)
        self.numeric_mean = raw.mean(axis=0).tolist()
        self.numeric_std = np.maximum(raw.std(axis=0), 1e-6).tolist()
        y = np.log(np.maximum(df[self.targets].to_numpy(dtype=np.float64), 1e-3))
        self.target_mean = y.mean(axis=0).tolist()
        self.target_std = np.maximum(y.std(axis=0), 1e-6).tolist()

    def numeric_features(self, df: pd.DataFrame) -> np.ndarray:
        raw = self.numeric_raw(df)
        return ((raw - np.asarray(self.numeric_mean)) / np.asarray(self.numeric_std)).astype(np.float32)

    def categorical_codes(self, df: pd.DataFrame) -> np.ndarray:
        """One int column per categorical feature; an unknown model/strategy is an error, an unknown role <unk>."""
        out = np.zeros((len(df), len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            vocab = self.vocabularies[c]
            index = {v: i for i, v in enumerate(vocab)}
            values = df[c].astype(str).to_numpy()
            unknown = sorted({v for v in values if v not in index})
            if unknown and c in STRICT_VOCABULARIES:
                raise FeatureSpecError(
                    f"{self.kind} estimator: {c} {unknown} not in its vocabulary {vocab}; "
                    "retrain with `sysaware train-estimators` on data that includes it"
                )
            out[:, j] = [index.get(v, 0) for v in values]
        return out

    def targets_standardised(self, df: pd.DataFrame) -> np.ndarray:
        y = np.log(np.maximum(df[self.targets].to_numpy(dtype=np.float64), 1e-3))
        return ((y - np.asarray(self.target_mean)) / np.asarray(self.target_std)).astype(np.float32)

    def to_target_units(self, z: np.ndarray) -> np.ndarray:
        """Standardised log values (..., n_targets) -> ms / tokens."""
        return np.exp(z * np.asarray(self.target_std) + np.asarray(self.target_mean))


def build_vocabularies(df: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    return {c: [UNKNOWN] + sorted(df[c].astype(str).unique().tolist()) for c in columns}


def latency_spec(train_df: pd.DataFrame, quantiles: tuple[float, ...]) -> FeatureSpec:
    spec = FeatureSpec("latency", list(LATENCY_NUMERIC), list(LATENCY_CATEGORICAL), list(LATENCY_TARGETS),
                       build_vocabularies(train_df, list(LATENCY_CATEGORICAL)), list(quantiles))
    spec.fit_normalisation(train_df)
    return spec


def length_spec(train_df: pd.DataFrame, quantiles: tuple[float, ...], embedding: str = "minilm") -> FeatureSpec:
    model, dim = LENGTH_EMBEDDINGS[embedding]
    spec = FeatureSpec("length", list(LENGTH_NUMERIC), list(LENGTH_CATEGORICAL), list(LENGTH_TARGETS),
                       build_vocabularies(train_df, list(LENGTH_CATEGORICAL)), list(quantiles),
                       prompt_embedding=model, prompt_embedding_dim=dim,
                       embedded_text=LENGTH_EMBEDDED_TEXT, version=spec_version("length"))
    spec.fit_normalisation(train_df)
    return spec


def expected_spec(kind: str, embedding: str = "minilm") -> FeatureSpec:
    """The code's feature list for ``kind`` (vocabularies and normalisation come from the artifact); ``embedding``
    (LENGTH_EMBEDDINGS) is F_len's task embedding."""
    if kind == "latency":
        return FeatureSpec("latency", list(LATENCY_NUMERIC), list(LATENCY_CATEGORICAL), list(LATENCY_TARGETS), {}, [])
    if kind == "length":
        model, dim = LENGTH_EMBEDDINGS[embedding]
        return FeatureSpec("length", list(LENGTH_NUMERIC), list(LENGTH_CATEGORICAL), list(LENGTH_TARGETS), {}, [],
                           prompt_embedding=model, prompt_embedding_dim=dim,
                           embedded_text=LENGTH_EMBEDDED_TEXT, version=spec_version("length"))
    raise FeatureSpecError(f"unknown estimator kind {kind!r}")
