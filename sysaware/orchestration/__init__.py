"""Orchestration: multi-agent workflows as pure state machines, the policies that plan and execute them, the
simulated driver that runs them on the twin cluster and the live driver that runs them through Ray Serve handles.
Imports point down only (engines, sim, tasks): the live driver takes its handles and telemetry actor as given."""

from sysaware.orchestration.budget import DEFAULT_SLACK, ProfileBudget, plan_slo_s
from sysaware.orchestration.context import Action, InvalidAction, Plan, PolicyResources, StepContext, all_actions
from sysaware.orchestration.executors import EXECUTORS, Executor, make_executor
from sysaware.orchestration.live_driver import LiveDriver
from sysaware.orchestration.planners import PLANNERS, Planner, make_planner
from sysaware.orchestration.session import DecisionError, DecisionPoint, ExecutorAgent, WorkflowSession
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.topology import Slot, Topology, TopologyKind, default_topology
from sysaware.orchestration.trace import RunTrace, StepRecord
from sysaware.orchestration.workflow import ModelCall, SandboxRun, Workflow, WorkflowState

__all__ = [
    "Action",
    "DEFAULT_SLACK",
    "DecisionError",
    "DecisionPoint",
    "EXECUTORS",
    "Executor",
    "ExecutorAgent",
    "InvalidAction",
    "LiveDriver",
    "ModelCall",
    "PLANNERS",
    "Plan",
    "Planner",
    "PolicyResources",
    "ProfileBudget",
    "RunTrace",
    "SandboxRun",
    "SimSettings",
    "SimulatedDriver",
    "Slot",
    "StepContext",
    "StepRecord",
    "Topology",
    "TopologyKind",
    "Workflow",
    "WorkflowSession",
    "WorkflowState",
    "all_actions",
    "default_topology",
    "make_executor",
    "make_planner",
    "plan_slo_s",
]
