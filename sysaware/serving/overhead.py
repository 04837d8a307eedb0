"""Where a streamed request's time to first token goes besides the engine: the serving overhead, per hop.

A client's TTFT is the engine's TTFT plus every hop on the way in and out. Each hop stamps the wall clock
(``time.time()``; every process of a node reads the same clock) on the stream's first chunk
(``StreamChunk.stamps_s``), and the ingress adds its own; once the request finishes, its engine TTFT (engine
seconds, divided by the twin's ``time_scale``) is known and the hops are, in wall seconds:

    proxy_request     the client sent it -> the ingress's ASGI app entered: the client's send, Serve's HTTP proxy and
                      its hop to the ingress replica. Only for a client that sends its wall clock in the
                      ``x-sysaware-sent-at`` header (``CLIENT_SENT_HEADER``) and shares the server's clock (same
                      machine); values outside ``CLIENT_CLOCK_WINDOW_S`` are dropped as clocks that are not shared
    ingress_body      ASGI app entered -> the route's code runs: the API-key guard, the body (Serve's replica
                      fetches it from the proxy with a call back to it), parsing and validation
    ingress_request   route entered -> replica call made (the model's lookup, prompt counting)
    handle            replica call made -> the replica's generator started (Serve's router, the actor call)
    engine_loop       replica started -> first token handed out, less the engine's own TTFT (driver wake-ups,
                      the responder's CPU time, the event loop's latency)
    stream_back       first token handed out -> the ingress holds the first chunk (replica yield, the stream hop)
    ingress_response  first chunk held -> its SSE event handed to Serve's proxy
    total             ASGI app entered -> first event handed out, less the engine TTFT: the sum of the server's hops
                      (``proxy_request`` not included, so ``total`` means the same whatever the client sends)

What no server stamp can see, the first event's way back (Serve's proxy streaming it out, the client reading it),
is the client's TTFT minus ``proxy_request``, ``total`` and the engine's TTFT
(``benchmarks/bench_serving_overhead.py``). An engine that does not stamp (vLLM, remote) gets the hops it can:
those around the engine (the engine hop and stream_back are then missing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

HOPS = ("proxy_request", "ingress_body", "ingress_request", "handle", "engine_loop", "stream_back", "ingress_response", "total")
SERVER_HOPS = HOPS[1:]  # the hops every streamed request gets, whatever its client sends

# The benchmark client's wall clock when it sent the request (seconds since the epoch, a decimal number).
CLIENT_SENT_HEADER = "x-sysaware-sent-at"
# proxy_request values outside this window (s) come from a clock that is not the server's: not recorded.
CLIENT_CLOCK_WINDOW_S = (-1.0, 60.0)


def client_sent_s(raw: str | None) -> float | None:
    """The ``x-sysaware-sent-at`` header's wall seconds, None without the header; ValueError if it is not a
    finite positive number of seconds."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{CLIENT_SENT_HEADER} must be the client's wall clock in seconds since the epoch "
                         f"(time.time()), got {raw[:40]!r}")  # fmt: skip
    return value


def hop_durations(
    stamps: Iterable[tuple[str, float]], engine_ttft_s: float | None, time_scale: float = 1.0
) -> dict[str, float]:
    """Each hop's wall seconds, from the stamps of every hop (``client_sent``, ``ingress_in``, ``route_in``,
    ``dispatch``, ``replica_in``, ``engine_admit``, ``engine_first_token``, ``replica_out``, ``ingress_first``,
    ``ingress_sent``) and the engine's TTFT in engine seconds. A hop whose stamps are missing is left out; negative values (clock
    noise across processes) are kept, so means stay unbiased."""
    t: Mapping[str, float] = dict(stamps)
    engine_wall_s = (engine_ttft_s or 0.0) / time_scale
    hops: dict[str, float] = {}

    def span(name: str, start: str, end: str, less: float = 0.0) -> None:
        if start in t and end in t:
            hops[name] = t[end] - t[start] - less

    span("proxy_request", "client_sent", "ingress_in")
    if "proxy_request" in hops and not CLIENT_CLOCK_WINDOW_S[0] <= hops["proxy_request"] <= CLIENT_CLOCK_WINDOW_S[1]:
        del hops["proxy_request"]
    if "route_in" in t:
        span("ingress_body", "ingress_in", "route_in")
        span("ingress_request", "route_in", "dispatch")
    else:
        span("ingress_request", "ingress_in", "dispatch")
    span("handle", "dispatch", "replica_in")
    if "engine_first_token" in t:
        span("engine_loop", "replica_in", "engine_first_token", engine_wall_s)
        span("stream_back", "engine_first_token", "ingress_first")
    span("ingress_response", "ingress_first", "ingress_sent")
    if engine_ttft_s is not None:
        span("total", "ingress_in", "ingress_sent", engine_wall_s)
    return hops
