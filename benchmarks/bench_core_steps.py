"""Speed of the twin engine core alone: 50 closed-loop clients on one replica, fake step model, fake tokenizer.

Each client sends its next request the moment the previous one finishes, so 50 requests are always in the replica.
Prompts and answer lengths are drawn once from a seeded generator. The same workload runs twice: with fast-forward
(``step(now)``, what a simulated driver does) and one iteration per call (``step(now, until=now + 1e-12)``). Prints
step() calls, scheduler iterations and wall time of both, then the headline: simulated tokens per wall second with
fast-forward.

    python benchmarks/bench_core_steps.py [num_requests]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from twin_factories import FakeResponder, FakeStepTime, count_words, create_requests  # noqa: E402

from sysaware.config import TwinSettings  # noqa: E402
from sysaware.engines.twin.perf.core import EventKind, TwinEngineCore  # noqa: E402

CONCURRENCY = 50


def workload(num_requests: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(100, 1500, size=num_requests).tolist()  # MBPP agent prompts: a few hundred tokens
    outputs = rng.integers(20, 600, size=num_requests).tolist()  # Flash .. DeepThink answers
    requests = create_requests(num_requests, prompt_tokens=prompts)
    lengths = {r.request_id: n for r, n in zip(requests, outputs)}
    return requests, lengths


def run(num_requests: int, single_step: bool) -> dict:
    requests, lengths = workload(num_requests)
    core = TwinEngineCore(
        "bench-model",
        "bench-0",
        FakeStepTime(),
        FakeResponder(lengths),
        num_gpu_blocks=20_000,  # ~320k tokens: an H100 with a 7B model; no preemption at 50 concurrent
        settings=TwinSettings(),
        tokenizer_count=count_words,
    )
    pending = iter(requests)
    for _ in range(CONCURRENCY):
        core.add_request(next(pending), 0.0)
    now, calls, tokens, done = 0.0, 0, 0, 0
    start = time.perf_counter()
    while core.has_work():
        outcome = core.step(now, now + 1e-12 if single_step else None)
        calls += 1
        now += outcome.duration_s
        for event in outcome.events:
            if event.kind is EventKind.FINISHED:
                done += 1
                tokens += event.result.output_tokens
                nxt = next(pending, None)
                if nxt is not None:  # closed loop: the client sends its next request at once
                    core.add_request(nxt, event.time_s)
    wall = time.perf_counter() - start
    assert done == num_requests
    return {"calls": calls, "iterations": core.iterations_total, "wall_s": wall, "virtual_s": now, "tokens": tokens}


def main(num_requests: int = 2000) -> None:
    fast = run(num_requests, single_step=False)
    slow = run(num_requests, single_step=True)
    assert fast["tokens"] == slow["tokens"] and fast["iterations"] == slow["iterations"]
    for name, r in (("one iteration per call", slow), ("fast-forward", fast)):
        print(
            f"{name:>24}: {r['calls']:>7} step() calls for {r['iterations']} iterations, {r['wall_s']:.2f} wall s, "
            f"{r['calls'] / r['wall_s']:,.0f} calls/s, {r['iterations'] / r['wall_s']:,.0f} iterations/s, "
            f"{r['virtual_s'] / r['wall_s']:,.0f}x real time"
        )
    print(f"{num_requests} requests, {fast['tokens']} output tokens, {CONCURRENCY} concurrent, "
          f"{fast['virtual_s']:.1f} virtual s")
    print(f"fast-forward: {slow['calls'] / fast['calls']:.1f}x fewer step() calls, "
          f"{slow['wall_s'] / fast['wall_s']:.1f}x less wall time")
    print(f"simulated tokens per wall second (fast-forward): {fast['tokens'] / fast['wall_s']:,.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
