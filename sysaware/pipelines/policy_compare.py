"""Trained policies against chosen baselines, from a scenario evaluation's cached cells (``evaluate --scenarios``).

The evaluation's report compares every policy with the best load-blind baseline; training a policy needs other
questions answered: is it above greedy and how far below the oracle (paired, request by request), and how much do
training seeds spread. This reads ``<run>/cells/*.runs.parquet`` and prints markdown:

    python -m sysaware.pipelines.policy_compare --run-dir runs/eval-rl \\
        --policies rl@runs/bc-s0/policy --against greedy,greedy@queueing,oracle \\
        --seeds rl@runs/bc-s0/policy,rl@runs/bc-s1/policy,rl@runs/bc-s2/policy

Paired differences: mean of (candidate - reference) goodput over the same requests, percentile bootstrap 95% CI
(eval_stats.paired_difference); * where it excludes 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.pipelines.eval_report import outcomes
from sysaware.pipelines.eval_stats import bootstrap_mean, paired_difference


def load_runs(run_dir: Path) -> pd.DataFrame:
    files = sorted((Path(run_dir) / "cells").glob("*.runs.parquet"))
    if not files:
        raise FileNotFoundError(f"no cells under {run_dir}/cells")
    return outcomes(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True))


METRICS = ("goodput", "met_slo", "passed")  # per-request 0/1 outcomes (eval_report.outcomes)
METRIC_NAMES = {"goodput": "goodput", "met_slo": "SLO met", "passed": "pass@1"}


def _goodput(runs: pd.DataFrame, scenario: str, policy: str, metric: str = "goodput") -> pd.Series | None:
    g = runs[(runs.scenario == scenario) & (runs.policy == policy)]
    return None if g.empty else g.set_index("request")[metric].astype(float).sort_index()


def _pts(e) -> str:
    return f"{e.mean * 100:+.1f} [{e.low * 100:+.1f}, {e.high * 100:+.1f}]{' *' if e.excludes_zero() else ''}"


def compare_table(runs: pd.DataFrame, policies: Sequence[str], against: Sequence[str], scenarios: Sequence[str] | None = None,
                  label: dict[str, str] | None = None, metric: str = "goodput") -> str:
    """One row per (scenario, candidate): ``metric`` % [CI] (goodput, met_slo or passed) and the paired difference
    against every reference."""
    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r} is not one of {METRICS}")
    label = label or {}
    scenarios = list(scenarios or dict.fromkeys(runs.scenario))
    name = METRIC_NAMES[metric]
    head = ["scenario", "policy", f"{name} % [95% CI]", *[f"Δ {name} vs {label.get(a, a)} (pts)" for a in against]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        for p in policies:
            x = _goodput(runs, sc, p, metric)
            if x is None:
                continue
            cells = [sc, label.get(p, p), bootstrap_mean(x.values).fmt()]
            for a in against:
                y = _goodput(runs, sc, a, metric)
                if y is None or not y.index.equals(x.index):
                    cells.append("n/a")
                    continue
                cells.append(_pts(paired_difference(x.values, y.values)))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(runs: pd.DataFrame, seeds: Sequence[str], scenarios: Sequence[str] | None = None,
                references: Sequence[str] = ()) -> str:
    """Goodput per scenario of each seed, their mean and spread (sample sd, min-max), beside reference policies."""
    scenarios = list(scenarios or dict.fromkeys(runs.scenario))
    head = ["scenario", *[f"seed {i}" for i in range(len(seeds))], "mean", "sd", "min-max", *references]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        vals = [(_goodput(runs, sc, s)) for s in seeds]
        if any(v is None for v in vals):
            continue
        g = np.array([v.mean() * 100 for v in vals])
        refs = [(_goodput(runs, sc, r)) for r in references]
        cells = [sc, *[f"{v:.1f}" for v in g], f"{g.mean():.1f}", f"{g.std(ddof=1):.1f}" if len(g) > 1 else "-",
                 f"{g.min():.1f}-{g.max():.1f}", *["n/a" if r is None else f"{r.mean() * 100:.1f}" for r in refs]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--policies", default="rl", help="candidates, comma-separated (policy names as evaluated)")
    p.add_argument("--against", default="greedy,greedy@queueing,oracle")
    p.add_argument("--seeds", default="", help="policies that are training seeds of one config: their spread")
    p.add_argument("--scenarios", default="")
    p.add_argument("--metrics", default="goodput", help=f"tables to print, comma-separated: {', '.join(METRICS)}")
    args = p.parse_args(argv)
    runs = load_runs(args.run_dir)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    scenarios = split(args.scenarios) or None
    for i, metric in enumerate(split(args.metrics)):
        if i:
            print()
        print(compare_table(runs, split(args.policies), split(args.against), scenarios, metric=metric))
    if args.seeds:
        print()
        print(seeds_table(runs, split(args.seeds), scenarios, references=split(args.against)))


if __name__ == "__main__":
    main()
