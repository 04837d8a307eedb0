"""The estimators' view of the Phase 2 dataset: schema-checked rows with the prompt text joined in, and the splits.

Both splits keep the test set honest: by prompt (no prompt text seen in training, so F_len cannot memorise it) and by
time (train on the earlier probes of each level, test on the later ones).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.data import dataset_store as store
from sysaware.data.dataset_store import load_dataset
from sysaware.data.prompts_store import read_existing
from sysaware.data.metrics_schema import validate


def load_phase2(path: str | Path, prompts_csv: str | Path | None = None) -> pd.DataFrame:
    """The Phase 2 run's probes plus ``prompt_text`` (from the Phase 1 file its manifest names, or ``prompts_csv``)."""
    df = validate(load_dataset(path), source=str(path))
    if prompts_csv is None:
        manifest = store.read_manifest(path) or {}
        prompts_csv = (manifest.get("prompts") or {}).get("path")
    if prompts_csv is None or not Path(prompts_csv).exists():
        raise FileNotFoundError(f"{path}: the Phase 1 prompts file {prompts_csv!r} is needed for the prompt texts")
    return attach_prompt_text(df, read_existing(Path(prompts_csv)))


def attach_prompt_text(df: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    texts = prompts.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_text"]
    out = df.copy()
    out["prompt_text"] = out["prompt_id"].map(texts)
    missing = out["prompt_text"].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} probe(s) whose prompt_id is not in the Phase 1 file, e.g. "
                         f"{out.loc[missing, 'prompt_id'].iloc[0]!r}")
    return out


def training_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows usable for both estimators: a TPOT needs two tokens (one-token answers have NaN TPOT)."""
    return df[df["actual_tpot"].notna() & (df["actual_tpot"] > 0) & (df["actual_ttft"] > 0)].reset_index(drop=True)


def split_by_prompt(df: pd.DataFrame, test_frac: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole prompts go to test: no prompt_id in both halves."""
    ids = np.array(sorted(df["prompt_id"].unique()))
    rng = np.random.default_rng(seed)
    test_ids = set(rng.choice(ids, size=max(1, int(round(len(ids) * test_frac))), replace=False).tolist())
    is_test = df["prompt_id"].isin(test_ids)
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def split_by_time(df: pd.DataFrame, frac: float = 0.8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per load level, the first ``frac`` of probes by submission time train, the rest test (no look-ahead)."""
    train, test = [], []
    for _, level in df.groupby("concurrency", sort=True):
        level = level.sort_values("submitted_at")
        cut = int(len(level) * frac)
        train.append(level.iloc[:cut])
        test.append(level.iloc[cut:])
    return pd.concat(train).reset_index(drop=True), pd.concat(test).reset_index(drop=True)


def fingerprint(df: pd.DataFrame) -> dict:
    """Which data an artifact was trained on: row count, levels, and a hash of the probe keys."""
    keys = "\n".join(sorted(df["probe_key"].astype(str)))
    return {
        "rows": int(len(df)),
        "prompts": int(df["prompt_id"].nunique()),
        "levels": sorted(int(x) for x in df["concurrency"].unique()),
        "models": sorted(df["model_id"].unique().tolist()),
        "probe_keys_sha256": hashlib.sha256(keys.encode()).hexdigest(),
    }
