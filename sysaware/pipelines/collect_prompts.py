"""Phase 1: intermediate prompts. MBPP train-split workflows with dynamic topologies (the random planner) and
random models and strategies (the random executor), so the chains of prompts are diverse; every prompt an agent
received becomes one row of ``intermediate_prompts.csv``.

Columns (``COLUMNS``):

    prompt_id       stable id: sha256 of (run_id, slot_id, prompt_text), 16 hex digits
    run_id          one workflow run: "p1-s<seed>-t<task_id>-r<run index>"
    run_prompts     how many prompts the run produced (a run is complete when it has that many rows)
    task_id         MBPP task
    topology        io | chain | star | debate | reflection
    step            the slot's position in the topology's topological order
    slot_id         the slot ("c1", "r2d1", ...)
    role_id         the role (sysaware.tasks.prompts.ROLES)
    strategy        flash | concise | deepthink: its instruction is the last paragraph of prompt_text
    model           the model the call went to
    upstream_roles  roles whose outputs the prompt shows, ";"-separated
    prompt_tokens   counted by the engine (chat template included)
    prompt_text     the exact text received: the messages' contents joined by a newline
    messages_json   the chat itself, [{"role": ..., "content": ...}], for exact replay in Phase 2

Resumable: rows are appended run by run; a rerun skips every complete run, drops the rows of a run cut short
(an interrupted write) and never writes a prompt_id twice. Outputs depend only on (seed, task, run index), not on
which runs were simulated together.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sysaware.config import PoolConfig
from sysaware.data.prompts_store import COLUMNS, CSV_NAME, read_existing
from sysaware.orchestration.executors import RandomExecutor
from sysaware.orchestration.grading import CachedSandbox
from sysaware.orchestration.planners import RandomPlanner
from sysaware.orchestration.session import WorkflowSession
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.workflow import Workflow
from sysaware.sim.backend import SimBackend
from sysaware.tasks.mbpp import MbppTask, Split, get_task, load_tasks


csv.field_size_limit(sys.maxsize)  # prompt texts are long


@dataclass(frozen=True)
class CollectSettings:
    runs_per_task: int = 2  # workflows per task, each with its own random plan and choices
    num_tasks: int | None = None  # the first N train tasks (None: all 374)
    seed: int = 0
    batch_size: int = 16  # workflows simulated together (results do not depend on it)


@dataclass(frozen=True)
class RunKey:
    run_id: str
    task_id: int
    run_index: int


def train_tasks(num_tasks: int | None = None) -> list[MbppTask]:
    """MBPP's train split (task ids 601-974), the sanitized version where a task has one."""
    ids = [t.task_id for t in load_tasks(Split.TRAIN)]
    return [get_task(i) for i in ids[:num_tasks]]


def planned_runs(settings: CollectSettings) -> list[RunKey]:
    return [
        RunKey(f"p1-s{settings.seed}-t{task.task_id}-r{r}", task.task_id, r)
        for task in train_tasks(settings.num_tasks)
        for r in range(settings.runs_per_task)
    ]


def run_seed(run_id: str) -> int:
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


def prompt_id(run_id: str, slot_id: str, text: str) -> str:
    return hashlib.sha256(f"{run_id}\x1f{slot_id}\x1f{text}".encode()).hexdigest()[:16]


def rows_of(session: WorkflowSession) -> list[dict]:
    """One row per prompt the session's agents received, in the order the calls were sent."""
    wf = session.workflow
    results = {s.slot_id: s for s in wf.history()}
    rows = []
    for call in session.calls:
        text = "\n".join(m.content for m in call.messages)
        record = results[call.slot_id]
        rows.append(
            {
                "prompt_id": prompt_id(wf.run_id, call.slot_id, text),
                "run_id": wf.run_id,
                "run_prompts": len(session.calls),
                "task_id": wf.task.task_id,
                "topology": wf.topology.name,
                "step": wf.topology.index(call.slot_id),
                "slot_id": call.slot_id,
                "role_id": call.role_id,
                "strategy": call.strategy.value,
                "model": call.model,
                "upstream_roles": ";".join(record.upstream_roles),
                "prompt_tokens": record.prompt_tokens,
                "prompt_text": text,
                "messages_json": json.dumps([{"role": m.role, "content": m.content} for m in call.messages]),
            }
        )
    return rows


def simulate_runs(
    pool: PoolConfig, runs: Sequence[RunKey], settings: CollectSettings, backend: SimBackend, sandbox: CachedSandbox | None = None
) -> list[list[dict]]:
    """Simulate ``runs`` together on an idle cluster (prompts do not depend on load); each run's rows."""
    driver = SimulatedDriver(pool, backend, SimSettings(seed=settings.seed, grade=False), sandbox=sandbox)
    sessions = []
    for key in runs:
        task = get_task(key.task_id)
        planner = RandomPlanner(seed=run_seed(f"{settings.seed}/{key.run_index}"))
        plan = planner.plan(task, None, None)
        workflow = Workflow(key.run_id, task, plan.topology, slo_s=math.inf, seed=run_seed(key.run_id))
        executor = RandomExecutor(None, seed=settings.seed)  # it consults no table
        sessions.append(driver.add(workflow, executor, at_s=0.0, planner_name=planner.name))
    driver.run()
    return [rows_of(s) for s in sessions]


# ---------------------------------------------------------------------------------------------------------------
# The CSV: append run by run, resume without duplicates
# ---------------------------------------------------------------------------------------------------------------


def complete_runs(path: Path) -> set[str]:
    """Runs whose rows are all in the file; rows of runs cut short are removed (the file is rewritten)."""
    df = read_existing(path)
    if df.empty:
        return set()
    counts = df.groupby("run_id").size()
    expected = df.groupby("run_id")["run_prompts"].first().astype(int)
    done = set(counts.index[counts.values == expected.loc[counts.index].values])
    if len(done) < len(counts):
        df[df["run_id"].isin(done)].drop_duplicates("prompt_id").to_csv(path, index=False, columns=COLUMNS)
    return done


def append_rows(path: Path, rows: Iterable[dict], known_ids: set[str]) -> int:
    """Append rows whose prompt_id is not yet known; returns how many were written."""
    new = [r for r in rows if r["prompt_id"] not in known_ids]
    if not new:
        return 0
    write_header = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if write_header:
            writer.writeheader()
        writer.writerows(new)
        f.flush()
    known_ids.update(r["prompt_id"] for r in new)
    return len(new)


def collect_prompts(
    pool: PoolConfig,
    out_dir: Path,
    settings: CollectSettings = CollectSettings(),
    backend: SimBackend | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """Simulate every planned run that the CSV lacks and append its prompts; returns the CSV's path."""
    backend = backend or SimBackend(pool)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / CSV_NAME
    done = complete_runs(path)
    known = set(read_existing(path)["prompt_id"])
    todo = [k for k in planned_runs(settings) if k.run_id not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="workflow runs", unit="run")
    sandbox = CachedSandbox()
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start : start + settings.batch_size]
        written = 0
        for rows in simulate_runs(pool, batch, settings, backend, sandbox):
            written += append_rows(path, rows, known)
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(prompts=len(known))
        if on_batch is not None:
            on_batch(written)
    if bar is not None:
        bar.close()
    return path
