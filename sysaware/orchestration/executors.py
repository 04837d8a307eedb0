"""Executors: at every agent step, choose a_t = (model, strategy). The base class keeps the bookkeeping (counts the
choices); each baseline only decides; the session checks every choice against the step's candidates, as it does an
external agent's (session.py). Registered by name (``make_executor``).

| name         | sees load | chooses                                                                         |
|--------------|-----------|---------------------------------------------------------------------------------|
| random       | no        | uniformly among the candidates                                                  |
| fixed        | no        | one model, one strategy (default: the cheapest model, Concise)                 |
| best_single  | no        | the model with the best code quality, one strategy, for every role              |
| static_qmp   | no        | argmax Q(m, rho, role) - alpha x price(m) x expected tokens (MasRouter style)    |
| least_queue  | yes       | llm-d style: fewest requests in the system + least KV use; fixed strategy       |
| greedy       | yes       | the best Q whose estimated latency fits the per-step share of the budget;        |
|              |           | latency from the learned estimators (default) or the queueing formula          |
| oracle       | yes       | as greedy, with each candidate's true latency from forking the simulation       |
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections import Counter
from functools import cached_property

from sysaware.orchestration.context import Action, PolicyResources, StepContext
from sysaware.estimators.latency import LatencyEstimator, StepQuery, make_latency_estimator
from sysaware.tasks.prompts import Strategy


class Executor(ABC):
    name: str = ""
    load_aware: bool = False  # whether the decision reads the telemetry snapshot
    at_option: str = "estimator"  # the keyword that ``name@value`` sets (make_executor)

    def __init__(self, resources: PolicyResources | None, seed: int = 0) -> None:
        self.resources = resources  # None for executors that consult no table (random)
        self.seed = seed
        self.decisions = 0
        self.chosen: Counter[Action] = Counter()

    def act(self, ctx: StepContext) -> Action:
        model, strategy = self.choose(ctx)
        action = Action(model, Strategy(strategy))
        self.decisions += 1
        self.chosen[action] += 1
        return action

    @abstractmethod
    def choose(self, ctx: StepContext) -> Action:
        """The decision; ``act`` records it (the session checks it is among the candidates)."""

    def rng(self, ctx: StepContext) -> random.Random:
        """A generator per (executor, seed, run, slot): a run's choices do not depend on the order runs interleave."""
        return random.Random(f"{self.name}/{self.seed}/{ctx.run_id}/{ctx.slot.slot_id}")

    def describe(self) -> str:
        return self.name


class RandomExecutor(Executor):
    name = "random"

    def choose(self, ctx: StepContext) -> Action:
        return self.rng(ctx).choice(ctx.candidates)


class FixedExecutor(Executor):
    name = "fixed"

    def __init__(self, resources: PolicyResources, seed: int = 0, model: str | None = None, strategy: Strategy = Strategy.CONCISE) -> None:
        super().__init__(resources, seed)
        self.model = model or min(resources.models, key=resources.price_per_mtok_usd)
        self.strategy = Strategy(strategy)

    def choose(self, ctx: StepContext) -> Action:
        return Action(self.model, self.strategy)

    def describe(self) -> str:
        return f"{self.name}({self.model}, {self.strategy.value})"


class BestSingleModelExecutor(FixedExecutor):
    """Every role on the model with the best code quality (MasRouter's "single best LLM" baseline)."""

    name = "best_single"

    def __init__(self, resources: PolicyResources, seed: int = 0, strategy: Strategy = Strategy.CONCISE) -> None:
        super().__init__(resources, seed, resources.quality.best_model(Strategy(strategy)), strategy)


class StaticQualityPriceExecutor(Executor):
    """max Q(m, rho, role) - alpha x cost: cost is the call's expected price in USD per thousand calls,
    price_per_mtok x (prompt + expected output tokens) / 1000. Never looks at load."""

    name = "static_qmp"

    def __init__(self, resources: PolicyResources, seed: int = 0, alpha: float = 0.1) -> None:
        super().__init__(resources, seed)
        self.alpha = alpha  # quality points given up per USD per thousand calls

    def score(self, ctx: StepContext, a: Action) -> float:
        r = self.resources
        tokens = ctx.prompt_tokens + r.lengths.tokens(a.model, a.strategy, ctx.role_id)
        cost = r.price_per_mtok_usd(a.model) * tokens / 1000.0
        return r.quality.q(a.model, a.strategy, ctx.role_id) - self.alpha * cost

    def choose(self, ctx: StepContext) -> Action:
        return max(ctx.candidates, key=lambda a: self.score(ctx, a))


class LeastQueueExecutor(Executor):
    """llm-d's scorers across models: queue (requests in the system per replica, min-max normalised, fewer is
    better) plus KV-cache headroom (1 - utilisation), weighted; the strategy is fixed. Ties: pool order."""

    name = "least_queue"
    load_aware = True

    def __init__(
        self, resources: PolicyResources, seed: int = 0, strategy: Strategy = Strategy.CONCISE, queue_weight: float = 1.0, kv_weight: float = 1.0
    ) -> None:
        super().__init__(resources, seed)
        self.strategy = Strategy(strategy)
        self.queue_weight = queue_weight
        self.kv_weight = kv_weight

    def choose(self, ctx: StepContext) -> Action:
        models = list(dict.fromkeys(a.model for a in ctx.candidates))
        loads = {m: ctx.snapshot.load(m) for m in models}
        queue = {m: loads[m].in_system_per_replica for m in models}
        lo, hi = min(queue.values()), max(queue.values())

        def score(m: str) -> float:
            q_score = 1.0 - (queue[m] - lo) / (hi - lo) if hi > lo else 1.0
            return self.queue_weight * q_score + self.kv_weight * (1.0 - loads[m].kv_cache_usage_perc)

        best = max(models, key=score)  # max keeps the first of equal scores: pool order
        return Action(best, self.strategy)


class GreedySystemAwareExecutor(Executor):
    """The best expected quality whose latency fits the per-step share of the remaining budget (b_t / steps
    left); ties go to the faster candidate; when nothing fits, the fastest. Latency comes from ``estimator``
    (estimators/latency.py): ``auto`` (the learned estimators where they know the pool's models, else the queueing
    formula), ``learned``, ``queueing``, or an estimator object."""

    name = "greedy"
    load_aware = True

    def __init__(self, resources: PolicyResources, seed: int = 0, estimator: str | LatencyEstimator = "auto") -> None:
        super().__init__(resources, seed)
        self._estimator_spec = estimator

    @cached_property
    def estimator(self) -> LatencyEstimator:
        spec = self._estimator_spec
        if not isinstance(spec, str):
            return spec
        r = self.resources
        return make_latency_estimator(spec, r.models, idle=r.idle.models, output_tokens=r.lengths.tokens)

    def estimates(self, ctx: StepContext):
        """One ``CandidateEstimate`` per candidate, in candidate order."""
        return self.estimator.estimate(step_query(ctx))

    def latencies(self, ctx: StepContext) -> dict[Action, float]:
        return {a: e.t_hat_ms / 1e3 for a, e in zip(ctx.candidates, self.estimates(ctx))}

    def choose(self, ctx: StepContext) -> Action:
        latency = self.latencies(ctx)
        return pick_within_share(ctx, latency, self.resources)

    def describe(self) -> str:
        return f"{self.name}({self.estimator.describe()})"


def step_query(ctx: StepContext) -> StepQuery:
    """The estimators' view of a step: its prompt under the first candidate strategy (strategies differ by one
    sentence), role, prompt length, candidates and the telemetry."""
    messages = ctx.messages_by_strategy[ctx.candidates[0].strategy]
    return StepQuery(
        prompt_text="\n".join(m.content for m in messages),
        role_id=ctx.role_id,
        prompt_tokens=ctx.prompt_tokens,
        candidates=tuple((a.model, a.strategy.value) for a in ctx.candidates),
        snapshot=ctx.snapshot,
    )


def pick_within_share(ctx: StepContext, latency: dict[Action, float], resources: PolicyResources) -> Action:
    share = ctx.budget_share_s
    fits = [a for a in ctx.candidates if latency[a] <= share]
    if not fits:
        return min(ctx.candidates, key=lambda a: latency[a])
    return max(fits, key=lambda a: (resources.quality.q(a.model, a.strategy, ctx.role_id), -latency[a]))


class OracleExecutor(GreedySystemAwareExecutor):
    """Greedy with perfect latencies: each candidate is tried on a fork of the simulated cluster (simulation only;
    see forecast.py for how, and what it costs). Forks run at most one budget share ahead; when nothing finishes
    within it, the forks run to completion to find the fastest."""

    name = "oracle"

    def describe(self) -> str:
        return self.name

    def latencies(self, ctx: StepContext) -> dict[Action, float]:
        if ctx.forecaster is None:
            raise RuntimeError("the oracle executor needs a forecaster: it runs only in the simulated driver")
        share = max(ctx.budget_share_s, 0.0)
        candidates = list(ctx.candidates)
        times = ctx.forecaster.forecast([ctx.request(a) for a in candidates], horizon_s=share)
        latency = dict(zip(candidates, times))
        if all(math.isinf(t) for t in times):
            # Nothing finishes within the share: run every fork to the end to find the fastest.
            latency = dict(zip(candidates, ctx.forecaster.forecast([ctx.request(a) for a in candidates], horizon_s=None)))
        return latency


EXECUTORS: dict[str, type[Executor]] = {
    cls.name: cls
    for cls in (
        RandomExecutor,
        FixedExecutor,
        BestSingleModelExecutor,
        StaticQualityPriceExecutor,
        LeastQueueExecutor,
        GreedySystemAwareExecutor,
        OracleExecutor,
    )
}


def make_executor(name: str, resources: PolicyResources, seed: int = 0, **kwargs) -> Executor:
    """An executor by name; ``greedy@queueing`` (any ``name@value``) sets the executor's ``at_option``: the latency
    estimator of greedy/oracle, so an evaluation can compare estimators under one executor, or the checkpoint of
    ``rl`` (``rl@runs/x/policy``), so it can compare trained policies."""
    value = None
    if "@" in name:
        name, value = name.split("@", 1)
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; known: {sorted(EXECUTORS)}") from None
    if value is not None:
        kwargs[cls.at_option] = value
    return cls(resources, seed, **kwargs)
