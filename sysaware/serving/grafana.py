"""The Grafana dashboard over what the pool exports, built from one table (``ROWS``: one line per panel).

    python -m sysaware.serving.grafana deploy/grafana/sysaware.json

Two Prometheus sources feed it (deploy/prometheus/prometheus.yml scrapes both):
- the ingress's ``/metrics`` (serving/prometheus.py): vLLM's names (``vllm:*``) per ``model_name``;
- every Ray node's metrics endpoint: Ray's own and ``ray.util.metrics`` ones with a ``ray_`` prefix: the telemetry
  actor's ``ray_sysaware_*`` (serving/telemetry.py), Serve's ``ray_serve_*`` and, while a policy trains,
  ``ray_sysaware_train_*`` (policy/train_metrics.py).

Why a table in code and not a hand-edited JSON: tests/test_grafana.py parses every query and checks each metric
name against ``exported_metric_names()``, read from the code that exports them, so a renamed metric fails a test
instead of leaving an empty panel.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

RATE = "[1m]"  # rate window: a few scrape intervals (deploy/prometheus scrapes every 10 s)


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str  # PromQL
    unit: str  # Grafana unit id: s, percentunit, reqps, short, none
    legend: str = "{{model_name}}"


# One line per panel: (title, PromQL, unit[, legend]). Rows of the grid are filled two panels at a time.
ROWS: tuple[Panel, ...] = (
    Panel("Requests running (batch) per model", "sum by (model_name) (vllm:num_requests_running)", "short"),
    Panel("Requests waiting (queue) per model", "sum by (model_name) (vllm:num_requests_waiting)", "short"),
    Panel("KV-cache use per model (mean over replicas)", "avg by (model_name) (vllm:kv_cache_usage_perc)",
          "percentunit"),
    Panel("Preemptions per second", "sum by (model_name) (rate(vllm:num_preemptions_total" + RATE + "))", "short"),
    Panel("TTFT p99", "histogram_quantile(0.99, sum by (le, model_name) "
          "(rate(vllm:time_to_first_token_seconds_bucket" + RATE + ")))", "s", "p99 {{model_name}}"),
    Panel("TTFT p50", "histogram_quantile(0.5, sum by (le, model_name) "
          "(rate(vllm:time_to_first_token_seconds_bucket" + RATE + ")))", "s", "p50 {{model_name}}"),
    Panel("TPOT (inter-token latency) p99", "histogram_quantile(0.99, sum by (le, model_name) "
          "(rate(vllm:inter_token_latency_seconds_bucket" + RATE + ")))", "s", "p99 {{model_name}}"),
    Panel("TPOT (inter-token latency) p50", "histogram_quantile(0.5, sum by (le, model_name) "
          "(rate(vllm:inter_token_latency_seconds_bucket" + RATE + ")))", "s", "p50 {{model_name}}"),
    Panel("End-to-end latency p99", "histogram_quantile(0.99, sum by (le, model_name) "
          "(rate(vllm:e2e_request_latency_seconds_bucket" + RATE + ")))", "s", "p99 {{model_name}}"),
    Panel("Request rate (finished requests/s)", "sum by (model_name) (rate(vllm:request_success_total" + RATE + "))",
          "reqps"),
    Panel("Generated tokens/s", "sum by (model_name) (rate(vllm:generation_tokens_total" + RATE + "))", "short"),
    Panel("HTTP errors/s (Serve proxy)", "sum by (route, error_code) "
          "(rate(ray_serve_num_http_error_requests_total" + RATE + "))", "reqps", "{{route}} {{error_code}}"),
    Panel("Deployment errors/s", "sum by (deployment) (rate(ray_serve_deployment_error_counter_total" + RATE + "))",
          "reqps", "{{deployment}}"),
    Panel("Stale replicas (stopped reporting)", "sum by (model) (ray_sysaware_replica_stale)", "short", "{{model}}"),
    Panel("Telemetry push interval p99 (ms)", "histogram_quantile(0.99, sum by (le, model) "
          "(rate(ray_sysaware_telemetry_push_interval_ms_bucket" + RATE + ")))", "ms", "{{model}}"),
    Panel("Serving overhead p50 per hop (client TTFT - engine TTFT)", "histogram_quantile(0.5, sum by (le, hop) "
          "(rate(sysaware:serving_overhead_seconds_bucket" + RATE + ")))", "s", "{{hop}}"),
    Panel("Solves: goodput (passed within SLO) per policy", "sum by (policy) (rate(ray_sysaware_solve_goodput_total"
          + RATE + ")) / sum by (policy) (rate(ray_sysaware_solve_requests_total" + RATE + "))", "percentunit",
          "{{policy}}"),
    Panel("Solves: SLO misses/s", "sum by (policy) (rate(ray_sysaware_solve_slo_misses_total" + RATE + "))", "reqps",
          "{{policy}}"),
    Panel("Solves by outcome/s (passed, failed, refused, error)", "sum by (outcome) "
          "(rate(ray_sysaware_solve_requests_total" + RATE + "))", "reqps", "{{outcome}}"),
    Panel("Solve end-to-end latency p95", "histogram_quantile(0.95, sum by (le, policy) "
          "(rate(ray_sysaware_solve_e2e_latency_s_bucket" + RATE + ")))", "s", "{{policy}}"),
    Panel("Solves in flight", "sum(ray_sysaware_solve_in_flight)", "short", "solves"),
    Panel("Solve model calls retried/s (replica died)", "sum by (policy) (rate(ray_sysaware_solve_retries_total"
          + RATE + "))", "reqps", "{{policy}}"),
    Panel("Training: lambda", "ray_sysaware_train_lambda", "none", "{{run}}"),
    Panel("Training: goodput (pass within SLO)", "ray_sysaware_train_goodput", "percentunit", "{{run}}"),
    Panel("Training: SLO violation rate", "ray_sysaware_train_violation_rate", "percentunit", "{{run}}"),
    Panel("Training: iteration", "ray_sysaware_train_iteration", "none", "{{run}}"),
)


# ---- what the code exports ---------------------------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _expand(name: str, kind: str) -> set[str]:
    """A metric family as the series names a query can use (a counter ``x`` is scraped as ``x_total``)."""
    return {name + s for s in _SUFFIXES[kind]}


def pool_metric_names() -> set[str]:
    """The ingress's ``/metrics`` families (serving/prometheus.py), read from its own exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    from sysaware.engines.types import TelemetrySnapshot
    from sysaware.serving.prometheus import PoolMetrics

    text = PoolMetrics().render(TelemetrySnapshot(0.0, 0.5, {})).decode()
    return {n for f in text_string_to_metric_families(text) for n in _expand(f.name, f.type)}


def ray_metric_names(metrics: Iterable[object]) -> set[str]:
    """``ray.util.metrics`` objects as a Ray node exports them: ``ray_`` + name (+ ``_total`` for counters)."""
    names: set[str] = set()
    for m in metrics:
        names |= _expand("ray_" + m._name, type(m).__name__.lower())  # Ray keeps the name it was given in ``_name``
    return names


def telemetry_metric_names() -> set[str]:
    from sysaware.serving.telemetry import _RayMetrics

    return ray_metric_names(vars(_RayMetrics()).values())


def train_metric_names() -> set[str]:
    from sysaware.policy.train_metrics import TRAIN_METRIC_NAMES

    return set(TRAIN_METRIC_NAMES)


def solve_metric_names() -> set[str]:
    """The orchestrator's ``ray.util.metrics`` (serving/solve_metrics.py), as a Ray node exports them."""
    from sysaware.serving.solve_metrics import SolveMetrics

    return ray_metric_names(m for m in vars(SolveMetrics()).values() if hasattr(m, "_name"))


def serve_metric_names() -> set[str]:
    """Ray Serve's own metrics, read from Ray's source: every ``"serve_..."`` name it registers (``{protocol_name}``
    is http or grpc), in each exported form."""
    import ray.serve

    root = Path(ray.serve.__file__).parent
    names: set[str] = set()
    for path in root.rglob("*.py"):
        if "tests" in path.parts:
            continue
        for raw in re.findall(r"""f?["'](serve_[a-z_{}]+)["']""", path.read_text(errors="replace")):
            for protocol in ("http", "grpc"):
                base = "ray_" + raw.replace("{protocol_name}", protocol)
                if "{" not in base:
                    names |= {base + s for suffixes in _SUFFIXES.values() for s in suffixes}
    return names


# Every source of names a panel may use; a new exporter adds one line here.
NAME_SOURCES: tuple[Callable[[], set[str]], ...] = (
    pool_metric_names,
    telemetry_metric_names,
    solve_metric_names,
    train_metric_names,
    serve_metric_names,
)


def exported_metric_names() -> set[str]:
    return set().union(*(source() for source in NAME_SOURCES))


def query_metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression reads (parsed with promql-parser; a syntax error raises ValueError)."""
    import promql_parser

    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


# ---- the dashboard JSON ------------------------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel_json(panel: Panel, index: int) -> dict:
    width, height = 12, 8
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "datasource": DATASOURCE,
        "gridPos": {"x": (index % 2) * width, "y": (index // 2) * height, "w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": "A", "datasource": DATASOURCE, "expr": panel.expr, "legendFormat": panel.legend}],
    }


def dashboard(rows: Iterable[Panel] = ROWS) -> dict:
    """A Grafana dashboard (schema 39) with a Prometheus data-source variable, importable as is."""
    return {
        "uid": "sysaware",
        "title": "sysaware: pool, serving and training",
        "tags": ["sysaware", "vllm", "ray"],
        "schemaVersion": 39,
        "editable": True,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": [panel_json(p, i) for i, p in enumerate(rows)],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sysaware.serving.grafana OUT.json", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"{len(ROWS)} panels -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
