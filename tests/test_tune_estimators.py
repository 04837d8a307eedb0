"""The Tune sweep end to end on a tiny synthetic Phase 2 dataset: ASHA stops a trial that trails at a rung, every
trial gets a row in tune_results.csv, and the retrained best config is an artifact that loads and predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from estimator_factories import make_phase2

from sysaware.estimators.train import TrainConfig, TrainedEstimator
from sysaware.estimators.tune import RESULTS_CSV, TUNED, TuneSettings, tune_estimators


def test_asha_stops_the_trailing_trial_and_the_best_artifact_loads(ray_session, tmp_path: Path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # Two trials run one after the other: lr 3e-2 learns, lr 1e-7 barely moves. At the first rung (epoch 1) the
    # second trial's error is above the rung's median of {good, bad}, so ASHA stops it after 1 of 3 epochs.
    settings = TuneSettings(estimators=("latency",), num_samples=1, epochs=3, grace_period=1, reduction_factor=2,
                            max_concurrent_trials=1, base=TrainConfig(width=32, depth=1, batch_size=128))
    space = {"lr": tune.grid_search([3e-2, 1e-7]), "batch_size": 128}
    outcomes = tune_estimators(make_phase2(prompts=30), tmp_path, settings, param_space=space)

    out = outcomes["latency"]
    assert out.scheduler == ASHAScheduler.__name__  # (AsyncHyperBandScheduler, ASHA's class)
    table = pd.read_csv(tmp_path / RESULTS_CSV)
    assert len(table) == 2 and set(table["lr"]) == {3e-2, 1e-7}
    assert set(TUNED) <= set(table.columns)
    by_lr = table.set_index("lr")
    assert by_lr.loc[3e-2, "epochs_run"] == 3
    assert by_lr.loc[1e-7, "epochs_run"] == 1  # stopped by ASHA at the first rung
    assert out.best_config["lr"] == pytest.approx(3e-2)
    assert out.best_error == pytest.approx(by_lr.loc[3e-2, "best_error"])

    est = TrainedEstimator.load(out.artifact_dir, "latency")
    assert est.cfg.lr == pytest.approx(3e-2) and est.cfg.epochs == out.best_epochs
    assert est.metrics["tune"]["scheduler"] == ASHAScheduler.__name__
    pred = est.predict_frame(make_phase2(prompts=3, seed=1))
    assert np.isfinite(pred).all() and (pred > 0).all()


def test_length_sweep_writes_one_row_per_trial_and_a_loadable_artifact(ray_session, tmp_path: Path):
    settings = TuneSettings(estimators=("length",), num_samples=2, epochs=2, grace_period=1)
    outcomes = tune_estimators(make_phase2(prompts=20), tmp_path, settings)

    table = pd.read_csv(tmp_path / RESULTS_CSV)
    assert len(table) == 2 and (table["estimator"] == "length").all()
    assert table["best_error"].notna().all() and (table["epochs_run"] >= 1).all()
    out = outcomes["length"]
    assert out.best_error == pytest.approx(table["best_error"].min())
    est = TrainedEstimator.load(out.artifact_dir, "length")
    assert {k: getattr(est.cfg, k) for k in TUNED} == pytest.approx(out.best_config)
    pred = est.predict_frame(make_phase2(prompts=2, seed=1))
    assert np.isfinite(pred).all() and (pred[:, 0, -1] >= pred[:, 0, 1]).all()  # P90 >= P50 tokens


def write_phase2_run(run_dir: Path, df: pd.DataFrame) -> Path:
    """A collect-metrics run folder: one shard per level, the Phase 1 prompts CSV its manifest names."""
    from sysaware.data import dataset_store as store

    prompts_csv = run_dir / "intermediate_prompts.csv"
    run_dir.mkdir(parents=True)
    df[["prompt_id", "prompt_text"]].drop_duplicates().to_csv(prompts_csv, index=False)
    for level, rows in df.groupby("concurrency"):
        store.write_shard(run_dir, int(level), rows.drop(columns="prompt_text"))
    store.write_manifest(run_dir, settings={}, prompts={"path": str(prompts_csv)})
    return run_dir


def test_cli_tunes_one_estimator_on_a_phase2_run(ray_session, tmp_path: Path):
    from typer.testing import CliRunner

    from sysaware.cli import app

    data = write_phase2_run(tmp_path / "p2", make_phase2(prompts=20))
    out = tmp_path / "tune"
    args = ["tune-estimators", "--data", str(data), "--estimator", "latency", "--num-samples", "2", "--epochs", "2",
            "--run-dir", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out / RESULTS_CSV)) == 2
    assert "latency: best val_mape" in result.output
    assert TrainedEstimator.load(out / "latency-v2", "latency").kind == "latency"
    assert not (out / "length-v2").exists()  # --estimator latency tunes only F_lat

    bad = CliRunner().invoke(app, ["tune-estimators", "--data", str(data), "--estimator", "size"])
    assert bad.exit_code == 2 and "latency, length or both" in bad.output


def test_a_search_space_naming_an_unknown_field_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="learning_rate"):
        tune_estimators(make_phase2(prompts=5), tmp_path, TuneSettings(estimators=("latency",)),
                        param_space={"learning_rate": 1e-3})
