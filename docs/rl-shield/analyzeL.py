# Ad-hoc analysis script of docs/rl-shield.md (run from the repository root; writes/reads runs/diag/).
import json
import pandas as pd, numpy as np
for name in ["idle", "skew-cheap-hot"]:
    runs = pd.read_parquet(f"runs/diag/L-{name}.runs.parquet"); steps = pd.read_parquet(f"runs/diag/L-{name}.steps.parquet")
    dec = pd.DataFrame(json.load(open(f"runs/diag/L-{name}.dec.json")))
    m = steps.merge(dec, on=["run_id", "slot_id"], suffixes=("", "_d"))
    def pick(r, col, i):
        for c in r[col]:
            if c[0] == r.model and c[1] == r.strategy: return c[i]
    m["tq"] = m.apply(lambda r: pick(r, "cands", 2), axis=1)
    m["tl"] = m.apply(lambda r: pick(r, "learned", 2), axis=1)
    m["pl"] = m.apply(lambda r: pick(r, "learned", 3), axis=1)
    m["ol"] = m.apply(lambda r: pick(r, "learned", 4), axis=1)
    m["opl"] = m.apply(lambda r: pick(r, "learned", 5), axis=1)
    m["share"] = m.b / m.steps_left.clip(lower=1)
    viol = set(runs[~runs.met_slo].run_id)
    m["viol"] = m.run_id.isin(viol)
    print("===", name)
    for c in ["tq", "tl", "pl"]:
        r = m.latency_s / m[c]
        print(c, "ratio q50/90/95/99", r.quantile([.5, .9, .95, .99]).round(2).tolist(), " corr(log lat, log est)", round(np.corrcoef(np.log(m.latency_s), np.log(m[c]))[0, 1], 3))
    print("out tokens corr learned mean vs actual", round(np.corrcoef(np.log(m.output_tokens.clip(lower=1)), np.log(m.ol))[0,1], 3))
    first = m[m.viol].groupby("run_id").head(1)
    print(first[["run_id","model","strategy","share","tq","tl","pl","latency_s","output_tokens","ol","opl"]].round(2).to_string())
    print("violated-run steps where learned P90 > share:", (m[m.viol].pl > m[m.viol].share).mean().round(3), " all steps:", (m.pl > m.share).mean().round(3))
