"""Config -> builder -> application: the pool as one Ray Serve application.

``build_app(pool)`` binds one deployment per model (``deployment_for``: the pool's replica count, the latency-aware
router) and the FastAPI ingress over their handles. ``build(AppArgs)`` is the same for Serve's own tools::

    serve run serve_app:build pool=configs/pool_twin.yaml time_scale=5 models=mistral-7b-instruct,wizardlm-13b
    serve deploy configs/serve_twin.yaml

``deploy(app, port)`` starts Serve's HTTP proxy on a chosen port and runs the application (the CLI and tests).
``IngressSettings`` (API keys, body limit) go to the ingress through ``build_app(settings=...)``; ``build`` reads the
keys from ``$SYSAWARE_API_KEYS`` and ``api_key_file`` where the application is built (for ``serve deploy``, on the
cluster), so a Serve config never holds a key.
Building touches no Ray state, so ``serve run`` can import the module before it connects; the telemetry actor is
created here when Ray is already up, and otherwise by the first replica or ingress that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve import Application

from sysaware.config import DEFAULT_POOL, REPO_ROOT, PoolConfig, load_pool
from sysaware.serving.ingress_settings import DEFAULT_MAX_BODY_BYTES, DEFAULT_OPEN_PATHS, IngressSettings

APP_NAME = "sysaware"
INGRESS_NAME = "ingress"
# Every open stream holds a slot: a load sweep at 50 clients x 5 models is 250, an executor adds its own.
INGRESS_MAX_ONGOING_REQUESTS = 2048


class AppArgs(BaseModel):
    """Arguments of the pool application (``serve run serve_app:build key=value ...`` or a Serve config's ``args``)."""

    model_config = ConfigDict(extra="forbid")

    pool: str = Field(
        default=str(DEFAULT_POOL),
        description="Pool YAML: models, GPUs, replicas, backend. A relative path is looked up from the working "
        "directory, then from the repository root (Serve builds applications in its own worker's directory).",
    )
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="Twin speed: engine seconds per wall second (1 = real time, 10 = ten times faster).",
    )
    models: list[str] | None = Field(default=None, description="Serve only these models of the pool (comma-separated).")
    replicas: int | None = Field(default=None, gt=0, description="Replicas per model, overriding the pool file.")
    health_check_period_s: float = Field(
        default=1.0, gt=0, description="How often Serve checks each model replica; a dead one is replaced after it."
    )
    ingress_max_ongoing_requests: int = Field(
        default=INGRESS_MAX_ONGOING_REQUESTS,
        gt=0,
        description="Concurrent HTTP requests (open streams) the ingress takes.",
    )
    api_key_file: str | None = Field(
        default=None,
        description="File of API keys (one a line, # comments), read where the app is built, with $SYSAWARE_API_KEYS. "
        "No key from either: authentication is off.",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, gt=0, description="Largest request body, bytes (larger: 413, unparsed)."
    )
    open_paths: list[str] = Field(
        default=list(DEFAULT_OPEN_PATHS), description="Paths served without a key (comma-separated)."
    )
    stream_interval: int = Field(
        default=1, ge=1, description="Streamed chunks: one per engine step (1), or per this many tokens (vLLM's)."
    )
    same_loop: bool = Field(
        default=False,
        description="Run the deployments' code and routers on Serve's own event loop (replica.SAME_LOOP_ENV). Off: "
        "measured within noise on 2 cores (bench_serving_overhead.py), and blocking code would then stall Serve.",
    )
    transport: Literal["actor", "grpc"] = Field(
        default="actor",
        description="How Serve's handles (and, when the cluster's environment says so, its HTTP proxy) reach the "
        "replicas: Ray actor tasks (Serve's default) or Serve's gRPC transport (replica.GRPC_ENV; measured in "
        "bench_serving_overhead.py).",
    )
    solve: bool = Field(default=True, description="Deploy the orchestrator and serve POST /v1/solve.")
    solve_policy: str = Field(default="rl", description="/v1/solve's default executor ('rl' or a baseline name).")
    solve_admission: str = Field(
        default="degrade", description="/v1/solve admission control: degrade, refuse or off (README, /v1/solve)."
    )

    def solve_settings(self):
        from sysaware.serving.orchestrator import SolveSettings

        return SolveSettings(policy=self.solve_policy, admission=self.solve_admission) if self.solve else None

    def ingress_settings(self) -> IngressSettings:
        return IngressSettings.from_sources(
            self.api_key_file,
            max_body_bytes=self.max_body_bytes,
            open_paths=tuple(self.open_paths),
            stream_interval=self.stream_interval,
        )

    @field_validator("pool")
    @classmethod
    def _resolve_pool(cls, value: str) -> str:
        path = Path(value)
        if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
            return str(REPO_ROOT / path)
        return value

    @field_validator("models", "open_paths", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        # Serve's CLI passes every argument as a string.
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value


def select_models(pool: PoolConfig, models: list[str] | None = None, replicas: int | None = None) -> PoolConfig:
    """A sub-pool: only ``models`` (in the pool's order), each with ``replicas`` replicas if given; re-validated."""
    if models is not None:
        unknown = [m for m in models if m not in {d.name for d in pool.models}]
        if unknown:
            raise ValueError(f"unknown models {unknown}; the pool has {[d.name for d in pool.models]}")
    raw = pool.model_dump(mode="json")
    raw["models"] = [m for m in raw["models"] if models is None or m["name"] in models]
    if replicas is not None:
        for m in raw["models"]:
            m["replicas"] = replicas
    return PoolConfig.model_validate(raw)


def build_app(
    pool: PoolConfig | str | Path = DEFAULT_POOL,
    time_scale: float = 1.0,
    *,
    models: list[str] | None = None,
    replicas: int | None = None,
    health_check_period_s: float = 1.0,
    ingress_max_ongoing_requests: int = INGRESS_MAX_ONGOING_REQUESTS,
    settings: IngressSettings | None = None,
    same_loop: bool = False,
    transport: str = "actor",
    solve: "SolveSettings | bool | None" = None,
) -> Application:
    """The pool application: a deployment per model (named after it) and the ingress bound to their handles.
    ``settings``: the ingress's API keys and limits; None is no keys (for a loopback-only server) and the default
    limits. ``same_loop``: the deployments' user code and routers run on Serve's own loop (``SAME_LOOP_ENV``;
    False is Ray Serve's default, separate threads and loops). ``transport``: how the deployments' handles reach
    the replicas (``replica.TRANSPORTS``: ``actor``, Serve's default, or ``grpc``); Serve's HTTP proxy follows the
    cluster's own environment (``sysaware serve --transport grpc`` sets it for a Ray it starts). ``solve``: also deploy the orchestrator
    (``POST /v1/solve``) with these settings (True: the defaults); off by default, so the plain OpenAI-compatible
    pool starts without loading the policy."""
    from sysaware.serving.ingress import Ingress
    from sysaware.serving.replica import actor_options, deployment_for, transport_env

    if time_scale <= 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    transport_env(transport)  # an unknown transport: ValueError naming it, before anything is built
    config = pool if isinstance(pool, PoolConfig) else load_pool(pool)
    if models is not None or replicas is not None:
        config = select_models(config, models, replicas)
    _create_telemetry_if_connected()

    pool_dict = config.model_dump(mode="json")  # plain data crosses to the replicas, which re-validate it
    handles = {
        m.name: deployment_for(
            m, health_check_period_s=health_check_period_s, same_loop=same_loop, transport=transport
        ).bind(pool_dict, m.name, time_scale)
        for m in config.models
    }
    ingress = serve.deployment(Ingress).options(
        name=INGRESS_NAME,
        ray_actor_options=actor_options(same_loop, transport),
        max_ongoing_requests=ingress_max_ongoing_requests,
    )
    solver = None
    if solve:
        from sysaware.serving.orchestrator import ORCHESTRATOR_NAME, Orchestrator, SolveSettings

        solve_settings = SolveSettings() if solve is True else solve
        solver = serve.deployment(Orchestrator).options(
            name=ORCHESTRATOR_NAME,
            ray_actor_options=actor_options(transport=transport),
            max_ongoing_requests=ingress_max_ongoing_requests,
            health_check_period_s=health_check_period_s,
        ).bind(pool_dict, handles, time_scale, solve_settings.model_dump(mode="json"))
    return ingress.bind(pool_dict, handles, time_scale, settings, solver=solver)


def build(args: AppArgs) -> Application:
    """Serve's application builder (exactly one argument, validated by pydantic from ``key=value`` pairs)."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    return build_app(
        args.pool,
        args.time_scale,
        models=args.models,
        replicas=args.replicas,
        health_check_period_s=args.health_check_period_s,
        ingress_max_ongoing_requests=args.ingress_max_ongoing_requests,
        settings=args.ingress_settings(),
        same_loop=args.same_loop,
        transport=args.transport,
        solve=args.solve_settings(),
    )


def _create_telemetry_if_connected() -> None:
    import ray

    if ray.is_initialized():
        from sysaware.serving.telemetry import get_or_create_telemetry

        get_or_create_telemetry()


def deploy(
    app: Application,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    name: str = APP_NAME,
    log_level: str = "WARNING",
) -> str:
    """Run ``app`` on the connected Ray cluster and return the API's base URL (``http://host:port/v1``).

    Serve's HTTP proxy binds once per cluster: if Serve already runs, its port stays and ``port`` is ignored, so
    the URL returned is the one the proxy really listens on.
    """
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        app,
        name=name,
        route_prefix="/",
        logging_config={"enable_access_log": False, "log_level": log_level},
    )
    http = _proxy_http_options()
    return f"http://{http.get('host', host)}:{http.get('port', port)}/v1"


def direct_ingress_url(host: str, port: int, timeout_s: float = 120.0) -> str:
    """The API's base URL once the ingress replica answers ``/health`` on ``port`` itself (direct ingress:
    ``replica.direct_ingress_env``), or RuntimeError saying why it may not: the cluster was started without it."""
    import time

    import httpx

    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return f"{url}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"no ingress answered on {url} within {timeout_s:.0f} s: direct ingress needs a Ray cluster started with "
        f"RAY_SERVE_ENABLE_DIRECT_INGRESS=1, RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT={port} and "
        f"RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT={port + 1} in its environment (replica.direct_ingress_env; "
        f"sysaware serve sets them for a Ray it starts, not for one already running)"
    )


def _proxy_http_options() -> dict:
    """The HTTP options Serve's controller actually uses (they may predate this process's request)."""
    try:
        from ray.serve.context import _get_global_client

        config = _get_global_client().http_config
        return {"host": config.host, "port": config.port}
    except Exception:  # private API: fall back to what was asked
        return {}
