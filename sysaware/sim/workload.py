"""Requests to load a cluster with: single-agent MBPP prompts with a random role and strategy.

Background load must look like what agents send (a role's system prompt, the task, a strategy instruction), so its
prompt and answer lengths, and hence its KV pressure, are realistic. Phase 2 later draws from harvested workflow
prompts instead; this is the stand-alone version.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sysaware.engines.types import ChatMessage, GenerationRequest
from sysaware.tasks.mbpp import MbppTask, Split, load_tasks
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy, task_prompt

RequestFactory = Callable[[str, random.Random], GenerationRequest]


def build_messages(task: MbppTask, role_id: str, strategy: Strategy | None) -> tuple[ChatMessage, ...]:
    """A single agent's chat: the role's system prompt, the task and (optionally) the strategy's instruction."""
    user = task_prompt(task.text, task.example_test)
    if strategy is not None:
        user = f"{user}\n\n{STRATEGY_INSTRUCTIONS[strategy]}"
    return (ChatMessage("system", ROLES[role_id].system_prompt), ChatMessage("user", user))


@dataclass
class MbppRequestFactory:
    """Draws (task, role, strategy) at random; request ids are unique per factory."""

    tasks: Sequence[MbppTask]
    roles: Sequence[str] = tuple(ROLES)
    strategies: Sequence[Strategy] = tuple(Strategy)
    max_tokens: int = 1024
    prefix: str = "bg"

    def __post_init__(self) -> None:
        self._count = 0
        # The same (task, role, strategy) gives the same message objects: building the prompt text costs more than
        # the lookup, and reused strings keep their hash, so the responder's per-prompt cache finds them cheaply.
        self._messages: dict[tuple[int, str, Strategy], tuple[ChatMessage, ...]] = {}

    @classmethod
    def for_split(cls, split: Split | str = Split.TRAIN, sanitized: bool = True, **kw) -> "MbppRequestFactory":
        return cls(tasks=load_tasks(split, sanitized=sanitized), **kw)

    def stream_key(self) -> str:
        """What the requests drawn from a given generator state depend on (tasks, roles, strategies and this code),
        for files of their answers (``sim/answer_stream.py``)."""
        key = getattr(self, "_stream_key", None)
        if key is None:
            h = hashlib.sha256(Path(__file__).read_bytes())
            for t in self.tasks:
                h.update(f"\x1e{t.task_id}\x1f{t.text}\x1f{t.example_test}".encode())
            h.update(repr((tuple(self.roles), tuple(s.value for s in self.strategies))).encode())
            key = self._stream_key = f"mbpp-factory:{h.hexdigest()}"
        return key

    def __call__(self, model: str, rng: random.Random) -> GenerationRequest:
        task = rng.choice(self.tasks)
        role = rng.choice(self.roles)
        strategy = rng.choice(self.strategies)
        self._count += 1
        key = (task.task_id, role, strategy)
        messages = self._messages.get(key)
        if messages is None:
            messages = self._messages[key] = build_messages(task, role, strategy)
        return GenerationRequest(
            request_id=f"{self.prefix}-{self._count}",
            model=model,
            messages=messages,
            max_tokens=self.max_tokens,
            seed=rng.randrange(2**31),
        )
