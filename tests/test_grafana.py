"""The Grafana dashboard: every panel's PromQL parses and reads only metrics the code exports; the checked-in JSON
is what the ROWS table builds; and a Ray node really exports our ray.util.metrics with the ``ray_`` prefix."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from sysaware.serving import grafana

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return grafana.exported_metric_names()


def test_every_panel_parses_and_reads_only_exported_metrics(exported):
    for panel in grafana.ROWS:
        names = grafana.query_metric_names(panel.expr)
        assert names, f"{panel.title!r}: no metric in {panel.expr!r}"
        assert names <= exported, f"{panel.title!r} reads {sorted(names - exported)}, which nothing exports"


def test_the_check_catches_a_wrong_name_and_bad_syntax(exported):
    # vLLM's counter is exported as vllm:request_success_total; the bare family name is not a series.
    assert not grafana.query_metric_names("rate(vllm:request_success[1m])") <= exported
    assert "vllm:request_success_total" in exported and "ray_sysaware_num_requests_waiting" in exported
    with pytest.raises(ValueError):
        grafana.query_metric_names("sum by (model_name (vllm:num_requests_running)")


def test_the_issue_asks_for_these_panels():
    exprs = " ".join(p.expr for p in grafana.ROWS)
    for needed in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                   "histogram_quantile", "vllm:time_to_first_token_seconds_bucket",
                   "vllm:inter_token_latency_seconds_bucket", "vllm:request_success_total", "error",
                   "ray_sysaware_train_lambda", "ray_sysaware_train_goodput", "ray_sysaware_train_violation_rate"):
        assert needed in exprs, needed


def test_the_checked_in_dashboard_is_what_rows_builds():
    on_disk = json.loads((REPO / "deploy/grafana/sysaware.json").read_text())
    assert on_disk == grafana.dashboard(), "regenerate: python -m sysaware.serving.grafana deploy/grafana/sysaware.json"
    assert [p["targets"][0]["expr"] for p in on_disk["panels"]] == [p.expr for p in grafana.ROWS]


def test_a_ray_node_exports_the_training_gauges_with_the_ray_prefix(ray_session):
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    from sysaware.policy.train_metrics import TRAIN_METRIC_NAMES

    @ray.remote(num_cpus=0)
    class Trainer:  # the metrics are set where training runs: a Ray worker process, as in `ray job submit`
        def __init__(self) -> None:
            from sysaware.policy.train_metrics import TrainMetrics

            self.metrics = TrainMetrics("grafana-test")

        def record(self, row: dict) -> None:
            self.metrics.record(row)

    trainer = Trainer.remote()
    ray.get(trainer.record.remote({"iteration": 3, "lambda": 2.5, "goodput": 0.75, "violation_rate": float("nan")}))
    port = ray.nodes()[0]["MetricsExportPort"]
    want = {"ray_sysaware_train_lambda": 2.5, "ray_sysaware_train_goodput": 0.75, "ray_sysaware_train_iteration": 3.0}
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 20.0
    while seen != want and time.monotonic() < deadline:
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        seen = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name in TRAIN_METRIC_NAMES and s.labels.get("run") == "grafana-test"
        }
    assert seen == want  # violation_rate was NaN: never set, so not exported
    ray.kill(trainer)
