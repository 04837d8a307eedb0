"""Prompt sentence embeddings (offline MiniLM), cached by text: a text is embedded once per process.

A disk cache (npz keyed by text hash) lets training reuse the embeddings of a 100k-probe dataset across runs. On the
serving path the in-memory cache is bounded (``max_entries``, least recently used evicted: a server sees an endless
stream of new tasks).

Two runtimes compute the same vectors (max difference ~2e-7, float rounding):

- ``onnx`` (the default: ``onnxruntime`` and ``onnx`` are dependencies): MiniLM exported once to ONNX
  (``onnx_model_path``, a file under the user cache built at first use from the installed weights, ~90 MB, ~10 s) and
  run by ONNX Runtime with its own thread pool of ``threads`` threads, which never touches torch's. One thread, a new
  MBPP task's text (47 word pieces at the median): 1.7x faster than torch in CPU time on the shared 2-core machine;
- ``torch``: sentence-transformers, the fallback when onnxruntime is missing. ``threads`` then sets torch's
  intra-op threads around each call and restores them after (torch's pool is process-wide, so a caller's torch work
  running in another thread meanwhile would see it: one more reason to prefer ``onnx`` in a server).

``threads=1`` is the serving setting (``SystemEstimator``): a decision embeds one short text, where a second thread
buys nothing and a busy machine turns thread hand-offs into tail latency (p50 515 ms with torch's default threads
against 37 ms with one, on a loaded 2-core machine). ``threads=None`` keeps the runtime's default (training).

What a new text costs grows linearly with its word pieces: in ONNX Runtime, one thread, on that machine (an AMD EPYC
of 2017, AVX2, no VNNI): ~0.7-0.8 ms per word piece of CPU time, 85% of it in MatMul, near the core's fp32 peak.
A task is embedded once (``SystemEstimator`` remembers it); the first decision of a new task pays this.

Two precisions of the ONNX graph (``precision``):

- ``fp32``: the exported graph, the reference (and what F_len was trained on);
- ``int8``: the same graph with its MatMul weights quantised to int8 per output channel and activations quantised on
  the fly (``onnxruntime.quantization.quantize_dynamic``), built once from the fp32 file next to it
  (``quantized_onnx_path``). Cosine to fp32 >= 0.985 on MBPP's task texts (mean 0.993), yet F_len reads the
  difference: held-out length MAPE 19.10% -> 20.52% (+1.42 points, 95% CI [+0.95, +1.87], 7,560 probes), its mean
  head moved 3.2% at the median and 19.5% at p99; the RL executor's argmax agreed on 181 of 184 decision points. On
  the machine above (AVX2, no VNNI) its MatMuls are no faster than fp32's (profiled: 47 against 45 ms of a 50-word-
  piece text); CPUs with VNNI are where int8 usually pays (not measured here). Hence an opt-in:
  ``SYSAWARE_EMBEDDING_PRECISION=int8`` on the decision path; fp32 is the default and the reference.

``max_word_pieces`` caps what is read of a text (MiniLM's own window is 256). The serving path reads the whole
window: a cap of 128 changes no held-out F_len answer beyond noise and bounds a long task's cost (MBPP test split:
p99 153 word pieces, max 1,304), but it moved no p99 measurably and would change F_len on the longest tasks
(``predictor.SERVING_MAX_WORD_PIECES``).

The static embedding (``static_embedding.StaticEmbedder``, ``length_embedder("static")``) is MiniLM distilled into
a word-piece table: a table lookup instead of a transformer, 0.50 ms of CPU per MBPP task text against 38 ms for
ONNX MiniLM (76x, one core, a busy process beside it). F_len on it (artifact ``length-v3-static``, the shipped recipe
otherwise) is within noise of MiniLM's on new prompts of known tasks (held-out MAE 26.03 against 25.71 tokens,
+0.33, 95% CI [-0.31, +1.01], paired by task; MAPE 18.84% against 19.10%) and no better or worse that one split can
tell on unseen tasks (+3.3 tokens, CI [-8.2, +20.5]); the first decision of a new task then costs CPU p50 1.8 /
p99 2.3 ms for all 15 candidates (MiniLM: 41 / 127). An opt-in (``SYSAWARE_LENGTH_EMBEDDER=static``): the RL policy
was trained on MiniLM's F_len, so the default stays until it is retrained (resources/estimators/SOURCE.md)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from sysaware.estimators.lru import LRUCache

EMBEDDING_DIM = 384
MAX_SEQ_LENGTH = 256  # word pieces MiniLM reads, [CLS] and [SEP] included (sentence_bert_config.json)
RUNTIMES = ("auto", "onnx", "torch")
PRECISIONS = ("fp32", "int8")  # of the ONNX graph's MatMul weights (see the module docstring)
PRECISION_ENV = "SYSAWARE_EMBEDDING_PRECISION"  # the decision path's precision, when the caller names none


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


from sysaware.runs import cache_dir  # noqa: E402  (one home; re-exported for callers of this module)


def minilm_weights_tag() -> str:
    """Names what is derived from the installed MiniLM weights (a new package version derives again)."""
    from sysaware.engines.tokens import minilm_model_dir

    weights = minilm_model_dir() / "model.safetensors"
    stat = weights.stat()
    return hashlib.sha256(f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def onnx_model_path() -> Path:
    """The exported encoder, named after the weights it came from."""
    return cache_dir() / f"minilm-l6-v2-{minilm_weights_tag()}.onnx"


def quantized_onnx_path() -> Path:
    """The int8 graph, next to the fp32 one it is built from (same weights tag)."""
    fp32 = onnx_model_path()
    return fp32.with_name(f"{fp32.stem}-int8.onnx")


def precision_from_env() -> str:
    """``SYSAWARE_EMBEDDING_PRECISION`` (fp32 when unset); an unknown value is an error naming the variable."""
    value = os.environ.get(PRECISION_ENV, "fp32").strip().lower() or "fp32"
    if value not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={value!r}: expected one of {list(PRECISIONS)}")
    return value


def quantize_onnx(path: Path | None = None) -> Path:
    """Build the int8 graph once (from the fp32 graph, exporting that first if needed): dynamic quantisation, int8
    weights per output channel (per-tensor weights moved embeddings to cosine 0.91 of fp32, per channel 0.985).
    Written atomically, like the export."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = path or quantized_onnx_path()
    if path.exists():
        return path
    source = export_onnx()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    # the exported graph's intermediate tensors carry no types for the quantiser's shape inference: all are float
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.replace(tmp, path)
    return path


def export_onnx(path: Path | None = None) -> Path:
    """MiniLM's encoder + mean pooling + L2 normalisation as one ONNX graph (inputs: input_ids, attention_mask;
    output: the unit-norm embedding). Written atomically, so processes racing to build it never read half a file."""
    import torch
    from transformers import AutoModel

    from sysaware.engines.tokens import minilm_model_dir

    path = path or onnx_model_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    bert = AutoModel.from_pretrained(str(minilm_model_dir())).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    ids = torch.ones(1, 8, dtype=torch.long)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Pooled().eval(), (ids, torch.ones_like(ids)), str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
    os.replace(tmp, path)
    return path


class _OnnxEncoder:
    """The exported graph in ONNX Runtime, with the package's WordPiece tokenizer truncating as MiniLM does."""

    def __init__(self, threads: int | None, precision: str = "fp32", max_word_pieces: int = MAX_SEQ_LENGTH) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from sysaware.engines.tokens import minilm_model_dir

        path = quantize_onnx() if precision == "int8" else export_onnx()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
        tok.enable_truncation(max_word_pieces)
        tok.no_padding()
        self._tokenizer = tok

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts) if len(texts) > 1 else [self._tokenizer.encode(texts[0])]
        out = np.empty((len(texts), EMBEDDING_DIM), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # similar lengths pad little
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            out[rows] = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out


class _TorchEncoder:
    def __init__(self, threads: int | None, max_word_pieces: int = MAX_SEQ_LENGTH) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        from sysaware.engines.tokens import minilm_model_dir

        self._threads = threads
        self._model = SentenceTransformer(str(minilm_model_dir()), device="cpu")
        self._model.max_seq_length = max_word_pieces

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        before = torch.get_num_threads()
        if self._threads and self._threads != before:
            torch.set_num_threads(self._threads)
        try:
            return self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False).astype(np.float32)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def length_embedder(embedding: str, **kwargs):
    """The embedder of F_len's ``embedding`` (``features.LENGTH_EMBEDDINGS``): MiniLM (``PromptEmbedder(**kwargs)``) or
    the static table (``static_embedding.StaticEmbedder``, which takes no options: a lookup has no threads)."""
    if embedding == "static":
        from sysaware.estimators.static_embedding import StaticEmbedder

        return StaticEmbedder()
    if embedding != "minilm":
        from sysaware.estimators.features import LENGTH_EMBEDDINGS

        raise ValueError(f"unknown F_len embedding {embedding!r}; known: {list(LENGTH_EMBEDDINGS)}")
    return PromptEmbedder(**kwargs)


class PromptEmbedder:
    """Unit-norm MiniLM embeddings of texts, remembered per text (and on disk with ``cache_path``).

    ``precision`` (``PRECISIONS``) applies to the onnx runtime; int8 asked of torch (or of auto without onnxruntime)
    is an error rather than a silent fp32. ``max_word_pieces`` (<= 256, [CLS] and [SEP] included) caps what is read
    of each text. The disk cache is keyed by text only: give each precision or cap its own ``cache_path``."""

    def __init__(self, cache_path: str | Path | None = None, threads: int | None = None, runtime: str = "auto",
                 max_entries: int | None = None, precision: str = "fp32", max_word_pieces: int = MAX_SEQ_LENGTH):
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown embedding runtime {runtime!r}; known: {list(RUNTIMES)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown embedding precision {precision!r}; known: {list(PRECISIONS)}")
        if not 3 <= max_word_pieces <= MAX_SEQ_LENGTH:
            raise ValueError(f"max_word_pieces must be in [3, {MAX_SEQ_LENGTH}], got {max_word_pieces}")
        if runtime == "auto":
            runtime = "onnx" if onnx_available() else "torch"
        if precision != "fp32" and runtime != "onnx":
            raise ValueError(f"embedding precision {precision!r} needs the onnx runtime (onnxruntime installed), "
                             f"got runtime {runtime!r}")
        self.runtime = runtime
        self.threads = threads
        self.precision = precision
        self.max_word_pieces = max_word_pieces
        self._encoder: _OnnxEncoder | _TorchEncoder | None = None
        # text_key -> vector; bounded on the serving path (``max_entries``), unbounded for training's known texts
        self._cache: LRUCache[str, np.ndarray] = LRUCache(max_entries)
        self._cache_path = Path(cache_path) if cache_path else None
        if self._cache_path and self._cache_path.exists():
            with np.load(self._cache_path) as z:
                for k in z.files:
                    self._cache.put(k, z[k])

    def _load(self):
        if self._encoder is None:
            self._encoder = (_OnnxEncoder(self.threads, self.precision, self.max_word_pieces) if self.runtime == "onnx"
                             else _TorchEncoder(self.threads, self.max_word_pieces))
        return self._encoder

    def warm_up(self) -> "PromptEmbedder":
        """Load the encoder now (and export it on first use), so the first real call does not pay for it."""
        self._load().encode(["warm up"])
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32, unit-normalised; only texts not seen before go through the model."""
        keys = [text_key(t) for t in texts]
        found = {k: v for k in keys if (v := self._cache.get(k)) is not None}
        todo = {k: t for k, t in zip(keys, texts) if k not in found}
        if todo:
            vecs = self._load().encode(list(todo.values()))
            for k, v in zip(todo, vecs):
                found[k] = v.astype(np.float32)
                self._cache.put(k, found[k])
            if self._cache_path:
                self._cache_path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(self._cache_path, **dict(self._cache.items()))
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, EMBEDDING_DIM), np.float32)
