"""What replaying each recorded answer needs, worked out once for all of them and saved: its renamed text and code.

Renaming an answer's entry point and extracting its code walk syntax trees, about 5 ms per answer, and the
simulated cluster replays some 600 answers in its first minutes. The index (``resources/replay_index.json``)
records, per answer, how its text is renamed (the identifier a whole-word rename replaces, checked against the
extractor when the index was built) and where its code lies in that text, so replaying costs one substitution and
a slice. It is used only when built from the same recordings, tasks and code (``provenance``); otherwise answers
are worked out as before, with a warning.

    python -m sysaware.engines.twin.responder.replay_index      # rebuild resources/replay_index.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sysaware.engines.twin.responder.provenance import PACKAGE, RECORDED_ANSWER_SOURCES, file_digests
from sysaware.engines.twin.responder.renaming import rename_identifier, renamed_answer, renamed_from, solution_code
from sysaware.resources import RESOURCES
from sysaware.tasks import regrade
from sysaware.tasks.extract import rename_entry_point
from sysaware.tasks.mbpp import get_task

REPLAY_INDEX_JSON = RESOURCES / "replay_index.json"
REFRESH_COMMAND = "python -m sysaware.engines.twin.responder.replay_index"
SOURCES = {**RECORDED_ANSWER_SOURCES, "engines/twin/responder/renaming.py": PACKAGE / "engines" / "twin" / "responder" / "renaming.py"}


@dataclass(frozen=True)
class ReplayHint:
    """How to rebuild one answer's renamed text and code without walking its syntax tree."""

    renamed_from: str | None  # "": the raw text as is; a name: renamed to the entry point; None: work it out
    code_span: tuple[int, int] | None  # [start, end) of the code in the renamed text; None: extract it


def hint_for(raw_text: str, task_id: int) -> ReplayHint:
    """Work out the renamed text and its code the slow way, and say how to rebuild them fast."""
    text = renamed_answer(raw_text, task_id)
    code = solution_code(text)
    how: str | None = ""
    if text != raw_text:  # renamed: a whole-word rename of one identifier, or one of the rarer rewrites (live)
        entry = get_task(task_id).entry_point or ""
        raw_code = solution_code(raw_text)
        old = renamed_from(raw_code, rename_entry_point(raw_code, entry))
        how = old if old is not None and rename_identifier(raw_text, old, entry) == text else None
    start = text.find(code)
    return ReplayHint(how, (start, start + len(code)) if start >= 0 else None)


def build_index() -> dict:
    answers, _ = regrade.load_recorded_answers()
    table: dict[str, dict[str, list]] = {}
    for a in answers:
        hint = hint_for(a.answer, a.task_id)
        span = list(hint.code_span) if hint.code_span else None
        table.setdefault(a.model, {})[str(a.task_id)] = [hint.renamed_from, span]
    return {
        "what": "per recorded answer (model -> task): [renamed_from, code_span]; renamed_from \"\" = the raw text, a "
        "name = that identifier renamed to the entry point as a whole word, null = work it out; code_span = "
        "[start, end) of the extracted code in the renamed text, null = extract it",
        "refresh": REFRESH_COMMAND,
        "sources": file_digests(SOURCES),
        "answers": table,
    }


@lru_cache(maxsize=4)
def load_index(path: str | Path = REPLAY_INDEX_JSON) -> dict[tuple[str, int], ReplayHint]:
    """The saved index; empty (every answer worked out live) when missing or built from other sources."""
    path = Path(path)
    if not path.exists():
        warnings.warn(f"{path} is missing: recorded answers are renamed and extracted live; "
                      f"build it with {REFRESH_COMMAND}")
        return {}
    raw = json.loads(path.read_text())
    if raw.get("sources") != file_digests(SOURCES):
        warnings.warn(f"{path} was built from other recordings or code: recorded answers are renamed and extracted "
                      f"live; refresh it with {REFRESH_COMMAND}")
        return {}
    return {
        (model, int(task_id)): ReplayHint(how, tuple(span) if span else None)
        for model, tasks in raw["answers"].items()
        for task_id, (how, span) in tasks.items()
    }


def replay_hint(model: str, task_id: int) -> ReplayHint | None:
    return load_index().get((model, task_id))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the index of how to replay each recorded answer.")
    parser.add_argument("--out", type=Path, default=REPLAY_INDEX_JSON)
    args = parser.parse_args(argv)
    index = build_index()
    args.out.write_text(json.dumps(index, separators=(",", ":")) + "\n")
    hints = [h for tasks in index["answers"].values() for h in tasks.values()]
    print(f"wrote {args.out}: {len(hints)} answers; {sum(h[0] is None for h in hints)} renamed live, "
          f"{sum(h[1] is None for h in hints)} extracted live")


if __name__ == "__main__":
    main()
