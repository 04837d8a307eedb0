"""One latency-estimator interface for every consumer: the greedy executor prices each candidate (model, strategy) of a
step, the request router ranks the replicas of one model. Two implementations, chosen by name:

| name       | what                                                                                                   |
|------------|--------------------------------------------------------------------------------------------------------|
| `learned`  | the trained estimators (default): F_lat's TTFT/TPOT quantiles from the replica's gauges and step, F_len's |
|            | output length from the prompt's embedding, role, strategy and model (``predictor.SystemEstimator``)      |
| `queueing` | a closed-form formula: idle latency from the pool profile, EMAs from telemetry, Little's law for the queue |

Both answer the same question: T_hat(m, rho) = TTFT_hat(m) + L_out_hat(m, rho, role) x TPOT_hat(m), with a P90.
The learned one needs every model of the pool in its vocabulary (it was trained on that pool's Phase 2 data);
``make_latency_estimator("auto", ...)`` takes it when it covers the pool and the formula otherwise, and says which
(``describe()``) so an evaluation table names what it ran.

Queueing formula (per model, from the telemetry snapshot):

    T_hat = W_q + TTFT_hat(L_in) + (L_out_hat - 1) x TPOT_hat
    TPOT_hat = max(idle TPOT, EMA TPOT of recently finished requests)    when the model is busy, else idle TPOT
    TTFT_hat = max(idle TTFT(L_in), replicas' EMA TTFT)                   when busy, else idle TTFT(L_in)
    W_q      = waiting / completions per second                           (0 when nothing waits)

It has no spread, so its P90 is its mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from sysaware.data.telemetry import ModelLoad, SystemSnapshot
from sysaware.engines.types import ReplicaStats
from sysaware.estimators.predictor import CandidateEstimate, ReplicaState, SystemEstimator


@dataclass(frozen=True)
class StepQuery:
    """What an estimator may read about one agent step."""

    prompt_text: str  # the prompt as the model would read it (messages joined by newlines)
    role_id: str
    prompt_tokens: int  # tokens, chat template included
    candidates: tuple[tuple[str, str], ...]  # (model, strategy value)
    snapshot: SystemSnapshot  # live telemetry: per-model load and per-replica stats


class LatencyEstimator(Protocol):
    name: str

    def estimate(self, query: StepQuery) -> list[CandidateEstimate]:
        """One estimate per candidate, in the query's order (times in ms, lengths in tokens)."""
        ...

    def describe(self) -> str: ...


class IdleLatencyLike(Protocol):
    tpot_s: float

    def ttft_s(self, prompt_tokens: int) -> float: ...


OutputTokens = Callable[[str, str, str], float]  # (model, strategy, role) -> mean output tokens


def replica_for_request(stats: Sequence[ReplicaStats]) -> ReplicaStats:
    """The replica a new request of a model most likely lands on: the least loaded (the router's first pick)."""
    return min(stats, key=lambda s: (s.num_requests_waiting, s.num_requests_running, s.kv_cache_usage_perc))


def idle_state() -> ReplicaState:
    return ReplicaState(0, 0, 0.0, 0.0, 0.0, 0.0, 0)


class LearnedLatencyEstimator:
    """The trained F_lat + F_len, batched over a step's candidates (``SystemEstimator.predict_candidates``)."""

    name = "learned"

    def __init__(self, system: SystemEstimator | None = None) -> None:
        self.system = system or SystemEstimator.load()

    def covers(self, models: Sequence[str]) -> bool:
        return set(models) <= set(self.system.models)

    def states(self, snapshot: SystemSnapshot, models: Sequence[str]) -> dict[str, ReplicaState]:
        by_model: dict[str, list[ReplicaStats]] = {}
        for s in snapshot.replicas:
            by_model.setdefault(s.model, []).append(s)
        return {
            m: ReplicaState.from_stats(replica_for_request(by_model[m])) if by_model.get(m) else idle_state()
            for m in models
        }

    def estimate(self, query: StepQuery) -> list[CandidateEstimate]:
        models = list(dict.fromkeys(m for m, _ in query.candidates))
        return self.system.predict_candidates(
            query.prompt_text, query.role_id, self.states(query.snapshot, models), query.prompt_tokens,
            list(query.candidates),
        )

    def describe(self) -> str:
        return self.name


class QueueingLatencyEstimator:
    """The formula in the module docstring."""

    name = "queueing"

    def __init__(self, idle: Mapping[str, IdleLatencyLike], output_tokens: OutputTokens) -> None:
        self.idle = idle
        self.output_tokens = output_tokens

    def estimate_s(self, model: str, load: ModelLoad, prompt_tokens: int, output_tokens: float) -> float:
        """Expected end-to-end seconds of one call of ``model`` sent now."""
        ttft_s, tpot_s, wait_s = self._terms(model, load, prompt_tokens)
        return wait_s + ttft_s + max(output_tokens - 1.0, 0.0) * tpot_s

    def _terms(self, model: str, load: ModelLoad, prompt_tokens: int) -> tuple[float, float, float]:
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
        return ttft, tpot, wait

    def estimate(self, query: StepQuery) -> list[CandidateEstimate]:
        out = []
        for model, strategy in query.candidates:
            ttft_s, tpot_s, wait_s = self._terms(model, query.snapshot.load(model), query.prompt_tokens)
            tokens = float(self.output_tokens(model, strategy, query.role_id))
            total_ms = (wait_s + ttft_s + max(tokens - 1.0, 0.0) * tpot_s) * 1e3
            ttft_ms, tpot_ms = (wait_s + ttft_s) * 1e3, tpot_s * 1e3
            out.append(CandidateEstimate(model, strategy, ttft_ms, tpot_ms, tokens, total_ms, total_ms, ttft_ms, tpot_ms, tokens))
        return out

    def describe(self) -> str:
        return self.name


ESTIMATORS = ("auto", "learned", "queueing")


def make_latency_estimator(
    name: str,
    models: Sequence[str],
    idle: Mapping[str, IdleLatencyLike] | None = None,
    output_tokens: OutputTokens | None = None,
    system: SystemEstimator | None = None,
) -> LatencyEstimator:
    """``learned``, ``queueing``, or ``auto`` (learned when the shipped/trained artifacts know every model of the
    pool, else queueing). The queueing formula needs the pool profile's idle latencies and output lengths."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown latency estimator {name!r}; known: {list(ESTIMATORS)}")
    if name in ("auto", "learned"):
        learned = LearnedLatencyEstimator(system or _shipped())
        if learned.covers(models):
            return learned
        if name == "learned":
            missing = sorted(set(models) - set(learned.system.models))
            raise ValueError(f"the learned estimators do not know model(s) {missing}; retrain them on this pool's "
                             f"Phase 2 data (sysaware train-estimators) or use estimator 'queueing'")
    if idle is None or output_tokens is None:
        raise ValueError("the queueing estimator needs the pool profile's idle latencies and output lengths")
    return QueueingLatencyEstimator(idle, output_tokens)


@lru_cache(maxsize=1)
def _shipped() -> SystemEstimator:
    """The shipped artifacts, loaded once per process (a few hundred ms; every executor of an evaluation shares them:
    the estimator is stateless apart from its embedding cache)."""
    return SystemEstimator.load()


# --------------------------------------------------------------------------------------------------------------
# Ranking the replicas of one model (the request router): which one gives one more request its first token soonest.
# Routing stats are a replica's gauges as a flat dict (``LLMReplica.record_routing_stats``), up to ~0.2 s old; the
# router corrects them with the requests it sent since (``inflight``) and those completed since (``departed``).
# --------------------------------------------------------------------------------------------------------------


def corrected_queue(stats: Mapping[str, float], inflight: int = 0, departed: int = 0) -> tuple[float, float]:
    """(waiting, running) of a replica once the router's newer knowledge is applied: a completed request most
    likely left the running batch (any excess came from the queue); the ones sent since wait ahead of a new one."""
    waiting = float(stats.get("queue_waiting", 0.0))
    running = float(stats.get("queue_running", 0.0))
    gone_running = min(float(departed), running)
    running -= gone_running
    waiting = max(waiting - (departed - gone_running), 0.0) + inflight
    return waiting, running


@dataclass(frozen=True)
class LatencyModel:
    """The heuristic that turns a replica's stats into a predicted TTFT for one more request.

    predicted_ms = ttft_ms x (1 + ahead) + running_penalty_ms x queue_running, then x (1 + kv pressure)

    - ttft_ms: the replica's EMA TTFT (it already carries the queueing of recent requests), at least
      ``min_ttft_ms`` so that an unmeasured replica still counts the requests ahead of a new one;
    - ahead: requests that must be prefilled before a new one: queue_waiting plus the in-flight ones the snapshot
      does not show yet; each costs about one TTFT;
    - running: a bigger decode batch makes every step slightly slower and brings KV pressure closer;
    - kv pressure: above ``kv_pressure_start`` a replica admits little and starts preempting; the factor grows
      linearly to 2 at a full cache.
    """

    min_ttft_ms: float = 20.0
    running_penalty_ms: float = 1.0
    kv_pressure_start: float = 0.8


def predicted_latency_ms(
    stats: Mapping[str, float],
    inflight: int = 0,
    departed: int = 0,
    model: LatencyModel = LatencyModel(),
) -> float:
    """Predicted TTFT (ms) of one more request on a replica with these routing stats, ``inflight`` requests sent to
    it since the stats were taken and ``departed`` requests the stats still count that have completed since.
    Empty stats (a replica not polled yet) read as an idle replica."""
    ttft = max(float(stats.get("ema_ttft_ms", 0.0)), model.min_ttft_ms)
    waiting, running = corrected_queue(stats, inflight, departed)
    ahead = waiting
    predicted = ttft * (1.0 + ahead) + model.running_penalty_ms * running
    kv = float(stats.get("kv_utilization", 0.0))
    if kv > model.kv_pressure_start:
        predicted *= 1.0 + min(kv - model.kv_pressure_start, 1.0 - model.kv_pressure_start) / (
            1.0 - model.kv_pressure_start
        )
    return predicted


class ReplicaScorer(Protocol):
    name: str
    uses_prompt_tokens: bool  # whether ``ttft_ms`` reads ``prompt_tokens`` (else the router need not count them)

    def ttft_ms(self, replicas: Sequence[tuple[Mapping[str, float], int, int]], prompt_tokens: int) -> list[float]:
        """Predicted TTFT of one more request on each ``(routing_stats, inflight, departed)`` replica, ms."""
        ...


@dataclass(frozen=True)
class QueueingReplicaScorer:
    """``predicted_latency_ms``: the closed-form heuristic."""

    model: LatencyModel = LatencyModel()
    name: str = "queueing"
    uses_prompt_tokens: bool = False

    def ttft_ms(self, replicas, prompt_tokens: int = 0) -> list[float]:
        return [predicted_latency_ms(stats, inflight, departed, self.model) for stats, inflight, departed in replicas]


class LearnedReplicaScorer:
    """F_lat's TTFT for ``model`` from each replica's corrected gauges and its step (the phase is unknown: the stats
    are older than a step, so the wait for it is priced at half a step, as ``ReplicaState.from_stats`` does)."""

    name = "learned"
    uses_prompt_tokens = True

    def __init__(self, model: str, system: SystemEstimator | None = None) -> None:
        self.model = model
        self.system = system or _shipped()

    def ttft_ms(self, replicas, prompt_tokens: int = 0) -> list[float]:
        states = []
        for stats, inflight, departed in replicas:
            waiting, running = corrected_queue(stats, inflight, departed)
            step_ms = float(stats.get("step_ms", 0.0))
            states.append(ReplicaState(
                int(round(waiting)), int(round(running)), float(stats.get("kv_utilization", 0.0)),
                float(stats.get("ema_ttft_ms", 0.0)), step_ms / 2, step_ms, int(stats.get("step_tokens", 0)),
                step_phase_known=step_ms <= 0.0,
            ))
        return [float(x) for x in self.system.predict_ttft_ms(self.model, states, prompt_tokens)]


def make_replica_scorer(name: str, model: str | None, queueing: LatencyModel = LatencyModel()) -> ReplicaScorer:
    """``auto`` (learned when the estimators know ``model``), ``learned`` or ``queueing``."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown latency estimator {name!r}; known: {list(ESTIMATORS)}")
    if name in ("auto", "learned") and model is not None:
        system = _shipped()
        if model in system.models:
            return LearnedReplicaScorer(model, system)
    if name == "learned":
        raise ValueError(f"the learned estimators do not know model {model!r}; use estimator 'queueing'")
    return QueueingReplicaScorer(queueing)
