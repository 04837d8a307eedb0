"""How much does the trained length-feedback executor react to its feedback columns? On real decision points of
uniform-150 (the env, with the trained policy acting), the argmax with the actual features against the argmax with
them zeroed, and with a strong overrun (2.7x length: +1 on each column). One episode (env seed 3, 24 requests):

    PYTHONPATH=. python docs/rl-length-feedback/sensitivity.py [policy dir; default docs/rl-length-feedback/policy-s0]
"""
import numpy as np
import sysaware.policy  # noqa
from sysaware.orchestration.executors import make_executor
from sysaware.policy.env import SysawareEnv
from sysaware.policy.spaces import LENGTH_FEEDBACK_COLUMNS
env = SysawareEnv({"scenarios": ["uniform-150"], "requests_per_episode": 24, "embed": "minilm", "planner": "random", "length_feedback": True, "task_dims": 8})
import sys
ex = make_executor(f"rl@{sys.argv[1] if len(sys.argv) > 1 else 'docs/rl-length-feedback/policy-s0'}", env.resources)
enc, head = ex.inference.encoder, ex.head
k = len(LENGTH_FEEDBACK_COLUMNS)
n = changed_zero = changed_over = with_hist = 0
flash_share = {"zero": [], "actual": [], "over": []}
obs, _ = env.reset(seed=3)
while True:
    (agent, o), = obs.items()
    _, point = env._current
    ctx = point.context
    c = np.clip(enc.executor_context(ctx), -10, 10)
    rows, mask = enc.executor_rows(ctx)
    def pick(cv):
        l = head.logits(cv, np.clip(rows, -10, 10)); l = np.where(mask > 0, l, -np.inf); return int(np.argmax(l))
    z = c.copy(); z[-k:] = 0
    ov = c.copy(); ov[-k:] = 1.0
    a, az, ao = pick(c), pick(z), pick(ov)
    n += 1; with_hist += bool(ctx.history)
    changed_zero += a != az; changed_over += az != ao
    for name, i in (("zero", az), ("actual", a), ("over", ao)):
        flash_share[name].append(enc.spec.action_of(i).strategy.value)
    obs, _, term, *_ = env.step({agent: a})
    if term["__all__"]:
        break
print(f"decisions {n}, with a finished step before them {with_hist}")
print(f"argmax changes: actual vs zeroed features {changed_zero}; zeroed vs +1 overrun on every column {changed_over}")
for name, v in flash_share.items():
    v = np.array(v); print(name, {s: round(float((v == s).mean()), 3) for s in ("flash", "concise", "deepthink")})
