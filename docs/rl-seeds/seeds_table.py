"""Tables for docs/rl-seeds.md: three training seeds of the fixed-planner PPO executor against greedy and the oracle.

Reads a scenario evaluation's cached cells (``sysaware evaluate --sim --no-ray --scenarios ...``) and prints markdown:

    PYTHONPATH=. python docs/rl-seeds/seeds_table.py --run-dir runs/seeds-eval \\
        --seeds rl,rl@runs/rl-fp-s1/policy,rl@runs/rl-fp-s2/policy

Per seed: the paired difference against a reference, request by request, with the project's percentile bootstrap
(eval_stats.paired_difference). Over seeds: the mean of the seeds' paired differences with a crossed bootstrap: each
resample draws the seeds with replacement AND the requests with replacement (the same request draw for every seed,
since every seed faces the same requests), so the interval carries both the request sampling and the spread between
training seeds. With three seeds the seed part of that interval is crude (a bootstrap over 3 values underestimates
their variance by a factor 2/3), so the seed spread (sample sd and min-max of the per-seed differences) and a
t-interval over the three seed means (t with 2 degrees of freedom; requests held fixed) are printed beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from sysaware.pipelines.eval_stats import CONFIDENCE, DEFAULT_RESAMPLES, Estimate, bootstrap_mean, paired_difference
from sysaware.pipelines.policy_compare import _goodput, load_runs

CONTENDED = ("uniform-150", "uniform-300", "skew-strong-hot", "bursty", "mixed-slo")
ORDER = ("idle", "uniform-10", "uniform-50", "uniform-150", "uniform-300", "skew-cheap-hot", "skew-strong-hot",
         "bursty", "mixed-slo", "lab-a100")
NON_ORACLE = ("random", "fixed", "best_single", "static_qmp", "least_queue", "greedy", "greedy@queueing")


def crossed_bootstrap(diffs: np.ndarray, resamples: int = DEFAULT_RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = 0) -> Estimate:
    """Mean of a (seeds x requests) array with seeds and requests resampled together (a crossed design)."""
    d = np.asarray(diffs, dtype=float)
    k, n = d.shape
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, k, size=(resamples, k))
    r_idx = rng.integers(0, n, size=(resamples, n))
    means = np.array([d[np.ix_(s, r)].mean() for s, r in zip(s_idx, r_idx)])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(float(d.mean()), float(low), float(high), n)


def seed_t_interval(per_seed: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    x = np.asarray(per_seed, dtype=float)
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def _pts(e: Estimate) -> str:
    return f"{e.mean * 100:+.1f} [{e.low * 100:+.1f}, {e.high * 100:+.1f}]{' *' if e.excludes_zero() else ''}"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _scenarios(runs, seeds) -> list[str]:
    have = [s for s in ORDER if all(_goodput(runs, s, p) is not None for p in seeds)]
    return have + [s for s in dict.fromkeys(runs.scenario) if s not in ORDER and all(_goodput(runs, s, p) is not None for p in seeds)]


def levels_table(runs, seeds, refs) -> str:
    head = ["scenario", *[f"rl s{i} goodput / SLO" for i in range(len(seeds))], *[f"{r} goodput / SLO" for r in refs]]
    lines = [_row(head), "|" + "---|" * len(head)]
    for sc in _scenarios(runs, seeds):
        cells = [sc]
        for p in [*seeds, *refs]:
            g, m = _goodput(runs, sc, p), _goodput(runs, sc, p, "met_slo")
            cells.append("n/a" if g is None else f"{g.mean() * 100:.1f} / {m.mean() * 100:.1f}")
        lines.append(_row(cells))
    return "\n".join(lines)


def diff_table(runs, seeds, ref: str, metric: str = "goodput") -> str:
    head = ["scenario", *[f"s{i} − {ref}" for i in range(len(seeds))], "mean over seeds [crossed bootstrap]",
            "seed sd / min..max", "t-interval over seeds"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for sc in _scenarios(runs, seeds):
        y = _goodput(runs, sc, ref, metric)
        if y is None:
            continue
        xs = [_goodput(runs, sc, p, metric) for p in seeds]
        if not all(x.index.equals(y.index) for x in xs):
            lines.append(_row([sc, "requests differ"]))
            continue
        d = np.stack([x.values - y.values for x in xs])
        per = [paired_difference(x.values, y.values) for x in xs]
        means = d.mean(axis=1) * 100
        lo, hi = seed_t_interval(means)
        cells = [sc, *[_pts(e) for e in per], _pts(crossed_bootstrap(d)),
                 f"{means.std(ddof=1):.1f} / {means.min():+.1f}..{means.max():+.1f}", f"[{lo:+.1f}, {hi:+.1f}]"]
        lines.append(_row(cells))
    return "\n".join(lines)


def best_baseline_table(runs, seeds) -> str:
    """Mean over seeds against the scenario's best non-oracle baseline (by goodput), crossed bootstrap."""
    head = ["scenario", "best non-oracle baseline (goodput %)", "rl seeds' goodput %", "mean over seeds − best [crossed bootstrap]"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for sc in _scenarios(runs, seeds):
        base = {b: s for b in NON_ORACLE if (s := _goodput(runs, sc, b)) is not None}
        best = max(base, key=lambda b: base[b].mean())
        y = base[best]
        xs = [_goodput(runs, sc, p) for p in seeds]
        d = np.stack([x.values - y.values for x in xs])
        lines.append(_row([sc, f"{best} ({y.mean() * 100:.1f})", " / ".join(f"{x.mean() * 100:.1f}" for x in xs),
                           _pts(crossed_bootstrap(d))]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--seeds", required=True, help="the seeds' policy names as evaluated, comma-separated")
    p.add_argument("--refs", default="greedy,greedy@queueing,oracle")
    args = p.parse_args(argv)
    runs = load_runs(args.run_dir)
    seeds = [s for s in args.seeds.split(",") if s]
    refs = [r for r in args.refs.split(",") if r]
    print("### Goodput % / SLO met % per policy\n")
    print(levels_table(runs, seeds, refs))
    for ref in refs:
        print(f"\n### Paired goodput difference against {ref} (points, 95% CI; * excludes 0)\n")
        print(diff_table(runs, seeds, ref))
    print("\n### Mean over seeds against the best non-oracle baseline (points)\n")
    print(best_baseline_table(runs, seeds))
    print("\n### Paired SLO-met difference against oracle (points)\n")
    print(diff_table(runs, seeds, "oracle", "met_slo"))


if __name__ == "__main__":
    main()
