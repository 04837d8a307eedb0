"""Phase 2 fanned out over Ray (one task per load level) writes the dataset the serial run writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sysaware.data import dataset_store as store
from sysaware.pipelines.collect_metrics import MetricsSettings, collect_metrics, collect_metrics_on_ray, load_dataset
from sysaware.pipelines.collect_prompts import CollectSettings, collect_prompts
from sysaware.tasks.prompts import Strategy
from twin_factories import default_backend as twin_backend, default_pool as pool


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phase1")
    return collect_prompts(pool(), out, CollectSettings(runs_per_task=1, num_tasks=1), twin_backend(), progress=False)


def tiny_pool():
    cfg = pool()
    return cfg.model_copy(update={"models": list(cfg.models[:2])})


def sorted_dataset(run_dir: Path) -> pd.DataFrame:
    df = load_dataset(run_dir)
    return df.sort_values("probe_key").reset_index(drop=True) if "probe_key" in df else df


def test_two_levels_as_ray_tasks_give_the_serial_dataset(ray_session, prompts_csv, tmp_path):
    # Two cells: levels 1 and 2, two models, two prompts x one strategy each.
    settings = MetricsSettings(levels=(1, 2), strategies=(Strategy.FLASH,), num_prompts=2, warmup_s=2.0, chunk_size=2)
    cfg = tiny_pool()
    collect_metrics(cfg, prompts_csv, tmp_path / "serial", settings, progress=False)
    collect_metrics_on_ray(cfg, prompts_csv, tmp_path / "ray", settings, progress=False)
    serial, fanned = sorted_dataset(tmp_path / "serial"), sorted_dataset(tmp_path / "ray")
    assert len(serial) == 2 * 2 * 2 and set(serial["concurrency"]) == {1, 2}
    pd.testing.assert_frame_equal(serial, fanned)
    shards = sorted(p.name for p in store.dataset_dir(tmp_path / "ray").glob("shard-*.parquet"))
    assert shards == ["shard-n1-00000.parquet", "shard-n1-00001.parquet", "shard-n2-00000.parquet",
                      "shard-n2-00001.parquet"]  # fmt: skip  (4 probes per level, 2 per chunk)
    # A rerun finds nothing missing and sends nothing.
    collect_metrics_on_ray(cfg, prompts_csv, tmp_path / "ray", settings, progress=False)
    assert len(load_dataset(tmp_path / "ray")) == len(serial)


def test_the_cli_fans_out_on_the_cluster_at_address(ray_session, prompts_csv, tmp_path):
    from typer.testing import CliRunner

    from sysaware.cli import app

    models = ",".join(m.name for m in tiny_pool().models)
    args = ["collect-metrics", "--prompts", str(prompts_csv), "--models", models, "--levels", "1,2",
            "--num-prompts", "1", "--warmup-s", "1", "--run-dir", str(tmp_path / "cli"), "--parallel",
            "--address", ray_session.address_info["address"]]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    df = load_dataset(tmp_path / "cli")
    assert set(df["concurrency"]) == {1, 2} and len(df) == 2 * 2 * len(Strategy)
    bad = CliRunner().invoke(app, [*args[:-3], "--backend", "live", "--parallel"])
    assert bad.exit_code == 2 and "--parallel" in bad.output
