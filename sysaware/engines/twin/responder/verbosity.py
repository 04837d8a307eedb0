"""How much each recorded model writes around its code, measured once on its RouterBench answers.

Measuring tokenizes every recorded answer and extracts its code (about 0.7 s per model), too slow for every
responder construction, so the table is saved in ``resources/recorded_verbosity.json`` with what it was measured
from (``provenance``: the answer files, the code that matches and extracts them, the tokenizer). A table whose
sources changed is not used: the responder measures again and warns.

    python -m sysaware.engines.twin.responder.verbosity      # re-measure and rewrite resources/recorded_verbosity.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sysaware.engines.tokens import count_tokens_batch
from sysaware.engines.twin.responder.answers import load_recorded_answers
from sysaware.engines.twin.responder.provenance import RECORDED_ANSWER_SOURCES, TOKENIZER_SOURCE, file_digests
from sysaware.resources import RESOURCES
from sysaware.tasks.extract import extract_code
from sysaware.tasks.regrade import MODELS

VERBOSITY_JSON = RESOURCES / "recorded_verbosity.json"
REFRESH_COMMAND = "python -m sysaware.engines.twin.responder.verbosity"


@dataclass(frozen=True)
class Verbosity:
    """How much a model writes around its code, measured on its recorded answers (tokens)."""

    median_extra_tokens: float  # median of (answer tokens - solution code tokens)
    log_sd: float  # spread of log(extra tokens), for the seeded noise


@lru_cache(maxsize=32)
def measure_verbosity(recorded_model: str) -> Verbosity:
    """Verbosity of ``recorded_model`` measured now from its answers (the slow path the saved table avoids)."""
    answers = load_recorded_answers().for_model(recorded_model)
    totals = count_tokens_batch([a.raw_text for a in answers])
    codes = count_tokens_batch([extract_code(a.raw_text) for a in answers])
    extra = np.maximum(np.array(totals) - np.array(codes), 1)
    return Verbosity(float(np.median(extra)), float(np.clip(np.std(np.log(extra)), 0.15, 0.8)))


def source_fingerprint() -> dict[str, str]:
    """SHA-256 of what the table is measured from: the recorded answers as read, and the tokenizer."""
    return file_digests({**RECORDED_ANSWER_SOURCES, **TOKENIZER_SOURCE})


def verbosity_table(models: Sequence[str] = MODELS) -> dict:
    """The saved table's content: per model its verbosity and number of answers, with provenance."""
    answers = load_recorded_answers()
    return {
        "what": "per RouterBench model: median and log-spread of (answer tokens - extracted code tokens) over its "
        "recorded MBPP answers; log_sd clipped to [0.15, 0.8]",
        "measured_by": "sysaware.engines.twin.responder.verbosity.measure_verbosity",
        "refresh": REFRESH_COMMAND,
        "sources": source_fingerprint(),
        "models": {
            m: {**vars(measure_verbosity(m)), "answers": len(answers.for_model(m))} for m in models
        },
    }


@lru_cache(maxsize=4)
def load_verbosity_table(path: str | Path = VERBOSITY_JSON) -> dict[str, Verbosity]:
    """The saved table; empty (so every model is measured again) when it is missing or its sources changed."""
    path = Path(path)
    if not path.exists():
        warnings.warn(f"{path} is missing: measuring verbosity from the recordings; save it with {REFRESH_COMMAND}")
        return {}
    raw = json.loads(path.read_text())
    if raw.get("sources") != source_fingerprint():
        warnings.warn(f"{path} was measured from other recordings or another tokenizer: measuring again; "
                      f"refresh it with {REFRESH_COMMAND}")
        return {}
    return {m: Verbosity(float(v["median_extra_tokens"]), float(v["log_sd"])) for m, v in raw["models"].items()}


def recorded_verbosity(recorded_model: str) -> Verbosity:
    """Verbosity of a recorded model: from the saved table, else measured now."""
    saved = load_verbosity_table().get(recorded_model)
    return saved if saved is not None else measure_verbosity(recorded_model)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the recorded models' verbosity and save the table.")
    parser.add_argument("--out", type=Path, default=VERBOSITY_JSON)
    args = parser.parse_args(argv)
    table = verbosity_table()
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")
    for m, v in table["models"].items():
        print(f"  {m:36s} median extra {v['median_extra_tokens']:7.1f} tokens  log sd {v['log_sd']:.3f}"
              f"  ({v['answers']} answers)")


if __name__ == "__main__":
    main()
