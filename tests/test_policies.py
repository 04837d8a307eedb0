"""Planners and executors: registry, bookkeeping, each baseline's decision rule, the static tables behind them,
the queueing latency formula, and the oracle's fork forecaster against what really happens."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest

from sysaware.data.telemetry import ModelLoad, SystemSnapshot
from sysaware.engines.types import ChatMessage, GenerationRequest
from sysaware.orchestration.context import Action, PolicyResources, StepContext, all_actions
from sysaware.orchestration.executors import EXECUTORS, make_executor
from sysaware.estimators.latency import QueueingLatencyEstimator
from sysaware.orchestration.latency import IdleLatency, IdleProfile
from sysaware.orchestration.messages import build_messages
from sysaware.orchestration.planners import PLANNERS, FixedPlanner, RandomPlanner, make_planner
from sysaware.orchestration.sim_driver import SimSettings, SimulatedDriver
from sysaware.orchestration.tables import LengthTable, QualityTable
from sysaware.orchestration.topology import Slot, TopologyKind, default_topology
from sysaware.tasks.mbpp import get_task
from sysaware.tasks.prompts import ROLES, Strategy
from profile_factories import TOKENS, hand_made_profile
from twin_factories import create_stats, default_pool as pool, default_backend as twin_backend, default_responder as twin_responder


def models() -> list[str]:
    return [m.name for m in pool().models]


@lru_cache(maxsize=1)
def resources() -> PolicyResources:
    """A hand-made profile: qualities of profile_factories, TOKENS per strategy, 20 ms per token, 0.1 s to the first."""
    return PolicyResources.from_profile(pool(), hand_made_profile(pool()))


def load(model: str, waiting: int = 0, running: int = 0, kv: float = 0.0, tpot_ms: float | None = None, rate: float | None = None) -> ModelLoad:
    return ModelLoad(model, 1, waiting, running, kv, 0.0, tpot_ms, rate)


def snapshot(*loads: ModelLoad, replicas: tuple = ()) -> SystemSnapshot:
    """Every model idle but those given (``replicas``: per-replica stats, for the learned estimators)."""
    given = {x.model: x for x in loads}
    return SystemSnapshot(0.0, {m: given.get(m, load(m)) for m in models()}, replicas)


def context(role_id: str = "programmer", budget_s: float = 100.0, steps_left: int = 1, snap: SystemSnapshot | None = None,
            forecaster=None, run_id: str = "run", slot_id: str = "s") -> StepContext:
    task = get_task(11)
    slot = Slot(slot_id, role_id)
    return StepContext(
        run_id=run_id, task=task, topology="io", slot=slot, step=0, history=(), now_s=0.0, slo_s=budget_s,
        remaining_budget_s=budget_s, steps_left=steps_left, snapshot=snap or snapshot(), candidates=all_actions(models()),
        prompt_tokens=100, messages_by_strategy={s: build_messages(task, slot, strategy=s) for s in Strategy},
        seed=1, max_tokens=2048, forecaster=forecaster,
    )


def idle_latency_s(strategy: Strategy) -> float:
    return 0.1 + (TOKENS[strategy] - 1) * 0.02  # TTFT + (L_out - 1) x TPOT


# ---------------------------------------------------------------------------------------------------------------
# Registry and bookkeeping
# ---------------------------------------------------------------------------------------------------------------


def test_every_baseline_is_registered_and_answers_with_a_candidate():
    # `rl` joins the registry when sysaware.policy is imported (by another test in this worker, or not): it needs a
    # checkpoint and is tested in test_policy.py.
    assert set(EXECUTORS) - {"rl"} == {"random", "fixed", "best_single", "static_qmp", "least_queue", "greedy", "oracle"}
    ctx = context()
    for name in EXECUTORS:
        if name in ("oracle", "rl"):
            continue
        executor = make_executor(name, resources())
        assert executor.act(ctx) in ctx.candidates and executor.decisions == 1
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("clairvoyant", resources())


def test_the_base_class_counts_the_choices():
    # A choice outside the candidates is the session's to reject, as any decider's (test_stepping.py).
    fixed = make_executor("fixed", resources(), model="yi-34b-chat", strategy="deepthink")
    for _ in range(3):
        fixed.act(context())
    assert fixed.chosen == {Action("yi-34b-chat", Strategy.DEEPTHINK): 3}


def test_random_is_seeded_per_run_and_slot():
    a, b = make_executor("random", None, seed=1), make_executor("random", None, seed=1)
    contexts = [context(run_id=f"r{i}", slot_id=f"s{j}") for i in range(5) for j in range(4)]
    first = [a.act(c) for c in contexts]
    assert [b.act(c) for c in reversed(contexts)] == list(reversed(first))  # the order runs interleave is irrelevant
    assert len(set(first)) > 5
    assert [make_executor("random", None, seed=2).act(c) for c in contexts] != first


# ---------------------------------------------------------------------------------------------------------------
# Load-blind baselines
# ---------------------------------------------------------------------------------------------------------------


def test_fixed_defaults_to_the_cheapest_model_and_best_single_to_the_best_coder():
    r = resources()
    assert make_executor("fixed", r).act(context()) == Action("mistral-7b-instruct", Strategy.CONCISE)  # $0.20/Mtok
    best = max(models(), key=lambda m: r.quality.q(m, Strategy.CONCISE, "programmer"))
    assert best == "codellama-34b-instruct"  # the highest code quality in the profile
    for role in ROLES:
        assert make_executor("best_single", r).act(context(role)) == Action(best, Strategy.CONCISE)


def test_static_quality_minus_price_never_looks_at_load():
    busy = snapshot(load("codellama-34b-instruct", waiting=200, running=256, kv=1.0, tpot_ms=500, rate=1.0))
    executor = make_executor("static_qmp", resources())
    for role in ROLES:
        assert executor.act(context(role, snap=busy)) == executor.act(context(role))
    # alpha = 0: pure quality; the support roles' quality is flat, so price picks the cheapest, shortest answer
    pure = make_executor("static_qmp", resources(), alpha=0.0)
    assert pure.act(context("programmer")) == Action("codellama-34b-instruct", Strategy.DEEPTHINK)
    assert executor.act(context("algorithm_designer")) == Action("mistral-7b-instruct", Strategy.FLASH)
    # a large alpha makes price dominate for code too
    assert make_executor("static_qmp", resources(), alpha=100.0).act(context("programmer")).model == "mistral-7b-instruct"


# ---------------------------------------------------------------------------------------------------------------
# Load-aware baselines
# ---------------------------------------------------------------------------------------------------------------


def test_least_queue_picks_the_emptiest_model_then_kv_headroom_then_pool_order():
    executor = make_executor("least_queue", resources())
    assert executor.act(context()) == Action(models()[0], Strategy.CONCISE)  # all idle: pool order
    loads = {m: load(m, running=20) for m in models()}
    loads["yi-34b-chat"] = load("yi-34b-chat", running=3)
    assert executor.act(context(snap=snapshot(*loads.values()))).model == "yi-34b-chat"
    loads = {m: load(m, running=20, kv=0.3) for m in models()}
    loads["mixtral-8x7b-instruct"] = load("mixtral-8x7b-instruct", running=20, kv=0.1)
    assert executor.act(context(snap=snapshot(*loads.values()))).model == "mixtral-8x7b-instruct"  # equal queues, least KV


def test_greedy_takes_the_best_quality_that_fits_the_per_step_share():
    executor = make_executor("greedy", resources(), estimator="queueing")  # the formula: latencies by hand below
    assert executor.describe() == "greedy(queueing)" == make_executor("greedy@queueing", resources()).describe()
    # ample budget: the best quality of all (DeepThink on the best coder; it fits in 100 s)
    assert executor.act(context(budget_s=100.0)) == Action("codellama-34b-instruct", Strategy.DEEPTHINK)
    # 9 s over 3 steps = 3 s per step: DeepThink takes 8.08 s, Concise 2.08 s
    assert executor.act(context(budget_s=9.0, steps_left=3)) == Action("codellama-34b-instruct", Strategy.CONCISE)
    # 1.5 s: only Flash (1.08 s) fits
    assert executor.act(context(budget_s=1.5)) == Action("codellama-34b-instruct", Strategy.FLASH)
    # nothing fits: the fastest (all models are equally fast here: the first Flash in candidate order)
    assert executor.act(context(budget_s=0.1)).strategy is Strategy.FLASH
    # the best coder is crawling (500 ms per token): the next best that fits the share
    slow = snapshot(load("codellama-34b-instruct", running=50, tpot_ms=500.0))
    choice = executor.act(context(budget_s=9.0, steps_left=3, snap=slow))
    assert choice.model != "codellama-34b-instruct"
    q = resources().quality
    assert choice == max(
        (a for a in all_actions(models()) if a.model != "codellama-34b-instruct" and idle_latency_s(a.strategy) <= 3.0),
        key=lambda a: q.q(a.model, a.strategy, "programmer"),
    )


def test_greedy_on_the_learned_estimators_reads_the_replica_state():
    """The default estimator (the trained F_lat/F_len, which know the default pool) prices a busy replica slower,
    so a budget the idle best coder fits makes greedy leave it when its replica is saturated."""
    executor = make_executor("greedy", resources())
    assert executor.describe() == "greedy(learned)"
    idle_choice = executor.act(context(budget_s=9.0, steps_left=3))
    busy_stats = create_stats(f"{idle_choice.model}#0", idle_choice.model, num_requests_waiting=300,
                              num_requests_running=256, kv_cache_usage_perc=1.0, ema_ttft_ms=20_000.0)
    busy = snapshot(load(idle_choice.model, waiting=300, running=256, kv=1.0), replicas=(busy_stats,))
    assert executor.act(context(budget_s=9.0, steps_left=3, snap=busy)).model != idle_choice.model
    with pytest.raises(ValueError, match="unknown latency estimator"):
        make_executor("greedy", resources(), estimator="crystal-ball").act(context())


class TableForecaster:
    """Latency per (model, strategy) from a table; records the horizons it was asked for."""

    def __init__(self, latency: dict[tuple[str, str], float]) -> None:
        self.latency = latency
        self.horizons: list[float | None] = []

    def forecast(self, requests, horizon_s=None):
        self.horizons.append(horizon_s)
        out = []
        for r in requests:
            strategy = r.request_id.rsplit("/", 1)[1]
            t = self.latency[(r.model, strategy)]
            out.append(math.inf if horizon_s is not None and t > horizon_s else t)
        return out


def test_the_oracle_uses_true_latencies_and_needs_a_forecaster():
    oracle = make_executor("oracle", resources())
    with pytest.raises(RuntimeError, match="forecaster"):
        oracle.act(context())
    truth = {(m, s.value): 1.0 for m in models() for s in Strategy}
    truth[("codellama-34b-instruct", "deepthink")] = 50.0
    truth[("codellama-34b-instruct", "concise")] = 50.0
    f = TableForecaster(truth)
    # 10 s share: codellama is slow except Flash, which beats every other model's quality except mixtral's
    choice = oracle.act(context(budget_s=10.0, forecaster=f))
    q = resources().quality
    fits = [a for a in all_actions(models()) if truth[(a.model, a.strategy.value)] <= 10.0]
    assert choice == max(fits, key=lambda a: q.q(a.model, a.strategy, "programmer")) and f.horizons == [10.0]
    # nothing within 0.5 s: it asks again without a horizon and takes the fastest
    truth[("wizardlm-13b", "flash")] = 0.7
    f = TableForecaster(truth)
    assert oracle.act(context(budget_s=0.5, forecaster=f)) == Action("wizardlm-13b", Strategy.FLASH)
    assert f.horizons == [0.5, None]


# ---------------------------------------------------------------------------------------------------------------
# Tables and the latency formula
# ---------------------------------------------------------------------------------------------------------------


def test_the_tables_are_views_of_the_profile_in_pool_order():
    profile = hand_made_profile(pool())
    r = resources()
    assert r.quality.models == models() == profile.model_names
    for m in models():
        for s in Strategy:
            for role in ROLES:
                assert r.quality.q(m, s, role) == profile.quality(m, s, role)
                assert r.lengths.tokens(m, s, role) == profile.output_tokens(m, s, role)
        assert r.idle[m] == IdleLatency(0.1, 0.0, 0.02)
    # ties go to the first model in pool order
    flat = QualityTable.from_profile(hand_made_profile(pool(), quality=lambda m, s, role: 0.5))
    assert flat.best_model() == models()[0]
    assert LengthTable.from_profile(profile).tokens(models()[1], "deepthink", "reviewer") == TOKENS[Strategy.DEEPTHINK]
    assert IdleProfile.from_profile(profile)[models()[2]].tpot_s == 0.02


def test_queueing_estimate():
    est = QueueingLatencyEstimator(IdleProfile({"m": IdleLatency(0.05, 0.001, 0.02)}).models, lambda *_: 100.0)
    # idle: TTFT 0.05 + 0.001 x 100 prompt tokens, then 99 more tokens at 20 ms
    assert est.estimate_s("m", load("m"), 100, 100) == pytest.approx(0.15 + 99 * 0.02)
    # busy: the observed TPOT (30 ms) and EMA TTFT (0.4 s) take over, and 10 waiting at 5 completions/s add 2 s
    busy = ModelLoad("m", 1, 10, 256, 0.9, 400.0, 30.0, 5.0)
    assert est.estimate_s("m", busy, 100, 100) == pytest.approx(2.0 + 0.4 + 99 * 0.03)
    # a busy model never looks faster than idle
    fast = ModelLoad("m", 1, 0, 5, 0.1, 1.0, 5.0, 5.0)
    assert est.estimate_s("m", fast, 100, 100) == pytest.approx(0.15 + 99 * 0.02)


# ---------------------------------------------------------------------------------------------------------------
# Planners
# ---------------------------------------------------------------------------------------------------------------


def test_planners():
    assert set(PLANNERS) - {"rl"} == {"fixed", "random"}  # rl: registered by sysaware.policy when imported
    task = get_task(11)
    plan = make_planner("fixed", topology="debate").plan(task, None, 12.0)
    assert plan.topology == default_topology(TopologyKind.DEBATE) and plan.slo_s == 12.0
    planner = RandomPlanner(seed=3)
    plans = [planner.plan(get_task(t), None, None).topology for t in range(11, 61)]
    assert plans == [RandomPlanner(seed=3).plan(get_task(t), None, None).topology for t in range(11, 61)]
    assert len({p.kind for p in plans}) == len(TopologyKind) and planner.plans == 50
    assert [RandomPlanner(seed=4).plan(get_task(t), None, None).topology for t in range(11, 61)] != plans
    assert isinstance(make_planner("fixed"), FixedPlanner)
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("oracle")


# ---------------------------------------------------------------------------------------------------------------
# The oracle's forecaster against reality
# ---------------------------------------------------------------------------------------------------------------



def probe(model: str, strategy: Strategy) -> GenerationRequest:
    task = get_task(23)
    messages: tuple[ChatMessage, ...] = build_messages(task, Slot("p", "programmer"), strategy=strategy)
    return GenerationRequest(f"probe-{strategy.value}", model, messages, max_tokens=2048, seed=5)


def loaded_driver() -> SimulatedDriver:
    driver = SimulatedDriver(pool(), twin_backend(), SimSettings(background_per_model=6, seed=2))
    driver.cluster.run(until=4.0)
    return driver


def real_latency(driver: SimulatedDriver, request: GenerationRequest) -> float:
    done = []
    driver.cluster.submit(request, on_complete=done.append)
    while not done:
        driver.cluster.run(until=driver.cluster.now + 1.0)
    return done[0].e2e_s


def test_the_fork_forecast_is_what_then_happens_and_leaves_the_real_run_alone():
    model = "wizardlm-13b"
    requests = [probe(model, s) for s in Strategy]
    driver = loaded_driver()
    forecast = driver.forecaster.forecast(requests)
    assert driver.forecaster.forks == 1  # one fork per model, whatever the number of strategies
    lengths = [twin_responder().respond(r).output_tokens for r in requests]
    longest = max(range(3), key=lengths.__getitem__)
    # the longest candidate is the one the fork ran: exactly what happens when it is really sent now
    assert real_latency(driver, requests[longest]) == pytest.approx(forecast[longest], rel=1e-12)
    # the shorter ones are read off its token times: right up to the few tokens of prompt they differ by
    for i in range(3):
        assert real_latency(loaded_driver(), requests[i]) == pytest.approx(forecast[i], rel=0.02)
    # forking did not disturb the real run: the same request without a forecast takes the same time
    assert real_latency(loaded_driver(), requests[longest]) == pytest.approx(forecast[longest], rel=1e-12)
    # a horizon shorter than the call: not finished within it
    short = driver.forecaster.forecast(requests[longest : longest + 1], horizon_s=0.01)
    assert short == [math.inf]


def test_forking_one_model_forecasts_exactly_what_forking_the_whole_cluster_does():
    """The oracle forks only the probed model (its replicas, router, load and events): nothing of another model can
    change its answer, so the latency is the whole-cluster fork's to the last bit, for every model and strategy."""
    driver = loaded_driver()
    for model in driver.models:
        for strategy in Strategy:
            request = probe(model, strategy)
            whole = driver.forecaster.fork(keep_background_of=model)
            done: list = []
            whole.submit(request, on_complete=done.append)
            while not done:
                whole.run(until=whole.now + 1.0)
            only = driver.forecaster.fork_model(model)
            assert [r.model for r in only.replicas] == [model] * len(driver.cluster.by_model[model])
            mine: list = []
            only.submit(request, on_complete=mine.append)
            while not mine:
                only.run(until=only.now + 1.0)
            assert mine[0].e2e_s == done[0].e2e_s and mine[0].token_times_s == done[0].token_times_s
