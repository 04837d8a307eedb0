"""F_len on MiniLM (the shipped default) against F_len on the static embedding (estimators/static_embedding.py), the
shipped recipe otherwise (``train_estimators``: the report's prompt split, TEST_FRAC 0.2 seed 0; early stopping on a
10% prompt split of the train half, seed 1; TrainConfig defaults), on two held-out sets:

  prompt split: the report's 20% of prompts (tasks seen in training, new prompts of them). MiniLM: the shipped
                artifact (its training data's fingerprint is checked against this run's train half); static: trained
                here, and saved with ``--save-static DIR`` (what ships as resources/estimators/length-v3-static);
  task split:   20% of MBPP train tasks held out whole (seed 0), both embeddings trained here on the rest (the
                same recipe: fit / val prompt split seed 1, TrainConfig defaults).

Errors are per probe (mean head against the recorded output tokens): MAE (tokens), MAPE, P90 coverage. The
difference static - MiniLM comes with a paired bootstrap 95% CI resampling tasks (a task's prompts and probes are
correlated: same statement, the same answers per model and strategy at every load level), 2,000 resamples.

Each training is its own process so they can run side by side (one torch thread each, as the recipe):

    python benchmarks/length_embedding_compare.py --data RUN --out DIR --fit prompt:static [--save-static D]
    python benchmarks/length_embedding_compare.py --data RUN --out DIR --fit task:minilm
    python benchmarks/length_embedding_compare.py --data RUN --out DIR --fit task:static
    python benchmarks/length_embedding_compare.py --data RUN --out DIR            # the table, from DIR's predictions

RUN: ``sysaware collect-metrics --prompts <collect-prompts run>/intermediate_prompts.csv`` (levels 1, 10, 50, all
2,519 prompts: the data of the shipped length-v3, see resources/estimators/SOURCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sysaware.data import dataset_store as store
from sysaware.estimators.artifacts import default_dir
from sysaware.estimators.data import fingerprint, split_by_prompt
from sysaware.estimators.embeddings import PromptEmbedder, length_embedder
from sysaware.estimators.report import SPLIT_SEED, TEST_FRAC
from sysaware.estimators.train import TrainConfig, TrainedEstimator, load_training_data, train_length

SPLITS = ("prompt", "task")
EMBEDDINGS = ("minilm", "static")
BOOTSTRAP = 2000


def with_tasks(df: pd.DataFrame, run: Path) -> pd.DataFrame:
    prompts = Path((store.read_manifest(run) or {})["prompts"]["path"])
    tasks = pd.read_csv(prompts, usecols=["prompt_id", "task_id"], dtype={"prompt_id": str})
    out = df.copy()
    task_of = tasks.drop_duplicates("prompt_id").set_index("prompt_id")["task_id"]
    out["task_id"] = out["prompt_id"].astype(str).map(task_of)
    return out


def split(df: pd.DataFrame, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if name == "prompt":
        return split_by_prompt(df, TEST_FRAC, SPLIT_SEED)
    tasks = np.array(sorted(df["task_id"].unique()))
    held = set(np.random.default_rng(SPLIT_SEED).choice(tasks, size=int(round(len(tasks) * TEST_FRAC)),
                                                        replace=False).tolist())
    is_test = df["task_id"].isin(held)
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def embedder_for(embedding: str, out: Path):
    # MiniLM's vectors cached on disk (374 task texts): the reruns skip the encoder
    return PromptEmbedder(out / "embeddings-minilm.npz") if embedding == "minilm" else length_embedder("static")


def predictions(est: TrainedEstimator, test: pd.DataFrame) -> np.ndarray:
    return est.predict_frame(test)[:, 0, :]  # (rows, 1 + quantiles): mean, P50, P90


def fit(df: pd.DataFrame, which: str, out: Path, save_static: Path | None) -> None:
    split_name, embedding = which.split(":")
    train, test = split(df, split_name)
    embedder = embedder_for(embedding, out)
    t0 = time.perf_counter()
    if split_name == "prompt" and embedding == "minilm":
        est = TrainedEstimator.load(default_dir("length"), "length", embedder=embedder)
        shipped = est.data.get("probe_keys_sha256")
        same = shipped == fingerprint(train)["probe_keys_sha256"]
        print(f"shipped length-v3: its training data {'IS' if same else 'is NOT'} this run's train half "
              f"({len(train)} rows)")
    else:
        fit_rows, val_rows = split_by_prompt(train, 0.1, SPLIT_SEED + 1)
        est = train_length(fit_rows, val_rows, TrainConfig(), embedder=embedder, embedding=embedding)
        est.data = fingerprint(train)
        if save_static is not None and which == "prompt:static":
            print(f"saved {est.save(save_static)}")
    pred = predictions(est, test)
    np.savez(out / f"pred-{split_name}-{embedding}.npz", pred=pred, y=test["output_tokens"].to_numpy(float),
             task=test["task_id"].to_numpy(str), probe=test["probe_key"].to_numpy(str))
    print(f"{which}: {len(train)} train rows, {len(test)} test rows of {test['task_id'].nunique()} tasks, "
          f"{time.perf_counter() - t0:.0f} s")


def per_task(err: np.ndarray, task_codes: np.ndarray, n_tasks: int) -> np.ndarray:
    return np.bincount(task_codes, weights=err, minlength=n_tasks)


def report(out: Path) -> None:
    for split_name in SPLITS:
        files = {e: out / f"pred-{split_name}-{e}.npz" for e in EMBEDDINGS}
        if not all(f.exists() for f in files.values()):
            print(f"{split_name} split: predictions missing ({[str(f) for f in files.values() if not f.exists()]})")
            continue
        z = {e: np.load(f, allow_pickle=False) for e, f in files.items()}
        assert (z["minilm"]["probe"] == z["static"]["probe"]).all(), "the two predictions are not of the same probes"
        y, tasks = z["minilm"]["y"], z["minilm"]["task"]
        ids, codes = np.unique(tasks, return_inverse=True)
        counts = np.bincount(codes, minlength=len(ids)).astype(float)
        errs = {e: {"abs": np.abs(z[e]["pred"][:, 0] - y), "ape": np.abs(z[e]["pred"][:, 0] - y) / y,
                    "cover": (y <= z[e]["pred"][:, -1]).astype(float)} for e in EMBEDDINGS}
        print(f"{split_name} split: {len(y)} held-out probes of {len(ids)} tasks"
              f"{' (tasks seen in training, prompts not)' if split_name == 'prompt' else ' (tasks never seen)'}")
        for e in EMBEDDINGS:
            m = errs[e]
            print(f"  {e:<7} MAE {m['abs'].mean():6.2f} tokens  MAPE {100 * m['ape'].mean():6.2f}%  "
                  f"P90 coverage {100 * m['cover'].mean():5.1f}%")
        rng = np.random.default_rng(0)
        picks = rng.integers(0, len(ids), size=(BOOTSTRAP, len(ids)))
        weights = np.stack([np.bincount(p, minlength=len(ids)) for p in picks]).astype(float)  # (B, tasks)
        n = weights @ counts
        for metric, scale, unit in (("abs", 1.0, " tokens"), ("ape", 100.0, " points")):
            a = per_task(errs["static"][metric], codes, len(ids))
            b = per_task(errs["minilm"][metric], codes, len(ids))
            point = scale * (errs["static"][metric].mean() - errs["minilm"][metric].mean())
            boot = scale * ((weights @ a) - (weights @ b)) / n
            lo, hi = np.percentile(boot, [2.5, 97.5])
            name = "MAE" if metric == "abs" else "MAPE"
            print(f"  static - minilm {name}: {point:+.2f}{unit}, 95% CI [{lo:+.2f}, {hi:+.2f}] (paired, "
                  f"{BOOTSTRAP} resamples of {len(ids)} tasks)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the Phase 2 run (levels 1, 10, 50, all prompts)")
    p.add_argument("--out", type=Path, required=True, help="folder for the predictions")
    p.add_argument("--fit", choices=[f"{s}:{e}" for s in SPLITS for e in EMBEDDINGS], default=None,
                   help="train (or load) one F_len and save its held-out predictions; without it: the table")
    p.add_argument("--save-static", type=Path, default=None, help="with --fit prompt:static: save the artifact here")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fit:
        df = with_tasks(load_training_data([args.data]), args.data)
        fit(df, args.fit, args.out, args.save_static)
        if args.fit == "prompt:static":
            fit(df, "prompt:minilm", args.out, None)  # the shipped F_len on the same probes
    report(args.out)
    print(json.dumps({"omp_num_threads": os.environ.get("OMP_NUM_THREADS")}))


if __name__ == "__main__":
    main()
