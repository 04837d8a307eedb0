"""Factories for tests that deploy a small pool on Ray Serve (they run inside the `ray_session` fixture)."""

from __future__ import annotations

from collections.abc import Iterator

from conftest import free_port

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.serving.app import build_app, deploy, select_models


def two_model_pool() -> PoolConfig:
    """The default pool's first two models, one replica each: small enough for 2 CPUs."""
    base = load_pool(DEFAULT_POOL)
    return select_models(base, [m.name for m in base.models[:2]], replicas=1)


def deployed(pool: PoolConfig, app: str, time_scale: float) -> Iterator[tuple[PoolConfig, dict, object]]:
    """Deploy ``pool`` as application ``app``; yields (pool, handles per model, telemetry actor), deletes it after.

    Use as a module fixture's body: ``yield from deployed(two_model_pool(), APP, TIME_SCALE)``.
    """
    from ray import serve

    from sysaware.serving.telemetry import get_or_create_telemetry

    deploy(build_app(pool, time_scale), port=free_port(), name=app)
    handles = {m.name: serve.get_deployment_handle(m.name, app_name=app) for m in pool.models}
    try:
        yield pool, handles, get_or_create_telemetry()
    finally:
        serve.delete(app)
