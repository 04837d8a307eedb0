# Ad-hoc analysis script of docs/rl-shield.md (run from the repository root; writes/reads runs/diag/).
import json, sys
import pandas as pd, numpy as np
for name in ["idle", "uniform-10", "skew-cheap-hot"]:
    runs = pd.read_parquet(f"runs/diag/{name}.runs.parquet"); steps = pd.read_parquet(f"runs/diag/{name}.steps.parquet")
    dec = pd.DataFrame(json.load(open(f"runs/diag/{name}.dec.json")))
    dec["run_id"] = dec.run_id
    m = steps.merge(dec, on=["run_id", "slot_id"], suffixes=("", "_d"))
    assert len(m) == len(steps), (len(m), len(steps))
    def est(r):
        for mo, st, t, p in r.cands:
            if mo == r.model and st == r.strategy: return t
    m["t_hat"] = m.apply(est, axis=1)
    m["t_min"] = m.cands.apply(lambda c: min(x[2] for x in c))
    m["share"] = m.b / m.steps_left.clip(lower=1)
    m["ratio"] = m.latency_s / m.t_hat
    m["est_over_share"] = m.t_hat > m.share
    m["lat_over_share"] = m.latency_s > m.share
    viol = runs[~runs.met_slo]
    mv = m[m.run_id.isin(viol.run_id)]
    print(f"==== {name}: {len(runs)} runs, {len(viol)} violations, steps {len(m)}")
    print("ratio latency/t_hat quantiles all steps:", m.ratio.quantile([.5,.9,.95,.99]).round(2).tolist())
    print("by strategy ratio q90:", m.groupby("strategy").ratio.quantile(.9).round(2).to_dict())
    print("steps with est>share: all %.3f, in violated runs %.3f" % (m.est_over_share.mean(), mv.est_over_share.mean()))
    print("violated runs: topology", viol.topology.value_counts().to_dict())
    print("overrun (e2e/slo) of violated:", (viol.e2e_latency_s / viol.slo_s).round(2).describe()[["50%","max"]].to_dict())
    # per violated run: was any step's chosen estimate already over share? was the fastest candidate over share?
    g = mv.groupby("run_id")
    summ = pd.DataFrame({"any_est_over": g.est_over_share.any(), "fastest_over": g.apply(lambda d: (d.t_min > d.share).any()),
                         "any_lat_over": g.lat_over_share.any(), "max_ratio": g.ratio.max()})
    print(summ.mean(numeric_only=False).round(2).to_dict())
    print(mv[["run_id","slot_id","role","model","strategy","b","steps_left","share","t_hat","t_min","latency_s","output_tokens","queue_time_s"]].round(2).head(30).to_string())
