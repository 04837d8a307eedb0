"""Step times fitted to an engine's own measured steps: the twin of a replica whose hardware has no roofline here.

The roofline (step_time.py) is built from GPU datasheets and Vidur's operator profiles. A CPU replica (vLLM's CPU
build on this machine) has neither, but it can be measured: ``sysaware calibrate --vllm`` replays a trace on the
engine, records every step's shape and wall duration, and fits

    step = overhead + a x prefill_tokens + b x prefill_attended + c x decode_seqs + d x decode_context

(the ``BatchShape`` sums; non-negative least squares, so no term can make a step cheaper). The profile is stored per
(GPU catalogue key, model) in ``resources/step_profiles.json`` with its fit error, and
``step_time_for(model, pool)`` prefers it to the roofline. A step that runs nothing costs 0, as in the roofline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sysaware.config import ModelDeployment, PoolConfig
from sysaware.engines.twin.protocols import BatchShape
from sysaware.resources import RESOURCES

PROFILES_PATH = RESOURCES / "step_profiles.json"
FEATURES = ("overhead_s", "prefill_token_s", "prefill_pair_s", "decode_seq_s", "context_token_s")


@dataclass(frozen=True)
class StepProfile:
    """Fitted seconds per unit of each ``BatchShape`` term, and how well they fit."""

    gpu: str  # catalogue key, e.g. "cpu"
    model: str  # served model name
    overhead_s: float  # every step that runs anything
    prefill_token_s: float  # per prefill token
    prefill_pair_s: float  # per prefill token pair (chunk x (cached + chunk))
    decode_seq_s: float  # per decoding sequence
    context_token_s: float  # per context token of the decoding sequences
    num_steps: int = 0  # steps the fit used
    median_rel_error: float = 0.0  # |predicted / measured - 1| over them
    p90_rel_error: float = 0.0
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.gpu}/{self.model}"

    def coefficients(self) -> np.ndarray:
        return np.array([getattr(self, f) for f in FEATURES])


def shape_features(shapes: Sequence[BatchShape]) -> np.ndarray:
    """One row per step: [1, prefill_tokens, prefill_attended, decode_seqs, decode_context]."""
    return np.array(
        [[1.0, s.prefill_tokens, s.prefill_attended, s.decode_seqs, s.decode_context] for s in shapes], dtype=float
    )


def fit_profile(gpu: str, model: str, shapes: Sequence[BatchShape], durations_s: Sequence[float],
                source: str = "") -> StepProfile:
    """Non-negative least squares of the measured durations on the shape terms, in seconds (unweighted: the fit
    keeps the mean, so a run of fitted steps lasts as long as the measured run, which TTFT and TPOT add up; on a
    shared machine single steps swing by 10x and more with the neighbours' load, and no fit follows that)."""
    from scipy.optimize import nnls

    x = shape_features(shapes)
    y = np.asarray(durations_s, dtype=float)
    keep = y > 0
    x, y = x[keep], y[keep]
    if len(y) < len(FEATURES):
        raise ValueError(f"{len(y)} measured steps are too few to fit {len(FEATURES)} coefficients")
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(x / scale, y)
    coef = coef / scale
    rel = np.abs(x @ coef / y - 1.0)
    return StepProfile(gpu, model, *map(float, coef), num_steps=int(len(y)),
                       median_rel_error=float(np.median(rel)), p90_rel_error=float(np.quantile(rel, 0.9)),
                       source=source)


class MeasuredStepTime:
    """``StepTimeModel`` from a ``StepProfile`` (the same arithmetic in the single-step and the run paths)."""

    def __init__(self, profile: StepProfile, kv_bytes_per_token: int = 0, weight_bytes: int = 0) -> None:
        self.profile = profile
        self._c = profile.coefficients().tolist()
        self._kv_bytes_per_token = kv_bytes_per_token
        self._weight_bytes = weight_bytes

    def step_time_s(self, shape: BatchShape) -> float:
        return self.step_time_parts_s(shape.prefill_tokens, shape.prefill_attended, shape.decode_seqs,
                                      shape.decode_context)

    def step_time_parts_s(self, prefill_tokens: int, prefill_attended: int, decode_seqs: int,
                          decode_context: int) -> float:
        """``step_time_s`` from the shape's four sums (the core's hot path builds no ``BatchShape``)."""
        if prefill_tokens + decode_seqs == 0:
            return 0.0
        c0, c1, c2, c3, c4 = self._c
        return c0 + prefill_tokens * c1 + prefill_attended * c2 + decode_seqs * c3 + decode_context * c4

    def decode_run_list_s(self, num_seqs: int, context_total: int, num_steps: int) -> list[float]:
        if num_steps <= 0:
            return []
        if num_seqs == 0:
            return [0.0] * num_steps
        c0, _, _, c3, c4 = self._c
        fixed = c0 + num_seqs * c3  # step_time_s's sum with the prefill terms at 0: the same floats
        return [fixed + (context_total + num_seqs * k) * c4 for k in range(num_steps)]

    def decode_run_s(self, num_seqs: int, context_total: int, num_steps: int) -> np.ndarray:
        return np.array(self.decode_run_list_s(num_seqs, context_total, num_steps), dtype=float)

    def weight_bytes_per_gpu(self) -> int:
        return self._weight_bytes

    def kv_bytes_per_token_per_gpu(self) -> int:
        return self._kv_bytes_per_token


@lru_cache(maxsize=1)
def _load(path: str) -> dict[str, StepProfile]:
    p = Path(path)
    if not p.exists():
        return {}
    raw = json.loads(p.read_text())
    return {k: StepProfile(**v) for k, v in raw.get("profiles", {}).items()}


def load_profiles(path: Path = PROFILES_PATH) -> dict[str, StepProfile]:
    return dict(_load(str(path)))


def save_profile(profile: StepProfile, path: Path = PROFILES_PATH) -> None:
    profiles = load_profiles(path)
    profiles[profile.key] = profile
    doc = {
        "about": "Step-time profiles fitted to an engine's own measured steps (sysaware calibrate --vllm); "
                 "see sysaware/engines/twin/perf/measured_step_time.py",
        "profiles": {k: asdict(v) for k, v in sorted(profiles.items())},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    _load.cache_clear()


def step_time_for(model: ModelDeployment, pool: PoolConfig):
    """The measured profile of ``model`` on its GPU type when there is one, else the roofline."""
    from sysaware.engines.twin.perf.step_time import RooflineStepTime

    roofline = RooflineStepTime.for_deployment(model, pool)
    profile = load_profiles().get(f"{model.gpu}/{model.name}")
    if profile is None:
        return roofline
    return MeasuredStepTime(profile, roofline.kv_bytes_per_token_per_gpu(), roofline.weight_bytes_per_gpu())
