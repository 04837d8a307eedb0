"""Sandbox runs for drivers, remembered: the twin replays recorded answers, so the same (code, asserts) pair comes
back again and again, and its verdict cannot change. Each distinct job runs once per ``CachedSandbox``."""

from __future__ import annotations

from collections.abc import Sequence

from sysaware.tasks.sandbox import ExecutionResult, SandboxJob, run_tests, run_tests_batch


class CachedSandbox:
    def __init__(self, max_workers: int = 2) -> None:
        self.max_workers = max_workers  # child processes at a time in ``run_batch``
        self._results: dict[SandboxJob, ExecutionResult] = {}
        self.executed = 0  # jobs actually run (the rest came from the cache)

    def run(self, job: SandboxJob) -> ExecutionResult:
        result = self._results.get(job)
        if result is None:
            result = run_tests(job.code, job.tests, job.setup_code, job.timeout_s, job.memory_mb)
            self._results[job] = result
            self.executed += 1
        return result

    def run_batch(self, jobs: Sequence[SandboxJob]) -> list[ExecutionResult]:
        missing = list(dict.fromkeys(j for j in jobs if j not in self._results))
        if missing:
            for job, result in zip(missing, run_tests_batch(missing, max_workers=self.max_workers)):
                self._results[job] = result
            self.executed += len(missing)
        return [self._results[j] for j in jobs]
