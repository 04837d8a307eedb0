"""The Phase 2 dataset on disk: Parquet shards plus a manifest, written so that a kill at any instant loses nothing.

Layout under the run directory::

    metrics/shard-n<N>-<index>.parquet   one chunk of probes at background concurrency N (written complete or not
                                         at all: temp file, then rename)
    metrics/manifest.json                shards and row counts, the collection settings, the Phase 1 fingerprint
    metrics/metrics.csv                  with --csv, every shard in one CSV

The shards on disk are the truth (a kill between a shard's rename and the manifest's rewrite leaves a shard the
manifest does not list yet); the manifest is a summary, rewritten from the shards after every write. Shard names
carry the concurrency so that levels collected by separate processes (Ray tasks) never collide.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from sysaware.data.metrics_schema import COLUMN_NAMES, SchemaError, to_table, validate

DATASET_DIR = "metrics"
MANIFEST_NAME = "manifest.json"
CSV_NAME = "metrics.csv"
_SHARD_RE = re.compile(r"^shard-n(\d+)-(\d+)\.parquet$")


def dataset_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / DATASET_DIR


def shard_paths(run_dir: str | Path) -> list[Path]:
    """Complete shards (temp files of an interrupted write are not shards), in (concurrency, index) order."""
    d = dataset_dir(run_dir)
    if not d.exists():
        return []
    found = [(tuple(int(g) for g in m.groups()), p) for p in d.iterdir() if (m := _SHARD_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def existing_keys(run_dir: str | Path) -> set[str]:
    """Probe keys already collected: only the key column is read."""
    keys: set[str] = set()
    for path in shard_paths(run_dir):
        keys.update(pq.read_table(path, columns=["probe_key"]).column("probe_key").to_pylist())
    return keys


def remove_stale_temp(run_dir: str | Path) -> int:
    """Delete temp files a killed writer left behind (call only when no writer is running); returns how many."""
    d = dataset_dir(run_dir)
    stale = [p for p in d.glob(".*.tmp")] if d.exists() else []
    for p in stale:
        p.unlink()
    return len(stale)


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one


def write_shard(run_dir: str | Path, concurrency: int, rows: pd.DataFrame) -> Path:
    """Validate ``rows`` against the schema and write them as the next shard of level ``concurrency``."""
    df = validate(rows, source="new shard")
    d = dataset_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    indices = [int(m.group(2)) for p in d.iterdir() if (m := _SHARD_RE.match(p.name)) and int(m.group(1)) == concurrency]
    path = d / f"shard-n{concurrency}-{max(indices, default=-1) + 1:05d}.parquet"
    table = to_table(df)
    _atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp))
    return path


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes: ties the dataset to the exact Phase 1 CSV it replayed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(run_dir: str | Path) -> dict | None:
    path = dataset_dir(run_dir) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else None


def write_manifest(run_dir: str | Path, settings: dict, prompts: dict) -> dict:
    """Rewrite the manifest from the shards on disk (row counts from the Parquet footers, no data read)."""
    shards = [{"file": p.name, "rows": pq.ParquetFile(p).metadata.num_rows} for p in shard_paths(run_dir)]
    manifest = {
        "columns": list(COLUMN_NAMES),
        "rows": sum(s["rows"] for s in shards),
        "shards": shards,
        "settings": settings,
        "prompts": prompts,  # the Phase 1 input: path, sha256, rows
    }
    d = dataset_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2)
    _atomic_write_bytes(d / MANIFEST_NAME, lambda tmp: tmp.write_text(text))
    return manifest


def check_same_input(run_dir: str | Path, prompts: dict) -> None:
    """A run directory replays one Phase 1 file: resuming it from another would mix two prompt sets."""
    manifest = read_manifest(run_dir)
    if manifest is not None and manifest["prompts"].get("sha256") != prompts["sha256"]:
        raise ValueError(
            f"{dataset_dir(run_dir)} was collected from {manifest['prompts'].get('path')} "
            f"(sha256 {manifest['prompts'].get('sha256', '?')[:12]}), not {prompts['path']} "
            f"(sha256 {prompts['sha256'][:12]}); use another --run-dir"
        )


def load_dataset(run_dir: str | Path) -> pd.DataFrame:
    """Every shard in one frame, schema-checked (columns, dtypes, no duplicate probe key)."""
    paths = shard_paths(run_dir)
    if not paths:
        raise SchemaError(f"{dataset_dir(run_dir)}: no shards")
    df = pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)
    return validate(df, source=str(dataset_dir(run_dir)))


def write_csv(run_dir: str | Path) -> Path:
    path = dataset_dir(run_dir) / CSV_NAME
    df = load_dataset(run_dir)
    _atomic_write_bytes(path, lambda tmp: df.to_csv(tmp, index=False))
    return path
