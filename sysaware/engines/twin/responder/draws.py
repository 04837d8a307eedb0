"""The responder's randomness: every number is fixed by what it decides, through SHA-256.

Python's ``hash()`` changes with each process, so seeds never come from it: two interpreters give the same answer.
Two kinds of draws:

- ``uniform(*parts)``: one number fixed by its parts, e.g. ("outcome", model, task, seed), the same whatever else
  the prompt holds, so contexts are compared on common random numbers;
- ``RequestDraws.stream(purpose)``: a small generator seeded by (model, seed, purpose, messages), for the draws that
  may differ with every prompt (length noise, copy and review decisions).

The streams are ``SplitMix64`` generators in plain Python, not numpy's: a request draws one to three numbers, and
seeding a numpy ``Generator`` (about 13 us) cost more than the rest of answering a known prompt.
"""

from __future__ import annotations

import hashlib
import math

from sysaware.engines.types import ChatMessage, GenerationRequest

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's state increment (Steele, Lea & Flood 2014)
_TO_UNIT = 2.0**-53  # 53 random bits -> a double in [0, 1)
_TWO_PI = 2.0 * math.pi


def uniform(*parts: str) -> float:
    """A uniform number in [0, 1) fixed by ``parts`` (SHA-256, so stable across processes and runs)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


class SeededStream:
    """SplitMix64: a 64-bit counter through a bijective mixer; passes BigCrush, and seeding is one integer.

    Offers the two numpy ``Generator`` calls the responder uses: ``random()`` / ``random(n)`` and ``normal``.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def _next_u64(self) -> int:
        self._state = s = (self._state + _GOLDEN_GAMMA) & _MASK64
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def random(self, size: int | None = None):
        """A uniform float in [0, 1), or a list of ``size`` of them."""
        if size is None:
            return (self._next_u64() >> 11) * _TO_UNIT
        return [(self._next_u64() >> 11) * _TO_UNIT for _ in range(size)]

    def normal(self, loc: float = 0.0, scale: float = 1.0) -> float:
        """One normal draw (Box-Muller; the second value is not kept, so each call uses two uniforms)."""
        u1 = 1.0 - (self._next_u64() >> 11) * _TO_UNIT  # in (0, 1]: log() stays finite
        u2 = (self._next_u64() >> 11) * _TO_UNIT
        return loc + scale * math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)


def prompt_digest(model: str, messages: tuple[ChatMessage, ...] | list[ChatMessage]) -> bytes:
    """SHA-256 of (model, messages): hashed once per distinct prompt, then reused by every seed of it."""
    h = hashlib.sha256()
    h.update(model.encode())
    h.update(b"\x1f")
    for m in messages:
        h.update(m.role.encode())
        h.update(b"\x1e")
        h.update(m.content.encode())
        h.update(b"\x1f")
    return h.digest()


def request_generator(request: GenerationRequest, purpose: str, digest: bytes | None = None) -> SeededStream:
    """A generator seeded by (model, messages, seed, purpose) through SHA-256: stable across processes.

    ``digest`` is ``prompt_digest(request.model, request.messages)`` when the caller has it already.
    """
    if digest is None:
        digest = prompt_digest(request.model, request.messages)
    seed_bytes = hashlib.sha256(b"%b\x1f%d\x1f%b" % (digest, request.seed, purpose.encode())).digest()
    return SeededStream(int.from_bytes(seed_bytes[:8], "little"))


class RequestDraws:
    """The seeded draws of one request.

    Each stream is created on its first use: most answers (a Flash or Concise solution, a recorded answer replayed
    as it was) draw nothing from it. Created lazily or not, a stream yields the same numbers, so answers do not
    depend on which draws an earlier step needed.
    """

    __slots__ = ("request", "_digest", "_streams")

    def __init__(self, request: GenerationRequest, digest: bytes | None = None) -> None:
        self.request = request
        self._digest = digest  # prompt_digest(model, messages), if the caller keeps one per prompt
        self._streams: dict[str, SeededStream] = {}

    def stream(self, purpose: str) -> SeededStream:
        generator = self._streams.get(purpose)
        if generator is None:
            if self._digest is None:
                self._digest = prompt_digest(self.request.model, self.request.messages)
            generator = self._streams[purpose] = request_generator(self.request, purpose, self._digest)
        return generator

    def uniform(self, purpose: str, task_id: int) -> float:
        """A number fixed by (purpose, model, task, seed) alone, shared by every prompt of that task."""
        return uniform(purpose, self.request.model, str(task_id), str(self.request.seed))
