"""The Phase 2 dataset report on a synthetic dataset with a known structure: TTFT linear in queue_waiting,
DeepThink answers 4x as long as Flash. The report must show both, write its plots, and refuse a dataset that
lost a column, naming it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sysaware.pipelines.dataset_report import PLOT_FILES, REPORT_NAME, build_report
from sysaware.data.metrics_schema import COLUMN_NAMES, SchemaError

MODELS = ("model-a", "model-b")
LEVELS = (1, 10, 50)
# Mean output tokens per strategy: DeepThink / Flash = 4.0 exactly in expectation.
MEAN_TOKENS = {"flash": 50, "concise": 100, "deepthink": 200}


def make_dataset(prompts: int = 20, seed: int = 0, ttft_per_waiting_ms: float = 30.0) -> pd.DataFrame:
    """One row per (prompt, strategy, model, level). TTFT = 40 ms + ttft_per_waiting_ms x queue_waiting + noise;
    queue_waiting is 0 at N=1 and grows with N; output tokens drawn around MEAN_TOKENS[strategy]."""
    rng = np.random.default_rng(seed)
    rows = []
    for level in LEVELS:
        for model in MODELS:
            for p in range(prompts):
                for strategy, mean_tokens in MEAN_TOKENS.items():
                    waiting = 0 if level == 1 else int(rng.integers(0, level))
                    running = min(level, 8) if level > 1 else int(rng.integers(0, 2))
                    tokens = max(2, int(rng.normal(mean_tokens, mean_tokens * 0.1)))
                    ttft = 40.0 + ttft_per_waiting_ms * waiting + rng.normal(0, 3)
                    tpot = 10.0 + 0.2 * running + rng.normal(0, 0.5)
                    rows.append(
                        {
                            "probe_key": f"{model}|{level}|p{p}|{strategy}",
                            "prompt_id": f"p{p}",
                            "model_id": model,
                            "role_id": "coder",
                            "strategy_id": strategy,
                            "concurrency": level,
                            "replica_id": f"{model}#0",
                            "queue_waiting": waiting,
                            "queue_running": running,
                            "kv_utilization": min(1.0, 0.01 * level + 0.02 * waiting + rng.uniform(0, 0.05)),
                            "ema_ttft_ms": ttft,
                            "step_ms": 10.0,
                            "step_remaining_ms": 5.0,
                            "step_tokens": running,
                            "total_input_tokens": int(rng.integers(200, 800)),
                            "output_tokens": tokens,
                            "actual_ttft": ttft,
                            "actual_tpot": tpot,
                            "queue_ms": ttft - 40.0,
                            "e2e_ms": ttft + tpot * (tokens - 1),
                            "submitted_at": float(len(rows)),
                        }
                    )
    df = pd.DataFrame(rows)
    for name in ("concurrency", "queue_waiting", "queue_running", "step_tokens", "total_input_tokens", "output_tokens"):
        df[name] = df[name].astype("int32")
    return df


def correlation_cell(report: str, model: str, level: str, metric: str) -> list[tuple[float, float]]:
    """The (Pearson, Spearman) pairs of one row of the correlation table, in the table's state order."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == [model, level, metric] and " / " in cells[3]:
            pairs = []
            for cell in cells[3:6]:
                p, s = (x.strip() for x in cell.split(" / "))
                pairs.append((float("nan") if p == "n/a" else float(p), float("nan") if s == "n/a" else float(s)))
            return pairs
    raise AssertionError(f"no correlation row for {model} N={level} {metric}")


def test_report_shows_ttft_rising_with_queue_and_deepthink_longer(tmp_path: Path):
    df = make_dataset()
    path = build_report(df, tmp_path)
    assert path == tmp_path / REPORT_NAME
    report = path.read_text()

    # TTFT is linear in queue_waiting with noise 3 ms against a 30 ms/request slope: near-perfect correlation,
    # at a loaded level and pooled over levels.
    for model in MODELS:
        (pearson, spearman), _, _ = correlation_cell(report, model, "all", "TTFT ms")
        assert pearson > 0.95 and spearman > 0.9
        (pearson_50, _), _, _ = correlation_cell(report, model, "50", "TTFT ms")
        assert pearson_50 > 0.95
        # Nothing ever waits at N=1: no variation, the report must say n/a rather than invent a number.
        (pearson_1, spearman_1), _, _ = correlation_cell(report, model, "1", "TTFT ms")
        assert np.isnan(pearson_1) and np.isnan(spearman_1)

    # DeepThink / Flash ratio per model: 200 / 50 = 4x, up to sampling noise (10% sd over 60 rows each).
    for model in MODELS:
        line = next(ln for ln in report.splitlines() if ln.startswith(f"| {model} |") and "x |" in ln)
        ratio = float(re.search(r"\| ([0-9.]+)x \|", line).group(1))
        assert 3.6 < ratio < 4.4
        assert "100% of 60" in line  # every (prompt, level) pair: DeepThink longer than Flash

    # The distribution table: one row per model x level x outcome, with the count of rows it saw.
    dist = pd.read_csv(tmp_path / "distributions.csv")
    assert len(dist) == len(MODELS) * len(LEVELS) * 3
    ttft_a1 = dist[(dist.model_id == "model-a") & (dist.concurrency == 1) & (dist.metric == "actual_ttft")].iloc[0]
    assert ttft_a1["count"] == 20 * 3
    assert ttft_a1["p50"] <= ttft_a1["p90"] <= ttft_a1["p99"]
    assert abs(ttft_a1["mean"] - 40.0) < 3.0  # idle: only the base TTFT
    assert "| model-a | 1 | TTFT ms | 60 |" in report

    # Every plot is written, is a real PNG, and is linked from the report.
    for name in PLOT_FILES.values():
        png = tmp_path / name
        assert png.stat().st_size > 5_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report


def test_report_shows_no_correlation_when_ttft_ignores_the_queue(tmp_path: Path):
    # Slope 0: TTFT is noise around 40 ms. The same code must not report a trend that is not there.
    df = make_dataset(prompts=40, ttft_per_waiting_ms=0.0)
    report = build_report(df, tmp_path).read_text()
    (pearson, spearman), _, _ = correlation_cell(report, "model-a", "all", "TTFT ms")
    assert abs(pearson) < 0.2 and abs(spearman) < 0.2


def test_missing_column_fails_with_its_name(tmp_path: Path):
    df = make_dataset(prompts=2).drop(columns=["kv_utilization"])
    with pytest.raises(SchemaError, match="kv_utilization"):
        build_report(df, tmp_path)
    assert not (tmp_path / REPORT_NAME).exists()


def test_synthetic_dataset_matches_the_schema():
    # Guards the factory itself: if the schema grows a column, this fails before the report tests mislead.
    assert set(COLUMN_NAMES) <= set(make_dataset(prompts=1).columns)


def write_parquet_folder(df: pd.DataFrame, folder: Path, shards: int = 2) -> Path:
    """A folder of Parquet files in the schema, split into shards as the collector writes them."""
    import pyarrow.parquet as pq

    from sysaware.data.metrics_schema import to_table

    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(df)), shards)):
        pq.write_table(to_table(df.iloc[part]), folder / f"shard-n1-{i}.parquet")
    return folder


def test_cli_writes_the_report_from_a_parquet_folder(tmp_path: Path):
    from typer.testing import CliRunner

    from sysaware.cli import app

    data = write_parquet_folder(make_dataset(prompts=5), tmp_path / "data")
    result = CliRunner().invoke(app, ["dataset-report", "--data", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / REPORT_NAME).read_text()
    assert report.startswith("# Phase 2 dataset report")
    assert f"{len(MODELS) * len(LEVELS) * 5 * 3} probes" in report  # every row of both shards
    assert (tmp_path / "out" / PLOT_FILES["kv"]).stat().st_size > 0


def test_cli_names_the_missing_column(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from sysaware.cli import app

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pandas(make_dataset(prompts=2).drop(columns=["actual_tpot"])), data / "a.parquet")
    result = CliRunner().invoke(app, ["dataset-report", "--data", str(data)])
    assert result.exit_code == 2
    assert "actual_tpot" in result.output
    assert not (data / "report" / REPORT_NAME).exists()
