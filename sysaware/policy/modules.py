"""The agents' RLModule: a small MLP policy and value head over the ``observations`` part of a masked observation
(spaces.py), with the action mask applied to the logits in every forward pass (exploration, inference and
training), so a masked action has probability exp(FLOAT_MIN) = 0 and can never be sampled or chosen.

Written for PPO on RLlib's new API stack (TorchRLModule + ValueFunctionAPI); unlike the example module
(rllib/examples/rl_modules/classes/action_masking_rlm.py) it never pops the mask out of the batch in place, so
calling ``compute_values`` before or after a forward pass on the same batch is safe.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.torch_utils import FLOAT_MIN


def _trunk(sizes: list[int]) -> nn.Sequential:
    """Tanh hidden layers with CleanRL's orthogonal init (gain sqrt 2, zero bias)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b)
        nn.init.orthogonal_(lin.weight, gain=2**0.5)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
    return nn.Sequential(*layers)


def _mlp(sizes: list[int], out: int, out_gain: float) -> nn.Sequential:
    layers = list(_trunk(sizes))
    head = nn.Linear(sizes[-1], out)
    nn.init.orthogonal_(head.weight, gain=out_gain)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits + torch.clamp(torch.log(mask), min=FLOAT_MIN)


class MaskedMLPModule(TorchRLModule, ValueFunctionAPI):
    def setup(self) -> None:
        space = self.observation_space
        obs_dim = int(space["observations"].shape[0])
        hidden = list(self.model_config.get("hidden", [64, 64])) if self.model_config else [64, 64]
        self.pi = _mlp([obs_dim, *hidden], int(self.action_space.n), 0.01)
        self.vf = _mlp([obs_dim, *hidden], 1, 1.0)

    @staticmethod
    def _split(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = batch[Columns.OBS]
        return obs["observations"], obs["action_mask"]

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        x, mask = self._split(batch)
        return {Columns.ACTION_DIST_INPUTS: masked_logits(self.pi(x), mask)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward(batch)

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        x, _ = self._split(batch)
        return self.vf(x).squeeze(-1)


class CandidateScorerModule(TorchRLModule, ValueFunctionAPI):
    """The executor: one SHARED MLP scores every candidate (model, strategy) row -> one logit per candidate.

    Why a scorer and not a flat MLP over all candidates at once: the flat MLP (MaskedMLPModule over a 80-d vector)
    had to learn each of the 15 cells separately from a few thousand decisions and ended up near-constant (Flash on
    one model everywhere). A row scorer sees the same features for every candidate (profile quality, T_hat against
    the budget, its model's queue/KV, the strategy) and learns ONE trade-off that applies to all of them, so every
    decision trains it 15 times over, and it does not depend on the pool's model list (spaces.py's row layout).

    Observation layout (spaces.py, ``EncoderSpec.executor_*``): ``[context (ctx_dim) | rows (num_candidates x
    row_dim)]`` flat; the context (task sketch, role, steps, b_t) is broadcast to every row. Value head: masked
    mean and max pool of the row embeddings -> MLP -> V. The mask is applied to the logits in every forward pass.
    """

    def setup(self) -> None:
        mc = self.model_config or {}
        self.ctx_dim = int(mc["ctx_dim"])
        self.row_dim = int(mc["row_dim"])
        self.num_candidates = int(mc["num_candidates"])
        hidden = list(mc.get("hidden", [64, 64]))
        sizes = [self.ctx_dim + self.row_dim, *hidden]
        self.trunk = _trunk(sizes)  # row -> embedding (the shared scorer's body)
        self.logit = nn.Linear(sizes[-1], 1)
        nn.init.orthogonal_(self.logit.weight, gain=0.01)
        nn.init.zeros_(self.logit.bias)
        self.vf = _mlp([2 * sizes[-1], sizes[-1]], 1, 1.0)

    def _embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = batch[Columns.OBS]
        x, mask = obs["observations"], obs["action_mask"]
        ctx = x[:, : self.ctx_dim]
        rows = x[:, self.ctx_dim :].reshape(x.shape[0], self.num_candidates, self.row_dim)
        inp = torch.cat([rows, ctx.unsqueeze(1).expand(-1, self.num_candidates, -1)], dim=-1)
        return self.trunk(inp), mask

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        h, mask = self._embed(batch)
        return {Columns.ACTION_DIST_INPUTS: masked_logits(self.logit(h).squeeze(-1), mask)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._forward(batch)

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        h, mask = self._embed(batch)
        m = mask.unsqueeze(-1)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        mx = h.masked_fill(m == 0, -1e9).max(1).values.clamp(min=-1.0)  # tanh embeddings: >= -1 when a row is valid
        return self.vf(torch.cat([mean, mx], dim=-1)).squeeze(-1)


class NumpyScorer:
    """The executor's policy head in numpy, for serving: the trunk and logit layer of a ``CandidateScorerModule``
    as arrays (no torch per decision; ~20 us for 15 rows). It scores any number of rows, so one checkpoint serves a
    pool with another model list (the rows are model-agnostic)."""

    def __init__(self, weights: list[tuple[Any, Any]], ctx_dim: int, row_dim: int) -> None:
        self.weights = weights  # [(W (in, out), b (out,)), ...]: trunk layers (tanh) then the logit layer
        self.ctx_dim, self.row_dim = ctx_dim, row_dim

    @classmethod
    def from_module(cls, module: CandidateScorerModule) -> "NumpyScorer":
        lins = [m for m in module.trunk if isinstance(m, nn.Linear)] + [module.logit]
        w = [(l.weight.detach().cpu().numpy().T.astype("float32").copy(), l.bias.detach().cpu().numpy().astype("float32").copy()) for l in lins]
        return cls(w, module.ctx_dim, module.row_dim)

    def logits(self, ctx: Any, rows: Any) -> Any:
        """ctx (ctx_dim,), rows (n, row_dim) -> (n,) unmasked logits."""
        import numpy as np

        x = np.concatenate([rows, np.broadcast_to(ctx, (rows.shape[0], ctx.shape[0]))], axis=1)
        for W, b in self.weights[:-1]:
            x = np.tanh(x @ W + b)
        W, b = self.weights[-1]
        return (x @ W + b)[:, 0]

    def act(self, obs: dict[str, Any]) -> int:
        """Greedy masked action of a flat masked observation (the training layout)."""
        import numpy as np

        x, mask = obs["observations"], obs["action_mask"]
        rows = x[self.ctx_dim :].reshape(-1, self.row_dim)
        logits = self.logits(x[: self.ctx_dim], rows)
        return int(np.argmax(np.where(mask > 0, logits, -np.inf)))
