"""Each model's latency alone on an idle pool: the floor the latency estimators (``estimators/latency.py``) start
from, and what the default budget is made of (``budget.py``).

    TTFT(L_in) = ttft_base_s + ttft_per_prompt_token_s x L_in        TPOT = tpot_s (batch size 1)

It is part of the pool's measured profile (``PoolProfile``): two calls per model on the idle pool, a short and a
long prompt, through whatever backend serves it (``pipelines/profile_pool.py``, fitted by ``fit_idle_latency``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sysaware.data.profile import PoolProfile
from sysaware.engines.types import GenerationResult


@dataclass(frozen=True)
class IdleLatency:
    """One model alone on its replica."""

    ttft_base_s: float  # TTFT extrapolated to an empty prompt, s
    ttft_per_prompt_token_s: float  # prefill cost per prompt token, s
    tpot_s: float  # time per output token at batch size 1, s

    def ttft_s(self, prompt_tokens: int) -> float:
        return self.ttft_base_s + self.ttft_per_prompt_token_s * prompt_tokens

    def call_s(self, prompt_tokens: int, output_tokens: float) -> float:
        """A whole call alone: the first token, then one TPOT per further token."""
        return self.ttft_s(prompt_tokens) + max(output_tokens - 1.0, 0.0) * self.tpot_s


@dataclass(frozen=True)
class IdleProfile:
    models: dict[str, IdleLatency]

    def __getitem__(self, model: str) -> IdleLatency:
        return self.models[model]

    @classmethod
    def from_profile(cls, profile: PoolProfile, models: Sequence[str] | None = None) -> "IdleProfile":
        out = {}
        for m in models or profile.model_names:
            idle = profile.idle(m)
            out[m] = IdleLatency(idle.ttft_base_s, idle.ttft_per_prompt_token_s, idle.tpot_s)
        return cls(out)


def fit_idle_latency(short: GenerationResult, long: GenerationResult) -> IdleLatency:
    """A model's idle latency from two calls sent to it alone, a short and a long prompt: TTFT is a line through
    the two (prefill is linear in prompt tokens at these lengths), TPOT the smaller of their per-token times."""
    slope = max((long.ttft_s - short.ttft_s) / max(long.prompt_tokens - short.prompt_tokens, 1), 0.0)
    tpots = [r.tpot_s for r in (short, long) if r.tpot_s is not None]
    return IdleLatency(
        ttft_base_s=max(short.ttft_s - slope * short.prompt_tokens, 0.0),
        ttft_per_prompt_token_s=slope,
        tpot_s=min(tpots) if tpots else short.e2e_s,
    )
