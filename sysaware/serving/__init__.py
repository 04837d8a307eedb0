"""Serving on Ray Serve: replicas hosting engines, the telemetry actor, the latency-aware request router.

A thin re-export. Names load on first access, so importing one module does not pay for importing Ray Serve.
Replicas host any ``sysaware.engines.Engine`` (``engines.registry.build_engine``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "TelemetryActor": "telemetry",
    "TelemetryState": "telemetry",
    "get_or_create_telemetry": "telemetry",
    "TELEMETRY_ACTOR_NAME": "telemetry",
    "TELEMETRY_NAMESPACE": "telemetry",
    "LLMReplica": "replica",
    "deployment_for": "replica",
    "LatencyAwareRouter": "router",
    "predicted_latency_ms": "router",
    "AppArgs": "app",
    "build_app": "app",
    "PoolMetrics": "prometheus",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from sysaware.serving.app import AppArgs, build_app
    from sysaware.serving.prometheus import PoolMetrics
    from sysaware.serving.replica import LLMReplica, deployment_for
    from sysaware.serving.router import LatencyAwareRouter, predicted_latency_ms
    from sysaware.serving.telemetry import (
        TELEMETRY_ACTOR_NAME,
        TELEMETRY_NAMESPACE,
        TelemetryActor,
        TelemetryState,
        get_or_create_telemetry,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sysaware.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sysaware.serving.{module}"), name)
    globals()[name] = value
    return value
