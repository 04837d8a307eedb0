"""The one filter every answer the twin composes goes through: no line may show a hidden assert of the task.

The rule itself is the task's (``tasks/hidden_asserts.py``); this module applies it to counted answers and remembers
the result per answer text, since the twin assembles the same answers again and again.
"""

from __future__ import annotations

from functools import lru_cache

from sysaware.engines.twin.responder.counted_text import CountedText, counted
from sysaware.tasks.hidden_asserts import AssertGuard, assert_guard, strip_hidden_asserts
from sysaware.tasks.mbpp import MbppTask

__all__ = ["CountedAssertFilter", "strip_hidden_asserts", "without_hidden_asserts"]

# Filtered answers kept per task: a simulated cluster's background load meets ~100 distinct answer texts per task
# in a few virtual minutes (nine in ten answers are a text seen before); a bound, since reviews combine freely.
_MAX_ANSWERS_PER_TASK = 1 << 8  # ~120 MB at most over all 974 MBPP tasks (answers average ~500 characters)
_UNSEEN = object()  # not in a memo (None is a value there)


class CountedAssertFilter:
    """A task's assert guard applied to counted answers, with a memo of filtered answers."""

    def __init__(self, guard: AssertGuard) -> None:
        self.guard = guard
        self._filtered: dict[str, CountedText | None] = {}  # answer text -> the filtered answer (None: unchanged)

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
        if self.guard.may_leak(answer.squeezed):
            lines = answer.text.split("\n")
            kept = [line for line in lines if not self.guard.leaks(line)]
            if len(kept) != len(lines):
                result = counted("\n".join(kept))
        if len(memo) >= _MAX_ANSWERS_PER_TASK:
            memo.clear()
        memo[answer.text] = result
        return answer if result is None else result


@lru_cache(maxsize=4096)
def _counted_filter(task: MbppTask) -> CountedAssertFilter:
    return CountedAssertFilter(assert_guard(task))


def without_hidden_asserts(answer: CountedText, task: MbppTask) -> CountedText:
    """``strip_hidden_asserts`` of a counted answer, recounted only when a line was dropped."""
    return _counted_filter(task).filtered(answer)
