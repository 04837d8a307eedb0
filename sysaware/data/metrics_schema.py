"""The Phase 2 dataset's schema: one row per probe, the estimators' training data.

The one home of the column names, their dtypes and units; the collector writes it, the report and the estimators
read it through ``validate`` so a drifted file fails loudly with the column named. The replica-state columns are
read off ``ReplicaStats`` in one place, ``replica_state_columns``: the collector's rows (simulated and live probes
alike) and the estimators' ``ReplicaState`` at decision time both go through it, so training and serving agree.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from sysaware.engines.types import ReplicaStats, step_remaining_ms

# (name, arrow type, unit / meaning)
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("probe_key", pa.string(), "stable id of (prompt, strategy, model, concurrency, repeat): resumption key"),
    ("prompt_id", pa.string(), "id of the harvested prompt (intermediate_prompts.csv)"),
    ("model_id", pa.string(), "served model name"),
    ("role_id", pa.string(), "role that received the prompt"),
    ("strategy_id", pa.string(), "flash | concise | deepthink"),
    ("concurrency", pa.int32(), "background clients per model (N)"),
    ("replica_id", pa.string(), "replica that served the probe"),
    ("queue_waiting", pa.int32(), "requests waiting on that replica at submission"),
    ("queue_running", pa.int32(), "requests running on that replica at submission"),
    ("kv_utilization", pa.float64(), "fraction of KV blocks in use at submission"),
    ("ema_ttft_ms", pa.float64(), "replica's EMA of recent TTFT at submission, ms"),
    ("step_ms", pa.float64(), "that replica's latest engine step duration at submission, ms (0: idle)"),
    ("step_remaining_ms", pa.float64(), "expected time until its in-progress step ends, ms (0: idle)"),
    ("step_tokens", pa.int32(), "tokens scheduled in that in-progress step (0: idle)"),
    ("total_input_tokens", pa.int32(), "prompt tokens"),
    ("output_tokens", pa.int32(), "generated tokens"),
    ("actual_ttft", pa.float64(), "time to first token, ms"),
    ("actual_tpot", pa.float64(), "mean inter-token latency after the first token, ms (NaN with one token)"),
    ("queue_ms", pa.float64(), "time from arrival to first scheduling, ms"),
    ("e2e_ms", pa.float64(), "arrival to last token, ms"),
    ("submitted_at", pa.float64(), "engine clock at submission, s"),
)

# The replica that served a probe, as ``replica_state_columns`` reads it (the estimators' latency features).
REPLICA_STATE_COLUMNS = (
    "queue_waiting", "queue_running", "kv_utilization", "ema_ttft_ms", "step_ms", "step_remaining_ms", "step_tokens"
)


def replica_state_columns(stats: ReplicaStats, age_s: float = 0.0) -> dict[str, int | float]:
    """The replica-state columns of ``stats`` seen ``age_s`` after they were taken (0 for stats whose age is folded
    in already: the simulator's, and the live readers' ``ReplicaView.stats_at_read``)."""
    return {
        "queue_waiting": stats.num_requests_waiting,
        "queue_running": stats.num_requests_running,
        "kv_utilization": float(stats.kv_cache_usage_perc),
        "ema_ttft_ms": float(stats.ema_ttft_ms),
        "step_ms": float(stats.step_ms),
        "step_remaining_ms": step_remaining_ms(stats.step_elapsed_ms, stats.step_ms, age_s),
        "step_tokens": stats.step_tokens,
    }


SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in COLUMNS])
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)


class SchemaError(ValueError):
    """A dataset whose columns or dtypes are not the Phase 2 schema."""


def validate(df: pd.DataFrame, source: str = "dataset") -> pd.DataFrame:
    """Check columns and dtypes (extra columns are allowed); returns ``df`` with the schema's column order first."""
    missing = [c for c in COLUMN_NAMES if c not in df.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing}; expected {list(COLUMN_NAMES)}")
    for name, dtype, _ in COLUMNS:
        col = df[name]
        ok = (
            pd.api.types.is_integer_dtype(col)
            if pa.types.is_integer(dtype)
            else pd.api.types.is_float_dtype(col)
            if pa.types.is_floating(dtype)
            else pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col)
        )
        if not ok:
            raise SchemaError(f"{source}: column {name!r} has dtype {col.dtype}, expected {dtype}")
    if df["probe_key"].duplicated().any():
        dup = df.loc[df["probe_key"].duplicated(), "probe_key"].iloc[0]
        raise SchemaError(f"{source}: duplicate probe_key {dup!r}")
    return df[list(COLUMN_NAMES) + [c for c in df.columns if c not in COLUMN_NAMES]]


def to_table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df[list(COLUMN_NAMES)], schema=SCHEMA, preserve_index=False)
