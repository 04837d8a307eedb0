"""Probes: one harvested prompt, one strategy, one model, sent under background load and measured.

The measurement is backend-independent: a ``ProbeBackend`` opens a load level (N closed-loop background clients per
model, drawing harvested prompts with random strategies), sends probes at given offsets and returns, per probe, the
state of every replica of the probe's model at submission and the engine's result; the collector keeps the state of
the replica that actually served it (``result.replica_id``), which is the one the router picked. ``SimProbeBackend``
runs on the simulated cluster (virtual time: fast, deterministic; the default and what the tests use).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sysaware.sim.backend import SimBackend

import pandas as pd

from sysaware.config import PoolConfig
from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult, ReplicaStats
from sysaware.tasks.prompts import STRATEGY_INSTRUCTIONS, Strategy


def with_strategy(messages: Sequence[ChatMessage], strategy: Strategy) -> tuple[ChatMessage, ...]:
    """The chat with ``strategy``'s instruction as the last paragraph of the last message. A harvested prompt already
    ends with the instruction it was given in Phase 1; that one is replaced, so the probe carries one instruction."""
    *head, last = messages
    text = last.content
    for instruction in STRATEGY_INSTRUCTIONS.values():
        if text.endswith(instruction):
            text = text[: -len(instruction)].rstrip("\n")
            break
    return (*head, ChatMessage(last.role, f"{text}\n\n{STRATEGY_INSTRUCTIONS[strategy]}"))


@dataclass(frozen=True)
class PromptRow:
    """One harvested intermediate prompt (a row of intermediate_prompts.csv)."""

    prompt_id: str
    role_id: str
    messages: tuple[ChatMessage, ...]

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> list["PromptRow"]:
        return [
            cls(r.prompt_id, r.role_id, tuple(ChatMessage(m["role"], m["content"]) for m in json.loads(r.messages_json)))
            for r in df.itertuples(index=False)
        ]


@dataclass
class PromptPoolFactory:
    """Background requests: a harvested prompt drawn at random with a random strategy (a ``RequestFactory``), so the
    background's prompt and answer lengths, and hence queue depth and KV pressure, are those of real agent calls."""

    rows: Sequence[PromptRow]
    strategies: Sequence[Strategy] = tuple(Strategy)
    max_tokens: int = 1024
    prefix: str = "bg"
    _count: int = 0
    _messages: dict[tuple[str, Strategy], tuple[ChatMessage, ...]] = field(default_factory=dict)

    def __call__(self, model: str, rng: random.Random) -> GenerationRequest:
        row = rng.choice(self.rows)
        strategy = rng.choice(self.strategies)
        key = (row.prompt_id, strategy)
        messages = self._messages.get(key)
        if messages is None:  # reused objects keep their hash: the responder's per-prompt caches find them cheaply
            messages = self._messages[key] = with_strategy(row.messages, strategy)
        self._count += 1
        return GenerationRequest(
            request_id=f"{self.prefix}-{self._count}",
            model=model,
            messages=messages,
            max_tokens=self.max_tokens,
            seed=rng.randrange(2**31),
        )


@dataclass(frozen=True)
class ScheduledProbe:
    """A probe's request and when to send it, seconds after the batch starts (engine clock)."""

    key: str
    request: GenerationRequest
    offset_s: float


@dataclass(frozen=True)
class ProbeOutcome:
    """What one probe measured: every replica of its model as seen at submission, and the result."""

    key: str
    submitted_s: float  # engine clock at submission
    states: dict[str, ReplicaStats]  # replica_id -> snapshot at submission
    result: GenerationResult

    @property
    def served_state(self) -> ReplicaStats:
        """The state of the replica that served the probe (the one the router picked)."""
        return self.states[self.result.replica_id]


class ProbeBackend(Protocol):
    """Where probes run. One load level at a time: ``start_level``, any number of ``measure`` calls (each returns
    once all its probes have finished), ``stop_level``."""

    name: str

    def start_level(self, concurrency: int) -> None: ...

    def measure(self, probes: Sequence[ScheduledProbe]) -> list[ProbeOutcome]: ...

    def stop_level(self) -> None: ...


@dataclass
class SimProbeBackend:
    """Probes on the simulated cluster: a fresh cluster per level, N closed-loop clients per model, warm-up first."""

    pool: PoolConfig
    background: PromptPoolFactory
    backend: SimBackend | None = None
    warmup_s: float = 20.0  # virtual seconds of background load before the first probe (queues reach steady state)
    router: str = "least_loaded"
    seed: int = 0
    poll_s: float = 1.0  # virtual seconds simulated between checks whether a batch of probes has finished
    name: str = "sim"

    def __post_init__(self) -> None:
        if self.backend is None:

            self.backend = SimBackend(self.pool)
        if self.backend.pool != self.pool:
            raise ValueError(f"the backend simulates pool {self.backend.pool.name!r}, not {self.pool.name!r}")
        self.cluster = None

    def start_level(self, concurrency: int) -> None:
        from sysaware.sim.load import ClosedLoopLoad

        cluster = self.backend.cluster(seed=self.seed, router=self.router)
        cluster.keep_results = False  # background results are not needed; probes get theirs by callback
        for model in cluster.models:
            ClosedLoopLoad(cluster, model, concurrency, self.background, seed=self.seed).start()
        cluster.run(until=self.warmup_s)
        self.cluster = cluster

    def measure(self, probes: Sequence[ScheduledProbe]) -> list[ProbeOutcome]:
        cluster = self.cluster
        if cluster is None:
            raise RuntimeError("start_level() first")
        start = cluster.now
        outcomes: list[ProbeOutcome] = []

        def send(probe: ScheduledProbe):
            def fire(t: float) -> None:
                # Every replica of the model as the router sees them now; the arrival below is handled at this same
                # instant, before any step, so the served replica's snapshot is its state at submission.
                states = {s.replica_id: s for s in cluster.stats(probe.request.model)}
                cluster.submit(
                    probe.request,
                    at=t,
                    on_complete=lambda result: outcomes.append(ProbeOutcome(probe.key, t, states, result)),
                )

            return fire

        for probe in probes:
            cluster.call_at(start + probe.offset_s, send(probe))
        while len(outcomes) < len(probes):
            cluster.run(until=cluster.now + self.poll_s)
        return outcomes

    def stop_level(self) -> None:
        self.cluster = None  # the background clients stop with their cluster
