"""guidellm (an independent load client, the ``[loadtest]`` extra) against ``sysaware serve``: both request formats.

Starts ``sysaware serve`` (the first model of the pool, one replica, real time) as a subprocess, then for each of
guidellm's request formats (``/v1/completions``, ``/v1/chat/completions``) runs guidellm as a subprocess from its
own venv (it pins older click/multidict than ours) with synthetic data, PROMPT_TOKENS in / OUTPUT_TOKENS out,
REQUESTS requests at CONCURRENCY streams. Beside guidellm's own TTFT and ITL it prints the server's ``/metrics``
histograms (``vllm:time_to_first_token_seconds``, ``vllm:inter_token_latency_seconds``,
``sysaware:serving_overhead_seconds``) over the same window (scraped before and after).

    flock /tmp/sysaware-ray.lock python benchmarks/guidellm_run.py [--guidellm .venv-guidellm/bin/guidellm]
        [--port 18320] [--requests 32] [--concurrency 4] [--out runs/guidellm] [--transport actor|grpc] [--direct-ingress]

What must hold (printed, and the exit status): 0 errors and every request's output exactly OUTPUT_TOKENS tokens.
guidellm's synthetic prompts are counted with the MiniLM tokenizer the twin uses (engines/tokens.py), offline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.engines.tokens import minilm_model_dir

PROMPT_TOKENS = 256
OUTPUT_TOKENS = 128
FORMATS = ("/v1/completions", "/v1/chat/completions")


def scenario(target: str, model: str, request_format: str, requests: int, concurrency: int, out: Path) -> dict:
    return {
        "metadata": {"name": f"sysaware-{request_format.strip('/').replace('/', '-')}"},
        "spec": {
            "backend": {"kind": "openai_http", "target": target, "model": model, "request_format": request_format},
            "tokenizer": {"kind": "huggingface_auto", "model": str(minilm_model_dir())},
            "profile": {"kind": "concurrent", "streams": [concurrency]},
            "data": [{"kind": "synthetic_text", "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS}],
            "constraints": [{"kind": "max_requests", "count": requests}],
            "outputs": [{"kind": "json", "path": str(out)}],
        },
    }


def histogram_window(before: str, after: str, model: str) -> dict[str, tuple[float, float]]:
    """(mean ms, count) per histogram (and per overhead hop) between two scrapes."""

    def sums(text: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("model_name") != model or not s.name.endswith(("_sum", "_count")):
                    continue
                base = s.name.rsplit("_", 1)[0] + (f"[{s.labels['hop']}]" if "hop" in s.labels else "")
                slot = out.setdefault(base, [0.0, 0.0])
                slot[0 if s.name.endswith("_sum") else 1] += s.value
        return out

    b, a = sums(before), sums(after)
    window = {}
    for name, (total, count) in a.items():
        total -= b.get(name, [0.0, 0.0])[0]
        count -= b.get(name, [0.0, 0.0])[1]
        if count > 0:
            window[name] = (1e3 * total / count, count)
    return window


def summarize(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    benchmark = report["benchmarks"][0]
    metrics = benchmark["metrics"]

    def dist(name: str) -> dict:
        d = metrics[name]["successful"]
        return {"median": d.get("median"), "mean": d.get("mean"), "count": d.get("count")}

    requests = benchmark.get("requests", {})
    successful = requests.get("successful", [])
    errored = requests.get("errored", [])
    incomplete = requests.get("incomplete", [])
    out_tokens = sorted({
        (r.get("output_metrics") or {}).get("text_tokens") or r.get("output_tokens") for r in successful
    }, key=lambda v: (v is None, v))  # fmt: skip
    totals = metrics.get("request_totals") or {}
    return {
        "successful": totals.get("successful", len(successful)),
        "errored": totals.get("errored", len(errored)),
        "incomplete": totals.get("incomplete", len(incomplete)),
        "output_tokens": out_tokens,
        "ttft_ms": dist("time_to_first_token_ms"),
        "itl_ms": dist("inter_token_latency_ms"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guidellm", default=".venv-guidellm/bin/guidellm")
    parser.add_argument("--port", type=int, default=18320)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/guidellm"))
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--transport", default="actor", choices=["actor", "grpc"], help="sysaware serve --transport")
    parser.add_argument("--direct-ingress", action="store_true", help="sysaware serve --direct-ingress")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_pool(DEFAULT_POOL).models[0].name
    root = f"http://127.0.0.1:{args.port}"
    serve = subprocess.Popen(
        [sys.executable, "-m", "sysaware.cli", "serve", "--port", str(args.port), "--models", model,
         "--time-scale", str(args.time_scale), "--transport", args.transport,
         "--direct-ingress" if args.direct_ingress else "--proxy"],
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    failed = False
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or serve.poll() is not None:
                raise SystemExit("sysaware serve did not come up")
            time.sleep(1.0)
        for request_format in FORMATS:
            name = request_format.strip("/").replace("/", "-")
            report = args.out / f"{name}.json"
            spec = args.out / f"{name}-scenario.json"
            spec.write_text(json.dumps(scenario(root, model, request_format, args.requests, args.concurrency, report)))
            before = httpx.get(f"{root}/metrics", timeout=30).text
            t0 = time.monotonic()
            run = subprocess.run(
                [args.guidellm, "run", "--scenario", str(spec), "--disable-console-interactive"],
                env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                capture_output=True, text=True,
            )  # fmt: skip
            wall = time.monotonic() - t0
            after = httpx.get(f"{root}/metrics", timeout=30).text
            (args.out / f"{name}.log").write_text(run.stdout + run.stderr)
            if run.returncode != 0 or not report.exists():
                print(f"{request_format}: guidellm failed (rc {run.returncode}); see {args.out / (name + '.log')}")
                print((run.stdout + run.stderr)[-3000:])
                failed = True
                continue
            server = histogram_window(before, after, model)
            (args.out / f"{name}-server.json").write_text(json.dumps(server, indent=1))
            try:
                s = summarize(report)
            except (KeyError, IndexError, TypeError) as e:  # a report layout this script does not know
                print(f"{request_format}: cannot read {report}: {e!r}; server window: {server}")
                failed = True
                continue
            ok = s["errored"] == 0 and s["incomplete"] == 0 and s["output_tokens"] == [OUTPUT_TOKENS]
            failed |= not ok
            print(f"\n{request_format}: {s['successful']} ok, {s['errored']} errors, {s['incomplete']} incomplete, "
                  f"output tokens {s['output_tokens']} (want [{OUTPUT_TOKENS}]), {wall:.1f} s  {'OK' if ok else 'FAIL'}")
            print(f"  guidellm TTFT median {s['ttft_ms']['median']:.2f} ms  mean {s['ttft_ms']['mean']:.2f} ms")
            print(f"  guidellm ITL  median {s['itl_ms']['median']:.2f} ms  mean {s['itl_ms']['mean']:.2f} ms")
            for key, label in (("vllm:time_to_first_token_seconds", "TTFT"), ("vllm:inter_token_latency_seconds", "ITL ")):
                if key in server:
                    mean, count = server[key]
                    print(f"  server   {label} mean {mean:.2f} ms  ({count:.0f} samples, same window)")
            for key, (mean, count) in sorted(server.items()):
                if key.startswith("sysaware:serving_overhead_seconds["):
                    print(f"  server overhead {key.split('[')[1].rstrip(']'):<17} mean {mean:.2f} ms ({count:.0f})")
    finally:
        serve.send_signal(signal.SIGINT)  # Ctrl-C: `sysaware serve` deletes the app and shuts its Ray down
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
