"""Ray Tune sweep of the estimators' hyper-parameters, with ASHA stopping the weak trials early.

For each estimator (F_lat, F_len) a random search over learning rate, width, depth, dropout, embedding size and
batch size; every trial trains with ``train_latency`` / ``train_length`` and reports its held-out error after every
epoch, which lets ASHA stop a trial that trails the others at a rung. The splits are the report's: the report's test
prompts are never seen here; the rest is split again by prompt into fit (trials train on it) and val (trials report
on it). The best trial's config is retrained on fit + val for the number of epochs that gave its lowest error, and
saved as an artifact directory that ``SystemEstimator.load`` reads.

Held-out error, the metric ASHA compares (lower is better):
  latency: val_mape = (MAPE of TTFT + MAPE of TPOT) / 2, fractions, the issue's headline figures
  length:  val_mae_tokens, mean absolute error of the output length, tokens

Layout of ``run_dir``::

    tune_results.csv           one row per trial: estimator, config, best held-out error, epochs run
    latency-v<spec>/ length-v<spec>/   the retrained best artifacts
    ray_tune/<estimator>/      Ray Tune's own experiment state (trial logs, result.json)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.estimators.data import fingerprint, split_by_prompt
from sysaware.estimators.embeddings import PromptEmbedder, text_key
from sysaware.estimators.features import LENGTH_EMBEDDED_TEXT, embedded_text, spec_version
from sysaware.estimators.train import TrainConfig, TrainedEstimator, train_latency, train_length

ESTIMATORS = ("latency", "length")
METRIC = {"latency": "val_mape", "length": "val_mae_tokens"}
TUNED = ("lr", "width", "depth", "dropout", "emb_dim", "batch_size")  # the TrainConfig fields a trial draws
RESULTS_CSV = "tune_results.csv"


@dataclass(frozen=True)
class TuneSettings:
    estimators: tuple[str, ...] = ESTIMATORS
    num_samples: int = 16  # trials per estimator
    epochs: int = 30  # ASHA's max_t: epochs of a trial that is never stopped
    grace_period: int = 3  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = 3  # ASHA keeps the best 1/reduction_factor of the trials at each rung
    max_concurrent_trials: int = 2  # one per core on the 2-core machines
    cpus_per_trial: float = 1.0
    val_frac: float = 0.1  # fraction of the non-test prompts the trials report on
    seed: int = 0  # search sampling, splits and every trial's torch seed
    base: TrainConfig = field(default_factory=TrainConfig)  # the fields a trial does not draw (quantiles, ...)

    def __post_init__(self) -> None:
        if unknown := [e for e in self.estimators if e not in ESTIMATORS]:
            raise ValueError(f"unknown estimators {unknown}; known: {list(ESTIMATORS)}")
        if self.num_samples < 1 or self.epochs < 1 or self.max_concurrent_trials < 1:
            raise ValueError("num_samples, epochs and max_concurrent_trials must be >= 1")


def search_space() -> dict:
    """Ray Tune's sampling space over the tuned TrainConfig fields (the issue's six)."""
    from ray import tune

    return {
        "lr": tune.loguniform(1e-4, 1e-2),
        "width": tune.choice([32, 64, 128, 256]),
        "depth": tune.choice([1, 2, 3]),
        "dropout": tune.uniform(0.0, 0.3),
        "emb_dim": tune.choice([4, 8, 16]),
        "batch_size": tune.choice([64, 128, 256, 512]),
    }


@dataclass
class TuneOutcome:
    estimator: str
    metric: str
    best_error: float  # the best trial's lowest held-out error (fraction for latency, tokens for length)
    best_config: dict  # the tuned fields of the best trial
    best_epochs: int  # epochs at which the best trial reached best_error; the retrain runs this many
    trials: pd.DataFrame  # one row per trial (this estimator's part of tune_results.csv)
    artifact_dir: Path
    scheduler: str  # the class name of the trial scheduler Tune ran with


class PrecomputedEmbeddings:
    """Prompt embeddings computed once in the driver and shipped to the trials through Ray's object store, so no
    trial loads MiniLM or embeds a prompt again. Same ``embed`` as PromptEmbedder, for the known texts only."""

    def __init__(self, texts: list[str], vectors: np.ndarray):
        self._rows = {text_key(t): i for i, t in enumerate(texts)}
        self._vectors = vectors

    @classmethod
    def of(cls, texts: list[str], embedder: PromptEmbedder) -> "PrecomputedEmbeddings":
        unique = list(dict.fromkeys(texts))
        return cls(unique, embedder.embed(unique))

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._vectors[[self._rows[text_key(t)] for t in texts]]


def error_of(estimator: str, metrics: dict) -> float:
    if estimator == "latency":
        return (metrics["val_mape_ttft"] + metrics["val_mape_tpot"]) / 2
    return metrics["val_mae_tokens"]


def train_one(estimator: str, train_df: pd.DataFrame, val_df: pd.DataFrame, cfg: TrainConfig,
              on_epoch: Callable[[int, dict], None] | None, embedder) -> TrainedEstimator:
    if estimator == "latency":
        return train_latency(train_df, val_df, cfg, on_epoch=on_epoch)
    return train_length(train_df, val_df, cfg, on_epoch=on_epoch, embedder=embedder)


def _trial(config: dict, estimator: str, fit_df: pd.DataFrame, val_df: pd.DataFrame, base: TrainConfig,
           embedder) -> None:
    """One Tune trial: train with the drawn config, report the held-out error after every epoch."""
    import torch
    from ray import tune

    torch.set_num_threads(1)  # trials share the cores; one thread each avoids oversubscription
    cfg = replace(base, **{k: config[k] for k in TUNED if k in config})

    def report(epoch: int, metrics: dict) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        tune.report({**numbers, "epoch": epoch + 1, METRIC[estimator]: float(error_of(estimator, metrics))})

    train_one(estimator, fit_df, val_df, cfg, report, embedder)


def _scheduler(estimator: str, settings: TuneSettings):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        metric=METRIC[estimator],
        mode="min",
        max_t=settings.epochs,  # time_attr is training_iteration: one tune.report per epoch
        grace_period=min(settings.grace_period, settings.epochs),
        reduction_factor=settings.reduction_factor,
    )


def _trials_table(estimator: str, result_grid, base: TrainConfig) -> pd.DataFrame:
    """One row per trial: its config (drawn, or the base's for a field the space leaves out), its best held-out
    error, the epoch it was reached at, epochs run."""
    metric = METRIC[estimator]
    rows = []
    for result in result_grid:
        history = result.metrics_dataframe
        has_metric = history is not None and metric in history and history[metric].notna().any()
        best = history.loc[history[metric].idxmin()] if has_metric else None
        rows.append({
            "estimator": estimator,
            "trial_id": (result.metrics or {}).get("trial_id", Path(result.path).name),
            **{k: result.config.get(k, getattr(base, k)) for k in TUNED},
            "metric": metric,
            "best_error": float(best[metric]) if best is not None else float("nan"),
            "best_epoch": int(best["epoch"]) if best is not None else 0,
            "epochs_run": int(len(history)) if history is not None else 0,
            "error": None if result.error is None else str(result.error).splitlines()[0],
        })
    return pd.DataFrame(rows).sort_values("best_error", kind="stable").reset_index(drop=True)


def tune_estimator(estimator: str, fit_df: pd.DataFrame, val_df: pd.DataFrame, run_dir: str | Path,
                   settings: TuneSettings, embedder: PromptEmbedder | None = None,
                   param_space: dict | None = None) -> TuneOutcome:
    """Sweep one estimator on (fit, val), retrain the best config on fit + val, save it under ``run_dir``.

    ``param_space`` replaces the default search space (keys: any of TUNED; values: Tune domains or constants)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if param_space is not None and (unknown := sorted(set(param_space) - set(TUNED))):
        raise ValueError(f"param_space keys {unknown} are not tuned fields; known: {list(TUNED)}")
    run_dir = Path(run_dir).resolve()
    embedder = embedder or (PromptEmbedder() if estimator == "length" else None)
    trial_embedder = None
    if estimator == "length":
        prompts = pd.concat([fit_df, val_df])["prompt_text"].astype(str)
        trial_embedder = PrecomputedEmbeddings.of(
            [embedded_text(t, LENGTH_EMBEDDED_TEXT) for t in prompts], embedder)
    base = replace(settings.base, epochs=settings.epochs, seed=settings.seed)
    trainable = tune.with_parameters(_trial, estimator=estimator, fit_df=fit_df, val_df=val_df, base=base,
                                     embedder=trial_embedder)
    scheduler = _scheduler(estimator, settings)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": settings.cpus_per_trial}),
        param_space=param_space if param_space is not None else search_space(),
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            # random search, seeded; it caps the concurrency itself (TuneConfig's cap needs a Searcher)
            search_alg=BasicVariantGenerator(random_state=settings.seed, max_concurrent=settings.max_concurrent_trials),
            num_samples=settings.num_samples,
        ),
        run_config=tune.RunConfig(name=estimator, storage_path=str(run_dir / "ray_tune"), verbose=0),
    )
    grid = tuner.fit()
    trials = _trials_table(estimator, grid, base)
    finished = trials[trials["best_error"].notna()]
    if finished.empty:
        raise RuntimeError(f"{estimator}: no trial reported a held-out error; errors: {trials['error'].tolist()}")
    best = finished.iloc[0]
    best_config = {k: _plain(best[k]) for k in TUNED}

    # Retrain the winner on fit + val (every non-test prompt) for the epochs that gave its best error. val is now
    # inside the training data, so the artifact's own val metrics are in-sample; the sweep's held-out error is
    # kept beside them under "tune".
    cfg = replace(settings.base, **best_config, epochs=int(best["best_epoch"]), seed=settings.seed)
    train_df = pd.concat([fit_df, val_df], ignore_index=True)
    final = train_one(estimator, train_df, val_df, cfg, None, embedder)
    final.data = fingerprint(train_df)
    final.metrics["tune"] = {
        "metric": METRIC[estimator], "best_error": float(best["best_error"]), "best_trial": str(best["trial_id"]),
        "trials": int(len(trials)), "scheduler": type(scheduler).__name__, "settings": _settings_json(settings),
    }
    artifact = final.save(run_dir / f"{estimator}-v{spec_version(estimator)}")
    return TuneOutcome(estimator, METRIC[estimator], float(best["best_error"]), best_config, int(best["best_epoch"]),
                       trials, artifact, type(scheduler).__name__)


def tune_estimators(df: pd.DataFrame, run_dir: str | Path, settings: TuneSettings | None = None,
                    embedding_cache: str | Path | None = None,
                    param_space: dict | None = None) -> dict[str, TuneOutcome]:
    """Sweep every estimator of ``settings`` on the Phase 2 rows ``df`` (training_rows of load_phase2); writes
    ``run_dir/tune_results.csv`` (all trials) and one artifact directory per estimator."""
    from sysaware.estimators.report import SPLIT_SEED, TEST_FRAC

    settings = settings or TuneSettings()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train, _report_test = split_by_prompt(df, TEST_FRAC, SPLIT_SEED)  # the report's test prompts stay unseen
    fit, val = split_by_prompt(train, settings.val_frac, settings.seed + 1)
    embedder = PromptEmbedder(embedding_cache) if "length" in settings.estimators else None
    outcomes = {}
    for estimator in settings.estimators:
        outcomes[estimator] = tune_estimator(estimator, fit, val, run_dir, settings, embedder, param_space)
        pd.concat([o.trials for o in outcomes.values()], ignore_index=True).to_csv(run_dir / RESULTS_CSV, index=False)
    return outcomes


def parse_estimators(choice: str) -> tuple[str, ...]:
    """The command line's --estimator: latency | length | both."""
    if choice == "both":
        return ESTIMATORS
    if choice not in ESTIMATORS:
        raise ValueError(f"--estimator must be latency, length or both, got {choice!r}")
    return (choice,)


def summary_lines(outcomes: dict[str, TuneOutcome]) -> list[str]:
    """One line per estimator: best held-out error, its config, how many trials ASHA stopped early, the artifact."""
    lines = []
    for o in outcomes.values():
        stopped = int((o.trials["epochs_run"] < o.trials["epochs_run"].max()).sum())
        config = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.best_config.items())
        lines.append(f"{o.estimator}: best {o.metric} {o.best_error:.4g} at epoch {o.best_epochs} ({config}); "
                     f"{len(o.trials)} trials, {stopped} stopped early by {o.scheduler}; artifact {o.artifact_dir}")
    return lines


def _plain(value):
    """numpy scalars from the results table back to Python numbers (for TrainConfig and JSON)."""
    return value.item() if hasattr(value, "item") else value


def _settings_json(settings: TuneSettings) -> dict:
    d = asdict(settings)
    d["base"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d["base"].items()}
    d["estimators"] = list(settings.estimators)
    return d
