"""Static per-(model, strategy, role) tables the baselines consult: expected quality and expected output length.

Both come from what the twin measurably does, not from invented numbers:

- **Quality** of a code-writing role is the model's P(correct) on MBPP: its pass rate in our re-grading of the
  recorded answers (``regrade.csv``, sandbox_correct, on the tasks outside MBPP's test split so evaluation tasks do
  not leak into the policy), or its published pass@1 for a model without recordings, moved by the strategy's logit
  shift from ``responder_params.yaml``: Q = sigmoid(logit(p) + shift(strategy, p)). A reviewer's quality is its
  verdict accuracy, low + (high - low) x p from the same file. A plan or a list of tests helps the next coder by the
  same shift whatever model wrote it (that is how the responder treats them), so every model and strategy has the
  same quality there (1.0): only price or latency separates them.
- **Length** is the mean number of output tokens the responder gives each role, per model and strategy, on a sample
  of MBPP train tasks (single-agent prompts; reviewers, fixers and decision makers are shown one Concise candidate
  from the same model). The learned length estimator F_len replaces it later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sysaware.config import PoolConfig
from sysaware.engines.twin.protocols import Responder
from sysaware.engines.twin.responder.twin_responder import ResponderParams, load_responder_params
from sysaware.engines.types import GenerationRequest
from sysaware.orchestration.messages import UpstreamOutput, build_messages
from sysaware.orchestration.topology import Slot
from sysaware.tasks.mbpp import MbppTask, Split, load_tasks, split_of
from sysaware.tasks.prompts import ROLES, RoleKind, Strategy
from sysaware.tasks.regrade import load_regrade_table

SUPPORT_QUALITY = 1.0  # plans and tests: the twin's help does not depend on who wrote them


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def base_pass_rates(pool: PoolConfig) -> dict[str, float]:
    """Each model's MBPP pass rate (fraction): re-graded recordings outside the test split, else published pass@1."""
    table = load_regrade_table()
    table = table[[split_of(int(t)) is not Split.TEST for t in table["task_id"]]]
    rates = {}
    for m in pool.models:
        rows = table[table["model"] == m.recorded_as] if m.recorded_as else table.iloc[0:0]
        graded = rows["sandbox_correct"].dropna()
        if len(graded):
            rates[m.name] = float(graded.mean())
        else:
            assert m.mbpp_pass_at_1 is not None  # the pool validator guarantees recordings or a published figure
            rates[m.name] = m.mbpp_pass_at_1 / 100.0
    return rates


@dataclass(frozen=True)
class QualityTable:
    """Expected quality in [0, 1] per (model, strategy, role)."""

    values: dict[tuple[str, Strategy, str], float]
    pass_rate: dict[str, float]  # the base MBPP pass rate behind each model's row, fraction

    def q(self, model: str, strategy: Strategy, role_id: str) -> float:
        return self.values[(model, Strategy(strategy), role_id)]

    @property
    def models(self) -> list[str]:
        return list(self.pass_rate)

    def best_model(self, strategy: Strategy = Strategy.CONCISE, role_id: str = "programmer") -> str:
        """The model with the highest quality for a role (ties: the first in pool order)."""
        return max(self.models, key=lambda m: self.q(m, strategy, role_id))

    @classmethod
    def from_twin(cls, pool: PoolConfig, params: ResponderParams | None = None) -> "QualityTable":
        params = params or load_responder_params()
        rates = base_pass_rates(pool)
        values = {}
        for model, p in rates.items():
            for strategy in Strategy:
                for role in ROLES.values():
                    if role.kind is RoleKind.CODE:
                        q = _sigmoid(_logit(p) + params.strategy_shift(strategy, p))
                    elif role.kind is RoleKind.REVIEW:
                        q = params.review_accuracy_low + (params.review_accuracy_high - params.review_accuracy_low) * p
                    else:
                        q = SUPPORT_QUALITY
                    values[(model, strategy, role.role_id)] = q
        return cls(values, rates)


@dataclass(frozen=True)
class LengthTable:
    """Mean output tokens per (model, strategy, role), measured on the responder."""

    values: dict[tuple[str, Strategy, str], float]

    def tokens(self, model: str, strategy: Strategy, role_id: str) -> float:
        return self.values[(model, Strategy(strategy), role_id)]

    @classmethod
    def measure(
        cls, pool: PoolConfig, responder: Responder, tasks: Sequence[MbppTask] | None = None, num_tasks: int = 12
    ) -> "LengthTable":
        if tasks is None:
            train = load_tasks(Split.TRAIN, sanitized=True)
            tasks = train[:: max(len(train) // num_tasks, 1)][:num_tasks]
        values = {}
        for model in pool.models:
            for task in tasks:
                # The candidate later roles are shown: this model's own Concise programmer answer.
                coder = Slot("answer", "programmer")
                candidate = responder.respond(
                    GenerationRequest("len", model.name, build_messages(task, coder, (), None, Strategy.CONCISE), seed=task.task_id)
                ).text
                for role in ROLES.values():
                    slot = Slot("probe", role.role_id)
                    upstream = (UpstreamOutput(coder, candidate),) if role.role_id in _SHOWN_A_CANDIDATE else ()
                    for strategy in Strategy:
                        messages = build_messages(task, slot, upstream, None, strategy)
                        n = responder.respond(GenerationRequest("len", model.name, messages, seed=task.task_id)).output_tokens
                        values.setdefault((model.name, strategy, role.role_id), []).append(n)
        return cls({k: float(np.mean(v)) for k, v in values.items()})


_SHOWN_A_CANDIDATE = frozenset({"reviewer", "bug_fixer", "decision_maker"})
