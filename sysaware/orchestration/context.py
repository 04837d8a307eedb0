"""What the policies see and return: the executor's step context and action, the planner's plan, and the static
resources (quality, length and idle-latency tables) a policy may consult.

The step context is the research notes' state S_t = [h_sem (+) v_sys (+) b_t]: the task and the role history
(h_sem), the telemetry snapshot (v_sys) and the remaining budget b_t = SLO - elapsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from sysaware.config import PoolConfig
from sysaware.data.profile import PoolProfile
from sysaware.data.telemetry import SystemSnapshot
from sysaware.engines.types import ChatMessage, GenerationRequest
from sysaware.orchestration.latency import IdleProfile
from sysaware.orchestration.tables import LengthTable, QualityTable
from sysaware.orchestration.topology import Slot, Topology
from sysaware.orchestration.trace import StepRecord
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import Strategy


class Action(NamedTuple):
    """a_t = (m_t, rho_t)."""

    model: str
    strategy: Strategy


def all_actions(models: Sequence[str]) -> tuple[Action, ...]:
    return tuple(Action(m, s) for m in models for s in Strategy)


class InvalidAction(ValueError):
    """A decider's action that is not one of the decision point's candidates."""


def check_action(action: Action | tuple[str, str], candidates: Sequence[Action], where: str = "") -> Action:
    """``action`` as an Action (a plain (model, strategy) pair with the strategy's name is accepted), if it is one
    of ``candidates``; ``InvalidAction`` naming the candidates otherwise. Every decider's action goes through here
    (the session calls it), so an executor, an external agent and an override are held to the same rule."""
    prefix = f"{where}: " if where else ""
    try:
        model, strategy = action
        checked = Action(model, Strategy(strategy))
    except (TypeError, ValueError) as e:
        raise InvalidAction(f"{prefix}{action!r} is not a (model, strategy) action: {e}") from None
    if checked not in candidates:
        listed = ", ".join(f"{a.model}/{a.strategy.value}" for a in candidates)
        raise InvalidAction(f"{prefix}{checked.model}/{checked.strategy.value} is not among the candidates: {listed}")
    return checked


class Forecaster(Protocol):
    """Knows how long calls would take if sent now (simulation only: it forks the simulated cluster)."""

    def forecast(self, requests: Sequence[GenerationRequest], horizon_s: float | None = None) -> list[float]:
        """End-to-end seconds of each request sent now, alone with the system as it is; ``inf`` for a request not
        finished ``horizon_s`` after now (None: run until each finishes)."""
        ...


@dataclass(frozen=True)
class StepContext:
    run_id: str
    task: MbppTask
    topology: str
    slot: Slot
    step: int  # the slot's index in the topological order
    history: tuple[StepRecord, ...]  # steps of this run already answered
    now_s: float
    slo_s: float
    remaining_budget_s: float  # b_t = SLO - elapsed, s
    steps_left: int  # sequential calls from this slot to the answer, this one included
    snapshot: SystemSnapshot
    candidates: tuple[Action, ...]
    prompt_tokens: int  # of the prompt under the first candidate strategy (strategies change it by a few tokens)
    messages_by_strategy: dict[Strategy, tuple[ChatMessage, ...]]
    seed: int  # of the call this step sends
    max_tokens: int
    forecaster: Forecaster | None = None
    plan_topology: Topology | None = None  # the request's topology (the RL budget shield splits b_t along it); None: unknown

    @property
    def role_id(self) -> str:
        return self.slot.role_id

    @property
    def budget_share_s(self) -> float:
        """The per-step share of the remaining budget: b_t split evenly over the sequential calls left."""
        return self.remaining_budget_s / max(self.steps_left, 1)

    def request(self, action: Action) -> GenerationRequest:
        """The request this step would send under ``action`` (what a forecaster probes)."""
        return GenerationRequest(
            request_id=f"probe/{self.run_id}/{self.slot.slot_id}/{action.model}/{action.strategy.value}",
            model=action.model,
            messages=self.messages_by_strategy[action.strategy],
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


@dataclass(frozen=True)
class Plan:
    """The planner's decision for one request: a topology with its slots' roles, and the budget if it set one."""

    topology: Topology
    slo_s: float | None = None  # the request's own budget, s; None: the default budget (budget.py)


@dataclass(frozen=True)
class PolicyResources:
    """Static knowledge policies may use (never the live load: that comes in the step context). All of it is a
    view of the pool's measured profile: no policy reads how a backend decides its answers."""

    pool: PoolConfig
    quality: QualityTable
    lengths: LengthTable
    idle: IdleProfile

    @property
    def models(self) -> list[str]:
        return [m.name for m in self.pool.models]

    def price_per_mtok_usd(self, model: str) -> float:
        return self.pool.model(model).price_per_mtok_usd

    @classmethod
    def from_profile(cls, pool: PoolConfig, profile: PoolProfile) -> "PolicyResources":
        """The tables of ``profile``, which must have been measured on ``pool`` (ProfileError otherwise)."""
        profile.check_pool(pool)
        models = [m.name for m in pool.models]
        return cls(
            pool,
            QualityTable.from_profile(profile, models),
            LengthTable.from_profile(profile, models),
            IdleProfile.from_profile(profile, models),
        )

    @classmethod
    def default_for(cls, pool: PoolConfig) -> "PolicyResources":
        """From the profile shipped for ``pool`` (``PoolProfile.default_for``)."""
        return cls.from_profile(pool, PoolProfile.default_for(pool))
