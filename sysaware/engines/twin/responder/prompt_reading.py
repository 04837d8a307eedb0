"""Reading a prompt the way a model would, from its text alone: the task, the role, the strategy, the upstream work.

No extra API field is needed, so the same request works against real vLLM. The task is recognised by its MBPP
statement, the role by its system prompt, the strategy by its instruction, and the work of earlier agents
(candidate code, a plan, tests, a critique, a test run) by how it appears in the prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from sysaware.engines.types import ChatMessage
from sysaware.tasks.extract import defined_functions, extract_code, rename_entry_point
from sysaware.tasks.mbpp import MbppTask, find_task_in_text, get_task, load_tasks
from sysaware.tasks.prompts import ROLES, Role, RoleKind, Strategy, role_of_system_prompt, strategy_in_text


class Feedback(str, Enum):
    NONE = "none"
    FAILING = "failing"  # a test run of the candidate failed
    PASSING = "passing"  # it passed


class Verdict(str, Enum):
    NONE = "none"
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class PromptReading:
    """What the responder understood of a prompt."""

    task: MbppTask | None
    role: Role | None  # None: no recognised system prompt (answered as a programmer)
    strategy: Strategy | None  # None: no strategy instruction
    upstream_code: tuple[str, ...]  # solutions written by earlier agents, entry point renamed to the task's
    has_plan: bool
    has_tests: bool
    feedback: Feedback
    critique: Verdict
    feedback_line: str  # the first line of the test-run feedback, quoted by a fixer

    @property
    def kind(self) -> RoleKind:
        return self.role.kind if self.role else RoleKind.CODE

    @property
    def role_id(self) -> str:
        """The role's id; a prompt without a recognised role is answered as a programmer."""
        return self.role.role_id if self.role else "programmer"


_BLOCK = re.compile(r"```[^\n`]*\n.*?(?:```|\Z)|\[PYTHON\].*?(?:\[/PYTHON\]|\Z)", re.S)
# What a test run of a candidate looks like in a prompt: the sandbox's message ("test 0 failed: ..."), a
# traceback, or a count of passed tests.
_FAILING = re.compile(
    r"Traceback \(most recent call last\)|\bAssertionError\b|\btest \d+ (?:failed|raised)\b|\btests? failed\b"
    r"|\bfailed the (?:example )?tests?\b|\btimed out after\b|\bstatus: (?:failed_assert|error|timeout|syntax)\b",
    re.I,
)
_PASSING = re.compile(r"\ball (?:\d+ )?(?:example )?tests? passed\b|\bpassed all (?:the )?tests?\b|\bstatus: passed\b", re.I)
_COUNT = re.compile(r"\b(\d+) of (\d+) tests? passed\b", re.I)
_VERDICT = re.compile(r"\bverdict\s*:\s*(.+)$", re.I | re.M)
_REJECT_WORDS = re.compile(r"\b(incorrect|not correct|needs? changes?|has a bug|bugs? in|wrong|fails?|must change|broken)\b", re.I)
_APPROVE_WORDS = re.compile(r"\b(correct|looks (?:right|good)|no (?:bugs?|issues?|problems?|changes?)|approve[sd]?|lgtm)\b", re.I)
_PLAN_MARK = re.compile(r"^\W*(?:key idea|approach|plan|algorithm)\W*:", re.I | re.M)
_TESTS_MARK = re.compile(r"^\W*edge cases\W*:", re.I | re.M)


def non_system_text(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(m.content for m in messages if m.role != "system")


@lru_cache(maxsize=1)
def _statement_siblings() -> dict[str, tuple[int, ...]]:
    """Tasks that share a statement word for word (71/141, 104/569 in sanitized MBPP)."""
    by_text: dict[str, list[int]] = {}
    for task in load_tasks(sanitized=True):
        by_text.setdefault(" ".join(task.text.lower().split()), []).append(task.task_id)
    return {text: tuple(ids) for text, ids in by_text.items() if len(ids) > 1}


@lru_cache(maxsize=8192)
def find_task(text: str) -> MbppTask | None:
    """The task in a prompt; of tasks sharing a statement, the one whose example assert the prompt shows."""
    task = find_task_in_text(text)
    if task is None:
        return None
    siblings = _statement_siblings().get(" ".join(task.text.lower().split()), ())
    for task_id in siblings:
        sibling = get_task(task_id)
        if sibling.example_test in text:
            return sibling
    return task


@lru_cache(maxsize=8192)
def _block_solution(block: str, entry_point: str | None) -> str | None:
    """The solution a fenced block holds (entry point renamed to the task's), or None when it defines no function.

    Cached by the block's text: in a workflow the same candidate is shown again to every later agent, and
    extracting it walks its syntax tree several times.
    """
    code = extract_code(block)
    if not code or not defined_functions(code):
        return None
    return rename_entry_point(code, entry_point) if entry_point else code


@lru_cache(maxsize=8192)
def read_prompt(messages: tuple[ChatMessage, ...]) -> PromptReading:
    """Understand a prompt from its text, as a model would. What counts as what:

    - task: an MBPP statement in a non-system message (``find_task``); role: a role's system prompt anywhere;
      strategy: the last strategy instruction anywhere.
    - upstream code: every fenced block (or CodeLlama ``[PYTHON]`` block) outside the system prompt that defines a
      function; a block of two or more asserts and no function is a test analyst's work.
    - a plan: the Algorithm Designer's title, or a line opening with "Key idea:", "Approach:", "Plan:" or
      "Algorithm:"; tests: the Test Analyst's title, or a line opening with "Edge cases:".
    - a test run, outside code blocks: "N of M tests passed", the sandbox's "test 0 failed: ..." / "status: ...",
      a traceback or AssertionError (failing), "all tests passed" (passing).
    - a critique: a "Verdict: ..." line, approving or asking for changes (the last one counts).
    """
    full = "\n".join(m.content for m in messages)
    body = non_system_text(messages) or full
    task = find_task(body)
    role = role_of_system_prompt(full)
    blocks = [m.group(0) for m in _BLOCK.finditer(body)]
    prose = _BLOCK.sub(" ", body)
    upstream: list[str] = []
    has_test_block = False
    for block in blocks:
        code = _block_solution(block, task.entry_point if task else None)
        if code is not None:
            if code not in upstream:
                upstream.append(code)
        elif block.count("assert ") >= 2:
            has_test_block = True
    feedback, feedback_line = _test_run(prose)
    return PromptReading(
        task=task,
        role=role,
        strategy=strategy_in_text(full),
        upstream_code=tuple(upstream),
        has_plan=ROLES["algorithm_designer"].title in body or bool(_PLAN_MARK.search(prose)),
        has_tests=ROLES["test_analyst"].title in body or bool(_TESTS_MARK.search(prose)) or has_test_block,
        feedback=feedback,
        critique=_critique(prose),
        feedback_line=feedback_line,
    )


def _test_run(prose: str) -> tuple[Feedback, str]:
    """The outcome of a test run shown in the prompt, and the line that reports it."""
    if count := _COUNT.search(prose):
        outcome = Feedback.PASSING if count.group(1) == count.group(2) else Feedback.FAILING
        return outcome, _line_at(prose, count.start())
    if m := _FAILING.search(prose):
        return Feedback.FAILING, _line_at(prose, m.start())
    if m := _PASSING.search(prose):
        return Feedback.PASSING, _line_at(prose, m.start())
    return Feedback.NONE, ""


def _critique(prose: str) -> Verdict:
    """The last verdict line's meaning; a verdict with neither kind of word leaves the earlier one standing."""
    critique = Verdict.NONE
    for m in _VERDICT.finditer(prose):
        said = m.group(1)
        if _REJECT_WORDS.search(said):
            critique = Verdict.REJECT
        elif _APPROVE_WORDS.search(said):
            critique = Verdict.APPROVE
    return critique


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)].strip()[:200]
