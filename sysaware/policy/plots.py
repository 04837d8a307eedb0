"""The policy's strategy and model mix against load, from an evaluation's per-step table (steps.csv of
``sysaware evaluate --scenarios``), and the training's curves and topology mix over iterations (metrics.csv).

    python -m sysaware.policy.plots --steps runs/evaluate-.../steps.csv --policy rl --out docs/rl-strategy-mix.png
    python -m sysaware.policy.plots --metrics runs/rl-fp-s0/metrics.csv --out docs/rl-training-curves.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def plot_mix(steps: pd.DataFrame, policy: str, out: Path, scenarios: Sequence[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = steps[steps["policy"] == policy]
    order = list(scenarios) if scenarios else list(dict.fromkeys(df["scenario"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for ax, col in zip(axes, ("strategy", "model")):
        mix = df.groupby(["scenario", col]).size().unstack(fill_value=0).reindex(order).fillna(0)
        mix = mix.div(mix.sum(axis=1), axis=0)
        mix.plot(kind="bar", stacked=True, ax=ax, width=0.8)
        ax.set_title(f"{policy}: {col} mix per scenario (share of steps)")
        ax.set_xlabel("")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_topology_mix(metrics: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in metrics.columns if c.startswith("topology:")]
    mix = metrics[cols].fillna(0)
    mix = mix.div(mix.sum(axis=1).replace(0, 1), axis=0)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    mix.set_index(metrics["iteration"]).rename(columns=lambda c: c[len("topology:"):]).plot.area(ax=ax)
    ax.set_title("planner: topology mix over training iterations")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_training(metrics: pd.DataFrame, out: Path) -> Path:
    """Goodput / pass rate, violation rate, lambda and the executor's strategy share over training iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = metrics["iteration"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    axes[0].plot(it, metrics["goodput"], label="goodput")
    axes[0].plot(it, metrics["pass_rate"], label="pass rate", alpha=0.6)
    axes[0].legend(fontsize=7)
    axes[0].set_title("train goodput (pass and within SLO)")
    axes[1].plot(it, metrics["violation_rate"])
    axes[1].set_title("SLO violation rate")
    axes[2].plot(it, metrics["lambda"])
    axes[2].set_title("lambda (dual ascent, cap 3)")
    cols = [c for c in metrics.columns if c.startswith("strategy:")]
    if cols:
        mix = metrics[cols].fillna(0)
        mix = mix.div(mix.sum(axis=1).replace(0, 1), axis=0)
        for c in cols:
            axes[3].plot(it, mix[c], label=c[len("strategy:"):])
        axes[3].legend(fontsize=7)
    axes[3].set_title("executor strategy share")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=Path, help="steps.csv of an evaluation")
    p.add_argument("--policy", default="rl")
    p.add_argument("--metrics", type=Path, help="metrics.csv of a training run")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.steps:
        print(plot_mix(pd.read_csv(args.steps), args.policy, args.out))
    if args.metrics:
        metrics = pd.read_csv(args.metrics)
        print(plot_training(metrics, args.out if not args.steps else args.out.with_name(args.out.stem + "-training.png")))
        if any(c.startswith("topology:") for c in metrics.columns):
            print(plot_topology_mix(metrics, args.out.with_name(args.out.stem + "-topology.png")))


if __name__ == "__main__":
    main()
