# Ad-hoc analysis script of docs/rl-shield.md (run from the repository root; writes/reads runs/diag/).
"""Diagnosis: re-run the shipped rl executor's cell on a scenario, recording per decision every candidate's
queueing estimate, b_t, steps_left and the chosen one; join with the cell's steps/runs."""
import sys, json, time
import pandas as pd
import numpy as np
import sysaware.policy  # noqa
from sysaware.orchestration.scenarios import load_scenarios
from sysaware.pipelines import scenario_eval as se
from sysaware.orchestration.executors import EXECUTORS

name = sys.argv[1]
policy = sys.argv[2] if len(sys.argv) > 2 else "rl"
records = []
Base = EXECUTORS["rl"]

class Rec(Base):
    def choose(self, ctx):
        a = super().choose(ctx)
        enc = self.inference.encoder
        ests = enc.latency_estimator().estimate(enc._step_query(ctx))
        if not hasattr(self, "_learned"):
            from sysaware.estimators.latency import make_latency_estimator
            r = self.resources
            self._learned = make_latency_estimator("learned", r.models, idle=r.idle.models, output_tokens=r.lengths.tokens)
        from sysaware.orchestration.executors import step_query
        le = self._learned.estimate(step_query(ctx))
        records.append({"learned": [(e.model, e.strategy, e.t_hat_ms / 1e3, e.t_hat_p90_ms / 1e3, e.out_tokens, e.out_tokens_p90) for e in le],
            "run_id": ctx.run_id, "slot_id": ctx.slot.slot_id, "role": ctx.role_id, "b": ctx.remaining_budget_s,
            "steps_left": ctx.steps_left, "slo": ctx.slo_s, "model": a.model, "strategy": a.strategy.value,
            "cands": [(e.model, e.strategy, e.t_hat_ms / 1e3, e.t_hat_p90_ms / 1e3) for e in ests],
        })
        return a

EXECUTORS["rl"] = Rec
settings = se.ScenarioEvalSettings(policies=(policy,), scenarios=(name,))
scen = load_scenarios()[name]
reqs = se.plan_stream(scen, settings)
t = time.time()
res = se.run_cell(scen, policy, reqs, settings)
print("wall", time.time() - t, file=sys.stderr)
res.runs.to_parquet(f"runs/diag/L-{name}.runs.parquet")
res.steps.to_parquet(f"runs/diag/L-{name}.steps.parquet")
json.dump(records, open(f"runs/diag/L-{name}.dec.json", "w"))
r = res.runs
print(name, "goodput", (r.passed & r.met_slo).mean(), "slo", r.met_slo.mean())
