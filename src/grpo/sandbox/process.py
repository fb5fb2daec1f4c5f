"""Process mechanics of the sandbox: host facts, the command line, launching, waiting, cleanup.

Private to :mod:`grpo.sandbox` (read its docstring for what the layers protect against).
This is the per-run path (``prefork=False``); ``prefork.py`` is the pre-forked one and
shares the job format and result parsing defined here.
One run = a private scratch folder (job, stdin, stdout, stderr, verdicts: root-owned, 0600), the
command ``timeout -s KILL <wall+2> [unshare ...] python -I -S -B harness.py JOB VERDICTS
DONE`` in its own session, a wait (up to the wall limit) for the harness's supervisor to report
the program's exit on the DONE pipe, a SIGKILL to the whole process group, and (without a PID
namespace) a ``kill(-1)`` from the run's own uid for daemons that left the group. The launcher
is reaped later: tearing down a mount namespace waits for RCU grace periods (tens of ms).
"""

from __future__ import annotations

import dataclasses
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
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("grpo.sandbox")

_HARNESS = str(Path(__file__).with_name("harness.py"))  # read by the interpreter as root


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


# ---------------------------------------------------------------------------- host facts
_RUN_COUNTER = itertools.count()
# machines whose syscall numbers the harness's keyring seccomp filter knows
KEYRING_FILTER = sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "aarch64")


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
        own = cand == py and not explicit
        prefix = sys.base_prefix if own else os.path.dirname(os.path.dirname(cand))
        if os.path.exists(cand) and _world_usable(cand) and _world_usable(prefix):
            return os.path.realpath(cand), True
    log.warning(
        "grpo sandbox: no interpreter reachable by an unprivileged uid; "
        "running sandboxed code as root (RLIMIT_NPROC does not bind root)"
    )
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
            job["fs"] = {
                "newroot": newroot,
                "ro_binds": _ro_binds(python),
                "uid": uid,
                "work_mb": limits.workdir_mb,
                "tmp_mb": 16,
            }
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
        _complete_job(job, token, uid, mode == "namespaces" and not root, limits, nproc)
        # Files the program must not open by path (job holds the token): root-owned, 0600.
        paths = {k: os.path.join(base, k) for k in ("job", "stdin", "stdout", "stderr", "verdicts")}
        _private_write(paths["job"], marshal.dumps(job))
        _private_write(paths["stdin"], stdin or b"")
        for k in ("stdout", "stderr", "verdicts"):
            _private_write(paths[k], b"")
        if mode == "rlimits" and uid is not None:
            os.chmod(base, 0o711)  # the dropped uid may traverse to its workdir, not list base
        env = _env(home, home if mode == "rlimits" else "/tmp")
        done_r, done_w = os.pipe()  # the supervisor writes a byte here once it has reported
        try:
            with (
                open(paths["job"], "rb") as jf,
                open(paths["verdicts"], "wb") as vf,
                open(paths["stdin"], "rb") as si,
                open(paths["stdout"], "wb") as so,
                open(paths["stderr"], "wb") as se,
            ):
                cmd = _command(mode, root, limits) + [
                    python,
                    "-I",
                    "-S",
                    "-B",
                    _HARNESS,
                    str(jf.fileno()),
                    str(vf.fileno()),
                    str(done_w),
                ]
                start = time.monotonic()
                proc = subprocess.Popen(
                    cmd,
                    stdin=si,
                    stdout=so,
                    stderr=se,
                    env=env,
                    cwd=base,
                    pass_fds=(jf.fileno(), vf.fileno(), done_w),
                    start_new_session=True,
                )
                os.close(done_w)
                done_w = -1
                timed_out = not _wait_readable(done_r, limits.wall_time_s)
                wall = time.monotonic() - start
                _kill_group(proc.pid)
        finally:
            os.close(done_r)
            if done_w >= 0:
                os.close(done_w)
        if mode == "rlimits" and uid is not None:
            _kill_uid(uid)  # daemons that left the process group (setsid)
        with (
            open(paths["stdout"], "rb") as so,
            open(paths["stderr"], "rb") as se,
            open(paths["verdicts"], "rb") as vf,
        ):
            res = _result(
                token,
                so.fileno(),
                se.fileno(),
                vf.fileno(),
                limits,
                timed_out=timed_out,
                wall=wall,
                returncode=None,
            )
        if res.returncode is not None:  # the supervisor reported
            _reap_later(proc)  # killed; namespace teardown may take tens of ms: not our wait
            return res
        # it died before reporting (setup failure, killed at the wall limit)
        return dataclasses.replace(res, returncode=proc.wait())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _complete_job(
    job: dict, token: str, uid: int | None, drop_caps: bool, limits: SandboxLimits, nproc: int
) -> None:
    """Fill in the job fields that both paths share (read by ``harness.py``)."""
    job.update(
        token=token,
        uid=uid,
        drop_caps=drop_caps,
        deny_keyrings=KEYRING_FILTER,
        limits={
            "cpu_s": max(1, int(limits.cpu_time_s + 0.999)),
            "memory_bytes": limits.memory_mb * 2**20,
            "file_bytes": int(limits.max_file_mb * 2**20),
            "nproc": nproc,
            "nofile": limits.max_open_files,
        },
    )


def _env(home: str, tmpdir: str) -> dict[str, str]:
    """The whole environment of sandboxed code: nothing inherited."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": tmpdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _result(
    token: str,
    out_fd: int,
    err_fd: int,
    verdict_fd: int,
    limits: SandboxLimits,
    *,
    timed_out: bool,
    wall: float,
    returncode: int | None,
) -> SandboxResult:
    """Read a finished run's outputs and verdict lines. ``returncode``: the status to report
    if the supervisor did not (None: unknown)."""
    out, out_trunc = _read_capped(out_fd, limits.max_output_bytes)
    err, err_trunc = _read_capped(err_fd, limits.max_output_bytes)
    verdict_bytes, _ = _read_capped(verdict_fd, 1 << 20)
    lines = verdict_bytes.decode("utf-8", "replace").splitlines()
    ready = bool(lines) and lines[0] == f"{token} ready"
    if lines and lines[-1].startswith(f"{token} exit "):  # the supervisor's report
        returncode = int(lines.pop()[len(token) + 6 :])
    return SandboxResult(
        returncode=returncode,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        timed_out=timed_out,
        wall_s=wall,
        output_truncated=out_trunc or err_trunc,
        setup_failed=not ready and not timed_out,
        verdicts=tuple(
            v[len(token) + 1 :] if v.startswith(token + " ") else "\0" + v for v in lines
        ),
    )


def _command(mode: str, root: bool, limits: SandboxLimits) -> list[str]:
    cmd: list[str] = []
    timeout_bin = shutil.which("timeout")
    if timeout_bin:  # survives the death of the scoring process
        cmd += [timeout_bin, "--signal=KILL", f"{limits.wall_time_s + 2:.1f}"]
    if mode == "namespaces":
        unshare = shutil.which("unshare")
        if unshare is None:
            raise FileNotFoundError("unshare (util-linux) not found")
        cmd += [unshare, "--mount", "--net", "--pid", "--ipc", "--fork", "--kill-child"]
        if not root:
            cmd += ["--user", "--map-root-user"]
    return cmd


def _wait_readable(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``fd`` to have data or EOF; True if it did."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(left * 1000):
            return True


_TO_REAP: list[subprocess.Popen] = []
_REAP_LOCK = threading.Lock()


def _reap_later(proc: subprocess.Popen) -> None:
    """Keep a SIGKILLed launcher to be reaped by a later call, without blocking on it now."""
    with _REAP_LOCK:
        _TO_REAP[:] = [p for p in _TO_REAP if p.poll() is None]
        if proc.poll() is None:
            _TO_REAP.append(proc)


def _private_write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    # kill(-1) from the run's own uid reaches exactly the processes of that uid
    kill = shutil.which("kill")
    if kill:
        subprocess.run(
            [kill, "-9", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def _read_capped(fd: int, cap: int) -> tuple[bytes, bool]:
    """The first ``cap`` bytes of the file open at ``fd``, and whether it holds more."""
    chunks, size = [], 0
    while size <= cap:
        chunk = os.pread(fd, cap + 1 - size, size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return data[:cap], len(data) > cap
