"""Pipelines: each step of the data and evaluation flow, callable from the CLI and from Ray jobs."""
