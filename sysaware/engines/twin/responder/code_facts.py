"""Facts about a solution and a task, in words: what the responder says when it explains, plans or reviews code.

Everything here reads syntax trees, so each function is cached by its input: a task's code is described once.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache

from sysaware.engines.twin.responder.renaming import parse_quietly
from sysaware.tasks.extract import defined_functions
from sysaware.tasks.mbpp import MbppTask

# ---------------------------------------------------------------------------------------------------------------
# A solution
# ---------------------------------------------------------------------------------------------------------------


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class CodeFacts:
    """What a solution does, in sentences built from its syntax tree."""

    entry: str
    params: tuple[str, ...]
    helpers: tuple[str, ...]
    key_idea: str  # one clause: "uses set intersection", ...
    steps: tuple[str, ...]  # one sentence per statement of the entry function
    loop_depth: int
    sorts: bool
    suspicious: str  # the construct a critic would question first


# (pattern in the code, what it says about the approach), first match wins
_IDEAS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), phrase)
    for pattern, phrase in (
        (r"\bheapq\b", "keeps the candidates in a heap (heapq) so the extremes come out in order"),
        (r"\bre\.\w+\(", "matches the pattern with a regular expression"),
        (r"\bCounter\b", "counts occurrences with collections.Counter"),
        (r"\bdefaultdict\b", "groups values in a dictionary with default entries"),
        (r"\bset\(", "uses set operations, so duplicates and order do not matter"),
        (r"\bsorted\(", "sorts the items and reads the answer off the sorted order"),
        (r"\.sort\(", "sorts the items in place and reads the answer off the sorted order"),
        (r"\bmath\.", "uses the math module for the numeric part"),
        (r"\blambda\b", "passes a small lambda as the key or the mapping"),
        (r"\bzip\(", "walks the inputs in parallel with zip"),
        (r"\benumerate\(", "walks the items with their positions"),
        (r"\bdict\(", "builds a dictionary from the input"),
        (r"\.join\(", "builds the resulting string with str.join"),
        (r"\.split\(", "splits the string into parts first"),
        (r"\[[^\]\n]*:[^\]\n]*\]", "slices the sequence to keep the part it needs"),
    )
)


@lru_cache(maxsize=4096)
def code_facts(code: str, entry_hint: str | None = None) -> CodeFacts:
    try:
        tree = parse_quietly(code)
    except (SyntaxError, ValueError):
        name = entry_hint or (defined_functions(code) or ["solution"])[-1]
        return CodeFacts(name, (), (), "follows the problem statement directly", (), 0, False, "the overall logic")
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    entry_node = next((f for f in functions if f.name == entry_hint), functions[-1] if functions else None)
    if entry_node is None:
        return CodeFacts(entry_hint or "solution", (), (), "computes the result directly", (), 0, False, "the overall logic")
    found = _landmarks(entry_node)
    text = ast.unparse(entry_node)
    idea = "calls itself recursively on a smaller input" if found.calls_self else next(
        (phrase for pattern, phrase in _IDEAS if pattern.search(code)), None
    )
    loops = _loop_depth(entry_node)
    if idea is None:
        idea = (
            "iterates over the input and builds the answer step by step"
            if loops
            else "checks the conditions the statement gives and returns accordingly"
            if found.branches
            else "computes the result with a direct formula"
        )
    return CodeFacts(
        entry=entry_node.name,
        params=tuple(a.arg for a in entry_node.args.args),
        helpers=tuple(f.name for f in functions if f is not entry_node),
        key_idea=idea,
        steps=tuple(s for stmt in entry_node.body if (s := _describe(stmt))),
        loop_depth=loops,
        sorts="sort" in text,
        suspicious=_suspicious(found),
    )


@dataclass
class _Landmarks:
    """What the description needs from the entry function, found in one walk (the first of each in walk order)."""

    calls_self: bool = False  # its own name is used inside it (recursion)
    branches: bool = False  # an if statement or expression
    range_call: ast.Call | None = None
    comparison: ast.Compare | None = None
    returned: ast.expr | None = None  # the value of the first return that has one


def _landmarks(func: ast.FunctionDef | ast.AsyncFunctionDef) -> _Landmarks:
    found = _Landmarks()
    for node in ast.walk(func):
        if isinstance(node, ast.Name):
            found.calls_self = found.calls_self or node.id == func.name
        elif isinstance(node, (ast.If, ast.IfExp)):
            found.branches = True
        elif isinstance(node, ast.Call):
            if found.range_call is None and isinstance(node.func, ast.Name) and node.func.id == "range":
                found.range_call = node
        elif isinstance(node, ast.Compare):
            found.comparison = found.comparison or node
        elif isinstance(node, ast.Return) and node.value is not None:
            found.returned = found.returned or node.value
    return found


def _loop_depth(node: ast.AST) -> int:
    best = 0
    for child in ast.iter_child_nodes(node):
        inner = _loop_depth(child)
        if isinstance(child, (ast.For, ast.While, ast.comprehension)):
            inner += 1
        best = max(best, inner)
    return best


def _describe(stmt: ast.stmt) -> str | None:
    """One sentence about one statement (nested blocks summarised by their first statement)."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return None  # docstring
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return f"Import what is needed (`{_short(stmt)}`)."
    if isinstance(stmt, ast.Assign):
        return f"Set `{_short(stmt.targets[0], 30)}` to `{_short(stmt.value)}`."
    if isinstance(stmt, ast.AugAssign):
        return f"Update `{_short(stmt.target, 30)}` with `{_short(stmt)}`."
    if isinstance(stmt, ast.For):
        inner = _describe(stmt.body[0]) if stmt.body else None
        tail = f" For each one: {inner[0].lower()}{inner[1:]}" if inner else ""
        return f"Loop over `{_short(stmt.iter)}`, taking each item as `{_short(stmt.target, 30)}`.{tail}"
    if isinstance(stmt, ast.While):
        return f"Repeat while `{_short(stmt.test)}` holds, moving towards the end condition each time."
    if isinstance(stmt, ast.If):
        then = _describe(stmt.body[0]) if stmt.body else None
        sentence = f"Check whether `{_short(stmt.test)}`"
        sentence += f"; if so, {then[0].lower()}{then[1:-1]}" if then else ""
        if stmt.orelse:
            other = _describe(stmt.orelse[0])
            sentence += f"; otherwise {other[0].lower()}{other[1:-1]}" if other else ""
        return sentence + "."
    if isinstance(stmt, ast.Return):
        return f"Return `{_short(stmt.value)}`." if stmt.value is not None else "Return."
    if isinstance(stmt, ast.Expr):
        return f"Call `{_short(stmt.value)}`."
    if isinstance(stmt, ast.Try):
        return "Guard the risky part with try/except so bad input does not crash the function."
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"Define an inner helper `{stmt.name}`."
    return None


def _suspicious(found: _Landmarks) -> str:
    """The construct a critic would question first: a loop bound, else a comparison, else the returned value."""
    if found.range_call is not None:
        return f"the loop bound `{_short(found.range_call)}` (an off-by-one there changes the result)"
    if found.comparison is not None:
        node = found.comparison
        ordering = any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in node.ops)
        return f"the comparison `{_short(node)}` at its boundary" if ordering else f"the condition `{_short(node)}`"
    if found.returned is not None:
        return f"the returned value `{_short(found.returned)}` (its type must match the example's)"
    return "the overall logic"


# ---------------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleFacts:
    call: str  # the example call, e.g. "remove_Occ('hello', 'l')"
    expected: str  # its expected value as written, "" when the assert is not a comparison
    arg_values: tuple[object, ...]  # literal arguments (those that evaluate)
    n_args: int  # positional arguments of the call
    expected_type: str  # the expected value's type name, "" when unknown


@lru_cache(maxsize=4096)
def example_facts(example_test: str) -> ExampleFacts | None:
    try:
        node = ast.parse(example_test.strip()).body[0]
    except (SyntaxError, ValueError, IndexError):
        return None
    if not isinstance(node, ast.Assert):
        return None
    test = node.test
    call = next((n for n in ast.walk(test) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id not in ("set", "sorted", "list", "tuple", "abs", "round")), None)
    if call is None:
        return None
    expected, expected_type = "", ""
    if isinstance(test, ast.Compare) and len(test.comparators) == 1:
        expected = ast.unparse(test.comparators[0])
        try:
            expected_type = type(ast.literal_eval(test.comparators[0])).__name__
        except (ValueError, SyntaxError, TypeError):
            expected_type = ""
    args = []
    for a in call.args:
        try:
            args.append(ast.literal_eval(a))
        except (ValueError, SyntaxError, TypeError):
            pass
    return ExampleFacts(ast.unparse(call), expected, tuple(args), len(call.args), expected_type)


_WRITE_A_FUNCTION = re.compile(r"^(?:write|create|implement)\s+an?\s+(?:python\s+)?(?:function|program|code)\s+(?:to|that|which)\s+", re.I)


@lru_cache(maxsize=4096)
def goal(task: MbppTask) -> str:
    """The statement as a goal: "Write a function to find X." -> "find X"."""
    text = " ".join(task.text.split()).rstrip(".")
    text = _WRITE_A_FUNCTION.sub("", text)
    return text[0].lower() + text[1:] if text else "solve the problem"


_EDGE_CASES = {
    "list": ("an empty list", "a list with a single element", "repeated values"),
    "tuple": ("an empty tuple", "a tuple with one element", "repeated values"),
    "str": ("an empty string", "mixed upper and lower case", "spaces or punctuation"),
    "int": ("zero", "negative numbers", "large values"),
    "float": ("zero", "negative values", "rounding of the result"),
    "dict": ("an empty dictionary", "keys that share values"),
    "bool": ("both truth values",),
    "set": ("an empty set",),
}


@lru_cache(maxsize=4096)
def edge_cases(task: MbppTask) -> tuple[str, ...]:
    """Edge cases worth naming for this task, from the types of its example's arguments."""
    facts = example_facts(task.example_test)
    cases: list[str] = []
    for value in facts.arg_values if facts else ():
        for case in _EDGE_CASES.get(type(value).__name__, ()):
            if case not in cases:
                cases.append(case)
    return tuple(cases) or ("the smallest valid input", "inputs at the boundaries the statement mentions")
