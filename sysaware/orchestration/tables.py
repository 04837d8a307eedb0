"""Static per-(model, strategy, role) tables the baselines consult: expected quality and expected output length.

Both are views of the pool's measured profile (``sysaware.data.profile.PoolProfile``), never of how a backend
decides its answers: quality is the pass rate of a probe workflow in which (model, strategy) plays the role, length
the mean output tokens of those calls (``pipelines/profile_pool.py`` measures them). The learned length estimator
F_len replaces the length table later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sysaware.data.profile import PoolProfile
from sysaware.tasks.prompts import ROLES, Strategy


def _cells(models: Sequence[str]) -> list[tuple[str, Strategy, str]]:
    return [(m, s, r) for m in models for s in Strategy for r in ROLES]


@dataclass(frozen=True)
class QualityTable:
    """Expected quality in [0, 1] per (model, strategy, role); ``models`` in pool order (the order breaks ties)."""

    values: dict[tuple[str, Strategy, str], float]

    def q(self, model: str, strategy: Strategy, role_id: str) -> float:
        return self.values[(model, Strategy(strategy), role_id)]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(m for m, _, _ in self.values))

    def best_model(self, strategy: Strategy = Strategy.CONCISE, role_id: str = "programmer") -> str:
        """The model with the highest quality for a role (ties: the first in pool order)."""
        return max(self.models, key=lambda m: self.q(m, strategy, role_id))

    @classmethod
    def from_profile(cls, profile: PoolProfile, models: Sequence[str] | None = None) -> "QualityTable":
        return cls({(m, s, r): profile.quality(m, s, r) for m, s, r in _cells(models or profile.model_names)})


@dataclass(frozen=True)
class LengthTable:
    """Mean output tokens per (model, strategy, role)."""

    values: dict[tuple[str, Strategy, str], float]

    def tokens(self, model: str, strategy: Strategy, role_id: str) -> float:
        return self.values[(model, Strategy(strategy), role_id)]

    @classmethod
    def from_profile(cls, profile: PoolProfile, models: Sequence[str] | None = None) -> "LengthTable":
        return cls({(m, s, r): profile.output_tokens(m, s, r) for m, s, r in _cells(models or profile.model_names)})
