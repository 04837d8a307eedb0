"""An item-response model of MBPP: P(correct) = sigmoid(ability_model - difficulty_task).

What the twin uses when it has no recorded answer to replay (a model without RouterBench recordings, or a task
outside the 427 recorded ones), and what scales the strategy and collaboration effects for every model (they are
shifts of this logit).

Fit (1PL / Rasch, MAP): the correctness matrix is our sandbox's grade of every RouterBench answer (11 models x 427
tasks, ``regrade.csv``). Abilities and difficulties are fitted jointly with Gaussian priors: difficulty ~ N(0, 1.5^2)
(weak; it also pins the scale's origin, which the likelihood leaves free) and ability ~ N(0, 3^2) (near flat: 427
observations per model). A model without recordings gets the ability at which its mean P(correct) over the fitted
tasks equals its published MBPP pass@1. A task without recordings gets a difficulty from its reference solution's
length when that predicts held-out difficulties better than the mean difficulty does (10-fold cross-validated; see
the fit's diagnostics), else the mean difficulty.

    python -m sysaware.engines.twin.responder.irt      # refit and rewrite resources/irt_fit.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.optimize import brentq, minimize
from scipy.special import expit
from scipy.stats import spearmanr

from sysaware.resources import RESOURCES
from sysaware.tasks.mbpp import MbppTask, get_task

IRT_FIT_JSON = RESOURCES / "irt_fit.json"

PRIOR_MEAN_DIFFICULTY = 0.0  # logits; fixes the origin of the scale
PRIOR_SD_DIFFICULTY = 1.5  # logits; weak: a task every model solves stays finite (about -3), not -inf
PRIOR_SD_ABILITY = 3.0  # logits; near flat, 427 observations per model decide


@dataclass(frozen=True)
class RaschFit:
    """MAP estimates of a 1PL model on a models x tasks 0/1 matrix."""

    ability: np.ndarray  # per model (row), logits
    difficulty: np.ndarray  # per task (column), logits
    neg_log_posterior: float
    converged: bool
    iterations: int


def fit_rasch(
    correct: np.ndarray,
    prior_mean_difficulty: float = PRIOR_MEAN_DIFFICULTY,
    prior_sd_difficulty: float = PRIOR_SD_DIFFICULTY,
    prior_sd_ability: float = PRIOR_SD_ABILITY,
) -> RaschFit:
    """MAP 1PL fit; ``correct`` is models x tasks with 0/1 entries and NaN where a grade is missing."""
    y = np.asarray(correct, dtype=float)
    observed = ~np.isnan(y)
    y = np.where(observed, y, 0.0)
    n_models, n_tasks = y.shape

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        theta, b = params[:n_models], params[n_models:]
        logits = theta[:, None] - b[None, :]
        # log-likelihood of Bernoulli(sigmoid(logit)): y*logit - log(1 + e^logit), only where observed
        loglik = np.where(observed, y * logits - np.logaddexp(0.0, logits), 0.0).sum()
        residual = np.where(observed, y - expit(logits), 0.0)  # d loglik / d logit
        log_prior = -0.5 * (theta / prior_sd_ability) ** 2
        log_prior_b = -0.5 * ((b - prior_mean_difficulty) / prior_sd_difficulty) ** 2
        value = -(loglik + log_prior.sum() + log_prior_b.sum())
        grad_theta = -(residual.sum(axis=1) - theta / prior_sd_ability**2)
        grad_b = -(-residual.sum(axis=0) - (b - prior_mean_difficulty) / prior_sd_difficulty**2)
        return value, np.concatenate([grad_theta, grad_b])

    start = np.zeros(n_models + n_tasks)
    result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-8})
    return RaschFit(
        ability=result.x[:n_models],
        difficulty=result.x[n_models:],
        neg_log_posterior=float(result.fun),
        converged=bool(result.success),
        iterations=int(result.nit),
    )


def ability_for_pass_rate(difficulties: Sequence[float] | np.ndarray, pass_rate: float) -> float:
    """The ability whose mean P(correct) over ``difficulties`` equals ``pass_rate`` (a fraction in (0, 1))."""
    b = np.asarray(difficulties, dtype=float)
    rate = min(max(pass_rate, 1e-4), 1 - 1e-4)
    return float(brentq(lambda a: expit(a - b).mean() - rate, -30.0, 30.0, xtol=1e-10))


def reference_length_feature(task: MbppTask) -> float:
    """log of the reference solution's length in characters: longer reference code, harder task."""
    return math.log(max(len(task.reference_code.strip()), 1))


@dataclass(frozen=True)
class DifficultyPredictor:
    """Difficulty of a task without recordings: intercept + slope * log(reference chars), or the mean difficulty."""

    intercept: float
    slope: float
    used: bool  # False: the length did not beat the mean out of sample, so every such task gets ``mean``
    mean: float  # mean fitted difficulty, logits

    def predict(self, task: MbppTask) -> float:
        if not self.used:
            return self.mean
        return self.intercept + self.slope * reference_length_feature(task)


@dataclass(frozen=True)
class IrtModel:
    """The fitted item-response model, as the responder reads it."""

    difficulty: dict[int, float]  # task_id -> logits
    ability: dict[str, float]  # RouterBench model -> logits
    predictor: DifficultyPredictor
    diagnostics: dict = field(default_factory=dict, compare=False)

    def task_difficulty(self, task_id: int) -> float:
        if task_id in self.difficulty:
            return self.difficulty[task_id]
        try:
            return self.predictor.predict(get_task(task_id))
        except KeyError:
            return self.predictor.mean

    def ability_for_pass_at_1(self, pass_at_1_percent: float) -> float:
        """Ability of a model known only by its published MBPP pass@1 (percent)."""
        return ability_for_pass_rate(list(self.difficulty.values()), pass_at_1_percent / 100.0)

    def p_correct(self, ability: float, task_id: int) -> float:
        return float(expit(ability - self.task_difficulty(task_id)))

    def mean_p_correct(self, ability: float) -> float:
        """Mean P(correct) over the fitted tasks: the model's expected pass@1 on the recorded MBPP tasks."""
        return float(expit(ability - np.array(list(self.difficulty.values()))).mean())

    # --- persistence -------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "model": "1PL (Rasch) item response, MAP; P(correct) = sigmoid(ability - difficulty)",
            "data": "sandbox_correct of resources/routerbench_mbpp/regrade.csv (11 RouterBench models x 427 tasks)",
            "prior": {
                "difficulty_mean": PRIOR_MEAN_DIFFICULTY,
                "difficulty_sd": PRIOR_SD_DIFFICULTY,
                "ability_sd": PRIOR_SD_ABILITY,
            },
            "ability": {m: round(a, 6) for m, a in self.ability.items()},
            "difficulty": {str(t): round(b, 6) for t, b in sorted(self.difficulty.items())},
            "unrecorded_task_difficulty": {
                "feature": "log(reference solution chars)",
                "intercept": round(self.predictor.intercept, 6),
                "slope": round(self.predictor.slope, 6),
                "used": self.predictor.used,
                "mean_difficulty": round(self.predictor.mean, 6),
            },
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_json(cls, raw: dict) -> "IrtModel":
        p = raw["unrecorded_task_difficulty"]
        return cls(
            difficulty={int(t): float(b) for t, b in raw["difficulty"].items()},
            ability={m: float(a) for m, a in raw["ability"].items()},
            predictor=DifficultyPredictor(
                float(p["intercept"]), float(p["slope"]), bool(p["used"]), float(p["mean_difficulty"])
            ),
            diagnostics=raw.get("diagnostics", {}),
        )


@lru_cache(maxsize=4)
def load_irt_model(path: str | Path = IRT_FIT_JSON) -> IrtModel:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; fit it with: python -m sysaware.engines.twin.responder.irt")
    return IrtModel.from_json(json.loads(path.read_text()))


# ---------------------------------------------------------------------------------------------------------------
# Fitting from the regrade table
# ---------------------------------------------------------------------------------------------------------------


def correctness_matrix() -> tuple[list[str], list[int], np.ndarray]:
    """(models, task_ids, models x tasks 0/1 matrix with NaN for missing) from our sandbox grades."""
    from sysaware.tasks.regrade import load_regrade_table

    table = load_regrade_table()
    wide = table.pivot_table(index="model", columns="task_id", values="sandbox_correct", aggfunc="first")
    return [str(m) for m in wide.index], [int(t) for t in wide.columns], wide.to_numpy(dtype=float)


def _fit_length_predictor(task_ids: list[int], difficulty: np.ndarray, folds: int = 10) -> tuple[DifficultyPredictor, dict]:
    """Least squares of difficulty on log(reference chars), kept only if it beats the mean out of sample."""
    x = np.array([reference_length_feature(get_task(t)) for t in task_ids])
    y = np.asarray(difficulty)
    order = np.random.default_rng(0).permutation(len(y))  # fixed folds: the fit file must be reproducible
    sse_line, sse_mean = 0.0, 0.0
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        slope, intercept = np.polyfit(x[train], y[train], 1)
        sse_line += float(((intercept + slope * x[test] - y[test]) ** 2).sum())
        sse_mean += float(((y[train].mean() - y[test]) ** 2).sum())
    slope, intercept = np.polyfit(x, y, 1)
    used = sse_line < sse_mean
    info = {
        "pearson_r_difficulty_vs_log_ref_chars": round(float(np.corrcoef(x, y)[0, 1]), 4),
        "cv_mse_length_predictor": round(sse_line / len(y), 4),
        "cv_mse_mean_difficulty": round(sse_mean / len(y), 4),
        "used": used,
    }
    return DifficultyPredictor(float(intercept), float(slope), used, float(y.mean())), info


def fit_irt_model() -> IrtModel:
    """Fit abilities and difficulties on the regrade table, with diagnostics."""
    models, task_ids, y = correctness_matrix()
    fit = fit_rasch(y)
    p = expit(fit.ability[:, None] - fit.difficulty[None, :])
    observed = ~np.isnan(y)
    yo, po = y[observed], np.clip(p[observed], 1e-9, 1 - 1e-9)
    base = np.broadcast_to(np.nanmean(y, axis=1)[:, None], y.shape)[observed]  # per-model rate only
    fail_fraction = 1.0 - np.nanmean(y, axis=0)
    predictor, length_info = _fit_length_predictor(task_ids, fit.difficulty)
    diagnostics = {
        "n_models": len(models),
        "n_tasks": len(task_ids),
        "n_observed": int(observed.sum()),
        "converged": fit.converged,
        "iterations": fit.iterations,
        "neg_log_posterior": round(fit.neg_log_posterior, 3),
        "log_loss": round(float(-(yo * np.log(po) + (1 - yo) * np.log(1 - po)).mean()), 4),
        "log_loss_model_rate_only": round(
            float(-(yo * np.log(base) + (1 - yo) * np.log(1 - base)).mean()), 4
        ),
        "brier": round(float(((po - yo) ** 2).mean()), 4),
        "spearman_difficulty_vs_fraction_failing": round(float(spearmanr(fit.difficulty, fail_fraction)[0]), 4),
        "difficulty_mean": round(float(fit.difficulty.mean()), 4),
        "difficulty_sd": round(float(fit.difficulty.std()), 4),
        "tasks_all_correct": int((np.nanmin(y, axis=0) == 1).sum()),
        "tasks_all_wrong": int((np.nanmax(y, axis=0) == 0).sum()),
        "per_model_pass_rate": {
            m: {"observed": round(float(np.nanmean(y[i])), 4), "fitted_mean_p": round(float(p[i].mean()), 4)}
            for i, m in enumerate(models)
        },
        "unrecorded_task_difficulty": length_info,
    }
    return IrtModel(
        difficulty={t: float(b) for t, b in zip(task_ids, fit.difficulty)},
        ability={m: float(a) for m, a in zip(models, fit.ability)},
        predictor=predictor,
        diagnostics=diagnostics,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Refit the twin's MBPP item-response model.")
    parser.add_argument("--out", type=Path, default=IRT_FIT_JSON)
    args = parser.parse_args(argv)
    model = fit_irt_model()
    args.out.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    d = model.diagnostics
    print(f"wrote {args.out}: {d['n_models']} models x {d['n_tasks']} tasks, converged={d['converged']}")
    print(f"log loss {d['log_loss']} (per-model rate only: {d['log_loss_model_rate_only']}), brier {d['brier']}")
    print(f"spearman(difficulty, fraction of models failing) = {d['spearman_difficulty_vs_fraction_failing']}")
    print(f"unrecorded tasks: {d['unrecorded_task_difficulty']}")
    for m, a in sorted(model.ability.items(), key=lambda kv: kv[1]):
        r = d["per_model_pass_rate"][m]
        print(f"  {m:36s} ability {a:+.3f}  observed {r['observed']:.3f}  fitted {r['fitted_mean_p']:.3f}")


if __name__ == "__main__":
    main()
