"""The load sweep against the live pool: N streaming clients per model over HTTP, TTFT/TPOT as a client sees them.

The same experiment as ``sysaware.sim.sweep`` (closed-loop clients, MBPP prompts, a warm-up, then a measured window,
the replicas' state sampled every 100 ms), but through the real stack: HTTP, Serve's proxy, the ingress, the request
router, the replicas' event loops. Both run the same engine, so the two tables must agree within noise; where they
do not, the stack is adding latency (or the machine cannot keep the replicas real-time).

Clocks: the twin replicas run ``time_scale`` engine seconds per wall second. The client times everything on the wall
clock and multiplies by ``time_scale``, so the table is in engine seconds, comparable with the simulated one. Each
answer's last event also carries the engine's own timings (``sysaware`` field), which the table reports beside the
client's: their gap is what transport and event loops add.

    TTFT (client) = first event with content - request sent
    TPOT (client) = (event with finish_reason - first content event) / (completion_tokens - 1)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
import pandas as pd

from sysaware.engines.types import GenerationRequest
from sysaware.sim.sweep import latency_row
from sysaware.sim.workload import MbppRequestFactory

DEFAULT_LEVELS = (1, 10, 50)

# What the HTTP path sustains, measured on a 2-core machine shared with other jobs (default pool, N=50): at
# time_scale 0.05 the clients received 690 SSE events per wall second and kept 49 of 50 requests in flight; at 0.1
# Serve's proxy and the ingress delivered 850/s of the ~1,400/s asked and streams fell behind (20-45 in flight,
# client TTFT 10x the engine's). A stream gets one chunk per engine step, about 70 steps per engine second here.
SUSTAINED_CHUNKS_PER_WALL_S = 700.0
STEPS_PER_ENGINE_S = 70.0
MAX_AUTO_TIME_SCALE = 0.5


def auto_time_scale(concurrency: int, num_models: int) -> float:
    """The fastest twin speed at which ``concurrency`` streams per model stay within the sustained chunk rate:
    chunks per wall second = streams x steps per engine second x time_scale. Capped at 0.5: the client's own
    transport time (tens of wall ms) counts ``time_scale`` times in the engine-ms table, so slower reads cleaner."""
    streams = max(concurrency * num_models, 1)
    return min(MAX_AUTO_TIME_SCALE, SUSTAINED_CHUNKS_PER_WALL_S / (streams * STEPS_PER_ENGINE_S))


@dataclass(frozen=True)
class LiveSweepSettings:
    concurrency_levels: Sequence[int] = DEFAULT_LEVELS  # background clients per model
    warmup_s: float = 10.0  # engine seconds before measuring (queues reach steady state)
    measure_s: float = 30.0  # engine seconds of measurement
    time_scale: float = 1.0  # the pool's engine seconds per wall second
    telemetry_period_s: float = 0.1  # wall seconds between two /v1/telemetry samples
    drain_timeout_s: float = 60.0  # wall seconds to wait for the pool to go idle between levels
    seed: int = 0

    def wall_s(self, engine_s: float) -> float:
        return engine_s / self.time_scale


@dataclass
class ClientRecord:
    """One request as a client saw it; times in wall seconds since the level started."""

    model: str
    concurrency: int
    request_id: str
    sent_s: float
    first_content_s: float | None = None
    finished_s: float | None = None
    status: int | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine: dict = field(default_factory=dict)  # the answer's `sysaware` timings (engine seconds), when it finished
    events: int = 0  # SSE data events received
    error: str | None = None


@dataclass
class LevelRun:
    concurrency: int
    records: list[ClientRecord]
    telemetry: pd.DataFrame  # one row per (sample, replica), measurement window only
    wall_s: float  # wall seconds the level took (drain included)


@dataclass(frozen=True)
class LevelProgress:
    """What a progress bar shows while a level runs."""

    concurrency: int
    elapsed_wall_s: float
    total_wall_s: float
    finished_requests: int
    failed_requests: int


def request_body(request: GenerationRequest) -> dict:
    """The OpenAI chat body for one of the workload's requests (streamed, usage in the last event)."""
    return {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        "request_id": request.request_id,
    }


async def stream_one(client: httpx.AsyncClient, url: str, body: dict, record: ClientRecord, t0: float) -> None:
    """Send one streamed chat request and fill ``record`` as its events arrive (wall times relative to ``t0``)."""
    async with client.stream("POST", url, json=body) as response:
        record.status = response.status_code
        if response.status_code != 200:
            record.error = (await response.aread()).decode(errors="replace")[:500]
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            record.events += 1
            if "error" in event:
                record.error = event["error"].get("message", str(event["error"]))
                return
            now = time.monotonic() - t0
            for choice in event.get("choices", ()):
                if choice.get("delta", {}).get("content") and record.first_content_s is None:
                    record.first_content_s = now
                if choice.get("finish_reason") is not None:
                    record.finished_s = now
                    record.finish_reason = choice["finish_reason"]
            if event.get("sysaware"):
                record.engine = event["sysaware"]
            if event.get("usage"):
                record.prompt_tokens = event["usage"]["prompt_tokens"]
                record.completion_tokens = event["usage"]["completion_tokens"]


async def _closed_loop_client(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    concurrency: int,
    factory: MbppRequestFactory,
    rng: random.Random,
    t0: float,
    stop_wall_s: float,
    records: list[ClientRecord],
) -> None:
    """One client: send, wait for the whole answer, send the next, until the window closes."""
    while time.monotonic() - t0 < stop_wall_s:
        request = factory(model, rng)
        record = ClientRecord(model, concurrency, request.request_id, sent_s=time.monotonic() - t0)
        records.append(record)
        try:
            await stream_one(client, url, request_body(request), record, t0)
        except httpx.HTTPError as e:
            record.error = repr(e)
            await asyncio.sleep(0.1)  # a refused connection must not spin


async def fetch_telemetry(client: httpx.AsyncClient, base_url: str) -> dict:
    response = await client.get(f"{base_url}/telemetry")
    response.raise_for_status()
    return response.json()


def telemetry_rows(snapshot: dict, t_s: float) -> list[dict]:
    """One row per replica that is alive: a stale one (killed, or replaced by a redeploy and not yet forgotten)
    reports its last state forever, which is not load."""
    return [
        {
            "t_s": t_s,
            "model": r["model"],
            "replica_id": replica_id,
            "queue_waiting": r["queue_waiting"],
            "queue_running": r["queue_running"],
            "kv_utilization": r["kv_utilization"],
            "ema_ttft_ms": r["ema_ttft_ms"],
            "stale": r["stale"],
        }
        for replica_id, r in snapshot.get("replicas", {}).items()
        if not r["stale"]
    ]


async def wait_idle(client: httpx.AsyncClient, base_url: str, models: Sequence[str], timeout_s: float) -> bool:
    """Until every model's fresh replicas report empty queues (aborted streams have left the engines)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snapshot = await fetch_telemetry(client, base_url)
        per_model = snapshot.get("models", {})
        if all(
            m in per_model and per_model[m]["queue_waiting"] == 0 and per_model[m]["queue_running"] == 0 for m in models
        ):
            return True
        await asyncio.sleep(0.1)
    return False


async def prime(client: httpx.AsyncClient, url: str, models: Sequence[str], seed: int) -> None:
    """One request per model before the clock starts: a replica's first request pays one-off costs (answer tables,
    tokenizer, settings looked up lazily), seconds on a loaded machine, which are not load and would empty a short
    window."""
    factory = MbppRequestFactory.for_split("train", prefix=f"prime-{int(time.time())}")  # the levels' ids untouched
    rng = random.Random(f"prime/{seed}")
    records = [ClientRecord(m, 0, f"prime-{m}", sent_s=0.0) for m in models]
    await asyncio.gather(
        *(stream_one(client, url, request_body(factory(r.model, rng)), r, time.monotonic()) for r in records),
        return_exceptions=True,  # a failing replica shows up in the level itself, counted
    )


async def run_level(
    base_url: str,
    models: Sequence[str],
    concurrency: int,
    settings: LiveSweepSettings,
    on_progress: Callable[[LevelProgress], None] | None = None,
) -> LevelRun:
    """``concurrency`` closed-loop clients per model for warm-up + window; then every open stream is closed (the
    engines abort those requests) and the pool drains before the next level."""
    factory = MbppRequestFactory.for_split("train", prefix=f"live-n{concurrency}-{int(time.time())}")
    warmup_wall = settings.wall_s(settings.warmup_s)
    stop_wall = settings.wall_s(settings.warmup_s + settings.measure_s)
    records: list[ClientRecord] = []
    samples: list[dict] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None, connect=30.0)) as client:
        url = f"{base_url}/chat/completions"
        await prime(client, url, models, settings.seed)
        await wait_idle(client, base_url, models, settings.drain_timeout_s)
        t0 = time.monotonic()
        tasks = []
        for model in models:
            rng = random.Random(f"closed/{model}/{settings.seed}")  # as the simulated sweep draws per model
            for i in range(concurrency):
                tasks.append(
                    asyncio.create_task(
                        _closed_loop_client(client, url, model, concurrency, factory, rng, t0, stop_wall, records)
                    )
                )
        while (elapsed := time.monotonic() - t0) < stop_wall:
            if elapsed >= warmup_wall:
                samples.extend(telemetry_rows(await fetch_telemetry(client, base_url), elapsed * settings.time_scale))
            if on_progress is not None:
                done = sum(r.finished_s is not None for r in records)
                failed = sum(r.error is not None for r in records)
                on_progress(LevelProgress(concurrency, elapsed, stop_wall, done, failed))
            await asyncio.sleep(min(settings.telemetry_period_s, max(stop_wall - elapsed, 0.0)))
        for task in tasks:
            task.cancel()  # closes the streams still open: the ingress cancels them in the replicas
        await asyncio.gather(*tasks, return_exceptions=True)
        await wait_idle(client, base_url, models, settings.drain_timeout_s)
    return LevelRun(concurrency, records, pd.DataFrame(samples), time.monotonic() - t0)


def measured(run: LevelRun, model: str, settings: LiveSweepSettings) -> list[ClientRecord]:
    """Requests of ``model`` sent inside the window and answered before it closed (as the simulated sweep counts)."""
    warmup_wall = settings.wall_s(settings.warmup_s)
    stop_wall = settings.wall_s(settings.warmup_s + settings.measure_s)
    return [
        r
        for r in run.records
        if r.model == model
        and r.sent_s >= warmup_wall
        and r.finished_s is not None
        and r.finished_s <= stop_wall
        and r.first_content_s is not None
        and r.error is None
    ]


def summarise_level(run: LevelRun, models: Sequence[str], settings: LiveSweepSettings) -> pd.DataFrame:
    """One row per model, the columns of ``sysaware.sim.sweep.summarise_level`` (engine ms), plus the engine's own
    TTFT/TPOT for the same requests and the failures seen."""
    scale_ms = settings.time_scale * 1e3  # wall seconds -> engine milliseconds
    rows = []
    for model in models:
        done = measured(run, model, settings)
        ttft = np.array([r.first_content_s - r.sent_s for r in done]) * scale_ms
        tpot = np.array(
            [(r.finished_s - r.first_content_s) / (r.completion_tokens - 1) for r in done if r.completion_tokens > 1]
        ) * scale_ms
        engine_ttft = np.array([r.engine["ttft_s"] for r in done if r.engine.get("ttft_s") is not None]) * 1e3
        engine_tpot = np.array([r.engine["tpot_s"] for r in done if r.engine.get("tpot_s") is not None]) * 1e3
        row = latency_row(
            model,
            run.concurrency,
            ttft,
            tpot,
            [r.completion_tokens for r in done],
            run.telemetry,
            sum(r.engine.get("num_preemptions", 0) for r in done),
        )
        rows.append(
            row
            | {
                "engine_ttft_p50_ms": _pct(engine_ttft, 50),
                "engine_ttft_p95_ms": _pct(engine_ttft, 95),
                "engine_tpot_p50_ms": _pct(engine_tpot, 50),
                "engine_tpot_p95_ms": _pct(engine_tpot, 95),
                "failed": sum(1 for r in run.records if r.model == model and r.error is not None),
            }
        )
    return pd.DataFrame(rows)


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


async def discover(base_url: str) -> tuple[list[str], float]:
    """The pool's model names and its time_scale, from the ingress's /health."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.get(base_url.removesuffix("/v1") + "/health")
        response.raise_for_status()
        health = response.json()
    return list(health["models"]), float(health.get("time_scale", 1.0))


async def sweep(
    base_url: str,
    models: Sequence[str],
    settings: LiveSweepSettings,
    on_progress: Callable[[LevelProgress], None] | None = None,
    on_level: Callable[[LevelRun], None] | None = None,
) -> tuple[pd.DataFrame, list[LevelRun]]:
    """Every load level in turn against the pool at ``base_url`` (``http://host:port/v1``); the per-model table
    and the raw runs (for the per-request CSV)."""
    tables, runs = [], []
    for n in settings.concurrency_levels:
        run = await run_level(base_url, models, n, settings, on_progress)
        runs.append(run)
        tables.append(summarise_level(run, models, settings))
        if on_level is not None:
            on_level(run)
    return pd.concat(tables, ignore_index=True), runs


def requests_frame(runs: Sequence[LevelRun]) -> pd.DataFrame:
    """Every request of every level, one row each (engine timings flattened as ``engine_*`` columns)."""
    rows = []
    for run in runs:
        for r in run.records:
            row = asdict(r)
            engine = row.pop("engine")
            row.update({f"engine_{k}": v for k, v in engine.items()})
            rows.append(row)
    return pd.DataFrame(rows)
