"""F_lat / F_len: training lowers the loss, quantiles stay ordered, splits keep prompts and time apart, the report
runs."""

from __future__ import annotations

import numpy as np
import torch

from estimator_factories import LEVELS, make_phase2, shared_embedder
from sysaware.estimators.data import split_by_prompt, split_by_time
from sysaware.estimators.models import QuantileMLP
from sysaware.estimators.report import build_report, format_report
from sysaware.estimators.train import TrainConfig, train_latency, train_length

SMALL = TrainConfig(epochs=20, width=32, depth=2, batch_size=64, dropout=0.0, lr=3e-3)


def test_split_by_prompt_puts_each_prompt_on_one_side():
    df = make_phase2(prompts=30)
    train, test = split_by_prompt(df, test_frac=0.2, seed=0)
    assert set(train.prompt_id).isdisjoint(set(test.prompt_id))
    assert len(train) + len(test) == len(df)
    assert test.prompt_id.nunique() == 6  # 20% of 30 prompts


def test_split_by_time_tests_on_later_probes_of_every_level():
    df = make_phase2(prompts=10)
    train, test = split_by_time(df, frac=0.75)
    for n in LEVELS:
        assert train[train.concurrency == n].submitted_at.max() < test[test.concurrency == n].submitted_at.min()


def test_latency_training_lowers_loss_and_beats_the_ema():
    df = make_phase2(prompts=40)
    train, val = split_by_prompt(df, 0.25)
    seen = []
    est = train_latency(train, val, SMALL, on_epoch=lambda e, m: seen.append(m))
    assert [m["epoch"] for m in seen] == list(range(SMALL.epochs))
    assert {"val_loss", "val_mape_ttft", "val_mape_tpot"} <= set(seen[0])
    assert seen[-1]["train_loss"] < 0.5 * seen[0]["train_loss"]
    assert min(m["val_loss"] for m in seen) < seen[0]["val_loss"]
    pred = est.predict_frame(val)
    mape_ttft = np.mean(np.abs(pred[:, 0, 0] - val.actual_ttft) / val.actual_ttft)
    mape_ema = np.mean(np.abs(val.ema_ttft_ms - val.actual_ttft) / val.actual_ttft)
    assert mape_ttft < mape_ema  # the EMA carries 35% noise, the queue explains TTFT


def test_length_training_lowers_loss_and_orders_strategies():
    df = make_phase2(prompts=24)
    train, val = split_by_prompt(df, 0.25)
    seen = []
    est = train_length(train, val, SMALL, on_epoch=lambda e, m: seen.append(m), embedder=shared_embedder())
    assert {"val_loss", "val_mae_tokens"} <= set(seen[0])
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]
    pred = est.predict_frame(val)[:, 0, 0]
    by_strategy = {s: pred[(val.strategy_id == s).to_numpy()].mean() for s in ("flash", "deepthink")}
    assert by_strategy["deepthink"] > 2 * by_strategy["flash"]  # 300 vs 40 tokens in the data


def test_quantiles_are_ordered_for_any_input():
    torch.manual_seed(0)
    net = QuantileMLP(num_numeric=5, vocab_sizes=[4, 3], dense_dim=0, num_targets=2, num_quantiles=3)
    numeric = torch.randn(500, 5) * 10  # far outside the training range too
    codes = torch.stack([torch.randint(0, 4, (500,)), torch.randint(0, 3, (500,))], dim=1)
    out = net(numeric, codes)
    assert out.shape == (500, 2, 4)
    assert torch.all(out[..., 2] >= out[..., 1]) and torch.all(out[..., 3] >= out[..., 2])


def test_trained_p90_covers_more_than_p50():
    df = make_phase2(prompts=40)
    train, val = split_by_prompt(df, 0.25)
    pred = train_latency(train, val, SMALL).predict_frame(val)
    assert np.all(pred[:, :, 2] >= pred[:, :, 1])
    cover_p50 = np.mean(val.actual_ttft.to_numpy() <= pred[:, 0, 1])
    cover_p90 = np.mean(val.actual_ttft.to_numpy() <= pred[:, 0, 2])
    assert cover_p90 > cover_p50 + 0.2


def test_report_lists_estimator_beside_baselines_per_level(tmp_path):
    df = make_phase2(prompts=30)
    train, val = split_by_prompt(df, 0.2, seed=0)
    cfg = TrainConfig(epochs=3, width=32, batch_size=128)
    length = train_length(train, val, cfg, embedder=shared_embedder())
    report = build_report(df, train_latency(train, val, cfg), length, plot_dir=tmp_path)
    rows = report.rows
    assert set(rows.scope) == {"all"} | {f"N={n}" for n in LEVELS}
    assert {"mlp", "ema", "linear"} <= set(rows[rows.target == "ttft"].method)
    assert {"mlp", "model_mean", "linear"} <= set(rows[rows.target == "tpot"].method)
    assert {"mlp", "model_strategy_mean", "linear"} <= set(rows[rows.target == "tokens"].method)
    assert rows[rows.method == "mlp"].p90_coverage.between(0, 1).all()
    assert [p.name for p in report.plots] == ["pred_vs_actual_ttft.png", "pred_vs_actual_tpot.png",
                                              "pred_vs_actual_tokens.png"]
    assert all(p.stat().st_size > 1000 for p in report.plots)
    text = format_report(report)
    assert "N=150" in text and "ema" in text
    # trained on exactly the train half of the report's split (same seed and fraction): the test rows are unseen
    assert report.held_out == {"latency": True, "length": True}
