"""Phase 2 collection speed in simulated mode, and what the full dataset costs to build.

Runs ``collect_metrics`` on the default pool for a small sample of the Phase 1 prompts (every strategy, every model,
every level), timing each level's warm-up (a fresh cluster with N closed-loop clients per model, run for
``warmup_s`` virtual seconds) apart from its probes, then extrapolates to the full dataset: every harvested
train-split prompt x 3 strategies x every model x 3 levels. Build time = per level, warm-up + probes x measured
wall seconds per probe. Linear in probes because probes arrive at a fixed rate per model, so the virtual time
(hence background load) simulated per level grows with the probe count.

The sample is drawn at random from the whole file (the file is ordered by run, so its first rows would be a few
tasks whose answers the responder caches), and the background clients draw from *all* harvested prompts (as the
full run does), so the responder's caches start as cold as in the real run. They warm as a run goes on (the
background meets the same prompts again), and each level ends with a tail (the last probes finishing) per chunk of
256 probes, so probes per wall second rise with the sample (measured: 6 prompts ~45/s, 20 ~100/s, 51 ~190/s): the
extrapolated build time is an upper bound. The default sample, 51 prompts, is 3 chunks per level. Printed last:
the headline.

    python benchmarks/bench_collect_metrics.py [--prompts runs/.../intermediate_prompts.csv] [--sample 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.sim.backend import SimBackend
from sysaware.pipelines.collect_metrics import MetricsSettings, collect_metrics, load_dataset, load_prompt_rows
from sysaware.pipelines.collect_prompts import read_existing
from sysaware.pipelines.probes import PromptPoolFactory, SimProbeBackend
from sysaware.runs import runs_root


@dataclass
class TimedBackend:
    """Delegates to a real ProbeBackend and records wall seconds per level: warm-up apart from probes."""

    inner: SimProbeBackend
    warmup_wall_s: dict[int, float] = field(default_factory=dict)
    probe_wall_s: dict[int, float] = field(default_factory=dict)
    probe_cpu_s: dict[int, float] = field(default_factory=dict)  # CPU time: less sensitive to a shared machine
    probes: dict[int, int] = field(default_factory=dict)
    level: int = -1

    @property
    def name(self) -> str:
        return self.inner.name

    def start_level(self, concurrency: int) -> None:
        t0 = time.perf_counter()
        self.inner.start_level(concurrency)
        self.level = concurrency
        self.warmup_wall_s[concurrency] = time.perf_counter() - t0

    def measure(self, probes):
        t0, c0 = time.perf_counter(), time.process_time()
        out = self.inner.measure(probes)
        self.probe_wall_s[self.level] = self.probe_wall_s.get(self.level, 0.0) + time.perf_counter() - t0
        self.probe_cpu_s[self.level] = self.probe_cpu_s.get(self.level, 0.0) + time.process_time() - c0
        self.probes[self.level] = self.probes.get(self.level, 0) + len(out)
        return out

    def stop_level(self) -> None:
        self.inner.stop_level()


def newest_prompts_csv() -> Path:
    found = sorted(runs_root().glob("collect-prompts-*/intermediate_prompts.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no Phase 1 prompts under runs/: run `sysaware collect-prompts` first or pass --prompts")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, default=None, help="intermediate_prompts.csv (default: newest run)")
    parser.add_argument("--sample", type=int, default=51, help="prompts probed (x 3 strategies x models x levels)")
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    prompts_csv = args.prompts or newest_prompts_csv()
    pool = load_pool(DEFAULT_POOL)
    levels = tuple(int(x) for x in args.levels.split(","))
    settings = MetricsSettings(levels=levels, seed=args.seed)
    models = [m.name for m in pool.models]

    t0 = time.perf_counter()
    all_rows = load_prompt_rows(prompts_csv)
    sim_backend = SimBackend(pool)
    background = PromptPoolFactory(all_rows, settings.strategies, settings.max_tokens)
    backend = TimedBackend(SimProbeBackend(pool, background, sim_backend, settings.warmup_s, seed=settings.seed))
    setup_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as run_dir:
        sample_csv = Path(run_dir) / "sample_prompts.csv"
        read_existing(prompts_csv).sample(n=args.sample, random_state=args.seed).to_csv(sample_csv, index=False)
        t1 = time.perf_counter()
        collect_metrics(pool, sample_csv, run_dir, settings, backend=backend, progress=False)
        collect_s = time.perf_counter() - t1
        rows = len(load_dataset(run_dir))

    sample_probes = sum(backend.probes.values())
    assert rows == sample_probes, f"dataset has {rows} rows, backend measured {sample_probes} probes"
    full_per_level = len(all_rows) * len(settings.strategies) * len(models)
    print(f"pool {pool.name}: {len(models)} models; prompts {prompts_csv} ({len(all_rows)} rows)")
    print(f"setup (prompt rows, responder, background pool): {setup_s:.1f} s")
    est_total_s = setup_s
    for n in levels:
        per_probe = backend.probe_wall_s[n] / backend.probes[n]
        level_s = backend.warmup_wall_s[n] + full_per_level * per_probe
        est_total_s += level_s
        print(
            f"N={n:>3}: warm-up {backend.warmup_wall_s[n]:.2f} s wall ({settings.warmup_s:.0f} virtual s); "
            f"{backend.probes[n]} probes in {backend.probe_wall_s[n]:.2f} s = {1 / per_probe:.1f} probes/wall s "
            f"({backend.probes[n] / backend.probe_cpu_s[n]:.1f}/CPU s); "
            f"full level ({full_per_level} probes) ~ {level_s / 3600:.2f} h"
        )
    rate = sample_probes / collect_s
    print(f"sample: {sample_probes} probes in {collect_s:.1f} wall s (warm-ups included) = {rate:.1f} probes/wall s")
    full = full_per_level * len(levels)
    print(
        f"full dataset: {full:,} probes ({len(all_rows):,} prompts x {len(settings.strategies)} strategies x "
        f"{len(models)} models x {len(levels)} levels), est. build {est_total_s / 3600:.1f} h in one process "
        f"(simulated, {sample_probes / sum(backend.probe_wall_s.values()):.1f} probes/wall s excluding warm-ups)"
    )


if __name__ == "__main__":
    main()
