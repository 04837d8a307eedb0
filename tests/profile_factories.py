"""Hand-made pool profiles for policy tests: every number chosen here, none measured, none read from a backend.

``hand_made_profile(pool)`` gives each model a code pass rate (``CODE_PASS_RATE``: strong codellama and mixtral,
weak mistral, wizardlm and yi), moved a little by the strategy (Flash slightly worse; DeepThink helps a strong
coder and hurts a weak one), a reviewer quality that grows with it, and flat support roles (a plan or tests help
the next coder the same whoever wrote them, so only price or latency separates them).
"""

from __future__ import annotations

from collections.abc import Callable

from sysaware.config import PoolConfig
from sysaware.data.profile import (
    IdleLatencyMeasurement,
    ModelProfile,
    PoolProfile,
    PoolRef,
    Provenance,
    RoleMeasurement,
    pool_fingerprint,
    wilson_ci95,
)
from sysaware.tasks.prompts import ROLES, RoleKind, Strategy

CODE_PASS_RATE = {
    "mistral-7b-instruct": 0.38,
    "wizardlm-13b": 0.39,
    "codellama-34b-instruct": 0.57,
    "yi-34b-chat": 0.41,
    "mixtral-8x7b-instruct": 0.55,
}
SUPPORT_QUALITY = 0.5
TOKENS = {Strategy.FLASH: 50.0, Strategy.CONCISE: 100.0, Strategy.DEEPTHINK: 400.0}  # output tokens, every model
QUALITY_N = 100  # the sample count each hand-made cell claims
IDLE = IdleLatencyMeasurement(ttft_base_s=0.1, ttft_per_prompt_token_s=0.0, tpot_s=0.02)  # every model


def code_quality(p: float, strategy: Strategy) -> float:
    if strategy is Strategy.FLASH:
        return p - 0.02
    if strategy is Strategy.DEEPTHINK:
        return p + 0.015 if p > 0.5 else p - 0.025
    return p


def role_quality(model: str, strategy: Strategy, role_id: str) -> float:
    p = CODE_PASS_RATE.get(model, 0.4)
    kind = ROLES[role_id].kind
    if kind is RoleKind.CODE:
        return code_quality(p, strategy)
    if kind is RoleKind.REVIEW:
        return 0.6 + 0.3 * p
    return SUPPORT_QUALITY


def hand_made_profile(
    pool: PoolConfig,
    quality: Callable[[str, Strategy, str], float] = role_quality,
    tokens: Callable[[str, Strategy, str], float] = lambda m, s, r: TOKENS[s],
    idle: IdleLatencyMeasurement | Callable[[str], IdleLatencyMeasurement] = IDLE,
) -> PoolProfile:
    """Every cell from ``quality`` and ``tokens``; idle latency ``idle`` (one for all models, or per model)."""
    models = {}
    for m in pool.models:
        roles = {}
        for role in ROLES:
            cells = {}
            for s in Strategy:
                q = quality(m.name, s, role)
                passes = round(q * QUALITY_N)
                lo, hi = wilson_ci95(passes, QUALITY_N)
                cells[s] = RoleMeasurement(
                    quality=q, quality_n=QUALITY_N, quality_ci95=(min(lo, q), max(hi, q)),
                    output_tokens_mean=tokens(m.name, s, role), output_tokens_n=10,
                )
            roles[role] = cells
        models[m.name] = ModelProfile(idle=idle(m.name) if callable(idle) else idle, roles=roles)
    provenance = Provenance(
        command="hand-made (tests/profile_factories.py)", created_utc="2024-01-01T00:00:00+00:00", sysaware_version="test",
        backend="none", data_fingerprint="none", seed=0, task_ids=[], reference_model=pool.models[0].name,
        reference_strategy=Strategy.CONCISE, quality_probes={r: "hand-made" for r in ROLES}, lengths_source="hand-made",
    )
    return PoolProfile(pool=PoolRef(name=pool.name, fingerprint=pool_fingerprint(pool)), provenance=provenance, models=models)
