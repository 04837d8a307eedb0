"""The simulated backend: a pool of twin replicas on a virtual clock, with what the twin says kept inside.

Orchestration and pipelines simulate a pool through this one object: it builds ``SimulatedCluster``s and says which
tasks the simulated models can answer. The twin's responder (recorded answers, the parameter table) lives behind
it: nothing above ``sim/`` and ``engines/`` may read it, so no policy can consult the simulator's answer key.
Building a responder loads and measures the recorded answers (seconds), so one backend per pool is shared by every
cluster it builds.
"""

from __future__ import annotations

from functools import cached_property

from sysaware.config import PoolConfig
from sysaware.engines.twin.factory import shared_responder
from sysaware.engines.twin.protocols import Responder
from sysaware.sim.cluster import SimulatedCluster


class SimBackend:
    def __init__(self, pool: PoolConfig, responder: Responder | None = None) -> None:
        self.pool = pool
        self._responder = responder  # None: the process's shared TwinResponder for this pool, built on first use

    @property
    def responder(self) -> Responder:
        """What the twin says (for sim/ only: the cluster and the oracle's forks)."""
        if self._responder is None:
            self._responder = shared_responder(self.pool)
        return self._responder

    def cluster(self, seed: int = 0, router: str = "least_loaded", fast_forward: bool = True) -> SimulatedCluster:
        """A fresh, idle cluster of the pool's replicas (every replica shares this backend's responder)."""
        return SimulatedCluster.from_pool(self.pool, self.responder, router=router, seed=seed, fast_forward=fast_forward)

    @cached_property
    def answerable_task_ids(self) -> tuple[int, ...]:
        """MBPP tasks with recorded answers: the ones the simulated pool answers with real model outputs (models
        without recordings draw outcomes on any task, but evaluation keeps to tasks every model meets for real)."""
        from sysaware.engines.twin.responder.answers import load_recorded_answers

        return tuple(load_recorded_answers().task_ids)
