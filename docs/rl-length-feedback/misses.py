"""Where the SLO misses of a policy's cells come from: per missed request, whether any step overran its expected
length by > 1.5x, and whether a later step was decided after the first such overrun had finished (a step the length
feedback could have acted on). Usage:

    PYTHONPATH=. python docs/rl-length-feedback/misses.py --run-dir runs/lf-eval --policy rl@runs/rl-lf-s0/policy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.policy.world import load_world_scenarios, resources_for
from sysaware.tasks.prompts import Strategy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--policy", required=True)
    args = ap.parse_args()
    tag = args.policy.replace("@", "-at-").replace("/", "_")
    for runs_f in sorted((args.run_dir / "cells").glob(f"*__{tag}__*.runs.parquet")):
        runs = pd.read_parquet(runs_f)
        steps = pd.read_parquet(str(runs_f).replace(".runs.", ".steps."))
        sc = runs.scenario.iloc[0]
        res = resources_for(load_world_scenarios([sc])[0].pool)
        exp = [res.lengths.tokens(m, Strategy(s), r) for m, s, r in zip(steps.model, steps.strategy, steps.role_id)]
        steps = steps.assign(over=steps.output_tokens / np.asarray(exp) > 1.5)
        missed = runs[~runs.met_slo.astype(bool)]
        any_over = actionable = 0
        for run_id in missed.run_id:
            g = steps[steps.run_id == run_id]
            over = g[g.over]
            if len(over):
                any_over += 1
                actionable += bool((g.decided_at_s >= over.finished_at_s.min() - 1e-9).any())
        print(f"{sc}: {len(missed)} of {len(runs)} requests missed the SLO; {any_over} had a step > 1.5x its expected "
              f"length; in {actionable} a later step was decided after the first such overrun had finished")


if __name__ == "__main__":
    main()
