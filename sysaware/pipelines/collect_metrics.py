"""Phase 2: hardware metrics under load, the estimators' training data.

For every load level N (background closed-loop clients per model, drawing harvested prompts with random strategies),
every harvested prompt x strategy x model is sent once as a probe; each probe records the state of the replica that
served it at submission (queue depth, KV use, EMA TTFT) and what it measured (TTFT, TPOT, output tokens, queue
time, e2e). Probes of a level go out in a seeded random order as one Poisson process of rate
``probe_rate_per_s x models``, so each model sees about ``probe_rate_per_s`` probes per second spread over the
level's whole duration and the probes sample many different states. The rate is low so probes barely add to the
background: at 0.5/s and a few seconds per answer, one or two probes per model are in flight beside the N clients.

Resumable: each probe has a stable key (prompt, strategy, model, N, repeat); the dataset is written as atomic
Parquet shards after every chunk of probes (``dataset_store``), and a rerun sends only the probes whose keys are not
on disk. A kill loses at most the chunk in flight and never leaves a duplicate.

A probe's seed (hence its answer and output length on the twin) depends on (prompt, strategy, model, repeat), not on
N: load changes the latency of an answer, not the answer.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from sysaware.config import PoolConfig
from sysaware.engines.types import GenerationRequest
from sysaware.data import dataset_store as store
from sysaware.data.metrics_schema import replica_state_columns
from sysaware.pipelines.collect_prompts import read_existing
from sysaware.pipelines.probes import (
    ProbeBackend,
    ProbeOutcome,
    PromptPoolFactory,
    PromptRow,
    ScheduledProbe,
    SimProbeBackend,
    with_strategy,
)
from sysaware.sim.backend import SimBackend
from sysaware.tasks.prompts import Strategy

DEFAULT_LEVELS = (1, 10, 50)


@dataclass(frozen=True)
class MetricsSettings:
    levels: tuple[int, ...] = DEFAULT_LEVELS  # background closed-loop clients per model (N)
    strategies: tuple[Strategy, ...] = tuple(Strategy)
    models: tuple[str, ...] | None = None  # None: every model of the pool
    num_prompts: int | None = None  # only the first N harvested prompts (small runs); None: all
    repeats: int = 1  # probes per (prompt, strategy, model, N)
    probe_rate_per_s: float = 0.5  # probe arrivals per model per engine second
    chunk_size: int = 256  # probes per shard: at most this many are lost to a kill
    warmup_s: float = 20.0  # engine seconds of background load before a level's first probe
    max_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.levels or any(n < 0 for n in self.levels):
            raise ValueError(f"levels must be non-negative concurrencies, got {self.levels}")
        if self.probe_rate_per_s <= 0 or self.chunk_size < 1 or self.repeats < 1:
            raise ValueError("probe_rate_per_s must be > 0, chunk_size and repeats >= 1")

    def to_json(self) -> dict:
        d = asdict(self)
        d["strategies"] = [s.value for s in self.strategies]
        return d


@dataclass(frozen=True)
class ProbeSpec:
    key: str
    prompt: PromptRow
    strategy: Strategy
    model: str
    concurrency: int
    repeat: int


def probe_key(prompt_id: str, strategy: Strategy, model: str, concurrency: int, repeat: int = 0) -> str:
    text = f"{prompt_id}\x1f{strategy.value}\x1f{model}\x1f{concurrency}\x1f{repeat}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def probe_seed(spec: ProbeSpec) -> int:
    text = f"{spec.prompt.prompt_id}\x1f{spec.strategy.value}\x1f{spec.model}\x1f{spec.repeat}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def plan_level(
    rows: Sequence[PromptRow], models: Sequence[str], concurrency: int, settings: MetricsSettings
) -> list[ProbeSpec]:
    """Every probe of one level, in the seeded random order they are sent (the same on every rerun)."""
    specs = [
        ProbeSpec(probe_key(row.prompt_id, s, m, concurrency, r), row, s, m, concurrency, r)
        for row in rows
        for s in settings.strategies
        for m in models
        for r in range(settings.repeats)
    ]
    random.Random(f"probe-order/{settings.seed}/{concurrency}").shuffle(specs)
    return specs


def load_prompt_rows(prompts_csv: str | Path, num_prompts: int | None = None) -> list[PromptRow]:
    df = read_existing(Path(prompts_csv))
    if df.empty:
        raise ValueError(f"{prompts_csv}: no prompts (run collect-prompts first)")
    return PromptRow.from_frame(df.iloc[:num_prompts])


def schedule(specs: Sequence[ProbeSpec], rate_per_s: float, rng: random.Random, max_tokens: int) -> list[ScheduledProbe]:
    """Probe requests with Poisson-spaced offsets (exponential gaps of mean 1/rate_per_s)."""
    out, t = [], 0.0
    for spec in specs:
        t += rng.expovariate(rate_per_s)
        request = GenerationRequest(
            request_id=f"probe-{spec.key}",
            model=spec.model,
            messages=with_strategy(spec.prompt.messages, spec.strategy),
            max_tokens=max_tokens,
            seed=probe_seed(spec),
        )
        out.append(ScheduledProbe(spec.key, request, t))
    return out


def outcome_row(spec: ProbeSpec, outcome: ProbeOutcome) -> dict:
    """One dataset row (metrics_schema.COLUMNS): the served replica's state at submission and the measured result."""
    r = outcome.result
    return {
        "probe_key": spec.key,
        "prompt_id": spec.prompt.prompt_id,
        "model_id": spec.model,
        "role_id": spec.prompt.role_id,
        "strategy_id": spec.strategy.value,
        "concurrency": spec.concurrency,
        "replica_id": r.replica_id,
        **replica_state_columns(outcome.served_state),
        "total_input_tokens": r.prompt_tokens,
        "output_tokens": r.output_tokens,
        "actual_ttft": math.nan if r.ttft_s is None else r.ttft_s * 1e3,
        "actual_tpot": math.nan if r.tpot_s is None else r.tpot_s * 1e3,
        "queue_ms": r.queue_time_s * 1e3,
        "e2e_ms": r.e2e_s * 1e3,
        "submitted_at": float(outcome.submitted_s),
    }


def collect_metrics(
    pool: PoolConfig,
    prompts_csv: str | Path,
    run_dir: str | Path,
    settings: MetricsSettings = MetricsSettings(),
    backend: ProbeBackend | None = None,
    sim: SimBackend | None = None,  # the simulated pool when no probe backend is given (default: the pool's twin)
    progress: bool = True,
    write_csv: bool = False,
    on_shard: Callable[[Path, int], None] | None = None,
) -> Path:
    """Send every probe the dataset under ``run_dir`` lacks and write it shard by shard; returns the dataset dir."""
    rows, models, prompts_info = _inputs(pool, prompts_csv, run_dir, settings)
    if backend is None:
        backend = _sim_probe_backend(pool, rows, settings, sim)
    manifest_settings, todo, bar = _start(pool, run_dir, rows, models, prompts_info, settings, backend.name, progress)
    for n, specs in todo.items():
        for chunk, frame in measure_level(backend, n, specs, settings, len(models)):
            path = store.write_shard(run_dir, n, frame)
            store.write_manifest(run_dir, manifest_settings, prompts_info)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(N=n, shard=path.name)
            if on_shard is not None:
                on_shard(path, len(chunk))
    return _finish(run_dir, bar, write_csv)


def collect_metrics_on_ray(
    pool: PoolConfig,
    prompts_csv: str | Path,
    run_dir: str | Path,
    settings: MetricsSettings = MetricsSettings(),
    progress: bool = True,
    write_csv: bool = False,
) -> Path:
    """``collect_metrics`` on the simulated pool with each load level (a cell: its own simulated cluster, nothing
    shared with the others) in its own Ray task, so the levels run on the cluster's workers at once. The tasks
    return their frames and only this driver writes: the run directory need not be shared with the workers.
    The dataset is the one the serial run writes (same keys, same measurements); a level's shards appear when its
    task ends, so a kill loses the levels still running (a rerun sends only what is missing)."""
    import ray

    rows, models, prompts_info = _inputs(pool, prompts_csv, run_dir, settings)
    manifest_settings, todo, bar = _start(
        pool, run_dir, rows, models, prompts_info, settings, SimProbeBackend.name, progress
    )
    task = ray.remote(num_cpus=1)(_level_frames)
    pending = {task.remote(pool, rows, n, specs, settings, len(models)): (n, specs) for n, specs in todo.items() if specs}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        n, specs = pending.pop(ref)
        for frame in ray.get(ref):
            path = store.write_shard(run_dir, n, frame)
            if bar is not None:
                bar.set_postfix(N=n, shard=path.name)
        store.write_manifest(run_dir, manifest_settings, prompts_info)
        if bar is not None:
            bar.update(len(specs))
    return _finish(run_dir, bar, write_csv)


def measure_level(
    backend: ProbeBackend, n: int, specs: Sequence[ProbeSpec], settings: MetricsSettings, num_models: int
) -> Iterator[tuple[Sequence[ProbeSpec], pd.DataFrame]]:
    """One load level: the background started, the probes sent chunk by chunk; yields each chunk's rows."""
    if not specs:
        return
    backend.start_level(n)
    # One arrival process per level: its gaps continue across chunks (rerun: a new process, same rate).
    rng = random.Random(f"probe-gaps/{settings.seed}/{n}/{len(specs)}")
    try:
        for start in range(0, len(specs), settings.chunk_size):
            chunk = specs[start : start + settings.chunk_size]
            by_key = {s.key: s for s in chunk}
            outcomes = backend.measure(schedule(chunk, settings.probe_rate_per_s * num_models, rng, settings.max_tokens))
            yield chunk, pd.DataFrame([outcome_row(by_key[o.key], o) for o in outcomes])
    finally:
        backend.stop_level()


def _level_frames(
    pool: PoolConfig, rows: list[PromptRow], n: int, specs: list[ProbeSpec], settings: MetricsSettings, num_models: int
) -> list[pd.DataFrame]:
    """A Ray task's work: one level on a fresh simulated pool, built as the serial run builds it."""
    backend = _sim_probe_backend(pool, rows, settings, None)
    return [frame for _, frame in measure_level(backend, n, specs, settings, num_models)]


def _sim_probe_backend(pool: PoolConfig, rows: list[PromptRow], settings: MetricsSettings, sim: SimBackend | None):
    background = PromptPoolFactory(rows, settings.strategies, settings.max_tokens)
    return SimProbeBackend(pool, background, sim, settings.warmup_s, seed=settings.seed)


def _inputs(pool: PoolConfig, prompts_csv: str | Path, run_dir: str | Path, settings: MetricsSettings):
    """The prompts, the models probed and the input's fingerprint (a run directory holds one input's dataset)."""
    rows = load_prompt_rows(prompts_csv, settings.num_prompts)
    models = list(settings.models or [m.name for m in pool.models])
    prompts_info = {
        "path": str(Path(prompts_csv).resolve()),
        "sha256": store.file_fingerprint(prompts_csv),
        "rows": len(rows),
    }
    store.check_same_input(run_dir, prompts_info)
    return rows, models, prompts_info


def _start(pool: PoolConfig, run_dir, rows, models, prompts_info, settings: MetricsSettings, backend: str,
           progress: bool):
    """What both runners do first: the manifest's settings (written now, before any probe), the probes still to
    send per level, and the progress bar over them (None without ``progress``)."""
    manifest_settings = {**settings.to_json(), "models": models, "backend": backend, "pool": pool.name}
    todo, done_before = _todo(run_dir, rows, models, settings)
    bar = _bar(todo, done_before) if progress else None
    store.write_manifest(run_dir, manifest_settings, prompts_info)
    return manifest_settings, todo, bar


def _finish(run_dir: str | Path, bar, write_csv: bool) -> Path:
    if bar is not None:
        bar.close()
    if write_csv:
        store.write_csv(run_dir)
    return store.dataset_dir(run_dir)


def _todo(run_dir: str | Path, rows, models, settings: MetricsSettings) -> tuple[dict[int, list[ProbeSpec]], int]:
    """Per level, the probes whose keys are not on disk yet; and how many are."""
    done = store.existing_keys(run_dir)
    todo = {n: [s for s in plan_level(rows, models, n, settings) if s.key not in done] for n in settings.levels}
    return todo, len(done)


def _bar(todo: dict[int, list], done_before: int):
    from tqdm import tqdm

    bar = tqdm(total=sum(map(len, todo.values())), desc="probes", unit="probe")
    bar.set_postfix(done_before=done_before)
    return bar


def load_dataset(run_dir: str | Path) -> pd.DataFrame:
    """The collected dataset, schema-checked (``metrics_schema.validate``)."""
    return store.load_dataset(run_dir)
