"""Run untrusted Python (model-written code) in a sandboxed process.

Model code is hostile by default: it is never executed in the scoring process. Each run is a
fresh interpreter (``python -I -S -B``, standard library only) started through these layers,
the strongest the host allows (:func:`sandbox_layers` says which are active):

========================  ===================================================================
layer                     what it does
========================  ===================================================================
``wall-timeout``          the run is killed (SIGKILL to its whole process group) after
                          ``wall_time_s``; ``timeout(1)`` wraps it too, so it dies even if
                          the scoring process dies first
``process-group``         own session and process group, killed as a whole
``rlimits``               CPU seconds, address space, file size (also caps stdout/stderr),
                          process count (RLIMIT_NPROC), open files, no core dumps
``scrubbed-env``          environment rebuilt from scratch: no secrets, no PYTHON* variables
``temp-workdir``          an empty working folder, removed afterwards
``no-new-privs``          setuid binaries cannot regain privileges
``uid-drop``              started as root: the program runs as its own unused uid/gid (so
                          RLIMIT_NPROC applies, it cannot signal other processes or write
                          root-owned files)
``cap-drop``              started as a normal user inside a user namespace: every capability
                          is dropped
``pid-namespace``         ``unshare --pid``: it sees and can signal only its own processes;
                          all of them die with it
``net-namespace``         ``unshare --net``: no network interface but a down loopback
``mount-namespace``       ``unshare --mount`` + ``pivot_root`` into a fresh root: read-only
                          /usr and the Python install, a size-capped tmpfs /work and /tmp, a
                          minimal /dev, its own /proc; host files (the project, /etc, /root,
                          /home) are not reachable at all
========================  ===================================================================

Modes, tried in order at first use (a probe run must succeed) and cached per process:
``"namespaces"`` (all layers; real root, or an unprivileged user namespace) and ``"rlimits"``
(no namespaces: no network isolation, the file system is protected only by file permissions
and, as root, the uid drop). Force one with ``GRPO_SANDBOX=namespaces|rlimits``.

What it protects against: infinite loops, fork bombs, memory bombs, unbounded output, disk
filling, reading/writing/deleting files outside the working folder, network access, reading
the parent's environment, signalling or killing the parent, leftover processes.

What it does NOT protect against:

* kernel exploits (no seccomp filter; use a VM or gVisor for truly adversarial code);
* CPU-time side channels and other runs' timing;
* in "assert" mode the program and the tests share one interpreter (tests call the program's
  functions). The harness binds what it needs before the program runs, restores pristine
  builtins before each test, reports over a private channel with a per-run token, and counts a
  test only if it reported ``pass`` *after* running it. That defeats early ``sys.exit(0)`` /
  ``os._exit(0)``, printing fake results, and patching ``builtins``; it does not stop a program
  written to introspect the harness (frames, ``gc``, audit hooks) and forge its report, nor
  objects whose ``__eq__`` always returns True. Untrusted *policies* do find such hacks in
  long RL runs: watch pass rates that rise without better answers.
* with the "rlimits" mode only: network access, and reading world-readable files.
"""

from __future__ import annotations

import itertools
import logging
import marshal
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_HARNESS = str(Path(__file__).with_name("_sandbox_harness.py"))  # read by the interpreter as root
SETUP_FAILED = 121  # the harness's exit status when the sandbox could not be built

MODES = ("namespaces", "rlimits")
_COMMON_LAYERS = ("wall-timeout", "process-group", "rlimits", "scrubbed-env", "temp-workdir",
                  "no-new-privs")
_NS_LAYERS = ("pid-namespace", "net-namespace", "mount-namespace")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    wall_time_s: float = 10.0  # killed after this many seconds of wall-clock time
    cpu_time_s: float = 10.0  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS (address space; Python itself needs ~30 MB)
    max_processes: int = 16  # RLIMIT_NPROC (threads count too)
    max_file_mb: float = 8.0  # RLIMIT_FSIZE: any file written, stdout/stderr included
    max_output_bytes: int = 64 * 1024  # stdout / stderr read back (each); more is truncated
    max_open_files: int = 64  # RLIMIT_NOFILE
    workdir_mb: int = 64  # size of the tmpfs /work (namespaces mode)


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run. ``ok`` means it exited with status 0 within its limits."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    output_truncated: bool = False
    setup_failed: bool = False  # the sandbox could not be built: the program never ran
    verdicts: tuple[str, ...] = field(default=(), repr=False)  # harness report lines

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.setup_failed

    def describe(self) -> str:
        if self.setup_failed:
            return f"sandbox setup failed: {self.stderr.strip()[-300:]}"
        if self.timed_out:
            return f"timed out after {self.wall_s:.1f} s"
        code = self.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"


@dataclass(frozen=True)
class TestRun:
    """Outcome of an assert-style test run: one pass flag per test."""

    passed: tuple[bool, ...]
    result: SandboxResult
    program_error: str | None = None  # exception the program raised while loading, if any
    tampered: bool = False  # the verdict channel held lines the harness did not write

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


# ---------------------------------------------------------------------------- host facts
_RUN_COUNTER = itertools.count()


def _unique_uid() -> int:
    # A fresh uid per run (pid x run counter), far above real users: RLIMIT_NPROC counts and
    # kill(-1) reaches only this run's processes, not those of a concurrent run nor the
    # not-yet-reaped leftovers of the previous one (zombies count towards RLIMIT_NPROC).
    n = next(_RUN_COUNTER) % 4096
    return 2_000_000_000 + (os.getpid() * 4096 + n) % 2**30


def _is_root() -> bool:
    return os.geteuid() == 0


def _python() -> str:
    """The sandbox interpreter: ``GRPO_SANDBOX_PYTHON``, else this Python's base interpreter
    (outside any virtualenv: programs get the standard library only)."""
    py = os.environ.get("GRPO_SANDBOX_PYTHON") or getattr(sys, "_base_executable", None)
    return os.path.realpath(py or sys.executable)


def _world_usable(path: str) -> bool:
    """Can any uid reach and run ``path`` (o+x on every directory above it)?"""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & 0o001:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def _plan(mode: str) -> tuple[str, bool]:
    """(interpreter, drop to a dedicated uid?) for a run in ``mode``."""
    py = _python()
    if not _is_root():
        return py, False
    if mode == "namespaces":  # its binds make the interpreter reachable by any uid
        return py, True
    # No mount namespace: the dropped uid must reach the interpreter and its standard library
    # on the host (a pyenv build under /root, mode 0700, is out of reach).
    explicit = bool(os.environ.get("GRPO_SANDBOX_PYTHON"))
    candidates = (py,) if explicit else (py, "/usr/bin/python3", "/usr/local/bin/python3")
    for cand in candidates:
        prefix = sys.base_prefix if cand == py and not explicit else os.path.dirname(os.path.dirname(cand))
        if os.path.exists(cand) and _world_usable(cand) and _world_usable(prefix):
            return os.path.realpath(cand), True
    log.warning("grpo sandbox: no interpreter reachable by an unprivileged uid; "
                "running sandboxed code as root (RLIMIT_NPROC does not bind root)")
    return py, False


def _ro_binds(python: str) -> list[str]:
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    for p in (sys.base_prefix, os.path.dirname(os.path.dirname(python))):
        if not any(p == q or p.startswith(q + "/") for q in paths):
            paths.append(p)
    return paths


def _scratch_dir() -> str | None:
    # The run's private files (job, outputs) are small and short-lived: keep them in memory.
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _nproc_base() -> int:
    # Without a uid of its own (non-root, no namespace) RLIMIT_NPROC counts every process of
    # the user, so the limit is set relative to how many the user runs now.
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return n


# ---------------------------------------------------------------------------- running
def _launch(job: dict, stdin: bytes | None, limits: SandboxLimits, mode: str) -> SandboxResult:
    root = _is_root()
    python, drop_uid = _plan(mode)
    base = tempfile.mkdtemp(prefix="grpo-sbx-", dir=_scratch_dir())
    uid = _unique_uid() if drop_uid else None
    token = secrets.token_hex(8)
    try:
        workdir = os.path.join(base, "work")
        os.mkdir(workdir, 0o700)
        if mode == "namespaces":
            newroot = os.path.join(base, "root")
            os.mkdir(newroot, 0o700)
            job["fs"] = {"newroot": newroot, "ro_binds": _ro_binds(python), "uid": uid,
                         "work_mb": limits.workdir_mb, "tmp_mb": 16}
            job["cwd"] = "/work"
            home = "/work"
            nproc = limits.max_processes
        else:
            job["fs"] = None
            job["cwd"] = workdir
            home = workdir
            if uid is not None:
                os.chown(workdir, uid, uid)
            nproc = limits.max_processes + (0 if uid is not None else _nproc_base() + 64)
        job.update(
            token=token, uid=uid, drop_caps=(mode == "namespaces" and not root),
            limits={"cpu_s": max(1, int(limits.cpu_time_s + 0.999)),
                    "memory_bytes": limits.memory_mb * 2**20,
                    "file_bytes": int(limits.max_file_mb * 2**20),
                    "nproc": nproc, "nofile": limits.max_open_files},
        )
        # Files the program must not open by path (job holds the token): root-owned, 0600.
        paths = {k: os.path.join(base, k) for k in ("job", "stdin", "stdout", "stderr", "verdicts")}
        _private_write(paths["job"], marshal.dumps(job))
        _private_write(paths["stdin"], stdin or b"")
        for k in ("stdout", "stderr", "verdicts"):
            _private_write(paths[k], b"")
        if mode == "rlimits" and uid is not None:
            os.chmod(base, 0o711)  # the dropped uid may traverse to its workdir, not list base
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home if
               mode == "rlimits" else "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        with open(paths["job"], "rb") as jf, open(paths["verdicts"], "wb") as vf, \
                open(paths["stdin"], "rb") as si, open(paths["stdout"], "wb") as so, \
                open(paths["stderr"], "wb") as se:
            cmd = _command(mode, root, limits) + [
                python, "-I", "-S", "-B", _HARNESS, str(jf.fileno()), str(vf.fileno())]
            start = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdin=si, stdout=so, stderr=se, env=env, cwd=base,
                pass_fds=(jf.fileno(), vf.fileno()), start_new_session=True,
            )
            timed_out = not _wait(proc, limits.wall_time_s)
            _kill_group(proc.pid)
            proc.wait()
            wall = time.monotonic() - start
        if mode == "rlimits" and uid is not None:
            _kill_uid(uid, python)  # daemons that left the process group (setsid)
        out, out_trunc = _read_capped(paths["stdout"], limits.max_output_bytes)
        err, err_trunc = _read_capped(paths["stderr"], limits.max_output_bytes)
        verdict_bytes, _ = _read_capped(paths["verdicts"], 1 << 20)
        lines = verdict_bytes.decode("utf-8", "replace").splitlines()
        ready = bool(lines) and lines[0] == f"{token} ready"
        returncode = proc.returncode
        if lines and lines[-1].startswith(f"{token} exit "):  # the supervisor's report
            returncode = int(lines.pop()[len(token) + 6:])
        verdicts = tuple(lines)
        return SandboxResult(
            returncode=returncode, stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"), timed_out=timed_out, wall_s=wall,
            output_truncated=out_trunc or err_trunc, setup_failed=not ready and not timed_out,
            verdicts=tuple(v[len(token) + 1:] if v.startswith(token + " ") else "\0" + v
                           for v in verdicts),
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _command(mode: str, root: bool, limits: SandboxLimits) -> list[str]:
    cmd: list[str] = []
    timeout_bin = shutil.which("timeout")
    if timeout_bin:  # survives the death of the scoring process
        cmd += [timeout_bin, "--signal=KILL", f"{limits.wall_time_s + 2:.1f}"]
    if mode == "namespaces":
        unshare = shutil.which("unshare")
        if unshare is None:
            raise FileNotFoundError("unshare (util-linux) not found")
        cmd += [unshare, "--mount", "--net", "--pid", "--fork", "--kill-child"]
        if not root:
            cmd += ["--user", "--map-root-user"]
    return cmd


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for ``proc`` up to ``timeout`` s; True if it exited. Uses a pidfd where there is
    one: ``Popen.wait(timeout)`` polls with sleeps of up to 50 ms, a visible cost per run."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(left * 1000):
                return True
    finally:
        os.close(pidfd)


def _private_write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int, python: str) -> None:
    # kill(-1) from the run's own uid reaches exactly the processes of that uid
    subprocess.run([python, "-I", "-S", "-c", "import os; os.kill(-1, 9)"], user=uid, group=uid,
                   extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)


def _read_capped(path: str, cap: int) -> tuple[bytes, bool]:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    return data[:cap], len(data) > cap


# ---------------------------------------------------------------------------- mode detection
_MODE: str | None = None
_MODE_LOCK = threading.Lock()


def sandbox_mode() -> str:
    """The sandbox mode of this process: ``"namespaces"`` or ``"rlimits"`` (probed once)."""
    global _MODE
    with _MODE_LOCK:
        if _MODE is None:
            _MODE = _detect_mode()
        return _MODE


def _detect_mode() -> str:
    forced = os.environ.get("GRPO_SANDBOX", "auto")
    if forced in MODES:
        return forced
    if forced != "auto":
        raise ValueError(f"GRPO_SANDBOX must be auto, namespaces or rlimits, got {forced!r}")
    if sys.platform.startswith("linux") and shutil.which("unshare"):
        probe = _launch({"mode": "script", "program": "print(6 * 7)"}, None,
                        SandboxLimits(wall_time_s=20), "namespaces")
        if probe.ok and probe.stdout == "42\n":
            return "namespaces"
        log.warning("grpo sandbox: namespaces unavailable (%s); using rlimits only",
                    probe.describe())
    return "rlimits"


def sandbox_layers(mode: str | None = None) -> tuple[str, ...]:
    """Names of the isolation layers active in ``mode`` (default: this process's mode)."""
    mode = mode or sandbox_mode()
    layers = _COMMON_LAYERS + (("uid-drop",) if _plan(mode)[1] else ())
    if mode == "namespaces":
        layers += (() if _is_root() else ("cap-drop",)) + _NS_LAYERS
    return layers


# ---------------------------------------------------------------------------- public runs
def run_python(
    program: str, *, stdin: str | bytes = b"", limits: SandboxLimits | None = None,
    mode: str | None = None,
) -> SandboxResult:
    """Run ``program`` as ``__main__`` in the sandbox, feeding it ``stdin``.

    >>> run_python("print(input()[::-1])", stdin="abc").stdout
    'cba\\n'
    """
    if isinstance(stdin, str):
        stdin = stdin.encode()
    return _launch({"mode": "script", "program": program}, stdin, limits or SandboxLimits(),
                   mode or sandbox_mode())


def run_tests(
    program: str, tests: Sequence[str], *, limits: SandboxLimits | None = None,
    test_timeout_s: float = 5.0, mode: str | None = None,
) -> TestRun:
    """Load ``program`` as a module, then run each test (assert-style Python) in its namespace.

    A test passes only if the harness reports it ran without raising. Everything runs in one
    sandboxed process; each test has its own ``test_timeout_s`` (a test stuck in C code is
    stopped by the run's wall limit instead, failing the remaining tests).

    >>> run_tests("def add(a, b): return a + b", ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]).passed
    (True, False)
    """
    tests = list(tests)
    res = _launch({"mode": "assert", "program": program, "tests": tests,
                   "test_timeout_s": test_timeout_s}, None, limits or SandboxLimits(),
                  mode or sandbox_mode())
    passed = [False] * len(tests)
    tampered = any(v.startswith("\0") for v in res.verdicts)
    program_error = None
    seen: set[int] = set()
    for line in res.verdicts:
        parts = line.split(" ")
        if parts[0] == "program-error":
            program_error = parts[1] if len(parts) > 1 else "?"
        elif parts[0] == "test" and len(parts) >= 3 and parts[1].isdigit():
            i = int(parts[1])
            if i in seen or i >= len(tests):
                tampered = True
                continue
            seen.add(i)
            passed[i] = parts[2] == "pass"
    if tampered:
        passed = [False] * len(tests)
    return TestRun(tuple(passed), res, program_error, tampered)
