"""What one twin programmer says, per model and strategy: mean output tokens and sandbox-graded pass@1.

    python -m sysaware.engines.twin.responder.report [--pools ...] [--seed 0] [--workers 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from sysaware.config import CONFIG_DIR, PoolConfig, load_pool
from sysaware.engines.twin.responder.answers import routerbench_test_task_ids
from sysaware.engines.twin.responder.twin_responder import TwinResponder
from sysaware.engines.types import ChatMessage, GenerationRequest
from sysaware.tasks.extract import extract_code
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.prompts import ROLES, STRATEGY_INSTRUCTIONS, Strategy, task_prompt
from sysaware.tasks.sandbox import SandboxJob, run_tests_batch


def single_agent_report(pools: Sequence[PoolConfig], task_ids: Sequence[int], seed: int = 0, workers: int = 2) -> list[dict]:
    """Per (model, strategy): mean output tokens and the sandbox-graded pass@1 of one programmer agent."""

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
