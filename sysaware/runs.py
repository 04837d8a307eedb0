"""One run directory per job: every artifact (tables, datasets, checkpoints, reports) goes under it, never into the
package. Default: ``runs/<job>-<UTC timestamp>``; ``SYSAWARE_RUNS`` moves the parent."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path


def runs_root() -> Path:
    return Path(os.environ.get("SYSAWARE_RUNS", "runs"))


def new_run_dir(job: str, run_dir: str | Path | None = None) -> Path:
    path = Path(run_dir) if run_dir else runs_root() / f"{job}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Where derived, rebuildable files are kept (the exported encoder, background answer streams):
    $SYSAWARE_CACHE_DIR, else ~/.cache/sysaware. One home for every layer that caches."""
    env = os.environ.get("SYSAWARE_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sysaware"
