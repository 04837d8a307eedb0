"""Background answers kept in a file (sim/answer_stream.py): a simulation that reads them gives the results of one
that composes every answer, text and token times included, without asking the responder."""

from __future__ import annotations

import copy
import pickle
import random

import pytest

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.twin.responder.twin_responder import TwinResponder
from sysaware.sim import answer_stream
from sysaware.sim.cluster import SimulatedCluster
from sysaware.sim.load import ClosedLoopLoad, PoissonLoad
from sysaware.sim.workload import MbppRequestFactory

from twin_factories import FakeResponder


class CountingResponder(TwinResponder):
    calls = 0

    def respond(self, request):
        self.calls += 1
        return super().respond(request)


@pytest.fixture
def streams(tmp_path, monkeypatch):
    """A fresh stream folder, and no stream objects left over from other tests in this process."""
    monkeypatch.setenv("SYSAWARE_ANSWER_STREAMS_DIR", str(tmp_path))
    monkeypatch.setattr(answer_stream, "_open_streams", {})
    return tmp_path


PROBES = 8


def simulate(responder, until: float = 12.0, concurrency: int = 6):
    cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=responder)
    factory = MbppRequestFactory.for_split("train")
    loads = [ClosedLoopLoad(cluster, m, concurrency, factory, seed=1).start() for m in cluster.models]
    loads.append(PoissonLoad(cluster, cluster.models[0], 3.0, factory, seed=1).start())
    probes = MbppRequestFactory.for_split("train", prefix="probe")
    rng = random.Random(5)
    for i in range(PROBES):  # requests sent without a known answer: the responder composes them
        cluster.submit(probes(cluster.models[i % 2], rng), at=0.7 * i + 0.05)
    cluster.run(until=until)
    return cluster.results, loads


def test_answers_from_the_file_give_the_results_of_composed_ones(streams, monkeypatch):
    pool = load_pool(DEFAULT_POOL)
    monkeypatch.setenv("SYSAWARE_ANSWER_STREAMS", "0")
    composed, loads = simulate(TwinResponder(pool))
    assert all(load._stream is None for load in loads)
    monkeypatch.delenv("SYSAWARE_ANSWER_STREAMS")

    building, _ = simulate(TwinResponder(pool))  # answers composed, then kept
    answer_stream.save_all()
    assert len(list(streams.glob("*.pkl"))) == len(pool.models) + 1  # the closed loops and the Poisson client
    monkeypatch.setattr(answer_stream, "_open_streams", {})  # a new process: only the files remain
    reader = CountingResponder(pool)
    read, loads = simulate(reader)
    assert len(composed) > 200
    assert building == composed and read == composed  # every field: text, token counts, times
    assert sum(len(load._stream) for load in loads) > 150
    assert reader.calls == PROBES  # the loads' answers all came from the files


def test_a_file_that_disagrees_with_the_requests_is_dropped_from_there(streams):
    pool = load_pool(DEFAULT_POOL)
    expected, _ = simulate(TwinResponder(pool), until=6.0)
    answer_stream.save_all()
    for path in streams.glob("*.pkl"):  # another sequence from the 4th answer on
        data = pickle.loads(path.read_bytes())
        data["seeds"][3:] += 1
        path.write_bytes(pickle.dumps(data))
    answer_stream._open_streams.clear()
    got, loads = simulate(TwinResponder(pool), until=6.0)
    assert got == expected
    answer_stream.save_all()  # the corrected sequence replaces the file's
    answer_stream._open_streams.clear()
    stream = answer_stream.stream_for(loads[0].cluster.responder, loads[0].model, loads[0].factory,
                                      f"closed/{loads[0].model}/1")
    assert stream._seeds == loads[0]._stream._seeds


def test_no_stream_without_keys_and_forks_share_one(streams):
    fake = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=FakeResponder(lambda r: 10))
    load = ClosedLoopLoad(fake, fake.models[0], 2, MbppRequestFactory.for_split("train")).start()
    assert load._stream is None  # a responder that cannot key its answers composes them

    cluster = SimulatedCluster.from_pool(load_pool(DEFAULT_POOL), responder=TwinResponder(load_pool(DEFAULT_POOL)))
    load = ClosedLoopLoad(cluster, cluster.models[0], 4, MbppRequestFactory.for_split("train")).start()
    cluster.run(until=3.0)
    fork = copy.deepcopy(cluster)
    assert fork.by_model  # the cluster was copied, the stream was not
    forked_loads = [v for v in vars(fork).values() if isinstance(v, ClosedLoopLoad)]
    assert copy.deepcopy(load)._stream is load._stream and not forked_loads
