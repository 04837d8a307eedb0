"""The one filter every answer goes through: no line may show a hidden assert of the task (only the example).

A recorded answer may quote MBPP's asserts (CodeLlama writes its own ``[TESTS]``); a twin that leaked them would
hand later agents the grader's tests.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sysaware.engines.twin.counted_text import CountedText, counted
from sysaware.tasks.mbpp import MbppTask

# Verdicts kept per task: far more than the distinct lines of its answers in a long run; a bound all the same,
# since answers may quote prompts (a fixer quotes the failing test line).
_MAX_LINES_PER_TASK = 1 << 14
# Filtered answers kept per task: a simulated cluster's background load meets ~100 distinct answer texts per task
# in a few virtual minutes (nine in ten answers are a text seen before); a bound, since reviews combine freely.
_MAX_ANSWERS_PER_TASK = 1 << 8  # ~120 MB at most over all 974 MBPP tasks (answers average ~500 characters)
_UNSEEN = object()  # not in a memo (None is a value there)


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
        self._filtered: dict[str, CountedText | None] = {}  # answer text -> the filtered answer (None: unchanged)

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

    def filtered(self, answer: CountedText) -> CountedText:
        """``answer`` without the lines that leak, recounted only when a line was dropped.

        Remembered per answer text: most answers are texts seen before (cached pieces, or the same pieces joined
        again), and a dictionary hit costs less than even the ``may_leak`` searches. The result is a function of
        the text alone, so the memo changes nothing.
        """
        memo = self._filtered
        result = memo.get(answer.text, _UNSEEN)
        if result is not _UNSEEN:
            return answer if result is None else result
        result = None
        if self.may_leak(answer.squeezed):
            lines = answer.text.split("\n")
            kept = [line for line in lines if not self.leaks(line)]
            if len(kept) != len(lines):
                result = counted("\n".join(kept))
        if len(memo) >= _MAX_ANSWERS_PER_TASK:
            memo.clear()
        memo[answer.text] = result
        return answer if result is None else result


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


def without_hidden_asserts(answer: CountedText, task: MbppTask) -> CountedText:
    """``strip_hidden_asserts`` of a counted answer, recounted only when a line was dropped."""
    return assert_guard(task).filtered(answer)
