"""TTFT and TPOT p50/p95 per model of the default pool at N = 1, 10, 50 background clients (simulated)."""

from __future__ import annotations

from sysaware.cli import print_latency_table
from sysaware.config import DEFAULT_POOL, load_pool
from sysaware.sim.sweep import SweepSettings, sweep


def main() -> None:
    pool = load_pool(DEFAULT_POOL)
    settings = SweepSettings(warmup_s=20.0, measure_s=60.0)
    df = sweep(pool, settings)
    cols = ["model", "concurrency", "requests", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms"]
    print(df[cols].round(1).to_string(index=False))
    print_latency_table(df, f"{pool.name}: per-model latency at N = 1, 10, 50 (virtual time)")


if __name__ == "__main__":
    main()
