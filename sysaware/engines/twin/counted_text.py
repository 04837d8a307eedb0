"""Text that knows its token count, so an answer assembled from cached pieces is never tokenized whole.

Why the sum is exact: the tokenizer (``engines/tokenizer.py``) is WordPiece behind BERT's pre-tokenizer, which
splits on whitespace before anything else, so no token spans a whitespace character and whitespace itself yields
none. Pieces joined by whitespace therefore count exactly the sum of their counts (tests/test_responder.py checks
it on every kind of answer against ``count_tokens`` of the whole text). Tokenizing a 1.5 kB answer takes about
0.6 ms; adding the cached counts of its pieces takes well under a microsecond.

Each piece also keeps its text without whitespace (``squeezed``), which the hidden-assert filter searches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from sysaware.engines.tokenizer import count_tokens, count_tokens_batch


@dataclass(frozen=True, slots=True)
class CountedText:
    text: str
    tokens: int  # count_tokens(text)
    squeezed: str  # text without any whitespace


def _squeeze(text: str) -> str:
    return "".join(text.split())


@lru_cache(maxsize=1 << 16)
def counted(text: str) -> CountedText:
    """``text`` with its token count (tokenized once per distinct text)."""
    return CountedText(text, count_tokens(text), _squeeze(text))


def counted_all(texts: Sequence[str]) -> tuple[CountedText, ...]:
    """Several texts tokenized in one batch (the callers cache the result, per task and solution)."""
    return tuple(CountedText(t, n, _squeeze(t)) for t, n in zip(texts, count_tokens_batch(list(texts)))) if texts else ()


def join(separator: str, parts: Iterable[CountedText]) -> CountedText:
    """``separator.join(parts)`` with its count: the parts' counts add up because the separator is whitespace."""
    assert separator.isspace(), "only a whitespace separator keeps the counts additive"
    parts = tuple(parts)
    return CountedText(
        separator.join(p.text for p in parts),
        sum(p.tokens for p in parts),
        "".join(p.squeezed for p in parts),
    )


def concatenate(separators_and_parts: Iterable[tuple[str, CountedText]]) -> CountedText:
    """Parts each preceded by its own whitespace separator ("" before the first)."""
    texts, tokens, squeezed = [], 0, []
    for separator, part in separators_and_parts:
        assert separator == "" or separator.isspace(), "only whitespace separators keep the counts additive"
        texts += (separator, part.text)
        tokens += part.tokens
        squeezed.append(part.squeezed)
    return CountedText("".join(texts), tokens, "".join(squeezed))
