"""Run untrusted generated code against asserts, inside operating-system isolation.

The boundary is the kernel, set up by bubblewrap (``bwrap``, Debian package ``bubblewrap`` >= 0.8) before the child
interpreter starts; nothing the code does inside its own interpreter can switch it off. Layers, outermost first:

1. **Namespaces.** Each run gets its own user, PID, mount, network, IPC, UTS (and, where the kernel has it, cgroup)
   namespaces. The code sees only its own processes (a fresh ``/proc``), cannot signal or trace anything outside,
   has no network but a loopback of its own, and shares no SysV IPC or abstract sockets with the host.
2. **Filesystem view.** A new root holding read-only binds of ``/usr`` (and the ``/bin``, ``/lib*`` links or
   directories), of the interpreter's installation (``sys.prefix``, ``sys.base_prefix`` and their exec twins, not
   the trees around them), a minimal ``/dev`` and ``/proc``. Nothing else of the host exists inside: no ``/etc``
   (so no ``/etc/shadow``), no ``/home``, ``/root``, repository or host ``/proc``. The only writable place is the run
   directory ``/tmp`` (also the working directory, ``HOME`` and ``TMPDIR``): a tmpfs of ``DISK_QUOTA_MB``, private to
   the run and gone with it. ``/``, ``/dev`` and every bind are read-only mounts.
3. **An unprivileged user.** The code runs as uid/gid 65534 (nobody) with no capabilities and ``no_new_privs``.
   When the grader itself runs as root, that uid is mapped to host uid 65534 (the user namespace's maps are
   written by us, ``setpriv`` drops to it), so it is not host root in disguise and ``RLIMIT_NPROC`` holds: the kernel
   exempts host root from that limit. Run as another user, bwrap maps 65534 to that user.
4. **A seccomp filter** (x86_64 and aarch64) refuses new namespaces (no nested user namespace, so no private
   mounts around the quota), mounts, ptrace, process_vm_*, keyrings, bpf, perf, userfaultfd, io_uring and module or
   kexec calls.
5. **Resource limits**, set by the runner before the code exists: address space (``memory_mb``), CPU seconds, file
   size, open files, processes (``PROCESS_LIMIT``, threads included), no core dumps. The wall-clock deadline kills
   the namespace's init, and the kernel then kills every process of the run; ``run_tests`` returns only after that
   init has exited, so nothing of a run outlives it (the PID namespace dies with the run's ``_exit`` as well).
6. **The in-process audit hook** (PEP 578), kept as a second line: it refuses process creation, signals, sockets,
   ctypes, raising limits and writes outside the run directory, and reports each refusal (and processes left
   running after the tests), so ordinary misbehaviour is graded ``forbidden``. Code can switch it off; the layers
   above do not depend on it.

If bubblewrap (or, when running as root, ``setpriv`` from util-linux) is missing or cannot create the sandbox,
``run_tests`` raises ``SandboxUnavailable`` naming what is missing; it never falls back to weaker isolation.

Results stream back as JSON lines over a dedicated pipe (not stdout, which the code may flood or close), one line
per phase and per test, so a process that dies mid-way still tells which tests ran. Each line starts with a random
per-run token handed to the runner on stdin; lines without it are ignored, so code that writes made-up records to
its descriptors or output cannot turn a failure into a pass. The token lives in the interpreter that runs the code,
so code written to read its own runner's memory could forge its *own* grade; nothing in a run can reach the host,
another run, or the grade of another answer.

Total memory of a run is bounded by ``PROCESS_LIMIT`` x ``memory_mb`` (rlimits are per process) plus the tmpfs;
tmpfs inode count is the kernel default (the tmpfs goes with the run).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import secrets
import selectors
import shutil
import signal
import site
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "ExecutionResult",
    "ExecutionStatus",
    "SandboxJob",
    "SandboxUnavailable",
    "TestOutcome",
    "TestStatus",
    "run_tests",
    "run_tests_batch",
]

OUTPUT_LIMIT_BYTES = 16 * 1024  # stdout / stderr kept per run; the rest is drained and dropped
MESSAGE_LIMIT_CHARS = 2000
FILE_SIZE_LIMIT_MB = 16
OPEN_FILES_LIMIT = 64
DISK_QUOTA_MB = 64  # size of the run directory's tmpfs
PROCESS_LIMIT = 16  # RLIMIT_NPROC inside a run: processes and threads of the sandbox user, the runner included
SANDBOX_UID = SANDBOX_GID = 65534  # nobody / nogroup
RUN_DIR = "/sandbox"  # inside the sandbox: the tmpfs, cwd, HOME and TMPDIR (not /tmp: a checkout and its .venv may live there)
_KILL_GRACE_S = 0.5  # after the child exits, how long stragglers may keep the pipes open
_REAP_WAIT_S = 5.0  # how long to wait for a killed sandbox's init to be gone


class ExecutionStatus(str, Enum):
    """Outcome of a whole run, most severe first: the first that applies is reported."""

    SYNTAX = "syntax"  # the code does not compile
    FORBIDDEN = "forbidden"  # it tried something the hook refuses (fork, socket, write outside, ...) or left processes
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
    exit_code: int | None = None  # negative: killed by that signal (bwrap's 128 + N; an exit(128 + N) reads the same)
    violations: tuple[str, ...] = ()  # refused actions, "event: detail"
    network_isolated: bool = False  # the sandbox started (its runner only ever runs in its own network namespace)

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


class SandboxUnavailable(RuntimeError):
    """The operating-system sandbox cannot be set up on this machine; the message names what is missing."""


# ---------------------------------------------------------------------------------------------------------------
# The child: a self-contained script run with ``python -I -S -B -c`` inside the sandbox. It imports nothing from
# this package (which is not visible inside).
# ---------------------------------------------------------------------------------------------------------------

_RUNNER = r'''
# ctypes is imported before the hook exists: its import opens libc (refused later), and libraries such as numpy
# import it; with it already loaded they import as they do outside.
import ctypes, json, os, resource, site, sys, threading

_RESULT_FD = int(sys.argv[1])
os.closerange(3, _RESULT_FD)  # nothing but stdio and the result pipe is open when the code starts
os.closerange(_RESULT_FD + 1, 65536)
payload = json.loads(sys.stdin.buffer.read().decode())
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
# -S skips site's .pth files (and their imports); the code still gets the venv's prefix and site-packages, and the
# exit/help builtins, as under plain -I.
sys.prefix, sys.exec_prefix = payload["prefix"], payload["exec_prefix"]
sys.path.extend(payload["site_packages"])
site.setquit()
site.setcopyright()
site.sethelper()

_write = os.write
_TOKEN = payload["token"].encode()
_realpath, _fsdecode, _join, _readlink = os.path.realpath, os.fsdecode, os.path.join, os.readlink
_MSG = 2000

def _emit(**record):
    try:
        _write(_RESULT_FD, _TOKEN + (json.dumps(record) + "\n").encode())
    except Exception:
        pass

# Limits first, before any of the code exists in this process.
_mem = payload["memory_mb"] * 1024 * 1024
for _name, _soft, _hard in (
    ("RLIMIT_AS", _mem, _mem),
    # SIGXCPU at the soft limit reads as a timeout; the hard limit's SIGKILL only if that signal is ignored.
    ("RLIMIT_CPU", payload["cpu_s"], payload["cpu_s"] + 1),
    ("RLIMIT_FSIZE", payload["fsize_mb"] * 1024 * 1024, payload["fsize_mb"] * 1024 * 1024),
    ("RLIMIT_NOFILE", payload["nofile"], payload["nofile"]),
    ("RLIMIT_NPROC", payload["nproc"], payload["nproc"]),
    ("RLIMIT_CORE", 0, 0),
):
    try:
        resource.setrlimit(getattr(resource, _name), (_soft, _hard))
    except (ValueError, OSError):
        pass
_PID = os.getpid()
_emit(kind="start", uid=os.getuid(), gid=os.getgid())

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
# Processes the code started and left behind (daemons, unreaped children) die with the run's PID namespace; that
# it tried is a failure of the code, whether or not the audit hook was there to refuse the fork.
_guard.active = True
try:
    _left = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, _PID)]
except BaseException:
    _left = []
if _left:
    _emit(kind="violation", event="process", detail="%d process(es) left running after the tests" % len(_left))
_emit(kind="done")
os._exit(0)  # skip atexit handlers and finalizers the code may have registered
'''


# ---------------------------------------------------------------------------------------------------------------
# The isolation: bubblewrap's command line, the seccomp filter, and a one-time check that it all works here
# ---------------------------------------------------------------------------------------------------------------

_INSTALL_HINT = (
    "install bubblewrap >= 0.8 (Debian/Ubuntu: apt-get install bubblewrap; or `make install`, which does it)"
)

# Classic BPF for seccomp: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}, over struct seccomp_data
# {int nr; u32 arch; u64 ip; u64 args[6]}.
_BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435  # its flags sit in memory the filter cannot read: ENOSYS, and the C library falls back to clone
_CLONE_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
# Refused with EPERM: (x86_64, aarch64) numbers; None where the call does not exist.
_DENIED_SYSCALLS = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "kexec_load": (246, 104), "kexec_file_load": (320, 294), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60), "iopl": (172, None),
    "ioperm": (173, None),
}


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _seccomp_filter(machine: str) -> bytes:
    """The filter bwrap installs before exec: a foreign syscall ABI kills the process; the calls above fail.

    It closes what namespaces alone leave open: a nested user namespace would give the code capabilities over
    a mount namespace of its own (an unbounded tmpfs, for one), and the other calls are kernel attack surface that
    graded code has no use for.
    """
    if machine not in _AUDIT_ARCH:
        raise SandboxUnavailable(f"the sandbox's seccomp filter knows x86_64 and aarch64, not {machine!r}")
    column = 0 if machine == "x86_64" else 1
    deny = _RET_ERRNO | errno.EPERM
    program = [_bpf(_BPF_LD_ABS, 4), _bpf(_BPF_JEQ, _AUDIT_ARCH[machine], 1, 0), _bpf(_BPF_RET, _RET_KILL_PROCESS)]
    program.append(_bpf(_BPF_LD_ABS, 0))  # the syscall number
    if machine == "x86_64":  # the x32 ABI shares the arch value; its numbers carry this bit
        program += [_bpf(_BPF_JGE, _X32_SYSCALL_BIT, 0, 1), _bpf(_BPF_RET, deny)]
    program += [_bpf(_BPF_JEQ, _CLONE3, 0, 1), _bpf(_BPF_RET, _RET_ERRNO | errno.ENOSYS)]
    for numbers in _DENIED_SYSCALLS.values():
        if numbers[column] is not None:
            program += [_bpf(_BPF_JEQ, numbers[column], 0, 1), _bpf(_BPF_RET, deny)]
    # clone(flags, ...): allowed (fork, threads) unless it asks for a new namespace.
    program += [
        _bpf(_BPF_JEQ, _CLONE[machine], 0, 3),
        _bpf(_BPF_LD_ABS, 16),  # low 32 bits of args[0]
        _bpf(_BPF_JSET, _CLONE_NEW_NAMESPACES, 0, 1),
        _bpf(_BPF_RET, deny),
        _bpf(_BPF_RET, _RET_ALLOW),
    ]
    return b"".join(program)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _interpreter_binds() -> list[tuple[str, str]]:
    """(host source, sandbox destination) for the interpreter's own trees, and nothing around them.

    The venv and the base installation are bound at the paths the interpreter knows them by (and at their real
    paths, which symlinks such as a venv's ``bin/python`` point into). Trees under ``/usr`` are bound already.
    """
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    pairs = {(os.path.realpath(p), dest) for p in prefixes for dest in (os.path.abspath(p), os.path.realpath(p))}
    binds: list[tuple[str, str]] = []
    for source, dest in sorted(pairs, key=lambda pair: pair[1]):
        if dest == "/" or any(_is_under(dest, hidden) for hidden in (RUN_DIR, "/proc", "/dev")):
            raise SandboxUnavailable(f"the interpreter lives at {dest!r}, which the sandbox cannot bind read-only")
        if _is_under(dest, "/usr") or any(_is_under(dest, d) for _, d in binds):
            continue
        binds.append((source, dest))
    return binds


def _filesystem_args() -> list[str]:
    """bwrap options for the sandbox's root: read-only system and interpreter, a quota'd run directory, no more."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    made = {"/"}
    for source, dest in _interpreter_binds():
        parents = []
        parent = os.path.dirname(dest)
        while parent not in made:  # bwrap would create them 0700 (root-only) otherwise
            parents.append(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(parents):
            args += ["--perms", "0755", "--dir", directory]
        args += ["--ro-bind", source, dest]
        made.add(dest)
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(DISK_QUOTA_MB * 1024 * 1024), "--perms", "1777", "--tmpfs", RUN_DIR]
    return args + ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", RUN_DIR]


@dataclass(frozen=True)
class _Isolation:
    """How to start one sandboxed runner; built and checked once per process by ``_isolation``."""

    bwrap_args: tuple[str, ...]  # bwrap and its options, without the per-run descriptors
    command: tuple[str, ...]  # what bwrap runs: [setpriv ...] python -I -S -B -c RUNNER (the result fd follows)
    write_id_maps: bool  # root: we write the user namespace's maps, so 65534 inside is 65534 on the host
    seccomp: bytes
    site_packages: tuple[str, ...]


def _configure() -> _Isolation:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {_INSTALL_HINT}")
    as_root = os.geteuid() == 0
    namespaces = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    namespaces += ["--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent", "--new-session"]
    python = [sys.executable, "-I", "-S", "-B", "-c", _RUNNER]
    if as_root:
        # bwrap's own map would make the sandbox user host root (exempt from RLIMIT_NPROC); with ours, ns-root is
        # only bwrap's setup and setpriv's, and setpriv drops to 65534 for good before Python starts.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SandboxUnavailable("setpriv is not installed (Debian/Ubuntu: apt-get install util-linux)")
        privileges = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        drop = [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups", "--inh-caps=-all", "--"]
        command = drop + python
    else:
        privileges = ["--cap-drop", "ALL", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
        command = python
    site_packages = tuple(p for p in site.getsitepackages() if os.path.isdir(p))
    return _Isolation(
        bwrap_args=(bwrap, *namespaces, *privileges, *_filesystem_args()),
        command=tuple(command),
        write_id_maps=as_root,
        seccomp=_seccomp_filter(platform.machine()),
        site_packages=site_packages,
    )


_isolation_ready: _Isolation | None = None
_isolation_lock = threading.Lock()


def _isolation() -> _Isolation:
    """The sandbox set-up, checked with one real run the first time: a broken set-up fails loudly, not per answer."""
    global _isolation_ready
    with _isolation_lock:
        if _isolation_ready is None:
            isolation = _configure()
            check = f"import os\nassert (os.getuid(), os.getgid()) == ({SANDBOX_UID}, {SANDBOX_GID})\n"
            probe = _run(isolation, check, (), "", 20.0, 256)
            if not probe.passed:
                said = (probe.stderr.strip() or probe.message)[-600:]
                raise SandboxUnavailable(
                    f"bubblewrap could not start the sandbox ({probe.status.value}: {said}). It needs bubblewrap "
                    ">= 0.8 and a kernel that allows user, PID, mount and network namespaces (in a container: "
                    f"one that permits unshare and mount; with Debian's sysctl: kernel.unprivileged_userns_clone=1). "
                    + _INSTALL_HINT
                )
            _isolation_ready = isolation
        return _isolation_ready


# ---------------------------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """Nothing from the host's environment: no tokens, no proxies, one thread for numeric libraries."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": RUN_DIR,
        "TMPDIR": RUN_DIR,
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


def _read_child_pid(info_fd: int, deadline: float) -> int | None:
    """The host PID of the sandbox's init, from bwrap's ``--info-fd``; None if bwrap failed before writing it."""
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(info_fd, selectors.EVENT_READ)
        while time.monotonic() < deadline and selector.select(timeout=max(0.0, deadline - time.monotonic())):
            chunk = os.read(info_fd, 4096)
            if not chunk:
                break
            data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _write_id_maps(pid: int) -> None:
    """Map 0 to host 0 (bwrap's set-up in the namespace) and 65534 to host 65534 (the code, after setpriv)."""
    for name, ident in (("uid_map", SANDBOX_UID), ("gid_map", SANDBOX_GID)):
        try:
            with open(f"/proc/{pid}/{name}", "w") as handle:
                handle.write(f"0 0 1\n{ident} {ident} 1\n")
        except (ProcessLookupError, FileNotFoundError):
            return  # bwrap is already gone; its stderr says why
        except OSError as exc:
            raise SandboxUnavailable(f"cannot write the sandbox's {name}: {exc}") from exc


class _Child:
    """One sandbox: the bwrap process, the namespace's init (a pidfd) and the result pipe.

    Killing the init kills every process of the run (the kernel does it when a PID namespace's init dies), and
    the init only reads as exited once they are gone, which is what ``close`` waits for.
    """

    def __init__(self, isolation: _Isolation, deadline: float) -> None:
        self.result_fd, result_w = os.pipe()
        info_r, info_w = os.pipe()
        seccomp_r, seccomp_w = os.pipe()
        block_r, block_w = os.pipe() if isolation.write_id_maps else (-1, -1)
        os.write(seccomp_w, isolation.seccomp)  # a few hundred bytes: fits the pipe
        os.close(seccomp_w)
        extra = ["--info-fd", str(info_w), "--seccomp", str(seccomp_r)]
        if isolation.write_id_maps:
            extra += ["--userns-block-fd", str(block_r)]
        inherited = [fd for fd in (result_w, info_w, seccomp_r, block_r) if fd >= 0]
        try:
            self.proc = subprocess.Popen(
                [*isolation.bwrap_args, *extra, "--", *isolation.command, str(result_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd="/",
                env=_child_env(),
                start_new_session=True,
                pass_fds=inherited,
                close_fds=True,
            )
        except BaseException:
            for fd in (self.result_fd, info_r, block_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in inherited:
                os.close(fd)
        self.pidfd: int | None = None
        try:
            pid = _read_child_pid(info_r, deadline)
            if pid is not None:
                try:
                    self.pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    pass
                if isolation.write_id_maps:
                    _write_id_maps(pid)
            if block_w >= 0:
                try:
                    os.write(block_w, b"1")
                except BrokenPipeError:
                    pass
        except BaseException:
            self.close()
            raise
        finally:
            os.close(info_r)
            if block_w >= 0:
                os.close(block_w)

    def feed(self, payload: bytes) -> None:
        try:
            self.proc.stdin.write(payload)  # the runner reads all of stdin before anything else
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def kill(self) -> None:
        """End the whole run now: the namespace's init, and bwrap's process group should that have failed."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.returncode is None:  # once reaped, its PID (and group) may belong to someone else
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Kill what is left, reap bwrap, wait until the namespace's init (so every process of it) is gone."""
        self.kill()
        try:
            self.proc.wait(timeout=_REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.pidfd is not None:
            with selectors.DefaultSelector() as selector:  # a pidfd reads as ready once the process has exited
                selector.register(self.pidfd, selectors.EVENT_READ)
                selector.select(timeout=_REAP_WAIT_S)
            os.close(self.pidfd)
            self.pidfd = None
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        if self.result_fd >= 0:
            os.close(self.result_fd)
            self.result_fd = -1

    @property
    def exit_code(self) -> int | None:
        """The runner's exit status; bwrap reports death by signal N as 128 + N, read back as -N."""
        code = self.proc.returncode
        return -(code - 128) if code is not None and 128 < code <= 128 + 64 else code


def _collect(child: _Child, deadline: float) -> tuple[_Capture, _Capture, bytes, bool]:
    """Drain stdout, stderr and the result pipe until the runner has exited and the pipes closed.

    When the runner exits, or at the deadline, the whole sandbox is killed. Returns (stdout, stderr, result bytes,
    timed_out).
    """
    proc = child.proc
    out, err = _Capture(OUTPUT_LIMIT_BYTES), _Capture(OUTPUT_LIMIT_BYTES)
    result = _Capture(4 * 1024 * 1024)  # tests are few; a flood here is the code writing to our pipe
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, child.result_fd: result}
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
                child.kill()  # bwrap exits with the runner; whatever the code left behind goes now
            if exited_at is not None and (not selector.get_map() or now - exited_at > _KILL_GRACE_S):
                break
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
    return out, err, bytes(result.data), timed_out


def run_tests(
    code: str,
    tests: Sequence[str],
    setup_code: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
) -> ExecutionResult:
    """Execute ``setup_code``, then ``code``, then each assert in ``tests``, in a fresh sandbox.

    ``timeout_s`` bounds the whole run (wall clock, sandbox set-up included); ``memory_mb`` each process's address
    space. Raises ``SandboxUnavailable`` when the sandbox cannot be set up on this machine.
    """
    return _run(_isolation(), code, tuple(tests), setup_code, timeout_s, memory_mb)


def _run(
    isolation: _Isolation, code: str, tests: tuple[str, ...], setup_code: str, timeout_s: float, memory_mb: int
) -> ExecutionResult:
    token = secrets.token_hex(16)
    payload = json.dumps(
        {
            "token": token,
            "code": code,
            "tests": list(tests),
            "setup_code": setup_code,
            "prefix": sys.prefix,
            "exec_prefix": sys.exec_prefix,
            "site_packages": list(isolation.site_packages),
            "memory_mb": int(memory_mb),
            "cpu_s": int(timeout_s) + 1,
            "fsize_mb": FILE_SIZE_LIMIT_MB,
            "nofile": OPEN_FILES_LIMIT,
            "nproc": PROCESS_LIMIT,
        }
    ).encode()
    start = time.monotonic()
    deadline = start + timeout_s
    child = _Child(isolation, deadline)
    try:
        child.feed(payload)
        out, err, raw_result, timed_out = _collect(child, deadline)
    finally:
        child.close()
    duration_s = time.monotonic() - start
    return _interpret(
        tests, token, raw_result, child.exit_code, timed_out, out.text(), err.text(), duration_s, timeout_s
    )


def _records(raw_result: bytes, token: str) -> list[dict]:
    """The runner's records: lines that start with this run's token and parse as JSON objects; nothing else."""
    prefix = token.encode()
    records = []
    for line in raw_result.split(b"\n"):
        if not line.startswith(prefix):
            continue
        try:
            record = json.loads(line[len(prefix) :].decode(errors="replace"))
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _interpret(
    tests: tuple[str, ...],
    token: str,
    raw_result: bytes,
    exit_code: int | None,
    timed_out: bool,
    stdout: str,
    stderr: str,
    duration_s: float,
    timeout_s: float,
) -> ExecutionResult:
    """Turn the streamed records and the exit code into one status, by the precedence of ``ExecutionStatus``."""
    records = _records(raw_result, token)
    kinds = {r.get("kind") for r in records}
    violations = tuple(f"{r.get('event')}: {r.get('detail')}" for r in records if r.get("kind") == "violation")
    syntax = next((r for r in records if r.get("kind") == "syntax"), None)
    failed_phase = next((r for r in records if r.get("kind") == "phase" and not r.get("ok")), None)
    by_index = {r.get("index"): r for r in records if r.get("kind") == "test"}
    network_isolated = "start" in kinds  # the runner only ever starts inside its own network namespace

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
