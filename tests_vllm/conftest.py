"""Tests that need the vLLM environment (``make test-vllm``); the main suite never collects this folder."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # the shared helpers (engine_contract) import as top-level modules
