"""Routing across the replicas of one model (the cluster-level policy; batching inside a replica is the engine's).

A router is a small class with one decision method, registered by name, so the simulated cluster and the Ray Serve
request router can share the same choices.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from sysaware.engines.types import ReplicaStats


class ReplicaRouter(ABC):
    name: str = ""

    def __init__(self, seed: int = 0):
        self._rng = random.Random(seed)

    @abstractmethod
    def choose(self, replicas: Sequence[ReplicaStats]) -> int:
        """Index of the replica that gets the next request."""


class RoundRobinRouter(ReplicaRouter):
    name = "round_robin"

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self._next = 0

    def choose(self, replicas: Sequence[ReplicaStats]) -> int:
        i = self._next % len(replicas)
        self._next += 1
        return i


class LeastLoadedRouter(ReplicaRouter):
    """Fewest requests in the system (waiting + running), then lowest KV use; what llm-d's queue scorer does."""

    name = "least_loaded"

    def choose(self, replicas: Sequence[ReplicaStats]) -> int:
        return min(
            range(len(replicas)),
            key=lambda i: (
                replicas[i].num_requests_waiting + replicas[i].num_requests_running,
                replicas[i].kv_cache_usage_perc,
                i,
            ),
        )


class PowerOfTwoRouter(ReplicaRouter):
    """Ray Serve's default: sample two replicas, send to the shorter queue."""

    name = "power_of_two"

    def choose(self, replicas: Sequence[ReplicaStats]) -> int:
        if len(replicas) == 1:
            return 0
        a, b = self._rng.sample(range(len(replicas)), 2)
        load = [r.num_requests_waiting + r.num_requests_running for r in replicas]
        return a if (load[a], a) <= (load[b], b) else b


ROUTERS: dict[str, type[ReplicaRouter]] = {
    cls.name: cls for cls in (RoundRobinRouter, LeastLoadedRouter, PowerOfTwoRouter)
}


def make_router(name: str, seed: int = 0) -> ReplicaRouter:
    try:
        return ROUTERS[name](seed)
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {sorted(ROUTERS)}") from None
