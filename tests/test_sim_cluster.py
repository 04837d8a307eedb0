"""The simulated cluster over the default pool (configs/pool_twin.yaml) with the real roofline step model.

A fast fake responder (answer lengths drawn from the request's seed) stands in where what the model says does not
matter; the real TwinResponder is used where it does (determinism of the whole result, text included).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from functools import lru_cache

import pytest

from sysaware.config import DEFAULT_POOL, PoolConfig, load_pool
from sysaware.engines.types import FinishReason, GenerationResult
from sysaware.sim.cluster import SimulatedCluster
from sysaware.sim.load import ClosedLoopLoad, PoissonLoad
from sysaware.sim.workload import MbppRequestFactory

from twin_factories import FakeResponder

MODEL = "mistral-7b-instruct"
OTHER = "codellama-34b-instruct"


def seeded_lengths(low: int = 40, spread: int = 500) -> FakeResponder:
    """Answers of low .. low + spread - 1 tokens, a pure function of the request's seed."""
    return FakeResponder(lambda r: low + r.seed % spread)


@lru_cache(maxsize=1)
def twin_responder():
    from sysaware.engines.twin.responder.twin_responder import TwinResponder

    return TwinResponder(load_pool(DEFAULT_POOL))


def pool_with(model: str, twin: dict | None = None, **changes) -> PoolConfig:
    """The default pool with one model's deployment (and optionally its twin settings) changed."""
    pool = load_pool(DEFAULT_POOL)
    models = []
    for m in pool.models:
        if m.name == model:
            update = dict(changes)
            if twin:
                update["twin"] = m.twin.model_copy(update=twin)
            m = m.model_copy(update=update)
        models.append(m)
    return pool.model_copy(update={"models": models})


def submit_probes(cluster: SimulatedCluster, model: str, n: int, start_s: float, gap_s: float) -> list[GenerationResult]:
    """``n`` probe requests at fixed times (not aligned with any step); their results, as they complete."""
    factory = MbppRequestFactory.for_split("train", prefix="probe")
    rng = random.Random(7)
    results: list[GenerationResult] = []
    for i in range(n):
        cluster.submit(factory(model, rng), at=start_s + gap_s * i, on_complete=results.append)
    return results


def sample_telemetry(cluster: SimulatedCluster, period_s: float, stop_s: float) -> list:
    """Every replica's stats every ``period_s``, as the telemetry actor would sample them."""
    samples: list = []

    def sample(t: float) -> None:
        samples.extend(cluster.stats())
        if t + period_s < stop_s:
            cluster.call_at(t + period_s, sample)

    cluster.call_at(0.0, sample)
    return samples


# ---- load shows in latency --------------------------------------------------------------------------------------


def test_ttft_rises_with_background_concurrency():
    p50_ms = {}
    for n in (1, 10, 50):
        cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=seeded_lengths())
        ClosedLoopLoad(cluster, MODEL, n, MbppRequestFactory.for_split("train", prefix="bg"), seed=1).start()
        probes = submit_probes(cluster, MODEL, 40, start_s=10.0, gap_s=0.253)
        cluster.run(until=30.0)
        assert len(probes) == 40
        p50_ms[n] = statistics.median(r.ttft_s for r in probes) * 1e3
    # More running sequences make every prefill step longer (their decodes ride along) and more prefills compete.
    assert p50_ms[1] < p50_ms[10] < p50_ms[50], f"TTFT p50 by concurrency (ms): {p50_ms}"


# ---- determinism --------------------------------------------------------------------------------------------------


def _mixed_load_results(seed: int, responder, fast_forward: bool = True, stop_s: float = 12.0):
    cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=responder, seed=seed,
                                         fast_forward=fast_forward)
    factory = MbppRequestFactory.for_split("train", prefix=f"s{seed}")
    ClosedLoopLoad(cluster, MODEL, 8, factory, seed=seed, stop_s=stop_s).start()
    PoissonLoad(cluster, MODEL, 4.0, factory, seed=seed, stop_s=stop_s).start()
    PoissonLoad(cluster, OTHER, 2.0, factory, seed=seed, stop_s=stop_s).start(at=0.5)
    telemetry = sample_telemetry(cluster, 0.1, stop_s)
    cluster.run()
    return cluster, telemetry


def test_same_seed_gives_identical_results_and_another_seed_differs():
    responder = twin_responder()
    first, _ = _mixed_load_results(seed=3, responder=responder)
    second, _ = _mixed_load_results(seed=3, responder=responder)
    assert len(first.results) > 50
    assert first.results == second.results  # every GenerationResult field, text and token times included
    other, _ = _mixed_load_results(seed=4, responder=responder)
    assert [r.text for r in other.results] != [r.text for r in first.results]
    assert [r.ttft_s for r in other.results] != [r.ttft_s for r in first.results]


def test_fast_forward_gives_the_results_and_telemetry_of_one_iteration_per_step():
    # Poisson arrivals land inside fast-forwarded runs, which are cut back to the next step boundary; every result,
    # TTFTs included, and every telemetry sample taken inside a run must equal one-iteration stepping's exactly.
    fast, fast_telemetry = _mixed_load_results(seed=5, responder=seeded_lengths())
    slow, slow_telemetry = _mixed_load_results(seed=5, responder=seeded_lengths(), fast_forward=False)
    assert fast.runs_truncated > 20  # arrivals did land inside runs
    assert fast.results == slow.results
    assert fast_telemetry == slow_telemetry
    assert 3 * fast.steps_executed < slow.steps_executed


def _heavy_load_results(fast_forward: bool, stop_s: float = 4.0):
    """N=150 closed-loop clients on every model of the default pool (the twin's heaviest uniform scenario), Poisson
    probes landing inside runs, telemetry every 0.25 s (as the simulated driver samples it)."""
    cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=seeded_lengths(), fast_forward=fast_forward)
    factory = MbppRequestFactory.for_split("train", prefix="bg150")
    for model in cluster.models:
        ClosedLoopLoad(cluster, model, 150, factory, seed=11, stop_s=stop_s).start()
    PoissonLoad(cluster, MODEL, 3.0, factory, seed=11, stop_s=stop_s).start(at=0.3)
    telemetry = sample_telemetry(cluster, 0.25, stop_s)
    cluster.run()
    return cluster, telemetry


def test_fast_forward_is_identical_at_150_clients_per_model():
    # At N=150 a run rarely lasts more than a few steps (150 members, one finishing every few steps) and probes cut
    # them: the fast path's bookkeeping is at its busiest. (The KV caches reach ~60% here, no preemption.)
    fast, fast_telemetry = _heavy_load_results(fast_forward=True)
    slow, slow_telemetry = _heavy_load_results(fast_forward=False)
    assert len(fast.results) > 600 and fast.runs_truncated > 0
    assert fast.results == slow.results
    assert fast_telemetry == slow_telemetry
    assert fast.steps_executed < slow.steps_executed


def test_a_probe_arriving_inside_a_run_gets_the_ttft_of_one_iteration_stepping():
    ttfts = {}
    for fast_forward in (True, False):
        cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=seeded_lengths(),
                                             fast_forward=fast_forward)
        ClosedLoopLoad(cluster, MODEL, 30, MbppRequestFactory.for_split("train", prefix="bg"), seed=2).start()
        cluster.run(until=7.3)
        truncated_before = cluster.runs_truncated
        probes = submit_probes(cluster, MODEL, 1, start_s=7.3001, gap_s=0.0)
        cluster.run(until=7.3001)
        if fast_forward:
            assert cluster.runs_truncated == truncated_before + 1  # the probe landed inside a run
        cluster.run(until=12.0)
        ttfts[fast_forward] = probes[0].ttft_s
    assert ttfts[True] == ttfts[False]


# ---- routing and KV pressure ----------------------------------------------------------------------------------


def test_least_loaded_router_spreads_load_over_two_replicas():
    cluster = SimulatedCluster.from_pool(pool_with(MODEL, replicas=2), responder=seeded_lengths(), seed=1)
    load = ClosedLoopLoad(cluster, MODEL, 20, MbppRequestFactory.for_split("train"), seed=3).start()
    peak_in_system = Counter()

    def sample(t: float) -> None:
        for s in cluster.stats(MODEL):
            peak_in_system[s.replica_id] = max(peak_in_system[s.replica_id],
                                              s.num_requests_running + s.num_requests_waiting)
        cluster.call_at(t + 0.05, sample)

    cluster.call_at(0.0, sample)
    cluster.run(until=30.0)
    served = Counter(r.replica_id for r in load.completed)
    assert set(served) == {f"{MODEL}/0", f"{MODEL}/1"}
    assert min(served.values()) > 0.4 * len(load.completed), served
    # Each new request goes to the replica with fewer in the system, so neither holds more than half plus one.
    assert max(peak_in_system.values()) <= 20 // 2 + 1, peak_in_system


def test_kv_saturating_load_preempts_and_every_request_completes():
    # Mistral-7B with gpu_memory_utilization 0.215: 79.6 GiB x 0.215 - 14 GiB weights - 2 GiB reserve leaves room
    # for ~830 blocks (~13k tokens), while 64 clients with answers of 300-899 tokens want far more.
    answer_tokens: dict[str, int] = {}
    responder = FakeResponder(lambda r: answer_tokens.setdefault(r.request_id, 300 + r.seed % 600))
    cluster = SimulatedCluster.from_pool(pool_with(MODEL, twin={"gpu_memory_utilization": 0.215}), responder=responder)
    core = cluster.by_model[MODEL][0].core
    assert core.kv_cache.num_blocks < 1000
    factory = MbppRequestFactory.for_split("train")
    load = ClosedLoopLoad(cluster, MODEL, 64, factory, seed=3, stop_s=20.0).start()
    cluster.run()  # until every request sent before stop_s is served
    stats = core.stats(cluster.now)
    assert stats.num_preemptions_total > 0
    assert len(load.completed) == len(answer_tokens) > 64  # every request sent came back
    for result in load.completed:
        assert result.finish_reason is FinishReason.STOP
        assert result.output_tokens == len(result.token_times_s) == answer_tokens[result.request_id]
        assert list(result.token_times_s) == sorted(result.token_times_s)
    assert sum(r.num_preemptions for r in load.completed) == stats.num_preemptions_total
    assert (stats.num_requests_running, stats.num_requests_waiting, stats.kv_cache_usage_perc) == (0, 0, 0.0)


# ---- cost follows events -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [10, 50])
def test_about_one_core_step_per_request(concurrency):
    # Closed loop: each finish brings an arrival at the same instant; its prefill step and the decode run behind it
    # are one step() call, so the calls stay close to the requests served.
    cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=seeded_lengths())
    loads = [ClosedLoopLoad(cluster, m, concurrency, MbppRequestFactory.for_split("train"), seed=1).start()
             for m in cluster.models]
    cluster.run(until=20.0)
    completed = sum(len(load.completed) for load in loads)
    assert completed > 100
    assert cluster.steps_executed < 1.3 * completed + 5 * len(cluster.models)


def test_a_deep_copy_of_a_running_cluster_continues_exactly_like_the_original():
    # The oracle forks the simulated cluster mid-run; the fork's future must be the original's.
    import copy

    cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=seeded_lengths())
    factory = MbppRequestFactory.for_split("train")
    ClosedLoopLoad(cluster, MODEL, 20, factory, seed=1).start()
    PoissonLoad(cluster, MODEL, 5.0, factory, seed=1).start()
    cluster.run(until=5.0)
    fork = copy.deepcopy(cluster)
    for c in (cluster, fork):
        c.results.clear()
        c.run(until=10.0)
    assert len(cluster.results) > 50
    assert fork.results == cluster.results


@pytest.mark.parametrize("fast_forward", [True, False])
def test_first_token_callbacks_fire_at_their_own_time(fast_forward):
    # A prefill step and the decode run behind it are one step() call; the first token inside it must still reach
    # its callback when the virtual clock reads its time, before the request completes.
    cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=seeded_lengths(), fast_forward=fast_forward)
    ClosedLoopLoad(cluster, MODEL, 10, MbppRequestFactory.for_split("train", prefix="bg"), seed=2).start()
    factory = MbppRequestFactory.for_split("train", prefix="probe")
    rng = random.Random(1)
    first_tokens: dict[str, tuple[float, float]] = {}
    completed: dict[str, GenerationResult] = {}
    for i in range(20):
        cluster.submit(
            factory(MODEL, rng),
            at=1.0 + 0.31 * i,
            on_first_token=lambda rid, t: first_tokens.setdefault(rid, (t, cluster.now)),
            on_complete=lambda r: completed.setdefault(r.request_id, r) and None,
        )
    cluster.run(until=20.0)
    assert len(completed) == 20 and first_tokens.keys() == completed.keys()
    for rid, (t, clock) in first_tokens.items():
        assert t == clock == completed[rid].first_token_s < completed[rid].finished_s


def test_a_submission_decided_during_a_pause_keeps_its_place_in_the_event_order():
    # Follow-up requests sent from inside completion callbacks, against the same follow-ups decided outside the
    # simulation: each callback reserves a place and pauses, and the request is submitted once run() returned. The
    # clock must stand still across the pause and the two clusters' futures must be identical. A rival request sent
    # at the same instant after the follow-up would take the emptier of the two replicas if it overtook it.
    def simulate(defer: bool) -> tuple[list[GenerationResult], int]:
        factory = MbppRequestFactory.for_split("train", prefix="chain")
        rival = MbppRequestFactory.for_split("train", prefix="rival")
        cluster = SimulatedCluster.from_pool(pool_with(MODEL, replicas=2), responder=seeded_lengths(), seed=1)
        ClosedLoopLoad(cluster, MODEL, 8, MbppRequestFactory.for_split("train", prefix="bg"), seed=3).start()
        rng, rival_rng = random.Random(5), random.Random(6)
        chain: list[GenerationResult] = []
        waiting: list[tuple[float, int]] = []

        def on_complete(result: GenerationResult) -> None:
            chain.append(result)
            if len(chain) >= 12:
                return
            if defer:
                waiting.append((cluster.now, cluster.reserve_order()))
                cluster.pause()
            else:
                cluster.submit(factory(MODEL, rng), on_complete=on_complete)
            # A request scheduled at the same instant after the follow-up: it must stay behind it.
            cluster.submit(rival(MODEL, rival_rng), on_complete=chain.append)

        for _ in range(3):
            cluster.submit(factory(MODEL, rng), at=0.5, on_complete=on_complete)
        pauses = 0
        while cluster.now < 60.0 and not cluster.idle():
            paused = cluster.run(until=cluster.now + 5.0)
            if paused:
                pauses += 1
                assert waiting and waiting[-1][0] == cluster.now  # stopped right at the event that asked
            for t, order in waiting:
                assert t == cluster.now
                cluster.submit(factory(MODEL, rng), on_complete=on_complete, order=order)
            waiting.clear()
        return chain, pauses

    direct, _ = simulate(defer=False)
    deferred, pauses = simulate(defer=True)
    assert len(direct) >= 12 and pauses >= 3
    assert deferred == direct
