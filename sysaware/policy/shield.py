"""The budget shield: a hard latency constraint on the executor's action mask (safe RL "shielding").

The Lagrangian reward (reward.py) prices SLO misses on average; it cannot stop the one decision that is certain
to miss. The shield can: at every executor decision it removes the candidates whose estimated P90 latency
(x ``margin``) exceeds what the remaining budget allows for this step, and when no candidate fits it leaves only
the fastest one:

    allowance_t = b_t / steps_left                      (the even split of the remaining budget, as greedy's)
    allowed(c)  = valid(c) and margin x P90_hat(c) <= allowance_t
    if no c is allowed: allowed = {argmin_c P90_hat(c) among the valid}

It is part of the encoding (``EncoderSpec.shield``, saved in ``encoder.json`` beside a checkpoint), applied where
the executor's mask is made (spaces.py ``Encoder.executor_rows``), so training (env.py) and serving (serve.py's
``RLExecutor``) shield identically, and a policy directory with another shield setting has another fingerprint
(an evaluation's cell cache key changes with it). The candidates' feature rows are unchanged: a shielded
candidate keeps its row and only loses its mask bit, so a checkpoint trained without the shield scores the same
rows under it.

``estimator`` names the latency estimator behind P90_hat (estimators/latency.py): ``queueing`` (the formula the
features use; its P90 is its mean, so ``margin`` is what makes it a tail bound) or ``learned`` (quantile heads,
F_len's output-length P90 from the prompt's embedding: tens of ms per decision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHIELD_MODES = ("off", "share")


@dataclass(frozen=True)
class ShieldSpec:
    mode: str = "off"  # "off" or "share" (mask candidates whose margin x P90 exceeds b_t / steps_left)
    margin: float = 1.0  # x the estimator's P90 (a calibrated tail factor: the queueing formula's P90 is its mean)
    estimator: str | None = None  # estimators/latency.py name for P90_hat; None: the encoder's own estimator

    def __post_init__(self) -> None:
        if self.mode not in SHIELD_MODES:
            raise ValueError(f"shield.mode: {self.mode!r} is not one of {SHIELD_MODES}")
        if not self.margin > 0:
            raise ValueError(f"shield.margin: must be > 0, got {self.margin}")

    @property
    def on(self) -> bool:
        return self.mode != "off"

    @classmethod
    def parse(cls, raw) -> "ShieldSpec":
        """From a config value: None / "off" / "share" / a dict of the fields / a ShieldSpec."""
        if raw is None:
            return cls()
        if isinstance(raw, ShieldSpec):
            return raw
        if isinstance(raw, str):
            return cls(mode=raw)
        if isinstance(raw, dict):
            if unknown := sorted(set(raw) - {"mode", "margin", "estimator"}):
                raise ValueError(f"shield: unknown field(s) {unknown}; known: mode, margin, estimator")
            return cls(**raw)
        raise ValueError(f"shield: expected 'off', 'share' or a mapping, got {raw!r}")


def allowance_s(remaining_budget_s: float, steps_left: int) -> float:
    """What the remaining budget allows this step: the even split b_t / steps_left (negative once b_t is spent)."""
    return remaining_budget_s / max(int(steps_left), 1)


def shield_mask(mask: np.ndarray, p90_s: np.ndarray, allowance: float, margin: float = 1.0) -> np.ndarray:
    """The shielded mask: ``mask`` (1 = valid) restricted to candidates with margin x P90 <= allowance; when none
    fits, only the fastest valid candidate (lowest P90; the first of equals). ``p90_s`` is indexed like ``mask``
    (values of invalid entries are ignored)."""
    mask = np.asarray(mask, np.float32)
    valid = mask > 0
    if not valid.any():
        return mask.copy()
    p90 = np.asarray(p90_s, np.float64)
    fits = valid & (margin * p90 <= allowance)
    out = np.zeros_like(mask)
    if fits.any():
        out[fits] = 1.0
    else:
        out[int(np.argmin(np.where(valid, p90, np.inf)))] = 1.0
    return out


def shielded_copy(src, dst, shield) -> "Path":
    """A copy of the policy directory ``src`` (serve.py's layout) at ``dst`` whose encoder.json carries ``shield``:
    the same weights under the shield, as a policy of its own (its fingerprint differs, so evaluation cells do)."""
    import shutil
    from pathlib import Path

    from sysaware.policy.spaces import EncoderSpec

    src, dst = Path(src), Path(dst)
    if not (src / "encoder.json").exists():
        raise FileNotFoundError(f"{src}: not a policy directory (no encoder.json)")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    EncoderSpec.load(src / "encoder.json").with_shield(shield).save(dst / "encoder.json")
    return dst
