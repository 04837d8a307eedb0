"""What an agent reads: its role's system prompt, the task, its inputs' outputs, a test run, the strategy.

The texts come from their one home (``sysaware.tasks.prompts``), and the layout is the one the twin's responder
reads (``engines/twin/responder/twin_responder.py``, ``read_prompt``): upstream work is introduced by its role's title ("###
Algorithm Designer:" marks a plan, "### Test Analyst:" tests), code stays in fenced blocks, a test run reads "N of M
tests passed" with the sandbox's status line, and the strategy instruction is the last paragraph.

Only the task's example assert may appear: every upstream text goes through ``strip_hidden_asserts`` (an LLM could
in principle write a hidden assert verbatim), and test runs only ever execute the example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sysaware.tasks.hidden_asserts import strip_hidden_asserts
from sysaware.engines.types import ChatMessage
from sysaware.orchestration.topology import Slot
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy, task_prompt
from sysaware.tasks.sandbox import ExecutionResult

TEAM_HEADER = "Your team's work so far:"


@dataclass(frozen=True)
class UpstreamOutput:
    """One earlier agent's answer as a later prompt shows it."""

    slot: Slot
    text: str


@dataclass(frozen=True)
class ExampleRun:
    """The example assert run against a candidate, shown to a bug fixer."""

    source: Slot  # whose code was run
    result: ExecutionResult


def heading(slot: Slot) -> str:
    label = f" ({slot.label})" if slot.label else ""
    return f"### {ROLES[slot.role_id].title}{label}:"


def render_example_run(run: ExampleRun) -> str:
    """The sandbox's verdict in the words the responder recognises ("0 of 1 tests passed", "status: ...")."""
    result = run.result
    lines = [
        f"### Test run of the {ROLES[run.source.role_id].title}'s solution against the example test:",
        f"status: {result.status.value}",
        f"{result.num_passed} of {len(result.tests) or 1} tests passed",
    ]
    if not result.passed and result.message:
        lines.append(result.message.splitlines()[0][:300])
    return "\n".join(lines)


def user_message(
    task: MbppTask,
    upstream: Sequence[UpstreamOutput] = (),
    example_run: ExampleRun | None = None,
    strategy: Strategy | None = None,
) -> str:
    parts = [task_prompt(task.text, task.example_test)]
    if upstream:
        parts.append(TEAM_HEADER)
        parts += [f"{heading(u.slot)}\n{strip_hidden_asserts(u.text.strip(), task)}" for u in upstream]
    if example_run is not None:
        parts.append(strip_hidden_asserts(render_example_run(example_run), task))
    if strategy is not None:
        parts.append(STRATEGY_INSTRUCTIONS[strategy])
    return "\n\n".join(parts)


def build_messages(
    task: MbppTask,
    slot: Slot,
    upstream: Sequence[UpstreamOutput] = (),
    example_run: ExampleRun | None = None,
    strategy: Strategy | None = None,
) -> tuple[ChatMessage, ...]:
    """The chat one agent receives: its role's system prompt, then the task, its inputs, a test run, the strategy."""
    return (
        ChatMessage("system", ROLES[slot.role_id].system_prompt),
        ChatMessage("user", user_message(task, upstream, example_run, strategy)),
    )


def prompt_text(messages: Sequence[ChatMessage]) -> str:
    """The text an agent received, as one string (the messages' contents joined by a newline, like
    ``GenerationRequest.prompt_text``)."""
    return "\n".join(m.content for m in messages)
