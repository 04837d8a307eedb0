"""Where an idle streamed request's time goes between the client and the engine, per hop, for Serve transports.

Real stack: ``sysaware serve``'s application (build_app) on a local Ray Serve, the first model of
configs/pool_twin.yaml, one replica, the twin in real time. One request at a time (idle), streamed text
completions of a fixed length (ignore_eos), over raw httpx so the client adds as little as it can. The client and
the server share one machine, so one wall clock (``time.time()``):

    client TTFT     request sent -> first SSE event with text read, wall ms
    engine TTFT     the engine's own (the ``sysaware`` field of the last event), engine ms (= wall ms at scale 1)
    gap             client TTFT - engine TTFT: the whole serving path, cut into
      proxy_request   client send -> the ingress's ASGI entry (the client sends its clock in ``x-sysaware-sent-at``)
      ingress_body .. ingress_response, total: the server's own ``sysaware:serving_overhead_seconds`` hops
      response_path   the rest: the first event from the ingress through Serve's proxy to the client (gap -
                      proxy_request - total)

Each request's hops are read off ``/metrics`` right after it (the histograms' sum deltas: one request each), so every
hop has a median with a 95% bootstrap CI. Each variant runs on a fresh local Ray whose processes inherit its
environment (Serve reads these settings when its proxy and replicas start), in ONE run:

    defaults     Ray Serve 2.60's defaults (the proxy and the handles call replicas as Ray actor tasks)
    direct       Serve's direct ingress (``replica.DIRECT_INGRESS_ENV``): the ingress replica serves HTTP itself, on
                 port+10. Serve's proxy still runs, so requests alternate between the two ways in (``direct/proxy``,
                 ``direct/direct``): the same cluster under the same load, a paired comparison
    grpc         ``replica.GRPC_ENV``: the proxy and the deployment handles reach replicas over Serve's gRPC
                 transport (by value) instead of actor tasks
    grpc_same_loop  that, and user code and routers on Serve's own loop (``replica.SAME_LOOP_ENV``)
    direct_grpc  direct ingress, and the handles over gRPC

    flock /tmp/sysaware-ray.lock python benchmarks/bench_serving_overhead.py [requests=60] [port=18310]
        [variants=defaults,direct,grpc,grpc_same_loop,direct_grpc]

Variants run one after the other, so a host whose load changes meanwhile moves them all (a shared 2-core host
did: the handle hop, which no variant but grpc touches, doubled between the first and the last); the paired
direct-vs-proxy line is the comparison to trust. The last line: the median gap of each variant over the first's.
"""

from __future__ import annotations

import json
import os
import sys
import time

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.serving.app import build_app, deploy, direct_ingress_url, select_models
from sysaware.serving.overhead import CLIENT_SENT_HEADER, HOPS
from sysaware.serving.replica import DIRECT_INGRESS_ENV, GRPC_ENV, SAME_LOOP_ENV, direct_ingress_env

APP = "bench-overhead"
PROMPT = "Write a Python function that returns the n-th Fibonacci number."
OUTPUT_TOKENS = 16
VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "direct": dict(DIRECT_INGRESS_ENV),
    "grpc": dict(GRPC_ENV),
    "grpc_same_loop": {**GRPC_ENV, **SAME_LOOP_ENV},
    "direct_grpc": {**DIRECT_INGRESS_ENV, **GRPC_ENV},
}
ROWS = (*HOPS[:-1], "response_path", "total", "gap")


def bootstrap_median_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(n, len(values)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def one_request(client: httpx.Client, url: str, model: str) -> tuple[float, float]:
    """(client TTFT, engine TTFT), ms, of one streamed completion; the client's send time goes in the header."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "stream": True}
    client_ttft = engine_ttft = None
    sent = time.time()
    headers = {CLIENT_SENT_HEADER: repr(sent)}
    with client.stream("POST", f"{url}/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            choice = event["choices"][0] if event.get("choices") else {}
            if client_ttft is None and choice.get("text"):
                client_ttft = (time.time() - sent) * 1e3
            if choice.get("sysaware"):
                engine_ttft = choice["sysaware"]["ttft_s"] * 1e3
    assert client_ttft is not None and engine_ttft is not None
    return client_ttft, engine_ttft


def hop_sums(client: httpx.Client, root: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum s, count) of the overhead histogram per hop."""
    out: dict[str, list[float]] = {hop: [0.0, 0.0] for hop in HOPS}
    for family in text_string_to_metric_families(client.get(f"{root}/metrics").text):
        for s in family.samples:
            if s.name.startswith("sysaware:serving_overhead_seconds") and s.labels.get("model_name") == model:
                if s.name.endswith("_sum"):
                    out[s.labels["hop"]][0] += s.value
                elif s.name.endswith("_count"):
                    out[s.labels["hop"]][1] += s.value
    return {hop: (v[0], v[1]) for hop, v in out.items()}


def measure(env: dict[str, str], requests: int, port: int) -> dict[str, dict[str, np.ndarray]]:
    """Per way in (``proxy``: Serve's HTTP proxy; with direct ingress also ``direct``: the ingress replica's own
    server, alternating request by request so both see the same load), per request, ms: every hop, the response
    path, the gap, client and engine TTFT; on a fresh Ray with ``env``."""
    import ray
    from ray import serve

    direct = env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"
    if direct:
        env = {**env, **direct_ingress_env(port + 10)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the local cluster's processes (raylet, workers) inherit the driver's environment
    try:
        ray.init(logging_level="warning", include_dashboard=False)
        pool = select_models(load_pool(DEFAULT_POOL), [load_pool(DEFAULT_POOL).models[0].name], replicas=1)
        model = pool.models[0].name
        urls = {"proxy": deploy(build_app(pool, 1.0), port=port, name=APP)}
        if direct:
            urls["direct"] = direct_ingress_url("127.0.0.1", port + 10)
        root = urls["proxy"].removesuffix("/v1")
        rows = {way: {k: [] for k in (*ROWS, "client", "engine")} for way in urls}
        with httpx.Client(timeout=60.0) as client:
            for url in urls.values():
                for _ in range(5):  # warm-up: first calls build routers, connections, the responder's memos
                    one_request(client, url, model)
            time.sleep(0.5)
            before = hop_sums(client, root, model)
            for i in range(requests * len(urls)):
                way = list(urls)[i % len(urls)]
                client_ttft, engine_ttft = one_request(client, urls[way], model)
                after = hop_sums(client, root, model)
                hops = {h: 1e3 * (after[h][0] - before[h][0]) for h in HOPS if after[h][1] - before[h][1] == 1}
                before = after
                if len(hops) != len(HOPS):
                    continue  # a hop missing (should not happen): skip the request rather than mix
                out = rows[way]
                for hop, ms in hops.items():
                    out[hop].append(ms)
                gap = client_ttft - engine_ttft
                out["gap"].append(gap)
                out["response_path"].append(gap - hops["proxy_request"] - hops["total"])
                out["client"].append(client_ttft)
                out["engine"].append(engine_ttft)
                time.sleep(0.05)  # idle between requests
        serve.shutdown()
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {way: {k: np.array(v) for k, v in r.items()} for way, r in rows.items()}


def report(name: str, env: dict[str, str], m: dict[str, np.ndarray]) -> None:
    print(f"\n{name} {env or '(Ray Serve defaults)'}: {len(m['gap'])} idle requests")
    print(f"  client TTFT median {np.median(m['client']):6.2f} ms   engine TTFT median {np.median(m['engine']):6.2f} ms")
    print(f"  {'hop':<17} {'median ms':>9}  95% CI            mean ms")
    for row in ROWS:
        lo, hi = bootstrap_median_ci(m[row])
        print(f"  {row:<17} {np.median(m[row]):9.2f}  [{lo:6.2f}, {hi:6.2f}]  {m[row].mean():7.2f}")


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 18310
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VARIANTS)
    results = {}
    for name in names:
        for way, rows in measure(VARIANTS[name], requests, port).items():
            results[f"{name}/{way}"] = (VARIANTS[name], rows)
    for label, (env, rows) in results.items():
        report(label, env, rows)
    labels = list(results)
    first = np.median(results[labels[0]][1]["gap"])
    ratios = ", ".join(f"{label} {np.median(results[label][1]['gap']) / first:.3f} "
                       f"({np.median(results[label][1]['gap']):.2f} ms)" for label in labels[1:])  # fmt: skip
    print(f"\nmedian gap over {labels[0]} ({first:.2f} ms): {ratios}")
    for name in names:
        if f"{name}/direct" in results:  # the paired cut: same cluster, same load, alternate requests
            a, b = results[f"{name}/proxy"][1]["gap"], results[f"{name}/direct"][1]["gap"]
            n = min(len(a), len(b))
            saved = a[:n] - b[:n]
            lo, hi = bootstrap_median_ci(saved)
            print(f"{name}: direct ingress saves, per pair of alternate requests, median {np.median(saved):.2f} ms "
                  f"[{lo:.2f}, {hi:.2f}] of the gap ({np.median(a):.2f} -> {np.median(b):.2f} ms)")


if __name__ == "__main__":
    main()
