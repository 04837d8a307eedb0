"""Workflow topologies: DAGs of role slots (MasRouter's collaboration modes for code tasks).

A slot is one agent call: a role, and the slots whose outputs its prompt shows (its inputs, which are also the
edges it waits on). Exactly one slot, the sink, has no successor; its code is the workflow's answer, so its role
must write code. Builders give the five shapes; the planner picks one and fills its slots with roles.

    io          answer
    chain       c0 -> c1 -> ... -> decide          every agent sees all earlier outputs (a running thread), so a
                                                   decision maker after a reviewer still sees the code
    star        w0, w1, ... (parallel) -> aggregate
    debate      r1d1, r1d2 -> r2d1, r2d2 -> decide  round 2: every debater sees every round-1 answer (its own too);
                                                   the decision maker sees the last round
    reflection  answer -> critique -> revise        revise sees the answer and the critique (and, being a bug
                                                   fixer, the example test's run of the answer)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

from sysaware.tasks.prompts import ROLES, RoleKind


class TopologyKind(str, Enum):
    IO = "io"
    CHAIN = "chain"
    STAR = "star"
    DEBATE = "debate"
    REFLECTION = "reflection"


@dataclass(frozen=True)
class Slot:
    slot_id: str  # unique in its topology, readable ("r2d1": round 2, debater 1)
    role_id: str  # key of sysaware.tasks.prompts.ROLES
    inputs: tuple[str, ...] = ()  # slots whose outputs this one's prompt shows, in display order
    label: str = ""  # how its output is introduced to later agents, beside the role title ("debater 1, round 1")

    @property
    def role(self):
        return ROLES[self.role_id]


class TopologyError(ValueError):
    """A topology that is not a DAG with one code-writing sink."""


@dataclass(frozen=True)
class Topology:
    kind: TopologyKind
    slots: tuple[Slot, ...]  # in a topological order (builders list them so; validated)

    def __post_init__(self) -> None:
        ids = [s.slot_id for s in self.slots]
        if not ids:
            raise TopologyError("a topology needs at least one slot")
        if len(set(ids)) != len(ids):
            raise TopologyError(f"slot ids must be unique, got {ids}")
        seen: set[str] = set()
        for slot in self.slots:
            if slot.role_id not in ROLES:
                raise TopologyError(f"slot {slot.slot_id}: unknown role {slot.role_id!r}; known: {sorted(ROLES)}")
            for i in slot.inputs:
                if i not in seen:
                    raise TopologyError(f"slot {slot.slot_id}: input {i!r} is not an earlier slot (cycle or typo)")
            seen.add(slot.slot_id)
        sinks = [s for s in self.slots if not self.successors(s.slot_id)]
        if len(sinks) != 1:
            raise TopologyError(f"a topology needs exactly one sink, got {[s.slot_id for s in sinks]}")
        if sinks[0].role.kind is not RoleKind.CODE:
            raise TopologyError(f"the sink {sinks[0].slot_id} must write code, but {sinks[0].role_id} writes {sinks[0].role.kind.value}")

    @property
    def name(self) -> str:
        return self.kind.value

    @cached_property
    def by_id(self) -> dict[str, Slot]:
        return {s.slot_id: s for s in self.slots}

    def slot(self, slot_id: str) -> Slot:
        return self.by_id[slot_id]

    def index(self, slot_id: str) -> int:
        """The slot's position in the topological order: the "step" column of traces and prompt tables."""
        return [s.slot_id for s in self.slots].index(slot_id)

    def successors(self, slot_id: str) -> tuple[str, ...]:
        return tuple(s.slot_id for s in self.slots if slot_id in s.inputs)

    @property
    def sink(self) -> Slot:
        return next(s for s in self.slots if not self.successors(s.slot_id))

    def waves(self) -> list[tuple[str, ...]]:
        """Slots grouped by depth: every slot of a wave can run concurrently once the earlier waves are done."""
        depth: dict[str, int] = {}
        for slot in self.slots:
            depth[slot.slot_id] = 1 + max((depth[i] for i in slot.inputs), default=-1)
        return [tuple(s.slot_id for s in self.slots if depth[s.slot_id] == d) for d in range(max(depth.values()) + 1)]

    def steps_to_sink(self, slot_id: str) -> int:
        """Slots on the longest path from ``slot_id`` to the sink, both included: how many sequential calls the
        rest of the workflow needs at least, which is how a per-step share of the remaining budget divides it."""
        after = self.successors(slot_id)
        return 1 + max((self.steps_to_sink(s) for s in after), default=0)

    @property
    def critical_path_steps(self) -> int:
        return max(self.steps_to_sink(s.slot_id) for s in self.slots)

    def to_json(self) -> dict:
        """A plain dict (for caches, request files and the HTTP API); ``from_json`` validates it back."""
        return {"kind": self.kind.value, "slots": [
            {"slot_id": s.slot_id, "role_id": s.role_id, "inputs": list(s.inputs), "label": s.label} for s in self.slots
        ]}

    @classmethod
    def from_json(cls, raw: dict) -> "Topology":
        slots = tuple(Slot(s["slot_id"], s["role_id"], tuple(s.get("inputs", ())), s.get("label", "")) for s in raw["slots"])
        return cls(TopologyKind(raw["kind"]), slots)


# ---------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------


def io(role_id: str = "programmer") -> Topology:
    """One agent answers alone."""
    return Topology(TopologyKind.IO, (Slot("answer", role_id),))


def chain(roles: Sequence[str] = ("algorithm_designer", "programmer"), final: str = "decision_maker") -> Topology:
    """``roles`` one after another, then ``final``; each sees every earlier output."""
    slots: list[Slot] = []
    for i, role_id in enumerate([*roles, final]):
        slot_id = "decide" if i == len(roles) else f"c{i}"
        slots.append(Slot(slot_id, role_id, tuple(s.slot_id for s in slots)))
    return Topology(TopologyKind.CHAIN, tuple(slots))


def star(
    workers: Sequence[str] = ("algorithm_designer", "programmer", "test_analyst"), final: str = "decision_maker"
) -> Topology:
    """``workers`` in parallel, each seeing only the task; ``final`` aggregates them."""
    if not workers:
        raise TopologyError("a star needs at least one worker")
    slots = [Slot(f"w{i}", r) for i, r in enumerate(workers)]
    slots.append(Slot("aggregate", final, tuple(s.slot_id for s in slots)))
    return Topology(TopologyKind.STAR, tuple(slots))


def debate(
    debaters: Sequence[str] = ("programmer", "programmer"), rounds: int = 2, final: str = "decision_maker"
) -> Topology:
    """Debaters answer alone in round 1; in each later round every debater sees every answer of the round before."""
    if len(debaters) < 2 or rounds < 1:
        raise TopologyError("a debate needs at least two debaters and one round")
    slots: list[Slot] = []
    previous: tuple[str, ...] = ()
    for r in range(1, rounds + 1):
        current = []
        for d, role_id in enumerate(debaters, 1):
            slot_id = f"r{r}d{d}"
            slots.append(Slot(slot_id, role_id, previous, label=f"debater {d}, round {r}"))
            current.append(slot_id)
        previous = tuple(current)
    slots.append(Slot("decide", final, previous))
    return Topology(TopologyKind.DEBATE, tuple(slots))


def reflection(answer: str = "programmer", critique: str = "reviewer", revise: str = "bug_fixer") -> Topology:
    """Answer, critique of the answer, revision given both."""
    return Topology(
        TopologyKind.REFLECTION,
        (
            Slot("answer", answer),
            Slot("critique", critique, ("answer",)),
            Slot("revise", revise, ("answer", "critique")),
        ),
    )


DEFAULT_TOPOLOGIES: dict[TopologyKind, Topology] = {
    TopologyKind.IO: io(),
    TopologyKind.CHAIN: chain(),
    TopologyKind.STAR: star(),
    TopologyKind.DEBATE: debate(),
    TopologyKind.REFLECTION: reflection(),
}


def default_topology(kind: TopologyKind | str) -> Topology:
    """The shape with its default roles."""
    try:
        return DEFAULT_TOPOLOGIES[TopologyKind(kind)]
    except ValueError:
        raise ValueError(f"unknown topology {kind!r}; known: {[k.value for k in TopologyKind]}") from None
