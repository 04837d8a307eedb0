"""Observation and action encoders of the two agents: the one home for them, shared by the training environment
(env.py) and by inference (serve.py), so a checkpoint sees at serving time exactly the features it was trained on.

Executor, every agent step: S_rl = [h_sem (+) b_t (+) v_estimates]
- h_sem: the task's MiniLM embedding (384-d, offline, cached per task) through a fixed, seeded random projection to
  ``task_dims`` (a Johnson-Lindenstrauss sketch: no training, identical everywhere the seed is), the current role
  (one-hot), the role history reduced to counts (steps already answered per role) and the steps done / left;
- b_t: the remaining budget SLO - T_elapsed as fractions of the SLO (b_t / SLO, the per-step share b_t / steps
  left / SLO) and in seconds (log1p);
- v_estimates: for every candidate (model, strategy), from the latency estimator (estimators/latency.py):
  log(T_hat / share) and log(T_hat_P90 / share), whether the P90 fits the share, and the measured quality of the
  cell for this role (the pool profile: static knowledge, never the simulator's parameters).
Action: an index into models x strategies (pool order, then Strategy order); the mask allows the step's candidates.

Planner, once per request: the task sketch, a system summary per model (log1p requests in system per replica, KV
use, log EMA TTFT over idle TTFT), the request's slack and, for every topology of the menu, log of the budget it
would get; action: an index into ``TOPOLOGY_MENU``.

``EncoderSpec`` fixes everything the encoding depends on (models, menu, dims, seed, which blocks are on); it is saved
beside a checkpoint (``encoder.json``) and loaded with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from sysaware.data.telemetry import SystemSnapshot
from sysaware.orchestration.context import Action, PolicyResources, StepContext
from sysaware.orchestration.topology import Topology, chain, debate, io, reflection, star
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import ROLES, Strategy

EMBED_DIM = 384
STRATEGIES: tuple[Strategy, ...] = tuple(Strategy)
ROLE_IDS: tuple[str, ...] = tuple(sorted(ROLES))

# The planner's fixed menu: (name, builder). Names are stable: a checkpoint's action i means TOPOLOGY_MENU[i].
TOPOLOGY_MENU: tuple[tuple[str, Callable[[], Topology]], ...] = (
    ("io", lambda: io()),
    ("chain:programmer", lambda: chain(["programmer"])),
    ("chain:algorithm_designer,programmer", lambda: chain(["algorithm_designer", "programmer"])),
    ("chain:programmer,reviewer", lambda: chain(["programmer", "reviewer"])),
    ("chain:programmer,bug_fixer", lambda: chain(["programmer", "bug_fixer"])),
    ("star:programmer,algorithm_designer", lambda: star(["programmer", "algorithm_designer"])),
    ("debate:2x2", lambda: debate(["programmer", "programmer"], rounds=2)),
    ("reflection", lambda: reflection()),
)
_MENU_CACHE: dict[str, Topology] = {}


def menu_topology(name: str) -> Topology:
    if name not in _MENU_CACHE:
        builders = dict(TOPOLOGY_MENU)
        if name not in builders:
            raise KeyError(f"unknown menu topology {name!r}; known: {list(builders)}")
        _MENU_CACHE[name] = builders[name]()
    return _MENU_CACHE[name]


@dataclass(frozen=True)
class EncoderSpec:
    models: tuple[str, ...]
    menu: tuple[str, ...] = tuple(n for n, _ in TOPOLOGY_MENU)
    task_dims: int = 16
    projection_seed: int = 0
    use_estimates: bool = True  # the executor's v_estimates block (off: the "h_sem + b_t only" ablation)
    estimator: str = "queueing"  # estimators/latency.py name behind v_estimates

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(Action(m, s) for m in self.models for s in STRATEGIES)

    @property
    def num_actions(self) -> int:
        return len(self.models) * len(STRATEGIES)

    @property
    def executor_dim(self) -> int:
        d = self.task_dims + len(ROLE_IDS) * 2 + 2 + 4
        if self.use_estimates:
            d += self.num_actions * 4
        return d

    @property
    def planner_dim(self) -> int:
        return self.task_dims + len(self.models) * 3 + 1 + len(self.menu)

    def executor_space(self) -> gym.spaces.Dict:
        return _masked_space(self.executor_dim, self.num_actions)

    def planner_space(self) -> gym.spaces.Dict:
        return _masked_space(self.planner_dim, len(self.menu))

    def action_index(self, action: Action) -> int:
        return self.models.index(action.model) * len(STRATEGIES) + STRATEGIES.index(Strategy(action.strategy))

    def action_of(self, index: int) -> Action:
        m, s = divmod(int(index), len(STRATEGIES))
        return Action(self.models[m], STRATEGIES[s])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EncoderSpec":
        raw = json.loads(Path(path).read_text())
        raw["models"] = tuple(raw["models"])
        raw["menu"] = tuple(raw["menu"])
        return cls(**raw)


def _masked_space(dim: int, n: int) -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "observations": gym.spaces.Box(-10.0, 10.0, (dim,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (n,), np.float32),
        }
    )


class TaskSketch:
    """h_sem of a task: its MiniLM embedding (computed once per task and cached) through a seeded random projection.
    ``embed`` may be replaced (tests use a hash-based stand-in; the embedder costs tens of ms per new text)."""

    def __init__(self, dims: int, seed: int = 0, embed: Callable[[list[str]], np.ndarray] | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.projection = (rng.standard_normal((EMBED_DIM, dims)) / math.sqrt(dims)).astype(np.float32)
        self._embed = embed
        self._cache: dict[int, np.ndarray] = {}

    def embed_fn(self) -> Callable[[list[str]], np.ndarray]:
        if self._embed is None:
            from sysaware.estimators.embeddings import PromptEmbedder

            self._embed = PromptEmbedder().embed
        return self._embed

    def __call__(self, task: MbppTask) -> np.ndarray:
        v = self._cache.get(task.task_id)
        if v is None:
            e = np.asarray(self.embed_fn()([task.text]), np.float32).reshape(-1)
            v = np.clip(e @ self.projection * 3.0, -5, 5).astype(np.float32)
            self._cache[task.task_id] = v
        return v

    def warm(self, tasks: Sequence[MbppTask]) -> None:
        todo = [t for t in tasks if t.task_id not in self._cache]
        if todo:
            embs = np.asarray(self.embed_fn()([t.text for t in todo]), np.float32)
            for t, e in zip(todo, embs):
                self._cache[t.task_id] = np.clip(e @ self.projection * 3.0, -5, 5).astype(np.float32)


def hash_embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for MiniLM (tests, smoke runs): unit vectors seeded by the text."""
    import hashlib

    out = []
    for t in texts:
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(EMBED_DIM)
        out.append(v / np.linalg.norm(v))
    return np.asarray(out, np.float32)


def _log_ratio(x: float, y: float) -> float:
    return float(np.clip(math.log(max(x, 1e-3) / max(y, 1e-3)), -5.0, 5.0))


@dataclass
class Encoder:
    """Turns a StepContext (executor) or a request (planner) into the masked observation of ``spec``."""

    spec: EncoderSpec
    resources: PolicyResources
    sketch: TaskSketch
    estimator: object | None = None  # a LatencyEstimator; built from ``spec.estimator`` when first needed
    _quality: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def build(cls, spec: EncoderSpec, resources: PolicyResources, embed: Callable | None = None) -> "Encoder":
        if list(spec.models) != resources.models:
            raise ValueError(f"encoder models {list(spec.models)} are not the pool's {resources.models}")
        return cls(spec, resources, TaskSketch(spec.task_dims, spec.projection_seed, embed))

    def latency_estimator(self):
        if self.estimator is None:
            from sysaware.estimators.latency import make_latency_estimator

            r = self.resources
            self.estimator = make_latency_estimator(
                self.spec.estimator, r.models, idle=r.idle.models, output_tokens=r.lengths.tokens
            )
        return self.estimator

    def quality_row(self, role_id: str) -> np.ndarray:
        key = ("q", role_id)
        if key not in self._quality:
            r = self.resources
            self._quality[key] = np.array([r.quality.q(a.model, a.strategy, role_id) for a in self.spec.actions], np.float32)
        return self._quality[key]

    # --- executor --------------------------------------------------------------------------------------------------
    def executor_mask(self, candidates: Sequence[Action]) -> np.ndarray:
        mask = np.zeros(self.spec.num_actions, np.float32)
        for a in candidates:
            if a.model in self.spec.models:
                mask[self.spec.action_index(a)] = 1.0
        return mask

    def executor_obs(self, ctx: StepContext) -> dict[str, np.ndarray]:
        spec = self.spec
        role = np.zeros(len(ROLE_IDS), np.float32)
        role[ROLE_IDS.index(ctx.role_id)] = 1.0
        done = np.zeros(len(ROLE_IDS), np.float32)
        for rec in ctx.history:
            done[ROLE_IDS.index(rec.role_id)] += 0.25
        slo = max(ctx.slo_s, 1e-3)
        b = ctx.remaining_budget_s
        share = ctx.budget_share_s
        parts = [
            self.sketch(ctx.task),
            role,
            done,
            np.array([len(ctx.history) / 4.0, ctx.steps_left / 4.0], np.float32),
            np.array(
                [np.clip(b / slo, -2, 2), np.clip(share / slo, -2, 2), math.log1p(max(b, 0.0)) / 3.0, float(b > 0)],
                np.float32,
            ),
        ]
        mask = self.executor_mask(ctx.candidates)
        if spec.use_estimates:
            parts.append(self.estimate_block(ctx, max(share, 0.05)))
        obs = np.concatenate(parts).astype(np.float32)
        return {"observations": np.clip(obs, -10, 10), "action_mask": mask}

    def estimate_block(self, ctx: StepContext, share_s: float) -> np.ndarray:
        from sysaware.orchestration.executors import step_query

        n = self.spec.num_actions
        mean = np.zeros(n, np.float32)
        p90 = np.zeros(n, np.float32)
        fits = np.zeros(n, np.float32)
        estimates = self.latency_estimator().estimate(step_query(ctx))
        for a, e in zip(ctx.candidates, estimates):
            if a.model not in self.spec.models:
                continue
            i = self.spec.action_index(a)
            mean[i] = _log_ratio(e.t_hat_ms / 1e3, share_s)
            p90[i] = _log_ratio(e.t_hat_p90_ms / 1e3, share_s)
            fits[i] = float(e.t_hat_p90_ms / 1e3 <= share_s)
        q = self.quality_row(ctx.role_id) * 2.0 - 1.0
        return np.concatenate([mean, p90, fits, q])

    # --- planner ---------------------------------------------------------------------------------------------------
    def planner_obs(self, task: MbppTask, snapshot: SystemSnapshot, slack: float, slo_of: Callable[[Topology], float]) -> dict[str, np.ndarray]:
        spec = self.spec
        system = []
        for m in spec.models:
            load = snapshot.load(m)
            idle_ttft = self.resources.idle[m].ttft_s(300)
            ema = load.ema_ttft_ms / 1e3 if load.ema_ttft_ms else idle_ttft
            system += [math.log1p(load.in_system_per_replica) / 3.0, load.kv_cache_usage_perc, _log_ratio(ema, idle_ttft)]
        slos = [math.log(max(slo_of(menu_topology(n)), 1e-2)) / 3.0 for n in spec.menu]
        obs = np.concatenate([self.sketch(task), np.array(system, np.float32), np.array([math.log(slack)], np.float32), np.array(slos, np.float32)])
        return {"observations": np.clip(obs.astype(np.float32), -10, 10), "action_mask": np.ones(len(spec.menu), np.float32)}
