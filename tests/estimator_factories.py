"""Synthetic Phase 2 rows with known structure, for the estimator tests (no simulator run needed)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

MODELS = {"fast-7b": 8.0, "slow-34b": 20.0}  # model -> base TPOT, ms
STRATEGY_TOKENS = {"flash": 40, "concise": 90, "deepthink": 300}  # mean output tokens
ROLES = ("programmer", "reviewer")
LEVELS = (1, 10, 50, 150)


def make_phase2(prompts: int = 40, seed: int = 0) -> pd.DataFrame:
    """Every prompt x strategy x model x level. TTFT grows with queue_waiting (the queueing past the knee) and with
    the wait for the in-progress step (step_remaining_ms), TPOT with queue_running; ema_ttft_ms is a smoothed,
    lagging view of TTFT, so it is informative but not exact."""
    rng = np.random.default_rng(seed)
    rows = []
    texts = [f"Write a function number {i} that returns the {['sum', 'product', 'maximum', 'sorted list'][i % 4]} "
             f"of a list of {i % 7 + 2} integers." for i in range(prompts)]
    t = 0.0
    for n in LEVELS:
        for p, text in enumerate(texts):
            in_tokens = 60 + 7 * (p % 11)
            for strategy, mean_tokens in STRATEGY_TOKENS.items():
                for model, base_tpot in MODELS.items():
                    running = int(min(n, 64) + rng.integers(0, 3))
                    waiting = int(max(0, n - 64) + rng.integers(0, 3) * (n > 64))
                    kv = min(1.0, running / 80)
                    step_ms = base_tpot * (1 + running / 40)
                    remaining = step_ms * rng.uniform()
                    ttft = (15 + remaining + 0.05 * in_tokens + 12.0 * waiting + 0.2 * running) * rng.lognormal(0, 0.1)
                    tpot = base_tpot * (1 + running / 40) * rng.lognormal(0, 0.05)
                    tokens = max(2, int(mean_tokens * (1 + 0.5 * (p % 3)) * rng.lognormal(0, 0.2)))
                    t += 0.01
                    rows.append({
                        "probe_key": f"{p}-{strategy}-{model}-{n}", "prompt_id": f"p{p:04d}", "model_id": model,
                        "role_id": ROLES[p % 2], "strategy_id": strategy, "concurrency": n,
                        "replica_id": f"{model}/0", "queue_waiting": waiting, "queue_running": running,
                        "kv_utilization": kv, "ema_ttft_ms": ttft * rng.lognormal(0, 0.35),
                        "step_ms": step_ms, "step_remaining_ms": remaining, "step_tokens": running,
                        "total_input_tokens": in_tokens, "output_tokens": tokens, "actual_ttft": ttft,
                        "actual_tpot": tpot, "queue_ms": 0.0, "e2e_ms": ttft + tokens * tpot, "submitted_at": t,
                        "prompt_text": text,
                    })
    df = pd.DataFrame(rows)
    for c in ("concurrency", "queue_waiting", "queue_running", "step_tokens", "total_input_tokens", "output_tokens"):
        df[c] = df[c].astype("int32")
    return df


@lru_cache(maxsize=1)
def shared_embedder():
    """One MiniLM per test process: loading it costs seconds, and the cache by text is what the tests share."""
    from sysaware.estimators.embeddings import PromptEmbedder

    return PromptEmbedder()


def write_phase2_run(run_dir, df: pd.DataFrame):
    """A collect-metrics run folder: one shard per level, and the Phase 1 prompts CSV its manifest names."""
    from pathlib import Path

    from sysaware.data import dataset_store as store

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True)
    prompts_csv = run_dir / "intermediate_prompts.csv"
    df[["prompt_id", "prompt_text"]].drop_duplicates().to_csv(prompts_csv, index=False)
    for level, rows in df.groupby("concurrency"):
        store.write_shard(run_dir, int(level), rows.drop(columns="prompt_text"))
    store.write_manifest(run_dir, settings={}, prompts={"path": str(prompts_csv)})
    return run_dir
