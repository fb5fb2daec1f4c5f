"""Host side of the pre-forked sandbox: one zygote per scoring process, respawned if it dies.

Private to :mod:`grpo.sandbox` (its docstring states what pre-forking changes in the threat
model). The zygote (``zygote.py``) is started on first use as
``unshare --mount --net --pid --ipc --fork [--user --map-root-user] python -I -S -B
zygote.py BOOT_FD`` in its own session, with the scrubbed environment; it builds the
read-only root once and then forks each run's process tree inside fresh namespaces.

One run = six memfds/pipe ends (job, stdin, stdout, stderr, verdicts, done) sent to the zygote
over a SOCK_SEQPACKET socket with ``run ID``, a wait (up to the wall limit) for the run's
supervisor to report on the done pipe, ``kill ID`` if it did not, and the outputs read back
from the memfds. Nothing is written to the host's file system. Several threads may run at
once: a message is one atomic ``sendmsg`` and every run has its own fds.

If the zygote dies (killed from outside, out of memory), the next run starts a new one, with a
warning naming how it ended; a run cut short by its death is run once more on the new one.
A zygote that cannot start makes the run a setup failure carrying the reason (and an error in
the log): never a silent fallback to another path.
"""

from __future__ import annotations

import array
import atexit
import itertools
import logging
import marshal
import math
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from grpo.sandbox.process import (
    KEYRING_FILTER,
    SandboxLimits,
    SandboxResult,
    _complete_job,
    _env,
    _is_root,
    _plan,
    _read_capped,
    _result,
    _ro_binds,
    _scratch_dir,
    _unique_uid,
    _wait_readable,
)

log = logging.getLogger("grpo.sandbox")

_ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zygote.py")
# the zygote's clone(2) syscall number is known on these (``zygote.SYS_CLONE``)
SUPPORTED = sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "aarch64")
START_TIMEOUT_S = 60.0  # a loaded machine may take seconds to start an interpreter
BACKSTOP_S = 2.0  # the run's PID 1 ends it this long after the wall limit, whatever happens
ZYGOTE_DEATH_WATCH_S = 1.0  # see _Zygote.run: only for runs killed without a report
SETUP_FAILED = "grpo-sandbox setup failed"  # how the harness and the zygote report one


class ZygoteDied(Exception):
    """The zygote died while (or before) serving a run."""


class _Zygote:
    """One running zygote: its launcher process, control socket and run counter."""

    def __init__(self, python: str, root: bool) -> None:
        self.python = python
        self._ids = itertools.count()
        self.proc: subprocess.Popen | None = None
        self.start_error = ""
        cmd = [_unshare(), "--mount", "--net", "--pid", "--ipc", "--fork", "--kill-child"]
        if not root:
            cmd += ["--user", "--map-root-user"]
        # The control socket reaches the zygote through a bootstrap socket, not by inheritance:
        # ``unshare`` (its parent) would keep an inherited copy open, and then the zygote's
        # death would not hang it up before the runs it takes down report their end.
        self.sock, ctrl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        boot, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stderr = os.memfd_create("grpo-zygote-stderr")
        newroot = tempfile.mkdtemp(prefix="grpo-zygote-", dir=_scratch_dir())
        cmd += [python, "-I", "-S", "-B", _ZYGOTE, str(theirs.fileno())]
        ready = False
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._stderr,
                stderr=self._stderr,
                env=_env("/work", "/tmp"),
                cwd="/",
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
            theirs.close()  # from here on, every copy of the zygote's ends is in its process
            plan = marshal.dumps(
                {"newroot": newroot, "ro_binds": _ro_binds(python), "deny_keyrings": KEYRING_FILTER}
            )
            boot.sendmsg(
                [plan], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ctrl.fileno()]))]
            )
            boot.close()
            ctrl.close()
            ready = (
                _wait_readable(self.sock.fileno(), START_TIMEOUT_S)
                and self.sock.recv(16) == b"ready"
            )
        except OSError as e:
            self.start_error = f"{type(e).__name__}: {e}"
        finally:
            for sock in (ctrl, boot, theirs):
                sock.close()
            os.rmdir(newroot)  # the zygote's root is a tmpfs mounted there in its own namespace
        if not ready:
            self.sock.close()
            reason = self.describe_end()
            self.close()
            raise RuntimeError(f"the sandbox zygote did not start ({reason})")

    @property
    def pid(self) -> int:
        """Host process id of the zygote's launcher (``unshare``)."""
        return self.proc.pid if self.proc is not None else -1

    def alive(self, watch_s: float = 0.0) -> bool:
        """Whether it runs; ``watch_s``: seconds to watch for its death before saying yes."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        poller = select.poll()  # its end of the socket closes when it dies (it never writes)
        poller.register(self.sock, select.POLLIN)
        events = poller.poll(watch_s * 1000)
        return not any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events)

    def describe_end(self) -> str:
        """How it ended: exit status and the tail of its stderr."""
        code = self.proc.poll() if self.proc is not None else None
        if code is None and self.proc is not None:
            try:
                code = self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is None:
            how = "not started"
        elif code is None:
            how = "still running"
        else:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        err, _ = _read_capped(self._stderr, 1 << 16)
        err = err.decode("utf-8", "replace").strip()[-500:]
        extra = self.start_error
        return how + (f"; {extra}" if extra else "") + (f"; stderr: {err}" if err else "")

    def close(self) -> None:
        """End of file on its socket makes it kill its runs and exit; SIGKILL if it lingers."""
        self.sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        os.close(self._stderr)

    def run(self, job: dict, stdin: bytes, limits: SandboxLimits) -> SandboxResult:
        """One run; raises ZygoteDied if the zygote was or went dead."""
        run_id = next(self._ids)
        job_fd, in_fd = _memfd(marshal.dumps(job)), _memfd(stdin)
        out_fd, err_fd, verdict_fd = _memfd(b""), _memfd(b""), _memfd(b"")
        done_r, done_w = os.pipe()
        try:
            fds = array.array("i", [job_fd, in_fd, out_fd, err_fd, verdict_fd, done_w])
            start = time.monotonic()
            try:
                self.sock.sendmsg(
                    [b"run %d" % run_id], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                )
            except OSError as e:
                raise ZygoteDied(f"sending the run failed: {e}") from e
            for fd in (job_fd, in_fd, done_w):  # the zygote holds them now
                os.close(fd)
            job_fd = in_fd = done_w = -1
            finished = _wait_readable(done_r, limits.wall_time_s)
            wall = time.monotonic() - start
            if not finished:
                try:
                    self.sock.send(b"kill %d" % run_id)
                except OSError:
                    pass  # a dead zygote took the run with it
            returncode = None if finished else -9  # unless the supervisor reported one
            res = _result(
                job["token"],
                out_fd,
                err_fd,
                verdict_fd,
                limits,
                timed_out=not finished,
                wall=wall,
                returncode=returncode,
            )
            # Ended without its supervisor's report, and not by a setup failure of its own (that
            # says so on stderr): killed. If the zygote died (taking the run with it), its socket
            # may hang up a few ms after the run's end shows, so watch it for a while.
            watch_s = 0.0 if res.stderr.startswith(SETUP_FAILED) else ZYGOTE_DEATH_WATCH_S
            if res.returncode is None and not self.alive(watch_s):
                raise ZygoteDied("its socket hung up before the run reported")
            return res
        finally:
            for fd in (job_fd, in_fd, out_fd, err_fd, verdict_fd, done_r, done_w):
                if fd >= 0:
                    os.close(fd)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("grpo-sandbox", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _unshare() -> str:
    path = shutil.which("unshare")
    if path is None:
        raise FileNotFoundError("unshare (util-linux) not found")
    return path


# ---------------------------------------------------------------------------- the zygotes
_ZYGOTES: dict[tuple[int, str], _Zygote] = {}  # (owner pid, interpreter) -> zygote
_LOCK = threading.Lock()
STATS = {"started": 0, "died": 0}  # zygotes started, and found dead, by this process


def _zygote(python: str, root: bool) -> _Zygote:
    """This process's zygote for ``python``, started (again) if needed."""
    key = (os.getpid(), python)  # a forked child must not share its parent's zygote
    with _LOCK:
        z = _ZYGOTES.get(key)
        if z is not None and not z.alive():
            log.warning(
                "grpo sandbox: the zygote (pid %d) died (%s); starting a new one",
                z.pid,
                z.describe_end(),
            )
            STATS["died"] += 1
            z.close()
            z = None
        if z is None:
            if not _ZYGOTES:
                atexit.register(close_zygotes)
            z = _ZYGOTES[key] = _Zygote(python, root)
            STATS["started"] += 1
        return z


def close_zygotes() -> None:
    """Stop this process's zygotes (they also stop by themselves when it exits)."""
    with _LOCK:
        mine = [k for k in _ZYGOTES if k[0] == os.getpid()]
        for key in mine:
            _ZYGOTES.pop(key).close()


def launch_prefork(job: dict, stdin: bytes | None, limits: SandboxLimits) -> SandboxResult:
    """Run ``job`` (the harness's job dict, "mode"/"program"/...) through this process's zygote."""
    root = _is_root()
    python, drop_uid = _plan("namespaces")
    job["cwd"] = "/work"
    job["backstop_s"] = math.ceil(limits.wall_time_s + BACKSTOP_S)
    for attempt in range(2):
        uid = _unique_uid() if drop_uid else None  # fresh for a retry: the old one may linger
        job["fs"] = {"uid": uid, "work_mb": limits.workdir_mb, "tmp_mb": 16}
        _complete_job(job, secrets.token_hex(8), uid, not root, limits, limits.max_processes)
        try:
            z = _zygote(python, root)
        except (RuntimeError, OSError) as e:
            log.error("grpo sandbox: %s", e)
            return _setup_failure(str(e))
        try:
            return z.run(job, stdin or b"", limits)
        except ZygoteDied as e:
            log.warning(
                "grpo sandbox: the zygote (pid %d) died during a run (%s); %s",
                z.pid,
                e,
                "running it again on a new one" if attempt == 0 else "giving up",
            )
    msg = "the sandbox zygote died during this run twice in a row"
    log.error("grpo sandbox: %s", msg)
    return _setup_failure(msg)


def _setup_failure(reason: str) -> SandboxResult:
    return SandboxResult(
        returncode=None,
        stdout="",
        stderr=f"{SETUP_FAILED}: {reason}",
        timed_out=False,
        wall_s=0.0,
        setup_failed=True,
    )
