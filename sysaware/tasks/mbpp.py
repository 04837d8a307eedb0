"""MBPP tasks from the vendored copy (Austin et al. 2021, CC BY 4.0; see resources/mbpp/SOURCE.md).

Splits follow the upstream README by task_id: prompt 1-10, test 11-510, validation 511-600, train 601-974.
The sanitized subset (427 hand-checked tasks) rewords some problems and fixes some asserts; where a task is in it,
``sanitized=True`` loads that version.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from sysaware.resources import RESOURCES

MBPP_DIR = RESOURCES / "mbpp"


class Split(str, Enum):
    PROMPT = "prompt"
    TEST = "test"
    VALIDATION = "validation"
    TRAIN = "train"


_SPLIT_RANGES = {
    Split.PROMPT: range(1, 11),
    Split.TEST: range(11, 511),
    Split.VALIDATION: range(511, 601),
    Split.TRAIN: range(601, 975),
}


def split_of(task_id: int) -> Split:
    for split, ids in _SPLIT_RANGES.items():
        if task_id in ids:
            return split
    raise ValueError(f"task_id {task_id} is outside MBPP's 1..974")


@dataclass(frozen=True)
class MbppTask:
    task_id: int
    text: str  # the problem statement shown to agents
    reference_code: str
    test_list: tuple[str, ...]  # the asserts; only test_list[0] may ever appear in a prompt
    test_setup_code: str = ""
    test_imports: tuple[str, ...] = ()
    sanitized: bool = False

    @property
    def split(self) -> Split:
        return split_of(self.task_id)

    @property
    def example_test(self) -> str:
        """The one assert MBPP shows with the problem (it fixes the function name)."""
        return self.test_list[0]

    @property
    def hidden_tests(self) -> tuple[str, ...]:
        return self.test_list

    @property
    def entry_point(self) -> str | None:
        """The function the asserts call, e.g. ``remove_Occ``."""
        m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\()?\s*(?:set\()?\s*([A-Za-z_]\w*)\s*\(", self.test_list[0])
        return m.group(1) if m else None


@lru_cache(maxsize=1)
def _full() -> dict[int, MbppTask]:
    tasks = {}
    with open(MBPP_DIR / "mbpp.jsonl") as f:
        for line in f:
            r = json.loads(line)
            tasks[r["task_id"]] = MbppTask(
                task_id=r["task_id"],
                text=r["text"],
                reference_code=r["code"].replace("\r\n", "\n"),
                test_list=tuple(r["test_list"]),
                test_setup_code=r.get("test_setup_code", "") or "",
            )
    return tasks


@lru_cache(maxsize=1)
def _sanitized() -> dict[int, MbppTask]:
    with open(MBPP_DIR / "sanitized-mbpp.json") as f:
        rows = json.load(f)
    return {
        r["task_id"]: MbppTask(
            task_id=r["task_id"],
            text=r["prompt"],
            reference_code=r["code"],
            test_list=tuple(r["test_list"]),
            test_imports=tuple(r.get("test_imports", [])),
            sanitized=True,
        )
        for r in rows
    }


def load_tasks(split: Split | str | None = None, sanitized: bool = False) -> list[MbppTask]:
    """Tasks of one split (all when ``split`` is None), in task_id order."""
    source = _sanitized() if sanitized else _full()
    wanted = Split(split) if split is not None else None
    return [t for tid, t in sorted(source.items()) if wanted is None or split_of(tid) is wanted]


def get_task(task_id: int, sanitized: bool | None = None) -> MbppTask:
    """One task; ``sanitized=None`` prefers the sanitized version when the task has one."""
    if sanitized is None:
        sanitized = task_id in _sanitized()
    source = _sanitized() if sanitized else _full()
    try:
        return source[task_id]
    except KeyError:
        raise KeyError(f"MBPP task {task_id} not in the {'sanitized' if sanitized else 'full'} set") from None


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@lru_cache(maxsize=1)
def _by_text() -> dict[str, int]:
    index = {}
    for t in _full().values():
        index.setdefault(_normalise(t.text), t.task_id)
    for t in _sanitized().values():
        index[_normalise(t.text)] = t.task_id
    return index


def find_task_in_text(text: str) -> MbppTask | None:
    """The MBPP task whose problem statement appears in ``text`` (a prompt), or None.

    Longest statement wins, so a statement that contains another is not mistaken for it.
    """
    haystack = _normalise(text)
    best: tuple[int, int] | None = None
    for statement, task_id in _by_text().items():
        if len(statement) >= 15 and statement in haystack and (best is None or len(statement) > best[0]):
            best = (len(statement), task_id)
    return get_task(best[1]) if best else None
