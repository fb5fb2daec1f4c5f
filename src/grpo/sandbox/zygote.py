"""Sandbox zygote: a sandboxed interpreter that forks one isolated process tree per run.

Started once per scoring process by ``grpo.sandbox.prefork`` as
``unshare --mount --net --pid --ipc --fork python -I -S -B <this file> BOOT_FD`` (plus
``--user --map-root-user`` when not root). Standard library only. It never runs untrusted code
and never reads a job: it only forks, so every run starts from the same state, its own.

Start-up: read the root file-system plan (a marshalled dict) and the control socket CTRL from
BOOT_FD (so CTRL's only copy outside the scoring process is here: ``unshare`` holds BOOT_FD),
build the root (``harness._build_root``: read-only /usr and Python, a minimal /dev,
bare mount points /work and /tmp), ``pivot_root`` into it, make itself non-dumpable, send
``ready``.

Then, per message on CTRL (a SOCK_SEQPACKET socket; messages are tiny, data travels in fds):

* ``run ID`` with six fds (job, stdin, stdout, stderr, verdicts, done): clone the run's first
  process P straight into a new mount, PID, IPC and network namespace (PID 1 there) and close
  the fds here. P keeps only the run's fds, reads the job, mounts the run's fresh tmpfs /work
  and /tmp and a /proc of its namespace, then forks the program's process Q exactly as the
  one-run harness does (limits, uid, seccomp, ``_run``) and supervises it; P ends the run at
  ``wall + 2 s`` even if the scoring process hangs. When P exits, the kernel kills everything
  left in its namespace.
* ``kill ID``: SIGKILL to the run's P (its death takes the rest).
* end of file (the scoring process is gone): kill every run, exit. Being PID 1 of its own
  namespace, the zygote's exit also kills anything that could be left.
"""

import _signal
import _socket
import builtins
import gc
import marshal
import os
import select
import sys

import ctypes
import resource  # noqa: F401  (imported before sys.path changes below; the harness needs it)

# A program that fails to load (a young policy's usually do: SyntaxErrors) gets its traceback
# printed; importing ``traceback`` (with re, enum, tokenize, ...) in each run would cost it ~8 ms.
import traceback  # noqa: F401

# The harness sits next to this file. Import it, then drop the folder from sys.path at once:
# programs must not import the package's other files as top-level modules.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

del sys.path[0]

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x20000000, 0x40000000
CLONE_RUN = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET  # a run's own namespaces
SYS_CLONE = {"x86_64": 56, "aarch64": 220}
PR_SET_DUMPABLE = 4
RUN_FDS = 6  # job, stdin, stdout, stderr, verdicts, done
MAX_FD = 1 << 20


_PYTHON_API = ctypes.PyDLL(None, use_errno=True)  # calls that keep the GIL, like os.fork


def main():
    boot = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, int(sys.argv[1]))
    msg, ancillary, _, _ = boot.recvmsg(1 << 20, _socket.CMSG_SPACE(4))
    boot.close()
    [ctrl_fd] = _received_fds(ancillary)
    ctrl = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, ctrl_fd)
    fs = marshal.loads(msg)
    harness._build_root(fs, scratch=False)
    # Not dumpable: even a process of the same uid cannot ptrace it or open its /proc files.
    harness._libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    for name in ("mount", "prctl", "capset", "syscall"):
        getattr(harness._libc(), name)  # resolved once here, not in every run
    for name in ("PyOS_BeforeFork", "PyOS_AfterFork_Child", "PyOS_AfterFork_Parent", "syscall"):
        getattr(_PYTHON_API, name)
    if fs["deny_keyrings"]:
        harness._keyring_filter()
    harness.PRISTINE_BUILTINS = tuple(vars(builtins).items())  # what every test starts with
    # Forks share the zygote's memory until they write to it. The collector would write to
    # every object it walks, so the zygote's objects are moved out of its reach (gc.freeze).
    gc.collect()
    gc.freeze()
    ctrl.send(b"ready")
    _serve(ctrl)


def _serve(ctrl):
    runs = {}  # run id -> pid of its first process (P, its PID namespace's init)
    poller = select.poll()
    poller.register(ctrl.fileno(), select.POLLIN)
    fd_space = _socket.CMSG_SPACE(4 * RUN_FDS)
    while True:
        ready = poller.poll(20 if runs else None)  # wake up to reap finished runs
        _reap(runs)
        if not ready:
            continue
        msg, ancillary, flags, _ = ctrl.recvmsg(64, fd_space)
        fds = _received_fds(ancillary)
        if not msg and not fds:  # end of file: the scoring process closed or died
            for pid in runs.values():
                _kill(pid)
            os._exit(0)
        words = msg.split()
        if len(words) == 2 and words[1].isdigit():
            kind, run_id = words[0], int(words[1])
            if kind == b"run" and len(fds) == RUN_FDS and not flags & _socket.MSG_CTRUNC:
                pid = _start_run(ctrl, fds)
                if pid:
                    runs[run_id] = pid
            elif kind == b"kill" and run_id in runs:  # reaped runs are gone: no pid reuse
                _kill(runs[run_id])
        for fd in fds:
            os.close(fd)


def _received_fds(ancillary):
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(data[i : i + 4], sys.byteorder, signed=True)
                for i in range(0, len(data) - len(data) % 4, 4)
            ]
    return fds


def _reap(runs):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for run_id, run_pid in list(runs.items()):
            if run_pid == pid:
                del runs[run_id]


def _kill(pid):
    try:
        os.kill(pid, _signal.SIGKILL)  # P is the init of the run's PID namespace: all die
    except OSError:
        pass


def _start_run(ctrl, fds):
    """Clone P, the run's first process, straight into new namespaces (``clone(2)`` with
    CLONE_NEW*: one fork where ``os.fork`` + ``unshare`` + ``os.fork`` would take two), with
    the interpreter's fork hooks around it as ``os.fork`` does."""
    api = _PYTHON_API
    api.PyOS_BeforeFork()
    pid = api.syscall(SYS_CLONE[os.uname().machine], CLONE_RUN | _signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        api.PyOS_AfterFork_Child()
        try:
            _init_process(ctrl, fds)
        except BaseException as e:  # never return into the zygote's loop
            harness._fail_setup("%s: %s" % (type(e).__name__, e))
        os._exit(121)
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        os.write(fds[3], ("grpo-sandbox setup failed: clone: %s\n" % os.strerror(err)).encode())
        return None
    return pid


def _init_process(ctrl, fds):
    """P: PID 1 of the run's namespaces. Keeps only the run's fds, mounts its fresh writable
    places and /proc, then forks the program and supervises it."""
    gc.disable()  # P allocates little and lives briefly; the program gets it back
    # A session and process group of the run's own, as on the per-run path: kill(0, ...) from
    # the program must not reach the zygote's group (where every run shares one uid, in a
    # user namespace, it would reach ``unshare`` and the programs of concurrent runs).
    os.setsid()
    ctrl.detach()
    job_fd, stdin, stdout, stderr, verdict_fd, done_fd = fds
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target)
    low = 3  # close everything else (the zygote's socket, its stderr, ...): close_range(2)
    for fd in sorted((job_fd, verdict_fd, done_fd)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)
    job = harness._read_job(job_fd)
    libc = harness._libc()
    try:
        harness._mount_scratch(libc, "", job["fs"])
        harness._mount(
            libc, "proc", "/proc", "proc", harness.MS_NOSUID | harness.MS_NODEV | harness.MS_NOEXEC
        )
    except OSError as e:
        harness._fail_setup("%s: %s" % (type(e).__name__, e))
    try:
        harness._fork_program(job, verdict_fd, done_fd)  # returns only in the program (Q)
        code = 0
    except SystemExit as e:
        code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            try:
                sys.stderr.write(str(code) + "\n")
            except BaseException:
                pass
            code = 1
    _exit_as_python_would(code)


def _exit_as_python_would(code):
    """Q's end in script mode. A forked interpreter must not unwind into the zygote's frames,
    so do what interpreter shutdown does: join non-daemon threads, run atexit functions, flush
    stdout and stderr (status 120 if that fails), then _exit."""
    import atexit

    threading = sys.modules.get("threading")
    try:
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = 120
    os._exit(code & 0xFF)


if __name__ == "__main__":
    main()
