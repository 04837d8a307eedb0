"""The body and the answer of ``POST /v1/solve`` (pydantic): a programming problem in, code + verdict + trace out.

Every field is checked here, before the orchestrator sees the request, so a bad one is a 400 naming it (the
ingress's validation handler). Times are engine seconds (the twin's clock; wall seconds x the pool's time_scale),
the same clock the SLO is on.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROBLEM_CHARS = 20_000
MAX_TESTS = 50
MAX_TEST_CHARS = 2_000
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    problem: str = Field(min_length=1, max_length=MAX_PROBLEM_CHARS, description="The programming problem, as text.")
    tests: list[str] | None = Field(
        default=None,
        max_length=MAX_TESTS,
        description="Python asserts the answer must pass; the first is shown to the agents as the example. "
        "Without tests the answer is not graded (passed: null).",
    )
    entry_point: str | None = Field(default=None, description="The function the tests call (an identifier).")
    slo_s: float | None = Field(
        default=None,
        description="End-to-end latency budget, engine seconds (> 0). None: 1.5 x the plan's idle latency.",
    )
    policy: str | None = Field(
        default=None, description="Executor: 'rl' (the trained policy) or a baseline name; None: the server's default."
    )
    stream: bool = Field(default=False, description="Server-sent events: each step as it finishes, then the result.")
    seed: int = Field(default=0, ge=0, description="The workflow's seed (the twin's answers depend on it).")

    @field_validator("tests")
    @classmethod
    def _asserts(cls, tests: list[str] | None) -> list[str] | None:
        if tests is None:
            return None
        if not tests:
            raise ValueError("give at least one assert, or leave tests out")
        for i, t in enumerate(tests):
            if len(t) > MAX_TEST_CHARS:
                raise ValueError(f"test {i} has {len(t)} characters; at most {MAX_TEST_CHARS}")
            if not t.lstrip().startswith("assert"):
                raise ValueError(f"test {i} must be a Python assert statement, got {t[:60]!r}")
        return tests

    @field_validator("entry_point")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.fullmatch(value):
            raise ValueError(f"must be a Python identifier, got {value!r}")
        return value

    @field_validator("slo_s")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and (math.isnan(value) or value <= 0 or math.isinf(value)):
            raise ValueError(f"must be a positive, finite number of seconds, got {value!r}")
        return value


class SolveStep(BaseModel):
    """One agent call: who, on what, what the orchestrator predicted for it and what it measured."""

    step: int
    slot_id: str
    role: str
    model: str
    strategy: str
    remaining_budget_s: float  # b_t when the step was decided, engine s
    predicted_ttft_s: float | None = None
    predicted_tpot_s: float | None = None
    predicted_latency_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    latency_s: float
    output_tokens: int
    replica_id: str
    attempts: int = 1  # 2 or 3 when the call was retried after its replica died


class SolveResponse(BaseModel):
    id: str
    object: str = "solve"
    policy: str
    topology: str
    admission: str  # "admit", "degrade" (ran the fastest plan instead) or "off"
    code: str
    passed: bool | None  # None when no tests were given
    grade_status: str
    e2e_s: float
    slo_s: float
    slo_met: bool
    retries: int = 0
    mbpp_task_id: int | None = None  # the MBPP task the problem matched, if any
    trace: list[SolveStep]
