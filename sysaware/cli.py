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


@app.command("collect-prompts")
def collect_prompts_cmd(
    pool: Path = PoolOption,
    runs_per_task: int = typer.Option(2, min=1, help="Workflows per train task, each with its own random plan and choices."),
    tasks: int | None = typer.Option(None, "--tasks", min=1, help="Only the first N train tasks (default: all 374)."),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(16, min=1, help="Workflows simulated together (the output does not depend on it)."),
    run_dir: Path | None = typer.Option(None, help="Output folder (default runs/collect-prompts-<time>); rerunning on one resumes it."),
) -> None:
    """Phase 1: MBPP train workflows with random topologies, models and strategies; every agent's prompt to
    intermediate_prompts.csv."""
    from sysaware.pipelines.collect_prompts import CollectSettings, collect_prompts, read_existing
    from sysaware.runs import new_run_dir

    cfg = _load_pool(pool)
    out = new_run_dir("collect-prompts", run_dir)
    path = collect_prompts(cfg, out, CollectSettings(runs_per_task, tasks, seed, batch_size))
    df = read_existing(path)
    console.print(f"{len(df)} prompts from {df['run_id'].nunique()} runs in {path}")


@app.command("evaluate")
def evaluate_cmd(
    sim: bool = typer.Option(False, "--sim", help="On the simulated cluster (virtual time); the only driver so far."),
    pool: Path = PoolOption,
    policies: str = typer.Option(
        "random,fixed,best_single,static_qmp,least_queue,greedy,oracle", help="Executors, comma-separated."
    ),
    levels: str = typer.Option("1,10,50", help="Background closed-loop clients per model, comma-separated."),
    tasks: int = typer.Option(40, "--tasks", min=1, help="MBPP test tasks with recorded answers (a seeded sample)."),
    planner: str = typer.Option("random", help="Planner (same plan per task for every policy)."),
    slack: float = typer.Option(1.5, min=0.01, help="Budget = slack x the plan's latency on an idle cluster."),
    interval_s: float = typer.Option(2.0, min=0, help="Virtual seconds between workflow arrivals."),
    warmup_s: float = typer.Option(10.0, min=0, help="Virtual seconds of background load before the first workflow."),
    seed: int = typer.Option(0),
    run_dir: Path | None = typer.Option(None, help="Where the tables go (default runs/evaluate-<time>)."),
) -> None:
    """Every baseline x background load: pass@1, SLO attainment, e2e latency p50/p95, mean steps."""
    if not sim:
        console.print("[red]error:[/red] only --sim is available until the live pool driver lands")
        raise typer.Exit(2)
    from tqdm import tqdm

    from sysaware.orchestration.executors import EXECUTORS
    from sysaware.orchestration.planners import PLANNERS
    from sysaware.pipelines.evaluate import EvalSettings, evaluate, summarise
    from sysaware.runs import new_run_dir

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    if unknown := [p for p in names if p not in EXECUTORS]:
        raise typer.BadParameter(f"unknown policies {unknown}; known: {sorted(EXECUTORS)}")
    if planner not in PLANNERS:
        raise typer.BadParameter(f"unknown planner {planner!r}; known: {sorted(PLANNERS)}")
    cfg = _load_pool(pool)
    settings = EvalSettings(names, tuple(_parse_levels(levels)), tasks, planner, slack, warmup_s, interval_s, seed)
    out = new_run_dir("evaluate", run_dir)
    bar = tqdm(total=len(names) * len(settings.levels), desc="policy x load", unit="cell")

    def progress(cost: dict) -> None:
        bar.set_postfix(policy=cost["policy"], N=cost["load"], wall_s=f"{cost['wall_s']:.0f}")
        bar.update()

    runs, steps, cost = evaluate(cfg, settings, on_cell=progress)
    bar.close()
    summary = summarise(runs)
    for name, df in (("runs", runs), ("steps", steps), ("summary", summary), ("cost", cost)):
        df.to_csv(out / f"{name}.csv", index=False)
    table = Table(title=f"{cfg.name}: {tasks} MBPP test tasks, budget = {slack:g} x idle latency (virtual time)")
    for header in ("policy", "N", "runs", "pass@1", "SLO att.", "e2e p50 s", "e2e p95 s", "steps", "out tok"):
        table.add_column(header, justify="left" if header == "policy" else "right")
    for r in summary.sort_values(["load"], kind="stable").itertuples(index=False):
        table.add_row(
            r.policy, str(r.load), str(r.runs), f"{r.pass_at_1:.3f}", f"{r.slo_attainment:.3f}",
            f"{r.e2e_p50_s:.2f}", f"{r.e2e_p95_s:.2f}", f"{r.mean_steps:.2f}", f"{r.mean_output_tokens:.0f}",
        )
    console.print(table)
    console.print(f"tables written to {out}")


if __name__ == "__main__":
    app()
