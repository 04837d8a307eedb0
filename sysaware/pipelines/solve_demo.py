"""The main job (``make run``, ``sysaware solve-demo``): the orchestrator as a service under contention.

The whole pool and the orchestrator are deployed on Ray Serve (the embedded twin), a closed-loop background load
hammers one model (by default the strongest coder, the one a quality-first, load-blind router sends everything
to: the "strong model is popular" case of ``configs/scenarios.yaml``'s ``skew-strong-hot``), and a few concurrent
clients drive MBPP test-split problems through ``POST /v1/solve`` over HTTP, once per policy: the trained policy
(``rl``) and the best load-blind baseline (``best_single``). Every solve brings its tests; none brings an SLO, so
each gets the default budget (1.5 x its plan's idle latency, budget.py).

Per policy: goodput (passed within the SLO; a refusal or an error counts as a miss) with a 95% percentile
bootstrap interval over solves, SLO attainment, pass rate, e2e p50 (engine s), refusals and errors. The background
load goes through the deployment handles, not HTTP: a few hundred streams through the proxy would cost the two
cores more than the engines do.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd

from sysaware.pipelines.eval_stats import bootstrap_mean
from sysaware.tasks.mbpp import MbppTask


@dataclass(frozen=True)
class DemoSettings:
    policies: tuple[str, ...] = ("rl", "best_single")
    num_tasks: int = 24
    clients: int = 4  # concurrent /v1/solve clients per policy
    background_clients: int = 300
    hot_model: str | None = None  # None: best_single's model (the best Concise programmer)
    warmup_s: float = 10.0  # wall s of background load before the first solve
    seed: int = 0


@dataclass
class SolveOutcome:
    policy: str
    task_id: int
    status: int
    passed: bool | None = None
    slo_met: bool | None = None
    e2e_s: float | None = None
    topology: str = ""
    admission: str = ""
    retries: int = 0
    models: str = ""
    error: str = ""

    @property
    def good(self) -> bool:
        return bool(self.status == 200 and self.passed and self.slo_met)


@dataclass
class Background:
    """Closed-loop clients on one model's deployment handle: each sends, awaits the whole answer, sends again."""

    handle: object
    model: str
    clients: int
    seed: int = 0
    sent: int = 0
    errors: int = 0
    _tasks: list = field(default_factory=list)

    def start(self) -> None:
        from sysaware.sim.workload import MbppRequestFactory

        factory = MbppRequestFactory.for_split("train", prefix="demo-bg")
        self._tasks = [asyncio.ensure_future(self._client(factory, random.Random(f"{self.seed}/{i}")))
                       for i in range(self.clients)]

    async def _client(self, factory, rng: random.Random) -> None:
        while True:
            self.sent += 1
            try:
                await self.handle.generate.remote(factory(self.model, rng))
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def solve_one(client: httpx.AsyncClient, url: str, task: MbppTask, policy: str, seed: int) -> SolveOutcome:
    body = {"problem": task.text, "tests": list(task.test_list), "policy": policy, "seed": seed}
    try:
        r = await client.post(f"{url}/solve", json=body)
    except httpx.HTTPError as e:
        return SolveOutcome(policy, task.task_id, 0, error=repr(e))
    if r.status_code != 200:
        err = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
        return SolveOutcome(policy, task.task_id, r.status_code, error=err.get("code") or r.text[:200])
    out = r.json()
    return SolveOutcome(
        policy, task.task_id, 200, out["passed"], out["slo_met"], out["e2e_s"], out["topology"], out["admission"],
        out["retries"], ";".join(s["model"] for s in out["trace"]),
    )


async def run_policy(url: str, tasks: Sequence[MbppTask], policy: str, clients: int, seed: int,
                     on_done: Callable[[SolveOutcome], None] | None = None) -> list[SolveOutcome]:
    """Every task through /v1/solve with ``policy``, ``clients`` at a time."""
    queue: asyncio.Queue = asyncio.Queue()
    for t in tasks:
        queue.put_nowait(t)
    outcomes: list[SolveOutcome] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:

        async def worker() -> None:
            while not queue.empty():
                task = queue.get_nowait()
                outcome = await solve_one(client, url, task, policy, seed)
                outcomes.append(outcome)
                if on_done:
                    on_done(outcome)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return outcomes


async def run_demo(url: str, handles: dict, tasks: Sequence[MbppTask], settings: DemoSettings, hot_model: str,
                   on_done: Callable[[SolveOutcome], None] | None = None) -> tuple[pd.DataFrame, dict]:
    background = Background(handles[hot_model], hot_model, settings.background_clients, settings.seed)
    background.start()
    started = time.monotonic()
    try:
        await asyncio.sleep(settings.warmup_s)
        outcomes: list[SolveOutcome] = []
        for policy in settings.policies:
            outcomes += await run_policy(url, tasks, policy, settings.clients, settings.seed, on_done)
    finally:
        await background.stop()
    cost = {"wall_s": time.monotonic() - started, "background_sent": background.sent,
            "background_errors": background.errors}
    return pd.DataFrame([o.__dict__ | {"good": o.good} for o in outcomes]), cost


def summarise(runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rows = []
    for policy, g in runs.groupby("policy", sort=False):
        est = bootstrap_mean(g["good"].astype(float).to_numpy(), seed=seed)
        ok = g[g["status"] == 200]
        rows.append({
            "policy": policy, "solves": len(g), "goodput": est.mean, "goodput_low": est.low, "goodput_high": est.high,
            "slo_attainment": float(ok["slo_met"].astype(bool).sum()) / len(g),
            "pass_rate": float(ok["passed"].astype(bool).sum()) / len(g),
            "e2e_p50_s": float(ok["e2e_s"].median()) if len(ok) else float("nan"),
            "refused": int(g["status"].isin([422, 503]).sum()),
            "errors": int((~g["status"].isin([200, 422, 503])).sum()),
            "retries": int(g["retries"].sum()),
        })
    return pd.DataFrame(rows)


def plot(runs: pd.DataFrame, summary: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(summary))
    err = [summary["goodput"] - summary["goodput_low"], summary["goodput_high"] - summary["goodput"]]
    ax1.bar(x, summary["goodput"], yerr=err, capsize=6, color=["tab:green", "tab:gray", "tab:blue"][: len(x)])
    ax1.set_xticks(x, summary["policy"])
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("goodput (passed within SLO)")
    ax1.set_title("Goodput, 95% bootstrap CI")
    for policy, g in runs.groupby("policy", sort=False):
        e2e = np.sort(g.loc[g["status"] == 200, "e2e_s"].dropna().to_numpy())
        if len(e2e):
            ax2.step(e2e, np.arange(1, len(e2e) + 1) / len(g), where="post", label=policy)
    ax2.set_xlabel("end-to-end latency, engine s")
    ax2.set_ylabel("fraction of solves")
    ax2.set_title("e2e latency CDF")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
