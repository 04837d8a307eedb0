"""Where an idle streamed request's time goes between the client and the engine, before and after the same-loop cut.

Real stack: ``sysaware serve``'s application (build_app) on a local Ray Serve, the first model of
configs/pool_twin.yaml, one replica, the twin in real time. One request at a time (idle), streamed text
completions of a fixed length (ignore_eos), over raw httpx so the client adds as little as it can:

    client TTFT     request sent -> first SSE event with text, wall ms
    engine TTFT     the engine's own (the ``sysaware`` field of the last event), engine ms (= wall ms at scale 1)
    gap             client TTFT - engine TTFT: the whole serving path
    per hop         the server's own ``sysaware:serving_overhead_seconds`` histograms (mean per hop over the run;
                    the rest of the gap, ``unstamped``, is the client, Serve's proxy and its hop to the ingress)

twice in ONE run: with Ray Serve's defaults (user code on its own thread, routers on their own loop), then with
``replica.SAME_LOOP_ENV`` (opt-in: `same_loop=true`), redeploying in between. Medians come with a 95% bootstrap CI.

    flock /tmp/sysaware-ray.lock python benchmarks/bench_serving_overhead.py [requests=60] [port=18310]

The last line: the median gap after / before.
"""

from __future__ import annotations

import json
import sys
import time

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.serving.app import build_app, deploy, select_models
from sysaware.serving.overhead import HOPS

APP = "bench-overhead"
PROMPT = "Write a Python function that returns the n-th Fibonacci number."
OUTPUT_TOKENS = 16


def bootstrap_median_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(n, len(values)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def one_request(client: httpx.Client, url: str, model: str) -> tuple[float, float]:
    """(client TTFT, engine TTFT), ms, of one streamed completion."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    client_ttft = engine_ttft = None
    with client.stream("POST", f"{url}/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            choice = event["choices"][0] if event.get("choices") else {}
            if client_ttft is None and choice.get("text"):
                client_ttft = (time.perf_counter() - t0) * 1e3
            if choice.get("sysaware"):
                engine_ttft = choice["sysaware"]["ttft_s"] * 1e3
    assert client_ttft is not None and engine_ttft is not None
    return client_ttft, engine_ttft


def hop_sums(root: str, model: str) -> dict[str, tuple[float, float]]:
    """(sum s, count) of the overhead histogram per hop."""
    out: dict[str, list[float]] = {hop: [0.0, 0.0] for hop in HOPS}
    text = httpx.get(f"{root}/metrics", timeout=30.0).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("sysaware:serving_overhead_seconds") and s.labels.get("model_name") == model:
                if s.name.endswith("_sum"):
                    out[s.labels["hop"]][0] += s.value
                elif s.name.endswith("_count"):
                    out[s.labels["hop"]][1] += s.value
    return {hop: (v[0], v[1]) for hop, v in out.items()}


def measure(same_loop: bool, requests: int, port: int) -> dict:
    from ray import serve

    pool = select_models(load_pool(DEFAULT_POOL), [load_pool(DEFAULT_POOL).models[0].name], replicas=1)
    model = pool.models[0].name
    url = deploy(build_app(pool, 1.0, same_loop=same_loop), port=port, name=APP)
    root = url.removesuffix("/v1")
    with httpx.Client(timeout=60.0) as client:
        for _ in range(5):  # warm-up: first calls build routers, connections, the responder's memos
            one_request(client, url, model)
        time.sleep(0.5)
        before = hop_sums(root, model)
        pairs = []
        for _ in range(requests):
            pairs.append(one_request(client, url, model))
            time.sleep(0.05)  # idle between requests
        after = hop_sums(root, model)
    serve.delete(APP)
    client_ttft, engine_ttft = (np.array(v) for v in zip(*pairs))
    gap = client_ttft - engine_ttft
    hops_ms = {
        hop: 1e3 * (after[hop][0] - before[hop][0]) / max(after[hop][1] - before[hop][1], 1) for hop in HOPS
    }
    return {"client": client_ttft, "engine": engine_ttft, "gap": gap, "hops_ms": hops_ms}


def report(name: str, m: dict) -> None:
    lo, hi = bootstrap_median_ci(m["gap"])
    print(f"\n{name}: {len(m['gap'])} idle requests")
    print(f"  client TTFT median {np.median(m['client']):6.2f} ms   engine TTFT median {np.median(m['engine']):6.2f} ms")
    print(f"  gap (client - engine) median {np.median(m['gap']):6.2f} ms  95% CI [{lo:.2f}, {hi:.2f}]"
          f"  mean {m['gap'].mean():.2f}")  # fmt: skip
    hops = m["hops_ms"]
    for hop in HOPS:
        print(f"  {hop:<17} mean {hops[hop]:6.2f} ms")
    print(f"  {'unstamped':<17} mean {m['gap'].mean() - hops['total']:6.2f} ms  (client + proxy + proxy->ingress)")


def main() -> None:
    import ray

    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 18310
    ray.init(logging_level="warning", include_dashboard=False)
    try:
        before = measure(False, requests, port)
        after = measure(True, requests, port)
    finally:
        ray.shutdown()
    report("before: Ray Serve defaults (separate user-code thread and router loop)", before)
    report("after: SAME_LOOP_ENV", after)
    ratio = np.median(after["gap"]) / np.median(before["gap"])
    print(f"\nmedian gap after/before: {ratio:.3f} ({np.median(before['gap']):.2f} -> {np.median(after['gap']):.2f} ms)")


if __name__ == "__main__":
    main()
