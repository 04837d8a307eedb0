"""Step-time model vs Vidur's measured H100 operator timings, and what one call costs.

The comparison covers the part Vidur measured: the layers' non-attention operators (nine per layer x num_layers)
plus the embedding; attention, all-reduce, LM head and CPU overhead are not in those files. Measured = the sum of
the operators' medians (ms); when a token count was profiled twice, the mean of the two sums.

    python benchmarks/bench_step_time.py

Last line: the largest relative error in the table (target: within 15%).
"""

from __future__ import annotations

import time

import numpy as np

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.twin.perf.calibration import REFERENCE_GPUS, VIDUR_DIR, load_operator_profile
from sysaware.engines.twin.protocols import BatchShape
from sysaware.engines.twin.perf.step_time import RooflineStepTime

CASES = [  # (profile under vidur_profiles/compute, tensor-parallel degrees)
    ("h100/meta-llama/Llama-2-7b-hf", (1,)),
    ("h100/meta-llama/Llama-2-70b-hf", (4,)),
    ("h100/codellama/CodeLlama-34b-Instruct-hf", (1, 2, 4, 8)),
]
TOKENS = (1, 32, 128, 2048)
TARGET = 0.15


def per_call_cost_us() -> tuple[float, float]:
    """Mean microseconds of one step_time_s call (mixed batch) and of one 100-step decode_run_s."""
    pool = load_pool(DEFAULT_POOL)
    model = RooflineStepTime.for_deployment(pool.model("codellama-34b-instruct"), pool)
    shape = BatchShape(prefill_tokens=512, prefill_attended=512 * 1024, decode_seqs=48, decode_context=48 * 700)
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        model.step_time_s(shape)
    step_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n // 10):
        model.decode_run_s(48, 48 * 700, 100)
    run_us = (time.perf_counter() - start) / (n // 10) * 1e6
    return step_us, run_us


def main() -> None:
    step_us, run_us = per_call_cost_us()
    print(f"per call: step_time_s {step_us:.2f} us, decode_run_s(100 steps) {run_us:.1f} us")
    print()
    print(f"{'profile':<28} {'TP':>2} {'tokens':>6} {'measured ms':>12} {'predicted ms':>13} {'rel. error':>10}")
    worst = 0.0
    for profile_name, tp_degrees in CASES:
        profile = load_operator_profile(VIDUR_DIR / "compute" / profile_name / "mlp.csv")
        for tp in tp_degrees:
            model = RooflineStepTime(profile.architecture, REFERENCE_GPUS["h100"], tp)
            for tokens in TOKENS:
                rows = (profile.tensor_parallel == tp) & (profile.num_tokens == tokens)
                measured_ms = float(np.mean(profile.measured_s[rows])) * 1e3
                predicted_ms = model.non_attention_s(tokens) * 1e3
                error = predicted_ms / measured_ms - 1
                worst = max(worst, abs(error))
                print(f"{profile_name.split('/')[-1]:<28} {tp:>2} {tokens:>6} {measured_ms:>12.2f} "
                      f"{predicted_ms:>13.2f} {error:>+10.1%}")
    print()
    print(f"max relative error: {worst:.1%} (target within {TARGET:.0%})")


if __name__ == "__main__":
    main()
