# Ad-hoc analysis script of docs/rl-shield.md (run from the repository root; writes/reads runs/diag/).
import sys, pandas as pd, numpy as np
from sysaware.pipelines.eval_stats import paired_difference, bootstrap_mean
def load(d):
    df = pd.read_parquet(f"{d}/decisions.parquet")
    r = df.groupby(["episode", "run_id"]).agg(met=("met_slo", "first"), passed=("passed", "first"))
    r["good"] = r.met & r.passed
    return r
base = load(sys.argv[1])
print("| policy (train split, 480 requests) | goodput % | SLO met % | Δ goodput vs shipped | Δ SLO vs shipped |")
print("|---|---|---|---|---|")
for d in sys.argv[1:]:
    r = load(d)
    j = base.join(r, lsuffix="_b", how="inner")
    assert len(j) == len(base) == len(r), (d, len(j), len(base), len(r))
    g = paired_difference(j.good.astype(float).values, j.good_b.astype(float).values)
    s = paired_difference(j.met.astype(float).values, j.met_b.astype(float).values)
    f = lambda e: f"{e.mean*100:+.1f} [{e.low*100:+.1f}, {e.high*100:+.1f}]{' *' if e.excludes_zero() else ''}"
    print(f"| {d} | {bootstrap_mean(r.good.astype(float).values).fmt()} | {bootstrap_mean(r.met.astype(float).values).fmt()} | {f(g)} | {f(s)} |")
