"""Latency of a candidate call, estimated from telemetry: the seam the learned estimators F_lat/F_len replace.

    T_hat(m, rho) = W_q + TTFT_hat(m, L_in) + (L_out_hat(m, rho, role) - 1) x TPOT_hat(m)

- TPOT_hat: the EMA of recently finished requests' TPOT on that model while it is busy, never below its idle TPOT
  (decode is memory-bound, so one more request barely changes the batch's step time).
- TTFT_hat: the idle prefill time for L_in prompt tokens, or the replicas' EMA of TTFT if that is higher (it
  carries the prefill interference of a busy replica).
- W_q: requests already waiting are served at the completion rate (Little's law): waiting / completions per s.
  Zero when nothing waits (vLLM admits up to max_num_seqs at once).

The idle profile (TTFT at two prompt lengths, TPOT) is part of the pool's measured profile (``PoolProfile``): two
calls per model on the idle pool, through whatever backend serves it (``pipelines/profile_pool.py``, which fits
them with ``fit_idle_latency``). L_out_hat comes from ``LengthTable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sysaware.data.profile import PoolProfile
from sysaware.data.telemetry import ModelLoad
from sysaware.engines.types import GenerationResult


@dataclass(frozen=True)
class IdleLatency:
    """One model alone on its replica."""

    ttft_base_s: float  # TTFT extrapolated to an empty prompt, s
    ttft_per_prompt_token_s: float  # prefill cost per prompt token, s
    tpot_s: float  # time per output token at batch size 1, s

    def ttft_s(self, prompt_tokens: int) -> float:
        return self.ttft_base_s + self.ttft_per_prompt_token_s * prompt_tokens


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


class LatencyEstimator(Protocol):
    def estimate_s(self, model: str, load: ModelLoad, prompt_tokens: int, output_tokens: float) -> float:
        """Expected end-to-end seconds of one call of ``model`` sent now."""
        ...


@dataclass(frozen=True)
class QueueingLatencyEstimator:
    """The formula in the module docstring."""

    idle: IdleProfile

    def estimate_s(self, model: str, load: ModelLoad, prompt_tokens: int, output_tokens: float) -> float:
        base = self.idle[model]
        busy = load.num_requests_running + load.num_requests_waiting > 0
        tpot = base.tpot_s
        ttft = base.ttft_s(prompt_tokens)
        if busy:
            if load.ema_tpot_ms is not None:
                tpot = max(tpot, load.ema_tpot_ms / 1e3)
            ttft = max(ttft, load.ema_ttft_ms / 1e3)
        wait = 0.0
        if load.num_requests_waiting and load.finished_per_s:
            wait = load.num_requests_waiting / load.finished_per_s
        return wait + ttft + max(output_tokens - 1.0, 0.0) * tpot
