"""The ``sysaware`` command line: thin wrappers that validate arguments and call the library."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sysaware.config import DEFAULT_POOL, ConfigError, PoolConfig, load_pool

app = typer.Typer(add_completion=False, no_args_is_help=True, help="System-aware multi-agent LLM orchestration.")
console = Console()

PoolOption = typer.Option(DEFAULT_POOL, "--pool", help="Pool YAML (models, GPUs, replicas, backend).")


def _load_pool(path: Path) -> PoolConfig:
    try:
        return load_pool(path)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def _parse_levels(levels: str) -> list[int]:
    try:
        out = [int(x) for x in levels.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--levels must be comma-separated integers, got {levels!r}") from None
    if not out or any(n < 1 for n in out):
        raise typer.BadParameter("--levels needs at least one concurrency, each >= 1")
    return out


def print_latency_table(df, title: str) -> None:
    table = Table(title=title)
    cols = [
        ("model", "model", "{}"),
        ("concurrency", "N", "{}"),
        ("requests", "reqs", "{}"),
        ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
        ("ttft_p95_ms", "TTFT p95 ms", "{:.0f}"),
        ("tpot_p50_ms", "TPOT p50 ms", "{:.1f}"),
        ("tpot_p95_ms", "TPOT p95 ms", "{:.1f}"),
        ("queue_waiting_mean", "q_wait", "{:.1f}"),
        ("queue_running_mean", "q_run", "{:.1f}"),
        ("kv_util_mean", "KV use", "{:.2f}"),
        ("preemptions", "preempt", "{}"),
    ]
    for _, header, _ in cols:
        table.add_column(header, justify="left" if header == "model" else "right")
    for _, row in df.sort_values(["model", "concurrency"]).iterrows():
        table.add_row(*[fmt.format(row[key]) for key, _, fmt in cols])
    console.print(table)


@app.command("sim-sweep")
def sim_sweep(
    pool: Path = PoolOption,
    levels: str = typer.Option("1,10,50", help="Background clients per model, comma-separated."),
    warmup_s: float = typer.Option(20.0, min=0, help="Virtual seconds of warm-up per level."),
    measure_s: float = typer.Option(60.0, min=1, help="Virtual seconds measured per level."),
    seed: int = typer.Option(0),
    run_dir: Path | None = typer.Option(None, help="Where to write sim_sweep.csv (default runs/sim-sweep-<time>)."),
) -> None:
    """Simulated cluster under background load: TTFT/TPOT p50/p95 per model at each concurrency."""
    from tqdm import tqdm

    from sysaware.runs import new_run_dir
    from sysaware.sim.sweep import SweepSettings, sweep

    cfg = _load_pool(pool)
    settings = SweepSettings(tuple(_parse_levels(levels)), warmup_s, measure_s, seed=seed)
    out = new_run_dir("sim-sweep", run_dir)
    bar = tqdm(total=len(settings.concurrency_levels), desc="load levels", unit="level")

    def progress(run) -> None:
        bar.set_postfix(N=run.concurrency, sim_per_wall=f"{(warmup_s + measure_s) / run.wall_s:.0f}x")
        bar.update()

    df = sweep(cfg, settings, on_level=progress)
    bar.close()
    df.to_csv(out / "sim_sweep.csv", index=False)
    print_latency_table(df, f"{cfg.name}: simulated latency per model (virtual time, {measure_s:.0f}s window)")
    console.print(f"table written to {out / 'sim_sweep.csv'}")


@app.command()
def regrade(out: Path | None = typer.Option(None, help="CSV to write (default: the vendored regrade.csv).")) -> None:
    """Re-grade RouterBench's recorded MBPP answers with our sandbox and print the agreement."""
    from sysaware.tasks import regrade as rg

    rg.main([] if out is None else ["--out", str(out)])


@app.command()
def calibrate() -> None:
    """Refit the twin's step-time efficiency factors to the vendored Vidur profiles."""
    from sysaware.engines.twin import calibration

    calibration.main()


if __name__ == "__main__":
    app()
