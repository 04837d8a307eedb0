"""The ``sysaware`` command line: thin wrappers that validate arguments and call the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sysaware.config import DEFAULT_POOL, ConfigError, PoolConfig, load_pool
from sysaware.serving.ingress_settings import DEFAULT_MAX_BODY_BYTES, IngressSettings, exposure_problem

app = typer.Typer(add_completion=False, no_args_is_help=True, help="System-aware multi-agent LLM orchestration.")
# Piped or logged output (make run, CI) gets wide tables instead of rich's 80-column default, so names are not cut.
console = Console() if sys.stdout.isatty() else Console(width=160)

PoolOption = typer.Option(DEFAULT_POOL, "--pool", help="Pool YAML (models, GPUs, replicas, backend).")
AddressOption = typer.Option(
    None, "--address", help="Run on an existing Ray cluster ('auto', or host:port of its head; with token auth set "
    "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN). Default: a local cluster started for the command.",
)


def _connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` before a pipeline starts, so its Ray tasks run on that cluster's workers (the
    pipelines start a local cluster only when none is connected)."""
    import ray

    if address is None or ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level="warning")
    except (ConnectionError, ValueError, RuntimeError) as e:
        console.print(f"[red]error:[/red] --address {address}: {e}")
        raise typer.Exit(2) from None


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
def calibrate(
    vllm: Path | None = typer.Option(
        None, "--vllm", help="A pool whose model runs on vLLM here (e.g. configs/pool_tiny_cpu.yaml): replay the "
        "calibration trace on it and fit the model's measured step-time profile (resources/step_profiles.json)."
    ),
    model: str | None = typer.Option(None, help="--vllm: the pool's model (default: its first)."),
    step_log: Path | None = typer.Option(None, help="--vllm: refit from a recorded calibration_vllm_log.json (no engine run)."),
    run_dir: Path | None = typer.Option(None, help="--vllm: where the engine's step log goes (default runs/calibrate-<time>)."),
) -> None:
    """Refit the twin's step-time efficiency factors to the vendored Vidur profiles; with --vllm, fit a step-time
    profile to a vLLM engine's own measured steps instead (the `cpu` entry of the tiny CPU pool)."""
    if vllm is None:
        from sysaware.engines.calibration import main

        main()
        return
    from sysaware.engines.fidelity import calibrate_on_vllm
    from sysaware.runs import new_run_dir

    cfg = _load_pool(vllm)
    name = model or cfg.models[0].name
    out = new_run_dir("calibrate", run_dir)
    profile, log = calibrate_on_vllm(cfg, name, out, step_log=step_log)
    console.print(
        f"{profile.key}: {profile.num_steps} steps; step = {profile.overhead_s * 1e3:.3f} ms + "
        f"{profile.prefill_token_s * 1e6:.2f} us/prefill token + {profile.prefill_pair_s * 1e9:.3f} ns/pair + "
        f"{profile.decode_seq_s * 1e6:.2f} us/decode seq + {profile.context_token_s * 1e9:.3f} ns/context token; "
        f"|error| median {profile.median_rel_error:.1%}, P90 {profile.p90_rel_error:.1%}; step log in {out}"
    )


@app.command("twin-check")
def twin_check_cmd(
    pool: Path = typer.Option(Path("configs/pool_tiny_cpu.yaml"), "--pool", help="A pool whose model runs on vLLM here."),
    model: str | None = typer.Option(None, help="The pool's model (default: its first)."),
    loads: str = typer.Option("light,heavy", help="Traces to replay: light, heavy (comma-separated)."),
    seed: int = typer.Option(1),
    noise_floor: bool = typer.Option(False, help="Also replay each trace on vLLM a second time: vLLM against itself."),
    vllm_logs: Path | None = typer.Option(None, help="An earlier check's folder: reuse its recorded vLLM runs (recheck the twin only)."),
    run_dir: Path | None = typer.Option(None, help="Output folder (default runs/twin-check-<time>)."),
) -> None:
    """Replay one trace on vLLM and on its twin (same scheduler limits, the step-time profile fitted by
    `calibrate --vllm`); report scheduling agreement and per-request TTFT/TPOT/queue-time error per load."""
    from sysaware.engines.fidelity import markdown_table, twin_check, verdicts
    from sysaware.runs import new_run_dir

    cfg = _load_pool(pool)
    out = new_run_dir("twin-check", run_dir)
    try:
        rows = twin_check(cfg, model or cfg.models[0].name, out, tuple(x.strip() for x in loads.split(",") if x.strip()),
                          seed=seed, noise_floor=noise_floor, vllm_logs=vllm_logs)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    print(markdown_table(rows))
    console.print(f"written to {out}")



def _parse_models(models: str | None) -> list[str] | None:
    return None if models is None else [m.strip() for m in models.split(",") if m.strip()]


def _connect_or_start_ray(dashboard: bool, outlive_process: bool):
    """A Ray cluster to deploy on: the running one (``ray start``), or a new one. A new one started for a command
    that returns (--no-blocking) is started with ``ray start --head`` so it outlives this process; otherwise it is
    local to this process. Returns (ray context, whether this process owns the cluster)."""
    import subprocess

    import ray

    try:
        return ray.init(address="auto", logging_level="warning"), False
    except ConnectionError:
        pass
    if outlive_process:
        cmd = ["ray", "start", "--head", "--disable-usage-stats", f"--include-dashboard={str(dashboard).lower()}"]
        subprocess.run(cmd, check=True, capture_output=True)
        return ray.init(address="auto", logging_level="warning"), False
    return ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", logging_level="warning"), True


def _http_url(address: str | None) -> str | None:
    if not address:
        return None
    return address if address.startswith("http") else f"http://{address}"


@app.command("serve")
def serve_pool(
    pool: Path = PoolOption,
    time_scale: float = typer.Option(1.0, min=1e-3, help="Twin speed: engine seconds per wall second."),
    port: int = typer.Option(8000, help="HTTP port of Serve's proxy (if Serve already runs, its port stays)."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface the API listens on (0.0.0.0 for every interface: needs API keys)."
    ),
    models: str | None = typer.Option(None, help="Serve only these models of the pool, comma-separated."),
    blocking: bool = typer.Option(True, "--blocking/--no-blocking", help="Wait until Ctrl-C (then tear down)."),
    api_key_file: Path | None = typer.Option(
        None, help="API keys, one a line (with $SYSAWARE_API_KEYS, comma-separated). None: no authentication."
    ),
    allow_unauthenticated: bool = typer.Option(
        False, "--allow-unauthenticated", help="Serve a non-loopback host without API keys (anyone may call it)."
    ),
    max_body_bytes: int = typer.Option(
        DEFAULT_MAX_BODY_BYTES, min=1, help="Largest request body, bytes; larger ones get 413 unparsed."
    ),
    stream_interval: int = typer.Option(
        1, min=1, help="Streams: first token at once, then one chunk per N tokens (vLLM's; 1 = one per engine step)."
    ),
    direct_ingress: bool = typer.Option(
        False,
        "--direct-ingress/--proxy",
        help="The ingress replica serves HTTP itself on --port, skipping Serve's HTTP proxy (Serve 2.60's direct "
        "ingress; the proxy moves to a free port). Needs a Ray this command starts.",
    ),
    transport: str = typer.Option(
        "actor",
        help="How Serve's proxy and handles reach the replicas: actor (Ray actor tasks, Serve's default) or grpc "
        "(Serve's gRPC transport; for the proxy only on a Ray this command starts).",
    ),
    solve: bool = typer.Option(True, "--solve/--no-solve", help="Deploy the orchestrator: POST /v1/solve."),
    solve_policy: str = typer.Option("rl", help="/v1/solve's default executor: rl (trained) or a baseline."),
    solve_admission: str = typer.Option("degrade", help="/v1/solve admission control: degrade, refuse or off."),
) -> None:
    """Deploy the pool on Ray Serve (starting Ray if none runs) and print the API and dashboard URLs."""
    import time

    from ray import serve

    from sysaware.serving.app import APP_NAME, build_app, deploy

    cfg = _load_pool(pool)
    try:
        settings = IngressSettings.from_sources(
            api_key_file, max_body_bytes=max_body_bytes, stream_interval=stream_interval
        )
        problem = exposure_problem(host, settings, allow_unauthenticated)
        if problem:
            raise ValueError(problem)
        from sysaware.serving.orchestrator import SolveSettings

        solve_settings = SolveSettings(policy=solve_policy, admission=solve_admission) if solve else None
        application = build_app(
            cfg, time_scale, models=_parse_models(models), settings=settings, transport=transport, solve=solve_settings
        )
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    from sysaware.serving.app import direct_ingress_url
    from sysaware.serving.replica import direct_ingress_env, transport_env

    # Serve's controller, proxy and ingress read these from the cluster's environment, which a Ray started here
    # inherits.
    os.environ.update(transport_env(transport))
    proxy_port = port
    if direct_ingress:
        os.environ.update(direct_ingress_env(port))
        proxy_port = _free_port()
    ctx, owns_cluster = _connect_or_start_ray(dashboard=True, outlive_process=not blocking)
    served = _parse_models(models) or [m.name for m in cfg.models]
    keep = False
    try:
        console.print(f"deploying {cfg.name} ({len(served)} models, time_scale={time_scale}) ...")
        url = deploy(application, port=proxy_port, host=host)
        if direct_ingress:
            console.print(f"Serve's proxy: {url}")
            url = direct_ingress_url(host, port)
        console.print(f"OpenAI API:  [bold]{url}[/bold]   (try: curl {url}/models)")
        console.print(f"telemetry:   {url}/telemetry    metrics: {url.removesuffix('/v1')}/metrics")
        if solve:
            console.print(f"solve:       POST {url}/solve   (policy {solve_policy}, admission {solve_admission})")
        auth = f"on ({len(settings.api_keys)} keys)" if settings.auth_enabled else "off (no API keys)"
        console.print(f"auth:        {auth}; open paths: {', '.join(settings.open_paths)}")
        dashboard = _http_url(getattr(ctx, "dashboard_url", None))
        console.print(f"dashboard:   {dashboard or 'not running'}")
        if not blocking:
            keep = True
            console.print(f"running in the background; stop with: serve delete {APP_NAME}  (or: serve shutdown -y)")
            return
        console.print("serving; Ctrl-C stops")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping ...")
    except RuntimeError as e:  # e.g. direct ingress on a cluster started without it
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    finally:
        if not keep:
            try:
                serve.delete(APP_NAME)
            except Exception:  # interrupted before the app existed
                pass
            if owns_cluster:
                import ray

                ray.shutdown()


@app.command("solve-demo")
def solve_demo_cmd(
    pool: Path = PoolOption,
    policies: str = typer.Option("rl,best_single", help="Executors to compare, comma-separated ('rl': the trained policy)."),
    tasks: int = typer.Option(24, min=1, help="MBPP test-split tasks (a seeded sample of those with recorded answers)."),
    clients: int = typer.Option(4, min=1, help="Concurrent /v1/solve clients per policy."),
    background: int = typer.Option(300, min=0, help="Closed-loop background clients on the hot model."),
    hot_model: str | None = typer.Option(None, help="The model under background load (default: best_single's)."),
    planner: str = typer.Option("random", help="The orchestrator's planner (same plan per task for every policy)."),
    admission: str = typer.Option("degrade", help="Admission control: degrade, refuse or off."),
    time_scale: float = typer.Option(1.0, min=1e-3, help="Twin speed: engine seconds per wall second."),
    warmup_s: float = typer.Option(10.0, min=0, help="Wall seconds of background load before the first solve."),
    port: int = typer.Option(8000, help="HTTP port of Serve's proxy."),
    seed: int = typer.Option(0),
    run_dir: Path | None = typer.Option(None, help="Where the tables and the PNG go (default runs/solve-demo-<time>)."),
) -> None:
    """The main job: the pool and the orchestrator on the embedded twin, a contended scenario driven through
    POST /v1/solve, the trained policy against the best load-blind baseline: a table, a PNG, the dashboard URL."""
    import asyncio
    import logging
    import time

    import ray
    from ray import serve

    from sysaware.orchestration.context import PolicyResources
    from sysaware.pipelines.evaluate import evaluation_tasks
    from sysaware.pipelines.solve_demo import DemoSettings, plot, run_demo, summarise
    from sysaware.runs import new_run_dir
    from sysaware.serving.app import APP_NAME, build_app, deploy
    from sysaware.serving.orchestrator import SolveSettings
    from sysaware.sim.backend import SimBackend
    from sysaware.tasks.prompts import Strategy

    started = time.perf_counter()
    cfg = _load_pool(pool)
    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    try:
        resources = PolicyResources.default_for(cfg)
        hot = hot_model or resources.quality.best_model(Strategy.CONCISE)
        if hot not in resources.models:
            raise ValueError(f"--hot-model {hot!r} is not in the pool; known: {resources.models}")
        solve = SolveSettings(policy=names[0], planner=planner, admission=admission)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    settings = DemoSettings(names, tasks, clients, background, hot, warmup_s, seed)
    out = new_run_dir("solve-demo", run_dir)
    for name in ("ray", "ray.serve", "ray.serve._private"):  # Serve's per-request and disconnect notices
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", logging_level="error",
                   log_to_driver=False, configure_logging=True)
    dashboard = _http_url(ctx.dashboard_url)
    try:
        console.print(f"deploying {cfg.name} ({len(cfg.models)} models) + the orchestrator, time_scale={time_scale} ...")
        url = deploy(build_app(cfg, time_scale, solve=solve), port=port, log_level="ERROR")
        handles = {m.name: serve.get_deployment_handle(m.name, app_name=APP_NAME) for m in cfg.models}
        task_list = evaluation_tasks(SimBackend(cfg), tasks, seed)
        console.print(f"ready after {time.perf_counter() - started:.0f} s; dashboard: [bold]{dashboard}[/bold]")
        console.print(f"{background} background clients on {hot}; {len(task_list)} MBPP test tasks x {list(names)} "
                      f"through POST {url}/solve, {clients} at a time")
        done = {"n": 0}

        def progress(o) -> None:
            done["n"] += 1
            if done["n"] % max(len(task_list) // 4, 1) == 0:
                console.print(f"  {o.policy}: {done['n']} solves done", highlight=False)

        runs, cost = asyncio.run(run_demo(url, handles, task_list, settings, hot, progress))
    finally:
        serve.shutdown()
        ray.shutdown()
    summary = summarise(runs, seed)
    runs.to_csv(out / "solves.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    title = f"{cfg.name}: {background} clients on {hot}, {len(task_list)} MBPP test tasks via /v1/solve"
    png = plot(runs, summary, out / "solve_demo.png", title)
    table = Table(title=title + " (default SLO: 1.5 x the plan's idle latency)")
    for header in ("policy", "solves", "goodput [95% CI]", "SLO met", "pass", "e2e p50 s", "refused", "errors", "retries"):
        table.add_column(header, justify="left" if header == "policy" else "right")
    for r in summary.itertuples(index=False):
        table.add_row(r.policy, str(r.solves), f"{r.goodput:.2f} [{r.goodput_low:.2f}, {r.goodput_high:.2f}]",
                      f"{r.slo_attainment:.2f}", f"{r.pass_rate:.2f}", f"{r.e2e_p50_s:.1f}", str(r.refused),
                      str(r.errors), str(r.retries))
    console.print(table)
    console.print(f"background: {cost['background_sent']} requests, {cost['background_errors']} errors; "
                  f"wall {time.perf_counter() - started:.0f} s")
    console.print(f"plot: {png}\ntables: {out}\nRay dashboard (while it ran): {dashboard}")


@app.command("load-sweep")
def load_sweep(
    pool: Path = PoolOption,
    levels: str = typer.Option("1,10,50", help="Background clients per model, comma-separated."),
    warmup_s: float = typer.Option(1.0, min=0, help="Engine seconds of warm-up per level."),
    duration_s: float | None = typer.Option(
        None, min=0.1, help="Engine seconds measured per level (default: what --level-wall-s allows)."
    ),
    level_wall_s: float = typer.Option(
        60.0, min=1, help="Wall seconds per level (warm-up included) when --duration-s is not given."
    ),
    time_scale: str = typer.Option(
        "auto",
        help="Twin speed (engine s per wall s) when this command deploys the pool: one value, one per level (the "
        "pool is redeployed when it changes), or 'auto' (slow enough for the streams to keep up, see "
        "sysaware.serving.load_sweep.auto_time_scale). Lower it until the client and engine columns agree.",
    ),
    models: str | None = typer.Option(None, help="Only these models of the pool, comma-separated."),
    url: str | None = typer.Option(None, help="Sweep a pool already serving at this base URL (http://host:port/v1)."),
    port: int = typer.Option(0, help="HTTP port when this command deploys the pool (0: a free one)."),
    compare_sim: bool = typer.Option(True, "--compare-sim/--no-compare-sim", help="Also print the simulated table."),
    seed: int = typer.Option(0),
    run_dir: Path | None = typer.Option(None, help="Where to write the CSVs (default runs/load-sweep-<time>)."),
) -> None:
    """Drive the live pool with N streaming clients per model; TTFT/TPOT p50/p95 per model (engine ms, as the client
    and as the engine measured them) and the telemetry seen, beside the simulated sweep of the same pool."""
    import asyncio

    import pandas as pd
    from tqdm import tqdm

    from sysaware.runs import new_run_dir
    from sysaware.serving import load_sweep as ls

    parsed_levels = _parse_levels(levels)
    cfg = _load_pool(pool)
    names = _parse_models(models)
    if names is not None:
        try:
            cfg = _select(cfg, names)
        except ValueError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
    if url is not None:
        scales: list[float | None] = [None] * len(parsed_levels)  # the pool's own
    elif time_scale == "auto":
        scales = [ls.auto_time_scale(n, len(cfg.models)) for n in parsed_levels]
    else:
        scales = _parse_time_scales(time_scale, len(parsed_levels))
    out = new_run_dir("load-sweep", run_dir)
    deployer = None
    if url is None:
        deployer = _PoolDeployer(cfg, port or _free_port())
    tables, runs = [], []
    try:
        if deployer is None:
            total_wall = None
        elif duration_s is None:
            total_wall = level_wall_s * len(scales)
        else:
            total_wall = sum((warmup_s + duration_s) / s for s in scales)
        bar = tqdm(total=round(total_wall) if total_wall else None, desc="load sweep", unit="s")
        done_wall = 0.0
        for n, scale in zip(parsed_levels, scales):
            level_url = deployer.url_at(scale) if deployer else url
            served, served_scale = asyncio.run(ls.discover(level_url))
            sweep_models = names or served
            missing = [m for m in sweep_models if m not in served]
            if missing:
                console.print(f"[red]error:[/red] the pool at {level_url} does not serve {missing}; it serves {served}")
                raise typer.Exit(2)
            measure_s = duration_s if duration_s is not None else max(level_wall_s * served_scale - warmup_s, 0.1)
            settings = ls.LiveSweepSettings((n,), warmup_s, measure_s, served_scale, seed=seed)

            def progress(p: ls.LevelProgress, base: float = done_wall) -> None:
                bar.n = round(base + p.elapsed_wall_s)
                bar.set_postfix(N=p.concurrency, time_scale=settings.time_scale, done=p.finished_requests,
                                failed=p.failed_requests, refresh=False)  # fmt: skip
                bar.update(0)  # redraws at most every mininterval

            table, level_runs = asyncio.run(ls.sweep(level_url, sweep_models, settings, on_progress=progress))
            tables.append(table.assign(time_scale=served_scale, measure_s=measure_s))
            runs.extend(level_runs)
            done_wall += settings.wall_s(warmup_s + measure_s)
        bar.close()
    finally:
        if deployer is not None:
            deployer.close()
    df = pd.concat(tables, ignore_index=True)
    df.to_csv(out / "load_sweep.csv", index=False)
    ls.requests_frame(runs).to_csv(out / "load_sweep_requests.csv", index=False)
    scales_text = ",".join(f"{s:g}" for s in df.time_scale.unique())
    windows_text = ",".join(f"{w:.3g}" for w in df.measure_s.unique())
    title = (
        f"{cfg.name}: live pool, client-measured (engine ms = wall ms x time_scale {scales_text}; "
        f"windows {windows_text} engine s)"
    )
    print_latency_table(df, title)
    engine_view = df.assign(
        ttft_p50_ms=df.engine_ttft_p50_ms,
        ttft_p95_ms=df.engine_ttft_p95_ms,
        tpot_p50_ms=df.engine_tpot_p50_ms,
        tpot_p95_ms=df.engine_tpot_p95_ms,
    )
    print_latency_table(engine_view, f"{cfg.name}: live pool, engine-reported (same requests)")
    if int(df.failed.sum()):
        console.print(f"[yellow]{int(df.failed.sum())} requests failed; see load_sweep_requests.csv[/yellow]")
    if compare_sim:
        from sysaware.sim.backend import SimBackend
        from sysaware.sim.sweep import SweepSettings, sweep

        # The same window per level as the live run measured (the simulator has no speed limit).
        windows = df.groupby("concurrency").measure_s.first()
        backend = SimBackend(cfg)
        sim = pd.concat(
            [sweep(cfg, SweepSettings((n,), warmup_s, float(windows[n]), seed=seed), backend) for n in parsed_levels],
            ignore_index=True,
        )
        sim.to_csv(out / "sim_sweep.csv", index=False)
        print_latency_table(sim, f"{cfg.name}: simulated (virtual time, same window)")
    console.print(f"tables written to {out}")


def _parse_time_scales(spec: str, num_levels: int) -> list[float]:
    try:
        scales = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--time-scale must be numbers, comma-separated, got {spec!r}") from None
    if len(scales) == 1:
        scales *= num_levels
    if len(scales) != num_levels or any(s <= 0 for s in scales):
        raise typer.BadParameter(f"--time-scale needs one positive value or one per level ({num_levels}), got {spec!r}")
    return scales


class _PoolDeployer:
    """The pool deployed by this command on a Ray it connects to (or starts), redeployed when the time scale
    changes; ``close()`` removes the application (and stops the Ray it started)."""

    def __init__(self, cfg: PoolConfig, port: int) -> None:
        self.cfg = cfg
        self.port = port
        self.scale: float | None = None
        self.url: str | None = None
        _, self.owns_cluster = _connect_or_start_ray(dashboard=False, outlive_process=False)

    def url_at(self, scale: float) -> str:
        from sysaware.serving.app import build_app, deploy

        if scale != self.scale:
            console.print(f"deploying {self.cfg.name} at time_scale={scale:g} ...")
            self.url = deploy(build_app(self.cfg, scale), port=self.port)
            self.scale = scale
        assert self.url is not None
        return self.url

    def close(self) -> None:
        from ray import serve

        from sysaware.serving.app import APP_NAME

        try:
            serve.delete(APP_NAME)
        finally:
            if self.owns_cluster:
                import ray

                ray.shutdown()


def _select(cfg: PoolConfig, names: list[str]) -> PoolConfig:
    from sysaware.serving.app import select_models

    return select_models(cfg, names)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@app.command("profile-pool")
def profile_pool_cmd(
    pool: Path = PoolOption,
    out: Path | None = typer.Option(None, "--out", help="Profile JSON to write (default runs/profile-pool-<time>/profile.json)."),
    tasks: int | None = typer.Option(
        None, "--tasks", min=1, help="MBPP tasks outside the test split, validation first (default: all the backend can answer)."
    ),
    phase2: Path | None = typer.Option(None, "--phase2", help="A collect-metrics run dir: output lengths from its probes."),
    reference: str | None = typer.Option(None, help="Reference model around probed roles (default: best measured coder)."),
    seed: int = typer.Option(0),
) -> None:
    """Measure the pool's profile (quality and output length per model x strategy x role, idle latency per model)
    by running probe workflows through the pool's backend and grading their answers; policies read only this."""
    import time

    from tqdm import tqdm

    from sysaware.orchestration.tables import QualityTable
    from sysaware.pipelines.profile_pool import ProfileSettings, profile_pool
    from sysaware.runs import new_run_dir

    cfg = _load_pool(pool)
    try:
        settings = ProfileSettings(num_tasks=tasks, seed=seed, reference_model=reference, phase2=phase2)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    target = out if out is not None else new_run_dir("profile-pool", None) / "profile.json"
    bar = tqdm(desc="probe workflows", unit="wf")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    started = time.perf_counter()
    try:
        profile = profile_pool(cfg, settings=settings, on_progress=progress)
    except ValueError as e:
        bar.close()
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    bar.close()
    profile.save(target)
    quality = QualityTable.from_profile(profile)
    table = Table(title=f"{cfg.name}: measured quality (pass rate) and idle latency, {len(profile.provenance.task_ids)} tasks")
    for header in ("model", "programmer flash", "concise", "deepthink", "95% CI (concise)", "TTFT base ms", "TPOT ms"):
        table.add_column(header, justify="left" if header == "model" else "right")
    for m in profile.model_names:
        cell, idle = profile.cell(m, "concise", "programmer"), profile.idle(m)
        table.add_row(
            m, *(f"{quality.q(m, s, 'programmer'):.3f}" for s in ("flash", "concise", "deepthink")),
            f"{cell.quality_ci95[0]:.2f}-{cell.quality_ci95[1]:.2f}", f"{idle.ttft_base_s * 1e3:.1f}", f"{idle.tpot_s * 1e3:.1f}",
        )
    console.print(table)
    console.print(f"reference model: {profile.provenance.reference_model}; wall {time.perf_counter() - started:.0f} s")
    console.print(f"profile written to {target}")


@app.command("evaluate")
def evaluate_cmd(
    sim: bool = typer.Option(False, "--sim", help="On the simulated cluster (virtual time); the only driver so far."),
    pool: Path = PoolOption,
    policies: str = typer.Option(
        "random,fixed,best_single,static_qmp,least_queue,greedy,oracle",
        help="Executors, comma-separated; 'rl' is the trained policy shipped for the pool.",
    ),
    levels: str = typer.Option("1,10,50", help="Background closed-loop clients per model, comma-separated."),
    scenarios: str | None = typer.Option(
        None, "--scenarios", help="Contention scenarios (names in --scenario-file, comma-separated; 'all'): every "
        "policy on each, cells as Ray tasks, cached and resumable, report.md with CIs. Replaces --levels/--pool.",
    ),
    scenario_file: Path = typer.Option(Path("configs/scenarios.yaml"), help="The scenarios' definitions."),
    use_ray: bool = typer.Option(True, "--ray/--no-ray", help="Scenario cells as Ray tasks (a local cluster if none)."),
    tasks: int | None = typer.Option(
        None, "--tasks", min=1, help="MBPP test tasks with recorded answers, a seeded sample (default: 40 with "
        "--levels; every one with --scenarios).",
    ),
    planner: str = typer.Option("random", help="Planner (same plan per task for every policy)."),
    slack: float = typer.Option(1.5, min=0.01, help="Budget = slack x the plan's idle latency predicted by the profile."),
    profile: Path | None = typer.Option(None, "--profile", help="Pool profile JSON policies see (default: the shipped one)."),
    interval_s: float = typer.Option(2.0, min=0, help="Virtual seconds between workflow arrivals."),
    warmup_s: float = typer.Option(10.0, min=0, help="Virtual seconds of background load before the first workflow."),
    seed: int = typer.Option(0),
    run_dir: Path | None = typer.Option(None, help="Where the tables go (default runs/evaluate-<time>)."),
    address: str | None = AddressOption,
) -> None:
    """Every policy x background load (--levels) or x contention scenario (--scenarios): goodput, pass@1, SLO
    attainment, e2e latency percentiles, tokens."""
    if not sim:
        console.print("[red]error:[/red] only --sim is available until the live pool driver lands")
        raise typer.Exit(2)
    _connect_ray(address)
    if scenarios is not None:
        _evaluate_scenarios(policies, scenarios, scenario_file, tasks, planner, profile, seed, run_dir, use_ray)
        return
    tasks = 40 if tasks is None else tasks
    from tqdm import tqdm

    import sysaware.policy  # noqa: F401  (registers the trained policy as "rl")
    from sysaware.data.profile import PoolProfile, ProfileError
    from sysaware.orchestration.executors import EXECUTORS
    from sysaware.orchestration.planners import PLANNERS
    from sysaware.pipelines.evaluate import EvalSettings, evaluate, summarise
    from sysaware.runs import new_run_dir

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    if unknown := [p for p in names if p.split("@")[0] not in EXECUTORS]:
        raise typer.BadParameter(f"unknown policies {unknown}; known: {sorted(EXECUTORS)} (greedy@queueing: greedy on the queueing formula)")
    if planner not in PLANNERS:
        raise typer.BadParameter(f"unknown planner {planner!r}; known: {sorted(PLANNERS)}")
    cfg = _load_pool(pool)
    try:
        measured = PoolProfile.load(profile, cfg) if profile is not None else PoolProfile.default_for(cfg)
    except ProfileError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    settings = EvalSettings(names, tuple(_parse_levels(levels)), tasks, planner, slack, warmup_s, interval_s, seed)
    out = new_run_dir("evaluate", run_dir)
    bar = tqdm(total=len(names) * len(settings.levels), desc="policy x load", unit="cell")

    def progress(cost: dict) -> None:
        bar.set_postfix(policy=cost["policy"], N=cost["load"], wall_s=f"{cost['wall_s']:.0f}")
        bar.update()

    runs, steps, cost = evaluate(cfg, settings, on_cell=progress, profile=measured)
    bar.close()
    summary = summarise(runs)
    for name, df in (("runs", runs), ("steps", steps), ("summary", summary), ("cost", cost)):
        df.to_csv(out / f"{name}.csv", index=False)
    table = Table(title=f"{cfg.name}: {tasks} MBPP test tasks, budget = {slack:g} x profile idle latency (virtual time)")
    for header in ("policy", "N", "runs", "pass@1", "SLO att.", "e2e p50 s", "e2e p95 s", "steps", "out tok"):
        table.add_column(header, justify="left" if header == "policy" else "right")
    for r in summary.sort_values(["load"], kind="stable").itertuples(index=False):
        table.add_row(
            r.policy, str(r.load), str(r.runs), f"{r.pass_at_1:.3f}", f"{r.slo_attainment:.3f}",
            f"{r.e2e_p50_s:.2f}", f"{r.e2e_p95_s:.2f}", f"{r.mean_steps:.2f}", f"{r.mean_output_tokens:.0f}",
        )
    console.print(table)
    console.print(f"tables written to {out}")


def _evaluate_scenarios(policies, scenarios, scenario_file, tasks, planner, profile, seed, run_dir, use_ray) -> None:
    import shlex
    import sys

    from tqdm import tqdm

    import sysaware.policy  # noqa: F401  (registers the trained policy as "rl")
    from sysaware.orchestration.executors import EXECUTORS
    from sysaware.orchestration.scenarios import ScenarioError, load_scenarios, select
    from sysaware.pipelines.eval_report import summarise as summarise_cells, write_report
    from sysaware.pipelines.scenario_eval import ScenarioEvalSettings, evaluate_scenarios, tables
    from sysaware.runs import new_run_dir

    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    if unknown := [p for p in names if p.split("@")[0] not in EXECUTORS]:
        raise typer.BadParameter(f"unknown policies {unknown}; known: {sorted(EXECUTORS)}", param_hint="--policies")
    try:
        chosen = select(load_scenarios(scenario_file), None if scenarios == "all" else scenarios)
    except ScenarioError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    settings = ScenarioEvalSettings(
        names, tuple(s.name for s in chosen), str(scenario_file), tasks, planner, seed,
        None if profile is None else str(profile),
    )
    out = new_run_dir("evaluate", run_dir)
    bar = tqdm(total=len(names) * len(chosen), desc="scenario x policy", unit="cell")

    def progress(cost: dict, cached: bool) -> None:
        bar.set_postfix(scenario=cost["scenario"], policy=cost["policy"], wall_s=f"{cost['wall_s']:.0f}",
                        cached=cached)
        bar.update()

    cells = evaluate_scenarios(settings, out, on_cell=progress, use_ray=use_ray)
    bar.close()
    runs, steps, cost = tables(cells)
    summary = summarise_cells(runs)
    for name, df in (("runs", runs), ("steps", steps), ("summary", summary), ("cost", cost)):
        df.to_csv(out / f"{name}.csv", index=False)
    command = "sysaware " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = write_report(summary, runs, steps, cost, out, [s.name for s in chosen if s.contended], command)
    table = Table(title="goodput % [95% CI] (pass and within SLO); Δ vs best load-blind, paired")
    table.add_column("scenario")
    table.add_column("policy")
    for header in ("goodput", "pass@1", "SLO met", "Δ goodput"):
        table.add_column(header, justify="right")
    for r in summary.itertuples(index=False):
        diff = "" if r.goodput_diff != r.goodput_diff else f"{100 * r.goodput_diff:+.1f} [{100 * r.goodput_diff_low:+.1f}, {100 * r.goodput_diff_high:+.1f}]"
        name = r.policy if r.executor in (r.policy, "") else f"{r.policy}: {r.executor}"
        table.add_row(r.scenario, name, f"{100 * r.goodput:.1f} [{100 * r.goodput_low:.1f}, {100 * r.goodput_high:.1f}]",
                      f"{100 * r.pass_at_1:.1f}", f"{100 * r.slo_attainment:.1f}", diff)
    console.print(table)
    console.print(f"report: {report}")


@app.command("train-policy")
def train_policy_cmd(
    config: Path = typer.Option(Path("rllib_configs/default.yaml"), help="Experiment YAML (rllib_configs/)."),
    run_dir: Path | None = typer.Option(None, help="Where metrics, checkpoints and the policy go (default runs/train-policy-<time>)."),
    resume: Path | None = typer.Option(None, help="A checkpoint folder (<run>/checkpoint) to continue from."),
    iterations: int | None = typer.Option(None, min=1, help="Stop after this many iterations in all (default: the config's)."),
    wall_minutes: float | None = typer.Option(None, min=0.1, help="Stop after this many wall minutes (default: the config's)."),
    seed: int | None = typer.Option(None, help="Override the config's seed."),
    init_policy: Path | None = typer.Option(None, help="Start from this policy directory's modules (e.g. imitate-policy's <run>/policy); ignored with --resume."),
    address: str | None = AddressOption,
) -> None:
    """Multi-agent PPO (RLlib) for the planner and executor with the Lagrangian lambda update; metrics.csv,
    TensorBoard (tb/), curves.png, checkpoint/ (resumable) and policy/ (what `evaluate --policies rl` loads)."""
    from sysaware.policy.train import load_config, train
    from sysaware.runs import new_run_dir

    cfg = load_config(config)
    if seed is not None:
        cfg["seed"] = seed
    _connect_ray(address)  # env runners then spread over the cluster's workers
    out = run_dir if resume is not None and run_dir is not None else new_run_dir("train-policy", run_dir)

    def progress(row: dict) -> None:
        console.print(
            f"iter {row['iteration']:>4}  {row['wall_s']:>7.0f} s  requests {row['requests']:>4}  "
            f"goodput {row['goodput']:.3f}  pass {row['pass_rate']:.3f}  violations {row['violation_rate']:.3f}  "
            f"lambda {row['lambda_used']:.3f} -> {row['lambda']:.3f}"
        )

    if init_policy is not None and not (init_policy / "encoder.json").exists():
        raise typer.BadParameter(f"{init_policy} is not a policy directory (no encoder.json)", param_hint="--init-policy")
    outcome = train(cfg, out, resume=resume, iterations=iterations, wall_minutes=wall_minutes, progress=progress,
                    init_policy=init_policy)
    console.print(f"policy in {outcome.policy_dir}; metrics in {out / 'metrics.csv'}; curves in {out / 'curves.png'}")


@app.command("imitate-policy")
def imitate_policy_cmd(
    config: Path = typer.Option(Path("rllib_configs/imitate.yaml"), help="Experiment YAML (rllib_configs/; its imitate: block)."),
    run_dir: Path | None = typer.Option(None, help="Where the decisions and the policy go (default runs/imitate-policy-<time>)."),
    episodes: int | None = typer.Option(None, min=1, help="Oracle-labelled episodes (default: the config's)."),
    dagger_rounds: int | None = typer.Option(None, min=0, help="DAgger rounds after the first fit (default: the config's)."),
    seed: int | None = typer.Option(None, help="Override the config's seed."),
) -> None:
    """Behaviour cloning of the oracle executor on the training environment (train-split tasks), optionally with
    DAgger rounds: a trained executor in <run>/policy (what `evaluate --policies rl@<run>/policy` and
    `train-policy --init-policy` load). No Ray."""
    from sysaware.policy.imitate import imitate
    from sysaware.policy.train import load_config
    from sysaware.runs import new_run_dir

    try:
        cfg = load_config(config)
    except FileNotFoundError:
        raise typer.BadParameter(f"no such config {config}", param_hint="--config") from None
    if seed is not None:
        cfg["seed"] = seed
    out = new_run_dir("imitate-policy", run_dir)

    def progress(ep: int, stats: dict, decisions: int) -> None:
        console.print(f"episode {ep:>3}  {stats.get('scenario', '?'):<16} goodput {stats.get('goodput', 0)}/{stats.get('requests', 0)}  decisions {decisions}")

    policy = imitate(cfg, out, episodes=episodes, dagger_rounds=dagger_rounds, progress=progress)
    console.print(f"policy in {policy}; fit log in {out / 'imitate.json'}")


@app.command("dataset-report")
def dataset_report_cmd(
    data: Path = typer.Option(..., "--data", help="Phase 2 dataset: a collect-metrics run dir or a Parquet folder."),
    out: Path | None = typer.Option(None, "--out", help="Where report.md and the plots go (default: <data>/report)."),
) -> None:
    """Phase 2 dataset report: TTFT/TPOT/output-length distributions per model x concurrency, their correlation
    with queue depth and KV use, DeepThink vs Flash lengths; report.md and PNG plots."""
    from sysaware.pipelines.dataset_report import build_report, load_metrics
    from sysaware.data.metrics_schema import SchemaError

    try:
        df = load_metrics(data)
        path = build_report(df, out if out is not None else data / "report")
    except (SchemaError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(f"{len(df)} probes; report written to {path}")


@app.command("collect-metrics")
def collect_metrics_cmd(
    prompts: Path = typer.Option(..., "--prompts", help="intermediate_prompts.csv from collect-prompts (Phase 1)."),
    pool: Path = PoolOption,
    levels: str = typer.Option("1,10,50", help="Background closed-loop clients per model, comma-separated."),
    models: str | None = typer.Option(None, help="Only these models of the pool, comma-separated."),
    num_prompts: int | None = typer.Option(None, min=1, help="Only the first N harvested prompts (default: all)."),
    repeats: int = typer.Option(1, min=1, help="Probes per (prompt, strategy, model, level)."),
    probe_rate: float = typer.Option(0.5, min=1e-6, help="Probe arrivals per model per engine second (Poisson)."),
    chunk_size: int = typer.Option(256, min=1, help="Probes per Parquet shard (a kill loses at most one chunk)."),
    warmup_s: float = typer.Option(20.0, min=0, help="Engine seconds of background load before a level's probes."),
    seed: int = typer.Option(0),
    csv: bool = typer.Option(False, "--csv", help="Also write metrics/metrics.csv."),
    run_dir: Path | None = typer.Option(None, help="Output folder (default runs/collect-metrics-<time>); rerunning on one resumes it."),
    backend: str = typer.Option("sim", help="sim: the simulated cluster (virtual time); live: the Ray Serve pool."),
    time_scale: float = typer.Option(1.0, min=1e-3, help="live: twin speed, engine seconds per wall second."),
    app_name: str | None = typer.Option(None, help="live: a running Serve application to probe (default: deploy the pool)."),
    parallel: bool = typer.Option(False, "--parallel", help="sim: each load level in its own Ray task (on --address's "
                                  "cluster, or a local one); the same dataset as the serial run."),
    address: str | None = AddressOption,
) -> None:
    """Phase 2: every harvested prompt x strategy x model probed under background load on the simulated cluster or
    the live pool; the served replica's state at submission and the measured TTFT/TPOT/lengths, as Parquet shards +
    manifest."""
    from sysaware.data import dataset_store as store
    from sysaware.pipelines.collect_metrics import MetricsSettings, collect_metrics, load_dataset
    from sysaware.runs import new_run_dir

    cfg = _load_pool(pool)
    try:
        settings = MetricsSettings(
            levels=tuple(_parse_levels(levels)),
            models=None if models is None else tuple(_parse_models(models)),
            num_prompts=num_prompts,
            repeats=repeats,
            probe_rate_per_s=probe_rate,
            chunk_size=chunk_size,
            warmup_s=warmup_s,
            seed=seed,
        )
        if settings.models and (unknown := [m for m in settings.models if m not in {x.name for x in cfg.models}]):
            raise ValueError(f"unknown models {unknown}; the pool has {[x.name for x in cfg.models]}")
        out = new_run_dir("collect-metrics", run_dir)
        store.remove_stale_temp(out)
        before = len(store.existing_keys(out))
        if parallel and backend != "sim":
            raise ValueError("--parallel fans out the simulated pool's levels; it needs --backend sim")
        _connect_ray(address)
        if backend == "sim" and parallel:
            from sysaware.pipelines.collect_metrics import collect_metrics_on_ray

            collect_metrics_on_ray(cfg, prompts, out, settings, write_csv=csv)
        elif backend == "sim":
            collect_metrics(cfg, prompts, out, settings, write_csv=csv)
        elif backend == "live":
            from sysaware.pipelines.live_probes import live_backend_for

            with live_backend_for(cfg, prompts, settings, time_scale, app_name) as live:
                collect_metrics(cfg, prompts, out, settings, backend=live, write_csv=csv)
        else:
            raise ValueError(f"--backend must be sim or live, got {backend!r}")
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    df = load_dataset(out)
    console.print(f"{len(df)} probes ({len(df) - before} new) in {store.dataset_dir(out)}")


@app.command("train-estimators")
def train_estimators_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Phase 2 run folder(s) from collect-metrics (repeatable)."),
    out: Path | None = typer.Option(None, help="Folder for latency-v*/ and length-v*/ (default: shipped resources)."),
    epochs: int = typer.Option(50, min=1),
    seed: int = typer.Option(0),
) -> None:
    """Train F_lat (TTFT/TPOT) and F_len (output tokens) on the train half of the prompt split; save the artifacts."""
    from sysaware.estimators.artifacts import RESOURCE_DIR
    from sysaware.estimators.train import TrainConfig, load_training_data, train_estimators

    df = load_training_data(data)
    target = out or RESOURCE_DIR
    cache = Path(data[0]) / "embeddings-minilm.npz"  # prompt embeddings, reused by the next run on this data
    paths = train_estimators(
        df, target, TrainConfig(epochs=epochs, seed=seed), embedding_cache=cache,
        on_epoch=lambda e, m: console.print(f"{m['kind']} epoch {e}: val_loss {m['val_loss']:.4f}"),
    )
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@app.command("estimator-report")
def estimator_report_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Phase 2 run folder(s) (same as train-estimators)."),
    latency_dir: Path | None = typer.Option(None, help="F_lat artifact (default: shipped)."),
    length_dir: Path | None = typer.Option(None, help="F_len artifact (default: shipped)."),
    plots: Path | None = typer.Option(None, help="Folder for the PNGs (default runs/estimator-report-<time>)."),
) -> None:
    """MAPE and R^2 (TTFT, TPOT), MAE (tokens), P90 coverage: estimators beside naive baselines, per load level."""
    from sysaware.estimators.artifacts import default_dir
    from sysaware.estimators.embeddings import PromptEmbedder
    from sysaware.estimators.report import build_report, format_report
    from sysaware.estimators.train import TrainedEstimator, load_training_data
    from sysaware.runs import new_run_dir

    df = load_training_data(data)
    lat = TrainedEstimator.load(latency_dir or default_dir("latency"), "latency")
    embedder = PromptEmbedder(Path(data[0]) / "embeddings-minilm.npz")  # the cache train-estimators wrote
    length = TrainedEstimator.load(length_dir or default_dir("length"), "length", embedder=embedder)
    report = build_report(df, lat, length, plot_dir=plots or new_run_dir("estimator-report", None))
    console.print(format_report(report), soft_wrap=True)
    for p in report.plots:
        console.print(f"plot: {p}")
    console.print("headline: " + ", ".join(f"{k}={v:.3f}" for k, v in report.headline().items()))


@app.command("tune-estimators")
def tune_estimators_cmd(
    data: list[Path] = typer.Option(..., "--data", help="Phase 2 run folder(s) from collect-metrics (repeatable)."),
    num_samples: int = typer.Option(16, min=1, help="Trials per estimator (random search)."),
    epochs: int = typer.Option(30, min=1, help="Epochs of a trial ASHA never stops (its max_t)."),
    estimator: str = typer.Option("both", help="latency | length | both."),
    max_concurrent: int = typer.Option(2, min=1, help="Trials at once, 1 CPU each."),
    seed: int = typer.Option(0),
    run_dir: Path | None = typer.Option(None, help="Output folder (default runs/tune-estimators-<time>)."),
) -> None:
    """Ray Tune sweep (ASHA) of each estimator's lr, width, depth, dropout, embedding size and batch size; the best
    config retrained and saved under the run folder with tune_results.csv."""
    import ray

    from sysaware.estimators.train import load_training_data
    from sysaware.estimators.tune import TuneSettings, parse_estimators, summary_lines, tune_estimators
    from sysaware.runs import new_run_dir

    try:
        settings = TuneSettings(parse_estimators(estimator), num_samples, epochs, max_concurrent_trials=max_concurrent,
                                seed=seed)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    df = load_training_data(data)
    out = new_run_dir("tune-estimators", run_dir).resolve()
    owns_cluster = False
    if not ray.is_initialized():
        _, owns_cluster = _connect_or_start_ray(dashboard=False, outlive_process=False)
    try:
        outcomes = tune_estimators(df, out, settings, embedding_cache=Path(data[0]) / "embeddings-minilm.npz")
    finally:
        if owns_cluster:
            ray.shutdown()
    for line in summary_lines(outcomes):
        console.print(line, soft_wrap=True)
    console.print(f"tune_results.csv and artifacts in {out}")


if __name__ == "__main__":
    app()
