"""Training progress as Ray metrics, so the Grafana dashboard shows lambda and goodput while a policy trains.

Ray exports a ``ray.util.metrics`` gauge on every node's metrics endpoint with a ``ray_`` prefix:
``sysaware_train_lambda`` is scraped as ``ray_sysaware_train_lambda``. The driver sets them once per
``algo.train()`` iteration (policy/train.py); metrics.csv and TensorBoard stay the record, these are the live view.
"""

from __future__ import annotations

import math

# name (as Ray exports it, without the ``ray_`` prefix) -> (description, the metrics.csv row key it reads)
TRAIN_GAUGES = {
    "sysaware_train_lambda": ("Lagrange multiplier lambda after the iteration's update", "lambda"),
    "sysaware_train_goodput": ("Fraction of the iteration's requests that passed within their SLO", "goodput"),
    "sysaware_train_violation_rate": ("Fraction of the iteration's requests that missed their SLO", "violation_rate"),
    "sysaware_train_iteration": ("Training iterations done (algo.train() calls)", "iteration"),
}
# The names a Prometheus scrape of a Ray node shows (Ray adds the prefix).
TRAIN_METRIC_NAMES = tuple(f"ray_{name}" for name in TRAIN_GAUGES)


class TrainMetrics:
    """One gauge per ``TRAIN_GAUGES`` entry, tagged with the run's name; ``record(row)`` sets them from one
    metrics.csv row (a NaN, e.g. goodput of an iteration without finished requests, leaves the gauge as it was)."""

    def __init__(self, run: str) -> None:
        from ray.util.metrics import Gauge

        self.tags = {"run": run}
        self.gauges = {
            name: (Gauge(name, description=description, tag_keys=("run",)), key)
            for name, (description, key) in TRAIN_GAUGES.items()
        }

    def record(self, row: dict) -> None:
        for gauge, key in self.gauges.values():
            value = row.get(key)
            if isinstance(value, (int, float)) and not math.isnan(float(value)):
                gauge.set(float(value), tags=self.tags)
