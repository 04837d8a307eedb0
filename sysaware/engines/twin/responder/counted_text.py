"""Text that knows its token count, so an answer assembled from cached pieces is never tokenized whole.

Why the sum is exact: the tokenizer (``engines/tokens.py``) is WordPiece behind BERT's pre-tokenizer, which
splits on whitespace before anything else, so no token spans a whitespace character and whitespace itself yields
none. Pieces joined by whitespace therefore count exactly the sum of their counts (tests/test_responder.py checks
it on every kind of answer against ``count_tokens`` of the whole text). Tokenizing a 1.5 kB answer takes about
0.6 ms; adding the cached counts of its pieces takes well under a microsecond.

A new piece is counted word by word, for the same reason: for printable ASCII the pre-tokenizer's words are the
runs of letters and digits and the single punctuation characters, and the tokenizer's count of each word is cached
(most words recur from piece to piece). A 100-character sentence then costs a few microseconds instead of ~50.
Text with other characters (accents, control characters, other scripts) goes to the tokenizer whole.

Each piece also keeps its text without whitespace (``squeezed``), which the hidden-assert filter searches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from sysaware.engines.tokens import count_tokens


@dataclass(frozen=True, slots=True)
class CountedText:
    text: str
    tokens: int  # count_tokens(text)
    squeezed: str  # text without any whitespace


def _squeeze(text: str) -> str:
    return "".join(text.split())


# BERT's normalizer lowercases, turns \t \n \r into spaces and deletes control characters; its pre-tokenizer splits
# on whitespace and isolates each punctuation character (every printable ASCII character that is not a letter, a
# digit or a space). Within this alphabet a text's words are therefore exactly the matches of _WORD.
_OUTSIDE_PLAIN_ASCII = re.compile(r"[^\x20-\x7e\t\n\r]")
_WORD = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")


@lru_cache(maxsize=1 << 17)
def _word_tokens(word: str) -> int:
    return count_tokens(word)


def token_count(text: str) -> int:
    """``count_tokens(text)``, word by word with cached words when the text is plain ASCII."""
    if _OUTSIDE_PLAIN_ASCII.search(text):
        return count_tokens(text)
    return sum(map(_word_tokens, _WORD.findall(text)))


@lru_cache(maxsize=1 << 16)
def counted(text: str) -> CountedText:
    """``text`` with its token count (counted once per distinct text)."""
    return CountedText(text, token_count(text), _squeeze(text))


def counted_all(texts: Sequence[str]) -> tuple[CountedText, ...]:
    return tuple(counted(t) for t in texts)


def join(separator: str, parts: Iterable[CountedText]) -> CountedText:
    """``separator.join(parts)`` with its count: the parts' counts add up because the separator is whitespace."""
    assert separator.isspace(), "only a whitespace separator keeps the counts additive"
    parts = tuple(parts)
    # List comprehensions rather than generators: str.join builds a list from a generator anyway, and answers are
    # joined once per request.
    return CountedText(
        separator.join([p.text for p in parts]),
        sum([p.tokens for p in parts]),
        "".join([p.squeezed for p in parts]),
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
