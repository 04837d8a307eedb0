"""The recorded answers the twin replays: RouterBench's MBPP responses of 11 LLMs, with our own sandbox grades.

RouterBench asked each model the bare MBPP problem (no example assert), so an answer's function name is often not
the one the asserts call. What the twin replays is the answer with its entry point renamed to the asserts' name
(``rename_entry_point``), which is also what the regrade graded, so ``sandbox_correct`` describes exactly the code
the twin emits. Reading the CSVs and matching rows to tasks is ``regrade``'s job; this module only adds what replaying needs.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from enum import Enum
from functools import cached_property, lru_cache

import pandas as pd

from sysaware.tasks import regrade
from sysaware.tasks.extract import extract_code, rename_entry_point
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.regrade import load_regrade_table


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
        return renamed_answer(self.raw_text, self.task_id)

    @cached_property
    def code(self) -> str:
        """The solution code inside ``text`` (what the sandbox runs)."""
        return solution_code(self.text)


@lru_cache(maxsize=8192)
def solution_code(answer: str) -> str:
    """``extract_code``, cached: renaming an answer extracts its code up to three times (about 1 ms each)."""
    return extract_code(answer)


def parse_quietly(code: str) -> ast.Module:
    """``ast.parse`` without the warnings recorded code triggers (invalid escapes such as '\\d' in plain strings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return ast.parse(code)


def renamed_answer(raw_text: str, task_id: int) -> str:
    """``raw_text`` with the solution's main function renamed to the name the task's asserts call.

    The rename is done on the whole answer (code blocks, usage examples and prose mention the same identifier), so
    the answer still reads naturally; when that would change what the extractor finds, the code blocks alone are
    rewritten.
    """
    entry = get_task(task_id).entry_point
    code = solution_code(raw_text)
    if not entry or not code:
        return raw_text
    renamed_code = rename_entry_point(code, entry)
    if renamed_code == code:
        return raw_text
    old = _renamed_from(code, renamed_code)
    if old is None:
        return raw_text
    candidate = re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", entry, raw_text)
    if _same_program(solution_code(candidate), renamed_code):
        return candidate
    # The textual rename touched something that is not the function (a variable of the same name): rename the
    # code block alone, where the answer holds it verbatim.
    stripped = code.strip("\n")
    if stripped in raw_text:
        swapped = raw_text.replace(stripped, renamed_code.strip("\n"), 1)
        if _same_program(solution_code(swapped), renamed_code):
            return swapped
    # Last resort: the answer's prose around one fenced block holding exactly the graded code.
    return f"```python\n{renamed_code.strip()}\n```\n\n{prose_of(raw_text)}".rstrip() + "\n"


_BLANK_LINES = re.compile(r"\n{3,}")
_DEF_NAME = re.compile(r"def\s+([A-Za-z_]\w*)")
_CODE_REGION = re.compile(r"```.*?(?:```|\Z)|\[PYTHON\].*?(?:\[/PYTHON\]|\Z)|\[TESTS\].*?(?:\[/TESTS\]|\Z)", re.S)


def prose_of(text: str) -> str:
    """An answer's words outside its code blocks (fences, CodeLlama's [PYTHON] and [TESTS] sections)."""
    return _BLANK_LINES.sub("\n\n", _CODE_REGION.sub("", text)).strip()


def _same_program(a: str, b: str) -> bool:
    """Equal code up to comments and docstrings (the prose the rename may also touch)."""
    if a == b:
        return True
    try:
        return _without_docstrings(parse_quietly(a)) == _without_docstrings(parse_quietly(b))
    except (SyntaxError, ValueError):
        return False


def _without_docstrings(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _renamed_from(code: str, renamed: str) -> str | None:
    """The identifier ``rename_entry_point`` replaced (first differing ``def`` name)."""
    before = _DEF_NAME.findall(code)
    after = _DEF_NAME.findall(renamed)
    for a, b in zip(before, after):
        if a != b:
            return a
    return None


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
        return _without_docstrings(parse_quietly(code))
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


# ---------------------------------------------------------------------------------------------------------------
# A wrong answer derived from the reference, for tasks where no recorded answer fails
# ---------------------------------------------------------------------------------------------------------------
#
# The mutation injects the bugs LLM-written code typically has, at every site where they apply: off-by-one range
# ends and slice bounds, inverted comparisons (< vs >, == vs !=, in vs not in), swapped operators (+/-, & vs |),
# min/max and any/all mix-ups, a reversed sort, the wrong string method (upper/lower, startswith/endswith),
# append at the wrong end, an integer constant off by one, and, where the code has no comparison (so the flips
# cannot cancel out, as De Morgan pairs would), swapped and/or and negated boolean constants. Loop conditions of
# ``while`` are left alone: a flipped one can run forever. Code offering none of those sites prints its result
# instead of returning it. Measured with the sandbox over all 974 MBPP references, 948 variants fail their
# asserts and 26 (2.7%) still pass; tests/test_responder.py checks that every task where the twin needs one (no
# recorded answer fails it) gets a failing variant.

_COMPARE_SWAP: dict[type, type] = {
    ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
_BINOP_SWAP: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv,
    ast.Div: ast.Mult, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
    ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}  # fmt: skip
_BUILTIN_SWAP = {"max": "min", "min": "max", "any": "all", "all": "any"}
_METHOD_SWAP = {
    "upper": "lower", "lower": "upper", "startswith": "endswith", "endswith": "startswith", "lstrip": "rstrip",
    "rstrip": "lstrip", "isupper": "islower", "islower": "isupper", "index": "rindex", "find": "rfind",
    "rfind": "find", "nlargest": "nsmallest", "nsmallest": "nlargest", "findall": "match",
}  # fmt: skip


class _InjectBugs(ast.NodeTransformer):
    def __init__(self, flip_logic: bool) -> None:
        self.flip_logic = flip_logic  # and/or and True/False flips, only where no comparison can cancel them
        self.sites = 0
        self._while_depth = 0

    def visit_While(self, node: ast.While) -> ast.While:
        self._while_depth += 1
        node.body = [self.visit(n) for n in node.body]
        node.orelse = [self.visit(n) for n in node.orelse]
        self._while_depth -= 1
        return node

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Name) and func.id == "range" and node.args:
            stop = 0 if len(node.args) == 1 else 1
            node.args[stop] = ast.BinOp(node.args[stop], ast.Sub(), ast.Constant(1))
        elif isinstance(func, ast.Name) and func.id in _BUILTIN_SWAP:
            func.id = _BUILTIN_SWAP[func.id]
        elif isinstance(func, ast.Name) and func.id == "sorted" and not any(k.arg == "reverse" for k in node.keywords):
            node.keywords.append(ast.keyword("reverse", ast.Constant(True)))
        elif isinstance(func, ast.Attribute) and func.attr in _METHOD_SWAP:
            func.attr = _METHOD_SWAP[func.attr]
        elif isinstance(func, ast.Attribute) and func.attr == "append":
            func.attr, node.args = "insert", [ast.Constant(0), *node.args]
        else:
            return node
        self.sites += 1
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.Compare:
        self.generic_visit(node)
        if not self._while_depth and any(type(op) in _COMPARE_SWAP for op in node.ops):
            node.ops = [_COMPARE_SWAP.get(type(op), type(op))() for op in node.ops]
            self.sites += 1
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.BinOp:
        self.generic_visit(node)
        if not self._while_depth and type(node.op) in _BINOP_SWAP:
            node.op = _BINOP_SWAP[type(node.op)]()
            self.sites += 1
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.BoolOp:
        self.generic_visit(node)
        if not self._while_depth and self.flip_logic:
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.sites += 1
        return node

    def visit_Slice(self, node: ast.Slice) -> ast.Slice:
        self.generic_visit(node)
        if node.upper is not None:
            node.upper = ast.BinOp(node.upper, ast.Sub(), ast.Constant(1))
        elif node.lower is not None:
            node.lower = ast.BinOp(node.lower, ast.Add(), ast.Constant(1))
        else:
            return node
        self.sites += 1
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if isinstance(node.value, bool):
            if self.flip_logic:
                node.value = not node.value
                self.sites += 1
        elif isinstance(node.value, int) and node.value >= 2 and not self._while_depth:
            node.value += 1
            self.sites += 1
        return node


class _PrintInsteadOfReturn(ast.NodeTransformer):
    def visit_Return(self, node: ast.Return) -> ast.AST:
        if node.value is None:
            return node
        return ast.Expr(ast.Call(ast.Name("print", ast.Load()), [node.value], []))


@lru_cache(maxsize=2048)
def wrong_variant(code: str) -> str:
    """``code`` with typical bugs injected (see the comment above); the asserts fail for 97% of MBPP."""
    try:
        tree = parse_quietly(code)
    except (SyntaxError, ValueError):
        return code.replace("return ", "print(", 1) if "return " in code else code + "\n# unfinished\n"
    has_compare = any(isinstance(n, ast.Compare) for n in ast.walk(tree))
    injector = _InjectBugs(flip_logic=not has_compare)
    tree = injector.visit(tree)
    if not injector.sites:
        tree = _PrintInsteadOfReturn().visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
