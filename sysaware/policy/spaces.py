"""Observation and action encoders of the two agents: the one home for them, shared by the training environment
(env.py) and by inference (serve.py), so a checkpoint sees at serving time exactly the features it was trained on.

Executor, every agent step: S_rl = [h_sem (+) b_t (+) v_estimates], laid out as a CONTEXT block broadcast to
every candidate plus one ROW per candidate (model, strategy), scored by one shared MLP (modules.py's
``CandidateScorerModule``):

    observations = [ context (ctx_dim) | row(cand 0) | row(cand 1) | ... ]   (num_actions rows of row_dim)

- context: h_sem = the task's MiniLM embedding (384-d, offline, cached per task) through a fixed, seeded random
  projection to ``task_dims`` (a Johnson-Lindenstrauss sketch: no training, identical everywhere the seed is); the
  role (one-hot); steps done / left; b_t = SLO - T_elapsed as b_t / SLO, the per-step share / SLO, log1p(b_t s)
  and b_t > 0;
- row of candidate (m, rho), all model-agnostic (no model id: a row means the same on any pool): the profile's
  quality q(m, rho, role) raw, centred on the mean over the step's valid candidates and as the gap to the best of
  them (the measured PoolProfile: static knowledge, never the simulator's parameters); v_estimates from the latency
  estimator (estimators/latency.py): log T_hat (s), log(T_hat / share), T_hat / b_t, log(P90 / share), P90 fits
  the share, P90 fits b_t; the model's queue (log1p requests in system per replica) and KV use; rho one-hot.
  With ``use_estimates`` off (the "h_sem + b_t only" ablation) the T_hat columns are zeros. Rows of masked
  candidates are zeros.
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
from sysaware.orchestration.trace import StepRecord
from sysaware.policy.shield import ShieldSpec, allowance_s, shield_mask
from sysaware.tasks.mbpp import MbppTask
from sysaware.tasks.prompts import ROLES, Strategy

EMBED_DIM = 384
# Columns of one candidate row (the executor's observation): see the module docstring.
ROW_COLUMNS: tuple[str, ...] = (
    "q", "q_centred", "q_gap", "log_t_hat", "log_t_hat_over_share", "t_hat_over_b", "log_p90_over_share",
    "p90_fits_share", "p90_fits_b", "queue", "kv", *(f"strategy:{s.value}" for s in Strategy),
)
ROW_DIM = len(ROW_COLUMNS)
QUALITY_SCALE = 5.0  # centred / gap columns x this: profile quality spreads are a few points
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
    task_dims: int = 8
    projection_seed: int = 0
    use_estimates: bool = True  # the executor's v_estimates block (off: the "h_sem + b_t only" ablation)
    estimator: str = "queueing"  # estimators/latency.py name behind v_estimates
    shield: ShieldSpec = ShieldSpec()  # the budget shield on the executor's mask (shield.py); off by default
    # the request's own length overruns in the context block (length_feedback_features); encoder.json files from
    # before it carry no such key and load with it off, so their checkpoints see the observation they trained on
    length_feedback: bool = False

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(Action(m, s) for m in self.models for s in STRATEGIES)

    @property
    def num_actions(self) -> int:
        return len(self.models) * len(STRATEGIES)

    @property
    def executor_ctx_dim(self) -> int:
        return self.task_dims + len(ROLE_IDS) + 2 + 4 + (len(LENGTH_FEEDBACK_COLUMNS) if self.length_feedback else 0)

    @property
    def executor_row_dim(self) -> int:
        return ROW_DIM

    @property
    def executor_dim(self) -> int:
        return self.executor_ctx_dim + self.num_actions * ROW_DIM

    def for_models(self, models: Sequence[str]) -> "EncoderSpec":
        """The same encoding on another pool's model list (rows are model-agnostic; the planner's are not)."""
        from dataclasses import replace

        return replace(self, models=tuple(models))

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
        raw["shield"] = ShieldSpec.parse(raw.get("shield"))  # encoder.json files from before the shield: off
        return cls(**raw)

    def with_shield(self, shield) -> "EncoderSpec":
        from dataclasses import replace

        return replace(self, shield=ShieldSpec.parse(shield))


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
            from sysaware.estimators.embeddings import PromptEmbedder, precision_from_env

            # one thread, as on the estimators' decision path: the runtime's default pool doubled the CPU of a new
            # task's embedding on the loaded 2-core machine (91 ms against 44 ms per MBPP task text, median)
            self._embed = PromptEmbedder(threads=1, precision=precision_from_env()).embed
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


# The context's length-feedback columns (EncoderSpec.length_feedback), from the request's finished steps.
LENGTH_FEEDBACK_COLUMNS: tuple[str, ...] = ("last_log_tokens_ratio", "mean_log_tokens_ratio", "last_log_latency_ratio")


def length_feedback_features(history: Sequence[StepRecord], resources: PolicyResources) -> np.ndarray:
    """Did this request's finished steps overrun what the profile expected? Output lengths have tails no estimator
    sees coming (docs/rl-shield.md), but within one request they may persist (the same task; upstream answers
    that grow): so a step that overran says the later ones may too. From the orchestration's own step records only
    (what a live system observes), against the profile's mean output tokens of the step's (model, strategy, role):

    - log(realised / expected output tokens) of the most recently finished step;
    - the mean of that log ratio over the request's finished steps;
    - log(realised latency / the idle latency of the expected length) of the most recently finished step (length
      and load together).

    All 0 before any step has finished (the request's first step), each clipped to [-3, 3]."""
    if not history:
        return np.zeros(len(LENGTH_FEEDBACK_COLUMNS), np.float32)
    expected = [resources.lengths.tokens(s.model, Strategy(s.strategy), s.role_id) for s in history]
    ratios = [_log_ratio(s.output_tokens, e) for s, e in zip(history, expected)]
    last_i = max(range(len(history)), key=lambda i: history[i].finished_at_s)
    last = history[last_i]
    idle_s = resources.idle[last.model].call_s(last.prompt_tokens, expected[last_i])
    feats = [ratios[last_i], float(np.mean(ratios)), _log_ratio(last.latency_s, idle_s)]
    return np.clip(np.array(feats, np.float32), -3.0, 3.0)


@dataclass
class Encoder:
    """Turns a StepContext (executor) or a request (planner) into the masked observation of ``spec``."""

    spec: EncoderSpec
    resources: PolicyResources
    sketch: TaskSketch
    estimator: object | None = None  # a LatencyEstimator; built from ``spec.estimator`` when first needed
    shield_estimator: object | None = None  # the shield's, when it names another estimator (shield.py)
    _quality: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def build(cls, spec: EncoderSpec, resources: PolicyResources, embed: Callable | None = None) -> "Encoder":
        if list(spec.models) != resources.models:
            raise ValueError(f"encoder models {list(spec.models)} are not the pool's {resources.models}")
        return cls(spec, resources, TaskSketch(spec.task_dims, spec.projection_seed, embed))

    def latency_estimator(self):
        if self.estimator is None:
            self.estimator = self._make_estimator(self.spec.estimator)
        return self.estimator

    def _make_estimator(self, name: str):
        from sysaware.estimators.latency import make_latency_estimator

        r = self.resources
        return make_latency_estimator(name, r.models, idle=r.idle.models, output_tokens=r.lengths.tokens)

    def _shield_uses_own_estimator(self) -> bool:
        name = self.spec.shield.estimator
        return name is not None and name != self.spec.estimator

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

    def _action_tables(self) -> tuple[dict[Action, int], np.ndarray, np.ndarray]:
        """(action -> index, model index of each action, strategy one-hot of each action), computed once."""
        if not hasattr(self, "_tables"):
            spec = self.spec
            index = {a: i for i, a in enumerate(spec.actions)}
            model_of = np.repeat(np.arange(len(spec.models)), len(STRATEGIES))
            onehot = np.tile(np.eye(len(STRATEGIES), dtype=np.float32), (len(spec.models), 1))
            self._tables = (index, model_of, onehot)
        return self._tables

    def executor_obs(self, ctx: StepContext) -> dict[str, np.ndarray]:
        """The flat masked observation ``[context | rows]`` (module docstring)."""
        context = self.executor_context(ctx)
        rows, mask = self.executor_rows(ctx)
        obs = np.concatenate([context, rows.reshape(-1)])
        return {"observations": np.clip(obs, -10, 10).astype(np.float32), "action_mask": mask}

    def executor_context(self, ctx: StepContext) -> np.ndarray:
        role = np.zeros(len(ROLE_IDS), np.float32)
        role[ROLE_IDS.index(ctx.role_id)] = 1.0
        slo = max(ctx.slo_s, 1e-3)
        b = ctx.remaining_budget_s
        share = ctx.budget_share_s
        return np.concatenate([
            self.sketch(ctx.task)[: self.spec.task_dims],
            role,
            np.array([len(ctx.history) / 4.0, ctx.steps_left / 4.0], np.float32),
            np.array([min(max(b / slo, -2.0), 2.0), min(max(share / slo, -2.0), 2.0), math.log1p(max(b, 0.0)) / 3.0, float(b > 0)], np.float32),
            *([length_feedback_features(ctx.history, self.resources)] if self.spec.length_feedback else []),
        ]).astype(np.float32)

    def executor_rows(self, ctx: StepContext) -> tuple[np.ndarray, np.ndarray]:
        """(rows (num_actions, ROW_DIM), mask (num_actions,)): one row per candidate, vectorised over candidates."""
        spec = self.spec
        index, model_of, onehot = self._action_tables()
        rows = np.zeros((spec.num_actions, ROW_DIM), np.float32)
        mask = np.zeros(spec.num_actions, np.float32)
        idx = np.array([index[a] for a in ctx.candidates if a in index], np.int64)
        if idx.size == 0:
            return rows, mask
        mask[idx] = 1.0
        # profile quality: raw, centred on the valid candidates' mean, gap to their best
        q = self.quality_row(ctx.role_id)[idx]
        rows[idx, 0] = q
        rows[idx, 1] = np.clip((q - q.mean()) * QUALITY_SCALE, -3, 3)
        rows[idx, 2] = np.clip((q - q.max()) * QUALITY_SCALE, -3, 3)
        # v_estimates: T_hat and P90 against the per-step share and b_t
        keep = [a in index for a in ctx.candidates]
        p90 = None
        if spec.use_estimates or (spec.shield.on and not self._shield_uses_own_estimator()):
            ests = self.latency_estimator().estimate(self._step_query(ctx))
            t = np.array([e.t_hat_ms for e, k in zip(ests, keep) if k], np.float64) / 1e3
            p90 = np.array([e.t_hat_p90_ms for e, k in zip(ests, keep) if k], np.float64) / 1e3
        if spec.use_estimates:
            share = max(ctx.budget_share_s, 0.05)
            b = max(ctx.remaining_budget_s, 0.05)
            t, p90 = np.maximum(t, 1e-3), np.maximum(p90, 1e-3)
            rows[idx, 3] = np.log(t)
            rows[idx, 4] = np.clip(np.log(t / share), -5, 5)
            rows[idx, 5] = np.clip(t / b, 0, 4)
            rows[idx, 6] = np.clip(np.log(p90 / share), -5, 5)
            rows[idx, 7] = p90 <= ctx.budget_share_s
            rows[idx, 8] = p90 <= ctx.remaining_budget_s
        # the model's queue and KV (telemetry), and the strategy
        queue, kv = self._model_load(ctx)
        rows[idx, 9] = queue[model_of[idx]]
        rows[idx, 10] = kv[model_of[idx]]
        rows[idx, 11:] = onehot[idx]
        if spec.shield.on:
            mask = self._shield(ctx, mask, idx, keep, p90)
        return rows, mask

    def _shield(self, ctx: StepContext, mask: np.ndarray, idx: np.ndarray, keep: list[bool], p90: np.ndarray | None) -> np.ndarray:
        """The budget shield (shield.py) on the step's mask; its P90 from the shield's estimator."""
        sh = self.spec.shield
        if self._shield_uses_own_estimator():
            if self.shield_estimator is None:
                self.shield_estimator = self._make_estimator(sh.estimator)
            from sysaware.orchestration.executors import step_query

            ests = self.shield_estimator.estimate(step_query(ctx))
            p90 = np.array([e.t_hat_p90_ms for e, k in zip(ests, keep) if k], np.float64) / 1e3
        full = np.full(self.spec.num_actions, np.inf)
        full[idx] = p90
        if sh.split == "profile":
            if not hasattr(self, "_profile_split"):
                from sysaware.policy.shield import ProfileSplit

                self._profile_split = ProfileSplit(self.resources)
            allowance = self._profile_split.allowance_s(ctx)
        else:
            allowance = allowance_s(ctx.remaining_budget_s, ctx.steps_left)
        return shield_mask(mask, full, allowance, sh.margin, sh.fallback)

    def _step_query(self, ctx: StepContext):
        """The estimator's view of the step; the queueing formula reads no prompt text, so it is not joined for it
        (joining the messages was a tenth of a decision's cost)."""
        from sysaware.orchestration.executors import step_query

        if self.spec.estimator != "queueing":
            return step_query(ctx)
        from sysaware.estimators.latency import StepQuery

        return StepQuery("", ctx.role_id, ctx.prompt_tokens, tuple((a.model, a.strategy.value) for a in ctx.candidates), ctx.snapshot)

    def _model_load(self, ctx: StepContext) -> tuple[np.ndarray, np.ndarray]:
        queue = np.zeros(len(self.spec.models), np.float32)
        kv = np.zeros(len(self.spec.models), np.float32)
        for i, m in enumerate(self.spec.models):
            load = ctx.snapshot.models.get(m)
            if load is not None:
                queue[i] = math.log1p(load.in_system_per_replica) / 3.0
                kv[i] = load.kv_cache_usage_perc
        return queue, kv

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
