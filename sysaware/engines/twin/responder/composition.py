"""Shaping an answer's text by the role's kind and the strategy, sized by the model's verbosity with seeded noise.

- code (programmer, bug fixer, decision maker): Flash is the code alone; Concise the code and one sentence;
  DeepThink reasoning paragraphs, then the code; no strategy the recorded answer as it was (other solutions get
  the model's usual amount of explanation).
- plan (algorithm designer): the key idea, the steps, the edge cases, in prose; no code block.
- tests (test analyst): edge cases and a few asserts derived from the example assert only.
- review (reviewer): per candidate, what it does, what to check, and a verdict.

Fast path: everything that does not depend on the request's seed is cached per (task, solution) as pieces with
their token counts (``CountedText``); a request only draws its length noise, picks pieces and joins them, and its
token count is the sum of the pieces' counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from sysaware.engines.twin.responder.answers import Solution
from sysaware.engines.twin.responder.renaming import prose_of
from sysaware.engines.twin.responder.code_facts import code_facts, edge_cases, example_facts, goal
from sysaware.engines.twin.responder.counted_text import CountedText, concatenate, counted, counted_all, join
from sysaware.engines.twin.responder.draws import RequestDraws
from sysaware.engines.twin.responder.params import ResponderParams
from sysaware.engines.twin.responder.profiles import ModelProfile
from sysaware.engines.twin.responder.prompt_reading import Feedback, PromptReading
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import RoleKind, Strategy

# ---------------------------------------------------------------------------------------------------------------
# Sizing
# ---------------------------------------------------------------------------------------------------------------


# Read-only by convention, not frozen: one is built per request, and a frozen dataclass's __init__ costs several
# times a plain one's.
@dataclass(slots=True)
class Context:
    """Everything the composers need for one request."""

    reading: PromptReading
    profile: ModelProfile
    params: ResponderParams
    draws: RequestDraws

    def noisy(self, tokens: float) -> float:
        """``tokens`` times log-normal noise with the model's own spread (mean-preserving)."""
        sd = self.profile.verbosity.log_sd
        return tokens * math.exp(self.draws.stream("compose").normal(0.0, sd) - sd * sd / 2)

    def count(self, base: float) -> int:
        """How many sentences or asserts: ``base`` scaled by the model's verbosity, with noise, at least one."""
        return max(1, round(self.noisy(base * self.profile.relative_verbosity)))


def fitting(units: Sequence[CountedText], target_tokens: float, minimum: int = 1) -> list[int]:
    """Indices of the units kept, in order, while their total length stays within ``target_tokens``.

    The first ``minimum`` units are always kept; after them a unit that would overshoot is skipped and shorter
    ones further down may still fit (so one long sentence does not end the text early).
    """
    kept, total = [], 0
    for i, unit in enumerate(units):
        if i >= minimum and total + unit.tokens > target_tokens:
            continue
        kept.append(i)
        total += unit.tokens
    return kept


def take_until(units: Sequence[CountedText], target_tokens: float, minimum: int = 1) -> list[CountedText]:
    return [units[i] for i in fitting(units, target_tokens, minimum)]


# ---------------------------------------------------------------------------------------------------------------
# Pieces shared by the composers
# ---------------------------------------------------------------------------------------------------------------


def fence(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


@lru_cache(maxsize=8192)
def fenced(code: str) -> CountedText:
    return counted(fence(code))


# Compiled once: the re module's own cache (512 patterns) is flushed by the per-answer patterns of the renaming.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*]|\d+[.)])\s*")
_ABOUT_THE_CODE = re.compile(r"^(?:this|the) (?:function|code|solution)\b", re.I)
_NUMBERED = re.compile(r"\d+\. ")
_ASSERTED_NAME = re.compile(r"assert\s+(?:not\s+)?\(?([A-Za-z_]\w*)\s*\(")


def sentences(prose: str) -> list[str]:
    """Sentences of an explanation, without list markers or lead-ins to code ("Here is ...:")."""
    out = []
    for part in _SENTENCE_END.split(prose):
        part = _LIST_MARKER.sub("", part).strip()
        if len(part) < 12 or part.endswith(":") or part.lower().startswith(("here is", "here's", "sure", "certainly", "i hope", "hope this", "let me know")):
            continue
        out.append(part)
    return out


def _recorded_sentences(solution: Solution) -> list[str]:
    return sentences(prose_of(solution.text) if solution.text else "")


@lru_cache(maxsize=8192)
def reasoning_units(task: MbppTask, solution: Solution) -> tuple[CountedText, ...]:
    """Paragraph-sized pieces of step-by-step reasoning, most important first."""
    facts = code_facts(solution.code, task.entry_point)
    example = example_facts(task.example_test)
    units = [f"We need a function that will {goal(task)}."]
    if example:
        check = f" must return `{example.expected}`" if example.expected else " must satisfy the assert"
        units.append(f"The example test calls `{example.call}`, which{check}; so the function is `{facts.entry}`"
                     f" and takes {len(facts.params) or 'its'} argument{'s' if len(facts.params) != 1 else ''}.")
    units.append(f"Idea: the solution {facts.key_idea}.")
    if facts.steps:  # one unit, all or nothing: a numbered list with a gap would read wrong
        units.append("\n".join(f"Step {i}: {s}" for i, s in enumerate(facts.steps, 1)))
    if facts.helpers:
        units.append(f"A helper ({', '.join(f'`{h}`' for h in facts.helpers)}) keeps the main function short.")
    units += _recorded_sentences(solution)[:6]
    units.append("Edge cases to keep in mind: " + ", ".join(edge_cases(task)) + ".")
    complexity = "O(n log n) because of the sort" if facts.sorts else {0: "linear in the input at most (built-in operations)", 1: "O(n) with one pass"}.get(facts.loop_depth, f"O(n^{facts.loop_depth}) with nested loops")
    units.append(f"Complexity: {complexity}, which is fine for inputs of this size.")
    if example and example.expected:
        units.append(f"Checking against the example: `{example.call}` should give `{example.expected}`, and the steps above produce exactly that.")
    if example and example.expected_type:
        units.append(f"The result must be a `{example.expected_type}`, like the expected value in the example, so the function returns that type rather than printing it.")
    return counted_all(units)


# ---------------------------------------------------------------------------------------------------------------
# Code
# ---------------------------------------------------------------------------------------------------------------

_REASONING_OPENING = "Let me reason through this step by step."


def lead(reading: PromptReading) -> str:
    """A role-specific sentence before the code, reflecting what the prompt showed."""
    role_id = reading.role_id
    if role_id == "bug_fixer" and reading.feedback is Feedback.FAILING and reading.feedback_line:
        return f"The test run reports `{reading.feedback_line}`, so the candidate must change. Corrected function:"
    if role_id == "bug_fixer" and reading.feedback is Feedback.PASSING:
        return "The candidate already passes its test, so it stays as it is:"
    if role_id == "decision_maker" and reading.upstream_code:
        n = len(reading.upstream_code)
        return f"After comparing the team's {n} candidates, the final solution is:" if n > 1 else "After checking the team's candidate, the final solution is:"
    return ""


def compose_code_answer(task: MbppTask, solution: Solution, ctx: Context) -> CountedText:
    """A solution's text, shaped by the strategy (see the module docstring)."""
    strategy = ctx.reading.strategy
    if strategy is Strategy.FLASH:
        return fenced(solution.code)
    if strategy is Strategy.CONCISE:
        return _concise_answer(task, solution)
    before_code = lead(ctx.reading)
    if strategy is Strategy.DEEPTHINK:
        target = max(ctx.noisy(ctx.profile.verbosity.median_extra_tokens * ctx.params.deepthink_prose_factor), ctx.params.deepthink_min_prose_tokens)
        units = take_until(reasoning_units(task, solution), target, minimum=3)
        parts = [counted(_REASONING_OPENING), *units, counted(before_code or "Here is the implementation:"), fenced(solution.code)]
        return join("\n\n", parts)
    # No strategy: a recorded answer keeps its own shape; other solutions get the model's usual explanation.
    if solution.text is not None and not before_code:
        return counted(solution.text)
    target = ctx.noisy(ctx.profile.verbosity.median_extra_tokens)
    intro = counted(before_code or f"Here is a Python function that will {goal(task)}:")
    units = reasoning_units(task, solution)[2:]  # the idea, the steps, the explanation
    explanation = take_until(units, max(target - intro.tokens, 0), minimum=1)
    return join("\n\n", [intro, fenced(solution.code), join(" ", explanation)])


@lru_cache(maxsize=8192)
def _concise_answer(task: MbppTask, solution: Solution) -> CountedText:
    return join("\n\n", [fenced(solution.code), counted(_one_sentence(task, solution))])


def _one_sentence(task: MbppTask, solution: Solution) -> str:
    for sentence in _recorded_sentences(solution):
        if _ABOUT_THE_CODE.match(sentence) and len(sentence) < 240:
            return sentence
    facts = code_facts(solution.code, task.entry_point)
    return f"`{facts.entry}` {facts.key_idea}."


# ---------------------------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanUnits:
    """A plan's candidate paragraphs, most important first, each with the whitespace that goes before it."""

    units: tuple[CountedText, ...]
    separators: tuple[str, ...]  # "" before the first; "\n" before a numbered step (it continues the list)


@lru_cache(maxsize=8192)
def plan_units(task: MbppTask, solution: Solution, deepthink: bool) -> PlanUnits:
    facts = code_facts(solution.code, task.entry_point)
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
    units += [f"Note: {s}" for s in _recorded_sentences(solution)[:3]]
    if facts.helpers:
        units.append("Split out a helper for the inner computation, so the main function stays readable.")
    complexity = "O(n log n), dominated by the sort" if facts.sorts else ("linear" if facts.loop_depth <= 1 else f"O(n^{facts.loop_depth})")
    units.append(f"Expected cost: {complexity}.")
    units.append("Before returning, check the result against the example test; return the value, do not print it.")
    if deepthink:
        units.insert(0, f"Thinking it through: the task is to {goal(task)}; the example `{task.example_test.strip()}` fixes the name and the output format.")
    separators = tuple("" if i == 0 else "\n" if _NUMBERED.match(u) else "\n\n" for i, u in enumerate(units))
    return PlanUnits(counted_all(units), separators)


def compose_plan(task: MbppTask, solution: Solution, ctx: Context) -> CountedText:
    """An algorithm designer's plan, in prose: the key idea, the steps, the edge cases; no code block."""
    factor = ctx.params.by_strategy("plan_factor", ctx.reading.strategy)
    target = ctx.noisy(ctx.profile.verbosity.median_extra_tokens * factor)
    plan = plan_units(task, solution, ctx.reading.strategy is Strategy.DEEPTHINK)
    kept = fitting(plan.units, target, minimum=2)
    # the first unit always stays, so it is the one without a separator
    return concatenate((plan.separators[i], plan.units[i]) for i in kept)


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _candidate_asserts(task: MbppTask) -> tuple[str, ...]:
    """The asserts a test analyst may write, most basic first: all derived from the example assert."""
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
    return tuple(asserts)


def compose_tests(task: MbppTask, ctx: Context) -> CountedText:
    """A test analyst's answer: edge cases and a few asserts derived from the example assert only."""
    count = ctx.count(ctx.params.by_strategy("tests_asserts", ctx.reading.strategy))
    return _tests_answer(task, ctx.reading.strategy, min(count, len(_candidate_asserts(task))))


@lru_cache(maxsize=8192)
def _tests_answer(task: MbppTask, strategy: Strategy | None, n_asserts: int) -> CountedText:
    lines = []
    if strategy is Strategy.DEEPTHINK:
        lines.append(f"To test a function that should {goal(task)}, start from the example and then probe the boundaries step by step.")
    if strategy is not Strategy.FLASH:
        lines.append("Edge cases:\n" + "\n".join(f"- {c}" for c in edge_cases(task)))
    lines.append(fence("\n".join(_candidate_asserts(task)[:n_asserts])))
    if strategy in (None, Strategy.DEEPTHINK):
        lines.append("The expected values of the edge cases depend on the intended behaviour; the asserts above only rely on the example.")
    return counted("\n\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# Reviews
# ---------------------------------------------------------------------------------------------------------------


def compose_review(task: MbppTask | None, verdicts: Sequence[tuple[str, bool]], ctx: Context) -> CountedText:
    """A critique of each candidate: what it does, what to check, and a verdict (True: it looks right)."""
    paragraphs = []
    if ctx.reading.strategy is Strategy.DEEPTHINK and verdicts:
        paragraphs.append(counted("Let me go through the code step by step before judging it."))
    for i, (code, approve) in enumerate(verdicts, 1):
        n_sentences = ctx.count(ctx.params.by_strategy("review_sentences", ctx.reading.strategy))
        paragraphs.append(_review_paragraph(task, i, code, approve, n_sentences))
    if not verdicts:
        paragraphs.append(_nothing_to_review(task))
    return join("\n\n", paragraphs)


@lru_cache(maxsize=8192)
def _review_paragraph(task: MbppTask | None, i: int, code: str, approve: bool, n_sentences: int) -> CountedText:
    example = example_facts(task.example_test) if task else None
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
    verdict = "Verdict: the code looks correct; no changes needed." if approve else f"Verdict: needs changes: fix {facts.suspicious}."
    # the opening and the point to watch come first; the walk through the steps fills the rest
    ordered = [said[0], *said[-3:], *said[1:-3]]
    return counted(" ".join([*ordered[: max(n_sentences - 1, 0)], verdict]))


@lru_cache(maxsize=4096)
def _nothing_to_review(task: MbppTask | None) -> CountedText:
    name = f"`{task.entry_point}`" if task and task.entry_point else "the function"
    return counted(f"There is no candidate solution to review yet. A solution must define {name} and satisfy the example test. Verdict: needs changes: write the solution first.")


# ---------------------------------------------------------------------------------------------------------------
# No task in the prompt
# ---------------------------------------------------------------------------------------------------------------


def compose_without_task(body: str, reading: PromptReading, ctx: Context) -> CountedText:
    """No MBPP task in the prompt: a short, honest answer shaped like the role's."""
    names = [n for n in _ASSERTED_NAME.findall(body) if n not in ("set", "sorted", "list")]
    if reading.kind is RoleKind.CODE:
        name = names[0] if names else "solution"
        skeleton = fence(f"def {name}(*args):\n    \"\"\"Fill in once the expected behaviour is specified.\"\"\"\n    raise NotImplementedError")
        if reading.strategy is Strategy.FLASH:
            return counted(skeleton)
        return counted("I could not find a complete programming problem in the request. Here is a skeleton to complete once the expected behaviour and an example are given:\n\n" + skeleton)
    if reading.kind is RoleKind.PLAN:
        return counted("Key idea: the request does not state a problem precisely enough to plan an algorithm. Please give the problem statement and one example of the expected input and output.")
    if reading.kind is RoleKind.TESTS:
        return counted("Edge cases: without a problem statement, only generic ones apply: empty input, a single element, and the largest expected input.")
    return compose_review(None, [], ctx)
