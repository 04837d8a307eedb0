"""Tables, confidence intervals and plots of a scenario evaluation (``scenario_eval.py``), and its ``report.md``.

Headline: **goodput**, the share of requests that pass every hidden assert *and* meet their SLO. Beside it pass@1,
SLO attainment, end-to-end latency percentiles, tokens, and the executor's action mix. Every share has a 95%
percentile-bootstrap interval over requests; every policy is also compared with the scenario's best load-blind
baseline (the load-blind policy of highest goodput there) by the paired difference of goodput, request by request.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.pipelines.eval_stats import bootstrap_mean, paired_difference
from sysaware.pipelines.scenario_eval import LOAD_BLIND


def outcomes(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-request 0/1 outcomes: passed, met_slo, goodput (both)."""
    out = runs.copy()
    out["passed"] = out["passed"].fillna(False).astype(bool)
    out["met_slo"] = out["met_slo"].fillna(False).astype(bool)
    out["goodput"] = out["passed"] & out["met_slo"]
    return out


def best_load_blind(summary: pd.DataFrame, scenario: str) -> str | None:
    rows = summary[(summary.scenario == scenario) & summary.policy.str.split("@").str[0].isin(LOAD_BLIND)]
    return None if rows.empty else str(rows.sort_values("goodput", ascending=False).iloc[0].policy)


def summarise(runs: pd.DataFrame, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (scenario, policy) with CIs and the paired goodput difference to the best load-blind baseline."""
    runs = outcomes(runs)
    rows = []
    for (scenario, policy), g in runs.groupby(["scenario", "policy"], sort=False):
        latency = g["e2e_latency_s"].to_numpy(dtype=float)
        row = {"scenario": scenario, "policy": policy, "executor": g["executor"].iloc[0], "requests": len(g)}
        for metric in ("goodput", "passed", "met_slo"):
            est = bootstrap_mean(g[metric].to_numpy(), resamples, seed=seed)
            name = {"passed": "pass_at_1", "met_slo": "slo_attainment"}.get(metric, metric)
            row |= {name: est.mean, f"{name}_low": est.low, f"{name}_high": est.high}
        row |= {f"e2e_p{q}_s": float(np.nanpercentile(latency, q)) for q in (50, 95, 99)}
        row |= {"mean_output_tokens": float(g["output_tokens"].mean()), "mean_steps": float(g["steps"].mean())}
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["vs_baseline"] = None
    for col in ("goodput_diff", "goodput_diff_low", "goodput_diff_high"):
        summary[col] = np.nan
    for scenario in summary.scenario.unique():
        base = best_load_blind(summary, scenario)
        if base is None:
            continue
        b = runs[(runs.scenario == scenario) & (runs.policy == base)].sort_values("request")
        for i in summary.index[summary.scenario == scenario]:
            policy = summary.at[i, "policy"]
            a = runs[(runs.scenario == scenario) & (runs.policy == policy)].sort_values("request")
            diff = paired_difference(a["goodput"].to_numpy(), b["goodput"].to_numpy(), resamples, seed=seed)
            summary.at[i, "vs_baseline"] = base
            summary.loc[i, ["goodput_diff", "goodput_diff_low", "goodput_diff_high"]] = [diff.mean, diff.low, diff.high]
    return summary


def action_mix(steps: pd.DataFrame) -> pd.DataFrame:
    """Share of each strategy (and each model) per (scenario, policy)."""
    mix = steps.groupby(["scenario", "policy", "strategy"]).size().rename("n").reset_index()
    mix["share"] = mix["n"] / mix.groupby(["scenario", "policy"])["n"].transform("sum")
    return mix


def _pct(v: float, lo: float, hi: float) -> str:
    return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown_table(summary: pd.DataFrame, scenario: str) -> str:
    rows = summary[summary.scenario == scenario]
    head = ("| policy | goodput % [95% CI] | pass@1 % | SLO met % | e2e p50 / p95 / p99 s | out tokens | "
            "Δ goodput vs best load-blind (paired) |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for _, r in rows.iterrows():
        diff = "" if pd.isna(r.goodput_diff) else (
            f"{100 * r.goodput_diff:+.1f} [{100 * r.goodput_diff_low:+.1f}, {100 * r.goodput_diff_high:+.1f}]"
            + (" *" if (r.goodput_diff_low > 0 or r.goodput_diff_high < 0) else "")
        )
        name = r.policy if r.executor in (r.policy, "") else f"{r.policy}: {r.executor}"
        lines.append(
            f"| {name} | {_pct(r.goodput, r.goodput_low, r.goodput_high)} | "
            f"{_pct(r.pass_at_1, r.pass_at_1_low, r.pass_at_1_high)} | "
            f"{_pct(r.slo_attainment, r.slo_attainment_low, r.slo_attainment_high)} | "
            f"{r.e2e_p50_s:.2f} / {r.e2e_p95_s:.2f} / {r.e2e_p99_s:.2f} | {r.mean_output_tokens:.0f} | {diff} |"
        )
    return "\n".join(lines)


def _per_scenario(plt, scenarios: Sequence[str], draw):
    """A grid of panels, one per scenario (five to a row), each titled and filled by ``draw(ax, scenario)``; the
    first panel carries the legend."""
    cols = min(len(scenarios), 5)
    nrows = int(np.ceil(len(scenarios) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.0 * nrows), squeeze=False)
    for k, scenario in enumerate(scenarios):
        ax = axes[k // cols][k % cols]
        draw(ax, scenario)
        ax.set_title(scenario, fontsize=9)
    for k in range(len(scenarios), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=6)
    return fig


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(summary: pd.DataFrame, runs: pd.DataFrame, steps: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    scenarios = list(dict.fromkeys(summary.scenario))
    policies = list(dict.fromkeys(summary.policy))

    # 1. Goodput per scenario with CIs.
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(scenarios)), 4.5))
    width = 0.8 / max(len(policies), 1)
    for j, policy in enumerate(policies):
        rows = summary[summary.policy == policy].set_index("scenario").reindex(scenarios)
        x = np.arange(len(scenarios)) + j * width
        err = np.vstack([rows.goodput - rows.goodput_low, rows.goodput_high - rows.goodput]) * 100
        ax.bar(x, rows.goodput * 100, width, yerr=err, capsize=2, label=policy)
    ax.set_xticks(np.arange(len(scenarios)) + 0.4 - width / 2, scenarios, rotation=30, ha="right")
    ax.set_ylabel("goodput: pass and within SLO (%)")
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("Goodput per scenario (95% bootstrap CI)")
    paths.append(_save(fig, out / "goodput.png"))

    # 2. pass@1 vs SLO attainment, one panel per scenario.
    def pass_vs_slo(ax, scenario: str) -> None:
        for policy in policies:
            r = summary[(summary.scenario == scenario) & (summary.policy == policy)]
            if len(r):
                ax.scatter(r.slo_attainment * 100, r.pass_at_1 * 100, label=policy, s=20)
        ax.set_xlabel("SLO met %", fontsize=8)
        ax.set_ylabel("pass@1 %", fontsize=8)

    paths.append(_save(_per_scenario(plt, scenarios, pass_vs_slo), out / "pass_vs_slo.png"))

    # 3. End-to-end latency CDFs (latency over SLO: 1.0 is the budget).
    def latency_cdf(ax, scenario: str) -> None:
        for policy in policies:
            g = runs[(runs.scenario == scenario) & (runs.policy == policy)]
            x = np.sort((g.e2e_latency_s / g.slo_s).to_numpy(dtype=float))
            if len(x):
                ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=policy, lw=1)
        ax.axvline(1.0, color="k", lw=0.5, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("e2e latency / SLO", fontsize=8)

    paths.append(_save(_per_scenario(plt, scenarios, latency_cdf), out / "latency_cdf.png"))

    # 4. The load-aware executors' strategy mix per scenario.
    mix = action_mix(steps)
    aware = [p for p in policies if p.split("@")[0] not in LOAD_BLIND]
    if aware and not mix.empty:
        fig, axes = plt.subplots(1, len(aware), figsize=(3.6 * len(aware), 3.4), squeeze=False)
        for k, policy in enumerate(aware):
            ax = axes[0][k]
            m = mix[mix.policy == policy].pivot_table(index="scenario", columns="strategy", values="share", fill_value=0)
            m = m.reindex([s for s in scenarios if s in m.index])
            bottom = np.zeros(len(m))
            for strategy in ("flash", "concise", "deepthink"):
                if strategy in m:
                    ax.bar(range(len(m)), m[strategy], bottom=bottom, label=strategy)
                    bottom += m[strategy].to_numpy()
            ax.set_xticks(range(len(m)), m.index, rotation=45, ha="right", fontsize=7)
            ax.set_title(policy, fontsize=9)
        axes[0][0].set_ylabel("share of steps")
        axes[0][0].legend(fontsize=7)
        paths.append(_save(fig, out / "strategy_mix.png"))
    return paths


def write_report(
    summary: pd.DataFrame, runs: pd.DataFrame, steps: pd.DataFrame, cost: pd.DataFrame, run_dir: Path,
    contended: Sequence[str] = (), command: str = "",
) -> Path:
    plots = plot_all(summary, runs, steps, run_dir / "plots")
    lines = ["# Scenario evaluation", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "Goodput = the share of requests that pass every hidden assert and meet their SLO. Intervals: 95% "
        "percentile bootstrap over requests; Δ: paired difference of goodput against the scenario's best "
        "load-blind baseline, request by request (* where its interval excludes 0).", "",
    ]
    for scenario in dict.fromkeys(summary.scenario):
        tag = " (contended)" if scenario in contended else ""
        lines += [f"## {scenario}{tag}", "", markdown_table(summary, scenario), ""]
    lines += ["## Cost per cell (wall seconds)", "", "```", cost.round(2).to_string(index=False), "```", ""]
    lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
