"""Run untrusted generated code against asserts, in a separate, fenced-in process.

Layers, outermost first (each stops what slipped through the one before):

1. A child process (``sys.executable -I -B``: no user site, no ``PYTHON*`` variables, no .pyc writes), in its own
   session so a wall-clock timeout kills its whole process group, with a scrubbed environment and a fresh temporary
   directory as cwd, removed afterwards.
2. Resource limits the child sets on itself before touching the code: address space (memory), CPU seconds, file
   size, open files, no core dumps. They are set in the child rather than in a ``preexec_fn`` because
   ``preexec_fn`` is unsafe when the parent has threads, and ``run_tests_batch`` runs this from threads.
3. A new, empty network namespace (``unshare(CLONE_NEWNET)``; we run as root, so it usually succeeds; ignored if
   not): not even loopback is up, so nothing on the host is reachable.
4. An audit hook (PEP 578) installed before the code runs. It refuses process creation (``os.fork`` and friends,
   ``subprocess``, ``os.system``, ``exec*``, ``posix_spawn``), signals to other processes, sockets, ``ctypes``
   foreign calls, raising resource limits, any file write, removal, rename or permission change outside the
   temporary directory, and opening a descriptor on an outside directory (a ``dir_fd`` route around the path
   checks); reading files anywhere stays allowed, since imports need it. As root RLIMIT_NPROC stops nothing, so the hook is what stops a fork bomb.
   A refused action raises ``SandboxViolation`` (a ``PermissionError``) in the code and is also reported at once
   over the result channel, so a program that swallows the exception is still graded ``forbidden``.

Results stream back as JSON lines over a dedicated pipe (not stdout, which the code may flood or close), one line
per phase and per test, so a process that dies mid-way still tells which tests ran. This contains buggy or
runaway code; it is not a boundary against code written to attack the grader (for example by forging result
lines), which LLM answers to MBPP problems are not.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "ExecutionStatus",
    "TestStatus",
    "TestOutcome",
    "ExecutionResult",
    "SandboxJob",
    "run_tests",
    "run_tests_batch",
]

OUTPUT_LIMIT_BYTES = 16 * 1024  # stdout / stderr kept per run; the rest is drained and dropped
MESSAGE_LIMIT_CHARS = 2000
FILE_SIZE_LIMIT_MB = 16
OPEN_FILES_LIMIT = 64
_KILL_GRACE_S = 0.5  # after the child exits, how long stragglers may keep the pipes open


class ExecutionStatus(str, Enum):
    """Outcome of a whole run, most severe first: the first that applies is reported."""

    SYNTAX = "syntax"  # the code does not compile
    FORBIDDEN = "forbidden"  # it tried something the sandbox refuses (fork, socket, write outside its dir, ...)
    TIMEOUT = "timeout"  # wall-clock or CPU limit reached
    MEMORY = "memory"  # MemoryError, or killed for memory
    ERROR = "error"  # an exception other than a failed assert, or the process died
    FAILED_ASSERT = "failed_assert"  # ran cleanly but some assert is false
    PASSED = "passed"


class TestStatus(str, Enum):
    __test__ = False  # not a pytest class

    PASSED = "passed"
    FAILED = "failed"  # AssertionError
    ERROR = "error"  # any other exception
    NOT_RUN = "not_run"  # an earlier phase failed, or the run was cut short


@dataclass(frozen=True)
class TestOutcome:
    __test__ = False

    index: int
    test: str  # the assert's source
    status: TestStatus
    message: str = ""  # exception type and text when it did not pass


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    status: ExecutionStatus
    tests: tuple[TestOutcome, ...]
    stdout: str  # at most OUTPUT_LIMIT_BYTES, with a truncation note
    stderr: str
    duration_s: float  # wall time from spawn to the last byte read
    message: str  # one line saying why it did not pass ("" when it did)
    exit_code: int | None = None  # negative: killed by that signal
    violations: tuple[str, ...] = ()  # refused actions, "event: detail"
    network_isolated: bool = False  # whether the child got its own empty network namespace

    @property
    def num_passed(self) -> int:
        return sum(t.status is TestStatus.PASSED for t in self.tests)


@dataclass(frozen=True)
class SandboxJob:
    """One ``run_tests`` call, for ``run_tests_batch``."""

    code: str
    tests: tuple[str, ...]
    setup_code: str = ""
    timeout_s: float = 5.0
    memory_mb: int = 512


# ---------------------------------------------------------------------------------------------------------------
# The child: a self-contained script run with ``python -I -B -c``. It imports nothing from this package.
# ---------------------------------------------------------------------------------------------------------------

_RUNNER = r'''
import ctypes, json, os, resource, sys, threading

_RESULT_FD = int(sys.argv[1])
_write = os.write
_realpath, _fsdecode, _join, _readlink = os.path.realpath, os.fsdecode, os.path.join, os.readlink
_MSG = 2000

def _emit(**record):
    try:
        _write(_RESULT_FD, (json.dumps(record) + "\n").encode())
    except Exception:
        pass

payload = json.loads(sys.stdin.buffer.read().decode())
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)

# Limits first, before any of the code exists in this process.
_mem = payload["memory_mb"] * 1024 * 1024
for _name, _soft, _hard in (
    ("RLIMIT_AS", _mem, _mem),
    # SIGXCPU at the soft limit reads as a timeout; the hard limit's SIGKILL only if that signal is ignored.
    ("RLIMIT_CPU", payload["cpu_s"], payload["cpu_s"] + 1),
    ("RLIMIT_FSIZE", payload["fsize_mb"] * 1024 * 1024, payload["fsize_mb"] * 1024 * 1024),
    ("RLIMIT_NOFILE", payload["nofile"], payload["nofile"]),
    ("RLIMIT_CORE", 0, 0),
):
    try:
        resource.setrlimit(getattr(resource, _name), (_soft, _hard))
    except (ValueError, OSError):
        pass

_net = False
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _net = _libc.unshare(0x40000000) == 0  # CLONE_NEWNET
except Exception:
    pass
_emit(kind="start", network_isolated=_net)

_HOME = _realpath(os.getcwd())

class SandboxViolation(PermissionError):
    pass

_BLOCKED = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "signal.pthread_kill",
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata",
    "ctypes.PyObj_FromPtr", "ctypes.string_at", "ctypes.wstring_at",
    "resource.setrlimit", "resource.prlimit", "sys.addaudithook", "os.chroot", "os.setns", "os.unshare",
}
# event -> ((index of a path argument, index of the dir_fd it is relative to, or None), ...)
_FS_MUTATING = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),), "os.truncate": ((0, None),), "shutil.rmtree": ((0, 1),),
    "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_isdir = os.path.isdir
_violations = []
_guard = threading.local()  # the hook's own work (repr of a user object, realpath) must not re-enter it

def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True  # an already-open descriptor: opening it was checked
    path = _fsdecode(path)
    if dir_fd not in (None, -1) and not path.startswith("/"):
        path = _join(_readlink("/proc/self/fd/%d" % dir_fd), path)
    real = _realpath(path)
    return real == _HOME or real.startswith(_HOME + "/")

def _refuse(event, detail):
    text = "%s: %s" % (event, detail)
    if len(_violations) < 20 and text not in _violations:
        _violations.append(text)
        _emit(kind="violation", event=event, detail=str(detail)[:200])
    raise SandboxViolation("sandbox refused " + text)

def _audit(event, args):
    if getattr(_guard, "active", False):
        return
    _guard.active = True
    try:
        if event in _BLOCKED:
            _refuse(event, repr(args)[:200])
        elif event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            if writes and not _inside(path):
                _refuse(event, path)
            # A descriptor on an outside directory would let os.open(name, ..., dir_fd=fd) write there unseen.
            if not writes and not isinstance(path, int) and (flags & _DIRECTORY or _isdir(path)) and not _inside(path):
                _refuse(event, path)
        elif event in _FS_MUTATING:
            for path_at, dir_fd_at in _FS_MUTATING[event]:
                dir_fd = args[dir_fd_at] if dir_fd_at is not None and dir_fd_at < len(args) else None
                if path_at < len(args) and not _inside(args[path_at], dir_fd):
                    _refuse(event, args[path_at])
    finally:
        _guard.active = False

def _describe(exc):
    try:
        text = "%s: %s" % (type(exc).__name__, exc)
    except BaseException:  # an exception whose __str__ itself fails
        text = type(exc).__name__
    return text[:_MSG]

def _run(source, name, namespace):
    exec(compile(source, name, "exec"), namespace)

# Not "__main__": the solution is a module under test, and its `if __name__ == "__main__":` demo must not run.
namespace = {"__name__": "solution", "__builtins__": __builtins__}
try:
    solution = compile(payload["code"], "<solution>", "exec")
except BaseException as exc:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
    _emit(kind="syntax", message=_describe(exc))
    os._exit(0)

sys.addaudithook(_audit)
ok = True
for phase, source in (("setup", payload["setup_code"]), ("code", solution)):
    try:
        if isinstance(source, str):
            _run(source, "<setup>", namespace)
        else:
            exec(source, namespace)
    except BaseException as exc:
        _emit(kind="phase", phase=phase, ok=False, error_type=type(exc).__name__, message=_describe(exc))
        ok = False
        break
    _emit(kind="phase", phase=phase, ok=True)

if ok:
    for index, test in enumerate(payload["tests"]):
        try:
            _run(test, "<test %d>" % index, namespace)
        except BaseException as exc:
            _emit(kind="test", index=index, ok=False, error_type=type(exc).__name__, message=_describe(exc))
        else:
            _emit(kind="test", index=index, ok=True)

try:
    sys.stdout.flush()
    sys.stderr.flush()
except BaseException:
    pass
_emit(kind="done")
os._exit(0)  # skip atexit handlers and finalizers the code may have registered
'''


# ---------------------------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------------------------


def _child_env(workdir: str) -> dict[str, str]:
    """Nothing from the host's environment: no tokens, no proxies, one thread for numeric libraries."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


@dataclass
class _Capture:
    """Bytes read from one pipe, keeping at most ``limit``."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        text = self.data.decode(errors="replace")
        return text + (f"\n...[truncated {self.dropped} bytes]" if self.dropped else "")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(proc: subprocess.Popen, result_fd: int, deadline: float) -> tuple[_Capture, _Capture, bytes, bool]:
    """Drain stdout, stderr and the result pipe until the child has exited and the pipes closed.

    At the deadline the whole process group is killed. Returns (stdout, stderr, result bytes, timed_out).
    """
    out, err = _Capture(OUTPUT_LIMIT_BYTES), _Capture(OUTPUT_LIMIT_BYTES)
    result = _Capture(4 * 1024 * 1024)  # tests are few; a flood here is the code writing to our pipe
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, result_fd: result}
    timed_out = False
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (not selector.get_map() or now - exited_at > _KILL_GRACE_S):
                break  # done; or the child is gone and something it left behind holds the pipes
            if now >= deadline:
                timed_out = exited_at is None
                break
            wait_s = min(0.05, deadline - now)
            if not selector.get_map():
                time.sleep(min(0.005, wait_s))  # pipes closed (the code may close stdout) but still running
                continue
            for key, _ in selector.select(timeout=wait_s):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    sinks[key.fd].add(chunk)
                else:
                    selector.unregister(key.fd)
    _kill_group(proc)  # nothing of the run may outlive it
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return out, err, bytes(result.data), timed_out


def run_tests(
    code: str,
    tests: Sequence[str],
    setup_code: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
) -> ExecutionResult:
    """Execute ``setup_code``, then ``code``, then each assert in ``tests``, in a sandboxed child process.

    ``timeout_s`` bounds the whole run (wall clock); ``memory_mb`` the child's address space.
    """
    tests = tuple(tests)
    payload = json.dumps(
        {
            "code": code,
            "tests": list(tests),
            "setup_code": setup_code,
            "memory_mb": int(memory_mb),
            "cpu_s": int(timeout_s) + 1,
            "fsize_mb": FILE_SIZE_LIMIT_MB,
            "nofile": OPEN_FILES_LIMIT,
        }
    ).encode()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sysaware-sandbox-", ignore_cleanup_errors=True) as workdir:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _RUNNER, str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=_child_env(workdir),
                start_new_session=True,
                pass_fds=(write_fd,),
                close_fds=True,
            )
        finally:
            os.close(write_fd)
        try:
            try:
                proc.stdin.write(payload)  # the runner reads all of stdin before anything else
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            out, err, raw_result, timed_out = _collect(proc, read_fd, start + timeout_s)
        finally:
            os.close(read_fd)
            for stream in (proc.stdout, proc.stderr):
                stream.close()
    duration_s = time.monotonic() - start
    return _interpret(tests, raw_result, proc.returncode, timed_out, out.text(), err.text(), duration_s, timeout_s)


def _interpret(
    tests: tuple[str, ...],
    raw_result: bytes,
    exit_code: int | None,
    timed_out: bool,
    stdout: str,
    stderr: str,
    duration_s: float,
    timeout_s: float,
) -> ExecutionResult:
    """Turn the streamed records and the exit code into one status, by the precedence of ``ExecutionStatus``."""
    records = []
    for line in raw_result.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    kinds = {r.get("kind") for r in records}
    violations = tuple(f"{r.get('event')}: {r.get('detail')}" for r in records if r.get("kind") == "violation")
    syntax = next((r for r in records if r.get("kind") == "syntax"), None)
    failed_phase = next((r for r in records if r.get("kind") == "phase" and not r.get("ok")), None)
    by_index = {r.get("index"): r for r in records if r.get("kind") == "test"}
    network_isolated = any(r.get("network_isolated") for r in records if r.get("kind") == "start")

    outcomes = []
    for i, test in enumerate(tests):
        r = by_index.get(i)
        if r is None:
            outcomes.append(TestOutcome(i, test, TestStatus.NOT_RUN))
        elif r.get("ok"):
            outcomes.append(TestOutcome(i, test, TestStatus.PASSED))
        else:
            failed = r.get("error_type") == "AssertionError"
            outcomes.append(
                TestOutcome(i, test, TestStatus.FAILED if failed else TestStatus.ERROR, str(r.get("message", "")))
            )
    first_bad = next((o for o in outcomes if o.status in (TestStatus.FAILED, TestStatus.ERROR)), None)
    memory_error = any(r.get("error_type") == "MemoryError" for r in records)
    killed_by = -exit_code if exit_code is not None and exit_code < 0 else None

    # Phase: precedence, most severe first.
    if syntax is not None:
        status, message = ExecutionStatus.SYNTAX, str(syntax.get("message", ""))
    elif violations:
        status, message = ExecutionStatus.FORBIDDEN, f"refused {violations[0]}"
    elif timed_out or killed_by == signal.SIGXCPU:
        status = ExecutionStatus.TIMEOUT
        message = f"timed out after {timeout_s:g} s" if timed_out else "CPU time limit reached"
    elif memory_error or (killed_by == signal.SIGKILL and "done" not in kinds):
        status, message = ExecutionStatus.MEMORY, "memory limit reached"
    elif failed_phase is not None:
        status = ExecutionStatus.ERROR
        message = f"{failed_phase.get('phase')} raised {failed_phase.get('message', '')}"
    elif "done" not in kinds:
        how = f"signal {killed_by} ({signal.Signals(killed_by).name})" if killed_by else f"exit code {exit_code}"
        status, message = ExecutionStatus.ERROR, f"process ended before finishing its tests ({how})"
    elif first_bad is not None:
        status = ExecutionStatus.FAILED_ASSERT if first_bad.status is TestStatus.FAILED else ExecutionStatus.ERROR
        verb = "failed" if first_bad.status is TestStatus.FAILED else "raised"
        message = f"test {first_bad.index} {verb}: {first_bad.test.strip()}"
        if first_bad.message and first_bad.message != "AssertionError: ":
            message += f" ({first_bad.message})"
    else:
        status, message = ExecutionStatus.PASSED, ""
    return ExecutionResult(
        passed=status is ExecutionStatus.PASSED,
        status=status,
        tests=tuple(outcomes),
        stdout=stdout,
        stderr=stderr,
        duration_s=duration_s,
        message=message[:MESSAGE_LIMIT_CHARS],
        exit_code=exit_code,
        violations=violations,
        network_isolated=network_isolated,
    )


def run_tests_batch(
    items: Sequence[SandboxJob],
    max_workers: int = 2,
    on_result: Callable[[int, ExecutionResult], None] | None = None,
) -> list[ExecutionResult]:
    """Run many jobs, ``max_workers`` child processes at a time; results in the order of ``items``.

    Threads suffice: each one only waits on its child. ``on_result(index, result)`` is called as each finishes
    (from the calling thread), e.g. to advance a progress bar.
    """
    items = list(items)
    results: list[ExecutionResult | None] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="sandbox") as pool:
        futures = {
            pool.submit(run_tests, job.code, job.tests, job.setup_code, job.timeout_s, job.memory_mb): i
            for i, job in enumerate(items)
        }
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_result is not None:
                on_result(index, results[index])
    return results  # type: ignore[return-value]
