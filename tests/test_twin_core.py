"""The twin engine core, driven step by step on a virtual clock with a fake step model and a fake responder.

Prompt lengths are exact (fake tokenizer: one token per word, plus the chat template's 4 tokens per message), so
every assertion below can be worked out by hand; the arithmetic is in the comments. Block size is 16 tokens.
"""

import numpy as np
import pytest

from sysaware.engines.twin.perf.core import EventKind
from sysaware.engines.twin.protocols import BatchShape
from sysaware.engines.twin.perf.request import RequestStatus
from sysaware.engines.types import FinishReason, step_remaining_ms

from twin_factories import (
    FakeResponder,
    FakeStepTime,
    assert_drained,
    create_core,
    create_requests,
    drive,
)


def status(core, request_id):
    return core.requests[request_id].status


def kinds(outcome):
    return [(e.kind, e.request_id) for e in outcome.events]


# ---- admission -------------------------------------------------------------------------------------------------


def test_admission_stops_at_max_num_seqs():
    core = create_core(max_num_seqs=2)
    for r in create_requests(3):
        core.add_request(r, 0.0)
    assert (core.num_running, core.num_waiting) == (0, 3)

    outcome = core.step(0.0)
    # 3 x 32 prompt tokens fit the 8192-token budget, but only 2 sequences may run.
    assert (core.num_running, core.num_waiting) == (2, 1)
    assert status(core, "req-0") is RequestStatus.RUNNING
    assert status(core, "req-1") is RequestStatus.RUNNING
    assert status(core, "req-2") is RequestStatus.WAITING
    assert kinds(outcome) == [(EventKind.FIRST_TOKEN, "req-0"), (EventKind.FIRST_TOKEN, "req-1")]


def test_admission_stops_when_the_token_budget_is_spent():
    step_time = FakeStepTime()
    core = create_core(max_num_batched_tokens=64, step_time=step_time)
    for r in create_requests(3):
        core.add_request(r, 0.0)

    t = core.step(0.0).duration_s
    # req-0 and req-1 take 32 + 32 = 64 tokens: the budget is spent, req-2 is not admitted.
    assert (core.num_running, core.num_waiting) == (2, 1)
    assert step_time.shapes[-1].prefill_tokens == 64

    core.step(t)
    # Two decodes take 2 tokens, leaving 62 >= 32 for req-2's whole prompt.
    assert (core.num_running, core.num_waiting) == (3, 0)
    assert step_time.shapes[-1] == BatchShape(
        prefill_tokens=32, prefill_attended=32 * 32, decode_seqs=2, decode_context=2 * 33
    )


def test_chunked_prefill_splits_a_long_prompt_and_the_first_token_comes_with_the_last_chunk():
    step_time = FakeStepTime()
    core = create_core(max_num_batched_tokens=64, output_tokens=4, step_time=step_time)
    [req] = create_requests(1, prompt_tokens=150)
    core.add_request(req, 0.0)

    t = 0.0
    first = core.step(t)
    t += first.duration_s
    assert first.events == []
    assert core.requests["req-0"].num_computed_tokens == 64  # chunk 1: tokens 0..63
    assert core.requests["req-0"].first_scheduled_s == 0.0

    second = core.step(t)
    t += second.duration_s
    assert second.events == []
    assert core.requests["req-0"].num_computed_tokens == 128  # chunk 2: tokens 64..127

    third = core.step(t)
    t += third.duration_s
    # chunk 3: the last 150 - 128 = 22 tokens, and the first output token in the same step.
    assert kinds(third) == [(EventKind.FIRST_TOKEN, "req-0")]
    assert third.events[0].time_s == pytest.approx(t)
    assert [s.prefill_tokens for s in step_time.shapes] == [64, 64, 22]
    assert [s.prefill_attended for s in step_time.shapes] == [64 * 64, 64 * 128, 22 * 150]

    log = drive(core, [], start_s=t)
    result = log.results["req-0"]
    assert result.first_token_s == pytest.approx(t)
    assert result.ttft_s == pytest.approx(first.duration_s + second.duration_s + third.duration_s)
    assert result.output_tokens == 4 and result.prompt_tokens == 150
    assert_drained(core)


def test_running_requests_decode_before_waiting_requests_prefill():
    step_time = FakeStepTime()
    core = create_core(max_num_batched_tokens=64, output_tokens=10, step_time=step_time)
    [a] = create_requests(1, prompt_tokens=32, prefix="a")
    [b] = create_requests(1, prompt_tokens=200, prefix="b")
    core.add_request(a, 0.0)
    t = core.step(0.0).duration_s  # a: whole prompt, first token
    core.add_request(b, t)

    core.step(t)
    # a decodes first (1 token, context 32 + 1 = 33); b's chunk gets the remaining 64 - 1 = 63 tokens.
    assert step_time.shapes[-1] == BatchShape(
        prefill_tokens=63, prefill_attended=63 * 63, decode_seqs=1, decode_context=33
    )
    assert core.requests["a-0"].num_output_tokens == 2
    assert core.requests["b-0"].num_computed_tokens == 63
    assert core.requests["b-0"].num_output_tokens == 0


# ---- KV pressure and preemption ----------------------------------------------------------------------------------


def test_preemption_by_recompute_step_by_step():
    step_time = FakeStepTime()
    core = create_core(num_gpu_blocks=4, output_tokens=40, step_time=step_time)
    a, b = create_requests(2, prompt_tokens=16)
    core.add_request(a, 0.0)
    core.add_request(b, 0.0)
    # Alone, each needs ceil((16 + 40 - 1) / 16) = 4 blocks: it fits, but the two together do not.

    t = 0.0
    out = core.step(t)  # both prefill 16 tokens (1 block each) and emit their first token
    t += out.duration_s
    assert kinds(out) == [(EventKind.FIRST_TOKEN, "req-0"), (EventKind.FIRST_TOKEN, "req-1")]
    assert core.kv_cache.num_free_blocks == 2

    out = core.step(t)
    t += out.duration_s
    # Iteration 2 takes the second block of each (free 0). Tokens 16..31 fit in 2 blocks, so iterations 2..17 are
    # identical decodes, fast-forwarded in one call; iteration 18 would need a third block.
    assert out.num_iterations == 16 and out.events == []
    assert core.requests["req-0"].num_output_tokens == 1 + 16
    assert core.kv_cache.num_free_blocks == 0

    out = core.step(t)
    t += out.duration_s
    # req-0 needs its 3rd block: FCFS preempts the newest running request, req-1, freeing its 2 blocks (1 left after
    # req-0 takes one). req-1 keeps its 17 tokens and will recompute prompt + output = 16 + 17 = 33 tokens.
    assert kinds(out) == [(EventKind.PREEMPTED, "req-1")]
    req1 = core.requests["req-1"]
    assert req1.status is RequestStatus.PREEMPTED
    assert (req1.num_computed_tokens, req1.num_output_tokens, req1.num_tokens) == (0, 17, 33)
    assert (core.num_running, core.num_waiting) == (1, 1)
    assert core.kv_cache.num_free_blocks == 1
    assert step_time.shapes[-1].decode_seqs == 1

    log = drive(core, [], start_s=t)
    r0, r1 = log.results["req-0"], log.results["req-1"]
    assert (r0.output_tokens, r0.num_preemptions) == (40, 0)
    assert (r1.output_tokens, r1.num_preemptions) == (40, 1)
    # req-1 resumes only after req-0 finishes (33 tokens need 3 blocks; 1 is free), recomputing 33 tokens alone.
    assert BatchShape(prefill_tokens=33, prefill_attended=33 * 33) in step_time.shapes
    assert r1.first_scheduled_s < r0.finished_s < r1.finished_s
    assert r1.first_token_s == r0.first_token_s  # its first token was emitted before the preemption
    assert len(r1.token_times_s) == 40 and np.all(np.diff(r1.token_times_s) > 0)
    assert core.stats(log.end_s).num_preemptions_total == 1
    assert_drained(core)


def test_kv_saturating_load_preempts_and_still_completes_every_request():
    responder = FakeResponder(60)
    core = create_core(num_gpu_blocks=12, responder=responder)
    requests = create_requests(6, prompt_tokens=20)
    # Each needs up to ceil((20 + 59) / 16) = 5 blocks; six would need 30 of the 12.
    log = drive(core, [(0.001 * i, r) for i, r in enumerate(requests)])

    assert set(log.results) == {r.request_id for r in requests}
    for result in log.results.values():
        assert result.output_tokens == 60
        assert result.finish_reason is FinishReason.STOP
        assert len(result.token_times_s) == 60
        assert np.all(np.diff(result.token_times_s) > 0)
        assert result.arrival_s <= result.first_scheduled_s < result.first_token_s <= result.finished_s
        assert result.finished_s == result.token_times_s[-1]
    preemptions = sum(r.num_preemptions for r in log.results.values())
    assert preemptions > 0
    assert core.stats(log.end_s).num_preemptions_total == preemptions
    assert responder.num_calls == 6  # the answer is decided once, at arrival, even for recomputed requests
    assert_drained(core)


def test_a_step_that_preempts_admits_nobody():
    # vLLM skips the waiting queue in a step that preempted, so the freed blocks are not handed straight back to
    # the request that just lost them (or to a newcomer). Check it on every preemption of a KV-starved workload.
    core = create_core(num_gpu_blocks=10, max_num_batched_tokens=40, responder=FakeResponder(70))
    for r in create_requests(6, prompt_tokens=12):
        core.add_request(r, 0.0)
    t, num_preempting_steps = 0.0, 0
    while core.has_work():
        waiting_before = core.num_waiting
        out = core.step(t)
        t += out.duration_s
        preempted = [e.request_id for e in out.events if e.kind is EventKind.PREEMPTED]
        if preempted:
            num_preempting_steps += 1
            assert all(status(core, rid) is RequestStatus.PREEMPTED for rid in preempted)
            assert core.num_waiting == waiting_before + len(preempted)
    assert num_preempting_steps > 0
    assert_drained(core)


# ---- priority ----------------------------------------------------------------------------------------------------


def _arrival_order_test(policy):
    """One request runs (max_num_seqs=1); two of priority 5 queue; then one of priority 1 arrives."""
    core = create_core(scheduling_policy=policy, max_num_seqs=1, output_tokens=5)
    [running] = create_requests(1, priority=0.0, prefix="running")
    queued = create_requests(2, priority=5.0, prefix="queued")
    [urgent] = create_requests(1, priority=1.0, prefix="urgent")
    log = drive(core, [(0.0, running), (0.0, queued[0]), (0.0, queued[1]), (0.001, urgent)])
    order = sorted(log.results, key=lambda rid: log.results[rid].first_scheduled_s)
    return core, log, order


def test_priority_lets_an_urgent_request_overtake_the_queue():
    core, log, order = _arrival_order_test("priority")
    # "urgent" (1) cannot preempt "running" (0, more urgent) but goes ahead of both "queued" (5).
    assert order == ["running-0", "urgent-0", "queued-0", "queued-1"]
    assert core.stats(log.end_s).num_preemptions_total == 0
    assert_drained(core)


def test_fcfs_serves_in_arrival_order_whatever_the_priority():
    core, log, order = _arrival_order_test("fcfs")
    assert order == ["running-0", "queued-0", "queued-1", "urgent-0"]
    assert_drained(core)


def test_priority_does_not_preempt_for_equal_priority():
    core = create_core(scheduling_policy="priority", max_num_seqs=2, output_tokens=20)
    log = drive(core, [(0.001 * i, r) for i, r in enumerate(create_requests(4, priority=3.0))])
    # Same priority: newcomers wait their turn, exactly as under FCFS.
    assert core.stats(log.end_s).num_preemptions_total == 0
    assert sorted(log.results, key=lambda rid: log.results[rid].first_scheduled_s) == [f"req-{i}" for i in range(4)]


def test_priority_preempts_the_least_urgent_even_if_already_scheduled_this_step():
    step_time = FakeStepTime()
    core = create_core(scheduling_policy="priority", num_gpu_blocks=6, output_tokens=40, step_time=step_time)
    [lax] = create_requests(1, prompt_tokens=16, priority=5.0, prefix="lax")
    [urgent] = create_requests(1, prompt_tokens=20, priority=0.0, prefix="urgent")
    [other] = create_requests(1, prompt_tokens=16, priority=1.0, prefix="other")
    core.add_request(lax, 0.0)
    t = core.step(0.0).duration_s  # lax: 16 tokens, 1 block
    core.add_request(other, t)
    core.add_request(urgent, t)
    # lax takes its 2nd block for token 16; then by priority urgent (20 tokens, 2 blocks), other (16, 1 block).
    t += core.step(t).duration_s
    assert [r.request_id for r in core.scheduler.running] == ["lax-0", "urgent-0", "other-0"]
    out = core.step(t)
    t += out.duration_s
    # other takes its 2nd block (free 0). Steady decodes until urgent's 21 + 12 = 33rd token needs a 3rd block:
    # iterations 3..14 (lax would need one at its 33rd token, 16 + 16 = 32 tokens later than its 17th).
    assert out.num_iterations == 12
    out = core.step(t)
    t += out.duration_s
    # Iteration 15: lax (first in the running list) is scheduled, then urgent needs a block and none is free. The
    # least urgent running request is lax: it is preempted and its scheduled token taken back; the step is the
    # decodes of urgent (context 20 + 13 = 33) and other (16 + 13 = 29).
    assert kinds(out) == [(EventKind.PREEMPTED, "lax-0")]
    assert status(core, "lax-0") is RequestStatus.PREEMPTED
    assert core.requests["lax-0"].num_output_tokens == 14  # tokens of iterations 1..14; the 15th never ran
    assert step_time.shapes[-1] == BatchShape(decode_seqs=2, decode_context=33 + 29)
    assert core.requests["urgent-0"].num_output_tokens == core.requests["other-0"].num_output_tokens == 14

    log = drive(core, [], start_s=t)
    assert log.results["urgent-0"].finished_s < log.results["lax-0"].finished_s
    assert log.results["lax-0"].output_tokens == 40 and log.results["lax-0"].num_preemptions >= 1
    assert (log.results["urgent-0"].output_tokens, log.results["urgent-0"].num_preemptions) == (40, 0)
    assert_drained(core)


def test_priority_under_kv_pressure_completes_everything():
    rng = np.random.default_rng(3)
    requests = [
        r
        for i, p in enumerate(rng.integers(0, 4, size=16))
        for r in create_requests(1, prompt_tokens=int(rng.integers(10, 60)), priority=float(p), prefix=f"p{p}-{i}")
    ]
    core = create_core(scheduling_policy="priority", num_gpu_blocks=16, responder=FakeResponder(50))
    log = drive(core, [(0.002 * i, r) for i, r in enumerate(requests)])
    assert len(log.results) == 16 and all(r.output_tokens == 50 for r in log.results.values())
    assert sum(r.num_preemptions for r in log.results.values()) == core.stats(log.end_s).num_preemptions_total > 0
    assert_drained(core)


def _urgent_arrives_at_a_full_batch(policy):
    step_time = FakeStepTime()
    core = create_core(
        scheduling_policy=policy, max_num_seqs=2, max_num_batched_tokens=33, output_tokens=20, step_time=step_time
    )
    for r in create_requests(2, prompt_tokens=8, priority=10.0, prefix="bg"):
        core.add_request(r, 0.0)
    t = core.step(0.0).duration_s  # both background requests prefill and run
    [urgent] = create_requests(1, priority=0.0, prefix="urgent")
    core.add_request(urgent, t)
    out = core.step(t)
    return core, step_time, out, t + out.duration_s


def test_priority_preempts_a_less_urgent_request_to_admit_an_urgent_one():
    core, step_time, out, t = _urgent_arrives_at_a_full_batch("priority")
    # The two decodes leave 33 - 2 = 31 tokens of budget. The batch is full (2 of 2); bg-1 is the least urgent
    # (priority 10, arrived after bg-0): it is preempted and its decode token given back (budget 32), so the step
    # is bg-0's decode + urgent's whole 32-token prefill, which emits urgent's first token.
    assert kinds(out) == [(EventKind.PREEMPTED, "bg-1"), (EventKind.FIRST_TOKEN, "urgent-0")]
    assert status(core, "urgent-0") is RequestStatus.RUNNING
    assert status(core, "bg-1") is RequestStatus.PREEMPTED
    assert (core.num_running, core.num_waiting) == (2, 1)
    assert step_time.shapes[-1] == BatchShape(
        prefill_tokens=32, prefill_attended=32 * 32, decode_seqs=1, decode_context=9
    )

    log = drive(core, [], start_s=t)
    assert log.results["urgent-0"].finished_s < log.results["bg-1"].finished_s
    assert log.results["bg-1"].num_preemptions == 1
    assert all(r.output_tokens == 20 for r in log.results.values())
    assert_drained(core)


def test_fcfs_never_preempts_for_a_newcomer():
    core, _, out, t = _urgent_arrives_at_a_full_batch("fcfs")
    # The queue stays blocked by max_num_seqs, so the decodes run on unchanged (fast-forwarded) until both
    # background requests finish their 20 - 1 = 19 remaining tokens; only then is the urgent request admitted.
    assert out.num_iterations == 19
    assert kinds(out) == [(EventKind.FINISHED, "bg-0"), (EventKind.FINISHED, "bg-1")]
    assert status(core, "urgent-0") is RequestStatus.WAITING
    log = drive(core, [], start_s=t)
    assert log.results["urgent-0"].first_scheduled_s == pytest.approx(t)
    assert core.stats(log.end_s).num_preemptions_total == 0


# ---- abort -------------------------------------------------------------------------------------------------------


def test_abort_frees_blocks_and_returns_what_was_emitted():
    core = create_core(max_num_seqs=2, output_tokens=100)
    for r in create_requests(3, prompt_tokens=40):
        core.add_request(r, 0.0)
    t = core.step(0.0).duration_s  # req-0, req-1 prefill 40 tokens: ceil(40 / 16) = 3 blocks each
    t += core.step(t, until=t + 1e-12).duration_s  # one decode: 41 tokens still fit 3 blocks
    assert core.kv_cache.num_used_blocks == 6

    result = core.abort("req-0", t)
    assert result.finish_reason is FinishReason.ABORT
    assert result.output_tokens == 2 and len(result.token_times_s) == 2
    assert result.finished_s == t
    assert result.text == ("abc " * 100)[: 400 * 2 // 100]  # 2 of 100 tokens: 8 of 400 characters
    assert core.kv_cache.num_used_blocks == 3
    assert core.abort("req-0", t) is None  # already gone
    assert core.abort("nope", t) is None

    waiting = core.abort("req-2", t)  # never scheduled
    assert (waiting.output_tokens, waiting.text) == (0, "")
    assert waiting.first_scheduled_s is None and waiting.first_token_s is None
    assert waiting.queue_time_s == t
    core.abort("req-1", t)
    assert_drained(core)
    assert core.stats(t).requests_finished_total == 0  # aborts are not successes


# ---- determinism and fast-forward --------------------------------------------------------------------------------


def _mixed_workload():
    """Staggered arrivals, varied lengths, a KV cache small enough to preempt."""
    rng = np.random.default_rng(7)
    n = 24
    prompts = rng.integers(8, 200, size=n).tolist()
    outputs = {f"req-{i}": int(k) for i, k in enumerate(rng.integers(1, 120, size=n))}
    arrivals = np.cumsum(rng.exponential(0.02, size=n)).tolist()
    requests = create_requests(n, prompt_tokens=prompts, max_tokens=100)
    return list(zip(arrivals, requests)), outputs


def _run_mixed(single_step=False, policy="fcfs", general_path_only=False, budget=256, **drive_options):
    arrivals, outputs = _mixed_workload()
    core = create_core(
        num_gpu_blocks=40,
        max_num_batched_tokens=budget,
        max_num_seqs=8,
        responder=FakeResponder(outputs),
        scheduling_policy=policy,
    )
    core.scheduler.general_path_only = general_path_only
    log = drive(core, arrivals, single_step=single_step, **drive_options)
    assert_drained(core)
    return core, log


def test_same_inputs_give_identical_results():
    _, first = _run_mixed()
    _, second = _run_mixed()
    assert first.results == second.results
    assert first.num_step_calls == second.num_step_calls


def test_fast_forward_matches_single_steps_with_far_fewer_calls():
    fast_core, fast = _run_mixed()
    slow_core, slow = _run_mixed(single_step=True)
    assert fast.results.keys() == slow.results.keys()
    for rid, f in fast.results.items():
        s = slow.results[rid]
        assert (f.output_tokens, f.num_preemptions) == (s.output_tokens, s.num_preemptions)
        assert f.finish_reason is s.finish_reason
        np.testing.assert_allclose(f.token_times_s, s.token_times_s, rtol=0, atol=1e-9)
        assert f.first_scheduled_s == pytest.approx(s.first_scheduled_s, abs=1e-9)
    assert fast.results == slow.results  # and in fact to the last bit: times are added one step at a time
    assert fast.num_iterations == slow.num_iterations == slow.num_step_calls
    assert fast_core.stats(0).num_preemptions_total == slow_core.stats(0).num_preemptions_total > 0
    assert fast.num_step_calls * 4 < slow.num_step_calls


def test_fast_forward_stops_at_a_finishing_request():
    core = create_core(responder=FakeResponder({"req-0": 5, "req-1": 10}))
    for r in create_requests(2):
        core.add_request(r, 0.0)
    t = core.step(0.0).duration_s  # prefill; first token of both
    out = core.step(t)
    # req-0 has 5 - 1 = 4 tokens left: four identical decode iterations, the last one finishing it.
    assert out.num_iterations == 4
    assert kinds(out) == [(EventKind.FINISHED, "req-0")]
    assert out.events[0].result.output_tokens == 5
    assert out.events[0].time_s == pytest.approx(t + out.duration_s)


def test_fast_forward_never_starts_a_step_at_or_after_until():
    step_time = FakeStepTime()
    core = create_core(output_tokens=100, step_time=step_time)
    for r in create_requests(2):
        core.add_request(r, 0.0)
    t = core.step(0.0).duration_s
    # Decode of 2 sequences at context 2 x 33 = 66: 0.005 + 2 x 1e-4 + 66 x 1e-6 s, growing by 2e-6 per step.
    d = step_time.decode_run_s(2, 66, 4)
    until = t + d[0] + d[1] + d[2] / 2  # mid-way through the third iteration
    out = core.step(t, until=until)
    assert out.num_iterations == 3  # they start at t, t + d0 and t + d0 + d1, all before `until`
    assert out.duration_s == pytest.approx(d[:3].sum())


def test_truncate_cuts_a_run_after_the_fact_exactly_like_until():
    # A driver that learns of an arrival only when it happens runs step(t) to the end and cuts the run back.
    lengths = {"req-0": 30, "req-1": 12}

    def started_core():
        core = create_core(responder=FakeResponder(lambda r: lengths.get(r.request_id, 5)))
        for r in create_requests(2):
            core.add_request(r, 0.0)
        return core, core.step(0.0).duration_s  # prefill: both have their first token

    bounded_core, t = started_core()
    cut_core, _ = started_core()
    full = cut_core.step(t)
    # req-1 has 12 - 1 = 11 tokens left: an 11-iteration run whose last step finishes it.
    assert full.num_iterations == 11 and kinds(full) == [(EventKind.FINISHED, "req-1")]
    assert cut_core.truncate(t + full.duration_s * 0.999) is None  # inside the last step: nothing to cut

    arrival = t + full.duration_s * 0.6
    new_end = cut_core.truncate(arrival)
    bounded = bounded_core.step(t, until=arrival)
    assert new_end == pytest.approx(t + bounded.duration_s)
    assert cut_core.last_outcome.num_iterations == bounded.num_iterations < 11
    assert cut_core.last_outcome.events == []
    assert cut_core.requests["req-1"].status is RequestStatus.RUNNING  # its finishing step was undone
    assert cut_core.stats(new_end) == bounded_core.stats(new_end)
    assert cut_core.truncate(arrival) is None  # the shortened run ends at the first boundary after `arrival`

    [late] = create_requests(1, prefix="late")
    for core in (bounded_core, cut_core):
        core.add_request(late, arrival)
    cut_log, bounded_log = drive(cut_core, [], start_s=new_end), drive(bounded_core, [], start_s=new_end)
    assert cut_log.results == bounded_log.results
    assert cut_log.results["req-1"].output_tokens == 12
    assert_drained(cut_core)


# ---- stats -------------------------------------------------------------------------------------------------------


def test_stats_counters_and_ema_ttft():
    core = create_core(max_num_seqs=2, num_gpu_blocks=100, output_tokens=3, ema_alpha=0.5)
    for r in create_requests(3, prompt_tokens=40):
        core.add_request(r, 0.0)
    d = core.step(0.0).duration_s
    stats = core.stats(d)
    # Two running with ceil(40 / 16) = 3 blocks each: 6 of 100 in use; one waiting.
    assert (stats.num_requests_running, stats.num_requests_waiting) == (2, 1)
    assert stats.kv_cache_usage_perc == pytest.approx(6 / 100)
    assert (stats.prompt_tokens_total, stats.generation_tokens_total, stats.requests_finished_total) == (80, 2, 0)
    assert stats.ema_ttft_ms == pytest.approx(d * 1e3)  # both first tokens came at d
    assert stats.timestamp_s == d and stats.num_gpu_blocks == 100 and stats.block_size == 16

    log = drive(core, [], start_s=d)
    stats = core.stats(log.end_s)
    assert (stats.num_requests_running, stats.num_requests_waiting, stats.kv_cache_usage_perc) == (0, 0, 0.0)
    assert (stats.prompt_tokens_total, stats.generation_tokens_total, stats.requests_finished_total) == (120, 9, 3)
    ttfts_ms = [d * 1e3, d * 1e3] + [log.results["req-2"].ttft_s * 1e3]
    ema = ttfts_ms[0]
    for x in ttfts_ms[1:]:
        ema = 0.5 * x + 0.5 * ema
    assert stats.ema_ttft_ms == pytest.approx(ema)


def test_times_are_the_callers_now_plus_step_durations():
    core = create_core(output_tokens=1)
    [req] = create_requests(1)
    core.add_request(req, 100.0)
    out = core.step(100.25)
    # One token: the prefill's step emits it and finishes the request.
    assert kinds(out) == [(EventKind.FIRST_TOKEN, "req-0"), (EventKind.FINISHED, "req-0")]
    result = out.events[1].result
    assert result.arrival_s == 100.0 and result.first_scheduled_s == 100.25
    assert result.first_token_s == result.finished_s == pytest.approx(100.25 + out.duration_s)
    assert result.queue_time_s == pytest.approx(0.25)


# ---- limits ------------------------------------------------------------------------------------------------------


def test_prompt_longer_than_the_context_is_rejected_with_the_limit_named():
    core = create_core(max_model_len=64)
    [req] = create_requests(1, prompt_tokens=64)
    with pytest.raises(ValueError, match=r"prompt of 64 tokens .*context of 64 tokens \(max_model_len\)"):
        core.add_request(req, 0.0)
    assert core.requests == {} and not core.has_work()


def test_request_that_can_never_fit_the_kv_cache_is_rejected():
    core = create_core(num_gpu_blocks=2, output_tokens=8)
    [too_big] = create_requests(1, prompt_tokens=30, prefix="big")
    # 30 + 8 - 1 = 37 tokens cached at the last step: ceil(37 / 16) = 3 blocks > 2.
    with pytest.raises(ValueError, match="need 3 KV blocks but the cache has only 2"):
        core.add_request(too_big, 0.0)
    [just_fits] = create_requests(1, prompt_tokens=25, prefix="fits")  # 25 + 8 - 1 = 32 tokens: 2 blocks
    core.add_request(just_fits, 0.0)
    assert drive(core, []).results["fits-0"].output_tokens == 8
    assert_drained(core)


def test_output_is_capped_by_max_tokens_and_by_the_context():
    core = create_core(max_model_len=64, output_tokens=10)
    [by_max_tokens] = create_requests(1, prompt_tokens=20, max_tokens=3, prefix="cap")
    [by_context] = create_requests(1, prompt_tokens=60, prefix="ctx")
    [whole] = create_requests(1, prompt_tokens=20, prefix="whole")
    log = drive(core, [(0.0, by_max_tokens), (0.0, by_context), (0.0, whole)])
    capped, ctx, full = log.results["cap-0"], log.results["ctx-0"], log.results["whole-0"]
    assert (capped.output_tokens, capped.finish_reason) == (3, FinishReason.LENGTH)
    assert capped.text == ("abc " * 10)[: 40 * 3 // 10]
    assert (ctx.output_tokens, ctx.finish_reason) == (64 - 60, FinishReason.LENGTH)
    assert (full.output_tokens, full.finish_reason, full.text) == (10, FinishReason.STOP, "abc " * 10)


def test_bad_calls_are_errors():
    core = create_core()
    with pytest.raises(RuntimeError, match="has_work"):
        core.step(0.0)
    [req] = create_requests(1)
    core.add_request(req, 0.0)
    with pytest.raises(ValueError, match="already in the engine"):
        core.add_request(req, 0.0)


# ---- a prefill step followed by its decode run in one call --------------------------------------------------------


@pytest.mark.parametrize("budget", [256, 6])
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("learn_late", [False, True])
def test_run_after_prefill_matches_single_steps_exactly(policy, learn_late, budget):
    # The mixed workload preempts (40 blocks for up to 8 requests), admits mid-run and chunks prefills: every kind of
    # step; with a budget of 6 tokens, up to 8 decodes do not even fit one step. Calls that begin with a prefill go
    # on with the steady run behind it; a late-learning driver cuts runs back when an arrival lands inside them.
    # Every result must equal single stepping's to the last bit.
    _, slow = _run_mixed(single_step=True, policy=policy, budget=budget)
    fast_core, fast = _run_mixed(policy=policy, run_after_prefill=True, learn_late=learn_late, budget=budget)
    _, plain = _run_mixed(policy=policy, budget=budget)
    assert fast.results == slow.results
    assert fast.num_iterations == slow.num_iterations == fast_core.iterations_total
    assert fast.num_step_calls < plain.num_step_calls < slow.num_step_calls
    assert fast_core.stats(fast.end_s).num_preemptions_total > 0


@pytest.mark.parametrize("budget", [256, 6])
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_the_batched_path_decides_like_the_general_path(policy, budget):
    # The decode batch schedules from counters; the general path walks every running request as vLLM does.
    _, batched = _run_mixed(policy=policy, run_after_prefill=True, budget=budget)
    _, general = _run_mixed(policy=policy, run_after_prefill=True, general_path_only=True, budget=budget)
    assert batched.results == general.results
    _, general_single = _run_mixed(single_step=True, policy=policy, general_path_only=True, budget=budget)
    assert batched.results == general_single.results


def _prefill_then_run_core():
    core = create_core(responder=FakeResponder({"old-0": 30, "new-0": 12, "late-0": 5}))
    [old] = create_requests(1, prefix="old")
    [new] = create_requests(1, prompt_tokens=64, prefix="new")
    core.add_request(old, 0.0)
    t = core.step(0.0, until=0.0).end_s  # old: prefill and first token
    core.add_request(new, t)
    return core, t


def test_prefill_step_goes_on_with_the_run_and_events_keep_their_times():
    core, t = _prefill_then_run_core()
    out = core.step(t, run_after_prefill=True)
    # Iteration 1: old decodes, new prefills 64 tokens and emits its first token at t1. Then both decode, steadily,
    # until new's 12th token: 11 more iterations, the last one finishing it.
    t1 = out.events[0].time_s
    assert kinds(out) == [(EventKind.FIRST_TOKEN, "new-0"), (EventKind.FINISHED, "new-0")]
    assert out.num_iterations == 1 + 11
    assert t < t1 < out.events[1].time_s == out.end_s
    assert out.events[1].result.first_token_s == t1 and out.events[1].result.output_tokens == 12

    plain_core, _ = _prefill_then_run_core()
    assert plain_core.step(t).num_iterations == 1  # without the option: the prefill step alone, as before


@pytest.mark.parametrize("cut_at", ["before_first_token", "at_first_token", "mid_run"])
def test_truncate_after_a_prefill_step_matches_until(cut_at):
    cut_core, t = _prefill_then_run_core()
    full = cut_core.step(t, run_after_prefill=True)
    t1 = full.events[0].time_s
    arrival = {"before_first_token": (t + t1) / 2, "at_first_token": t1, "mid_run": (t1 + full.end_s) / 2}[cut_at]
    bounded_core, _ = _prefill_then_run_core()
    bounded = bounded_core.step(t, until=arrival, run_after_prefill=True)

    new_end = cut_core.truncate(arrival)
    assert new_end == bounded.end_s
    assert cut_core.last_outcome == bounded
    if cut_at != "mid_run":
        # The run is undone entirely: the prefill step (which ended at or after the arrival) stays, with its event.
        assert kinds(bounded) == [(EventKind.FIRST_TOKEN, "new-0")] and bounded.num_iterations == 1
    assert cut_core.stats(new_end) == bounded_core.stats(new_end)
    assert cut_core.requests.keys() == bounded_core.requests.keys() == {"old-0", "new-0"}

    [late] = create_requests(1, prefix="late")
    for core in (cut_core, bounded_core):
        core.add_request(late, arrival)
    assert drive(cut_core, [], start_s=new_end).results == drive(bounded_core, [], start_s=new_end).results
    assert_drained(cut_core)


def three_queued_requests():
    """A core with three requests queued at 0 (prompts 30/47/16, answers 40/23/60 tokens): one prefill step, then a
    decode run that ends when req-1 finishes."""
    core = create_core(num_gpu_blocks=64, responder=FakeResponder({"req-0": 40, "req-1": 23, "req-2": 60}))
    for r in create_requests(3, prompt_tokens=[30, 47, 16]):
        core.add_request(r, 0.0)
    return core


def test_stats_inside_a_run_are_those_of_single_steps():
    # A run that ends with a finish, sampled at every step start, mid-step and at the end: stats(t) must be what a
    # core stepped one iteration per call shows at t (the step in flight at t already applied).
    fast = three_queued_requests()
    out = fast.step(0.0, run_after_prefill=True)
    assert out.num_iterations == 23 and [e.kind for e in out.events][-1] is EventKind.FINISHED
    slow = three_queued_requests()
    boundaries = [0.0]
    while len(boundaries) <= out.num_iterations:
        boundaries.append(slow.step(boundaries[-1], until=boundaries[-1]).end_s)
    assert boundaries[-1] == out.end_s
    # Replay the slow core step by step again, comparing at each instant. At a boundary the next step has not
    # started yet (the cluster runs timers before STEP_START); mid-step, the step in flight is applied.
    slow = three_queued_requests()
    slow.step(0.0, until=0.0)
    assert fast.stats(boundaries[1] / 2) == slow.stats(boundaries[1] / 2)  # inside the prefill step
    for start, end in zip(boundaries[1:], boundaries[2:]):
        assert fast.stats(start) == slow.stats(start), start
        slow.step(start, until=start)
        assert fast.stats((start + end) / 2) == slow.stats((start + end) / 2), (start + end) / 2
    assert fast.stats(out.end_s) == slow.stats(out.end_s)
    assert fast.stats(out.end_s).num_requests_running == 2


def test_stats_report_the_step_in_progress_as_an_engine_knows_it():
    # A new request waits for the in-progress step to end: stats carry how long that step has run, the previous
    # step's duration (its only estimate before it ends) and its scheduled tokens, identical fast-forwarded or not.
    core = three_queued_requests()
    out = core.step(0.0, run_after_prefill=True)
    ends = core._last_run.times_s
    prefill_end = core._last_run.run_start_s

    inside_prefill = core.stats(prefill_end / 2)
    assert inside_prefill.step_tokens == 30 + 47 + 16  # the three prompts, prefilled in one step
    assert inside_prefill.step_elapsed_ms == pytest.approx(prefill_end / 2 * 1e3)
    assert inside_prefill.step_ms == 0.0  # no step ran before it: nothing to expect from

    start, end = ends[4], ends[5]  # step 6 of the call, a decode of the three sequences
    mid = (start + end) / 2
    s = core.stats(mid)
    assert s.step_tokens == 3
    assert s.step_elapsed_ms == pytest.approx((mid - start) * 1e3)
    assert s.step_ms == pytest.approx((start - ends[3]) * 1e3)
    # decode steps of one batch last nearly the same: the expected wait is the true one to within a percent
    assert step_remaining_ms(s.step_elapsed_ms, s.step_ms) == pytest.approx((end - mid) * 1e3, rel=0.01)
    # pushed telemetry read two steps later no longer knows the phase: half a step, the mean wait
    assert step_remaining_ms(s.step_elapsed_ms, s.step_ms, age_s=2 * (end - start)) == pytest.approx(s.step_ms / 2)

    assert core.stats(start).step_ms == 0.0  # on a boundary the next step has not started: no wait
    idle = core.stats(out.end_s + 1.0)
    assert (idle.step_elapsed_ms, idle.step_ms, idle.step_tokens) == (0.0, 0.0, 0)


def test_step_fields_survive_a_cut_and_an_abort_as_with_single_steps():
    # The live engine cuts a run where a client cancels and aborts the request: the step still running, and the one
    # after it, must report what a core stepped one iteration per call reports.
    fast = three_queued_requests()
    fast.step(0.0, run_after_prefill=True)
    ends = list(fast._last_run.times_s)
    cancel_at = (ends[5] + ends[6]) / 2  # inside the run's seventh step
    fast.truncate(cancel_at)
    fast.abort("req-1", cancel_at)

    slow = three_queued_requests()
    t = 0.0
    while True:
        end = slow.step(t, until=t).end_s
        if end > cancel_at:
            break
        t = end
    slow.abort("req-1", cancel_at)

    def step_fields(core, at):
        s = core.stats(at)
        return s.step_elapsed_ms, s.step_ms, s.step_tokens

    later = (cancel_at + ends[6]) / 2
    assert step_fields(fast, later) == pytest.approx(step_fields(slow, later))
    assert step_fields(fast, later)[2] == 3  # the step had started with all three sequences
    next_end = fast.step(ends[6]).end_s
    assert slow.step(ends[6]).end_s == next_end
    mid_next = (ends[6] + next_end) / 2
    assert step_fields(fast, mid_next) == pytest.approx(step_fields(slow, mid_next))
    assert step_fields(fast, mid_next)[1] == pytest.approx((ends[6] - ends[5]) * 1e3)  # one step, not the whole run


def test_old_iteration_times_are_forgotten_but_results_stay_whole(monkeypatch):
    import sysaware.engines.twin.perf.core as core_module

    monkeypatch.setattr(core_module, "TIMELINE_COMPACT_AT", 50)
    arrivals, outputs = _mixed_workload()
    core = create_core(num_gpu_blocks=40, max_num_batched_tokens=256, max_num_seqs=8, responder=FakeResponder(outputs))
    log = drive(core, arrivals, run_after_prefill=True)
    _, reference = _run_mixed(run_after_prefill=True)
    assert log.results == reference.results
    assert core.timeline.num_kept < len(core.timeline)  # something was dropped
    assert_drained(core)
