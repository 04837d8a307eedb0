"""A static embedding of texts distilled from the offline MiniLM (model2vec's recipe): a text's vector is the mean of
per-word-piece vectors, a table lookup, ~0.1 ms, where MiniLM runs a transformer over the text (~48 ms at the
median, one core, for a new MBPP task on the shared 2-core machine).

The table is built once per machine from the installed MiniLM weights and kept under the user cache
(``static_table_path``, 15 MB; 166 s wall, 119 s CPU on the loaded 2-core machine): every word piece of MiniLM's vocabulary alone, as
``[CLS] piece [SEP]``, through MiniLM, its output mean-pooled over the three positions; PCA to ``STATIC_DIMS``
dimensions; each row scaled by a SIF weight of its vocabulary rank (Zipf's law, coefficient 1e-4); float16. This is
``model2vec.distill.distill(model_name=<MiniLM dir>, pca_dims=256)`` (model2vec 0.10.0) step for step, written out
here because model2vec's ``distill`` extra pins transformers < 5.4 and the project's venv has a newer one (measured:
model2vec's own distill, run offline in an isolated overlay, 84 s on one thread; its table and this one agree to
cosine 1.000000 on every row, and the 1,474 MBPP task texts' vectors to cosine 1.000000 against model2vec's
``StaticModel.encode``). Dropped like model2vec: ``[unusedN]``, ``[CLS]``, ``[SEP]``, ``[MASK]``; ``[UNK]`` is skipped
when embedding (a literal "[CLS]" in a text is read as that special piece and skipped, where model2vec spells it).

A text is embedded as model2vec's ``StaticModel.encode`` does: MiniLM's WordPiece tokenizer without special tokens,
at most ``STATIC_MAX_WORD_PIECES``, the mean of their rows, L2-normalised (a text with no known word piece: zeros).

Opt-in for F_len (``SYSAWARE_LENGTH_EMBEDDER=static``, see ``predictor.length_embedder_from_env``): F_len trained
on these vectors is its own artifact (``resources/estimators/length-v3-static``); the default F_len reads MiniLM.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

STATIC_DIMS = 256  # PCA dimensions (model2vec's default)
SIF_COEFFICIENT = 1e-4  # model2vec's default
STATIC_MAX_WORD_PIECES = 512  # model2vec's StaticModel.encode default max_length
_DROPPED = re.compile(r"\[unused\d+\]|\[CLS\]|\[SEP\]|\[MASK\]")
_BATCH = 512


def static_table_path() -> Path:
    """The table, named after the weights it came from (a new package version builds again)."""
    from sysaware.estimators.embeddings import minilm_weights_tag
    from sysaware.runs import cache_dir

    return cache_dir() / f"minilm-l6-v2-{minilm_weights_tag()}-static{STATIC_DIMS}.npz"


def _kept_ids(vocab: dict[str, int]) -> np.ndarray:
    """MiniLM word-piece ids kept in the table, in id order (the row order, hence the SIF rank)."""
    return np.array(sorted(i for token, i in vocab.items() if not _DROPPED.fullmatch(token)), dtype=np.int64)


def _token_outputs(ids: np.ndarray, cls_id: int, sep_id: int) -> np.ndarray:
    """(len(ids), 384) float32: MiniLM's output for ``[CLS] id [SEP]``, mean over the three positions."""
    import torch
    from transformers import AutoModel

    from sysaware.engines.tokens import minilm_model_dir

    bert = AutoModel.from_pretrained(str(minilm_model_dir())).eval()
    out = np.empty((len(ids), bert.config.hidden_size), np.float32)
    with torch.no_grad():
        for start in range(0, len(ids), _BATCH):
            chunk = torch.from_numpy(ids[start:start + _BATCH])
            seq = torch.stack([torch.full_like(chunk, cls_id), chunk, torch.full_like(chunk, sep_id)], dim=1)
            hidden = bert(input_ids=seq, attention_mask=torch.ones_like(seq),
                          token_type_ids=torch.zeros_like(seq)).last_hidden_state
            out[start:start + len(chunk)] = hidden.mean(dim=1).numpy()
    return np.nan_to_num(out)


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    """model2vec's PCA: eigenvectors of the covariance, largest first, each sign fixed by its largest score."""
    xc = x - x.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh((xc.T @ xc) / (len(x) - 1))
    components = eigvecs[:, ::-1][:, :dims].T
    scores = xc @ components.T
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(scores.shape[1])])
    return scores * signs


def sif_weights(n: int, coefficient: float = SIF_COEFFICIENT) -> np.ndarray:
    """model2vec's weights: a word piece's probability by Zipf's law from its rank, a / (a + p)."""
    inv_rank = 1.0 / np.arange(2, n + 2)
    return coefficient / (coefficient + inv_rank / inv_rank.sum())


def build_static_table(path: Path | None = None) -> Path:
    """Build the table once (see the module docstring); written atomically, like the ONNX export."""
    from tokenizers import Tokenizer

    from sysaware.engines.tokens import minilm_model_dir

    path = path or static_table_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json")).get_vocab(with_added_tokens=True)
    kept = _kept_ids(vocab)
    outputs = _token_outputs(kept, vocab["[CLS]"], vocab["[SEP]"]).astype(np.float64)
    vectors = (_pca(outputs, STATIC_DIMS) * sif_weights(len(kept))[:, None]).astype(np.float16)
    rows = np.full(max(vocab.values()) + 1, -1, np.int32)  # word-piece id -> row, -1 for a dropped piece
    rows[kept] = np.arange(len(kept), dtype=np.int32)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, vectors=vectors, rows=rows)
    os.replace(tmp, path)
    return path


class StaticEmbedder:
    """Unit-norm static embeddings of texts (``embed``: (n, STATIC_DIMS) float32), the table loaded (and built on a
    machine's first use) at the first call. Same interface as ``PromptEmbedder`` where F_len uses it; no memory of
    texts is needed (a lookup costs what a cache hit would)."""

    runtime = "static"
    precision = "fp16 table"
    threads = 1
    dim = STATIC_DIMS

    def __init__(self, table_path: str | Path | None = None, max_word_pieces: int = STATIC_MAX_WORD_PIECES):
        self._path = Path(table_path) if table_path else None
        self.max_word_pieces = max_word_pieces
        self._vectors: np.ndarray | None = None
        self._rows: np.ndarray | None = None
        self._tokenizer = None

    def _load(self) -> None:
        if self._vectors is not None:
            return
        from tokenizers import Tokenizer

        from sysaware.engines.tokens import minilm_model_dir

        with np.load(build_static_table(self._path)) as z:
            self._vectors = z["vectors"].astype(np.float32)
            rows = z["rows"].copy()
        tok = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(self.max_word_pieces)
        rows[tok.token_to_id("[UNK]")] = -1  # model2vec's encode drops the unknown piece
        self._rows = rows
        self._tokenizer = tok

    def warm_up(self) -> "StaticEmbedder":
        self.embed(["warm up"])
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        self._load()
        out = np.zeros((len(texts), STATIC_DIMS), np.float32)
        for i, text in enumerate(texts):
            rows = self._rows[self._tokenizer.encode(text, add_special_tokens=False).ids]
            rows = rows[rows >= 0]
            if len(rows):
                v = self._vectors[rows].mean(axis=0)
                out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out
