"""Phase 2: the metrics dataset (schema, what it measures, resumption after a real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sysaware.config import REPO_ROOT, PoolConfig
from sysaware.data import dataset_store as store
from sysaware.sim.backend import SimBackend
from sysaware.pipelines.collect_metrics import (
    MetricsSettings,
    collect_metrics,
    load_dataset,
    load_prompt_rows,
    plan_level,
)
from sysaware.pipelines.collect_prompts import CollectSettings, collect_prompts
from sysaware.data.metrics_schema import COLUMNS, SchemaError
from sysaware.tasks.prompts import STRATEGY_INSTRUCTIONS, Strategy
from twin_factories import default_pool as pool, default_backend as twin_backend, default_responder as twin_responder




def small_pool(models: int = 2, max_num_seqs: int = 256) -> PoolConfig:
    """The default pool cut to its first ``models`` models; a small max_num_seqs makes queues form at low N."""
    cfg = pool()
    chosen = [
        m.model_copy(update={"twin": m.twin.model_copy(update={"max_num_seqs": max_num_seqs})})
        for m in cfg.models[:models]
    ]
    return cfg.model_copy(update={"models": chosen})


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory) -> Path:
    """A small Phase 1 output: 3 train tasks, one workflow each (a dozen or so prompts)."""
    out = tmp_path_factory.mktemp("phase1")
    return collect_prompts(pool(), out, CollectSettings(runs_per_task=1, num_tasks=3), twin_backend(), progress=False)


def collect(prompts_csv: Path, run_dir: Path, cfg: PoolConfig | None = None, **settings) -> Path:
    cfg = cfg or small_pool()
    sim = SimBackend(cfg, twin_responder())  # the shared responder (it loads the recordings once) on this pool
    return collect_metrics(cfg, prompts_csv, run_dir, MetricsSettings(**settings), sim=sim, progress=False)


def expected_keys(prompts_csv: Path, cfg: PoolConfig, settings: MetricsSettings) -> set[str]:
    rows = load_prompt_rows(prompts_csv, settings.num_prompts)
    models = [m.name for m in cfg.models]
    return {s.key for n in settings.levels for s in plan_level(rows, models, n, settings)}


def test_every_probe_is_one_row_with_the_schema_columns_and_dtypes(prompts_csv, tmp_path):
    collect(prompts_csv, tmp_path, levels=(1, 10), chunk_size=40)
    df = load_dataset(tmp_path)
    assert list(df.columns[: len(COLUMNS)]) == [name for name, _, _ in COLUMNS]
    # the Parquet shards carry the schema's arrow types exactly
    for path in store.shard_paths(tmp_path):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        for name, dtype, _ in COLUMNS:
            assert schema.field(name).type == dtype, name
    # prompts x 3 strategies x 2 models x 2 levels, each once
    rows = load_prompt_rows(prompts_csv)
    assert len(df) == len(rows) * 3 * 2 * 2
    assert set(df.probe_key) == expected_keys(prompts_csv, small_pool(), MetricsSettings(levels=(1, 10)))
    assert set(df.strategy_id) == {s.value for s in Strategy} and set(df.concurrency) == {1, 10}
    assert set(df.replica_id) <= {f"{m.name}/{i}" for m in small_pool().models for i in range(m.replicas)}
    assert (df.replica_id.str.split("/").str[0] == df.model_id).all()
    # measured values are physical: TTFT after queueing, e2e after TTFT, KV a fraction, lengths positive
    assert (df.actual_ttft >= df.queue_ms).all() and (df.e2e_ms >= df.actual_ttft).all()
    assert df.kv_utilization.between(0, 1).all() and (df.output_tokens > 0).all()
    assert (df.total_input_tokens > 0).all()
    # at N background clients a replica runs at least those N (the probe itself is not counted at submission)
    running = df.groupby("concurrency").queue_running.min()
    assert running[10] >= 10 - 1  # a client between answers is briefly out of the system
    # the manifest lists every shard with its rows, the settings and the Phase 1 file's fingerprint
    manifest = store.read_manifest(tmp_path)
    assert manifest["rows"] == len(df) and sum(s["rows"] for s in manifest["shards"]) == len(df)
    assert len(manifest["shards"]) == len(store.shard_paths(tmp_path)) > 2
    assert manifest["prompts"]["sha256"] == store.file_fingerprint(prompts_csv)
    assert manifest["settings"]["levels"] == [1, 10]


def test_a_rerun_sends_nothing_and_csv_matches_parquet(prompts_csv, tmp_path):
    collect(prompts_csv, tmp_path, levels=(1,), chunk_size=50)
    shards = sorted(p.name for p in store.shard_paths(tmp_path))
    collect(prompts_csv, tmp_path, levels=(1,), chunk_size=50)
    assert sorted(p.name for p in store.shard_paths(tmp_path)) == shards  # nothing missing: nothing written
    path = store.write_csv(tmp_path)
    import pandas as pd

    from_csv = pd.read_csv(path)
    assert set(from_csv.probe_key) == set(load_dataset(tmp_path).probe_key)


def test_a_duplicate_probe_or_a_changed_phase1_file_is_refused(prompts_csv, tmp_path):
    collect(prompts_csv, tmp_path, levels=(1,), num_prompts=2)
    first = load_dataset(tmp_path)
    store.write_shard(tmp_path, 1, first.iloc[:1])  # the same probe twice on disk
    with pytest.raises(SchemaError, match="duplicate probe_key"):
        load_dataset(tmp_path)
    other = tmp_path / "other.csv"
    other.write_text(prompts_csv.read_text() + "\n")
    with pytest.raises(ValueError, match="another --run-dir"):
        collect(other, tmp_path, levels=(1,), num_prompts=2)


def test_the_strategy_instruction_is_replaced_not_stacked(prompts_csv):
    from sysaware.pipelines.probes import with_strategy

    row = load_prompt_rows(prompts_csv, 1)[0]
    for strategy, instruction in STRATEGY_INSTRUCTIONS.items():
        text = with_strategy(row.messages, strategy)[-1].content
        assert text.endswith("\n\n" + instruction)
        assert sum(text.count(i) for i in STRATEGY_INSTRUCTIONS.values()) == 1


def test_ttft_rises_with_queue_waiting(prompts_csv, tmp_path):
    # max_num_seqs=4: at N=10 six requests wait on average, so probes meet queues of many depths.
    cfg = small_pool(models=2, max_num_seqs=4)
    collect(prompts_csv, tmp_path, cfg, levels=(1, 4, 10), chunk_size=100)
    df = load_dataset(tmp_path)
    assert df.queue_waiting.max() >= 3
    for model, rows in df.groupby("model_id"):
        queued, idle = rows[rows.queue_waiting > 0], rows[rows.queue_waiting == 0]
        assert len(queued) >= 10 and len(idle) >= 10, model
        assert queued.actual_ttft.mean() > 2 * idle.actual_ttft.mean(), model
        rho = rows[["queue_waiting", "actual_ttft"]].corr(method="spearman").iloc[0, 1]
        assert rho > 0.5, (model, rho)


def test_deepthink_answers_are_longer_than_flash_for_the_same_prompt_and_model(prompts_csv, tmp_path):
    collect(prompts_csv, tmp_path, levels=(1,))
    df = load_dataset(tmp_path)
    lengths = df.pivot_table(index=["prompt_id", "model_id"], columns="strategy_id", values="output_tokens")
    assert lengths.deepthink.mean() > 1.5 * lengths.flash.mean()
    assert (lengths.deepthink > lengths.flash).mean() > 0.7  # most pairs, not just on average
    # load changes latency, not the answer: the same probe at another level has the same length
    collect(prompts_csv, tmp_path, levels=(1, 10))
    both = load_dataset(tmp_path).pivot_table(
        index=["prompt_id", "model_id", "strategy_id"], columns="concurrency", values="output_tokens"
    )
    assert np.array_equal(both[1].to_numpy(), both[10].to_numpy())


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env, **kw)


def test_sigkill_then_rerun_finishes_with_no_lost_and_no_duplicate_probe(prompts_csv, tmp_path):
    run_dir = tmp_path / "p2"
    common = ["--prompts", str(prompts_csv), "--run-dir", str(run_dir), "--levels", "1,10,50", "--chunk-size", "5"]
    proc = _run(["jobs/collect_metrics.py", *common, "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not store.shard_paths(run_dir):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard within 120 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    expected = expected_keys(prompts_csv, pool(), MetricsSettings(levels=(1, 10, 50)))
    partial = store.existing_keys(run_dir)
    assert 0 < len(partial) < len(expected)  # killed mid-run
    # resume through the CLI this time (the same collector behind both)
    done = subprocess.run(
        [sys.executable, "-m", "sysaware.cli", "collect-metrics", *common],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    df = load_dataset(run_dir)  # raises on a duplicate key
    assert len(df) == len(expected) and set(df.probe_key) == expected
    assert not list(store.dataset_dir(run_dir).glob(".*.tmp"))
    assert store.read_manifest(run_dir)["rows"] == len(df)
