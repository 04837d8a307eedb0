"""The estimator report: held-out error of F_lat / F_len beside the naive baselines, overall and per load level,
and predicted-vs-actual plots.

The held-out set is the prompt split that train-estimators uses (same seed and fraction); the report says whether
the artifact's training-data fingerprint matches that split's training half, i.e. whether the test rows are unseen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.estimators.baselines import LinearBaseline, MeanBaselines
from sysaware.estimators.data import fingerprint, split_by_prompt, training_rows
from sysaware.estimators.train import TrainedEstimator

TEST_FRAC = 0.2
SPLIT_SEED = 0


def mape(pred: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - actual) / np.maximum(actual, 1e-9)))


def r2(pred: np.ndarray, actual: np.ndarray) -> float:
    ss_res = float(np.sum((actual - pred) ** 2))
    ss_tot = float(np.sum((actual - actual.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def coverage(p90: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(actual <= p90))


@dataclass
class EstimatorReport:
    rows: pd.DataFrame  # one row per (scope, target, method): metrics
    held_out: dict[str, bool]  # kind -> artifact's training data == this split's train half
    test_rows: int
    plots: list[Path] = field(default_factory=list)

    def headline(self) -> dict:
        def get(scope, target, method, metric):
            sel = self.rows[(self.rows.scope == scope) & (self.rows.target == target) & (self.rows.method == method)]
            return float(sel[metric].iloc[0]) if len(sel) else float("nan")
        out = {"ttft_mape": get("all", "ttft", "mlp", "mape"), "tpot_mape": get("all", "tpot", "mlp", "mape"),
               "tokens_mae": get("all", "tokens", "mlp", "mae")}
        if (self.rows.scope == "N=50").any():
            mlp_ttft, mlp_tpot = get("N=50", "ttft", "mlp", "mape"), get("N=50", "tpot", "mlp", "mape")
            out["ttft_ema_over_mlp_mape_at_50"] = get("N=50", "ttft", "ema", "mape") / mlp_ttft
            out["tpot_mean_over_mlp_mape_at_50"] = get("N=50", "tpot", "model_mean", "mape") / mlp_tpot
        return out


def _metric_rows(scope: str, target: str, preds: dict[str, tuple[np.ndarray, np.ndarray | None]],
                 actual: np.ndarray) -> list[dict]:
    rows = []
    for method, (mean, p90) in preds.items():
        row = {"scope": scope, "target": target, "method": method, "n": len(actual)}
        if target == "tokens":
            row["mae"] = float(np.mean(np.abs(mean - actual)))
        else:
            row["mape"] = mape(mean, actual)
            row["r2"] = r2(mean, actual)
        row["p90_coverage"] = coverage(p90, actual) if p90 is not None else float("nan")
        rows.append(row)
    return rows


def build_report(df: pd.DataFrame, latency: TrainedEstimator, length: TrainedEstimator,
                 plot_dir: str | Path | None = None) -> EstimatorReport:
    df = training_rows(df)
    train, test = split_by_prompt(df, TEST_FRAC, SPLIT_SEED)
    train_fp = fingerprint(train)["probe_keys_sha256"]
    held_out = {e.kind: e.data.get("probe_keys_sha256") == train_fp for e in (latency, length)}
    means = MeanBaselines.fit(train)
    lin_lat = LinearBaseline(latency.spec).fit(train)
    lin_len = LinearBaseline(length.spec, length._embedder()).fit(train)

    lat = latency.predict_frame(test)  # (rows, 2, 1+K)
    tok = length.predict_frame(test)  # (rows, 1, 1+K)
    lat_lin_mean, lat_lin_p90 = lin_lat.predict(test)
    len_lin_mean, len_lin_p90 = lin_len.predict(test)
    preds = {
        "ttft": {"mlp": (lat[:, 0, 0], lat[:, 0, -1]), "ema": (means.ttft(test), None),
                 "linear": (lat_lin_mean[:, 0], lat_lin_p90[:, 0])},
        "tpot": {"mlp": (lat[:, 1, 0], lat[:, 1, -1]), "model_mean": (means.tpot(test), None),
                 "linear": (lat_lin_mean[:, 1], lat_lin_p90[:, 1])},
        "tokens": {"mlp": (tok[:, 0, 0], tok[:, 0, -1]), "model_strategy_mean": (means.tokens(test), None),
                   "linear": (len_lin_mean[:, 0], len_lin_p90[:, 0])},
    }
    actual = {"ttft": test["actual_ttft"].to_numpy(np.float64), "tpot": test["actual_tpot"].to_numpy(np.float64),
              "tokens": test["output_tokens"].to_numpy(np.float64)}
    rows: list[dict] = []
    levels = test["concurrency"].to_numpy()
    scopes = [("all", np.ones(len(test), bool))] + [(f"N={n}", levels == n) for n in sorted(set(levels.tolist()))]
    for scope, mask in scopes:
        for target in ("ttft", "tpot", "tokens"):
            sub = {m: (p[mask], None if q is None else q[mask]) for m, (p, q) in preds[target].items()}
            rows.extend(_metric_rows(scope, target, sub, actual[target][mask]))
    report = EstimatorReport(pd.DataFrame(rows), held_out, len(test))
    if plot_dir is not None:
        report.plots = _plots(Path(plot_dir), preds, actual, levels)
    return report


def _plots(out: Path, preds: dict, actual: dict, levels: np.ndarray) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    units = {"ttft": "ms", "tpot": "ms", "tokens": "tokens"}
    for target, methods in preds.items():
        fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4.5), squeeze=False)
        y = actual[target]
        lo, hi = max(float(y.min()), 1e-3), float(y.max())
        for ax, (method, (mean, _)) in zip(axes[0], methods.items()):
            sc = ax.scatter(y, mean, c=np.log10(np.maximum(levels, 1)), s=3, alpha=0.4, cmap="viridis")
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
            ax.set(xscale="log", yscale="log", xlabel=f"actual {target} ({units[target]})",
                   ylabel=f"predicted ({units[target]})", title=f"{target}: {method}")
        fig.colorbar(sc, ax=axes[0].tolist(), label="log10 load level N")
        path = out / f"pred_vs_actual_{target}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def format_report(report: EstimatorReport) -> str:
    lines = [f"held-out test rows (prompt split, {TEST_FRAC:.0%} of prompts): {report.test_rows}",
             "artifact trained on exactly this split's train half: "
             + ", ".join(f"{k}={'yes' if v else 'NO (test rows may be seen)'}" for k, v in report.held_out.items())]
    table = report.rows.copy()
    for col in ("mape", "p90_coverage"):
        table[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    for col in ("r2", "mae"):
        table[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}" if col == "r2" else f"{v:.1f}")
    lines.append(table[["scope", "target", "method", "n", "mape", "r2", "mae", "p90_coverage"]].to_string(index=False))
    return "\n".join(lines)
