"""The recorded answers the twin replays: RouterBench's MBPP responses of 11 LLMs, with our own sandbox grades,
and every solution of a task the twin may emit (recorded answers, the reference, a bug-injected reference).

An answer is replayed with its entry point renamed to the asserts' function (``renaming``), which is also what the
regrade graded, so ``sandbox_correct`` describes exactly the code the twin emits. Reading the CSVs and matching
rows to tasks is ``regrade``'s job; this module only adds what replaying needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cached_property, lru_cache

import pandas as pd

from sysaware.engines.twin.responder.bug_injection import wrong_variant
from sysaware.engines.twin.responder.renaming import (
    parse_quietly,
    prose_of,
    rename_identifier,
    renamed_answer,
    solution_code,
    without_docstrings,
)
from sysaware.engines.twin.responder.replay_index import replay_hint
from sysaware.tasks import regrade
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.regrade import load_regrade_table

__all__ = [
    "RecordedAnswer",
    "RecordedAnswers",
    "load_recorded_answers",
    "routerbench_test_task_ids",
    "Origin",
    "Solution",
    "TaskSolutions",
    "task_solutions",
    "program_key",
    "wrong_variant",
    "parse_quietly",
    "prose_of",
    "renamed_answer",
]


@dataclass(frozen=True)
class RecordedAnswer:
    """One model's real answer to one task, as the twin would emit it."""

    model: str  # RouterBench column prefix, e.g. "mistralai/mistral-7b-chat"
    task_id: int
    raw_text: str  # the answer exactly as recorded
    routerbench_correct: bool  # RouterBench's own grade (not ours)
    sandbox_correct: bool | None  # our sandbox's grade of the renamed code; None where the regrade has no row

    @cached_property
    def text(self) -> str:
        """The answer with its entry point renamed to the asserts' function, in the prose as well as in the code."""
        hint = replay_hint(self.model, self.task_id)
        if hint is None or hint.renamed_from is None:
            return renamed_answer(self.raw_text, self.task_id)
        if not hint.renamed_from:
            return self.raw_text
        return rename_identifier(self.raw_text, hint.renamed_from, get_task(self.task_id).entry_point or "")

    @cached_property
    def code(self) -> str:
        """The solution code inside ``text`` (what the sandbox runs)."""
        hint = replay_hint(self.model, self.task_id)
        if hint is None or hint.code_span is None:
            return solution_code(self.text)
        start, end = hint.code_span
        return self.text[start:end]


@dataclass(frozen=True)
class RecordedAnswers:
    """All recorded answers, indexed by task and by model."""

    by_task: dict[int, dict[str, RecordedAnswer]]  # task_id -> model -> answer
    models: tuple[str, ...]  # RouterBench column prefixes, in file order

    def get(self, model: str, task_id: int) -> RecordedAnswer | None:
        return self.by_task.get(task_id, {}).get(model)

    def for_task(self, task_id: int) -> list[RecordedAnswer]:
        return list(self.by_task.get(task_id, {}).values())

    def for_model(self, model: str) -> list[RecordedAnswer]:
        return [a[model] for a in self.by_task.values() if model in a]

    @property
    def task_ids(self) -> list[int]:
        return sorted(self.by_task)

    def has_model(self, model: str) -> bool:
        return model in self.models


def routerbench_test_task_ids() -> list[int]:
    """The 128 tasks of RouterDC's test split of RouterBench (``mbpp_test.csv``)."""
    return sorted(t for t, split in _task_splits().items() if split == "test")


@lru_cache(maxsize=1)
def _task_splits() -> dict[int, str]:
    table = load_regrade_table()
    return {int(t): str(s) for t, s in zip(table["task_id"], table["split"])}


@lru_cache(maxsize=1)
def load_recorded_answers() -> RecordedAnswers:
    """Every recorded answer with our sandbox's grade of it (``regrade.csv``, column sandbox_correct)."""
    grades = {
        (str(m), int(t)): bool(c)
        for m, t, c in zip(*(load_regrade_table()[k] for k in ("model", "task_id", "sandbox_correct")))
        if pd.notna(c)
    }
    recorded, _ = regrade.load_recorded_answers()
    by_task: dict[int, dict[str, RecordedAnswer]] = {}
    for r in recorded:
        by_task.setdefault(r.task_id, {})[r.model] = RecordedAnswer(
            model=r.model,
            task_id=r.task_id,
            raw_text=r.answer,
            routerbench_correct=bool(r.routerbench_correct),
            sandbox_correct=grades.get((r.model, r.task_id)),
        )
    return RecordedAnswers(by_task=by_task, models=tuple(regrade.MODELS))


# ---------------------------------------------------------------------------------------------------------------
# Solutions the twin can emit for one task, with what is known of their correctness
# ---------------------------------------------------------------------------------------------------------------


class Origin(str, Enum):
    RECORDED = "recorded"  # a RouterBench model's real answer
    REFERENCE = "reference"  # MBPP's reference solution
    MUTATION = "mutation"  # the reference with injected bugs (``wrong_variant``), when no real wrong answer exists
    UPSTREAM = "upstream"  # code another agent wrote, found in the prompt


@dataclass(frozen=True)
class Solution:
    """A solution the twin may emit, and our sandbox's verdict on it where one exists."""

    code: str  # what the sandbox would run (entry point already renamed)
    correct: bool | None  # graded truth; None when unknown (code the twin never graded)
    origin: Origin
    model: str | None = None  # the recorded model, for Origin.RECORDED
    text: str | None = None  # the full recorded answer (renamed), for Origin.RECORDED


@lru_cache(maxsize=8192)
def program_key(code: str) -> str:
    """Identity of a program up to layout, comments and docstrings, so a copied solution is recognised."""
    try:
        return without_docstrings(parse_quietly(code))
    except (SyntaxError, ValueError):
        return "\n".join(line.rstrip() for line in code.strip().splitlines() if line.strip())


class TaskSolutions:
    """Every solution of one task the twin knows: recorded answers, the reference and a wrong variant.

    Lazy: a recorded answer's code is extracted only when it is chosen, and the index of known programs only
    when a prompt shows code to recognise, so answering a plain prompt touches one answer.
    """

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        self._answers = {a.model: a for a in load_recorded_answers().for_task(task_id)}
        self._recorded: dict[str, Solution | None] = {}

    def grade_of(self, model: str) -> bool | None:
        """The sandbox grade of ``model``'s recorded answer (None: no recording or no grade)."""
        answer = self._answers.get(model)
        return answer.sandbox_correct if answer is not None else None

    def models_graded(self, correct: bool) -> list[str]:
        """Recorded models whose answer has this grade, in RouterBench's order."""
        return [m for m, a in self._answers.items() if a.sandbox_correct is correct]

    def recorded(self, model: str) -> Solution | None:
        """``model``'s recorded answer as a solution; None when it has none, or it holds no code."""
        if model not in self._recorded:
            answer = self._answers.get(model)
            solution = None
            if answer is not None and answer.code.strip():
                solution = Solution(answer.code, answer.sandbox_correct, Origin.RECORDED, model=model, text=answer.text)
            self._recorded[model] = solution
        return self._recorded[model]

    @cached_property
    def reference(self) -> Solution:
        return Solution(get_task(self.task_id).reference_code.strip() + "\n", True, Origin.REFERENCE)

    @cached_property
    def mutation(self) -> Solution:
        return Solution(wrong_variant(get_task(self.task_id).reference_code), False, Origin.MUTATION)

    @cached_property
    def known(self) -> dict[str, bool | None]:
        """program_key -> graded correctness; None where the same program was graded both ways (a flaky run)."""
        known: dict[str, bool | None] = {}
        solutions = [self.recorded(m) for m in self._answers]
        for s in (*[s for s in solutions if s is not None], self.reference, self.mutation):
            key = program_key(s.code)
            known[key] = s.correct if key not in known or known[key] == s.correct else None
        return known

    def correctness_of(self, code: str) -> bool | None:
        return self.known.get(program_key(code))


@lru_cache(maxsize=4096)
def task_solutions(task_id: int) -> TaskSolutions:
    return TaskSolutions(task_id)
