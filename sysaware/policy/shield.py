"""The budget shield: a hard latency constraint on the executor's action mask (safe RL "shielding").

The Lagrangian reward (reward.py) prices SLO misses on average; it cannot stop the one decision that is certain
to miss. The shield can: at every executor decision it removes the candidates whose estimated P90 latency
(x ``margin``) exceeds what the remaining budget allows for this step, and when no candidate fits it leaves only
the fastest one:

    allowed(c)  = valid(c) and margin x P90_hat(c) <= allowance_t
    if no c is allowed: allowed = {argmin_c P90_hat(c) among the valid}     (fallback "fastest", the default)
                        allowed = valid                               (fallback "abstain": the shield steps
                                                                       aside when it cannot keep the budget)

with the allowance one of two splits of the remaining budget b_t (``split``):
- ``even``: b_t / steps_left, greedy's per-step share. Every call on the longest path to the answer gets the same
  time, though a programmer's answer takes several times a reviewer's critique, so it starves the long steps;
- ``profile``: b_t x call_s(slot) / path_s(slot), the SLO's own decomposition: call_s is the slot's idle latency
  under the reference executor from the pool profile (orchestration/budget.py, the formula the default SLO is
  slack x the critical path of) and path_s the longest sum of call_s from the slot to the answer. A step gets
  the part of what is left that the budget was built to give it. Needs the plan's topology in the step context
  (``StepContext.plan_topology``); without it, the even split.

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
SPLITS = ("even", "profile")
FALLBACKS = ("fastest", "abstain")


@dataclass(frozen=True)
class ShieldSpec:
    mode: str = "off"  # "off" or "share" (mask candidates whose margin x P90 exceeds b_t / steps_left)
    margin: float = 1.0  # x the estimator's P90 (a calibrated tail factor: the queueing formula's P90 is its mean)
    estimator: str | None = None  # estimators/latency.py name for P90_hat; None: the encoder's own estimator
    split: str = "even"  # how b_t is split over the steps left: "even" or "profile" (module docstring)
    fallback: str = "fastest"  # when no candidate fits: "fastest" (only the fastest) or "abstain" (mask unchanged)

    def __post_init__(self) -> None:
        if self.mode not in SHIELD_MODES:
            raise ValueError(f"shield.mode: {self.mode!r} is not one of {SHIELD_MODES}")
        if not self.margin > 0:
            raise ValueError(f"shield.margin: must be > 0, got {self.margin}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"shield.fallback: {self.fallback!r} is not one of {FALLBACKS}")
        if self.split not in SPLITS:
            raise ValueError(f"shield.split: {self.split!r} is not one of {SPLITS}")

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
            known = ("mode", "margin", "estimator", "split", "fallback")
            if unknown := sorted(set(raw) - set(known)):
                raise ValueError(f"shield: unknown field(s) {unknown}; known: {', '.join(known)}")
            return cls(**raw)
        raise ValueError(f"shield: expected 'off', 'share' or a mapping, got {raw!r}")


def allowance_s(remaining_budget_s: float, steps_left: int) -> float:
    """What the remaining budget allows this step: the even split b_t / steps_left (negative once b_t is spent)."""
    return remaining_budget_s / max(int(steps_left), 1)


class ProfileSplit:
    """The ``profile`` split: the fraction call_s(slot) / path_s(slot) of b_t a step may take, from the pool profile
    (orchestration/budget.py's reference-executor idle latency per slot), cached per (task, topology)."""

    def __init__(self, resources) -> None:
        from sysaware.orchestration.budget import ProfileBudget

        self.budget = ProfileBudget(resources, slack=1.0)
        self._cache: dict[tuple[int, int], tuple[object, dict[str, float]]] = {}
        self._by_shape: dict[tuple[int, str], dict[str, float]] = {}

    def fraction(self, task, topology, slot_id: str) -> float:
        # Keyed by the topology object (every decision of a request passes the same one; the entry holds it, so its
        # id cannot be reused), then by its shape; repr() of the slots per decision cost 0.1 ms.
        hit = self._cache.get((task.task_id, id(topology)))
        if hit is not None and hit[0] is topology:
            return hit[1][slot_id]
        shape = (task.task_id, repr(topology.slots))
        frac = self._by_shape.get(shape)
        if frac is None:
            call = {s.slot_id: self.budget.call_s(task, topology, s.slot_id) for s in topology.slots}
            path: dict[str, float] = {}
            for s in reversed(topology.slots):  # reverse topological order: successors first
                path[s.slot_id] = call[s.slot_id] + max((path[n] for n in topology.successors(s.slot_id)), default=0.0)
            frac = {sid: call[sid] / max(path[sid], 1e-9) for sid in call}
            self._by_shape[shape] = frac
        self._cache[(task.task_id, id(topology))] = (topology, frac)
        return frac[slot_id]

    def allowance_s(self, ctx) -> float:
        if ctx.plan_topology is None:
            return allowance_s(ctx.remaining_budget_s, ctx.steps_left)
        return ctx.remaining_budget_s * self.fraction(ctx.task, ctx.plan_topology, ctx.slot.slot_id)


def shield_mask(mask: np.ndarray, p90_s: np.ndarray, allowance: float, margin: float = 1.0,
                fallback: str = "fastest") -> np.ndarray:
    """The shielded mask: ``mask`` (1 = valid) restricted to candidates with margin x P90 <= allowance; when none
    fits, only the fastest valid candidate (lowest P90; the first of equals), or with ``fallback="abstain"`` the
    mask unchanged. ``p90_s`` is indexed like ``mask`` (values of invalid entries are ignored)."""
    mask = np.asarray(mask, np.float32)
    valid = mask > 0
    if not valid.any():
        return mask.copy()
    p90 = np.asarray(p90_s, np.float64)
    fits = valid & (margin * p90 <= allowance)
    out = np.zeros_like(mask)
    if fits.any():
        out[fits] = 1.0
    elif fallback == "abstain":
        return mask.copy()
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
