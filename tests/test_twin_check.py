"""twin-check's parts that need no vLLM: the measured step-time profile, the twin's replay of a recorded trace and
the comparison (the vLLM half runs in tests_vllm/)."""

from __future__ import annotations

import numpy as np
import pytest

from sysaware.config import ModelDeployment, load_pool
from sysaware.engines.twin.perf.measured_step_time import MeasuredStepTime, StepProfile, fit_profile
from sysaware.engines.twin.protocols import BatchShape
from sysaware.engines.fidelity import (
    ReplayLog,
    RequestLog,
    compare,
    kendall_agreement,
    make_trace,
    markdown_table,
    replay_on_twin,
    verdicts,
)
from engine_contract import TINY_POOL

PROFILE = StepProfile("cpu", "tiny-llama", overhead_s=4e-3, prefill_token_s=2e-5, prefill_pair_s=1e-9,
                      decode_seq_s=3e-4, context_token_s=2e-7)


def tiny_model() -> ModelDeployment:
    return load_pool(TINY_POOL).models[0]


def test_the_fit_recovers_the_coefficients_of_noiseless_steps():
    rng = np.random.default_rng(0)
    shapes = []
    for _ in range(300):
        p = int(rng.integers(0, 512)) if rng.random() < 0.3 else 0
        d = int(rng.integers(0 if p else 1, 9))
        shapes.append(BatchShape(p, p * (p + int(rng.integers(0, 400))), d, d * int(rng.integers(50, 1200))))
    model = MeasuredStepTime(PROFILE)
    fitted = fit_profile("cpu", "tiny-llama", shapes, [model.step_time_s(s) for s in shapes])
    assert fitted.coefficients() == pytest.approx(PROFILE.coefficients(), rel=1e-3, abs=1e-12)
    assert fitted.median_rel_error < 1e-6


def test_a_decode_run_costs_what_its_single_steps_cost():
    model = MeasuredStepTime(PROFILE)
    run = model.decode_run_list_s(5, 1000, 4)
    singles = [model.step_time_s(BatchShape(0, 0, 5, 1000 + 5 * k)) for k in range(4)]
    assert run == singles  # the same floats: the core's fast-forward relies on it
    assert model.step_time_s(BatchShape()) == 0.0


def _fake_vllm_log(model: ModelDeployment) -> ReplayLog:
    """A recorded trace as the vLLM replay leaves it (arrivals only matter to the twin)."""
    log = ReplayLog("vllm", num_gpu_blocks=128, block_size=32)
    for r in make_trace("heavy", seed=3):
        log.requests.append(RequestLog(r.request_id, r.prompt_tokens, r.output_tokens, arrival_s=r.arrival_s))
    return log


def test_the_twin_replays_a_recorded_trace_and_agrees_with_itself():
    model = tiny_model()
    recorded = _fake_vllm_log(model)
    twin = replay_on_twin(model, recorded, MeasuredStepTime(PROFILE))
    assert len(twin.requests) == len(recorded.requests)
    assert all(len(r.token_times_s) == r.output_tokens for r in twin.requests)
    assert sum(r.num_preemptions for r in twin.requests) > 0  # the heavy trace overflows 127 blocks
    # The KV cache, not max_num_seqs, limits the batch here: a request is admitted only when its whole sequence fits.
    assert 5 <= max(s.num_running for s in twin.steps) <= model.twin.max_num_seqs
    assert max(s.num_waiting for s in twin.steps) > 0
    # Every step's tokens within the budget; the shapes are the scheduler's.
    assert all(0 < s.prefill_tokens + s.decode_seqs <= model.twin.max_num_batched_tokens for s in twin.steps)
    twin.engine = "vllm"  # the twin against its own replay: perfect agreement
    row = compare(twin, replay_on_twin(model, recorded, MeasuredStepTime(PROFILE)))
    assert row["first_token_order_identical"] and row["preemption_rel_error"] == 0
    assert row["ttft_median_rel_error"] == 0 and row["tpot_median_rel_error"] == 0
    assert row["steps_state_identical"] == 1.0
    assert all(verdicts(row).values())
    assert "| first_token_order_identical | True |" in markdown_table({"heavy": row})


def test_kendall_agreement_counts_pairs_in_the_same_order():
    assert kendall_agreement(list("abcd"), list("abcd")) == 1.0
    assert kendall_agreement(list("abcd"), list("dcba")) == 0.0
    assert kendall_agreement(list("abc"), list("acb")) == pytest.approx(2 / 3)
