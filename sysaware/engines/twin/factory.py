"""Building a live twin engine for one replica: the twin half of ``engines.registry.build_engine``."""

from __future__ import annotations

from functools import lru_cache

from sysaware.config import ModelDeployment, PoolConfig
from sysaware.engines.twin.live import LiveTwinEngine
from sysaware.engines.twin.perf.core import TwinEngineCore
from sysaware.engines.twin.protocols import Responder
from sysaware.engines.types import ChatMessage, GenerationRequest


@lru_cache(maxsize=4)
def _responder_for(pool_json: str) -> Responder:
    from sysaware.engines.twin.responder.twin_responder import TwinResponder

    return TwinResponder(PoolConfig.model_validate_json(pool_json))


def shared_responder(pool: PoolConfig) -> Responder:
    """One TwinResponder per process and pool: building one loads and measures the recorded answers (seconds)."""
    return _responder_for(pool.model_dump_json())


def warm_up(responder: Responder, model: str) -> None:
    """Answer one MBPP prompt so the responder's lazy loads (recorded answers, task index: ~0.1-0.2 s) happen while
    the replica starts, not inside its first request."""
    from sysaware.tasks.mbpp import load_tasks
    from sysaware.tasks.prompts import ROLES, task_prompt

    task = load_tasks()[0]
    messages = (
        ChatMessage("system", ROLES["programmer"].system_prompt),
        ChatMessage("user", task_prompt(task.text, task.test_list[0])),
    )
    responder.respond(GenerationRequest("warm-up", model, messages))


def build_twin_engine(model: ModelDeployment, pool: PoolConfig, replica_id: str, time_scale: float = 1.0) -> LiveTwinEngine:
    responder = shared_responder(pool)
    warm_up(responder, model.name)
    core = TwinEngineCore.for_deployment(model, pool, replica_id, responder=responder)
    return LiveTwinEngine(core, time_scale)
