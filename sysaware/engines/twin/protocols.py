"""The two seams inside the twin: how long a step takes, and what the model says.

The scheduler core depends only on these protocols, so tests drive it with fakes, and the roofline step model and
the recorded-answer responder can be swapped or recalibrated without touching scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sysaware.engines.types import GenerationRequest


@dataclass(frozen=True)
class BatchShape:
    """The work of one scheduler step, summed over the requests scheduled in it.

    Attention cost depends on how many new tokens attend to how much context, so the shape keeps both sums.
    """

    prefill_tokens: int = 0  # new prompt tokens computed this step (sum of the prefill chunks), tokens
    prefill_attended: int = 0  # sum over prefill chunks of chunk_len x (tokens already cached + chunk_len), token pairs
    decode_seqs: int = 0  # requests decoding one token this step
    decode_context: int = 0  # sum of their context lengths (prompt + generated so far), tokens

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


class StepTimeModel(Protocol):
    """Duration of one engine step on the GPU(s) of one replica."""

    def step_time_s(self, shape: BatchShape) -> float:
        """Seconds for one forward pass over ``shape`` (including the fixed per-step overhead)."""
        ...

    def decode_run_s(self, num_seqs: int, context_total: int, num_steps: int) -> np.ndarray:
        """Durations of ``num_steps`` consecutive decode-only steps of ``num_seqs`` requests.

        ``context_total`` is the summed context at the first step; it grows by ``num_seqs`` each step. Lets the
        engine fast-forward many identical steps in one vectorised call.
        """
        ...


@dataclass(frozen=True)
class Response:
    """What the twin will say to a request, decided when the request arrives."""

    text: str  # the full answer
    output_tokens: int  # its length in tokens (before any max_tokens cap), >= 1

    def __deepcopy__(self, memo: dict) -> "Response":
        return self  # immutable: a forked simulation shares it


class Responder(Protocol):
    def respond(self, request: GenerationRequest) -> Response:
        """A pure function of (request.model, request.messages, request.seed)."""
        ...
