"""The bootstrap on synthetic data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sysaware.pipelines.eval_stats import bootstrap_mean, paired_difference


def test_bootstrap_covers_a_known_rate_with_the_normal_approximations_width():
    rng = np.random.default_rng(7)
    x = rng.random(4000) < 0.7  # Bernoulli(0.7)
    est = bootstrap_mean(x, seed=1)
    assert est.low < 0.7 < est.high
    expected_half_width = 1.96 * math.sqrt(0.7 * 0.3 / x.size)  # ~0.0142
    assert (est.high - est.low) / 2 == pytest.approx(expected_half_width, rel=0.15)
    assert est.n == 4000 and bootstrap_mean(x, seed=1) == est  # seeded: reproducible


def test_coverage_is_close_to_95_percent_over_repeated_experiments():
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(200):
        est = bootstrap_mean(rng.random(300) < 0.4, resamples=400, seed=i)
        covered += est.low < 0.4 < est.high
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_differences_see_a_small_effect_that_independent_intervals_would_not():
    rng = np.random.default_rng(11)
    base = rng.random(500) < 0.5
    better = base.copy()
    flip = np.flatnonzero(~base)[:25]  # the second policy also passes 25 requests the first failed: +5 points
    better[flip] = True
    diff = paired_difference(better, base, seed=2)
    assert diff.mean == pytest.approx(25 / 500) and diff.excludes_zero()
    a, b = bootstrap_mean(better, seed=2), bootstrap_mean(base, seed=2)
    assert a.low < b.high  # the two separate intervals overlap: only pairing resolves the difference
    same = paired_difference(base, base)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero()
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference(base, base[:-1])


def test_policy_compare_reads_cells_pairs_requests_and_spreads_seeds(tmp_path):
    """pipelines/policy_compare.py on hand-made cells: the paired difference is per request (a candidate that wins
    the same 6 of 20 requests is +30 points, interval excluding 0), and the seeds table reports mean/sd/min-max."""
    import pandas as pd

    from sysaware.pipelines.policy_compare import compare_table, load_runs, seeds_table

    cells = tmp_path / "cells"
    cells.mkdir()
    base = [True] * 10 + [False] * 10
    for policy, good in {"greedy": base, "rl@a": [True] * 16 + [False] * 4, "rl@b": [True] * 14 + [False] * 6}.items():
        pd.DataFrame({"request": range(20), "scenario": "s", "policy": policy, "passed": good, "met_slo": True}).to_parquet(
            cells / f"s__{policy.replace('@', '-at-')}__k.runs.parquet")
    runs = load_runs(tmp_path)
    table = compare_table(runs, ["rl@a"], ["greedy"])
    assert "| s | rl@a | 80.0 [" in table and "+30.0 [" in table and table.rstrip().endswith("* |")
    slo = compare_table(runs, ["rl@a"], ["greedy"], metric="met_slo")  # every request met its SLO: +0.0
    assert "SLO met % [95% CI]" in slo and "| s | rl@a | 100.0 [" in slo and "+0.0 [+0.0, +0.0] |" in slo
    with pytest.raises(ValueError, match="metric"):
        compare_table(runs, ["rl@a"], ["greedy"], metric="latency")
    seeds = seeds_table(runs, ["rl@a", "rl@b"], references=["greedy"])
    assert "| s | 80.0 | 70.0 | 75.0 | 7.1 | 70.0-80.0 | 50.0 |" in seeds
