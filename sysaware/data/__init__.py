"""Data artifacts and their schemas: what pipelines write and policies read (no engine, no simulator)."""
