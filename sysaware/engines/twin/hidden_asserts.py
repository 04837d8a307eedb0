"""The one filter every answer goes through: no line may show a hidden assert of the task (only the example).

A recorded answer may quote MBPP's asserts (CodeLlama writes its own ``[TESTS]``); a twin that leaked them would
hand later agents the grader's tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from sysaware.engines.twin.counted_text import CountedText, counted
from sysaware.tasks.mbpp import MbppTask


@dataclass(frozen=True)
class AssertGuard:
    """A task's asserts without whitespace, as the filter compares them."""

    example: str  # the example assert
    example_body: str  # the example's expression, without "assert"
    hidden: tuple[str, ...]  # each hidden assert's expression (the whole assert when its expression is short)


@lru_cache(maxsize=4096)
def assert_guard(task: MbppTask) -> AssertGuard:
    example = "".join(task.example_test.split())
    example_body = re.sub(r"^assert", "", example)
    hidden = []
    for test in task.test_list[1:]:
        squeezed = "".join(test.split())
        if squeezed == example:
            continue
        body = re.sub(r"^assert", "", squeezed)
        hidden.append(body if len(body) >= 8 else squeezed)
    return AssertGuard(example, example_body, tuple(hidden))


def strip_hidden_asserts(text: str, task: MbppTask) -> str:
    """``text`` without any line that contains one of the task's hidden asserts (only the example may show).

    Compared without whitespace, on the assert and on its expression alone (a quoted ``f(x) == y`` counts too);
    the example assert is cut out of a line first, so a hidden assert that happens to be a prefix of it does not
    remove the example.
    """
    guard = assert_guard(task)
    if not guard.hidden:
        return text
    kept = []
    for line in text.split("\n"):
        squeezed = "".join(line.split()).replace(guard.example, "").replace(guard.example_body, "")
        if not any(h in squeezed for h in guard.hidden):
            kept.append(line)
    return "\n".join(kept)


def without_hidden_asserts(answer: CountedText, task: MbppTask) -> CountedText:
    """``strip_hidden_asserts`` of a counted answer, line by line only when a quick look cannot rule a leak out.

    Quick look, exact: every line's squeezed text is a piece of the answer's squeezed text, so when that holds
    neither a hidden assert nor the example's expression (whose removal could join two halves of one), no line
    is dropped.
    """
    guard = assert_guard(task)
    whole = answer.squeezed
    if not guard.hidden or (guard.example_body not in whole and not any(h in whole for h in guard.hidden)):
        return answer
    return _filtered(answer, task)


@lru_cache(maxsize=4096)
def _filtered(answer: CountedText, task: MbppTask) -> CountedText:
    """The line-by-line filter, cached: texts that show the example (every test analyst's) recur."""
    text = strip_hidden_asserts(answer.text, task)
    return answer if text == answer.text else counted(text)
