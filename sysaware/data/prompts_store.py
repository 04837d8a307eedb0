"""The Phase 1 file, ``intermediate_prompts.csv``: its columns and how to read it.

Its home is this data layer because both the pipeline that writes it (``pipelines/collect_prompts.py``, where each
column is described) and the estimators that train on it read it; neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

CSV_NAME = "intermediate_prompts.csv"
COLUMNS = [
    "prompt_id",
    "run_id",
    "run_prompts",
    "task_id",
    "topology",
    "step",
    "slot_id",
    "role_id",
    "strategy",
    "model",
    "upstream_roles",
    "prompt_tokens",
    "prompt_text",
    "messages_json",
]


def read_existing(path: Path) -> pd.DataFrame:
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype={"prompt_id": str, "run_id": str}, keep_default_na=False)
