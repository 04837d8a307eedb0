"""Latency of a candidate call, estimated from telemetry: the seam the learned estimators F_lat/F_len replace.

    T_hat(m, rho) = W_q + TTFT_hat(m, L_in) + (L_out_hat(m, rho, role) - 1) x TPOT_hat(m)

- TPOT_hat: the EMA of recently finished requests' TPOT on that model while it is busy, never below its idle TPOT
  (decode is memory-bound, so one more request barely changes the batch's step time).
- TTFT_hat: the idle prefill time for L_in prompt tokens, or the replicas' EMA of TTFT if that is higher (it
  carries the prefill interference of a busy replica).
- W_q: requests already waiting are served at the completion rate (Little's law): waiting / completions per s.
  Zero when nothing waits (vLLM admits up to max_num_seqs at once).

The idle profile (TTFT at two prompt lengths, TPOT) is measured once per pool on an idle simulated cluster; on a
live pool it comes from the load sweep's N=1 row. L_out_hat comes from ``LengthTable``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sysaware.config import PoolConfig
from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult
from sysaware.data.telemetry import ModelLoad
from sysaware.tasks.mbpp import Split, load_tasks
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy, task_prompt


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
    def measure(cls, pool: PoolConfig, backend=None) -> "IdleProfile":
        """Two calls per model on an idle simulated cluster: a short and a long prompt."""
        from sysaware.sim.backend import SimBackend

        cluster = (backend or SimBackend(pool)).cluster()
        task = load_tasks(Split.TRAIN, sanitized=True)[0]
        short = task_prompt(task.text, task.example_test)
        long = "\n\n".join([short] * 12)  # a team's worth of context, ~12x the tokens
        models = {}
        for m in cluster.models:
            results: list[GenerationResult] = []
            for i, text in enumerate((short, long)):
                messages = (
                    ChatMessage("system", ROLES["programmer"].system_prompt),
                    ChatMessage("user", f"{text}\n\n{STRATEGY_INSTRUCTIONS[Strategy.CONCISE]}"),
                )
                cluster.submit(GenerationRequest(f"idle/{m}/{i}", m, messages, seed=0), on_complete=results.append)
                cluster.run()
            a, b = results
            slope = max((b.ttft_s - a.ttft_s) / max(b.prompt_tokens - a.prompt_tokens, 1), 0.0)
            tpots = [r.tpot_s for r in results if r.tpot_s is not None]
            models[m] = IdleLatency(
                ttft_base_s=max(a.ttft_s - slope * a.prompt_tokens, 0.0),
                ttft_per_prompt_token_s=slope,
                tpot_s=min(tpots) if tpots else a.e2e_s,
            )
        return cls(models)
