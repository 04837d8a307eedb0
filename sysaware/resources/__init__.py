"""Vendored data (MBPP, RouterBench MBPP answers, Vidur profiles) and fitted parameters; each folder has a SOURCE.md."""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent
