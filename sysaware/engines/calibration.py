"""Calibrating the engines' performance models: ``sysaware calibrate`` refits the twin's step-time efficiencies to
the vendored Vidur GPU profiles. Real engines need no calibration (they are measured), so this is the twin's alone;
it is exposed here so the CLI need not reach into the twin's package."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from sysaware.engines.twin.perf import calibration

    calibration.main(argv) if argv is not None else calibration.main()
