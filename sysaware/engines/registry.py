"""Which engine serves a model: the one place that reads ``backend`` from the pool file.

Layers above (a Serve replica, the Phase 2 probes, the drivers) ask ``build_engine`` for an ``Engine`` and never
learn which backend they got; adding a backend means one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from sysaware.config import Backend, ModelDeployment, PoolConfig
from sysaware.engines.types import Engine

EngineBuilder = Callable[[ModelDeployment, PoolConfig, str, float], Engine]


def _twin(model: ModelDeployment, pool: PoolConfig, replica_id: str, time_scale: float) -> Engine:
    from sysaware.engines.twin.factory import build_twin_engine

    return build_twin_engine(model, pool, replica_id, time_scale)


def _not_yet(model: ModelDeployment, pool: PoolConfig, replica_id: str, time_scale: float) -> Engine:
    raise NotImplementedError(
        f"{model.name}: backend {model.backend.value!r} is not implemented yet; use backend: twin"
    )


BUILDERS: dict[Backend, EngineBuilder] = {Backend.TWIN: _twin, Backend.VLLM: _not_yet, Backend.REMOTE: _not_yet}


def build_engine(model: ModelDeployment, pool: PoolConfig, replica_id: str, time_scale: float = 1.0) -> Engine:
    """The engine one replica of ``model`` hosts, chosen by ``model.backend``; ``time_scale`` engine seconds pass
    per wall second (the twin's speed-up; real engines require 1)."""
    if model.backend is not Backend.TWIN and time_scale != 1.0:
        raise ValueError(f"{model.name}: time_scale {time_scale} is for the twin only; a real engine runs at 1")
    return BUILDERS[model.backend](model, pool, replica_id, time_scale)
