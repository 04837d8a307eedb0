"""Re-grade RouterBench's recorded MBPP answers with our own extraction and sandbox.

RouterBench's 0/1 grades are not ours: it asked each model the bare problem statement (no example assert), so
a correct function often carries another name than the one the asserts call. Each answer is therefore graded
twice against the sanitized MBPP asserts (plus the task's ``test_imports``): the code as extracted ("raw"), and the
code with its main function renamed to the example assert's function name ("renamed", the headline grade).

    python -m sysaware.tasks.regrade [--out PATH] [--workers 2]

writes ``resources/routerbench_mbpp/regrade.csv``, one row per (task, model):
task_id, split, model, routerbench_correct, sandbox_correct_raw, sandbox_correct, status, answer_chars.
"""

from __future__ import annotations

import argparse
import ast
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from sysaware.resources import RESOURCES
from sysaware.tasks.extract import extract_code, rename_entry_point
from sysaware.tasks.mbpp import MbppTask, load_tasks
from sysaware.tasks.sandbox import ExecutionResult, SandboxJob, run_tests_batch

__all__ = [
    "OPEN_MODELS",
    "API_MODELS",
    "MODELS",
    "REGRADE_CSV",
    "RecordedAnswer",
    "load_recorded_answers",
    "grade_jobs",
    "regrade",
    "load_regrade_table",
    "agreement_report",
    "main",
]

ROUTERBENCH_DIR = RESOURCES / "routerbench_mbpp"
REGRADE_CSV = ROUTERBENCH_DIR / "regrade.csv"
SPLIT_FILES = {"train": ROUTERBENCH_DIR / "mbpp_train.csv", "test": ROUTERBENCH_DIR / "mbpp_test.csv"}

OPEN_MODELS = (
    "mistralai/mistral-7b-chat",
    "WizardLM/WizardLM-13B-V1.2",
    "meta/code-llama-instruct-34b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "mistralai/mixtral-8x7b-chat",
    "meta/llama-2-70b-chat",
)
API_MODELS = ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-instant-v1", "claude-v1", "claude-v2")
MODELS = OPEN_MODELS + API_MODELS
# Wall-clock limit per sandbox run (s). Generous on purpose: MBPP task 123's own reference solution takes 8-11 s on
# two busy cores, and a grade must not flip with machine load. Only real infinite loops pay it.
REGRADE_TIMEOUT_S = 30.0

COLUMNS = [
    "task_id",
    "split",
    "model",
    "routerbench_correct",
    "sandbox_correct_raw",
    "sandbox_correct",
    "status",
    "answer_chars",
]


@dataclass(frozen=True)
class RecordedAnswer:
    task_id: int
    split: str  # which RouterBench file: "train" or "test"
    model: str  # RouterBench's column prefix
    routerbench_correct: int  # 0/1 as RouterBench graded it
    answer: str  # the model's full reply


# ---------------------------------------------------------------------------------------------------------------
# Reading the recordings
# ---------------------------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@lru_cache(maxsize=1)
def _sanitized_index() -> tuple[dict[str, list[MbppTask]], list[MbppTask]]:
    """Sanitized tasks by normalised statement, and in file order (RouterBench's sample ids count in that order)."""
    tasks = load_tasks(sanitized=True)
    by_text: dict[str, list[MbppTask]] = {}
    for task in tasks:
        by_text.setdefault(_normalise(task.text), []).append(task)
    return by_text, tasks


def match_task(prompt: str, sample_id: str) -> MbppTask | None:
    """The sanitized task RouterBench asked, from its prompt text.

    Two pairs of sanitized tasks share a statement word for word (71/141, 104/569); RouterBench's sample id
    ``mbpp.dev.N`` is the task's position N in the sanitized file, which settles those.
    """
    by_text, ordered = _sanitized_index()
    candidates = by_text.get(_normalise(prompt), [])
    if len(candidates) == 1:
        return candidates[0]
    m = re.fullmatch(r"mbpp\.dev\.(\d+)", str(sample_id))
    position = int(m.group(1)) if m else -1
    if candidates and 0 <= position < len(ordered) and ordered[position] in candidates:
        return ordered[position]
    return None


def _first_of_list(cell: object) -> str:
    """RouterBench stores prompts and replies as a one-element Python list printed as a string."""
    if not isinstance(cell, str):
        return ""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return cell
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value and value[0] is not None else ""
    return str(value)


def load_recorded_answers(models: Sequence[str] = MODELS) -> tuple[list[RecordedAnswer], list[str]]:
    """Every (task, model) answer in both RouterBench files, and a description of each row no task matched."""
    answers, unmatched = [], []
    for split, path in SPLIT_FILES.items():
        frame = pd.read_csv(path, engine="python")
        for _, row in frame.iterrows():
            prompt = _first_of_list(row["prompt"])
            task = match_task(prompt, row["sample_id"])
            if task is None:
                unmatched.append(f"{split} {row['sample_id']}: {prompt[:80]!r}")
                continue
            for model in models:
                answers.append(
                    RecordedAnswer(
                        task_id=task.task_id,
                        split=split,
                        model=model,
                        routerbench_correct=int(row[model]),
                        answer=_first_of_list(row[f"{model}|model_response"]),
                    )
                )
    return answers, unmatched


# ---------------------------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------------------------


def grade_jobs(answer: str, task: MbppTask, timeout_s: float = REGRADE_TIMEOUT_S) -> tuple[SandboxJob, SandboxJob]:
    """The (raw, renamed) sandbox jobs for one answer; the two are equal when renaming changes nothing."""
    code = extract_code(answer)
    renamed = rename_entry_point(code, task.entry_point) if task.entry_point else code
    setup = "\n".join(task.test_imports)

    def job(source: str) -> SandboxJob:
        return SandboxJob(code=source, tests=tuple(task.test_list), setup_code=setup, timeout_s=timeout_s)

    return job(code), job(renamed)


def regrade(
    answers: Sequence[RecordedAnswer],
    max_workers: int = 2,
    timeout_s: float = REGRADE_TIMEOUT_S,
    progress: bool = True,
) -> pd.DataFrame:
    """Grade every answer raw and renamed; one row per answer, columns ``COLUMNS``."""
    tasks = {t.task_id: t for t in load_tasks(sanitized=True)}
    pairs = [grade_jobs(a.answer, tasks[a.task_id], timeout_s) for a in answers]
    # Run each distinct job once: most answers already use the asserts' name, so raw and renamed coincide.
    unique_jobs: dict[SandboxJob, int] = {}
    for raw, renamed in pairs:
        unique_jobs.setdefault(raw, len(unique_jobs))
        unique_jobs.setdefault(renamed, len(unique_jobs))
    job_list = list(unique_jobs)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(job_list), desc="sandbox runs", unit="run")
    on_result = (lambda index, result: bar.update(1)) if bar is not None else None
    results = run_tests_batch(job_list, max_workers=max_workers, on_result=on_result)
    if bar is not None:
        bar.close()

    rows = []
    for answer, (raw, renamed) in zip(answers, pairs):
        raw_result: ExecutionResult = results[unique_jobs[raw]]
        result: ExecutionResult = results[unique_jobs[renamed]]
        rows.append(
            {
                "task_id": answer.task_id,
                "split": answer.split,
                "model": answer.model,
                "routerbench_correct": answer.routerbench_correct,
                "sandbox_correct_raw": int(raw_result.passed),
                "sandbox_correct": int(result.passed),
                "status": result.status.value,
                "answer_chars": len(answer.answer),
            }
        )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["split", "task_id", "model"], kind="stable").reset_index(drop=True)


def load_regrade_table(path: str | Path = REGRADE_CSV) -> pd.DataFrame:
    """The committed re-grading table (see the module docstring for its columns)."""
    frame = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; regenerate it with python -m sysaware.tasks.regrade")
    return frame


# ---------------------------------------------------------------------------------------------------------------
# Agreement with RouterBench
# ---------------------------------------------------------------------------------------------------------------


def cohens_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Agreement between two 0/1 raters beyond chance; nan when chance agreement is already perfect."""
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(int(x) == int(y) for x, y in zip(a, b)) / n
    pa, pb = sum(map(int, a)) / n, sum(map(int, b)) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    return (observed - chance) / (1 - chance) if chance < 1 else math.nan


def agreement_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model (open models first, then API models, then all): means, agreement, kappa, disagreement counts."""
    order = [m for m in MODELS if m in set(df["model"])] + sorted(set(df["model"]) - set(MODELS))
    groups = [(m, df[df["model"] == m]) for m in order] + [("ALL", df)]
    rows = []
    for name, g in groups:
        rb, ours = g["routerbench_correct"].astype(int), g["sandbox_correct"].astype(int)
        rows.append(
            {
                "model": name,
                "n": len(g),
                "routerbench": rb.mean(),
                "ours_raw": g["sandbox_correct_raw"].mean(),
                "ours_renamed": ours.mean(),
                "agreement": (rb == ours).mean(),
                "kappa": cohens_kappa(rb.tolist(), ours.tolist()),
                "rb1_ours0": int(((rb == 1) & (ours == 0)).sum()),
                "rb0_ours1": int(((rb == 0) & (ours == 1)).sum()),
            }
        )
    return pd.DataFrame(rows)


def agreement_report(df: pd.DataFrame) -> str:
    """A fixed-width table: RouterBench's pass rate next to ours (raw and renamed), agreement and Cohen's kappa."""
    table = agreement_table(df)
    header = (
        f"{'model':36s} {'n':>5s} {'RB':>6s} {'raw':>6s} {'renamed':>8s} {'agree':>6s} {'kappa':>6s}"
        f" {'RB1/us0':>8s} {'RB0/us1':>8s}"
    )
    lines = [header, "-" * len(header)]
    for r in table.itertuples(index=False):
        lines.append(
            f"{r.model:36s} {r.n:5d} {r.routerbench:6.3f} {r.ours_raw:6.3f} {r.ours_renamed:8.3f}"
            f" {r.agreement:6.3f} {r.kappa:6.3f} {r.rb1_ours0:8d} {r.rb0_ours1:8d}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REGRADE_CSV, help="where to write the table (CSV)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox processes at a time")
    parser.add_argument("--timeout-s", type=float, default=REGRADE_TIMEOUT_S, help="limit per sandbox run (s)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="RouterBench model columns to grade")
    args = parser.parse_args(argv)

    answers, unmatched = load_recorded_answers(args.models)
    for row in unmatched:
        print(f"unmatched RouterBench row: {row}")
    print(f"{len(answers)} answers, {len({a.task_id for a in answers})} tasks, {len(unmatched)} unmatched rows")
    table = regrade(answers, max_workers=args.workers, timeout_s=args.timeout_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out} ({len(table)} rows)")
    print(agreement_report(table))


if __name__ == "__main__":
    main()
