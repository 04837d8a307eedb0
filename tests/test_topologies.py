"""Topologies: shapes, validation, and the order in which the workflow state machine runs their slots."""

from __future__ import annotations

import random

import pytest

from sysaware.engines.types import FinishReason, GenerationResult
from sysaware.orchestration.planners import random_topology
from sysaware.orchestration.topology import (
    Slot,
    Topology,
    TopologyError,
    TopologyKind,
    chain,
    debate,
    default_topology,
    io,
    reflection,
    star,
)
from sysaware.orchestration.workflow import ModelCall, SandboxPurpose, SandboxRun, SlotReady, Workflow
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.prompts import RoleKind, Strategy
from sysaware.tasks.sandbox import ExecutionResult, ExecutionStatus


def answer_text(call: ModelCall) -> str:
    """A stand-in agent: code for code roles (so fixers get a candidate to test), prose otherwise."""
    if call.role_id in ("programmer", "bug_fixer", "decision_maker"):
        return f"```python\ndef f(x):\n    return '{call.slot_id}'\n```"
    return f"Notes from {call.slot_id}."


def fake_result(call: ModelCall, start_s: float, end_s: float) -> GenerationResult:
    return GenerationResult(
        request_id=call.call_id, model=call.model, text=answer_text(call), prompt_tokens=50, output_tokens=5,
        finish_reason=FinishReason.STOP, arrival_s=start_s, first_scheduled_s=start_s, first_token_s=start_s + 0.1,
        finished_s=end_s,
    )


def passed_run(run: SandboxRun) -> ExecutionResult:
    return ExecutionResult(True, ExecutionStatus.PASSED, (), "", "", 0.0, "")


def execution_waves(topology: Topology) -> list[list[str]]:
    """Drive a workflow where every call takes 1 s: the slots sent together, wave by wave (the clock = the wave)."""
    wf = Workflow("run", get_task(11), topology, slo_s=100.0)
    effects = wf.start(0.0)
    waves: list[list[str]] = []
    now = 0.0
    while effects:
        calls, later = [], []
        for e in effects:
            if isinstance(e, SlotReady):
                calls.append(wf.decide(e.slot_id, "m", Strategy.FLASH, now))
            elif e.purpose is SandboxPurpose.EXAMPLE:
                later += wf.on_sandbox_result(e, passed_run(e), now)
        if later:
            effects = later
            continue
        waves.append(sorted(c.slot_id for c in calls))
        now += 1.0
        effects = [x for c in calls for x in wf.on_model_result(c.slot_id, fake_result(c, now - 1.0, now), now)]
        effects = [e for e in effects if not (isinstance(e, SandboxRun) and e.purpose is SandboxPurpose.FINAL)]
    return waves


@pytest.mark.parametrize(
    "topology, expected",
    [
        (io(), [["answer"]]),
        (chain(["algorithm_designer", "programmer"]), [["c0"], ["c1"], ["decide"]]),
        (star(["algorithm_designer", "programmer", "test_analyst"]), [["w0", "w1", "w2"], ["aggregate"]]),
        (debate(["programmer", "programmer"], rounds=2), [["r1d1", "r1d2"], ["r2d1", "r2d2"], ["decide"]]),
        (reflection(), [["answer"], ["critique"], ["revise"]]),
    ],
    ids=lambda x: x.name if isinstance(x, Topology) else "",
)
def test_execution_order_is_topological_with_parallel_waves(topology, expected):
    assert execution_waves(topology) == expected
    assert [list(w) for w in topology.waves()] == [sorted(w) for w in expected]


def test_every_default_topology_has_one_code_sink_and_inputs_before_use():
    for kind in TopologyKind:
        t = default_topology(kind)
        assert t.sink.role.kind is RoleKind.CODE
        position = {s.slot_id: i for i, s in enumerate(t.slots)}
        for slot in t.slots:
            assert all(position[i] < position[slot.slot_id] for i in slot.inputs)


def test_chain_agents_see_every_earlier_output_and_debaters_see_the_whole_previous_round():
    c = chain(["algorithm_designer", "programmer", "reviewer"])
    assert c.slot("decide").inputs == ("c0", "c1", "c2")  # the decision maker still sees the code after a review
    d = debate(["programmer"] * 3, rounds=2)
    for i in (1, 2, 3):
        assert d.slot(f"r2d{i}").inputs == ("r1d1", "r1d2", "r1d3")  # its own previous answer included
        assert d.slot(f"r1d{i}").inputs == ()
    assert d.slot("decide").inputs == ("r2d1", "r2d2", "r2d3")
    r = reflection()
    assert r.slot("revise").inputs == ("answer", "critique")


def test_steps_to_sink_is_the_longest_remaining_path():
    s = star(["programmer", "test_analyst"])
    assert [s.steps_to_sink(x) for x in ("w0", "w1", "aggregate")] == [2, 2, 1]
    d = debate(["programmer", "programmer"], rounds=2)
    assert d.steps_to_sink("r1d1") == 3 and d.critical_path_steps == 3
    assert chain(["algorithm_designer", "programmer", "reviewer"]).critical_path_steps == 4


def test_malformed_topologies_are_rejected():
    with pytest.raises(TopologyError, match="not an earlier slot"):
        Topology(TopologyKind.CHAIN, (Slot("a", "programmer", ("b",)), Slot("b", "decision_maker", ("a",))))
    with pytest.raises(TopologyError, match="exactly one sink"):
        Topology(TopologyKind.STAR, (Slot("a", "programmer"), Slot("b", "programmer")))
    with pytest.raises(TopologyError, match="must write code"):
        Topology(TopologyKind.IO, (Slot("a", "reviewer"),))
    with pytest.raises(TopologyError, match="unknown role"):
        Topology(TopologyKind.IO, (Slot("a", "poet"),))
    with pytest.raises(TopologyError, match="unique"):
        Topology(TopologyKind.CHAIN, (Slot("a", "programmer"), Slot("a", "decision_maker", ("a",))))
    with pytest.raises(ValueError, match="unknown topology"):
        default_topology("ring")


def test_random_topologies_are_well_formed_and_cover_every_shape():
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        t = random_topology(rng)
        seen.add(t.kind)
        for slot in t.slots:
            if slot.role_id in ("bug_fixer", "reviewer"):
                # a fixer or a reviewer always has code to work on among its inputs
                assert any(t.slot(i).role.kind is RoleKind.CODE for i in slot.inputs), t
        assert execution_waves(t)[-1] == [t.sink.slot_id]
    assert seen == set(TopologyKind)
