"""The orchestrator's Prometheus metrics, through Ray's metrics API (``ray.util.metrics``): Ray exports them on
every node's metrics endpoint with the ``ray_`` prefix (counters also get ``_total``), beside Serve's own, so the
cluster's Prometheus scrapes them with no extra port. ``SOLVE_METRIC_NAMES`` is the exported names, for
dashboards and their tests."""

from __future__ import annotations

from collections import Counter as Tally

# Engine seconds: a solve of one to five agent calls takes ~1-60 s.
E2E_BOUNDARIES_S = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]

SOLVE_METRIC_NAMES = (
    "ray_sysaware_solve_requests_total",  # {outcome, policy}: passed, failed, ungraded, refused_422/503, error
    "ray_sysaware_solve_goodput_total",  # {policy}: passed within the SLO
    "ray_sysaware_solve_slo_misses_total",  # {policy}: finished after the SLO
    "ray_sysaware_solve_retries_total",  # {policy}: model calls sent again after their replica died
    "ray_sysaware_solve_e2e_latency_s",  # histogram {policy}: engine s
    "ray_sysaware_solve_in_flight",  # gauge: solves running in this orchestrator replica
)


class SolveMetrics:
    """The metrics of one orchestrator replica; ``counts`` keeps the same numbers in process (tests, benchmarks)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.requests = Counter("sysaware_solve_requests", "Solves by outcome.", tag_keys=("outcome", "policy"))
        self.goodput = Counter("sysaware_solve_goodput", "Solves passed within their SLO.", tag_keys=("policy",))
        self.slo_misses = Counter("sysaware_solve_slo_misses", "Solves finished after their SLO.", tag_keys=("policy",))
        self.retries = Counter("sysaware_solve_retries", "Model calls retried after a replica died.", tag_keys=("policy",))
        self.e2e = Histogram(
            "sysaware_solve_e2e_latency_s", "Solve end-to-end latency, engine s.", boundaries=E2E_BOUNDARIES_S,
            tag_keys=("policy",),
        )
        self.in_flight = Gauge("sysaware_solve_in_flight", "Solves running in this orchestrator replica.")
        self.counts: Tally[str] = Tally()
        self._running = 0

    def started(self) -> None:
        self._running += 1
        self.in_flight.set(self._running)

    def ended(self) -> None:
        self._running -= 1
        self.in_flight.set(self._running)

    def outcome(self, outcome: str, policy: str) -> None:
        self.requests.inc(1, tags={"outcome": outcome, "policy": policy})
        self.counts[outcome] += 1

    def finished(self, policy: str, e2e_s: float, slo_met: bool, passed: bool | None, retries: int) -> None:
        tags = {"policy": policy}
        self.e2e.observe(e2e_s, tags=tags)
        if not slo_met:
            self.slo_misses.inc(1, tags=tags)
            self.counts["slo_misses"] += 1
        if slo_met and passed:
            self.goodput.inc(1, tags=tags)
            self.counts["goodput"] += 1
        if retries:
            self.retries.inc(retries, tags=tags)
            self.counts["retries"] += retries
        self.outcome("ungraded" if passed is None else ("passed" if passed else "failed"), policy)
