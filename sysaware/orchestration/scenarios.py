"""Contention scenarios: a pool, a background load and a stream of workflow requests, read from
``configs/scenarios.yaml`` and validated at the edge (an error names the scenario and the field).

The claim under test is that load-blind routers fail under contention while a system-aware executor keeps the SLO
without losing quality; each scenario is one way contention happens:

- uniform closed loops (``N`` clients per model, each waits for its answer before sending the next);
- skew: one model hammered by hundreds of clients while the others idle (the motivating case: a cheap, popular
  model thrashing beside an idle strong one, or the reverse);
- bursts: open-loop Poisson background whose rate switches between phases;
- mixed SLOs: tight and loose budgets interleaved in one stream;
- a smaller pool (``configs/pool_lab_a100.yaml``) where moderate load already contends.

Workflow requests arrive open loop (Poisson at ``requests.rate_per_s``), after a background warm-up.
"""

from __future__ import annotations

import random
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sysaware.config import REPO_ROOT, PoolConfig, load_pool

DEFAULT_SCENARIOS = REPO_ROOT / "configs" / "scenarios.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClosedLoopBackground(_Strict):
    """N closed-loop clients per model: ``per_model`` for every model, ``models`` overriding it for some."""

    kind: Literal["closed"] = "closed"
    per_model: int = Field(default=0, ge=0, description="Clients for every model not named in `models`.")
    models: dict[str, int] = Field(default_factory=dict, description="Clients per named model (overrides).")

    def clients(self, model: str) -> int:
        return self.models.get(model, self.per_model)

    @model_validator(mode="after")
    def _non_negative(self) -> "ClosedLoopBackground":
        for m, n in self.models.items():
            if n < 0:
                raise ValueError(f"models.{m}: clients must be >= 0, got {n}")
        return self


class PoissonPhase(_Strict):
    rate_per_s: float = Field(gt=0, description="Background arrivals per second to each model in this phase.")
    duration_s: float = Field(gt=0, description="Virtual seconds the phase lasts before the next one starts.")


class PhasedPoissonBackground(_Strict):
    """Open-loop Poisson arrivals per model whose rate cycles through ``phases`` (bursts and lulls)."""

    kind: Literal["poisson"] = "poisson"
    phases: list[PoissonPhase] = Field(min_length=1)


Background = Annotated[ClosedLoopBackground | PhasedPoissonBackground, Field(discriminator="kind")]


class SloClass(_Strict):
    slack: float = Field(gt=0, description="SLO = slack x the plan's idle latency (from the pool profile).")
    weight: float = Field(default=1.0, gt=0, description="Relative share of requests with this slack.")


class RequestStream(_Strict):
    rate_per_s: float = Field(gt=0, description="Workflow requests per virtual second (Poisson arrivals).")
    warmup_s: float = Field(default=10.0, ge=0, description="Virtual seconds of background before the first request.")
    slo: list[SloClass] = Field(default_factory=lambda: [SloClass(slack=1.5)], min_length=1)

    def slacks(self, n: int, seed: int) -> list[float]:
        """Each request's slack, drawn by weight (seeded: the same for every policy)."""
        rng = random.Random(f"slo-mix/{seed}")
        classes = [c.slack for c in self.slo]
        weights = [c.weight for c in self.slo]
        return [rng.choices(classes, weights)[0] for _ in range(n)]

    def arrivals(self, n: int, seed: int) -> list[float]:
        """Arrival times of ``n`` requests: a Poisson process after the warm-up (seeded)."""
        rng = random.Random(f"arrivals/{seed}")
        t, out = self.warmup_s, []
        for _ in range(n):
            t += rng.expovariate(self.rate_per_s)
            out.append(t)
        return out


class Scenario(_Strict):
    name: str
    description: str = ""
    pool: str = Field(default="configs/pool_twin.yaml", description="Pool file, relative to the repository root.")
    background: Background = ClosedLoopBackground()
    requests: RequestStream = RequestStream(rate_per_s=0.5)
    contended: bool = Field(default=False, description="Reported as contended (the premise's test cases).")

    @cached_property
    def pool_config(self) -> PoolConfig:
        path = Path(self.pool)
        return load_pool(path if path.is_absolute() else REPO_ROOT / path)

    def check_models(self) -> None:
        """Every model the background names is in the pool."""
        if isinstance(self.background, ClosedLoopBackground):
            known = [m.name for m in self.pool_config.models]
            for m in self.background.models:
                if m not in known:
                    raise ValueError(f"background.models.{m}: not a model of pool {self.pool!r}; known: {known}")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the scenario and the field."""


def load_scenarios(path: str | Path = DEFAULT_SCENARIOS) -> dict[str, Scenario]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("scenarios"), dict):
        raise ScenarioError(f"{path}: expected a mapping 'scenarios: {{name: {{...}}}}'")
    out = {}
    for name, body in raw["scenarios"].items():
        try:
            scenario = Scenario.model_validate({"name": name, **(body or {})})
            scenario.check_models()
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
            raise ScenarioError(f"{path}: scenarios.{name}.{field}: {err['msg']}") from None
        except ValueError as e:
            raise ScenarioError(f"{path}: scenarios.{name}.{e}") from None
        out[name] = scenario
    return out


def select(scenarios: dict[str, Scenario], names: str | list[str] | None) -> list[Scenario]:
    """The scenarios named (comma-separated or a list; None: all), in the order given."""
    if names is None:
        return list(scenarios.values())
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if unknown := [n for n in wanted if n not in scenarios]:
        raise ScenarioError(f"unknown scenario(s) {unknown}; known: {sorted(scenarios)}")
    return [scenarios[n] for n in wanted]
