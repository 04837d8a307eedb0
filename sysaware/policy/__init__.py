"""The policy layer: the planner and executor trained with RLlib as a constrained MDP (DESIGN.md, "Policy").

- world.py: the one adapter to the simulation (scenarios, budgets, the decision-point API);
- spaces.py: observation/action encoders shared by training and serving;
- reward.py: the reward and the Lagrange multiplier's dual ascent;
- env.py: the two-agent MultiAgentEnv; modules.py: the masked RLModule; train.py: PPO training;
- serve.py: ``RLExecutor`` / ``RLPlanner``, which run a checkpoint's RLModules without the Algorithm.

Importing this package registers ``rl`` in the executor and planner registries (orchestration cannot import the
layer above it, so the registration happens here; pipelines and the CLI import this package).
"""

from __future__ import annotations

from sysaware.orchestration.executors import EXECUTORS
from sysaware.orchestration.planners import PLANNERS
from sysaware.policy.serve import RLExecutor, RLPlanner

EXECUTORS.setdefault(RLExecutor.name, RLExecutor)
PLANNERS.setdefault(RLPlanner.name, RLPlanner)

__all__ = ["RLExecutor", "RLPlanner"]
