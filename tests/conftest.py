"""Shared fixtures. Ray: one local session per test run (per xdist worker that needs it, and every Ray test is put
in one xdist group so only one worker ever starts it), 2 CPUs, no GPUs, dashboard on for job submission."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))  # test helpers (twin_factories) import as top-level modules
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Serve restarts an HTTP proxy that misses three 10 s health checks; on a starved 2-core machine (the suite's two
# workers beside other jobs) a live proxy missed them, and every ingress test after it errored. Ray workers inherit
# this environment from ray.init.
os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
# Background answer files (sim/answer_stream.py) of this test run only: a test never reads another run's answers.
os.environ.setdefault("SYSAWARE_ANSWER_STREAMS_DIR", tempfile.mkdtemp(prefix="sysaware-answer-streams-"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups (pytest-dev/pytest#13677)
def pytest_collection_modifyitems(config, items):
    # Every test that touches Ray runs on the same xdist worker (see the Makefile's --dist loadgroup).
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))


UNGROUPED = pytest.StashKey[str]()


def pytest_collection_finish(session):
    """On an xdist worker under --dist loadgroup, check that the grouping took: xdist groups by a suffix it writes
    into the node id, which some pytest versions silently drop (pytest-dev/pytest-xdist#1386). Two workers would then
    each start a Ray session on the same 2 cores, and Ray tests would time out in ways that look random; instead
    ray_session fails every Ray test with this message."""
    if not getattr(session.config.option, "loadgroup", False):  # set on xdist workers only
        return
    ungrouped = [item.nodeid for item in session.items
                 if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid]
    if ungrouped:
        session.config.stash[UNGROUPED] = (
            f"xdist did not group {len(ungrouped)} tests marked xdist_group (e.g. {ungrouped[0]}): pytest "
            f"{pytest.__version__} with this pytest-xdist does not support --dist loadgroup; install the versions "
            "that pyproject.toml's [test] extra allows")


TEST_STALE_AFTER_S = 2.0  # the telemetry actor's staleness in the tests (see ray_session)


@pytest.fixture(scope="session")
def ray_session(request):
    """A real local Ray cluster for the whole run; yields the ray.init context (dashboard_url for job tests)."""
    import ray

    if UNGROUPED in request.config.stash:
        pytest.fail(request.config.stash[UNGROUPED])

    ctx = ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=True,
        dashboard_port=free_port(),
        ignore_reinit_error=True,
        logging_level="warning",
        _system_config={"metrics_report_interval_ms": 1000},
    )
    from sysaware.serving.telemetry import get_or_create_telemetry

    # Every test's telemetry actor, made here so that it is made with this setting: a replica is stale after 2 s of
    # silence, not the production 0.5 s (5 push periods), which a starved 2-core machine running Ray, Serve and the
    # suite can leave between two pushes of a live replica. No test waits for staleness within less than 2 s.
    get_or_create_telemetry(stale_after_s=TEST_STALE_AFTER_S)
    yield ctx
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
