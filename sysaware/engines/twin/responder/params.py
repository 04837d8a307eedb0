"""The responder's parameter table (``resources/responder_params.yaml``): strategy and collaboration effects.

Every number in the file carries a source (paper and section) or is marked as an assumption with its reason; the
loader refuses anything else, so no effect enters the twin without saying where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from sysaware.resources import RESOURCES
from sysaware.tasks.prompts import Strategy

RESPONDER_PARAMS_YAML = RESOURCES / "responder_params.yaml"


class ParamsError(ValueError):
    """The parameter file has a number without a source, or a missing or unknown key."""


@dataclass(frozen=True)
class ResponderParams:
    # correctness.strategy: logit shifts
    flash_shift: float
    concise_shift: float
    deepthink_pivot_pass_rate: float
    deepthink_slope: float
    deepthink_max_shift: float
    deepthink_min_shift: float
    # correctness.collaboration: logit shifts
    plan_shift: float
    tests_shift: float
    failing_feedback_shift: float
    passing_feedback_shift: float
    right_critique_shift: float
    wrong_critique_shift: float
    # correctness.adoption: P(emit a visible upstream solution instead of its own), by role
    adopt_right_decision_maker: float
    adopt_right_bug_fixer: float
    adopt_right_programmer: float
    adopt_wrong_upstream: float
    # correctness.copy: P(emit the matching upstream solution), by role
    copy_decision_maker: float
    copy_bug_fixer: float
    copy_programmer: float
    # review
    review_accuracy_low: float
    review_accuracy_high: float
    review_approve_unknown: float
    # length
    deepthink_prose_factor: float
    deepthink_min_prose_tokens: float
    plan_factor_flash: float
    plan_factor_concise: float
    plan_factor_none: float
    plan_factor_deepthink: float
    tests_asserts_flash: float
    tests_asserts_concise: float
    tests_asserts_none: float
    tests_asserts_deepthink: float
    review_sentences_flash: float
    review_sentences_concise: float
    review_sentences_none: float
    review_sentences_deepthink: float
    # sizes of the recorded models, billions of parameters
    recorded_model_params_b: dict[str, float]

    def deepthink_shift(self, pass_rate: float) -> float:
        raw = self.deepthink_slope * (pass_rate - self.deepthink_pivot_pass_rate)
        return min(max(raw, self.deepthink_min_shift), self.deepthink_max_shift)

    def strategy_shift(self, strategy: Strategy | None, pass_rate: float) -> float:
        if strategy is Strategy.FLASH:
            return self.flash_shift
        if strategy is Strategy.CONCISE:
            return self.concise_shift
        if strategy is Strategy.DEEPTHINK:
            return self.deepthink_shift(pass_rate)
        return 0.0

    def by_strategy(self, prefix: str, strategy: Strategy | None) -> float:
        return getattr(self, f"{prefix}_{strategy.value if strategy else 'none'}")

    def adopt_right_for(self, role_id: str) -> float:
        """P(a coder in this role emits a visible correct solution instead of its own wrong one)."""
        return getattr(self, f"adopt_right_{role_id}", self.adopt_right_programmer)

    def copy_for(self, role_id: str) -> float:
        """P(a coder in this role copies a visible solution that has its own outcome rather than rewriting it)."""
        return getattr(self, f"copy_{role_id}", self.copy_programmer)


def _number(node: object, where: str) -> float:
    if not isinstance(node, dict) or "value" not in node:
        raise ParamsError(f"{where}: expected a mapping with 'value' and 'source' (or 'assumption' and 'reason')")
    if not node.get("source") and not (node.get("assumption") is True and node.get("reason")):
        raise ParamsError(f"{where}: a number needs a 'source', or 'assumption: true' with a 'reason'")
    value = node["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{where}: value must be a number, got {value!r}")
    return float(value)


def load_responder_params(path: str | Path = RESPONDER_PARAMS_YAML) -> ResponderParams:
    raw = yaml.safe_load(Path(path).read_text())
    flat: dict[str, object] = {}
    sections = {
        "correctness.strategy": raw["correctness"]["strategy"],
        "correctness.collaboration": raw["correctness"]["collaboration"],
        "review": raw["review"],
        "length": raw["length"],
    }
    for section, entries in sections.items():
        for key, node in entries.items():
            flat[("review_" if section == "review" else "") + key] = _number(node, f"{section}.{key}")
    for key, node in raw["correctness"]["copy"].items():
        flat[f"copy_{key}"] = _number(node, f"correctness.copy.{key}")
    for key, node in raw["correctness"]["adoption"].items():
        flat[f"adopt_{key}"] = _number(node, f"correctness.adoption.{key}")
    flat["recorded_model_params_b"] = {
        m: _number(node, f"recorded_model_params_b.{m}") for m, node in raw["recorded_model_params_b"].items()
    }
    names = {f.name for f in fields(ResponderParams)}
    if missing := names - set(flat):
        raise ParamsError(f"{path}: missing parameters {sorted(missing)}")
    if unknown := set(flat) - names:
        raise ParamsError(f"{path}: unknown parameters {sorted(unknown)}")
    return ResponderParams(**flat)  # type: ignore[arg-type]
