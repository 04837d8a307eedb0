"""Background answers computed once per machine: what a closed-loop load's k-th request is answered, kept in a file.

A background load draws its requests from its own seeded generator (``ClosedLoopLoad``: ``closed/<model>/<seed>``),
one per completion, so its k-th request (prompt and seed) is the same in every simulation that runs that load,
whatever the timing, the concurrency or the other clients: every evaluation cell, every RL episode, every fork of
the oracle replays the same sequence. The twin's answer is a pure function of (model, prompt, seed), so the k-th
answer is fixed too. This module keeps the sequence of answers (text and token count) of each load in a file under
the user cache (``embeddings.cache_dir()/answer-streams``), built at first use: a process that finds the file
answers the load's requests by lookup instead of composing them (the responder's per-prompt work, cold or warm, is
about a third to two thirds of a simulation's cost), and a process that runs past its end answers the rest as
usual and writes the longer file when it exits.

Results are identical with or without the file: the same responder made every stored answer, the file is keyed by
``TwinResponder.answer_fingerprint`` (the code and data answers come from, the parameter table, the model's profile)
with the request factory's key and the load's, and every stored answer is checked against its request's seed before
use (a mismatch drops the file's rest).

    python -m sysaware.sim.answer_stream [--virtual-s 900] [--concurrency 50]   # build the default pool's streams
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from sysaware.engines.twin.protocols import Response
from sysaware.engines.types import GenerationRequest

FORMAT = 1
_open_streams: dict[Path, "AnswerStream"] = {}


def streams_dir() -> Path:
    """$SYSAWARE_ANSWER_STREAMS_DIR, else ``answer-streams`` under the user cache (``runs.cache_dir``)."""
    env = os.environ.get("SYSAWARE_ANSWER_STREAMS_DIR")
    if env:
        return Path(env)
    from sysaware.runs import cache_dir

    return cache_dir() / "answer-streams"


def enabled() -> bool:
    """SYSAWARE_ANSWER_STREAMS=0 turns the files off (answers are then composed at every request, as without)."""
    return os.environ.get("SYSAWARE_ANSWER_STREAMS", "1") != "0"


class AnswerStream:
    """The answers of one load's requests, by index: stored ones from the file, new ones recorded as they come."""

    def __init__(self, path: Path, responder, key: str) -> None:
        self.path = path
        self.key = key
        self.responder = responder
        self._seeds: list[int] = []  # the request's seed, checked before a stored answer is used
        self._tokens: list[int] = []
        self._text_ids: list[int] = []
        self._texts: list[str] = []
        self._text_index: dict[str, int] | None = None  # built on the first new answer
        self._responses: list[Response | None] = []  # one object per stored answer, made on first use
        self._stored = 0  # entries read from the file
        self._dirty = False
        self._replaced = False  # the file's sequence was wrong from some entry on: overwrite it whatever its length
        self._load()

    def __len__(self) -> int:
        return len(self._seeds)

    def __deepcopy__(self, memo: dict) -> "AnswerStream":
        return self  # append-only and addressed by index: a forked simulation shares it

    def __copy__(self) -> "AnswerStream":
        return self

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError):
            return
        if data.get("format") != FORMAT or data.get("key") != self.key:
            return
        self._seeds = data["seeds"].tolist()
        self._tokens = data["tokens"].tolist()
        self._text_ids = data["text_ids"].tolist()
        self._texts = data["texts"]
        self._responses = [None] * len(self._seeds)
        self._stored = len(self._seeds)

    def answer(self, index: int, request: GenerationRequest) -> Response:
        """The answer to the load's ``index``-th request (indices come in order: 0, 1, 2, ...)."""
        if index < len(self._seeds):
            if self._seeds[index] == request.seed:
                response = self._responses[index]
                if response is None:
                    response = self._responses[index] = Response(self._texts[self._text_ids[index]], self._tokens[index])
                return response
            self._truncate(index)  # not the sequence the file holds: forget its rest
        response = self.responder.respond(request)
        self._append(request.seed, response)
        return response

    def _truncate(self, index: int) -> None:
        del self._seeds[index:], self._tokens[index:], self._text_ids[index:], self._responses[index:]
        self._stored = min(self._stored, index)
        self._dirty = self._replaced = True

    def _append(self, seed: int, response: Response) -> None:
        if self._text_index is None:
            self._text_index = {t: i for i, t in enumerate(self._texts)}
        text_id = self._text_index.get(response.text)
        if text_id is None:
            text_id = self._text_index[response.text] = len(self._texts)
            self._texts.append(response.text)
        self._seeds.append(seed)
        self._tokens.append(response.output_tokens)
        self._text_ids.append(text_id)
        self._responses.append(response)
        self._dirty = True

    def save(self) -> None:
        """Write the stream if it grew (atomically; a longer file another process wrote meanwhile is kept)."""
        if not self._dirty:
            return
        self._dirty = False
        if not self._replaced:
            try:
                with open(self.path, "rb") as f:
                    if len(pickle.load(f).get("seeds", ())) >= len(self._seeds):
                        return
            except Exception:
                pass
        data = {
            "format": FORMAT,
            "key": self.key,
            "seeds": np.asarray(self._seeds, np.int64),
            "tokens": np.asarray(self._tokens, np.int64),
            "text_ids": np.asarray(self._text_ids, np.int64),
            "texts": self._texts,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache: a read-only home only costs the next process the composing


def stream_for(responder, model: str, factory, load_key: str) -> AnswerStream | None:
    """The stream of the load ``load_key`` (e.g. ``closed/<model>/<seed>``) drawing from ``factory``, or None when
    the answers cannot be keyed (a responder or factory without a stable key, or streams turned off). One object per
    file and process: loads of several clusters in one process (forks, repeated cells) share it."""
    if not enabled():
        return None
    fingerprint = getattr(responder, "answer_fingerprint", None)
    factory_key = getattr(factory, "stream_key", None)
    if fingerprint is None or factory_key is None:
        return None
    answers, requests = fingerprint(model), factory_key()
    if answers is None or requests is None:
        return None
    key = f"{answers}\n{requests}\n{load_key}\n{model}"
    path = streams_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pkl"
    stream = _open_streams.get(path)
    if stream is None:  # (a stream made with another responder object of the same fingerprint answers the same)
        stream = _open_streams[path] = AnswerStream(path, responder, key)
    return stream


@atexit.register
def save_all() -> None:
    """Write every stream that grew (at exit; callers may also call it, e.g. after building streams)."""
    for stream in list(_open_streams.values()):
        stream.save()


def main() -> None:
    import argparse

    from sysaware.config import DEFAULT_POOL, load_pool
    from sysaware.sim.cluster import SimulatedCluster
    from sysaware.sim.load import ClosedLoopLoad
    from sysaware.sim.workload import MbppRequestFactory

    p = argparse.ArgumentParser(description="Build the background answer streams of a pool (N closed-loop clients "
                                            "per model on the train tasks, seed 0) by simulating it.")
    p.add_argument("--virtual-s", type=float, default=900.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    pool = load_pool(DEFAULT_POOL)
    cluster = SimulatedCluster.from_pool(pool)
    cluster.keep_results = False
    factory = MbppRequestFactory.for_split("train")
    loads = [ClosedLoopLoad(cluster, m, args.concurrency, factory, seed=args.seed).start() for m in cluster.models]
    cluster.run(until=args.virtual_s)
    save_all()
    print(f"{sum(len(load._stream or ()) for load in loads)} answers in {streams_dir()}")


if __name__ == "__main__":
    main()
