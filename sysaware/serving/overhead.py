"""Where a streamed request's time to first token goes besides the engine: the serving overhead, per hop.

A client's TTFT is the engine's TTFT plus every hop on the way in and out. Each hop stamps the wall clock
(``time.time()``; every process of a node reads the same clock) on the stream's first chunk
(``StreamChunk.stamps_s``), and the ingress adds its own; once the request finishes, its engine TTFT (engine
seconds, divided by the twin's ``time_scale``) is known and the hops are, in wall seconds:

    ingress_request   route entered -> replica call made (validation, prompt counting)
    handle            replica call made -> the replica's generator started (Serve's router, the actor call)
    engine_loop       replica started -> first token handed out, less the engine's own TTFT (driver wake-ups,
                      the responder's CPU time, the event loop's latency)
    stream_back       first token handed out -> the ingress holds the first chunk (replica yield, the stream hop)
    ingress_response  first chunk held -> its SSE event handed to Serve's proxy
    total             route entered -> first event handed out, less the engine TTFT: the sum of the above

What no stamp sees (the client, Serve's HTTP proxy and its hop to the ingress) is the client's TTFT minus all of
this and the engine's TTFT (``benchmarks/bench_serving_overhead.py``). An engine that does not stamp (vLLM,
remote) gets the hops it can: those around the engine (the engine hop and stream_back are then missing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HOPS = ("ingress_request", "handle", "engine_loop", "stream_back", "ingress_response", "total")


def hop_durations(
    stamps: Iterable[tuple[str, float]], engine_ttft_s: float | None, time_scale: float = 1.0
) -> dict[str, float]:
    """Each hop's wall seconds, from the stamps of every hop (``ingress_in``, ``dispatch``, ``replica_in``,
    ``engine_admit``, ``engine_first_token``, ``replica_out``, ``ingress_first``, ``ingress_sent``) and the engine's
    TTFT in engine seconds. A hop whose stamps are missing is left out; negative values (clock noise across
    processes) are kept, so means stay unbiased."""
    t: Mapping[str, float] = dict(stamps)
    engine_wall_s = (engine_ttft_s or 0.0) / time_scale
    hops: dict[str, float] = {}

    def span(name: str, start: str, end: str, less: float = 0.0) -> None:
        if start in t and end in t:
            hops[name] = t[end] - t[start] - less

    span("ingress_request", "ingress_in", "dispatch")
    span("handle", "dispatch", "replica_in")
    if "engine_first_token" in t:
        span("engine_loop", "replica_in", "engine_first_token", engine_wall_s)
        span("stream_back", "engine_first_token", "ingress_first")
    span("ingress_response", "ingress_first", "ingress_sent")
    if engine_ttft_s is not None:
        span("total", "ingress_in", "ingress_sent", engine_wall_s)
    return hops
