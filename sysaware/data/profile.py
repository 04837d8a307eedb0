"""The pool profile: the one static thing policies consult, MEASURED on the pool's own backend.

Why an artifact and not the simulator's parameters: a policy that reads how the twin decides its answers (its
parameter table, its recorded answers) is tuned on ground truth no live pool has, and it would meet another world
when deployed. A profile holds only what any backend yields to measurement: run workflows, grade their answers in
the sandbox, time calls on an idle pool (``sysaware profile-pool``, ``pipelines/profile_pool.py``):

- per (model, strategy, role): ``quality`` in [0, 1], the pass rate of a probe workflow in which (model, strategy)
  plays that role (the probe of each role is written in ``provenance.quality_probes``), with its sample count and
  a 95% Wilson interval; ``output_tokens_mean``, the mean length of those calls;
- per model: idle latency, TTFT(L_in) = ttft_base_s + ttft_per_prompt_token_s x L_in and TPOT at batch size 1;
- the pool it describes (its name and a fingerprint of its validated configuration) and provenance (command line,
  date, package version, data fingerprint, tasks, seed).

JSON on disk, versioned by ``version``. Loading checks the format, the version, the schema (pydantic names the
field at fault) and, given a pool, that the profile was measured on that very pool. Profiles shipped with the
package live in ``sysaware/resources/profiles`` (``PoolProfile.default_for``), so a fresh clone needs no measuring.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sysaware.config import PoolConfig
from sysaware.resources import RESOURCES
from sysaware.tasks.prompts import ROLES, Strategy

PROFILE_FORMAT = "sysaware.pool-profile"
PROFILE_VERSION = 1  # bump when a field changes meaning; loading any other version fails
PROFILE_DIR = RESOURCES / "profiles"


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleMeasurement(_Strict):
    """One (model, strategy, role) cell."""

    quality: float = Field(ge=0, le=1, description="Pass rate of the role's probe workflow, fraction.")
    quality_n: int = Field(ge=1, description="Graded probe workflows behind ``quality``.")
    quality_ci95: tuple[float, float] = Field(description="95% Wilson interval of ``quality``.")
    output_tokens_mean: float = Field(gt=0, description="Mean output tokens of the role's calls, tokens.")
    output_tokens_n: int = Field(ge=1, description="Calls behind ``output_tokens_mean``.")

    @model_validator(mode="after")
    def _check_interval(self) -> "RoleMeasurement":
        lo, hi = self.quality_ci95
        if not 0.0 <= lo <= self.quality <= hi <= 1.0:
            raise ValueError(f"quality_ci95 {self.quality_ci95} must lie in [0, 1] and contain quality {self.quality}")
        return self


class IdleLatencyMeasurement(_Strict):
    """One model alone on its replica (linear in prompt tokens: prefill is compute-bound, TPOT flat at batch 1)."""

    ttft_base_s: float = Field(ge=0, description="TTFT extrapolated to an empty prompt, s.")
    ttft_per_prompt_token_s: float = Field(ge=0, description="Prefill cost per prompt token, s.")
    tpot_s: float = Field(gt=0, description="Time per output token at batch size 1, s.")

    def ttft_s(self, prompt_tokens: int) -> float:
        return self.ttft_base_s + self.ttft_per_prompt_token_s * prompt_tokens


class ModelProfile(_Strict):
    idle: IdleLatencyMeasurement
    roles: dict[str, dict[Strategy, RoleMeasurement]] = Field(description="role_id -> strategy -> cell.")

    @model_validator(mode="after")
    def _check_complete(self) -> "ModelProfile":
        if missing := sorted(set(ROLES) - set(self.roles)):
            raise ValueError(f"roles: missing {missing}")
        if unknown := sorted(set(self.roles) - set(ROLES)):
            raise ValueError(f"roles: unknown {unknown}; known: {sorted(ROLES)}")
        for role, cells in self.roles.items():
            if missing := [s.value for s in Strategy if s not in cells]:
                raise ValueError(f"roles.{role}: missing strategies {missing}")
        return self


class PoolRef(_Strict):
    name: str = Field(description="The pool's ``name``.")
    fingerprint: str = Field(description="pool_fingerprint() of the pool configuration measured.")


class Provenance(_Strict):
    command: str = Field(description="The command line that measured it.")
    created_utc: str = Field(description="When, ISO 8601.")
    sysaware_version: str
    backend: str = Field(description="What ran the workflows, e.g. 'sim' (the twin) or 'live'.")
    data_fingerprint: str = Field(description="sha256 of the tasks (ids, texts, asserts) and any Phase 2 data used.")
    seed: int
    task_ids: list[int] = Field(description="MBPP tasks the probes ran on (none from the test split).")
    reference_model: str = Field(description="Who plays the roles around the probed one.")
    reference_strategy: Strategy
    quality_probes: dict[str, str] = Field(description="role_id -> what its quality measures.")
    lengths_source: str = Field(description="Where output_tokens_mean comes from.")


class PoolProfile(_Strict):
    format: Literal["sysaware.pool-profile"] = PROFILE_FORMAT
    version: int = PROFILE_VERSION
    pool: PoolRef
    provenance: Provenance
    models: dict[str, ModelProfile] = Field(min_length=1, description="In pool order.")

    # --- what policies read --------------------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    def cell(self, model: str, strategy: Strategy | str, role_id: str) -> RoleMeasurement:
        try:
            return self.models[model].roles[role_id][Strategy(strategy)]
        except KeyError:
            raise KeyError(f"the profile has no cell ({model!r}, {strategy!r}, {role_id!r}); models: {self.model_names}") from None

    def quality(self, model: str, strategy: Strategy | str, role_id: str) -> float:
        return self.cell(model, strategy, role_id).quality

    def output_tokens(self, model: str, strategy: Strategy | str, role_id: str) -> float:
        return self.cell(model, strategy, role_id).output_tokens_mean

    def idle(self, model: str) -> IdleLatencyMeasurement:
        try:
            return self.models[model].idle
        except KeyError:
            raise KeyError(f"the profile has no model {model!r}; it has {self.model_names}") from None

    # --- which pool ------------------------------------------------------------------------------------------------
    def check_pool(self, pool: PoolConfig, source: str = "profile") -> None:
        """Fail unless the profile was measured on exactly this pool configuration."""
        if self.pool.name != pool.name:
            raise ProfileError(f"{source}: pool.name is {self.pool.name!r} but the pool is {pool.name!r}; measure it with `sysaware profile-pool`")
        expected = pool_fingerprint(pool)
        if self.pool.fingerprint != expected:
            raise ProfileError(
                f"{source}: pool.fingerprint {self.pool.fingerprint} does not match pool {pool.name!r} ({expected}): "
                "the configuration changed since it was measured; run `sysaware profile-pool` again"
            )
        if self.model_names != [m.name for m in pool.models]:  # the fingerprint covers this; a clearer message
            raise ProfileError(f"{source}: models {self.model_names} are not the pool's {[m.name for m in pool.models]}")

    # --- disk ------------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, pool: PoolConfig | None = None) -> "PoolProfile":
        """Read and validate ``path``; with ``pool``, also check it describes that pool. ProfileError otherwise."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"profile not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"{path}: not valid JSON: {e}") from None
        profile = cls.from_json(raw, source=str(path))
        if pool is not None:
            profile.check_pool(pool, source=str(path))
        return profile

    @classmethod
    def from_json(cls, raw: object, source: str = "profile") -> "PoolProfile":
        if not isinstance(raw, dict):
            raise ProfileError(f"{source}: a profile is a JSON object, got {type(raw).__name__}")
        if raw.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source}: format is {raw.get('format')!r}, expected {PROFILE_FORMAT!r}")
        if raw.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{source}: version {raw.get('version')!r} is not one this code reads ({PROFILE_VERSION}); measure it again with `sysaware profile-pool`")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            lines = [f"{source}: invalid pool profile"]
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "<root>"
                lines.append(f"  {loc}: {err['msg']}")
            raise ProfileError("\n".join(lines)) from None

    @classmethod
    def default_for(cls, pool: PoolConfig, directory: str | Path = PROFILE_DIR) -> "PoolProfile":
        """The shipped profile measured on ``pool`` (matched by fingerprint among ``directory``'s JSON files)."""
        expected = pool_fingerprint(pool)
        for path in sorted(Path(directory).glob("*.json")):
            try:
                raw = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(raw, dict) and raw.get("pool", {}).get("fingerprint") == expected:
                return cls.load(path, pool)
        raise ProfileError(
            f"no profile in {directory} was measured on pool {pool.name!r} (fingerprint {expected}); "
            "run `sysaware profile-pool --pool <yaml> --out <path>` and pass that profile"
        )


def pool_fingerprint(pool: PoolConfig) -> str:
    """sha256 (first 16 hex digits) of the validated pool configuration: any change to the models, their GPUs,
    replicas or engine settings makes a profile measured before it unusable for the pool."""
    canonical = json.dumps(pool.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a pass rate: unlike p +- 1.96 sd it stays in [0, 1] and is not empty at 0 or n
    successes, which small probe samples often hit."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))
