"""The Phase 2 dataset report: does the collected data carry the signal the estimators need?

F_lat learns (ttft, tpot) from the replica's state at submission and F_len learns output length from the strategy,
so the report shows, per model x concurrency, the latency and length distributions, how strongly TTFT/TPOT/length
move with queue depth and KV use (Pearson for linear, Spearman for monotone), and how much longer DeepThink answers
than Flash. A dataset where TTFT does not rise with ``queue_waiting`` or DeepThink is no longer than Flash is a
collection bug, and this is where it shows.

``build_report(df, out_dir)`` writes ``report.md``, the tables as CSV (for scripts) and four PNG plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.data.metrics_schema import SchemaError, validate
from sysaware.tasks.prompts import Strategy

REPORT_NAME = "report.md"
OUTCOMES: tuple[tuple[str, str], ...] = (
    ("actual_ttft", "TTFT ms"),
    ("actual_tpot", "TPOT ms"),
    ("output_tokens", "output tokens"),
)
STATE: tuple[tuple[str, str], ...] = (
    ("queue_waiting", "q_wait"),
    ("queue_running", "q_run"),
    ("kv_utilization", "KV use"),
    ("step_remaining_ms", "step wait"),  # the wait for the in-progress engine step: TTFT's share below the knee
)
QUANTILES = (0.5, 0.9, 0.99)
ALL_LEVELS = "all"  # the concurrency label of the rows pooled over every level
STRATEGY_ORDER = tuple(s.value for s in Strategy)
# Scatter plots draw at most this many points per model: enough to see the trend, cheap for 100k-row datasets.
MAX_SCATTER_POINTS = 4000
PLOT_FILES = {
    "ttft_vs_queue": "ttft_vs_queue_waiting.png",
    "cdf": "latency_cdf_by_concurrency.png",
    "strategy": "output_tokens_by_strategy.png",
    "kv": "kv_utilization_hist.png",
}


# ---------------------------------------------------------------- tables


def distribution_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model x concurrency x outcome: count, mean, p50, p90, p99 (NaN values, e.g. TPOT of a one-token
    answer, are left out and not counted)."""
    rows = []
    for (model, level), group in df.groupby(["model_id", "concurrency"], sort=True):
        for column, _ in OUTCOMES:
            values = group[column].astype(float).dropna()
            qs = values.quantile(QUANTILES) if len(values) else pd.Series([math.nan] * len(QUANTILES), QUANTILES)
            rows.append(
                {
                    "model_id": model,
                    "concurrency": int(level),
                    "metric": column,
                    "count": len(values),
                    "mean": values.mean() if len(values) else math.nan,
                    **{f"p{round(q * 100)}": qs[q] for q in QUANTILES},
                }
            )
    return pd.DataFrame(rows)


def _correlation(x: pd.Series, y: pd.Series, method: str) -> float:
    """NaN when either side is constant: no variation, no evidence either way (a lone client never queues)."""
    ok = x.notna() & y.notna()
    x, y = x[ok].astype(float), y[ok].astype(float)
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return math.nan
    return float(x.corr(y, method=method))


def correlation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model x concurrency (and pooled over levels, concurrency ``"all"``) x outcome x state column:
    Pearson and Spearman correlation and the number of rows they were computed on."""
    rows = []
    for model, by_model in df.groupby("model_id", sort=True):
        groups = [(str(int(level)), g) for level, g in by_model.groupby("concurrency", sort=True)]
        groups.append((ALL_LEVELS, by_model))
        for level, group in groups:
            for outcome, _ in OUTCOMES:
                for state, _ in STATE:
                    rows.append(
                        {
                            "model_id": model,
                            "concurrency": level,
                            "metric": outcome,
                            "state": state,
                            "pearson": _correlation(group[state], group[outcome], "pearson"),
                            "spearman": _correlation(group[state], group[outcome], "spearman"),
                            "n": int((group[state].notna() & group[outcome].notna()).sum()),
                        }
                    )
    return pd.DataFrame(rows)


def strategy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean and median output tokens per strategy, the DeepThink / Flash ratio of means, and the share
    of (prompt, concurrency) pairs where DeepThink answered longer than Flash (a paired check that does not
    depend on which prompts each strategy happened to draw)."""
    rows = []
    for model, group in df.groupby("model_id", sort=True):
        row: dict[str, object] = {"model_id": model}
        for strategy in STRATEGY_ORDER:
            tokens = group.loc[group["strategy_id"] == strategy, "output_tokens"].astype(float)
            row[f"{strategy}_mean"] = tokens.mean() if len(tokens) else math.nan
            row[f"{strategy}_p50"] = tokens.median() if len(tokens) else math.nan
            row[f"{strategy}_n"] = len(tokens)
        flash, deep = row[f"{Strategy.FLASH.value}_mean"], row[f"{Strategy.DEEPTHINK.value}_mean"]
        row["deepthink_over_flash"] = deep / flash if flash and not math.isnan(flash) else math.nan
        paired = (
            group.pivot_table(
                index=["prompt_id", "concurrency"], columns="strategy_id", values="output_tokens", aggfunc="mean"
            )
            if len(group)
            else pd.DataFrame()
        )
        if {Strategy.FLASH.value, Strategy.DEEPTHINK.value} <= set(paired.columns):
            both = paired[[Strategy.FLASH.value, Strategy.DEEPTHINK.value]].dropna()
            row["deepthink_longer_share"] = (
                float((both[Strategy.DEEPTHINK.value] > both[Strategy.FLASH.value]).mean()) if len(both) else math.nan
            )
            row["pairs"] = len(both)
        else:
            row["deepthink_longer_share"], row["pairs"] = math.nan, 0
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- markdown


def _fmt(value: object, digits: int = 1) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (no tabulate dependency); first column left-aligned, the rest right-aligned."""
    align = [":--"] + ["--:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _distribution_markdown(dist: pd.DataFrame) -> str:
    headers = ["model", "N", "metric", "count", "mean", "p50", "p90", "p99"]
    labels = dict(OUTCOMES)
    rows = [
        [r.model_id, r.concurrency, labels[r.metric], r.count, _fmt(r.mean), _fmt(r.p50), _fmt(r.p90), _fmt(r.p99)]
        for r in dist.itertuples(index=False)
    ]
    return markdown_table(headers, rows)


def _correlation_markdown(corr: pd.DataFrame) -> str:
    """One row per model x N x outcome; one "Pearson / Spearman" cell per state column."""
    headers = ["model", "N", "metric"] + [f"{label} (P / S)" for _, label in STATE] + ["n"]
    labels = dict(OUTCOMES)
    rows = []
    for (model, level, metric), g in corr.groupby(["model_id", "concurrency", "metric"], sort=False):
        by_state = g.set_index("state")
        cells = [f"{_fmt(by_state.at[s, 'pearson'], 2)} / {_fmt(by_state.at[s, 'spearman'], 2)}" for s, _ in STATE]
        rows.append([model, level, labels[metric], *cells, int(g["n"].max())])
    return markdown_table(headers, rows)


def _strategy_markdown(strat: pd.DataFrame) -> str:
    headers = ["model"] + [f"{s} mean (p50)" for s in STRATEGY_ORDER] + ["DeepThink / Flash", "DeepThink longer"]
    rows = []
    for r in strat.to_dict("records"):
        cells = [f"{_fmt(r[f'{s}_mean'])} ({_fmt(r[f'{s}_p50'], 0)})" for s in STRATEGY_ORDER]
        share = r["deepthink_longer_share"]
        share_text = "n/a" if math.isnan(share) else f"{share:.0%} of {r['pairs']}"
        rows.append([r["model_id"], *cells, f"{_fmt(r['deepthink_over_flash'], 2)}x", share_text])
    return markdown_table(headers, rows)


def _headline(corr: pd.DataFrame, strat: pd.DataFrame) -> list[str]:
    """The two facts the estimators rely on, one line per model."""
    pooled = corr[(corr.concurrency == ALL_LEVELS) & (corr.metric == "actual_ttft") & (corr.state == "queue_waiting")]
    lines = []
    for r in pooled.itertuples(index=False):
        ratio = strat.loc[strat.model_id == r.model_id, "deepthink_over_flash"]
        ratio_text = _fmt(float(ratio.iloc[0]), 2) if len(ratio) else "n/a"
        lines.append(
            f"- `{r.model_id}`: TTFT vs queue_waiting, all levels: Pearson {_fmt(r.pearson, 2)}, "
            f"Spearman {_fmt(r.spearman, 2)}; DeepThink / Flash output tokens {ratio_text}x"
        )
    return lines


# ---------------------------------------------------------------- plots


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _plot_ttft_vs_queue(df: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    models = sorted(df["model_id"].unique())
    levels = sorted(df["concurrency"].unique())
    nrows, ncols = _grid(len(models))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(levels)))
    rng = np.random.default_rng(0)  # subsampling only: the same picture on every run
    for ax, model in zip(axes.flat, models):
        sub = df[df["model_id"] == model]
        if len(sub) > MAX_SCATTER_POINTS:
            sub = sub.iloc[np.sort(rng.choice(len(sub), MAX_SCATTER_POINTS, replace=False))]
        for colour, level in zip(colours, levels):
            pts = sub[sub["concurrency"] == level]
            ax.scatter(pts["queue_waiting"], pts["actual_ttft"], s=6, alpha=0.5, color=colour, label=f"N={level}")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("queue_waiting at submission (requests)")
        ax.set_ylabel("TTFT (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, markerscale=2)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.suptitle("TTFT vs queue depth at submission")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency_cdfs(df: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    models = sorted(df["model_id"].unique())
    levels = sorted(df["concurrency"].unique())
    fig, axes = plt.subplots(2, len(levels), figsize=(4.5 * len(levels), 7), squeeze=False)
    for col, level in enumerate(levels):
        at_level = df[df["concurrency"] == level]
        for row, (metric, label) in enumerate(OUTCOMES[:2]):
            ax = axes[row][col]
            for model in models:
                values = np.sort(at_level.loc[at_level["model_id"] == model, metric].astype(float).dropna().to_numpy())
                if len(values):
                    ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=model)
            positive = at_level[metric][at_level[metric] > 0]
            # TTFT spans orders of magnitude once requests queue: a log axis keeps the idle tail readable.
            if len(positive) and positive.max() > 20 * positive.min():
                ax.set_xscale("log")
            ax.set_title(f"{label}, N={level}", fontsize=10)
            ax.set_xlabel(label)
            ax.set_ylabel("fraction of probes")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("TTFT and TPOT CDFs per background concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_strategy_boxes(df: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    models = sorted(df["model_id"].unique())
    strategies = [s for s in STRATEGY_ORDER if s in set(df["strategy_id"])]
    strategies += sorted(set(df["strategy_id"]) - set(strategies))
    nrows, ncols = _grid(len(models))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        sub = df[df["model_id"] == model]
        data = [sub.loc[sub["strategy_id"] == s, "output_tokens"].to_numpy() for s in strategies]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(strategies) + 1), strategies)
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("output tokens")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.suptitle("Output tokens by strategy (boxes: quartiles, whiskers: 1.5 IQR)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_kv_histogram(df: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0.0, 1.0, 41)
    for level in sorted(df["concurrency"].unique()):
        values = df.loc[df["concurrency"] == level, "kv_utilization"].astype(float).dropna().clip(0.0, 1.0)
        ax.hist(values, bins=bins, histtype="step", linewidth=1.6, label=f"N={level} ({len(values)} probes)")
    ax.set_xlabel("KV cache utilisation at submission (fraction of blocks)")
    ax.set_ylabel("probes")
    ax.set_yscale("log")  # the idle level piles up at 0 and would flatten the loaded ones
    ax.set_title("KV utilisation at submission, all models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- loading


def _collector_loader():
    """The dataset store's ``load_dataset(run_dir)`` (shards + manifest layout)."""
    from sysaware.data.dataset_store import load_dataset

    return load_dataset


def load_metrics(data_dir: Path) -> pd.DataFrame:
    """The dataset under ``data_dir``: a collector run directory (shards in ``metrics/``), that ``metrics/`` folder
    itself, or any folder of Parquet files in the schema; schema-checked either way."""
    data_dir = Path(data_dir)
    loader = _collector_loader()
    if loader is not None:
        if any((data_dir / "metrics").glob("*.parquet")):
            return loader(data_dir)
        if data_dir.name == "metrics" and any(data_dir.glob("*.parquet")):
            return loader(data_dir.parent)
    paths = sorted(data_dir.glob("*.parquet"))
    if not paths:
        raise SchemaError(f"{data_dir}: no Parquet files (looked in {data_dir} and {data_dir / 'metrics'})")
    df = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    return validate(df, source=str(data_dir))


# ---------------------------------------------------------------- entry point


def build_report(df: pd.DataFrame, out_dir: Path) -> Path:
    """Validate ``df`` against the Phase 2 schema, write report.md, the tables as CSV and the PNG plots into
    ``out_dir``; returns the report's path. Raises ``metrics_schema.SchemaError`` naming a missing column."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes

    df = validate(df, "dataset-report input")
    if df.empty:
        raise ValueError("dataset-report: the dataset has no rows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    dist, corr, strat = distribution_table(df), correlation_table(df), strategy_table(df)
    dist.to_csv(out_dir / "distributions.csv", index=False)
    corr.to_csv(out_dir / "correlations.csv", index=False)
    strat.to_csv(out_dir / "output_tokens_by_strategy.csv", index=False)

    _plot_ttft_vs_queue(df, out_dir / PLOT_FILES["ttft_vs_queue"])
    _plot_latency_cdfs(df, out_dir / PLOT_FILES["cdf"])
    _plot_strategy_boxes(df, out_dir / PLOT_FILES["strategy"])
    _plot_kv_histogram(df, out_dir / PLOT_FILES["kv"])

    models = sorted(df["model_id"].unique())
    levels = sorted(int(n) for n in df["concurrency"].unique())
    sections = [
        "# Phase 2 dataset report",
        "",
        f"{len(df)} probes, {df['prompt_id'].nunique()} prompts, {len(models)} models ({', '.join(models)}), "
        f"concurrency levels {levels}, strategies {sorted(df['strategy_id'].unique())}, "
        f"{df['replica_id'].nunique()} replicas.",
        "",
        "## Headline",
        "",
        *_headline(corr, strat),
        "",
        "## Distributions per model x concurrency",
        "",
        "TTFT and TPOT in ms; TPOT leaves out one-token answers (no inter-token gap).",
        "",
        _distribution_markdown(dist),
        "",
        "## Correlation with the replica's state at submission",
        "",
        "Each cell: Pearson / Spearman. `n/a`: one side constant at that level (e.g. nothing ever waits at N=1). "
        f"`{ALL_LEVELS}`: every level of that model pooled.",
        "",
        _correlation_markdown(corr),
        "",
        "## Output tokens by strategy",
        "",
        "DeepThink longer: share of (prompt, concurrency) pairs where DeepThink's output was longer than Flash's.",
        "",
        _strategy_markdown(strat),
        "",
        "## Plots",
        "",
        *[f"![{key}]({name})" for key, name in PLOT_FILES.items()],
        "",
    ]
    report = out_dir / REPORT_NAME
    report.write_text("\n".join(sections))
    return report
