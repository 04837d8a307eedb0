"""The engine clock: seconds of simulated GPU time, running ``time_scale`` times faster than the wall clock.

A twin replica served at ``time_scale`` 20 spends 20 engine seconds per wall second, so budgets, SLOs and step
times read the same as in simulation. Every live component that converts between the two (the twin's live driver,
the workflow driver, the Phase 2 live probes) uses this one class, so the conversion is written once. On a real
engine (vLLM, remote) the scale is 1 and engine seconds are wall seconds.
"""

from __future__ import annotations

import time


class EngineClock:
    """``now()`` = (monotonic wall time - t0) x ``time_scale``; t0 is when the clock was built (or ``pause``d)."""

    __slots__ = ("time_scale", "_t0_wall_s")

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = time_scale
        self._t0_wall_s = time.monotonic()

    def now(self) -> float:
        """Engine seconds since the clock started."""
        return (time.monotonic() - self._t0_wall_s) * self.time_scale

    def wall_deadline(self, engine_s: float) -> float:
        """The monotonic wall time at which the engine clock reads ``engine_s``."""
        return self._t0_wall_s + engine_s / self.time_scale

    def wall_s(self, engine_s: float) -> float:
        """A duration in engine seconds as wall seconds."""
        return engine_s / self.time_scale

    def engine_s(self, wall_s: float) -> float:
        """A duration in wall seconds as engine seconds."""
        return wall_s * self.time_scale

    def hold(self, wall_s: float) -> None:
        """Stop the engine clock for ``wall_s`` of wall time that belongs to no GPU (e.g. the twin's responder
        deciding an answer): everything later reads that much earlier."""
        self._t0_wall_s += wall_s
