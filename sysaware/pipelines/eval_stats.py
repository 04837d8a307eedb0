"""Confidence intervals for evaluation tables: percentile bootstrap over requests, and paired differences.

Every policy of a scenario faces the same requests (task, plan, SLO, arrival time, seeds), so two policies are
compared request by request: the paired difference of a 0/1 outcome has far less variance than the difference of
two independent means, and its bootstrap resamples requests, keeping each pair together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """'71.2 [66.0, 76.1]' (percent by default)."""
        return f"{self.mean * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def bootstrap_mean(
    values, resamples: int = DEFAULT_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Estimate:
    """The mean of ``values`` with a percentile bootstrap interval (resampling values with replacement)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def paired_difference(
    a, b, resamples: int = DEFAULT_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Estimate:
    """mean(a - b) over paired observations (the same request under two policies), with a bootstrap interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, resamples, confidence, seed)
