"""What a saved table was computed from: the SHA-256 of its input files (data and the code that reads them).

A table whose inputs changed is not used; the caller works the values out again and says how to refresh the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from sysaware.engines.tokens import minilm_model_dir
from sysaware.resources import RESOURCES

PACKAGE = Path(__file__).resolve().parents[3]  # sysaware/

# The recorded answers as the twin reads them: RouterBench's files, the MBPP tasks they are matched to (and whose
# asserts name the entry point), and the code that matches them and extracts their solutions.
RECORDED_ANSWER_SOURCES: dict[str, Path] = {
    "resources/routerbench_mbpp/mbpp_train.csv": RESOURCES / "routerbench_mbpp" / "mbpp_train.csv",
    "resources/routerbench_mbpp/mbpp_test.csv": RESOURCES / "routerbench_mbpp" / "mbpp_test.csv",
    "resources/mbpp/sanitized-mbpp.json": RESOURCES / "mbpp" / "sanitized-mbpp.json",
    "tasks/mbpp.py": PACKAGE / "tasks" / "mbpp.py",
    "tasks/regrade.py": PACKAGE / "tasks" / "regrade.py",
    "tasks/extract.py": PACKAGE / "tasks" / "extract.py",
}
TOKENIZER_SOURCE: dict[str, Path] = {"tokenizer.json (all-MiniLM-L6-v2)": minilm_model_dir() / "tokenizer.json"}


@lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_digests(files: Mapping[str, Path]) -> dict[str, str]:
    """name -> SHA-256 of the file (cached per file version within a process)."""
    digests = {}
    for name, path in sorted(files.items()):
        stat = Path(path).stat()
        digests[name] = _sha256(Path(path), stat.st_size, stat.st_mtime_ns)
    return digests
