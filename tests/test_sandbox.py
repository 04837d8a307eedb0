"""The sandbox: correct code passes, wrong code fails with the assert named, and hostile code is contained.

Every test runs real sandboxes (bubblewrap, about 50-100 ms each). Limits are kept small (1-3 s, 256 MB) so the
file stays fast; nothing here asserts on timing beyond "well within the deadline".

The escape battery submits each attack as generated code, once with the in-process audit hook on and once after
switching it off the way hostile code can, and checks from the host that nothing happened: the run is not graded
``passed``, this process (the one that launched it) is alive with its environment unchanged, files outside are
unchanged, nothing it read reached its output, nothing connected, and no process of the run is left.
"""

import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sysaware.tasks import sandbox
from sysaware.tasks.sandbox import (
    DISK_QUOTA_MB,
    ExecutionStatus,
    SandboxJob,
    SandboxUnavailable,
    TestStatus,
    run_tests,
    run_tests_batch,
)

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ("assert add(1, 2) == 3", "assert add(-1, 1) == 0")


# Wall-clock deadlines (sandbox set-up included) far above what a run needs (< 0.4 s here): on a loaded CI machine a
# 2 s deadline expired before the first assert ran (every test NOT_RUN). Tests of the deadline set their own.
ROOMY_TIMEOUT_S = 10.0


def run(code, tests=("assert True",), **overrides):
    options = {"timeout_s": ROOMY_TIMEOUT_S, "memory_mb": 256} | overrides
    return run_tests(textwrap.dedent(code), list(tests), **options)


def host_processes_named(marker):
    """Host PIDs whose name or command line carries ``marker`` (a sandboxed process that outlived its run)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as comm, open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                text = comm.read() + cmdline.read()
        except OSError:
            continue
        if marker.encode() in text:
            found.append(int(entry))
    return found


def prelude(marker, hook_off):
    """Code that names its process ``marker`` (forks inherit it) and then leaves the audit hook on or off.

    Switching the hook off uses the runner's own re-entrancy flag, as hostile code can: the OS layers must hold
    without it.
    """
    return (
        "import sys as _sys\n"
        "_sys.modules['__main__']._guard.active = True\n"
        f"with open('/proc/self/comm', 'w') as _comm:\n    _comm.write({marker!r})\n"
        f"_sys.modules['__main__']._guard.active = {hook_off}\n"
    )


HOOK = pytest.mark.parametrize("hook_off", [False, True], ids=["hook-on", "hook-off"])

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
    # 20 MB through the pipe takes a few seconds on a loaded 2-core machine: the deadline is not what is tested here.
    result = run("print('x' * 20_000_000)\n" + ADD, ADD_TESTS, timeout_s=15.0)
    assert result.passed
    assert len(result.stdout) < 20_000 and "truncated" in result.stdout


def test_closing_stdout_does_not_hide_the_result():
    result = run("import sys, os\nsys.stdout.close()\nos.close(1)\nos.close(2)\n" + ADD, ADD_TESTS)
    assert result.passed


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("SYSAWARE_TEST_SECRET", "hunter2")
    result = run("import os\nassert 'SYSAWARE_TEST_SECRET' not in os.environ, dict(os.environ)\n")
    assert result.passed, result.message


def test_run_directory_is_private_writable_and_gone_afterwards():
    name = f"scratch-{secrets.token_hex(4)}.txt"
    code = f"import os\nprint(os.getcwd())\nopen({name!r}, 'w').write('ok')\nassert open({name!r}).read() == 'ok'\n"
    result = run(code)
    assert result.passed, result.message
    assert result.stdout.strip() == sandbox.RUN_DIR
    assert not os.path.exists(os.path.join(sandbox.RUN_DIR, name))  # the host's /tmp never saw it
    assert run(f"import os\nassert not os.path.exists({name!r})\n").passed  # nor does the next run


# ---- the isolation itself ----------------------------------------------------------------------------------------


def test_the_code_runs_in_its_own_namespaces_as_nobody_without_privileges():
    names = ("pid", "mnt", "net", "ipc", "uts", "user")
    code = (
        "import os\n"
        f"for ns in {names!r}:\n    print(ns, os.readlink('/proc/self/ns/' + ns))\n"
        "print('ids', os.getuid(), os.getgid(), len(os.getgroups()))\n"
        "print(open('/proc/self/status').read())\n"
    )
    result = run(code)
    assert result.passed and result.network_isolated, result.message
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip() and " " in line.strip())
    for ns in names:
        assert lines[ns] != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert lines["ids"] == "65534 65534 0"
    status = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, caps
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"


def test_the_filesystem_view_holds_only_the_system_the_interpreter_and_the_run_directory():
    project = str(Path(__file__).resolve().parent.parent)
    code = (
        "import os\n"
        "print(*sorted(os.listdir('/')))\n"
        # The project's files are not visible. (Its folder may exist as a path when the venv lives inside it, as
        # .venv does in a checkout: then the venv is all it holds.)
        f"for path in ('/etc', '/home', '/etc/shadow', {project + '/sysaware'!r}, {project + '/tests'!r}, "
        f"{project + '/README.md'!r}, '/root/.ssh', '/sys'):\n"
        "    assert not os.path.exists(path), path\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert len(pids) <= 2, pids  # bwrap's init and this process\n"
        "for path in ('/', '/usr', os.__file__, '/dev/shm'):\n"
        "    assert os.statvfs(path).f_flag & os.ST_RDONLY, path\n"
        "assert os.statvfs('.').f_blocks * os.statvfs('.').f_frsize <= %d\n" % (DISK_QUOTA_MB << 20)
    )
    result = run(code)
    assert result.passed, result.message
    top = set(result.stdout.split())
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "proc", "dev", sandbox.RUN_DIR.strip("/").split("/")[0]}
    allowed |= {Path(p).resolve().parts[1] for p in (sys.prefix, sys.base_prefix)}
    allowed |= {Path(p).absolute().parts[1] for p in (sys.prefix, sys.base_prefix)}
    assert top <= allowed, top - allowed


def test_missing_bubblewrap_fails_loudly_instead_of_running_unsandboxed(monkeypatch):
    monkeypatch.setattr(sandbox, "_isolation_ready", None)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_tests(ADD, ADD_TESTS)


def test_a_bubblewrap_that_cannot_sandbox_fails_loudly_with_its_reason(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    real_which = shutil.which
    monkeypatch.setattr(sandbox, "_isolation_ready", None)
    which = lambda name, *args, **kwargs: str(fake) if name == "bwrap" else real_which(name)
    monkeypatch.setattr(sandbox.shutil, "which", which)
    with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace"):
        run_tests(ADD, ADD_TESTS)


# ---- the result channel ----------------------------------------------------------------------------------------


def test_forged_result_lines_do_not_turn_a_failure_into_a_pass():
    records = [
        {"kind": "start"},
        {"kind": "phase", "phase": "setup", "ok": True},
        {"kind": "phase", "phase": "code", "ok": True},
        {"kind": "test", "index": 0, "ok": True},
        {"kind": "done"},
    ]
    code = (
        "import json, os\n"
        f"lines = [json.dumps(r) + '\\n' for r in {records!r}]\n"
        "lines += ['0' * 32 + line for line in lines]  # and with a guessed token\n"
        "for fd in range(64):\n"
        "    for line in lines:\n"
        "        try:\n"
        "            os.write(fd, line.encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "os._exit(0)\n"
    )
    result = run(code, ["assert False"])
    assert not result.passed and result.status is ExecutionStatus.ERROR
    assert result.tests[0].status is TestStatus.NOT_RUN


# ---- the audit hook (second line) --------------------------------------------------------------------------------


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
        "import socket\nsocket.socket()",
        "import sys\nopen(sys.prefix + '/escaped.txt', 'w')",
        "import os, sys\nos.symlink(sys.prefix, 'out')\nopen('out/escaped.txt', 'w')",
        "import os, sys\nfd = os.open(sys.prefix, os.O_RDONLY)",
    ],
)
def test_the_hook_refuses_and_reports_ordinary_misbehaviour(code):
    result = run(code)
    assert result.status is ExecutionStatus.FORBIDDEN, result.message
    assert not os.path.exists(os.path.join(sys.prefix, "escaped.txt"))


def test_switching_the_hook_off_really_switches_it_off():
    # The premise of the "hook-off" half of the battery: after the prelude, the hook refuses nothing.
    result = run(prelude("sbx-premise", True) + "import ctypes\nassert ctypes.CDLL(None).getpid() > 0\n")
    assert result.passed and not result.violations, result.message


# ---- the escape battery ------------------------------------------------------------------------------------------
# Placeholders, filled per test: HOST_PID (this process, which launches the runs), BYSTANDER_PID (another host
# process, with the secret in its environment), TERCES (the host's secret,
# reversed so the code text never holds it), SECRET_FILE, CANARY_FILE, CANARY_DIR, TCP_PORT, UNIX_PATH,
# ABSTRACT_NAME. Each attack ends by asserting it worked, so it can only pass by escaping.

LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
ANY_OF = (  # the attack worked if any one of ``attempts`` did
    "ok = []\nfor attempt in attempts:\n    try:\n        attempt()\n        ok.append(attempt)\n"
    "    except OSError:\n        pass\nassert ok\n"
)

ATTACKS = {
    # Signals to the launching process (this one) and to the sandbox's parent, by every API Python has.
    "os.kill-host": "import os, signal\nos.kill(HOST_PID, signal.SIGKILL)\n",
    "os.kill-parent": (
        "import os, signal, time\nppid = os.getppid()\nos.kill(ppid, signal.SIGKILL)\ntime.sleep(0.2)\n"
        "try:\n    os.kill(ppid, 0)\nexcept ProcessLookupError:\n    pass\n"
        "else:\n    raise SystemExit('parent alive')\n"
    ),
    "os.kill-everyone": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    "os.killpg-host": "import os, signal\nos.killpg(os.getpgid(HOST_PID), signal.SIGKILL)\n",
    "os.killpg-parent": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
    "pthread_kill-host": "import signal\nsignal.pthread_kill(HOST_PID, signal.SIGKILL)\n",
    "pidfd-host": "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(HOST_PID), signal.SIGKILL)\n",
    "pidfd-parent": "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)\n",
    "libc-kill": LIBC + "for pid in (HOST_PID, BYSTANDER_PID, os.getppid()):\n    assert libc.kill(pid, 9) == 0, ctypes.get_errno()\n",
    "kill-command": "import subprocess\nsubprocess.run(['kill', '-KILL', 'HOST_PID'], check=True)\n",
    # The launcher's environment and memory; the environment of any other process (a host process holds the secret
    # in its environment from the start, where /proc/PID/environ shows it).
    "host-environ": "assert open('/proc/HOST_PID/environ', 'rb').read()\n",
    "bystander-environ": "assert 'TERCES'[::-1].encode() in open('/proc/BYSTANDER_PID/environ', 'rb').read()\n",
    "host-mem": (
        "maps = open('/proc/HOST_PID/maps').read().splitlines()\n"
        "start = int(next(line for line in maps if ' r' in line).split('-')[0], 16)\n"
        "with open('/proc/HOST_PID/mem', 'rb') as mem:\n    mem.seek(start)\n    assert mem.read(4)\n"
    ),
    "every-environ": (
        "import os\nseen = b''\nfor pid in os.listdir('/proc'):\n    for name in ('environ', 'cmdline'):\n"
        "        try:\n            seen += open(f'/proc/{pid}/{name}', 'rb').read()\n        except OSError:\n"
        "            pass\nassert 'TERCES'[::-1].encode() in seen\n"
    ),
    "process_vm_readv-host": LIBC
    + (
        "class Iov(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "buf = ctypes.create_string_buffer(8)\nlocal, remote = Iov(ctypes.addressof(buf), 8), Iov(0x400000, 8)\n"
        "got = libc.process_vm_readv(HOST_PID, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n"
        "assert got == 8, ctypes.get_errno()\n"
    ),
    # Secrets in files outside the run directory.
    "etc-shadow": "assert 'root:' in open('/etc/shadow').read()\n",
    "secret-file": "assert open('SECRET_FILE').read() == 'TERCES'[::-1]\n",
    "search-the-disk": (
        "import os, sys\nskip = ('/proc', '/sys', '/dev', '/usr', sys.prefix, sys.base_prefix)\nfound = False\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    dirs[:] = [d for d in dirs if not os.path.join(root, d).startswith(skip)]\n"
        "    for name in files:\n        try:\n"
        "            found |= 'TERCES'[::-1].encode() in open(os.path.join(root, name), 'rb').read()\n"
        "        except OSError:\n            pass\nassert found\n"
    ),
    # Writing, truncating, re-moding or creating files outside, by paths, descriptors and libraries.
    "open-w": "open('CANARY_FILE', 'w').write('pwned')\n",
    "open-a": "open('CANARY_FILE', 'a').write('pwned')\n",
    "os.open-trunc": "import os\nos.close(os.open('CANARY_FILE', os.O_WRONLY | os.O_TRUNC))\n",
    "os.truncate": "import os\nos.truncate('CANARY_FILE', 0)\n",
    "os.chmod": "import os\nos.chmod('CANARY_FILE', 0o777)\n",
    "os.utime": "import os\nos.utime('CANARY_FILE', (0, 0))\n",
    "os.remove": "import os\nos.remove('CANARY_FILE')\n",
    "os.rename": "import os\nos.rename('CANARY_FILE', 'stolen')\n",
    "create-file": "open('CANARY_DIR/new.txt', 'x').write('pwned')\n",
    "os.mkdir": "import os\nos.mkdir('CANARY_DIR/newdir')\n",
    "dir_fd": (
        "import os\nfd = os.open('CANARY_DIR', os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.close(os.open('new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n"
    ),
    "symlink-out": "import os\nos.symlink('CANARY_DIR', 'out')\nopen('out/new.txt', 'w').write('pwned')\n",
    "hard-link": "import os\nos.link('CANARY_FILE', 'hard')\nopen('hard', 'w').write('pwned')\n",
    "shutil": (
        "import shutil\nopen('src.txt', 'w').write('pwned')\nattempts = [\n"
        "    lambda: shutil.copy('src.txt', 'CANARY_FILE'),\n"
        "    lambda: shutil.copy('src.txt', 'CANARY_DIR/new.txt'),\n"
        "    lambda: shutil.move('CANARY_FILE', 'moved.txt'),\n    lambda: shutil.chown('CANARY_FILE', 0, 0),\n"
        "    lambda: shutil.rmtree('CANARY_DIR'),\n]\n" + ANY_OF
    ),
    "pathlib": (
        "import pathlib\nattempts = [\n    lambda: pathlib.Path('CANARY_FILE').write_text('pwned'),\n"
        "    lambda: pathlib.Path('CANARY_FILE').chmod(0o777),\n"
        "    lambda: pathlib.Path('CANARY_DIR/new.txt').touch(),\n"
        "    lambda: pathlib.Path('CANARY_FILE').unlink(),\n"
        "    lambda: pathlib.Path('CANARY_FILE').rename('here'),\n]\n"
        + ANY_OF
    ),
    "libc-files": LIBC
    + (
        "results = [\n    libc.open(b'CANARY_FILE', os.O_WRONLY | os.O_TRUNC),\n"
        "    libc.creat(b'CANARY_DIR/new.txt', 0o644),\n    libc.truncate(b'CANARY_FILE', 0),\n"
        "    libc.chmod(b'CANARY_FILE', 0o777),\n    libc.unlink(b'CANARY_FILE'),\n"
        "    libc.rename(b'CANARY_FILE', b'here'),\n    libc.mkdir(b'CANARY_DIR/newdir', 0o755),\n]\n"
        "assert any(r >= 0 for r in results), results\n"
    ),
    # The read-only trees the interpreter needs (present inside, so only the mount flags stop these).
    "write-the-venv": "import sys\nopen(sys.prefix + '/ESCAPED', 'w').write('pwned')\n",
    "append-the-stdlib": "import os\nopen(os.__file__, 'a').write('# pwned')\n",
    "chmod-the-interpreter": "import os, sys\nos.chmod(os.path.realpath(sys.executable), 0o777)\n",
    "libc-the-interpreter": LIBC
    + (
        "import sys\nexe = os.path.realpath(sys.executable).encode()\nresults = [libc.chmod(exe, 0o777), "
        "libc.open(exe, os.O_WRONLY | os.O_APPEND), libc.creat(sys.prefix.encode() + b'/ESCAPED', 0o644)]\n"
        "assert any(r >= 0 for r in results), results\n"
    ),
    "write-root-usr-shm-proc": (
        "paths = ('/ESCAPED', '/usr/ESCAPED', '/dev/shm/ESCAPED', '/proc/sys/kernel/hostname', '/proc/sysrq-trigger')\n"
        "attempts = [lambda p=p: open(p, 'w').write('x') for p in paths]\n" + ANY_OF
    ),
    # Privileges: back to root, a nested user namespace (capabilities over mounts of its own), a mount.
    "setuid-root": "import os\nos.setuid(0)\n",
    "nested-userns": LIBC + "assert libc.unshare(0x10000000 | 0x00020000) == 0, ctypes.get_errno()\n",
    "mount-tmpfs": LIBC + "assert libc.mount(b'none', b'/tmp', b'tmpfs', 0, b'size=10g') == 0, ctypes.get_errno()\n",
    # The network: a listening TCP socket, a Unix socket in a directory and an abstract one, all on the host.
    "tcp-to-host": "import socket\nsocket.create_connection(('127.0.0.1', TCP_PORT), timeout=1).sendall(b'hello')\n",
    "unix-socket": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('UNIX_PATH')\ns.sendall(b'hello')\n",
    "abstract-socket": (
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0ABSTRACT_NAME')\ns.sendall(b'hello')\n"
    ),
}


@dataclass
class Host:
    """What the attacks aim at, and a fingerprint of it to compare before and after."""

    secret: str
    secret_file: Path
    canary_file: Path
    canary_dir: Path
    listeners: list
    bystander: subprocess.Popen  # a host process with the secret in its environment
    values: dict

    def fill(self, code: str) -> str:
        for name, value in self.values.items():
            code = code.replace(name, str(value))
        return code

    def fingerprint(self):
        def entry(path):
            info = os.lstat(path)
            return (stat.S_IMODE(info.st_mode), info.st_size, info.st_mtime_ns, info.st_uid)

        exe = os.path.realpath(sys.executable)
        return {
            "environ": dict(os.environ),
            "bystander alive": self.bystander.poll() is None,
            "canary": (entry(self.canary_file), self.canary_file.read_text()),
            "canary_dir": sorted(os.listdir(self.canary_dir)),
            "secret": self.secret_file.read_text(),
            "interpreter": entry(exe),
            "venv": sorted(os.listdir(sys.prefix)),
        }

    def assert_untouched(self, before, result, marker):
        assert not result.passed, f"{result.status.value}: {result.message}"
        assert self.fingerprint() == before
        assert self.secret not in result.stdout + result.stderr + result.message
        assert host_processes_named(marker) == []
        for listener in self.listeners:
            with pytest.raises(BlockingIOError):
                listener.accept()


@pytest.fixture
def host(monkeypatch, tmp_path):
    secret = "sysaware-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("SYSAWARE_ESCAPE_SECRET", secret)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    canary_dir = tmp_path / "outside"
    canary_dir.mkdir()
    canary_file = canary_dir / "canary.txt"
    canary_file.write_text("precious")
    short = tempfile.mkdtemp(prefix="sbx")  # Unix socket paths are short
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(os.path.join(short, "sock"))
    abstract_name = "sysaware-test-" + secrets.token_hex(6)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    listeners = [tcp, unix, abstract]
    bystander = subprocess.Popen(["sleep", "600"], env={"PATH": "/usr/bin:/bin", "SYSAWARE_ESCAPE_SECRET": secret})
    for listener in listeners:
        listener.listen(4)
        listener.setblocking(False)
    values = {
        "HOST_PID": os.getpid(),
        "BYSTANDER_PID": bystander.pid,
        "TERCES": secret[::-1],
        "SECRET_FILE": secret_file,
        "CANARY_FILE": canary_file,
        "CANARY_DIR": canary_dir,
        "TCP_PORT": tcp.getsockname()[1],
        "UNIX_PATH": os.path.join(short, "sock"),
        "ABSTRACT_NAME": abstract_name,
    }
    try:
        yield Host(secret, secret_file, canary_file, canary_dir, listeners, bystander, values)
    finally:
        bystander.kill()
        bystander.wait()
        for listener in listeners:
            listener.close()
        shutil.rmtree(short, ignore_errors=True)


def attack(host, code, hook_off, **overrides):
    """Run ``code`` as an answer, tagged so survivors can be found; returns (result, marker, fingerprint before)."""
    marker = "sbx" + secrets.token_hex(5)
    before = host.fingerprint()
    options = {"timeout_s": ROOMY_TIMEOUT_S, "memory_mb": 256} | overrides
    result = run_tests(prelude(marker, hook_off) + host.fill(code), ["assert True"], **options)
    return result, marker, before


@HOOK
@pytest.mark.parametrize("name", list(ATTACKS))
def test_escape_attempt_is_contained(host, name, hook_off):
    result, marker, before = attack(host, ATTACKS[name], hook_off)
    host.assert_untouched(before, result, marker)
    assert result.network_isolated  # the sandbox itself started: the attack failed inside it


@HOOK
def test_a_daemon_does_not_outlive_the_run(host, hook_off):
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        late = \"import time; time.sleep(0.5); open('CANARY_DIR/late.txt', 'w').write('late')\"\n"
        "        os.execv(sys.executable, [sys.executable, '-c', late, 'MARKER'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
    )
    result, marker, before = attack(host, code.replace("MARKER", "MARKER-" + host.secret[-6:]), hook_off)
    assert result.status is ExecutionStatus.FORBIDDEN, result.message  # refused, or caught leaving processes
    time.sleep(0.8)  # past the daemon's wake-up
    host.assert_untouched(before, result, marker)
    assert host_processes_named("MARKER-" + host.secret[-6:]) == []
    assert not (host.canary_dir / "late.txt").exists()


def test_the_wall_clock_deadline_kills_the_whole_run(host):
    code = "import os\nif os.fork() == 0:\n    while True:\n        pass\nwhile True:\n    pass\n"
    result, marker, before = attack(host, code, True, timeout_s=1.0)
    assert result.status is ExecutionStatus.TIMEOUT and result.duration_s < 3.0
    host.assert_untouched(before, result, marker)


# ---- bombs -------------------------------------------------------------------------------------------------------


def test_fork_bomb_without_the_hook_is_held_by_the_process_limit(host):
    result, marker, before = attack(host, "import os\nwhile True:\n    os.fork()\n", True)
    assert result.status in (ExecutionStatus.FORBIDDEN, ExecutionStatus.ERROR), result.message
    assert "Resource temporarily unavailable" in result.message or "left running" in result.message
    host.assert_untouched(before, result, marker)


def test_thread_bomb_is_held_by_the_process_limit(host):
    code = "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(30,)).start()\n"
    result, marker, before = attack(host, code, True)
    assert result.status is ExecutionStatus.ERROR and "can't start new thread" in result.message
    host.assert_untouched(before, result, marker)


@HOOK
def test_memory_bomb_is_stopped_by_the_memory_limit(host, hook_off):
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(10_000_000))\n"
    result, marker, before = attack(host, code, hook_off)
    assert result.status is ExecutionStatus.MEMORY
    host.assert_untouched(before, result, marker)


def test_single_huge_allocation_is_a_memory_failure():
    result = run("def f():\n    return bytearray(8 * 1024**3)\n", ["assert f()"], memory_mb=256)
    assert result.status is ExecutionStatus.MEMORY


@HOOK
def test_disk_bomb_fills_only_the_run_directory_quota(host, hook_off):
    code = (
        "import os\nchunk = b'x' * (1 << 20)\nwritten = 0\n"
        "try:\n    for n in range(10_000):\n        with open('fill%d' % n, 'wb') as f:\n"
        "            for _ in range(8):\n                f.write(chunk)\n                written += 1\n"
        "finally:\n    print('written MB', written)\n"
    )
    result, marker, before = attack(host, code, hook_off)
    assert result.status is ExecutionStatus.ERROR and "No space left on device" in result.message
    assert DISK_QUOTA_MB - 8 <= int(result.stdout.split()[-1]) <= DISK_QUOTA_MB
    host.assert_untouched(before, result, marker)


def test_one_huge_file_is_stopped_by_the_file_size_limit(host):
    code = "with open('big', 'wb') as f:\n    f.write(b'x' * (sandbox.FILE_SIZE_LIMIT_MB + 1) * 2**20)\n"
    code = code.replace("sandbox.FILE_SIZE_LIMIT_MB", str(sandbox.FILE_SIZE_LIMIT_MB))
    result, marker, before = attack(host, code, True)
    assert result.status is ExecutionStatus.ERROR and "File too large" in result.message
    host.assert_untouched(before, result, marker)


# ---- batches ---------------------------------------------------------------------------------------------------


def test_batch_returns_results_in_order_and_reports_each_one():
    jobs = [
        SandboxJob(ADD, ADD_TESTS, timeout_s=ROOMY_TIMEOUT_S),
        SandboxJob("def add(a, b):\n    return 0\n", ADD_TESTS, timeout_s=ROOMY_TIMEOUT_S),
        SandboxJob("while True:\n    pass\n", ADD_TESTS, timeout_s=1.0),
        SandboxJob("import os\nos.fork()\n", ADD_TESTS, timeout_s=ROOMY_TIMEOUT_S),
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
