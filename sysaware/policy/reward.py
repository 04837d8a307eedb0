"""The CMDP's reward and its Lagrange multiplier.

    maximise E[Q]  subject to  P(e2e latency > SLO) <= delta

Lagrangian relaxation: the agents maximise E[Q - lambda x C], and lambda follows dual ascent on the constraint,

    lambda <- clip(lambda + lr x (violation_rate - delta), 0, lambda_max)

after every training iteration, with violation_rate measured on the requests that iteration finished. So lambda
rises while the policy misses the SLO more often than delta and decays back toward 0 once it keeps it: the price of
latency is learned, not hand-set.

Per-step reward (executor), R_t = Q_sem - lambda x P_latency(L_sys, b_t):
- Q_sem: the ground truth, once, at the request's end: 1 if the answer passes the task's hidden asserts in the
  sandbox, else 0. Dense per-step shaping ``quality_shaping x (q(chosen) - mean q over the step's valid
  candidates)`` (``quality_advantage``) with q from the measured pool profile (PolicyResources), never from the
  simulator's parameters: zero-mean over a uniform choice, so it steers toward the profile's better cells without
  changing what the sandbox verdict pays.
- P_latency, per step: the call's overrun of its per-step share of the remaining budget, as a fraction of the SLO,
  max(0, L_step - b_t / steps_left) / SLO (the "approaches or exceeds the remaining budget" penalty, measured, not
  estimated: L_step is the call's own end-to-end latency); at the end: 1 if the request missed its SLO.
The planner's reward is the request's outcome, Q_sem - lambda x 1[missed SLO], delivered at the request's end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class LagrangeMultiplier:
    value: float = 1.0
    lr: float = 2.0  # lambda per unit of (violation rate - delta) per iteration
    delta: float = 0.01  # target violation rate
    max_value: float = 20.0
    history: list[dict] | None = None

    def update(self, violations: int, requests: int) -> float:
        """One dual-ascent step on the measured violation rate; no requests -> no step."""
        if requests <= 0:
            return self.value
        rate = violations / requests
        self.value = float(min(max(self.value + self.lr * (rate - self.delta), 0.0), self.max_value))
        if self.history is not None:
            self.history.append({"requests": requests, "violation_rate": rate, "lambda": self.value})
        return self.value

    def state(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LagrangeMultiplier":
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class RewardConfig:
    quality_shaping: float = 1.0  # weight of the profile's quality advantage of the chosen cell, per step
    step_penalty: float = 0.5  # weight of the per-step overrun penalty (times lambda)
    violation_penalty: float = 1.0  # weight of the end-of-request SLO miss (times lambda)


def step_overrun(latency_s: float, remaining_budget_s: float, steps_left: int, slo_s: float) -> float:
    """P_latency of one call: its overrun of the per-step share of the budget it was given, in SLOs (>= 0)."""
    share = remaining_budget_s / max(steps_left, 1)
    return max(0.0, latency_s - max(share, 0.0)) / max(slo_s, 1e-6)


def step_reward(cfg: RewardConfig, lam: float, overrun: float, quality_gain: float = 0.0) -> float:
    return cfg.quality_shaping * quality_gain - lam * cfg.step_penalty * overrun


def final_reward(cfg: RewardConfig, lam: float, passed: bool, violated: bool) -> float:
    return float(passed) - lam * cfg.violation_penalty * float(violated)


def quality_advantage(q: np.ndarray, mask: np.ndarray, chosen: int) -> float:
    """q(chosen) - mean q over the valid candidates (mask > 0): the per-step shaping term, in quality units."""
    valid = q[mask > 0]
    return float(q[chosen] - valid.mean()) if valid.size else 0.0
