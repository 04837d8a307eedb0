"""The rule that keeps the grader's tests secret: no text an agent is shown may hold a hidden assert of its task.

MBPP shows one example assert with the problem; the rest are the grade. An answer may quote them (CodeLlama writes
its own ``[TESTS]``); a workflow that passed such a line on would hand later agents the grader's tests. Every
upstream text goes through ``strip_hidden_asserts`` (orchestration/messages.py), and so does every answer the twin
composes (engines/twin/responder/hidden_asserts.py).
"""

from __future__ import annotations

import re
from functools import lru_cache

from sysaware.tasks.mbpp import MbppTask

# Verdicts kept per task: far more than the distinct lines of its answers in a long run; a bound all the same,
# since answers may quote prompts (a fixer quotes the failing test line).
_MAX_LINES_PER_TASK = 1 << 14


class AssertGuard:
    """A task's asserts without whitespace, as the filter compares them, and its verdict on every line seen.

    The verdicts are cached by line: answers are assembled from the same pieces again and again, so their lines
    recur, and the filter's rule is a function of the line alone.
    """

    def __init__(self, task: MbppTask) -> None:
        self.example = "".join(task.example_test.split())  # the example assert
        self.example_body = re.sub(r"^assert", "", self.example)  # its expression, without "assert"
        hidden = []
        for test in task.test_list[1:]:
            squeezed = "".join(test.split())
            if squeezed == self.example:
                continue
            body = re.sub(r"^assert", "", squeezed)
            hidden.append(body if len(body) >= 8 else squeezed)
        self.hidden = tuple(hidden)  # each hidden assert's expression (the whole assert when it is short)
        self._leaks: dict[str, bool] = {}

    def leaks(self, line: str) -> bool:
        """Whether ``line`` shows a hidden assert (the example is cut out of the line first)."""
        verdict = self._leaks.get(line)
        if verdict is None:
            if len(self._leaks) >= _MAX_LINES_PER_TASK:
                self._leaks.clear()
            squeezed = "".join(line.split()).replace(self.example, "").replace(self.example_body, "")
            verdict = self._leaks[line] = any(h in squeezed for h in self.hidden)
        return verdict

    def may_leak(self, squeezed_text: str) -> bool:
        """False when no line of a text can leak, judged from the whole text without whitespace: every line's
        squeezed form is a piece of it, so when it holds neither a hidden assert nor the example's expression
        (whose removal could join two halves of one), no line is dropped. Exact, and one substring search."""
        return bool(self.hidden) and (
            self.example_body in squeezed_text or any(h in squeezed_text for h in self.hidden)
        )


@lru_cache(maxsize=4096)
def assert_guard(task: MbppTask) -> AssertGuard:
    return AssertGuard(task)


def strip_hidden_asserts(text: str, task: MbppTask) -> str:
    """``text`` without any line that contains one of the task's hidden asserts (only the example may show).

    Compared without whitespace, on the assert and on its expression alone (a quoted ``f(x) == y`` counts too);
    the example assert is cut out of a line first, so a hidden assert that happens to be a prefix of it does not
    remove the example.
    """
    guard = assert_guard(task)
    if not guard.hidden:
        return text
    return "\n".join(line for line in text.split("\n") if not guard.leaks(line))
