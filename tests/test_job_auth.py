"""Job submission with Ray 2.60's token authentication on, as on the clusters `sysaware serve`, cluster.yaml and
KubeRay start: a real head node (`ray start --head`, RAY_AUTH_MODE=token) and the job-submission client.

With the token the README's job runs (its `python` made the environment's through the runtime env's PATH); without
it the dashboard answers 401, with a wrong one 403. The cluster is started without the virtual environment on PATH,
as a user's shell would, so the job only finds sysaware through what the README tells it to pass.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.xdist_group("ray")  # one Ray start at a time (with the ray_session tests)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # a shell without the environment activated


@pytest.fixture(scope="module")
def token_cluster():
    """(dashboard URL, token) of a one-node Ray cluster with token auth; every port its own, so it can run beside
    the session's cluster. Stopped by killing the process group it was started in (never `ray stop`, which would
    stop every Ray on the machine)."""
    token = secrets.token_hex(16)
    temp_dir = tempfile.mkdtemp(prefix="sa-auth-", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard_port = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard_port,
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--ray-client-server-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=1", "--num-gpus=0",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           *(f"{flag}={port}" for flag, port in ports.items())]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=PLAIN_PATH, HF_HUB_OFFLINE="1")
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 120
        while status_of(f"{url}/api/version", token) != 200:
            if head.poll() is not None:
                pytest.fail(f"ray start exited {head.returncode}: {head.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the dashboard did not come up in 120 s")
            time.sleep(1.0)
        wait_until_jobs_run(url, token)
        yield url, token
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:  # `ray start --block` may sit out SIGTERM: its group goes at once
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def status_of(url: str, token: str | None) -> int | None:
    request = urllib.request.Request(url, headers={} if token is None else {"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None  # not listening yet


def wait_for(client, job_id: str, timeout_s: float = 180.0):
    from ray.job_submission import JobStatus

    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in terminal and time.monotonic() < deadline:
        time.sleep(1.0)
    return status, client.get_job_logs(job_id)


def submit_when_agent_ready(client, timeout_s: float = 90.0, **job) -> str:
    """Right after start the dashboard may answer "No available agent to submit job" until its agent registers, or
    drop the connection while it is still starting (seen on a loaded 2-core machine); both are retried."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except (RuntimeError, requests.ConnectionError) as e:
            transient = isinstance(e, requests.ConnectionError) or "No available agent" in str(e)
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def wait_until_jobs_run(url: str, token: str, timeout_s: float = 180.0) -> None:
    """The fixture's cluster is ready when a trivial job has run: the dashboard answers before its job agent has
    registered, and `ray job submit` (the README's command) does not retry on its own."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
    job_id = submit_when_agent_ready(client, timeout_s=timeout_s, entrypoint="true")
    status, logs = wait_for(client, job_id, timeout_s=timeout_s)
    if status != JobStatus.SUCCEEDED:
        pytest.fail(f"a trivial job on the token cluster ended {status}: {logs[-2000:]}")


def test_the_dashboard_answers_401_without_a_token_and_403_with_a_wrong_one(token_cluster):
    from ray.job_submission import JobSubmissionClient

    url, token = token_cluster
    assert status_of(f"{url}/api/jobs/", None) == 401
    assert status_of(f"{url}/api/jobs/", "not-" + token) == 403
    assert status_of(f"{url}/api/jobs/", token) == 200
    # The client says so too (it checks the connection when built).
    with pytest.raises(Exception, match="401|[Uu]nauthori"):
        JobSubmissionClient(url).list_jobs()
    with pytest.raises(Exception, match="403|[Ff]orbidden"):
        JobSubmissionClient(url, headers={"Authorization": "Bearer not-" + token}).list_jobs()


def test_a_job_submitted_with_the_token_runs_on_the_environments_python(token_cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    url, token = token_cluster
    client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
    job_id = submit_when_agent_ready(
        client,
        entrypoint="python jobs/cluster_check.py",
        runtime_env={"working_dir": str(REPO), "env_vars": {"PATH": f"{VENV_BIN}:{PLAIN_PATH}"}},
    )
    status, logs = wait_for(client, job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    report = json.loads(logs[logs.index("{"):])
    assert report["sysaware_version"] == "0.1.0" and report["cluster_resources"]["CPU"] == 1.0
    assert Path(report["python"]).parent == VENV_BIN


def test_the_readme_command_line_works(token_cluster):
    """`ray job submit` exactly as deploy/README.md writes it: token from RAY_AUTH_TOKEN, PATH in the runtime env."""
    url, token = token_cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}:{PLAIN_PATH}")
    runtime_env = json.dumps({"env_vars": {"PATH": f"{VENV_BIN}:/usr/bin:/bin"}})
    cmd = ["ray", "job", "submit", "--address", url, "--working-dir", ".", "--runtime-env-json", runtime_env,
           "--", "python", "jobs/cluster_check.py"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "sysaware 0.1.0 on Ray" in done.stdout
    env.pop("RAY_AUTH_TOKEN")
    env["RAY_AUTH_TOKEN_PATH"] = "/dev/null/none"  # and no token: refused, not hanging
    refused = subprocess.run(["ray", "job", "list", "--address", url], env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert refused.returncode != 0
