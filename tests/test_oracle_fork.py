"""The oracle's fork forecaster (sim/forecast.py) after making forks cheap: a fork copies only what a simulation
changes (requests' token spans and batch, the scheduler, the loads' generators) and shares the rest (prompts,
answers, the request factory's memo of prompts), and stops at the probe's last token. Its forecast must still be
exactly what sending the request then does, and forking must leave the real cluster's future untouched, to the bit.

A fake responder (lengths from the request's seed) keeps these fast; a closed-loop and an open-loop load run on every
model, since an open-loop load's in-flight requests once carried the real load's ``completed.append`` into forks.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

from sysaware.engines.twin.perf.request import TwinRequest
from sysaware.engines.types import GenerationRequest
from sysaware.sim.backend import SimBackend
from sysaware.sim.cluster import SimulatedCluster, Submission
from sysaware.sim.forecast import ForkForecaster
from sysaware.sim.load import ClosedLoopLoad, PhasedPoissonLoad
from sysaware.sim.workload import MbppRequestFactory

from twin_factories import FakeResponder, default_pool

MODEL = "mistral-7b-instruct"


def seeded_lengths() -> FakeResponder:
    return FakeResponder(lambda r: 40 + r.seed % 400)


def loaded(until: float = 4.0) -> SimpleNamespace:
    """A driver as the forecaster sees one (backend, cluster, loads): every model under closed- and open-loop
    background, run ``until`` virtual s. Built the same way every time, so two of them are the same simulation."""
    responder = seeded_lengths()
    backend = SimBackend(default_pool(), responder)
    cluster = backend.cluster(seed=3)
    factory = MbppRequestFactory.for_split("train", prefix="bg")
    loads, open_loads = {}, {}
    for m in cluster.models:
        loads[m] = ClosedLoopLoad(cluster, m, 12, factory, seed=3).start()
        open_loads[m] = PhasedPoissonLoad(cluster, m, ((6.0, 2.0), (1.0, 2.0)), factory, seed=3).start()
    cluster.run(until=until)
    return SimpleNamespace(backend=backend, cluster=cluster, loads=loads, open_loads=open_loads)


def probe(model: str, seed: int, rid: str = "probe") -> GenerationRequest:
    factory = MbppRequestFactory.for_split("train", prefix="p")
    import random

    request = factory(model, random.Random(seed))
    return GenerationRequest(rid, model, request.messages, max_tokens=1024, seed=seed)


def sent_now(driver: SimpleNamespace, request: GenerationRequest) -> float:
    """The request's latency when really sent now on ``driver``'s (un-forked) cluster."""
    done: list = []
    driver.cluster.submit(request, on_complete=done.append)
    while not done:
        driver.cluster.run(until=driver.cluster.now + 1.0)
    return done[0].token_times_s[-1] - done[0].arrival_s


def future(driver: SimpleNamespace, until: float) -> tuple:
    """Everything observable of the real cluster from now to ``until``: finished results (background's included,
    texts and token times), replica stats at the end, and the loads' lists of completions."""
    cluster = driver.cluster
    cluster.keep_results = True
    cluster.results.clear()
    cluster.run(until=until)
    loads = [*driver.loads.values(), *driver.open_loads.values()]
    return (cluster.results, cluster.stats(), [load.completed for load in loads], cluster.steps_executed)


def test_a_forecast_is_exactly_what_sending_that_request_then_does():
    for model, seed in ((MODEL, 1), ("codellama-34b-instruct", 2), (MODEL, 7)):
        driver = loaded()
        [forecast] = ForkForecaster(driver).forecast([probe(model, seed)])
        assert forecast == sent_now(loaded(), probe(model, seed))  # to the bit, on a twin never forked


def test_the_shorter_candidates_are_read_off_the_longest_ones_run():
    driver = loaded()
    requests = [probe(MODEL, s, rid=f"c{s}") for s in (1, 2, 3)]
    forecasts = ForkForecaster(driver).forecast(requests)
    lengths = [seeded_lengths().respond(r).output_tokens for r in requests]
    longest = max(range(3), key=lengths.__getitem__)
    assert forecasts[longest] == sent_now(loaded(), requests[longest])
    assert all(f < forecasts[longest] for i, f in enumerate(forecasts) if lengths[i] < lengths[longest])


def test_forking_leaves_the_real_cluster_bit_identical():
    forked, untouched = loaded(), loaded()
    forecaster = ForkForecaster(forked)
    for model in forked.cluster.models:
        forecaster.forecast([probe(model, 11), probe(model, 12, rid="other")])
    forecaster.fork()  # the whole-cluster fork too
    assert forecaster.forks == len(forked.cluster.models)
    assert forked.cluster.now == untouched.cluster.now
    assert future(forked, 9.0) == future(untouched, 9.0)


def test_a_fork_stops_at_the_probes_last_token():
    driver = loaded()
    forecaster = ForkForecaster(driver)
    forks: list[SimulatedCluster] = []
    fork_model = forecaster.fork_model
    forecaster.fork_model = lambda model: forks.append(fork_model(model)) or forks[-1]
    [latency] = forecaster.forecast([probe(MODEL, 5)])
    assert forks[0].now == driver.cluster.now + latency  # not at the end of a chunk of virtual time after it


def test_a_copied_request_shares_the_prompt_and_answer_and_owns_its_progress():
    driver = loaded()
    core = driver.cluster.by_model[MODEL][0].core
    memo: dict = {}
    original: TwinRequest = next(r for r in core.requests.values() if r.token_spans)
    copied = copy.deepcopy(original, memo)
    assert copied is not original and copied.response_text is original.response_text
    assert all(getattr(copied, s) == getattr(original, s) for s in TwinRequest.__slots__ if s != "batch")
    assert (copied.batch is None) == (original.batch is None)
    copied.token_spans.append(10**9)
    assert original.token_spans[-1] != 10**9
    sub = next(iter(driver.cluster.by_model[MODEL][0].submissions.values()))
    assert isinstance(sub, Submission)
    sub_copy = copy.deepcopy(sub, memo)
    assert sub_copy.request is sub.request  # frozen, shared
    assert sub_copy.on_complete.__self__ is not sub.on_complete.__self__  # the load answers to the fork
