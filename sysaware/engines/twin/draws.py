"""The responder's randomness: every number is fixed by what it decides, through SHA-256.

Python's ``hash()`` changes with each process, so seeds never come from it: two interpreters give the same answer.
Two kinds of draws:

- ``uniform(*parts)``: one number fixed by its parts, e.g. ("outcome", model, task, seed), the same whatever else
  the prompt holds, so contexts are compared on common random numbers;
- ``RequestDraws.stream(purpose)``: a generator seeded by (model, seed, purpose, messages), for the draws that may
  differ with every prompt (length noise, copy and review decisions).
"""

from __future__ import annotations

import hashlib

import numpy as np

from sysaware.engines.types import GenerationRequest


def uniform(*parts: str) -> float:
    """A uniform number in [0, 1) fixed by ``parts`` (SHA-256, so stable across processes and runs)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def request_generator(request: GenerationRequest, purpose: str) -> np.random.Generator:
    """A generator seeded by (model, seed, purpose, messages) through SHA-256: stable across processes."""
    h = hashlib.sha256()
    for part in (request.model, str(request.seed), purpose):
        h.update(part.encode())
        h.update(b"\x1f")
    for m in request.messages:
        h.update(m.role.encode())
        h.update(b"\x1e")
        h.update(m.content.encode())
        h.update(b"\x1f")
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


class RequestDraws:
    """The seeded draws of one request.

    Each stream is created on its first use: seeding a numpy generator costs about 8 us, and most answers (a Flash
    or Concise solution, a recorded answer replayed as it was) draw nothing from it. Created lazily or not, a stream
    yields the same numbers, so answers do not depend on which draws an earlier step needed.
    """

    __slots__ = ("request", "_streams")

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self._streams: dict[str, np.random.Generator] = {}

    def stream(self, purpose: str) -> np.random.Generator:
        generator = self._streams.get(purpose)
        if generator is None:
            generator = self._streams[purpose] = request_generator(self.request, purpose)
        return generator

    def uniform(self, purpose: str, task_id: int) -> float:
        """A number fixed by (purpose, model, task, seed) alone, shared by every prompt of that task."""
        return uniform(purpose, self.request.model, str(task_id), str(self.request.seed))
