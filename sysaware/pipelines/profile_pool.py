"""Measure a pool's profile (``sysaware.data.profile.PoolProfile``): the only static knowledge policies get.

Everything is measured through the pool's own backend, the way it would be on a live pool: workflows run through a
driver and their final answers are graded in the sandbox; nothing reads how the backend decides its answers.

Quality per (model, strategy, role): the pass rate of a small probe workflow in which that role is played by
(model, strategy) and every other role by a fixed reference (model, Concise):

| role               | probe                                             | what its quality measures                   |
|--------------------|---------------------------------------------------|---------------------------------------------|
| programmer         | io: programmer alone                              | its own pass rate                           |
| algorithm_designer | chain: designer -> reference programmer           | pass rate of a reference coder given its plan|
| test_analyst       | chain: test analyst -> reference programmer       | ... given its tests                          |
| bug_fixer          | chain: reference programmer -> bug fixer (sees the example assert's run) | pass rate after its fix |
| decision_maker     | chain: reference programmer -> decision maker     | pass rate of its final pick                  |
| reviewer           | reflection: reference programmer -> reviewer -> reference bug fixer | pass rate after its critique |

The reviewer's verdict is not exposed by the workflow (it is prose), so its quality is the workflow pass rate, not
the verdict's accuracy. The reference is the model with the best measured Concise programmer pass rate (ties: pool
order), found by the programmer probes, which run first; ``--reference`` fixes it instead. Every cell runs on the
same tasks with the same seed per task (common random numbers), so cells differ by who plays the role, not by luck.

Lengths: the mean output tokens of the probed calls (one per probe workflow); with a Phase 2 dataset
(``--phase2``), its mean per (model, strategy, role) where it has rows.

Idle latency: a short and a long prompt sent to each model alone on an idle pool, fitted by
``orchestration.latency.fit_idle_latency`` (the queueing formula's idle terms).

Tasks: MBPP tasks outside the test split the backend can answer, validation first, then train, in id order.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import sysaware
from sysaware.config import PoolConfig
from sysaware.data.profile import (
    IdleLatencyMeasurement,
    ModelProfile,
    PoolProfile,
    PoolRef,
    Provenance,
    RoleMeasurement,
    pool_fingerprint,
    wilson_ci95,
)
from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult
from sysaware.orchestration.context import Action, StepContext
from sysaware.orchestration.executors import Executor
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.latency import fit_idle_latency
from sysaware.orchestration.topology import Topology, chain, io, reflection
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.trace import RunTrace
from sysaware.orchestration.workflow import Workflow, call_seed
from sysaware.sim.backend import SimBackend
from sysaware.tasks.mbpp import MbppTask, Split, get_task, load_tasks, split_of
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy, task_prompt

REFERENCE_STRATEGY = Strategy.CONCISE
TASK_SPLITS = (Split.VALIDATION, Split.TRAIN)  # in this order; never the test split


@dataclass(frozen=True)
class Probe:
    """The workflow that measures one role: its topology and the slot the probed (model, strategy) plays."""

    topology: Topology
    slot_id: str
    measures: str  # what its pass rate means, for the profile's provenance


PROBES: dict[str, Probe] = {
    "programmer": Probe(io(), "answer", "pass rate of the programmer alone (io)"),
    "algorithm_designer": Probe(
        chain(["algorithm_designer"], final="programmer"), "c0", "pass rate of the reference programmer given its plan"
    ),
    "test_analyst": Probe(
        chain(["test_analyst"], final="programmer"), "c0", "pass rate of the reference programmer given its tests"
    ),
    "bug_fixer": Probe(
        chain(["programmer"], final="bug_fixer"), "decide",
        "pass rate of its fix of the reference programmer's answer (it sees the example assert's run)",
    ),
    "decision_maker": Probe(
        chain(["programmer"], final="decision_maker"), "decide", "pass rate of its final answer after the reference programmer"
    ),
    "reviewer": Probe(
        reflection(), "critique",
        "pass rate of the reference bug fixer after its critique of the reference programmer's answer "
        "(workflow pass rate: the workflow does not expose the verdict)",
    ),
}
assert set(PROBES) == set(ROLES), "every role needs a probe"


class ProbeExecutor(Executor):
    """The probed slot gets the cell's (model, strategy); every other slot the reference. Not a policy: not
    registered with the executors."""

    name = "probe"

    def __init__(self, slot_id: str, probed: Action, reference: Action) -> None:
        super().__init__(None)
        self.slot_id, self.probed, self.reference = slot_id, probed, reference

    def choose(self, ctx: StepContext) -> Action:
        return self.probed if ctx.slot.slot_id == self.slot_id else self.reference

    def describe(self) -> str:
        return f"probe({self.slot_id}={self.probed.model}/{self.probed.strategy.value}, ref={self.reference.model})"


@dataclass(frozen=True)
class ProbeJob:
    run_id: str
    task: MbppTask
    topology: Topology
    executor: Executor
    seed: int


class ProfileDriver(Protocol):
    """What profiling needs from a backend. The simulated one is ``SimProfileDriver``; a live pool would run the
    jobs through ``LiveDriver.run_workflow`` and send ``call_alone`` through the model's handle."""

    backend: str  # recorded in the profile's provenance

    def answerable_task_ids(self) -> Collection[int]:
        """MBPP tasks the backend can answer (for the twin: those with recorded answers)."""
        ...

    def run(self, jobs: Sequence[ProbeJob]) -> list[RunTrace]:
        """Run every job's workflow to its graded answer; traces in job order."""
        ...

    def call_alone(self, request: GenerationRequest) -> GenerationResult:
        """One call on an otherwise idle pool."""
        ...


class SimProfileDriver:
    """The twin pool in simulation (``SimBackend``): workflows on a SimulatedDriver (virtual time), graded in a
    shared cached sandbox; idle calls on a fresh, idle cluster of the same backend."""

    backend = "sim"

    def __init__(self, pool: PoolConfig, sim: SimBackend | None = None, seed: int = 0, sandbox: CachedSandbox | None = None) -> None:
        self.pool = pool
        self.sim = sim or SimBackend(pool)
        self.seed = seed
        self.sandbox = sandbox or CachedSandbox()

    def answerable_task_ids(self) -> Collection[int]:
        return self.sim.answerable_task_ids

    def run(self, jobs: Sequence[ProbeJob]) -> list[RunTrace]:
        driver = SimulatedDriver(self.pool, self.sim, SimSettings(seed=self.seed), sandbox=self.sandbox)
        for job in jobs:
            driver.add(Workflow(job.run_id, job.task, job.topology, math.inf, seed=job.seed), job.executor, at_s=0.0)
        return driver.run()

    def call_alone(self, request: GenerationRequest) -> GenerationResult:
        cluster = self.sim.cluster(seed=self.seed)
        done: list[GenerationResult] = []
        cluster.submit(request, on_complete=done.append)
        cluster.run()
        return done[0]


@dataclass(frozen=True)
class ProfileSettings:
    num_tasks: int | None = None  # None: every answerable task outside the test split (163 on the twin pool, ~3 min)
    seed: int = 0
    reference_model: str | None = None  # None: the best measured Concise programmer
    phase2: Path | None = None  # a collect-metrics run dir whose lengths replace the probes' where it has rows
    batch_size: int = 300  # workflows simulated together (the result does not depend on it)
    command: str = field(default_factory=lambda: shlex.join(["sysaware", *sys.argv[1:]]))

    def __post_init__(self) -> None:
        if self.num_tasks is not None and self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


Progress = Callable[[int, int], None]  # (workflows done, workflows in all)


def select_tasks(answerable: Collection[int], num_tasks: int | None = None) -> list[MbppTask]:
    """The first ``num_tasks`` (None: all) answerable tasks of the validation split, then of the train split, in id
    order."""
    ids = sorted(t for t in set(answerable) if split_of(t) in TASK_SPLITS)
    ids.sort(key=lambda t: TASK_SPLITS.index(split_of(t)))  # stable: id order within each split
    if not ids:
        raise ValueError("the backend can answer no MBPP task outside the test split")
    return [get_task(t) for t in ids[:num_tasks]]


@dataclass
class _Cells:
    """Graded outcomes and output lengths per (model, strategy, role)."""

    passed: dict[tuple[str, Strategy, str], list[bool]] = field(default_factory=dict)
    tokens: dict[tuple[str, Strategy, str], list[int]] = field(default_factory=dict)

    def add(self, role: str, probe: Probe, trace: RunTrace) -> None:
        step = next(s for s in trace.steps if s.slot_id == probe.slot_id)
        key = (step.model, Strategy(step.strategy), role)
        if trace.passed is not None:
            self.passed.setdefault(key, []).append(bool(trace.passed))
        self.tokens.setdefault(key, []).append(step.output_tokens)


def _run_probes(
    driver: ProfileDriver,
    roles: Sequence[str],
    actions: Sequence[Action],
    tasks: Sequence[MbppTask],
    reference: Action,
    settings: ProfileSettings,
    cells: _Cells,
    progress: Callable[[int], None],
) -> None:
    jobs: list[tuple[str, ProbeJob]] = []
    for role in roles:
        probe = PROBES[role]
        for action in actions:
            executor = ProbeExecutor(probe.slot_id, action, reference)
            for task in tasks:
                run_id = f"profile/{role}/{action.model}/{action.strategy.value}/t{task.task_id}"
                seed = call_seed(settings.seed, f"profile-task-{task.task_id}")  # the same for every cell
                jobs.append((role, ProbeJob(run_id, task, probe.topology, executor, seed)))
    for start in range(0, len(jobs), settings.batch_size):
        batch = jobs[start : start + settings.batch_size]
        for (role, _), trace in zip(batch, driver.run([job for _, job in batch])):
            cells.add(role, PROBES[role], trace)
        progress(len(batch))


def idle_prompts() -> tuple[tuple[ChatMessage, ...], tuple[ChatMessage, ...]]:
    """A short and a long programmer prompt (the first train task, and 12 copies of it: a team's worth of context)."""
    task = load_tasks(Split.TRAIN, sanitized=True)[0]
    short = task_prompt(task.text, task.example_test)
    long = "\n\n".join([short] * 12)

    def messages(text: str) -> tuple[ChatMessage, ...]:
        return (
            ChatMessage("system", ROLES["programmer"].system_prompt),
            ChatMessage("user", f"{text}\n\n{STRATEGY_INSTRUCTIONS[REFERENCE_STRATEGY]}"),
        )

    return messages(short), messages(long)


def measure_idle(driver: ProfileDriver, models: Sequence[str]) -> dict[str, IdleLatencyMeasurement]:
    short, long = idle_prompts()
    out = {}
    for m in models:
        a = driver.call_alone(GenerationRequest(f"idle/{m}/short", m, short, seed=0))
        b = driver.call_alone(GenerationRequest(f"idle/{m}/long", m, long, seed=0))
        fit = fit_idle_latency(a, b)
        out[m] = IdleLatencyMeasurement(
            ttft_base_s=fit.ttft_base_s, ttft_per_prompt_token_s=fit.ttft_per_prompt_token_s, tpot_s=fit.tpot_s
        )
    return out


def phase2_lengths(run_dir: Path) -> tuple[dict[tuple[str, Strategy, str], tuple[float, int]], str]:
    """Mean output tokens and row count per (model, strategy, role) of a Phase 2 dataset, and its fingerprint."""
    from sysaware.data import dataset_store as store

    df = store.load_dataset(run_dir)
    if df.empty:
        raise ValueError(f"{run_dir}: the Phase 2 dataset has no rows")
    means = {}
    for (model, strategy, role), g in df.groupby(["model_id", "strategy_id", "role_id"]):
        means[(str(model), Strategy(strategy), str(role))] = (float(g["output_tokens"].mean()), len(g))
    digest = hashlib.sha256()
    for path in store.shard_paths(run_dir):
        digest.update(f"{path.name}:{store.file_fingerprint(path)}\n".encode())
    return means, digest.hexdigest()


def data_fingerprint(tasks: Sequence[MbppTask], phase2: str | None = None) -> str:
    """sha256 of what the measurement read: the tasks (ids, texts, asserts) and the Phase 2 shards, if any."""
    payload = [[t.task_id, t.text, list(t.test_list)] for t in tasks]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    if phase2:
        digest.update(phase2.encode())
    return digest.hexdigest()


def profile_pool(
    pool: PoolConfig,
    driver: ProfileDriver | None = None,
    settings: ProfileSettings = ProfileSettings(),
    on_progress: Progress | None = None,
) -> PoolProfile:
    """Measure ``pool``'s profile through ``driver`` (default: the simulated twin pool). Deterministic for a seed."""
    driver = driver or SimProfileDriver(pool, seed=settings.seed)
    models = [m.name for m in pool.models]
    if settings.reference_model is not None and settings.reference_model not in models:
        raise ValueError(f"reference model {settings.reference_model!r} is not in the pool {models}")
    tasks = select_tasks(driver.answerable_task_ids(), settings.num_tasks)
    actions = [Action(m, s) for m in models for s in Strategy]
    others = [r for r in ROLES if r != "programmer"]
    total = len(actions) * len(tasks) * len(ROLES)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, total)

    cells = _Cells()
    # 1. Programmers alone: their own pass rate, which also picks the reference for the other probes.
    placeholder = Action(models[0], REFERENCE_STRATEGY)  # io has no other slot: the reference is never asked
    _run_probes(driver, ["programmer"], actions, tasks, placeholder, settings, cells, progress)
    ref_model = settings.reference_model or max(
        models, key=lambda m: _rate(cells.passed.get((m, REFERENCE_STRATEGY, "programmer"), []))
    )
    reference = Action(ref_model, REFERENCE_STRATEGY)
    # 2. Every other role, around the reference.
    _run_probes(driver, others, actions, tasks, reference, settings, cells, progress)

    lengths_source = "mean output tokens of the probed calls"
    phase2_digest = None
    lengths = {k: (sum(v) / len(v), len(v)) for k, v in cells.tokens.items()}
    if settings.phase2 is not None:
        measured, phase2_digest = phase2_lengths(settings.phase2)
        replaced = {k: v for k, v in measured.items() if k in lengths}
        lengths.update(replaced)
        lengths_source = (
            f"Phase 2 dataset {settings.phase2} (sha256 {phase2_digest[:12]}) for {len(replaced)} of {len(lengths)} "
            "cells; the probed calls' mean for the rest"
        )

    idle = measure_idle(driver, models)
    profiles = {}
    for m in models:
        roles = {}
        for role in ROLES:
            per_strategy = {}
            for s in Strategy:
                outcomes = cells.passed.get((m, s, role), [])
                if not outcomes:
                    raise RuntimeError(f"no graded probe for ({m}, {s.value}, {role}): the sandbox graded nothing")
                tokens, n_tokens = lengths[(m, s, role)]
                per_strategy[s] = RoleMeasurement(
                    quality=_rate(outcomes),
                    quality_n=len(outcomes),
                    quality_ci95=wilson_ci95(sum(outcomes), len(outcomes)),
                    output_tokens_mean=max(tokens, 1.0),
                    output_tokens_n=n_tokens,
                )
            roles[role] = per_strategy
        profiles[m] = ModelProfile(idle=idle[m], roles=roles)
    provenance = Provenance(
        command=settings.command,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sysaware_version=sysaware.__version__,
        backend=driver.backend,
        data_fingerprint=data_fingerprint(tasks, phase2_digest),
        seed=settings.seed,
        task_ids=[t.task_id for t in tasks],
        reference_model=reference.model,
        reference_strategy=reference.strategy,
        quality_probes={role: probe.measures for role, probe in PROBES.items()},
        lengths_source=lengths_source,
    )
    return PoolProfile(pool=PoolRef(name=pool.name, fingerprint=pool_fingerprint(pool)), provenance=provenance, models=profiles)


def _rate(outcomes: Sequence[bool]) -> float:
    return sum(outcomes) / len(outcomes) if outcomes else 0.0
