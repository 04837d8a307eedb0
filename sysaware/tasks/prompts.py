"""Roles and prompt strategies: the one place their texts are defined.

The workflow (orchestration) builds prompts from these; the twin's responder recognises them inside a prompt the
same way a real model reads them, so no extra API field is needed and the same request works against real vLLM.
Roles follow MasRouter's code roles; each has an importance the executor may weigh.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Strategy(str, Enum):
    """How deeply an agent should reason: appended to its prompt as a behavioural instruction."""

    FLASH = "flash"
    CONCISE = "concise"
    DEEPTHINK = "deepthink"


STRATEGY_INSTRUCTIONS: dict[Strategy, str] = {
    Strategy.FLASH: "Answer immediately, no explanation.",
    Strategy.CONCISE: "Be brief, focus on the result.",
    Strategy.DEEPTHINK: "Reason step by step before answering.",
}


class Importance(str, Enum):
    CRITICAL = "critical"  # its output is (or directly shapes) the final answer
    SUPPORT = "support"  # advice others may use


class RoleKind(str, Enum):
    """What a role's answer contains: the responder shapes its text by this."""

    PLAN = "plan"  # prose, no code
    CODE = "code"  # a solution
    TESTS = "tests"  # edge cases and asserts
    REVIEW = "review"  # a critique of code


@dataclass(frozen=True)
class Role:
    role_id: str
    title: str
    kind: RoleKind
    importance: Importance
    system_prompt: str


ROLES: dict[str, Role] = {
    r.role_id: r
    for r in (
        Role(
            "algorithm_designer",
            "Algorithm Designer",
            RoleKind.PLAN,
            Importance.SUPPORT,
            "You are an algorithm designer. Read the programming problem and describe the algorithm to solve it: "
            "the key idea, the steps and the edge cases. Do not write code.",
        ),
        Role(
            "programmer",
            "Programmer",
            RoleKind.CODE,
            Importance.CRITICAL,
            "You are a Python programmer. Write a correct Python function that solves the problem. "
            "Put the code in a ```python fenced block.",
        ),
        Role(
            "test_analyst",
            "Test Analyst",
            RoleKind.TESTS,
            Importance.SUPPORT,
            "You are a test analyst. List the edge cases a solution to this problem must handle and write a few "
            "assert statements that check them. Do not write the solution.",
        ),
        Role(
            "bug_fixer",
            "Bug Fixer",
            RoleKind.CODE,
            Importance.CRITICAL,
            "You are a bug fixer. You are given a problem, a candidate solution and feedback from running it. "
            "Return a corrected Python function in a ```python fenced block.",
        ),
        Role(
            "reviewer",
            "Reviewer",
            RoleKind.REVIEW,
            Importance.SUPPORT,
            "You are a code reviewer. Check the candidate solutions for bugs and for mismatches with the problem "
            "and the example test, and say precisely what must change.",
        ),
        Role(
            "decision_maker",
            "Final Decision",
            RoleKind.CODE,
            Importance.CRITICAL,
            "You make the final decision. Given the problem and your team's work, output the single final Python "
            "solution in a ```python fenced block.",
        ),
    )
}


def role_of_system_prompt(text: str) -> Role | None:
    """The role whose system prompt opens ``text``, if any."""
    for role in ROLES.values():
        if role.system_prompt in text:
            return role
    return None


def strategy_in_text(text: str) -> Strategy | None:
    """The strategy whose instruction appears in ``text`` (the last one wins, as it is the latest instruction)."""
    found, pos = None, -1
    for strategy, instruction in STRATEGY_INSTRUCTIONS.items():
        i = text.rfind(instruction)
        if i > pos:
            found, pos = strategy, i
    return found


def task_prompt(problem: str, example_test: str) -> str:
    """The task as every agent sees it: MBPP's statement and its one example assert (never the hidden ones)."""
    return f"{problem}\nYour code should pass this test:\n{example_test}"


TASK_TEST_HEADER = "\nYour code should pass this test:\n"


def task_in_prompt(text: str) -> str:
    """The task part of an agent's prompt: ``task_prompt``'s statement and example assert, without the role's
    system prompt before it or what follows (upstream work, a test run, the strategy instruction).

    Read from the text alone, so that a dataset row (``prompt_text``) and a live step give the same answer. The
    statement is the line before the header (MBPP's statements are one line) and the assert the line after it. A
    prompt without the header: its first paragraph after a known system prompt (the whole text if it has none).
    """
    i = text.find(TASK_TEST_HEADER)
    if i >= 0:
        end = text.find("\n", i + len(TASK_TEST_HEADER))
        return text[text.rfind("\n", 0, i) + 1 : len(text) if end < 0 else end]
    for role in ROLES.values():
        if text.startswith(role.system_prompt):
            text = text[len(role.system_prompt) :].lstrip("\n")
            break
    return text.split("\n\n", 1)[0]
