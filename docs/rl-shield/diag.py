# Ad-hoc analysis script of docs/rl-shield.md (run from the repository root; writes/reads runs/diag/).
"""Diagnosis: re-run the shipped rl executor's cell on a scenario, recording per decision every candidate's
queueing estimate, b_t, steps_left and the chosen one; join with the cell's steps/runs.

    python docs/rl-shield/diag.py SCENARIO [POLICY] [--learned]

``--learned`` also records the learned estimators' answers per candidate (files prefixed ``L-``, read by
analyzeL.py)."""
import sys, json, time
import sysaware.policy  # noqa
from sysaware.orchestration.scenarios import load_scenarios
from sysaware.pipelines import scenario_eval as se
from sysaware.orchestration.executors import EXECUTORS, step_query

args = [a for a in sys.argv[1:] if a != "--learned"]
learned = "--learned" in sys.argv[1:]
name = args[0]
policy = args[1] if len(args) > 1 else "rl"
prefix = "L-" if learned else ""
records = []
Base = EXECUTORS["rl"]

class Rec(Base):
    def choose(self, ctx):
        a = super().choose(ctx)
        enc = self.inference.encoder
        ests = enc.latency_estimator().estimate(enc._step_query(ctx))
        record = {}
        if learned:
            if not hasattr(self, "_learned"):
                from sysaware.estimators.latency import make_latency_estimator
                r = self.resources
                self._learned = make_latency_estimator("learned", r.models, idle=r.idle.models,
                                                       output_tokens=r.lengths.tokens)
            le = self._learned.estimate(step_query(ctx))
            record["learned"] = [(e.model, e.strategy, e.t_hat_ms / 1e3, e.t_hat_p90_ms / 1e3, e.out_tokens,
                                  e.out_tokens_p90) for e in le]
        record.update({
            "run_id": ctx.run_id, "slot_id": ctx.slot.slot_id, "role": ctx.role_id, "b": ctx.remaining_budget_s,
            "steps_left": ctx.steps_left, "slo": ctx.slo_s, "model": a.model, "strategy": a.strategy.value,
            "cands": [(e.model, e.strategy, e.t_hat_ms / 1e3, e.t_hat_p90_ms / 1e3) for e in ests],
        })
        records.append(record)
        return a

EXECUTORS["rl"] = Rec
settings = se.ScenarioEvalSettings(policies=(policy,), scenarios=(name,))
scen = load_scenarios()[name]
reqs = se.plan_stream(scen, settings)
t = time.time()
res = se.run_cell(scen, policy, reqs, settings)
print("wall", time.time() - t, file=sys.stderr)
res.runs.to_parquet(f"runs/diag/{prefix}{name}.runs.parquet")
res.steps.to_parquet(f"runs/diag/{prefix}{name}.steps.parquet")
json.dump(records, open(f"runs/diag/{prefix}{name}.dec.json", "w"))
r = res.runs
print(name, "goodput", (r.passed & r.met_slo).mean(), "slo", r.met_slo.mean())
