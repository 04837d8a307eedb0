"""What a twin replica says: real recorded answers, chosen by a seeded draw of whether this agent gets it right.

The responder reads a request the way a model would, from its text alone (no extra API field, so the same request
works against real vLLM): the MBPP task by its statement, the role by its system prompt, the strategy by its
instruction, and the upstream work (candidate code, a plan, tests, a critique, test-run feedback) by how it
appears in the prompt. Then, for a role that writes code:

1. P(own answer correct) = sigmoid(ability - difficulty + shifts) (irt.py), the shifts from
   ``responder_params.yaml`` (strategy, plan, tests, test-run feedback, critique). It starts from the model's
   recorded outcome on the task (a model or task without recordings gets a "virtual recording": one fixed draw per
   (model, task) from the IRT probability) and the shifts move it by a monotone coupling that keeps the marginal
   at the IRT probability. A visible upstream solution known to be right (or wrong) may then be adopted instead,
   with the table's per-role probabilities.
2. Uniform draws fixed per (model, task, seed), shared by every prompt, decide: contexts are compared on common
   random numbers. The text is then a real solution with that graded outcome: the adopted or copied upstream
   solution, the model's own recorded answer, another model's answer (closest in size), MBPP's reference, or the
   reference with injected bugs. The twin never asserts correctness: the sandbox grades the text later.
3. The text is shaped by the strategy (Flash: code only; Concise: code and one sentence; DeepThink: reasoning
   paragraphs, then code; none: the recorded answer as it was), its prose taken from the recorded explanation and
   from reasoning built out of the task and the code, sized by the model's own verbosity with seeded noise.

Plans, tests and reviews are built the same way from a drawn solution. Every output goes through one filter that
drops any line holding a hidden assert of the task (only the example assert may ever appear).
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import Enum
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from scipy.special import expit

from sysaware.config import ModelDeployment, PoolConfig
from sysaware.engines.tokenizer import count_tokens, count_tokens_batch
from sysaware.engines.twin.answers import (
    Origin,
    Solution,
    TaskSolutions,
    load_recorded_answers,
    parse_quietly,
    prose_of,
    task_solutions,
)
from sysaware.engines.twin.irt import IrtModel, load_irt_model
from sysaware.engines.twin.protocols import Response
from sysaware.engines.types import ChatMessage, GenerationRequest
from sysaware.resources import RESOURCES
from sysaware.tasks.extract import defined_functions, extract_code, rename_entry_point
from sysaware.tasks.mbpp import MbppTask, find_task_in_text, get_task, load_tasks
from sysaware.tasks.prompts import ROLES, Role, RoleKind, Strategy, role_of_system_prompt, strategy_in_text

RESPONDER_PARAMS_YAML = RESOURCES / "responder_params.yaml"


# ---------------------------------------------------------------------------------------------------------------
# Parameters (responder_params.yaml): every number carries a source or is marked as an assumption
# ---------------------------------------------------------------------------------------------------------------


class ParamsError(ValueError):
    """The parameter file has a number without a source, or a missing or unknown key."""


@dataclass(frozen=True)
class ResponderParams:
    # correctness.strategy: logit shifts
    flash_shift: float
    concise_shift: float
    deepthink_pivot_pass_rate: float
    deepthink_slope: float
    deepthink_max_shift: float
    deepthink_min_shift: float
    # correctness.collaboration: logit shifts
    plan_shift: float
    tests_shift: float
    failing_feedback_shift: float
    passing_feedback_shift: float
    right_critique_shift: float
    wrong_critique_shift: float
    # correctness.adoption: P(emit a visible upstream solution instead of its own), by role
    adopt_right_decision_maker: float
    adopt_right_bug_fixer: float
    adopt_right_programmer: float
    adopt_wrong_upstream: float
    # correctness.copy: P(emit the matching upstream solution), by role
    copy_decision_maker: float
    copy_bug_fixer: float
    copy_programmer: float
    # review
    review_accuracy_low: float
    review_accuracy_high: float
    review_approve_unknown: float
    # length
    deepthink_prose_factor: float
    deepthink_min_prose_tokens: float
    plan_factor_flash: float
    plan_factor_concise: float
    plan_factor_none: float
    plan_factor_deepthink: float
    tests_asserts_flash: float
    tests_asserts_concise: float
    tests_asserts_none: float
    tests_asserts_deepthink: float
    review_sentences_flash: float
    review_sentences_concise: float
    review_sentences_none: float
    review_sentences_deepthink: float
    # sizes of the recorded models, billions of parameters
    recorded_model_params_b: dict[str, float]

    def deepthink_shift(self, pass_rate: float) -> float:
        raw = self.deepthink_slope * (pass_rate - self.deepthink_pivot_pass_rate)
        return min(max(raw, self.deepthink_min_shift), self.deepthink_max_shift)

    def strategy_shift(self, strategy: Strategy | None, pass_rate: float) -> float:
        if strategy is Strategy.FLASH:
            return self.flash_shift
        if strategy is Strategy.CONCISE:
            return self.concise_shift
        if strategy is Strategy.DEEPTHINK:
            return self.deepthink_shift(pass_rate)
        return 0.0

    def by_strategy(self, prefix: str, strategy: Strategy | None) -> float:
        return getattr(self, f"{prefix}_{strategy.value if strategy else 'none'}")


def _number(node: object, where: str) -> float:
    if not isinstance(node, dict) or "value" not in node:
        raise ParamsError(f"{where}: expected a mapping with 'value' and 'source' (or 'assumption' and 'reason')")
    if not node.get("source") and not (node.get("assumption") is True and node.get("reason")):
        raise ParamsError(f"{where}: a number needs a 'source', or 'assumption: true' with a 'reason'")
    value = node["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{where}: value must be a number, got {value!r}")
    return float(value)


def load_responder_params(path: str | Path = RESPONDER_PARAMS_YAML) -> ResponderParams:
    raw = yaml.safe_load(Path(path).read_text())
    flat: dict[str, object] = {}
    sections = {
        "correctness.strategy": raw["correctness"]["strategy"],
        "correctness.collaboration": raw["correctness"]["collaboration"],
        "review": raw["review"],
        "length": raw["length"],
    }
    for section, entries in sections.items():
        for key, node in entries.items():
            flat[("review_" if section == "review" else "") + key] = _number(node, f"{section}.{key}")
    for key, node in raw["correctness"]["copy"].items():
        flat[f"copy_{key}"] = _number(node, f"correctness.copy.{key}")
    for key, node in raw["correctness"]["adoption"].items():
        flat[f"adopt_{key}"] = _number(node, f"correctness.adoption.{key}")
    flat["recorded_model_params_b"] = {
        m: _number(node, f"recorded_model_params_b.{m}") for m, node in raw["recorded_model_params_b"].items()
    }
    names = {f.name for f in fields(ResponderParams)}
    if missing := names - set(flat):
        raise ParamsError(f"{path}: missing parameters {sorted(missing)}")
    if unknown := set(flat) - names:
        raise ParamsError(f"{path}: unknown parameters {sorted(unknown)}")
    return ResponderParams(**flat)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Reading a prompt
# ---------------------------------------------------------------------------------------------------------------


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


def _non_system_text(messages: Sequence[ChatMessage]) -> str:
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
    body = _non_system_text(messages) or full
    task = find_task(body)
    role = role_of_system_prompt(full)
    blocks = [m.group(0) for m in _BLOCK.finditer(body)]
    prose = _BLOCK.sub(" ", body)
    upstream = []
    has_test_block = False
    for block in blocks:
        code = extract_code(block)
        if code and defined_functions(code):
            if task and task.entry_point:
                code = rename_entry_point(code, task.entry_point)
            if code not in upstream:
                upstream.append(code)
        elif block.count("assert ") >= 2:
            has_test_block = True
    feedback, feedback_line = Feedback.NONE, ""
    count = _COUNT.search(prose)
    if count:
        feedback = Feedback.PASSING if count.group(1) == count.group(2) else Feedback.FAILING
        feedback_line = _line_at(prose, count.start())
    elif m := _FAILING.search(prose):
        feedback, feedback_line = Feedback.FAILING, _line_at(prose, m.start())
    elif m := _PASSING.search(prose):
        feedback, feedback_line = Feedback.PASSING, _line_at(prose, m.start())
    critique = Verdict.NONE
    for m in _VERDICT.finditer(prose):
        said = m.group(1)
        critique = Verdict.REJECT if _REJECT_WORDS.search(said) else Verdict.APPROVE if _APPROVE_WORDS.search(said) else critique
    return PromptReading(
        task=task,
        role=role,
        strategy=strategy_in_text(full),
        upstream_code=tuple(upstream),
        has_plan=ROLES["algorithm_designer"].title in body or bool(_PLAN_MARK.search(prose)),
        has_tests=ROLES["test_analyst"].title in body or bool(_TESTS_MARK.search(prose)) or has_test_block,
        feedback=feedback,
        critique=critique,
        feedback_line=feedback_line,
    )


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)].strip()[:200]


# ---------------------------------------------------------------------------------------------------------------
# Models: ability, size, verbosity
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verbosity:
    """How much a model writes around its code, measured on its recorded answers (tokens)."""

    median_extra_tokens: float  # median of (answer tokens - solution code tokens)
    log_sd: float  # spread of log(extra tokens), for the seeded noise


@dataclass(frozen=True)
class ModelProfile:
    name: str  # served name
    recorded_as: str | None  # RouterBench column prefix
    ability: float  # IRT logits
    pass_rate: float  # mean P(correct) over the fitted tasks, fraction
    params_b: float  # total parameters, billions
    verbosity: Verbosity
    verbosity_from: str  # the recorded model whose answers set the verbosity
    relative_verbosity: float  # its median extra tokens over the median of all recorded open models


@lru_cache(maxsize=32)
def measured_verbosity(recorded_model: str) -> Verbosity:
    answers = load_recorded_answers().for_model(recorded_model)
    totals = count_tokens_batch([a.raw_text for a in answers])
    codes = count_tokens_batch([extract_code(a.raw_text) for a in answers])
    extra = np.maximum(np.array(totals) - np.array(codes), 1)
    return Verbosity(float(np.median(extra)), float(np.clip(np.std(np.log(extra)), 0.15, 0.8)))


def _open_models_by_size(params: ResponderParams) -> list[tuple[str, float]]:
    return sorted(params.recorded_model_params_b.items(), key=lambda kv: kv[1])


def build_profile(model: ModelDeployment, irt: IrtModel, params: ResponderParams) -> ModelProfile:
    params_b = model.architecture.total_params() / 1e9
    if model.recorded_as is not None:
        if model.recorded_as not in irt.ability:
            raise KeyError(f"{model.name}: no recordings of {model.recorded_as!r} in the IRT fit")
        ability = irt.ability[model.recorded_as]
        verbosity_from = model.recorded_as
    else:
        assert model.mbpp_pass_at_1 is not None  # the config validator guarantees one of the two
        ability = irt.ability_for_pass_at_1(model.mbpp_pass_at_1)
        verbosity_from = min(
            _open_models_by_size(params), key=lambda kv: abs(math.log(kv[1] / max(params_b, 1e-3)))
        )[0]
    typical = float(np.median([measured_verbosity(m).median_extra_tokens for m in params.recorded_model_params_b]))
    return ModelProfile(
        name=model.name,
        recorded_as=model.recorded_as,
        ability=ability,
        pass_rate=irt.mean_p_correct(ability),
        params_b=params_b,
        verbosity=measured_verbosity(verbosity_from),
        verbosity_from=verbosity_from,
        relative_verbosity=measured_verbosity(verbosity_from).median_extra_tokens / typical,
    )


# ---------------------------------------------------------------------------------------------------------------
# Deciding the outcome
# ---------------------------------------------------------------------------------------------------------------


def coupled_p_correct(recorded_correct: bool | None, logit: float, shift: float) -> float:
    """P(correct) after a logit shift, given the recorded outcome when there is one.

    Monotone coupling: a positive shift only turns failures into successes, a negative one only the reverse, with
    the probabilities that keep the marginal at sigmoid(logit + shift) when the recorded outcome is itself a draw
    with P = sigmoid(logit).
    """
    p0, p1 = float(expit(logit)), float(expit(logit + shift))
    if recorded_correct is None:
        return p1
    if shift >= 0:
        return 1.0 if recorded_correct else (p1 - p0) / max(1.0 - p0, 1e-12)
    return p1 / max(p0, 1e-12) if recorded_correct else 0.0


def _uniform(*parts: str) -> float:
    """A uniform number in [0, 1) fixed by ``parts`` (SHA-256, so stable across processes and runs)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def _rng(request: GenerationRequest, purpose: str) -> np.random.Generator:
    """A generator seeded by (model, seed, purpose, messages) through SHA-256: stable across processes."""
    h = hashlib.sha256()
    for part in (request.model, str(request.seed), purpose):
        h.update(part.encode())
        h.update(b"\x1f")
    for m in request.messages:
        h.update(m.role.encode())
        h.update(b"\x1e")
        h.update(m.content.encode())
        h.update(b"\x1f")
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


# ---------------------------------------------------------------------------------------------------------------
# Reading code, to talk about it
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
    calls_self = any(isinstance(n, ast.Name) and n.id == entry_node.name for n in ast.walk(entry_node))
    text = ast.unparse(entry_node)
    idea = "calls itself recursively on a smaller input" if calls_self else next(
        (phrase for pattern, phrase in _IDEAS if pattern.search(code)), None
    )
    loops = _loop_depth(entry_node)
    if idea is None:
        branches = any(isinstance(n, (ast.If, ast.IfExp)) for n in ast.walk(entry_node))
        idea = (
            "iterates over the input and builds the answer step by step"
            if loops
            else "checks the conditions the statement gives and returns accordingly"
            if branches
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
        suspicious=_suspicious(entry_node),
    )


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


def _suspicious(func: ast.AST) -> str:
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            return f"the loop bound `{_short(node)}` (an off-by-one there changes the result)"
    for node in ast.walk(func):
        if isinstance(node, ast.Compare):
            ordering = any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in node.ops)
            return f"the comparison `{_short(node)}` at its boundary" if ordering else f"the condition `{_short(node)}`"
    for node in ast.walk(func):
        if isinstance(node, ast.Return) and node.value is not None:
            return f"the returned value `{_short(node.value)}` (its type must match the example's)"
    return "the overall logic"


# ---------------------------------------------------------------------------------------------------------------
# Reading the task, to talk about it
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


def _goal(task: MbppTask) -> str:
    """The statement as a goal: "Write a function to find X." -> "find X"."""
    text = " ".join(task.text.split()).rstrip(".")
    text = re.sub(r"^(?:write|create|implement)\s+an?\s+(?:python\s+)?(?:function|program|code)\s+(?:to|that|which)\s+", "", text, flags=re.I)
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


def edge_cases(task: MbppTask) -> list[str]:
    facts = example_facts(task.example_test)
    cases: list[str] = []
    for value in facts.arg_values if facts else ():
        for case in _EDGE_CASES.get(type(value).__name__, ()):
            if case not in cases:
                cases.append(case)
    return cases or ["the smallest valid input", "inputs at the boundaries the statement mentions"]


# ---------------------------------------------------------------------------------------------------------------
# Composing text
# ---------------------------------------------------------------------------------------------------------------


def _fence(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def _sentences(prose: str) -> list[str]:
    """Sentences of an explanation, without list markers or lead-ins to code ("Here is ...:")."""
    out = []
    for part in re.split(r"(?<=[.!?])\s+|\n+", prose):
        part = re.sub(r"^\s*(?:[-*]|\d+[.)])\s*", "", part).strip()
        if len(part) < 12 or part.endswith(":") or part.lower().startswith(("here is", "here's", "sure", "certainly", "i hope", "hope this", "let me know")):
            continue
        out.append(part)
    return out


def _take_until(units: Sequence[str], target_tokens: float, minimum: int = 1) -> list[str]:
    """Units, in order, while their total length stays within ``target_tokens``.

    The first ``minimum`` units are always kept; after them a unit that would overshoot is skipped and shorter
    ones further down may still fit (so one long sentence does not end the text early).
    """
    if not units:
        return []
    lengths = count_tokens_batch(list(units))
    taken, total = [], 0
    for i, (unit, n) in enumerate(zip(units, lengths)):
        if i >= minimum and total + n > target_tokens:
            continue
        taken.append(unit)
        total += n
    return taken


@dataclass(frozen=True)
class Context:
    """Everything the composers need for one request."""

    reading: PromptReading
    profile: ModelProfile
    params: ResponderParams
    rng: np.random.Generator

    def noisy(self, tokens: float) -> float:
        """``tokens`` times log-normal noise with the model's own spread (mean-preserving)."""
        sd = self.profile.verbosity.log_sd
        return tokens * math.exp(self.rng.normal(0.0, sd) - sd * sd / 2)

    def count(self, base: float) -> int:
        """How many sentences or asserts: ``base`` scaled by the model's verbosity, with noise, at least one."""
        return max(1, round(self.noisy(base * self.profile.relative_verbosity)))


def _reasoning_units(task: MbppTask, solution: Solution) -> list[str]:
    """Paragraph-sized pieces of step-by-step reasoning, most important first."""
    facts = code_facts(solution.code, task.entry_point)
    example = example_facts(task.example_test)
    units = [f"We need a function that will {_goal(task)}."]
    if example:
        check = f" must return `{example.expected}`" if example.expected else " must satisfy the assert"
        units.append(f"The example test calls `{example.call}`, which{check}; so the function is `{facts.entry}`"
                     f" and takes {len(facts.params) or 'its'} argument{'s' if len(facts.params) != 1 else ''}.")
    units.append(f"Idea: the solution {facts.key_idea}.")
    if facts.steps:  # one unit, all or nothing: a numbered list with a gap would read wrong
        units.append("\n".join(f"Step {i}: {s}" for i, s in enumerate(facts.steps, 1)))
    if facts.helpers:
        units.append(f"A helper ({', '.join(f'`{h}`' for h in facts.helpers)}) keeps the main function short.")
    recorded_prose = prose_of(solution.text) if solution.text else ""
    units += _sentences(recorded_prose)[:6]
    cases = edge_cases(task)
    units.append("Edge cases to keep in mind: " + ", ".join(cases) + ".")
    complexity = "O(n log n) because of the sort" if facts.sorts else {0: "linear in the input at most (built-in operations)", 1: "O(n) with one pass"}.get(facts.loop_depth, f"O(n^{facts.loop_depth}) with nested loops")
    units.append(f"Complexity: {complexity}, which is fine for inputs of this size.")
    if example and example.expected:
        units.append(f"Checking against the example: `{example.call}` should give `{example.expected}`, and the steps above produce exactly that.")
    if example and example.expected_type:
        units.append(f"The result must be a `{example.expected_type}`, like the expected value in the example, so the function returns that type rather than printing it.")
    return units


def _lead(reading: PromptReading) -> str:
    """A role-specific sentence before the code, reflecting what the prompt showed."""
    role_id = reading.role.role_id if reading.role else "programmer"
    if role_id == "bug_fixer" and reading.feedback is Feedback.FAILING and reading.feedback_line:
        return f"The test run reports `{reading.feedback_line}`, so the candidate must change. Corrected function:"
    if role_id == "bug_fixer" and reading.feedback is Feedback.PASSING:
        return "The candidate already passes its test, so it stays as it is:"
    if role_id == "decision_maker" and reading.upstream_code:
        n = len(reading.upstream_code)
        return f"After comparing the team's {n} candidates, the final solution is:" if n > 1 else "After checking the team's candidate, the final solution is:"
    return ""


def compose_code_answer(task: MbppTask, solution: Solution, ctx: Context) -> str:
    """A solution's text, shaped by the strategy (see the module docstring)."""
    strategy, reading = ctx.reading.strategy, ctx.reading
    code = solution.code
    lead = _lead(reading)
    if strategy is Strategy.FLASH:
        return _fence(code)
    if strategy is Strategy.CONCISE:
        return f"{_fence(code)}\n\n{_one_sentence(task, solution)}"
    if strategy is Strategy.DEEPTHINK:
        target = max(ctx.noisy(ctx.profile.verbosity.median_extra_tokens * ctx.params.deepthink_prose_factor), ctx.params.deepthink_min_prose_tokens)
        units = _take_until(_reasoning_units(task, solution), target, minimum=3)
        parts = ["Let me reason through this step by step.", *units, lead or "Here is the implementation:", _fence(code)]
        return "\n\n".join(parts)
    # No strategy: a recorded answer keeps its own shape; other solutions get the model's usual explanation.
    if solution.text is not None and not lead:
        return solution.text
    target = ctx.noisy(ctx.profile.verbosity.median_extra_tokens)
    intro = lead or f"Here is a Python function that will {_goal(task)}:"
    units = _reasoning_units(task, solution)[2:]  # the idea, the steps, the explanation
    explanation = _take_until(units, max(target - count_tokens(intro), 0), minimum=1)
    return "\n\n".join([intro, _fence(code), " ".join(explanation)])


def _one_sentence(task: MbppTask, solution: Solution) -> str:
    for sentence in _sentences(prose_of(solution.text) if solution.text else ""):
        if re.match(r"^(?:this|the) (?:function|code|solution)\b", sentence, re.I) and len(sentence) < 240:
            return sentence
    facts = code_facts(solution.code, task.entry_point)
    return f"`{facts.entry}` {facts.key_idea}."


def compose_plan(task: MbppTask, solution: Solution, ctx: Context) -> str:
    """An algorithm designer's plan, in prose: the key idea, the steps, the edge cases; no code block."""
    facts = code_facts(solution.code, task.entry_point)
    factor = ctx.params.by_strategy("plan_factor", ctx.reading.strategy)
    target = ctx.noisy(ctx.profile.verbosity.median_extra_tokens * factor)
    steps = [f"{i}. {s}" for i, s in enumerate(facts.steps, 1)]
    example = example_facts(task.example_test)
    units = [f"Key idea: the function `{facts.entry}` {facts.key_idea}.", "\n".join(["Steps:", *steps[:2]])]
    if steps[2:]:
        units.append("\n".join(steps[2:]))  # all or nothing: a list with a gap would read wrong
    units.append("Edge cases: " + ", ".join(edge_cases(task)) + ".")
    if example and example.expected:
        units.append(f"Input and output: `{facts.entry}` takes {', '.join(f'`{p}`' for p in facts.params) or 'the inputs'}"
                     f" and returns the result{f' as a `{example.expected_type}`' if example.expected_type else ''};"
                     f" on the example, `{example.call}` gives `{example.expected}`.")
    units += [f"Note: {s}" for s in _sentences(prose_of(solution.text) if solution.text else "")[:3]]
    if facts.helpers:
        units.append("Split out a helper for the inner computation, so the main function stays readable.")
    complexity = "O(n log n), dominated by the sort" if facts.sorts else ("linear" if facts.loop_depth <= 1 else f"O(n^{facts.loop_depth})")
    units.append(f"Expected cost: {complexity}.")
    units.append("Before returning, check the result against the example test; return the value, do not print it.")
    if ctx.reading.strategy is Strategy.DEEPTHINK:
        units.insert(0, f"Thinking it through: the task is to {_goal(task)}; the example `{task.example_test.strip()}` fixes the name and the output format.")
    taken = _take_until(units, target, minimum=2)
    # numbered steps continue the list on the next line; other units are paragraphs
    text = taken[0]
    for unit in taken[1:]:
        text += ("\n" if re.match(r"\d+\. ", unit) else "\n\n") + unit
    return text


def compose_tests(task: MbppTask, ctx: Context) -> str:
    """A test analyst's answer: edge cases and a few asserts derived from the example assert only."""
    count = ctx.count(ctx.params.by_strategy("tests_asserts", ctx.reading.strategy))
    example = example_facts(task.example_test)
    asserts = [task.example_test.strip()]
    if example:
        if example.expected_type:
            asserts.append(f"assert isinstance({example.call}, {example.expected_type})")
        asserts.append(f"assert {example.call} == {example.call}  # deterministic: same input, same output")
        if example.expected:
            asserts.append(f"result = {example.call}\nassert result == {example.expected}  # the result is returned, not printed")
        if example.arg_values and len(example.arg_values) == example.n_args and not any(isinstance(a, (int, float, str, bool)) for a in example.arg_values[:1]):
            literal = repr(tuple(example.arg_values))
            asserts.append(f"args = {literal}\n{task.entry_point}(*args)\nassert args == {literal}  # inputs are not modified")
    cases = edge_cases(task)
    lines = []
    if ctx.reading.strategy is Strategy.DEEPTHINK:
        lines.append(f"To test a function that should {_goal(task)}, start from the example and then probe the boundaries step by step.")
    if ctx.reading.strategy is not Strategy.FLASH:
        lines.append("Edge cases:\n" + "\n".join(f"- {c}" for c in cases))
    lines.append(_fence("\n".join(asserts[:count])))
    if ctx.reading.strategy in (None, Strategy.DEEPTHINK):
        lines.append("The expected values of the edge cases depend on the intended behaviour; the asserts above only rely on the example.")
    return "\n\n".join(lines)


def compose_review(task: MbppTask | None, verdicts: Sequence[tuple[str, bool]], ctx: Context) -> str:
    """A critique of each candidate: what it does, what to check, and a verdict (True: it looks right)."""
    paragraphs = []
    if ctx.reading.strategy is Strategy.DEEPTHINK and verdicts:
        paragraphs.append("Let me go through the code step by step before judging it.")
    example = example_facts(task.example_test) if task else None
    for i, (code, approve) in enumerate(verdicts, 1):
        facts = code_facts(code, task.entry_point if task else None)
        said = [f"Candidate {i} defines `{facts.entry}` and {facts.key_idea}."]
        said += [f"{'First' if j == 0 else 'Then'}, it does this: {s[0].lower()}{s[1:]}" for j, s in enumerate(facts.steps[:4])]
        said.append(f"The part to watch is {facts.suspicious}.")
        if example and example.expected:
            said.append(f"On the example, `{example.call}` {'gives' if approve else 'does not give'} `{example.expected}`.")
        else:
            said.append("It is consistent with the problem statement." if approve else "It does not match the problem statement.")
        if task:
            said.append(f"Inputs such as {', '.join(edge_cases(task)[:2])} {'are handled' if approve else 'should be tried as well'}.")
        verdict = (
            "Verdict: the code looks correct; no changes needed."
            if approve
            else f"Verdict: needs changes: fix {facts.suspicious}."
        )
        n = ctx.count(ctx.params.by_strategy("review_sentences", ctx.reading.strategy))
        # the opening and the point to watch come first; the walk through the steps fills the rest
        ordered = [said[0], *said[-3:], *said[1:-3]]
        paragraphs.append(" ".join([*ordered[: max(n - 1, 0)], verdict]))
    if not verdicts:
        name = f"`{task.entry_point}`" if task and task.entry_point else "the function"
        paragraphs.append(f"There is no candidate solution to review yet. A solution must define {name} and satisfy the example test. Verdict: needs changes: write the solution first.")
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------------------------------------------------------
# The responder
# ---------------------------------------------------------------------------------------------------------------


class TwinResponder:
    """Decides what a twin replica answers; a pure function of (model, messages, seed)."""

    def __init__(
        self,
        pool: PoolConfig,
        params: ResponderParams | None = None,
        irt: IrtModel | None = None,
    ) -> None:
        self.params = params or load_responder_params()
        self.irt = irt or load_irt_model()
        self.profiles = {m.name: build_profile(m, self.irt, self.params) for m in pool.models}

    # --- the protocol ---------------------------------------------------------------------------------------
    def respond(self, request: GenerationRequest) -> Response:
        profile = self.profiles.get(request.model)
        if profile is None:
            raise KeyError(f"unknown model {request.model!r}; the pool has {sorted(self.profiles)}")
        reading = read_prompt(tuple(request.messages))
        ctx = Context(reading, profile, self.params, _rng(request, "compose"))
        text = self._text(request, reading, ctx)
        if reading.task is not None:
            text = strip_hidden_asserts(text, reading.task)
        text = text.strip() or "I have nothing to add."
        return Response(text=text, output_tokens=max(count_tokens(text), 1))

    # --- deciding ----------------------------------------------------------------------------------------------
    def _text(self, request: GenerationRequest, reading: PromptReading, ctx: Context) -> str:
        task = reading.task
        if task is None:
            return _no_task_answer(_non_system_text(request.messages), reading, ctx)
        kind = reading.kind
        if kind is RoleKind.TESTS:
            return compose_tests(task, ctx)
        if kind is RoleKind.REVIEW:
            return compose_review(task, self._verdicts(request, reading, ctx.profile), ctx)
        solution = self.solution(request, reading, ctx.profile)
        if kind is RoleKind.PLAN:
            return compose_plan(task, solution, ctx)
        return compose_code_answer(task, solution, ctx)

    def base_outcome(self, profile: ModelProfile, task_id: int) -> bool:
        """The model's outcome on the task before any strategy or collaboration effect.

        A recorded model's recorded grade; otherwise a "virtual recording": a fixed draw with P = sigmoid(ability -
        difficulty), seeded by (model, task) alone, so every prompt and seed starts from the same outcome, as it
        does for a recorded model.
        """
        if profile.recorded_as is not None:
            answer = load_recorded_answers().get(profile.recorded_as, task_id)
            if answer is not None and answer.sandbox_correct is not None:
                return answer.sandbox_correct
        u = _uniform("virtual-recording", profile.name, str(task_id))
        return u < float(expit(profile.ability - self.irt.task_difficulty(task_id)))

    def own_p_correct(self, reading: PromptReading, profile: ModelProfile) -> float:
        """P(the agent's own solution is correct): its base outcome moved by the strategy and context shifts."""
        assert reading.task is not None
        task_id = reading.task.task_id
        logit = profile.ability - self.irt.task_difficulty(task_id)
        shift = self.params.strategy_shift(reading.strategy, profile.pass_rate)
        if reading.kind is RoleKind.CODE:
            shift += self._collaboration_shift(reading)
        return coupled_p_correct(self.base_outcome(profile, task_id), logit, shift)

    def p_correct(self, reading: PromptReading, profile: ModelProfile) -> float:
        """P(the emitted solution is correct): its own, or a visible upstream solution it adopts instead."""
        p_own = self.own_p_correct(reading, profile)
        if reading.kind is not RoleKind.CODE:
            return p_own
        adopt_right, adopt_wrong = self._adoption(reading)
        return p_own * (1.0 - adopt_wrong) + (1.0 - p_own) * adopt_right

    def _adoption(self, reading: PromptReading) -> tuple[float, float]:
        """P(adopting a visible correct solution instead of a wrong own one), P(adopting a wrong one instead of a
        right own one): the latter only when nothing visible is right and no failing test run warns it off."""
        graded = [c for _, c in self._graded_upstream(reading)]
        right = self._adopt_right(reading) if True in graded else 0.0
        wrong = (
            self.params.adopt_wrong_upstream
            if False in graded and True not in graded and reading.feedback is not Feedback.FAILING
            else 0.0
        )
        return right, wrong

    def _adopt_right(self, reading: PromptReading) -> float:
        role_id = reading.role.role_id if reading.role else "programmer"
        return getattr(self.params, f"adopt_right_{role_id}", self.params.adopt_right_programmer)

    def _collaboration_shift(self, reading: PromptReading) -> float:
        """Logit shifts from what the prompt shows: a plan, tests, a test run, a critique."""
        p = self.params
        shift = p.plan_shift * reading.has_plan + p.tests_shift * reading.has_tests
        if reading.feedback is Feedback.PASSING:
            shift += p.passing_feedback_shift
        elif reading.feedback is Feedback.FAILING:
            shift += p.failing_feedback_shift
        graded = [c for _, c in self._graded_upstream(reading)]
        if reading.critique is not Verdict.NONE and graded and None not in graded:
            truth = True in graded
            said = reading.critique is Verdict.APPROVE
            shift += p.right_critique_shift if said == truth else p.wrong_critique_shift
        return shift

    def _graded_upstream(self, reading: PromptReading) -> list[tuple[str, bool | None]]:
        if reading.task is None or not reading.upstream_code:
            return []
        known = task_solutions(reading.task.task_id)
        return [(code, known.correctness_of(code)) for code in reading.upstream_code]

    def solution(self, request: GenerationRequest, reading: PromptReading, profile: ModelProfile) -> Solution:
        """The solution this agent writes: seeded draws of its outcome, then a real text with that outcome.

        Uniform draws are fixed per (model, task, seed), whatever else the prompt holds: contexts are compared on
        common random numbers, so more help never turns a success into a failure.
        """
        assert reading.task is not None
        task_id = str(reading.task.task_id)
        rng = _rng(request, "solution")
        own_correct = _uniform("outcome", request.model, task_id, str(request.seed)) < self.own_p_correct(reading, profile)
        solutions = task_solutions(reading.task.task_id)
        if reading.kind is RoleKind.CODE and reading.upstream_code:
            graded = self._graded_upstream(reading)
            right = [code for code, c in graded if c is True]
            wrong = [code for code, c in graded if c is False]
            adopt_right, adopt_wrong = self._adoption(reading)
            u_adopt = _uniform("adopt", request.model, task_id, str(request.seed))
            # 1. Adopt a visible solution instead of its own: a right one over its failure, or (anchoring) a
            #    wrong one over its success.
            if not own_correct and right and u_adopt < adopt_right:
                return Solution(right[-1], True, Origin.UPSTREAM)
            if own_correct and wrong and u_adopt < adopt_wrong:
                return Solution(wrong[-1], False, Origin.UPSTREAM)
            # 2. Its own outcome; a visible solution with that outcome is copied rather than rewritten, mostly.
            same = right if own_correct else wrong
            role_id = reading.role.role_id if reading.role else "programmer"
            if same and rng.random() < getattr(self.params, f"copy_{role_id}", self.params.copy_programmer):
                return Solution(same[-1], own_correct, Origin.UPSTREAM)
        # 3. The model's own recorded answer, else another model's (closest in size), else reference / bug-injected.
        return self._recorded_with_outcome(solutions, own_correct, profile, rng)

    def _recorded_with_outcome(
        self, solutions: TaskSolutions, correct: bool, profile: ModelProfile, rng: np.random.Generator
    ) -> Solution:
        if profile.recorded_as is not None and solutions.grade_of(profile.recorded_as) is correct:
            own = solutions.recorded(profile.recorded_as)
            if own is not None:
                return own
        sizes = self.params.recorded_model_params_b
        others = [m for m in solutions.models_graded(correct) if m != profile.recorded_as]
        jitter = rng.random(len(others))  # breaks ties between models of equal distance, seeded

        def distance(i: int) -> tuple[float, float]:
            size = sizes.get(others[i])
            gap = abs(math.log(size / max(profile.params_b, 1e-3))) if size else math.inf  # API models: last
            return (gap, float(jitter[i]))

        for i in sorted(range(len(others)), key=distance):
            chosen = solutions.recorded(others[i])
            if chosen is not None:
                return chosen
        return solutions.reference if correct else solutions.mutation

    def _verdicts(self, request: GenerationRequest, reading: PromptReading, profile: ModelProfile) -> list[tuple[str, bool]]:
        """Per upstream candidate, whether this reviewer approves it: right with P = its accuracy."""
        rng = _rng(request, "review")
        p = self.params
        accuracy = p.review_accuracy_low + (p.review_accuracy_high - p.review_accuracy_low) * profile.pass_rate
        verdicts = []
        for code, truth in self._graded_upstream(reading):
            if truth is None:
                verdicts.append((code, bool(rng.random() < p.review_approve_unknown)))
            else:
                verdicts.append((code, truth if rng.random() < accuracy else not truth))
        return verdicts


def _no_task_answer(body: str, reading: PromptReading, ctx: Context) -> str:
    """No MBPP task in the prompt: a short, honest answer shaped like the role's."""
    names = [n for n in re.findall(r"assert\s+(?:not\s+)?\(?([A-Za-z_]\w*)\s*\(", body) if n not in ("set", "sorted", "list")]
    if reading.kind is RoleKind.CODE:
        name = names[0] if names else "solution"
        skeleton = _fence(f"def {name}(*args):\n    \"\"\"Fill in once the expected behaviour is specified.\"\"\"\n    raise NotImplementedError")
        if reading.strategy is Strategy.FLASH:
            return skeleton
        return "I could not find a complete programming problem in the request. Here is a skeleton to complete once the expected behaviour and an example are given:\n\n" + skeleton
    if reading.kind is RoleKind.PLAN:
        return "Key idea: the request does not state a problem precisely enough to plan an algorithm. Please give the problem statement and one example of the expected input and output."
    if reading.kind is RoleKind.TESTS:
        return "Edge cases: without a problem statement, only generic ones apply: empty input, a single element, and the largest expected input."
    return compose_review(None, [], ctx)


def strip_hidden_asserts(text: str, task: MbppTask) -> str:
    """``text`` without any line that contains one of the task's hidden asserts (only the example may show).

    Compared without whitespace, on the assert and on its expression alone (a quoted ``f(x) == y`` counts too);
    the example assert is cut out of a line first, so a hidden assert that happens to be a prefix of it does not
    remove the example.
    """
    example = "".join(task.example_test.split())
    example_body = re.sub(r"^assert", "", example)
    hidden = []
    for test in task.test_list[1:]:
        squeezed = "".join(test.split())
        if squeezed == example:
            continue
        body = re.sub(r"^assert", "", squeezed)
        hidden.append(body if len(body) >= 8 else squeezed)
    if not hidden:
        return text
    kept = []
    for line in text.split("\n"):
        squeezed = "".join(line.split()).replace(example, "").replace(example_body, "")
        if not any(h in squeezed for h in hidden):
            kept.append(line)
    return "\n".join(kept)


# ---------------------------------------------------------------------------------------------------------------
# Report: what a single programmer says, per model and strategy (python -m sysaware.engines.twin.responder)
# ---------------------------------------------------------------------------------------------------------------


def single_agent_report(pools: Sequence[PoolConfig], task_ids: Sequence[int], seed: int = 0, workers: int = 2) -> list[dict]:
    """Per (model, strategy): mean output tokens and the sandbox-graded pass@1 of one programmer agent."""
    from sysaware.tasks.prompts import STRATEGY_INSTRUCTIONS, task_prompt
    from sysaware.tasks.sandbox import SandboxJob, run_tests_batch

    strategies: list[Strategy | None] = [None, *Strategy]
    rows, jobs, job_index = [], [], {}
    for pool in pools:
        responder = TwinResponder(pool)
        for model in pool.models:
            for strategy in strategies:
                tokens, keys = [], []
                for task_id in task_ids:
                    task = get_task(task_id)
                    user = task_prompt(task.text, task.example_test)
                    if strategy is not None:
                        user += f"\n\n{STRATEGY_INSTRUCTIONS[strategy]}"
                    messages = (ChatMessage("system", ROLES["programmer"].system_prompt), ChatMessage("user", user))
                    response = responder.respond(GenerationRequest(f"{task_id}", model.name, messages, seed=seed + task_id))
                    tokens.append(response.output_tokens)
                    code = extract_code(response.text)
                    key = (task_id, code)
                    if key not in job_index:
                        job_index[key] = len(jobs)
                        jobs.append(SandboxJob(code, task.test_list, "\n".join(task.test_imports)))
                    keys.append(job_index[key])
                rows.append({"model": model.name, "recorded": model.recorded_as is not None,
                             "strategy": strategy.value if strategy else "none", "mean_tokens": float(np.mean(tokens)), "jobs": keys})
    results = run_tests_batch(jobs, max_workers=workers)
    for row in rows:
        row["pass_at_1"] = float(np.mean([results[i].passed for i in row.pop("jobs")]))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from sysaware.config import CONFIG_DIR, load_pool
    from sysaware.engines.twin.answers import routerbench_test_task_ids

    parser = argparse.ArgumentParser(description="What one twin programmer says: tokens and sandbox pass@1 per strategy.")
    parser.add_argument("--pools", nargs="*", default=[str(CONFIG_DIR / "pool_twin.yaml"), str(CONFIG_DIR / "pool_llama3.yaml")])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    task_ids = routerbench_test_task_ids()
    rows = single_agent_report([load_pool(p) for p in args.pools], task_ids, seed=args.seed, workers=args.workers)
    print(f"single programmer agent, {len(task_ids)} RouterBench test-split tasks, graded by the sandbox")
    print(f"{'model':28s} {'strategy':10s} {'tokens':>7s} {'pass@1':>7s}")
    for r in rows:
        print(f"{r['model']:28s} {r['strategy']:10s} {r['mean_tokens']:7.1f} {r['pass_at_1']:7.3f}")
    flash = np.mean([r["mean_tokens"] for r in rows if r["strategy"] == "flash"])
    deep = np.mean([r["mean_tokens"] for r in rows if r["strategy"] == "deepthink"])
    print(f"DeepThink / Flash mean output tokens: {deep / flash:.2f}x")


if __name__ == "__main__":
    main()
