"""``sysaware twin-check``: the twin checked against the engine it imitates.

One trace (arrival times, prompt lengths, output lengths forced with ``ignore_eos``) is replayed on a real vLLM
engine (engines/vllm/replay.py: in process, step by step, every step recorded) and then on a twin core with the same
scheduler limits (``max_num_seqs``, ``max_num_batched_tokens``, block size, vLLM's own KV block count less its null
block) and the step-time profile fitted to that engine's measured steps (``sysaware calibrate --vllm``,
twin/perf/measured_step_time.py). The twin receives each request at the time vLLM received it.

What is compared:

- scheduling: the order of first tokens (ties in one step broken by arrival), the preemption count, running and
  waiting after every vLLM step against the twin's state at the same time;
- latency per request: TTFT, TPOT and queue time (first scheduled - arrival), as the median of the per-request
  relative errors |twin / vLLM - 1| and as the error of the medians.

Two loads by default: ``light`` (sparse arrivals: hardly any queueing) and ``heavy`` (a burst that fills
``max_num_seqs``, queues, and overflows the KV cache so that vLLM preempts).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sysaware.config import ModelDeployment, PoolConfig
from sysaware.engines.types import ChatMessage, GenerationRequest

TARGETS = {"ttft_median_rel_error": 0.15, "tpot_median_rel_error": 0.15, "preemption_rel_error": 0.10}


# ---- what a replay records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    request_id: str
    arrival_s: float  # seconds after the replay starts
    prompt_tokens: int
    output_tokens: int  # forced (ignore_eos)
    priority: float = 0.0


@dataclass
class StepLog:
    start_s: float
    end_s: float
    prefill_tokens: int
    prefill_attended: int
    decode_seqs: int
    decode_context: int
    num_running: int  # after the step was scheduled
    num_waiting: int
    preempted: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class RequestLog:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    priority: float = 0.0
    arrival_s: float | None = None
    first_scheduled_s: float | None = None
    num_preemptions: int = 0
    token_times_s: list[float] = field(default_factory=list)

    @property
    def ttft_s(self) -> float | None:
        return self.token_times_s[0] - self.arrival_s if self.token_times_s and self.arrival_s is not None else None

    @property
    def tpot_s(self) -> float | None:
        t = self.token_times_s
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) >= 2 else None

    @property
    def queue_s(self) -> float | None:
        if self.first_scheduled_s is None or self.arrival_s is None:
            return None
        return self.first_scheduled_s - self.arrival_s


@dataclass
class ReplayLog:
    engine: str
    num_gpu_blocks: int
    block_size: int
    steps: list[StepLog] = field(default_factory=list)
    requests: list[RequestLog] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "ReplayLog":
        log = cls(raw["engine"], raw["num_gpu_blocks"], raw["block_size"])
        log.steps = [StepLog(**s) for s in raw["steps"]]
        log.requests = [RequestLog(**r) for r in raw["requests"]]
        return log


# ---- traces ---------------------------------------------------------------------------------------------------


def make_trace(load: str, seed: int = 0, num_requests: int | None = None) -> list[TraceRequest]:
    """``light``: 16 requests, Poisson arrivals 2 s apart on average, short prompts and answers (light even when
    the shared machine makes a step 20x slower than on a quiet one). ``heavy``: 24
    requests within ~0.7 s, prompts 200-900 and answers 100-300 tokens: eight running need ~8 x 750 tokens of KV,
    more than the check's 4064, so vLLM preempts, and a queue forms behind max_num_seqs. ``calibration``:
    both kinds mixed, for fitting the step-time profile (another seed than the check's)."""
    rng = random.Random(f"{load}-{seed}")
    if load == "light":
        n, gap_s, prompt, output = 16, 2.0, (32, 256), (16, 64)
    elif load == "heavy":
        n, gap_s, prompt, output = 24, 0.03, (200, 900), (100, 300)
    elif load == "calibration":
        light = make_trace("light", seed + 1000)
        start_heavy = light[-1].arrival_s + 2.0
        return [TraceRequest(f"c{i}", r.arrival_s + (0 if i < len(light) else start_heavy), r.prompt_tokens,
                             r.output_tokens)
                for i, r in enumerate(light + make_trace("heavy", seed + 1000)[:24])]
    else:
        raise ValueError(f"unknown load {load!r}; known: light, heavy, calibration")
    t = 0.0
    out = []
    for i in range(num_requests or n):
        out.append(TraceRequest(f"{load[0]}{i:03d}", round(t, 4), rng.randint(*prompt), rng.randint(*output)))
        t += rng.expovariate(1.0 / gap_s)
    return out


# ---- the twin's replay ----------------------------------------------------------------------------------------


class _ForcedLengths:
    """A responder for forced lengths: the length is max_tokens (ignore_eos), the text is not looked at."""

    def respond(self, request: GenerationRequest):
        from sysaware.engines.twin.protocols import Response

        return Response(text="", output_tokens=1)


def _prompt_count(text: str) -> int:
    return int(text)


def replay_on_twin(model: ModelDeployment, vllm_log: ReplayLog, step_time) -> ReplayLog:
    """The twin core, one scheduler iteration per call, given vLLM's requests at the times vLLM received them."""
    from sysaware.engines.tokens import CHAT_TEMPLATE_TOKENS_PER_MESSAGE
    from sysaware.engines.twin.perf.core import EventKind, TwinEngineCore

    blocks = vllm_log.num_gpu_blocks - 1  # vLLM v1 keeps one block as its null block
    settings = model.twin.model_copy(update={"block_size": vllm_log.block_size})
    core = TwinEngineCore(model.name, "twin-check", step_time, _ForcedLengths(), blocks, settings, _prompt_count,
                          max_model_len=model.engine.max_model_len or model.architecture.max_position_embeddings)
    arrivals = sorted((r for r in vllm_log.requests if r.arrival_s is not None), key=lambda r: r.arrival_s)
    log = ReplayLog(engine="twin", num_gpu_blocks=vllm_log.num_gpu_blocks, block_size=vllm_log.block_size)
    results = {}
    now, i = 0.0, 0
    while i < len(arrivals) or core.has_work():
        while i < len(arrivals) and arrivals[i].arrival_s <= now:
            r = arrivals[i]
            request = GenerationRequest(
                r.request_id, model.name,
                (ChatMessage("user", str(r.prompt_tokens - CHAT_TEMPLATE_TOKENS_PER_MESSAGE)),),
                max_tokens=r.output_tokens, ignore_eos=True, priority=r.priority,
            )
            core.add_request(request, r.arrival_s)
            i += 1
        if not core.has_work():
            now = arrivals[i].arrival_s
            continue
        outcome = core.step(now, until=now)  # one iteration
        shape = _last_shape(core)
        preempted = [e.request_id for e in outcome.events if e.kind is EventKind.PREEMPTED]
        if outcome.num_iterations:
            log.steps.append(StepLog(now, outcome.end_s, *shape, core.num_running, core.num_waiting, preempted))
        elif preempted and log.steps:  # a step that only preempted: vLLM reports it with the next one
            log.steps[-1].preempted.extend(preempted)
        for e in outcome.events:
            if e.kind is EventKind.FINISHED:
                results[e.request_id] = e.result
        now = outcome.end_s
    for r in arrivals:
        res = results[r.request_id]
        log.requests.append(RequestLog(r.request_id, r.prompt_tokens, r.output_tokens, r.priority, res.arrival_s,
                                       res.first_scheduled_s, res.num_preemptions, list(res.token_times_s)))
    return log


def _last_shape(core) -> tuple[int, int, int, int]:
    """The shape of the iteration the core just ran (single-iteration stepping)."""
    shape = getattr(core, "last_shape", None)
    if shape is None:
        return (0, 0, 0, 0)
    return (shape.prefill_tokens, shape.prefill_attended, shape.decode_seqs, shape.decode_context)


# ---- comparison -----------------------------------------------------------------------------------------------


def first_token_order(log: ReplayLog) -> list[str]:
    arrival_rank = {r.request_id: k for k, r in enumerate(sorted(log.requests, key=lambda r: r.arrival_s or 0))}
    done = [r for r in log.requests if r.token_times_s]
    return [r.request_id for r in sorted(done, key=lambda r: (round(r.token_times_s[0], 9), arrival_rank[r.request_id]))]


def kendall_agreement(a: list[str], b: list[str]) -> float:
    """Fraction of request pairs in the same order in both sequences (1.0: identical order)."""
    pos = {rid: k for k, rid in enumerate(b)}
    common = [rid for rid in a if rid in pos]
    n = len(common)
    if n < 2:
        return 1.0
    agree = sum(1 for x in range(n) for y in range(x + 1, n) if pos[common[x]] < pos[common[y]])
    return agree / (n * (n - 1) / 2)


def _state_at(steps: list[StepLog], t: float) -> tuple[int, int]:
    """(running, waiting) after the last step that started at or before ``t``."""
    starts = [s.start_s for s in steps]
    k = int(np.searchsorted(starts, t, side="right")) - 1
    if k < 0:
        return (0, 0)
    return (steps[k].num_running, steps[k].num_waiting)


def _rel_errors(vllm: dict[str, float | None], twin: dict[str, float | None]) -> np.ndarray:
    pairs = [(vllm[k], twin.get(k)) for k in vllm if vllm[k] and twin.get(k) is not None]
    return np.array([abs(t / v - 1.0) for v, t in pairs]) if pairs else np.array([])


def compare(vllm_log: ReplayLog, twin_log: ReplayLog) -> dict:
    """The check's numbers for one trace."""
    v_order, t_order = first_token_order(vllm_log), first_token_order(twin_log)
    v_pre = sum(r.num_preemptions for r in vllm_log.requests)
    t_pre = sum(r.num_preemptions for r in twin_log.requests)
    running_diff, waiting_diff, same = [], [], 0
    for s in vllm_log.steps:
        tr, tw = _state_at(twin_log.steps, s.start_s + 1e-9)
        running_diff.append(abs(tr - s.num_running))
        waiting_diff.append(abs(tw - s.num_waiting))
        same += (tr, tw) == (s.num_running, s.num_waiting)
    out: dict = {
        "requests": len(vllm_log.requests),
        "vllm_steps": len(vllm_log.steps),
        "twin_steps": len(twin_log.steps),
        "first_token_order_identical": v_order == t_order,
        "first_token_order_pairs_agree": kendall_agreement(v_order, t_order),
        "preemptions_vllm": v_pre,
        "preemptions_twin": t_pre,
        "preemption_rel_error": abs(t_pre - v_pre) / v_pre if v_pre else float(t_pre != 0),
        "steps_state_identical": same / max(len(vllm_log.steps), 1),
        "running_mean_abs_diff": float(np.mean(running_diff)) if running_diff else 0.0,
        "waiting_mean_abs_diff": float(np.mean(waiting_diff)) if waiting_diff else 0.0,
        "max_running_vllm": max((s.num_running for s in vllm_log.steps), default=0),
        "max_waiting_vllm": max((s.num_waiting for s in vllm_log.steps), default=0),
    }
    for metric in ("ttft_s", "tpot_s", "queue_s"):
        v = {r.request_id: getattr(r, metric) for r in vllm_log.requests}
        t = {r.request_id: getattr(r, metric) for r in twin_log.requests}
        rel = _rel_errors(v, t)
        name = metric[:-2]
        vv = [x for x in v.values() if x is not None]
        tv = [x for x in t.values() if x is not None]
        out[f"{name}_median_vllm_ms"] = float(np.median(vv) * 1e3) if vv else float("nan")
        out[f"{name}_median_twin_ms"] = float(np.median(tv) * 1e3) if tv else float("nan")
        out[f"{name}_median_rel_error"] = float(np.median(rel)) if len(rel) else float("nan")
        both = [(v[k], t[k]) for k in v if v[k] is not None and t.get(k) is not None]
        out[f"{name}_median_abs_error_ms"] = float(np.median([abs(b - a) for a, b in both]) * 1e3) if both else float("nan")
        med_v, med_t = out[f"{name}_median_vllm_ms"], out[f"{name}_median_twin_ms"]
        out[f"{name}_error_of_medians"] = abs(med_t / med_v - 1.0) if med_v and not math.isnan(med_v) else float("nan")
    v_dur = np.array([s.duration_s for s in vllm_log.steps])
    out["vllm_step_ms_median"] = float(np.median(v_dur) * 1e3) if len(v_dur) else 0.0
    out["twin_step_ms_median"] = float(np.median([s.duration_s for s in twin_log.steps]) * 1e3) if twin_log.steps else 0.0
    return out


def verdicts(row: dict) -> dict[str, bool]:
    return {
        "first-token order identical (FCFS)": bool(row["first_token_order_identical"]),
        "preemptions within 10%": row["preemption_rel_error"] <= TARGETS["preemption_rel_error"],
        "median TTFT error <= 15%": row["ttft_median_rel_error"] <= TARGETS["ttft_median_rel_error"],
        "median TPOT error <= 15%": row["tpot_median_rel_error"] <= TARGETS["tpot_median_rel_error"],
    }


def markdown_table(rows: dict[str, dict]) -> str:
    """One column per load."""
    loads = list(rows)
    lines = ["| metric | " + " | ".join(loads) + " |", "|---|" + "---|" * len(loads)]
    keys = list(dict.fromkeys(k for load in loads for k, v in rows[load].items() if not isinstance(v, (list, dict))))
    for k in keys:
        cells = []
        for load in loads:
            v = rows[load].get(k, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    for name in verdicts(rows[loads[0]]):
        lines.append(f"| target: {name} | " + " | ".join("PASS" if verdicts(rows[l])[name] else "FAIL" for l in loads) + " |")
    return "\n".join(lines)


# ---- the commands ---------------------------------------------------------------------------------------------


# The check's engine: the pool's model with a KV cache small enough that the heavy trace preempts (128 blocks of 32
# tokens: eight requests of ~900 tokens need twice that) and a context that fits in it.
CHECK_ENGINE = {"num_gpu_blocks": 128, "max_model_len": 2048}


def check_model(model: ModelDeployment) -> ModelDeployment:
    return model.model_copy(update={"engine": model.engine.model_copy(update=CHECK_ENGINE)})


def fit_log(model: ModelDeployment, log: ReplayLog, source: str = ""):
    """A step-time profile fitted to a replay's measured steps."""
    from sysaware.engines.twin.perf.measured_step_time import fit_profile
    from sysaware.engines.twin.protocols import BatchShape

    shapes = [BatchShape(s.prefill_tokens, s.prefill_attended, s.decode_seqs, s.decode_context) for s in log.steps]
    return fit_profile(model.gpu, model.name, shapes, [s.duration_s for s in log.steps], source=source)


def calibrate_on_vllm(pool: PoolConfig, model_name: str, out_dir: Path, seed: int = 0, save: bool = True,
                      trace: list[TraceRequest] | None = None, step_log: Path | None = None):
    """Replay the calibration trace on vLLM and fit the model's step-time profile (``<gpu>/<model>``); with
    ``step_log``, refit from a replay recorded earlier (its calibration_vllm_log.json) instead."""
    from sysaware.engines.twin.perf.measured_step_time import save_profile

    model = check_model(pool.model(model_name))
    if step_log is not None:
        log = ReplayLog.from_json(json.loads(Path(step_log).read_text()))
    else:
        from sysaware.engines.vllm.replay import replay_on_vllm

        log = replay_on_vllm(model, trace or make_trace("calibration", seed), seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "calibration_vllm_log.json").write_text(json.dumps(log.to_json()))
    profile = fit_log(model, log, source=f"sysaware calibrate --vllm: {len(log.steps)} steps of vLLM "
                                 f"({model.engine.model_path or model.hf_id}, load_format {model.engine.load_format}) "
                                 f"on this machine's CPU, calibration trace seed {seed}")
    if save:
        save_profile(profile)
    return profile, log


def twin_check(pool: PoolConfig, model_name: str, out_dir: Path, loads: tuple[str, ...] = ("light", "heavy"),
               seed: int = 1, num_requests: int | None = None, profile=None,
               noise_floor: bool = False, vllm_logs: Path | None = None,
               traces: dict[str, list[TraceRequest]] | None = None) -> dict[str, dict]:
    """Per load: the twin with the calibrated profile, the twin with a profile refitted on the run's own steps, and
    with ``noise_floor`` vLLM against a second vLLM run of the same trace (how far the engine agrees with itself on
    this machine: no twin can do better). ``vllm_logs``: a folder of an earlier check; its recorded vLLM replays are
    used instead of running vLLM again (to recheck a changed twin against the same engine run). ``traces``: a
    load's trace instead of ``make_trace``'s (a shorter one for CI)."""
    from sysaware.engines.twin.perf.measured_step_time import MeasuredStepTime, load_profiles

    if vllm_logs is None or noise_floor:
        from sysaware.engines.vllm.replay import replay_on_vllm
    model = check_model(pool.model(model_name))
    profile = profile or load_profiles().get(f"{model.gpu}/{model.name}")
    if profile is None:
        raise ValueError(f"no step-time profile for {model.gpu}/{model.name}: run `sysaware calibrate --vllm` first")
    out_dir.mkdir(parents=True, exist_ok=True)

    def trace_for(load: str) -> list[TraceRequest]:
        return (traces or {}).get(load) or make_trace(load, seed, num_requests)

    rows = {}
    for load in loads:
        if vllm_logs is not None:
            vllm_log = ReplayLog.from_json(json.loads((Path(vllm_logs) / f"{load}_vllm_log.json").read_text()))
        else:
            vllm_log = replay_on_vllm(model, trace_for(load), seed=seed)
        (out_dir / f"{load}_vllm_log.json").write_text(json.dumps(vllm_log.to_json()))
        # The calibrated profile (fitted on another trace, at another time: out of sample), then one refitted on
        # this run's own steps, which takes the machine's load during this very run out of the comparison and
        # leaves the scheduler and the shape of the step-time model.
        own = fit_log(model, vllm_log, source=f"twin-check {load}: this run's own steps")
        for name, prof in ((load, profile), (f"{load}/own-steps", own)):
            twin_log = replay_on_twin(model, vllm_log, MeasuredStepTime(prof))
            (out_dir / f"{name.replace('/', '_')}_twin_log.json").write_text(json.dumps(twin_log.to_json()))
            rows[name] = compare(vllm_log, twin_log)
            rows[name]["profile_median_rel_error"] = prof.median_rel_error
        if noise_floor:
            rerun = replay_on_vllm(model, trace_for(load), seed=seed)
            (out_dir / f"{load}_vllm_rerun_log.json").write_text(json.dumps(rerun.to_json()))
            rows[f"{load}/vllm-rerun"] = compare(vllm_log, rerun)
    (out_dir / "twin_check.json").write_text(json.dumps({"profile": asdict(profile), "rows": rows}, indent=2))
    (out_dir / "twin_check.md").write_text(markdown_table(rows) + "\n")
    return rows
