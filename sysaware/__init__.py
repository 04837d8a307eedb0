"""sysaware: system-aware orchestration of multi-agent LLM workflows on shared GPU clusters."""

__version__ = "0.1.0"
