"""What every engine must do, whichever backend it is: the contract of ``sysaware.engines.types.Engine``.

``tests/test_engine_contract.py`` runs these checks on the twin in the main suite; with ``SYSAWARE_VLLM_TESTS=1``
(the vLLM environment, ``make test-vllm``) also on backend vllm (AsyncLLM in process) and backend remote (vLLM's
OpenAI server), the tiny CPU model of ``configs/pool_tiny_cpu.yaml``. An engine is built once per backend and driven
from one event loop (vLLM's AsyncLLM is bound to the loop that first uses it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sysaware.config import ModelDeployment, PoolConfig, load_pool
from sysaware.engines.types import ChatMessage, Engine, GenerationRequest, ReplicaStats

VLLM_TESTS = os.environ.get("SYSAWARE_VLLM_TESTS") == "1"
TINY_POOL = Path(__file__).resolve().parents[1] / "configs" / "pool_tiny_cpu.yaml"
_ids = itertools.count()


@dataclass
class EngineUnderTest:
    backend: str
    engine: Engine
    model: ModelDeployment
    loop: asyncio.AbstractEventLoop
    messages: tuple[ChatMessage, ...]  # a prompt the model serves
    long_output_tokens: int  # max_tokens that keeps the request busy for a while
    # max_tokens that no stall of a loaded machine outlasts: an abort is judged on it. A test process stalled for
    # seconds (seen locally: ~8 s with the server decoding on) cancels late, and a request that ended meanwhile is a
    # success whatever the engine does with a cancel.
    unending_tokens: int = 0
    stats_lag_s: float = 0.0  # how stale stats may be (remote: the scrape period)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def run(self, coro: Awaitable):
        return self.loop.run_until_complete(coro)

    def request(self, max_tokens: int = 12, **overrides) -> GenerationRequest:
        fields = dict(request_id=f"contract-{self.backend}-{next(_ids)}", model=self.model.name,
                      messages=self.messages, max_tokens=max_tokens, temperature=0.0, seed=1, ignore_eos=True)
        fields.update(overrides)
        return GenerationRequest(**fields)

    def now(self) -> float:
        """The engine's clock (every engine keeps one: ``EngineClock``), what ``ReplicaStats.timestamp_s`` reads."""
        return self.engine.clock.now()

    async def wait_stats(self, until: Callable[[ReplicaStats], bool], timeout_s: float = 120.0,
                         since: float | None = None) -> ReplicaStats:
        """Poll stats until a snapshot taken at or after ``since`` (engine clock; default: now) satisfies ``until``.
        The default wait is generous (120 s): on a loaded 2-core machine a vLLM step can take seconds.
        Engines report on their own schedule: remote's stats are a scrape, up to a period old, and a stale one must
        not pass for the state after what the test just did."""
        since = self.now() if since is None else since
        deadline = time.monotonic() + timeout_s + self.stats_lag_s
        while True:
            stats = await self.engine.stats()
            if (stats.timestamp_s >= since and until(stats)) or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_pool() -> PoolConfig:
    return load_pool(TINY_POOL)


def vllm_model(backend: str, endpoint: str | None = None) -> ModelDeployment:
    """The tiny pool's model as backend vllm or remote (same engine arguments either way)."""
    model = tiny_pool().models[0]
    update: dict[str, Any] = {"backend": backend}
    if endpoint:
        update["endpoint"] = endpoint
        update["engine"] = model.engine.model_copy(update={"scrape_period_s": 0.2})
    return ModelDeployment.model_validate({**model.model_dump(), **update})


def tiny_messages() -> tuple[ChatMessage, ...]:
    return (ChatMessage("system", "You are a careful Python programmer."),
            ChatMessage("user", "Write a python function to identify non-prime numbers."))
