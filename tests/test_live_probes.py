"""Phase 2 on the live pool: the same collector and measurement as in simulation, through Ray Serve handles.

The twin's answer is a pure function of (model, messages, seed) and a probe's seed does not depend on the load, so
the live dataset's output lengths must equal the simulated backend's for the same probes; only timings differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_factories import deployed, two_model_pool

from sysaware.pipelines.collect_metrics import MetricsSettings, collect_metrics, load_dataset, load_prompt_rows
from sysaware.pipelines.collect_prompts import CollectSettings, collect_prompts
from sysaware.pipelines.live_probes import LiveProbeBackend
from sysaware.data.metrics_schema import validate
from sysaware.pipelines.probes import PromptPoolFactory

APP = "test-live-probes"
TIME_SCALE = 20.0  # engine seconds per wall second: a level of a dozen probes takes a second or two




def create_settings(levels: tuple[int, ...]) -> MetricsSettings:
    return MetricsSettings(levels=levels, num_prompts=2, probe_rate_per_s=1.0, warmup_s=2.0, max_tokens=512)


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phase1")
    return collect_prompts(two_model_pool(), out, CollectSettings(runs_per_task=1, num_tasks=1), progress=False)


@pytest.fixture(scope="module")
def live(ray_session):
    yield from deployed(two_model_pool(), APP, TIME_SCALE)


def test_live_collection_is_valid_and_matches_the_simulated_answers(live, prompts_csv, tmp_path):
    pool, handles, telemetry = live
    settings = create_settings(levels=(1, 4))
    rows = load_prompt_rows(prompts_csv, settings.num_prompts)
    background = PromptPoolFactory(rows, settings.strategies, settings.max_tokens)
    backend = LiveProbeBackend(handles, telemetry, TIME_SCALE, background, settings.warmup_s, settings.seed)
    collect_metrics(pool, prompts_csv, tmp_path / "live", settings, backend=backend, progress=False)
    df = validate(load_dataset(tmp_path / "live"), "live dataset")

    assert len(df) == 2 * 3 * 2 * 2  # prompts x strategies x models x levels, each probe once
    assert df.probe_key.is_unique
    assert sorted(df.concurrency.unique()) == [1, 4]
    for r in df.itertuples():
        assert r.replica_id.startswith(f"{APP}#{r.model_id}#")  # the deployment of the probe's model served it
        assert r.output_tokens > 0 and r.total_input_tokens > 0
        assert 0 < r.actual_ttft <= r.e2e_ms and 0 <= r.queue_ms <= r.e2e_ms
        assert r.actual_tpot > 0 and r.e2e_ms < 600_000  # engine ms: well under the twin's longest answer
        assert 0.0 <= r.kv_utilization <= 1.0 and r.queue_waiting >= 0 and r.queue_running >= 0
    # With background clients running, each model's replica was recorded busy. Not every probe finds it busy: a
    # closed-loop client spends each round trip's overhead off the engine, and at time_scale 20 on a starved host
    # (two busy loops beside the suite) that left the replica idle for 4-5 of 12 probes at N=4.
    loaded = df[df.concurrency == 4]
    assert ((loaded.queue_running + loaded.queue_waiting).groupby(loaded.model_id).max() >= 1).all()
    # ... and the engine step it was in reached the dataset through telemetry, its wait extrapolated to submission
    assert (loaded.step_ms > 0).any() and (loaded.step_tokens > 0).any()
    assert ((loaded.step_remaining_ms >= 0) & (loaded.step_remaining_ms <= loaded.step_ms)).all()

    collect_metrics(pool, prompts_csv, tmp_path / "sim", create_settings(levels=(1,)), progress=False)
    sim = load_dataset(tmp_path / "sim").set_index("probe_key")
    live_n1 = df[df.concurrency == 1].set_index("probe_key")
    assert sorted(live_n1.index) == sorted(sim.index)
    assert live_n1.output_tokens.to_dict() == sim.loc[live_n1.index].output_tokens.to_dict()
    assert live_n1.total_input_tokens.to_dict() == sim.loc[live_n1.index].total_input_tokens.to_dict()


def test_cli_live_backend_probes_a_running_application(live, prompts_csv, tmp_path):
    from typer.testing import CliRunner

    from sysaware.cli import app

    pool, _, _ = live
    args = ["collect-metrics", "--prompts", str(prompts_csv), "--backend", "live", "--app-name", APP]
    args += ["--time-scale", str(TIME_SCALE), "--levels", "2", "--num-prompts", "1", "--warmup-s", "1"]
    args += ["--models", pool.models[0].name, "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    df = load_dataset(tmp_path / "run")
    assert len(df) == 3  # one prompt x 3 strategies x one model x one level
    assert df.replica_id.str.startswith(f"{APP}#{pool.models[0].name}#").all()
