"""Tables for docs/rl-length-feedback.md: the length-feedback executor (one seed) against the shipped seed 0, greedy
and the oracle, on the cached cells of a scenario evaluation, paired request by request (eval_stats' bootstrap):

    PYTHONPATH=. python docs/rl-length-feedback/lf_table.py --run-dir runs/lf-eval --policy rl@runs/rl-lf-s0/policy
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sysaware.pipelines.policy_compare import compare_table, load_runs

SCENARIOS = ("mixed-slo", "uniform-150", "uniform-300", "uniform-10", "idle", "skew-cheap-hot")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--policy", required=True, help="the new policy's name in the cells (rl@<policy dir>)")
    ap.add_argument("--refs", default="rl,greedy,greedy@queueing,oracle")
    args = ap.parse_args()
    runs = load_runs(args.run_dir)
    scenarios = [s for s in SCENARIOS if ((runs.scenario == s) & (runs.policy == args.policy)).any()]
    refs = args.refs.split(",")
    label = {args.policy: "rl-lf s0", "rl": "rl s0 (shipped)"}
    for metric in ("goodput", "met_slo", "passed"):
        print(f"\n#### {metric}\n")
        print(compare_table(runs, [args.policy, *refs], refs, scenarios, label, metric))


if __name__ == "__main__":
    main()
