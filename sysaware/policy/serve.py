"""The trained policy without the Algorithm: an executor and a planner that load the RLModules from a checkpoint
(``RLModule.from_checkpoint``) and act greedily (argmax of the masked logits).

The executor does not call torch per decision: its ``CandidateScorerModule``'s trunk and logit layer are copied
into a numpy head (modules.py's ``NumpyScorer``) when the checkpoint is loaded (tests/test_policy.py checks that its
argmax equals ``forward_inference``'s). Its rows are model-agnostic, so the head scores any pool's candidates: the
checkpoint shipped for the default pool serves another pool (lab-a100x4) when none is shipped for it
(``shipped_policy_dir``); the planner's observation names the models, so it does not transfer.

Checkpoint layouts accepted (``policy_paths``):
- a policy directory as ``train.py`` exports it and as shipped (``sysaware/resources/policy/<pool>/``):
  ``executor/``, ``planner/`` (RLModule checkpoints), ``encoder.json``;
- a full Algorithm checkpoint (``<run>/checkpoint``): the modules under ``learner_group/learner/rl_module/<id>``
  and ``encoder.json`` beside them (train.py writes it there).

Registered by name like the baselines (``make_executor("rl", resources, checkpoint=...)``, ``make_planner("rl",
resources=..., checkpoint=...)``) when ``sysaware.policy`` is imported; with no checkpoint, the one shipped for the
pool is used.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from sysaware.data.telemetry import ModelLoad, SystemSnapshot
from sysaware.orchestration.context import Action, PolicyResources, StepContext
from sysaware.orchestration.executors import Executor
from sysaware.orchestration.planners import Planner
from sysaware.orchestration.topology import Topology
from sysaware.policy.spaces import Encoder, EncoderSpec, hash_embed, menu_topology
from sysaware.resources import RESOURCES
from sysaware.tasks.mbpp import MbppTask

SHIPPED = RESOURCES / "policy"
DEFAULT_POOL = "twin-h100x8"  # the pool the shipped policy was trained on; its executor serves other pools too
DEFAULT_SLACK = 1.5


def shipped_policy_dir(pool_name: str) -> Path:
    """The policy shipped for ``pool_name``, else the default pool's (its executor's rows are model-agnostic)."""
    for path in (SHIPPED / pool_name, SHIPPED / DEFAULT_POOL):
        if (path / "encoder.json").exists():
            return path
    raise FileNotFoundError(f"no policy shipped for pool {pool_name!r} under {SHIPPED}; train one (sysaware train-policy) and pass --checkpoint")


def policy_fingerprint(checkpoint: str | Path) -> str:
    """sha256 (16 hex) of a policy directory's files: what an evaluation cache keys the ``rl`` policy on."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(checkpoint).rglob("*")):
        if f.is_file() and f.name != "meta.json":
            h.update(f.relative_to(checkpoint).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def policy_paths(checkpoint: str | Path, module_id: str) -> tuple[Path, Path]:
    """(the RLModule checkpoint of ``module_id``, encoder.json) in either layout."""
    root = Path(checkpoint)
    for module in (root / module_id, root / "learner_group" / "learner" / "rl_module" / module_id):
        if module.is_dir():
            return module, root / "encoder.json"
    raise FileNotFoundError(f"no RLModule {module_id!r} in {root} (looked in ./{module_id} and learner_group/learner/rl_module/{module_id})")


@lru_cache(maxsize=16)
def load_module(path: str):
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    torch.set_num_threads(1)
    module = RLModule.from_checkpoint(path)
    module.eval()
    return module


class _Inference:
    """A module and its encoder: masked observation -> greedy action index."""

    def __init__(self, checkpoint: str | Path, module_id: str, resources: PolicyResources, portable: bool = False) -> None:
        module_path, encoder_path = policy_paths(checkpoint, module_id)
        self.spec = EncoderSpec.load(encoder_path)
        if portable and list(self.spec.models) != resources.models:  # executor rows: another pool's candidates
            self.spec = self.spec.for_models(resources.models)
        self.module = load_module(str(module_path.resolve()))
        self.encoder = Encoder.build(self.spec, resources, embed=None)
        self.checkpoint = Path(checkpoint)

    def act(self, obs: dict[str, np.ndarray]) -> int:
        import torch

        with torch.no_grad():
            batch = {"obs": {k: torch.from_numpy(v[None, :]) for k, v in obs.items()}}
            logits = self.module.forward_inference(batch)["action_dist_inputs"][0]
        return int(torch.argmax(logits))


def _checkpoint_or_shipped(checkpoint: str | Path | None, resources: PolicyResources) -> Path:
    return Path(checkpoint) if checkpoint is not None else shipped_policy_dir(resources.pool.name)


class RLExecutor(Executor):
    """The trained executor: S_rl of the step context (spaces.py) -> masked argmax over models x strategies."""

    name = "rl"
    load_aware = True
    at_option = "checkpoint"  # rl@<policy dir>: evaluate a checkpoint other than the shipped one

    def __init__(self, resources: PolicyResources, seed: int = 0, checkpoint: str | Path | None = None, embed: str = "minilm") -> None:
        super().__init__(resources, seed)
        from sysaware.policy.modules import CandidateScorerModule, NumpyScorer

        self.inference = _Inference(_checkpoint_or_shipped(checkpoint, resources), "executor", resources, portable=True)
        if embed == "hash":
            self.inference.encoder.sketch._embed = hash_embed
        module = self.inference.module
        if not isinstance(module, CandidateScorerModule):
            raise ValueError(f"{self.inference.checkpoint}: the executor is a {type(module).__name__}, not a CandidateScorerModule (an old checkpoint: retrain)")
        self.head = NumpyScorer.from_module(module)

    def choose(self, ctx: StepContext) -> Action:
        inf = self.inference
        enc = inf.encoder
        rows, mask = enc.executor_rows(ctx)
        logits = self.head.logits(np.clip(enc.executor_context(ctx), -10, 10), np.clip(rows, -10, 10))
        action = inf.spec.action_of(int(np.argmax(np.where(mask > 0, logits, -np.inf))))
        if action not in ctx.candidates:  # the mask makes this impossible; fail loudly if it ever is not
            raise RuntimeError(f"rl chose masked action {action}")
        return action

    def describe(self) -> str:
        sh = self.inference.spec.shield
        extra = "".join(f" {v}" for v, default in ((sh.split, "even"), (sh.fallback, "fastest"), (sh.estimator, None)) if v != default)
        shield = f", shield {sh.mode} x{sh.margin:g}{extra}" if sh.on else ""
        return f"{self.name}({self.inference.checkpoint.name}{shield})"


def _idle_snapshot(models: list[str]) -> SystemSnapshot:
    return SystemSnapshot(0.0, {m: ModelLoad(m, 1, 0, 0, 0.0, 0.0, None, None) for m in models})


class RLPlanner(Planner):
    """The trained planner: task sketch, system summary and the budgets each menu topology would get -> topology."""

    name = "rl"

    def __init__(self, seed: int = 0, resources: PolicyResources | None = None, checkpoint: str | Path | None = None,
                 slack: float = DEFAULT_SLACK, embed: str = "minilm") -> None:
        super().__init__(seed)
        if resources is None:
            raise ValueError("the rl planner needs the pool's PolicyResources (make_planner('rl', resources=...))")
        from sysaware.policy.world import Budgets

        path = _checkpoint_or_shipped(checkpoint, resources)
        try:
            self.inference = _Inference(path, "planner", resources)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}: this policy has no trained planner (trained with a fixed planner); use a baseline planner") from None
        except ValueError as e:  # encoder models are not the pool's: the planner's observation does not transfer
            raise ValueError(f"the rl planner of {path} does not apply to pool {resources.pool.name!r}: {e}") from None
        if embed == "hash":
            self.inference.encoder.sketch._embed = hash_embed
        self.budgets = Budgets(resources)
        self.slack = slack

    def choose(self, task: MbppTask, snapshot: SystemSnapshot | None, slo_s: float | None) -> Topology:
        enc = self.inference.encoder
        snapshot = snapshot or _idle_snapshot(list(self.inference.spec.models))
        if slo_s is not None:  # the request's own budget: every topology gets it; slack relative to the default plan
            slack = max(slo_s / max(self.budgets.idle_latency_s(task, menu_topology("io")), 1e-3), 1e-3)
            slo_of = lambda topo: slo_s  # noqa: E731
        else:
            slack = self.slack
            slo_of = lambda topo: self.budgets.slo_s(task, topo, slack)  # noqa: E731
        obs = enc.planner_obs(task, snapshot, slack, slo_of)
        return menu_topology(self.inference.spec.menu[self.inference.act(obs)])
