"""The sandbox: correct code passes, wrong code fails with the assert named, and hostile code is contained.

Every test runs real child processes (about 40 ms each). Limits are kept small (1-2 s, 256 MB) so the file stays
fast; nothing here asserts on timing.
"""

import os
import socket
import textwrap

import pytest

from sysaware.tasks.sandbox import ExecutionStatus, SandboxJob, TestStatus, run_tests, run_tests_batch

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ("assert add(1, 2) == 3", "assert add(-1, 1) == 0")


def run(code, tests=("assert True",), **overrides):
    options = {"timeout_s": 2.0, "memory_mb": 256} | overrides
    return run_tests(textwrap.dedent(code), list(tests), **options)


def process_is_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---- grading --------------------------------------------------------------------------------------------------


def test_correct_code_passes_every_test():
    result = run(ADD, ADD_TESTS)
    assert result.passed and result.status is ExecutionStatus.PASSED
    assert [t.status for t in result.tests] == [TestStatus.PASSED, TestStatus.PASSED]
    assert result.num_passed == 2 and result.message == ""


def test_wrong_code_fails_and_names_the_failing_assert():
    result = run("def add(a, b):\n    return a - b\n", ADD_TESTS)
    assert not result.passed and result.status is ExecutionStatus.FAILED_ASSERT
    # add(1, 2) = -1 fails; add(-1, 1) = -2 fails too; the message names the first.
    assert "assert add(1, 2) == 3" in result.message
    assert [t.status for t in result.tests] == [TestStatus.FAILED, TestStatus.FAILED]


def test_each_test_has_its_own_outcome():
    result = run("def f(x):\n    return 10 // x\n", ["assert f(1) == 10", "assert f(0) == 0", "assert f(2) == 3"])
    assert [t.status for t in result.tests] == [TestStatus.PASSED, TestStatus.ERROR, TestStatus.FAILED]
    # The first failure is an exception, so the run is an error, not a failed assert.
    assert result.status is ExecutionStatus.ERROR and "ZeroDivisionError" in result.message


def test_setup_code_runs_before_the_solution_in_the_same_namespace():
    result = run("def root(x):\n    return math.sqrt(x)\n", ["assert root(9) == 3"], setup_code="import math")
    assert result.passed


def test_syntax_error_is_reported_as_syntax():
    result = run("def f(:\n    pass\n")
    assert result.status is ExecutionStatus.SYNTAX and "SyntaxError" in result.message
    assert [t.status for t in result.tests] == [TestStatus.NOT_RUN]


def test_main_guard_of_the_solution_does_not_run():
    result = run(ADD + "if __name__ == '__main__':\n    raise SystemExit('demo ran')\n", ADD_TESTS)
    assert result.passed


def test_exception_while_defining_the_solution_is_an_error_and_no_test_runs():
    result = run("raise ValueError('boom')\n", ADD_TESTS)
    assert result.status is ExecutionStatus.ERROR and "ValueError: boom" in result.message
    assert all(t.status is TestStatus.NOT_RUN for t in result.tests)


# ---- robustness -------------------------------------------------------------------------------------------------


def test_sys_exit_in_the_solution_is_an_error():
    result = run("import sys\nsys.exit(0)\n")
    assert result.status is ExecutionStatus.ERROR and "SystemExit" in result.message


def test_os_exit_in_a_test_keeps_the_outcomes_of_earlier_tests():
    code = ADD + "def leave():\n    import os\n    os._exit(7)\n"
    result = run(code, ["assert add(1, 1) == 2", "leave()", "assert add(2, 2) == 4"])
    assert result.status is ExecutionStatus.ERROR and result.exit_code == 7
    assert [t.status for t in result.tests] == [TestStatus.PASSED, TestStatus.NOT_RUN, TestStatus.NOT_RUN]


def test_exception_whose_message_cannot_be_printed_is_still_reported():
    code = "class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\n\ndef f():\n    raise Odd()\n"
    result = run(code, ["assert f()"])
    assert result.status is ExecutionStatus.ERROR and "Odd" in result.message


def test_raising_a_bare_base_exception_subclass_is_an_error():
    code = "class Escape(BaseException):\n    pass\n\ndef f():\n    raise Escape('out')\n"
    result = run(code, ["assert f()"])
    assert result.status is ExecutionStatus.ERROR and "Escape: out" in result.message


def test_megabytes_of_output_are_truncated_and_the_tests_still_count():
    result = run("print('x' * 20_000_000)\n" + ADD, ADD_TESTS)
    assert result.passed
    assert len(result.stdout) < 20_000 and "truncated" in result.stdout


def test_closing_stdout_does_not_hide_the_result():
    result = run("import sys, os\nsys.stdout.close()\nos.close(1)\nos.close(2)\n" + ADD, ADD_TESTS)
    assert result.passed


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("SYSAWARE_TEST_SECRET", "hunter2")
    result = run("import os\nassert 'SYSAWARE_TEST_SECRET' not in os.environ, dict(os.environ)\n")
    assert result.passed, result.message


def test_working_directory_is_private_writable_and_removed_afterwards():
    code = "import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n"
    result = run(code)
    assert result.passed, result.message
    workdir = result.stdout.strip()
    assert "sysaware-sandbox-" in workdir and not os.path.exists(workdir)


# ---- containment ------------------------------------------------------------------------------------------------


def test_infinite_loop_times_out_and_its_process_is_killed():
    result = run("import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass\n", timeout_s=1.0)
    assert result.status is ExecutionStatus.TIMEOUT and not result.passed
    assert process_is_gone(int(result.stdout.split()[0]))


def test_fork_bomb_is_refused():
    result = run("import os\nwhile True:\n    os.fork()\n")
    assert result.status is ExecutionStatus.FORBIDDEN and "os.fork" in result.message


def test_fork_bomb_that_swallows_the_refusal_is_still_forbidden():
    code = "import os\nfor _ in range(1000):\n    try:\n        os.fork()\n    except BaseException:\n        pass\n"
    result = run(code)
    assert result.status is ExecutionStatus.FORBIDDEN


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.execv('/bin/true', ['true'])",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
        "import ctypes\nctypes.CDLL('libc.so.6')",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",
    ],
)
def test_process_creation_signals_ctypes_and_raising_limits_are_refused(code):
    result = run(code)
    assert result.status is ExecutionStatus.FORBIDDEN, result.message


def test_memory_bomb_is_stopped_by_the_memory_limit():
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(10_000_000))\n", memory_mb=256)
    assert result.status is ExecutionStatus.MEMORY and not result.passed


def test_single_huge_allocation_is_a_memory_failure():
    result = run("def f():\n    return bytearray(8 * 1024**3)\n", ["assert f()"], memory_mb=256)
    assert result.status is ExecutionStatus.MEMORY


def test_file_write_outside_the_sandbox_is_refused_and_nothing_is_written(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run(f"open({str(target)!r}, 'w').write('pwned')\n")
    assert result.status is ExecutionStatus.FORBIDDEN
    assert not target.exists()


def test_removing_or_renaming_a_file_outside_the_sandbox_is_refused(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for code in (f"import os\nos.remove({str(victim)!r})", f"import os\nos.rename({str(victim)!r}, 'stolen.txt')"):
        assert run(code).status is ExecutionStatus.FORBIDDEN
    assert victim.read_text() == "precious"


def test_symlink_out_of_the_sandbox_does_not_allow_writing_through_it(tmp_path):
    target = tmp_path / "via_link.txt"
    code = f"import os\nos.symlink({str(tmp_path)!r}, 'out')\nopen('out/via_link.txt', 'w').write('x')\n"
    assert run(code).status is ExecutionStatus.FORBIDDEN
    assert not target.exists()


def test_directory_descriptor_route_around_the_path_checks_is_refused(tmp_path):
    code = (
        "import os\n"
        f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
        "os.close(os.open('sneaky.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n"
    )
    assert run(code).status is ExecutionStatus.FORBIDDEN
    assert not (tmp_path / "sneaky.txt").exists()


def test_socket_connect_to_a_listening_port_is_refused_and_never_arrives():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hello')\n"
        result = run(code)
        assert result.status is ExecutionStatus.FORBIDDEN
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="a new network namespace needs root (CAP_SYS_ADMIN)")
def test_child_runs_in_its_own_network_namespace():
    # Below the audit hook: even a socket that got through would find only the child's own, down, loopback.
    result = run("import os\nprint(os.readlink('/proc/self/ns/net'))\n")
    assert result.passed and result.network_isolated
    assert result.stdout.strip() != os.readlink("/proc/self/ns/net")


# ---- batches ---------------------------------------------------------------------------------------------------


def test_batch_returns_results_in_order_and_reports_each_one():
    jobs = [
        SandboxJob(ADD, ADD_TESTS, timeout_s=2.0),
        SandboxJob("def add(a, b):\n    return 0\n", ADD_TESTS, timeout_s=2.0),
        SandboxJob("while True:\n    pass\n", ADD_TESTS, timeout_s=1.0),
        SandboxJob("import os\nos.fork()\n", ADD_TESTS, timeout_s=2.0),
    ]
    seen = []
    results = run_tests_batch(jobs, max_workers=2, on_result=lambda i, r: seen.append(i))
    assert [r.status for r in results] == [
        ExecutionStatus.PASSED,
        ExecutionStatus.FAILED_ASSERT,
        ExecutionStatus.TIMEOUT,
        ExecutionStatus.FORBIDDEN,
    ]
    assert sorted(seen) == [0, 1, 2, 3]
