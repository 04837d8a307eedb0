"""Planners: once per request, choose the topology and fill its slots with roles. The base class keeps the
bookkeeping; each planner only decides. Registered by name (``make_planner``).

- ``fixed``: one topology with its default roles.
- ``random``: MasRouter-style dynamic topologies for Phase 1 and for mixed evaluation workloads: a random shape,
  a random number of agents and random roles where the shape leaves a choice, seeded per (seed, task), so every
  policy evaluated with the same seed faces the same plan for the same task.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter

from sysaware.orchestration.context import Plan
from sysaware.data.telemetry import SystemSnapshot
from sysaware.orchestration.topology import Topology, TopologyKind, chain, debate, default_topology, io, reflection, star
from sysaware.tasks.mbpp import MbppTask


class Planner(ABC):
    name: str = ""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.plans = 0
        self.chosen: Counter[str] = Counter()  # topology kinds

    def plan(self, task: MbppTask, snapshot: SystemSnapshot | None, slo_s: float | None) -> Plan:
        """The plan for one request; ``slo_s`` is the request's budget if it brought one (None: the default)."""
        topology = self.choose(task, snapshot, slo_s)
        self.plans += 1
        self.chosen[topology.name] += 1
        return Plan(topology, slo_s)

    @abstractmethod
    def choose(self, task: MbppTask, snapshot: SystemSnapshot | None, slo_s: float | None) -> Topology:
        """The decision; ``plan`` records it."""


class FixedPlanner(Planner):
    name = "fixed"

    def __init__(self, seed: int = 0, topology: TopologyKind | str = TopologyKind.CHAIN) -> None:
        super().__init__(seed)
        self.topology = default_topology(topology)

    def choose(self, task: MbppTask, snapshot: SystemSnapshot | None, slo_s: float | None) -> Topology:
        return self.topology


class RandomPlanner(Planner):
    name = "random"

    def __init__(self, seed: int = 0, kinds: tuple[TopologyKind | str, ...] = tuple(TopologyKind)) -> None:
        super().__init__(seed)
        self.kinds = tuple(TopologyKind(k) for k in kinds)

    def choose(self, task: MbppTask, snapshot: SystemSnapshot | None, slo_s: float | None) -> Topology:
        return random_topology(random.Random(f"random-planner/{self.seed}/{task.task_id}"), self.kinds)


def random_topology(rng: random.Random, kinds: tuple[TopologyKind, ...] = tuple(TopologyKind)) -> Topology:
    """A random shape with random roles; every shape is well formed (a coder before any fixer or reviewer)."""
    kind = rng.choice(kinds)
    if kind is TopologyKind.IO:
        return io()
    if kind is TopologyKind.CHAIN:
        roles = (["algorithm_designer"] if rng.random() < 0.5 else []) + ["programmer"]
        after = rng.choice([None, "test_analyst", "reviewer", "bug_fixer"])
        return chain(roles + ([after] if after else []))
    if kind is TopologyKind.STAR:
        extra = rng.sample(["algorithm_designer", "test_analyst", "programmer"], rng.randint(1, 2))  # a reviewer would see no code
        workers = ["programmer", *extra]
        rng.shuffle(workers)
        return star(workers)
    if kind is TopologyKind.DEBATE:
        return debate(["programmer"] * rng.randint(2, 3), rounds=2)
    return reflection()


PLANNERS: dict[str, type[Planner]] = {cls.name: cls for cls in (FixedPlanner, RandomPlanner)}


def make_planner(name: str, seed: int = 0, **kwargs) -> Planner:
    try:
        cls = PLANNERS[name]
    except KeyError:
        raise ValueError(f"unknown planner {name!r}; known: {sorted(PLANNERS)}") from None
    return cls(seed, **kwargs)
