"""What a twin replica says: real recorded answers, chosen by a seeded draw of whether this agent gets it right.

The responder ties together modules with one job each:

- ``prompt_reading``: the task, role, strategy and upstream work a prompt shows, read from its text alone;
- ``outcomes``: P(correct) from the IRT (``irt``) and the parameter table (``params``), and the seeded choice of
  the real solution the agent emits: a recorded answer (``answers``, renamed by ``renaming``, rebuilt quickly
  from ``replay_index``), MBPP's reference or its bug-injected variant (``bug_injection``);
- ``composition``: the text, shaped by the role's kind and the strategy, explained from the code's syntax tree
  (``code_facts``), sized by the model's verbosity (``profiles``, ``verbosity``) with seeded noise (``draws``);
- ``hidden_asserts``: the filter every output goes through (only the task's example assert may ever appear).

Speed: everything about a request except its seed (the reading, the model's odds) is cached per (model,
messages), and texts are assembled from cached pieces whose token counts add up (``counted_text``), so a warm
``respond()`` tokenizes nothing. Answers are a pure function of (model, messages, seed), caches or not.

    python -m sysaware.engines.twin.responder.twin_responder      # the single-programmer report (``report``)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sysaware.config import PoolConfig
from sysaware.engines.twin.responder.composition import (
    Context,
    compose_code_answer,
    compose_plan,
    compose_review,
    compose_tests,
    compose_without_task,
)
from sysaware.engines.twin.responder.counted_text import CountedText, counted
from sysaware.engines.twin.responder.draws import RequestDraws, prompt_digest
from sysaware.engines.twin.responder.hidden_asserts import strip_hidden_asserts, without_hidden_asserts
from sysaware.engines.twin.responder.irt import IrtModel, load_irt_model
from sysaware.engines.twin.responder.outcomes import Odds, Outcomes, coupled_p_correct
from sysaware.engines.twin.responder.params import ParamsError, ResponderParams, load_responder_params
from sysaware.engines.twin.responder.profiles import ModelProfile, build_profile
from sysaware.engines.twin.responder.prompt_reading import (
    Feedback,
    PromptReading,
    Verdict,
    find_task,
    non_system_text,
    read_prompt,
)
from sysaware.engines.twin.protocols import Response
from sysaware.engines.types import ChatMessage, GenerationRequest
from sysaware.tasks.prompts import RoleKind

__all__ = [
    "TwinResponder",
    "Situation",
    "load_responder_params",
    "ResponderParams",
    "ParamsError",
    "read_prompt",
    "find_task",
    "PromptReading",
    "Feedback",
    "Verdict",
    "ModelProfile",
    "coupled_p_correct",
    "strip_hidden_asserts",
]

# Distinct (model, prompt) pairs kept: the simulated cluster's background load has 5 models x 120 tasks x 6 roles
# x 3 strategies = 10,800; a workflow's prompts are new at every step and simply pass through.
SITUATION_CACHE_SIZE = 1 << 15
_EMPTY_ANSWER = "I have nothing to add."


@dataclass(frozen=True)
class Situation:
    """Everything about a request except its seed: what the prompt asks, who answers, and its odds."""

    reading: PromptReading
    profile: ModelProfile
    odds: Odds | None  # None when the prompt holds no MBPP task
    digest: bytes | None = None  # prompt_digest(model, messages): seeds the request's draws without rehashing it


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
        self.outcomes = Outcomes(self.params, self.irt)
        self.situation = lru_cache(maxsize=SITUATION_CACHE_SIZE)(self._situation)
        # (id(messages), model) -> (messages, situation): see _situation_of.
        self._situation_by_identity: dict[tuple[int, str], tuple[tuple[ChatMessage, ...], Situation]] = {}

    # --- the protocol ---------------------------------------------------------------------------------------
    def respond(self, request: GenerationRequest) -> Response:
        situation = self._situation_of(request.model, request.messages)
        answer = self._answer(situation, request)
        text = answer.text.strip()
        if not text:
            answer = counted(_EMPTY_ANSWER)
            text = answer.text
        return Response(text=text, output_tokens=max(answer.tokens, 1))  # strip() removes no tokens

    def _situation_of(self, model: str, messages: tuple[ChatMessage, ...] | list[ChatMessage]) -> Situation:
        """``self.situation(model, messages)``, found by the identity of the messages tuple when it was seen before.

        Request factories and agents resend the very same tuple, and the lru_cache's key would hash it again every
        time: ChatMessage's dataclass ``__hash__`` runs Python code per message (about a fifth of a warm
        ``respond()``). The entry keeps its tuple alive, so its id cannot be reused by another object while the
        entry exists; only tuples qualify (a list could change under the same id).
        """
        if type(messages) is not tuple:
            return self.situation(model, tuple(messages))
        key = (id(messages), model)
        entry = self._situation_by_identity.get(key)
        if entry is not None and entry[0] is messages:  # the same object, not another that reused a freed id
            return entry[1]
        situation = self.situation(model, messages)
        if len(self._situation_by_identity) >= SITUATION_CACHE_SIZE:
            self._situation_by_identity.clear()  # rare (new prompts only): a bound, not an eviction policy
        self._situation_by_identity[key] = (messages, situation)
        return situation

    def _situation(self, model: str, messages: tuple[ChatMessage, ...]) -> Situation:
        profile = self.profiles.get(model)
        if profile is None:
            raise KeyError(f"unknown model {model!r}; the pool has {sorted(self.profiles)}")
        reading = read_prompt(messages)
        odds = self.outcomes.odds(reading, profile) if reading.task is not None else None
        return Situation(reading, profile, odds, prompt_digest(model, messages))

    # --- deciding -------------------------------------------------------------------------------------------
    def _answer(self, situation: Situation, request: GenerationRequest) -> CountedText:
        reading, profile, odds = situation.reading, situation.profile, situation.odds
        draws = RequestDraws(request, situation.digest)
        ctx = Context(reading, profile, self.params, draws)
        task = reading.task
        if task is None or odds is None:
            return compose_without_task(non_system_text(request.messages), reading, ctx)
        kind = reading.kind
        if kind is RoleKind.TESTS:
            answer = compose_tests(task, ctx)
        elif kind is RoleKind.REVIEW:
            answer = compose_review(task, self.outcomes.verdicts(profile, odds, draws), ctx)
        else:
            solution = self.outcomes.solution(reading, profile, odds, draws)
            compose = compose_plan if kind is RoleKind.PLAN else compose_code_answer
            answer = compose(task, solution, ctx)
        return without_hidden_asserts(answer, task)

    # --- the odds, for callers that study them ----------------------------------------------------------------
    def base_outcome(self, profile: ModelProfile, task_id: int) -> bool:
        """The model's outcome on the task before any strategy or collaboration effect (see ``Outcomes``)."""
        return self.outcomes.base_outcome(profile, task_id)

    def p_correct(self, reading: PromptReading, profile: ModelProfile) -> float:
        """P(the emitted solution is correct), before the seeded draws."""
        return self.outcomes.p_correct(reading, profile)


def main() -> None:
    from sysaware.engines.twin.responder.report import main as report_main

    report_main()


if __name__ == "__main__":
    main()
