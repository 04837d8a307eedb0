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


def _mlp(sizes: list[int], out: int, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b)
        nn.init.orthogonal_(lin.weight, gain=2**0.5)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
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
