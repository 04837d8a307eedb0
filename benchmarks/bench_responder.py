"""Cost of TwinResponder.respond() on the simulated cluster's background load: cold, over a long run, and warm.

The requests are the cluster's (``MbppRequestFactory`` over the sanitized train split: a random role, strategy and
task, a fresh seed each) to a random model of the default pool. Phases, in one process:

1. construction of the responder (after imports);
2. cold: the first requests, while per-task caches fill (recorded answers extracted, code described, pieces
   tokenized);
3. warm-up: a long run, timed as a whole (its mean is the long-run figure);
4. warm: requests after the warm-up, each timed (mean, p50, p99).

It also checks that the counts assembled from pieces are the tokenizer's count of the whole text.

    python benchmarks/bench_responder.py [--cold 2000] [--warmup 40000] [--warm 20000]

Target: warm mean <= 50 us per respond(), construction < 1 s. Headline printed last.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np


def main(cold: int = 2000, warmup: int = 40000, warm: int = 20000, seed: int = 0) -> None:
    t0 = time.perf_counter()
    from sysaware.config import DEFAULT_POOL, load_pool
    from sysaware.engines.tokens import count_tokens
    from sysaware.engines.twin.responder.twin_responder import TwinResponder
    from sysaware.sim.workload import MbppRequestFactory

    import_s = time.perf_counter() - t0
    pool = load_pool(DEFAULT_POOL)
    t0 = time.perf_counter()
    responder = TwinResponder(pool)
    construct_s = time.perf_counter() - t0

    factory = MbppRequestFactory.for_split("train")
    models = [m.name for m in pool.models]
    rng = random.Random(seed)

    def next_request():
        return factory(rng.choice(models), rng)

    def timed(n: int) -> tuple[np.ndarray, float, list]:
        """Wall seconds of each respond(), CPU seconds of them all (the machine may be shared), the responses."""
        costs, responses, cpu_s = np.empty(n), [], 0.0
        for i in range(n):
            request = next_request()
            c, t = time.process_time(), time.perf_counter()
            response = responder.respond(request)
            costs[i] = time.perf_counter() - t
            cpu_s += time.process_time() - c
            responses.append(response)
        return costs, cpu_s, responses

    cold_costs, cold_cpu_s, _ = timed(cold)
    requests = [next_request() for _ in range(warmup)]
    c0, t0 = time.process_time(), time.perf_counter()
    for request in requests:
        responder.respond(request)
    warmup_s, warmup_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    warm_costs, warm_cpu_s, responses = timed(warm)

    sample = responses[:: max(len(responses) // 300, 1)]
    errors = [abs(r.output_tokens - count_tokens(r.text)) / max(count_tokens(r.text), 1) for r in sample]
    total = cold + warmup + warm
    long_run_us = 1e6 * (cold_costs.sum() + warmup_s + warm_costs.sum()) / total
    long_run_cpu_us = 1e6 * (cold_cpu_s + warmup_cpu_s + warm_cpu_s) / total

    def line(name: str, costs: np.ndarray, cpu_s: float) -> str:
        us = 1e6 * costs
        return (f"{name:30s} wall mean {us.mean():8.1f} us  p50 {np.percentile(us, 50):8.1f} us  "
                f"p99 {np.percentile(us, 99):9.1f} us | CPU mean {1e6 * cpu_s / len(costs):8.1f} us")

    print(f"pool {pool.name}, {len(models)} models; cluster background requests (train split, random role and strategy)")
    print(f"imports {import_s:.2f} s; construction {construct_s:.3f} s (target < 1 s)")
    print(f"first respond(): {1e3 * cold_costs[0]:.1f} ms")
    print(line(f"cold (first {cold} requests)", cold_costs, cold_cpu_s))
    print(f"warm-up ({warmup} requests): wall mean {1e6 * warmup_s / warmup:.1f} us | CPU mean {1e6 * warmup_cpu_s / warmup:.1f} us")
    print(f"long run ({total} requests): wall mean {long_run_us:.1f} us | CPU mean {long_run_cpu_us:.1f} us per respond()")
    print(f"output_tokens vs count_tokens(text) on {len(sample)} answers: max relative error {max(errors):.4f}")
    print(line(f"warm ({warm} requests)", warm_costs, warm_cpu_s))
    print(f"warm respond() mean: {1e6 * warm_costs.mean():.1f} us wall, {1e6 * warm_cpu_s / warm:.1f} us CPU (target <= 50 us)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=40000)
    parser.add_argument("--warm", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.cold, args.warmup, args.warm, args.seed)
