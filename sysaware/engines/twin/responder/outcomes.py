"""Whether an agent gets it right, and which real solution it then emits.

1. P(own answer correct) = sigmoid(ability - difficulty + shifts) (irt.py), the shifts from
   ``responder_params.yaml`` (strategy, plan, tests, test-run feedback, critique). It starts from the model's
   recorded outcome on the task (a model or task without recordings gets a "virtual recording": one fixed draw per
   (model, task) from the IRT probability) and the shifts move it by a monotone coupling that keeps the marginal
   at the IRT probability. A visible upstream solution known to be right (or wrong) may then be adopted instead,
   with the table's per-role probabilities.
2. Uniform draws fixed per (model, task, seed), shared by every prompt, decide: contexts are compared on common
   random numbers, so more help never turns a success into a failure. The emitted text is a real solution with
   the drawn outcome: the adopted or copied upstream solution, the model's own recorded answer, another model's
   answer (closest in size), MBPP's reference, or the reference with injected bugs. The twin never asserts
   correctness: the sandbox grades the text later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby

from scipy.special import expit

from sysaware.engines.twin.responder.answers import Origin, Solution, TaskSolutions, load_recorded_answers, task_solutions
from sysaware.engines.twin.responder.draws import RequestDraws, uniform
from sysaware.engines.twin.responder.irt import IrtModel
from sysaware.engines.twin.responder.params import ResponderParams
from sysaware.engines.twin.responder.profiles import ModelProfile
from sysaware.engines.twin.responder.prompt_reading import Feedback, PromptReading, Verdict
from sysaware.tasks.prompts import RoleKind


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


@dataclass(frozen=True)
class Odds:
    """What decides an agent's outcome on one prompt before any draw (computed once per model and prompt)."""

    p_own: float  # P(its own solution is correct)
    upstream: tuple[tuple[str, bool | None], ...]  # visible solutions with their graded truth (None: unknown)
    adopt_right: float  # P(emitting a visible correct solution instead of its own wrong one)
    adopt_wrong: float  # P(emitting a visible wrong solution instead of its own right one)
    copy: float  # P(copying a visible solution with its own outcome rather than rewriting it)

    @property
    def right(self) -> list[str]:
        return [code for code, truth in self.upstream if truth is True]

    @property
    def wrong(self) -> list[str]:
        return [code for code, truth in self.upstream if truth is False]


@dataclass(frozen=True)
class StandIns:
    """For a model without a usable recording of the wanted grade: the other models' answers it may emit."""

    n_models: int  # other models whose answer has that grade (the seeded tie-break draws one number each)
    nearest: tuple[tuple[int, Solution], ...]  # (index among them, answer) of those with code at the smallest size gap
    fallback: Solution  # the reference or its bug-injected variant, when no such answer holds code

    def pick(self, draws: RequestDraws) -> Solution:
        if not self.nearest:
            return self.fallback
        if len(self.nearest) == 1:
            return self.nearest[0][1]
        jitter = draws.stream("solution").random(self.n_models)  # breaks ties between models of equal distance
        return min(self.nearest, key=lambda item: (float(jitter[item[0]]), item[0]))[1]


class Outcomes:
    """P(correct) from the IRT and the parameter table, and the seeded choice of the solution an agent emits."""

    def __init__(self, params: ResponderParams, irt: IrtModel) -> None:
        self.params = params
        self.irt = irt
        self._base: dict[tuple[str, int], bool] = {}
        self._stand_ins: dict[tuple[str, int, bool], StandIns] = {}

    # --- probabilities ------------------------------------------------------------------------------------------
    def base_outcome(self, profile: ModelProfile, task_id: int) -> bool:
        """The model's outcome on the task before any strategy or collaboration effect.

        A recorded model's recorded grade; otherwise a "virtual recording": a fixed draw with P = sigmoid(ability -
        difficulty), seeded by (model, task) alone, so every prompt and seed starts from the same outcome, as it
        does for a recorded model.
        """
        key = (profile.name, task_id)
        if key not in self._base:
            self._base[key] = self._base_outcome(profile, task_id)
        return self._base[key]

    def _base_outcome(self, profile: ModelProfile, task_id: int) -> bool:
        if profile.recorded_as is not None:
            answer = load_recorded_answers().get(profile.recorded_as, task_id)
            if answer is not None and answer.sandbox_correct is not None:
                return answer.sandbox_correct
        u = uniform("virtual-recording", profile.name, str(task_id))
        return u < float(expit(profile.ability - self.irt.task_difficulty(task_id)))

    def odds(self, reading: PromptReading, profile: ModelProfile) -> Odds:
        assert reading.task is not None
        upstream = self._graded_upstream(reading)
        graded = [truth for _, truth in upstream]
        adopt_right = self.params.adopt_right_for(reading.role_id) if True in graded else 0.0
        # anchoring on a wrong solution: only when nothing visible is right and no failing test run warns it off
        adopt_wrong = (
            self.params.adopt_wrong_upstream
            if False in graded and True not in graded and reading.feedback is not Feedback.FAILING
            else 0.0
        )
        return Odds(
            p_own=self._own_p_correct(reading, profile, graded),
            upstream=upstream,
            adopt_right=adopt_right,
            adopt_wrong=adopt_wrong,
            copy=self.params.copy_for(reading.role_id),
        )

    def p_correct(self, reading: PromptReading, profile: ModelProfile) -> float:
        """P(the emitted solution is correct): its own, or a visible upstream solution it adopts instead."""
        odds = self.odds(reading, profile)
        if reading.kind is not RoleKind.CODE:
            return odds.p_own
        return odds.p_own * (1.0 - odds.adopt_wrong) + (1.0 - odds.p_own) * odds.adopt_right

    def _own_p_correct(self, reading: PromptReading, profile: ModelProfile, graded: list[bool | None]) -> float:
        """P(the agent's own solution is correct): its base outcome moved by the strategy and context shifts."""
        assert reading.task is not None
        task_id = reading.task.task_id
        logit = profile.ability - self.irt.task_difficulty(task_id)
        shift = self.params.strategy_shift(reading.strategy, profile.pass_rate)
        if reading.kind is RoleKind.CODE:
            shift += self._collaboration_shift(reading, graded)
        return coupled_p_correct(self.base_outcome(profile, task_id), logit, shift)

    def _collaboration_shift(self, reading: PromptReading, graded: list[bool | None]) -> float:
        """Logit shifts from what the prompt shows: a plan, tests, a test run, a critique."""
        p = self.params
        shift = p.plan_shift * reading.has_plan + p.tests_shift * reading.has_tests
        if reading.feedback is Feedback.PASSING:
            shift += p.passing_feedback_shift
        elif reading.feedback is Feedback.FAILING:
            shift += p.failing_feedback_shift
        if reading.critique is not Verdict.NONE and graded and None not in graded:
            truth = True in graded
            said = reading.critique is Verdict.APPROVE
            shift += p.right_critique_shift if said == truth else p.wrong_critique_shift
        return shift

    @staticmethod
    def _graded_upstream(reading: PromptReading) -> tuple[tuple[str, bool | None], ...]:
        if reading.task is None or not reading.upstream_code:
            return ()
        known = task_solutions(reading.task.task_id)
        return tuple((code, known.correctness_of(code)) for code in reading.upstream_code)

    # --- draws --------------------------------------------------------------------------------------------------
    def solution(self, reading: PromptReading, profile: ModelProfile, odds: Odds, draws: RequestDraws) -> Solution:
        """The solution this agent writes: seeded draws of its outcome, then a real text with that outcome.

        Uniform draws are fixed per (model, task, seed), whatever else the prompt holds: contexts are compared on
        common random numbers, so more help never turns a success into a failure.
        """
        assert reading.task is not None
        task_id = reading.task.task_id
        own_correct = draws.uniform("outcome", task_id) < odds.p_own
        if reading.kind is RoleKind.CODE and odds.upstream:
            right, wrong = odds.right, odds.wrong
            u_adopt = draws.uniform("adopt", task_id)
            # 1. Adopt a visible solution instead of its own: a right one over its failure, or (anchoring) a
            #    wrong one over its success.
            if not own_correct and right and u_adopt < odds.adopt_right:
                return Solution(right[-1], True, Origin.UPSTREAM)
            if own_correct and wrong and u_adopt < odds.adopt_wrong:
                return Solution(wrong[-1], False, Origin.UPSTREAM)
            # 2. Its own outcome; a visible solution with that outcome is copied rather than rewritten, mostly.
            same = right if own_correct else wrong
            if same and draws.stream("solution").random() < odds.copy:
                return Solution(same[-1], own_correct, Origin.UPSTREAM)
        # 3. The model's own recorded answer, else another model's (closest in size), else reference / bug-injected.
        solutions = task_solutions(task_id)
        if profile.recorded_as is not None and solutions.grade_of(profile.recorded_as) is own_correct:
            own = solutions.recorded(profile.recorded_as)
            if own is not None:
                return own
        return self.stand_ins(solutions, own_correct, profile).pick(draws)

    def stand_ins(self, solutions: TaskSolutions, correct: bool, profile: ModelProfile) -> StandIns:
        """Other models' answers graded ``correct``, nearest in size first (API models, of unknown size, last).

        Which one is emitted is decided here once per (model, task, grade); only a tie in size needs the request's
        seeded jitter. Answers are extracted group by group, nearest first, until one holds code.
        """
        key = (profile.name, solutions.task_id, correct)
        if key not in self._stand_ins:
            sizes = self.params.recorded_model_params_b
            others = [m for m in solutions.models_graded(correct) if m != profile.recorded_as]

            def gap(i: int) -> float:
                size = sizes.get(others[i])
                return abs(math.log(size / max(profile.params_b, 1e-3))) if size else math.inf

            nearest: tuple[tuple[int, Solution], ...] = ()
            for _, group in groupby(sorted(range(len(others)), key=gap), key=gap):
                nearest = tuple((i, s) for i in group if (s := solutions.recorded(others[i])) is not None)
                if nearest:
                    break
            fallback = solutions.reference if correct else solutions.mutation
            self._stand_ins[key] = StandIns(len(others), nearest, fallback)
        return self._stand_ins[key]

    def verdicts(self, profile: ModelProfile, odds: Odds, draws: RequestDraws) -> list[tuple[str, bool]]:
        """Per upstream candidate, whether this reviewer approves it: right with P = its accuracy."""
        p = self.params
        accuracy = p.review_accuracy_low + (p.review_accuracy_high - p.review_accuracy_low) * profile.pass_rate
        verdicts = []
        for code, truth in odds.upstream:
            rng = draws.stream("review")
            if truth is None:
                verdicts.append((code, bool(rng.random() < p.review_approve_unknown)))
            else:
                verdicts.append((code, truth if rng.random() < accuracy else not truth))
        return verdicts
