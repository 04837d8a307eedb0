"""How much the sandbox costs per graded answer, and how well it runs in parallel.

Grades every sanitized MBPP reference solution (fast ones only, so one slow task does not dominate) three ways:
in-process ``exec`` (no isolation, the floor), ``run_tests`` one at a time (a bubblewrap sandbox per answer, set-up
and teardown included), and ``run_tests_batch`` with N workers. Prints ms per answer and the ratios; the headline
(answers graded per second with N workers) comes last.

    python benchmarks/bench_sandbox.py [--tasks 120] [--workers 2]
"""

from __future__ import annotations

import argparse
import time

from sysaware.tasks.mbpp import load_tasks
from sysaware.tasks.sandbox import SandboxJob, run_tests, run_tests_batch

SLOW_TASKS = {123}  # its reference solution alone takes seconds


def in_process(job: SandboxJob) -> bool:
    namespace: dict = {}
    try:
        exec(job.setup_code, namespace)
        exec(job.code, namespace)
        for test in job.tests:
            exec(test, namespace)
    except Exception:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=120, help="how many reference solutions to grade")
    parser.add_argument("--workers", type=int, default=2, help="parallel sandbox processes for the batch run")
    args = parser.parse_args()

    tasks = [t for t in load_tasks(sanitized=True) if t.task_id not in SLOW_TASKS][: args.tasks]
    jobs = [SandboxJob(t.reference_code, tuple(t.test_list), "\n".join(t.test_imports), timeout_s=30.0) for t in tasks]
    n = len(jobs)

    start = time.perf_counter()
    floor_ok = sum(in_process(j) for j in jobs)
    floor_s = time.perf_counter() - start

    run_tests("pass", [])  # the sandbox's one-time check that it can start here, outside the timing
    start = time.perf_counter()
    serial = [run_tests(j.code, j.tests, j.setup_code, j.timeout_s, j.memory_mb) for j in jobs]
    serial_s = time.perf_counter() - start

    start = time.perf_counter()
    batch = run_tests_batch(jobs, max_workers=args.workers)
    batch_s = time.perf_counter() - start

    assert floor_ok == n and all(r.passed for r in serial) and all(r.passed for r in batch), "a reference failed"
    print(f"answers graded: {n} sanitized MBPP reference solutions (all pass every way)")
    print(f"in-process exec (no isolation): {1000 * floor_s / n:8.2f} ms/answer")
    print(f"sandbox, one at a time:         {1000 * serial_s / n:8.2f} ms/answer")
    print(f"sandbox, {args.workers} workers:              {1000 * batch_s / n:8.2f} ms/answer (wall)")
    print(f"isolation overhead: {serial_s / floor_s:.0f}x in-process; parallel speed-up: {serial_s / batch_s:.2f}x")
    print(f"headline: {n / batch_s:.1f} answers graded per second with {args.workers} workers")


if __name__ == "__main__":
    main()
