"""Sandbox zygote: a sandboxed interpreter that forks one isolated process tree per run.

Started once per scoring process by ``grpo.rewards._sandbox_prefork`` as
``unshare --mount --net --pid --ipc --fork python -I -S -B <this file> BOOT_FD`` (plus
``--user --map-root-user`` when not root). Standard library only. It never runs untrusted code
and never reads a job: it only forks, so every run starts from the same state, its own.

Start-up: read the root file-system plan (a marshalled dict) and the control socket CTRL from
BOOT_FD (so CTRL's only copy outside the scoring process is here: ``unshare`` holds BOOT_FD),
build the root (``_sandbox_harness._build_root``: read-only /usr and Python, a minimal /dev,
bare mount points /work and /tmp), ``pivot_root`` into it, make itself non-dumpable, send
``ready``.

Then, per message on CTRL (a SOCK_SEQPACKET socket; messages are tiny, data travels in fds):

* ``run ID`` with six fds (job, stdin, stdout, stderr, verdicts, done): fork the run's first
  process C (its own process group, id = its pid) and close the fds here. C keeps only the
  run's fds, reads the job, ``unshare``s a new mount, PID, IPC and network namespace and forks
  P, PID 1 of the new PID namespace. P mounts the run's fresh tmpfs /work and /tmp and a
  /proc of its namespace, then forks the program's process Q exactly as the one-run harness
  does (limits, uid, seccomp, ``_run``) and supervises it; P ends the run at ``wall + 2 s``
  even if the scoring process hangs. When P exits, the kernel kills everything left in its
  namespace.
* ``kill ID``: SIGKILL to the run's process group (C and P; P's death takes the rest).
* end of file (the scoring process is gone): kill every run, exit. Being PID 1 of its own
  namespace, the zygote's exit also kills anything that could be left.
"""

import _signal
import _socket
import marshal
import os
import select
import sys

import ctypes  # noqa: F401  (imported before sys.path changes below; the harness needs it)
import resource  # noqa: F401

# The harness sits next to this file. Import it, then drop the folder from sys.path at once:
# it holds modules (code.py, math.py) that would shadow the standard library for programs.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox_harness as harness  # noqa: E402

del sys.path[0]

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x20000000, 0x40000000
PR_SET_DUMPABLE = 4
RUN_FDS = 6  # job, stdin, stdout, stderr, verdicts, done


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
    ctrl.send(b"ready")
    _serve(ctrl)


def _serve(ctrl):
    runs = {}  # run id -> pid of its first process (the leader of its process group)
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
                _kill_group(pid)
            os._exit(0)
        words = msg.split()
        if len(words) == 2 and words[1].isdigit():
            kind, run_id = words[0], int(words[1])
            if kind == b"run" and len(fds) == RUN_FDS and not flags & _socket.MSG_CTRUNC:
                pid = _start_run(ctrl, fds)
                if pid:
                    runs[run_id] = pid
            elif kind == b"kill" and run_id in runs:  # reaped runs are gone: no pid reuse
                _kill_group(runs[run_id])
        for fd in fds:
            os.close(fd)


def _received_fds(ancillary):
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True)
                    for i in range(0, len(data) - len(data) % 4, 4)]
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


def _kill_group(pgid):
    try:
        os.killpg(pgid, _signal.SIGKILL)
    except OSError:
        pass


def _start_run(ctrl, fds):
    try:
        pid = os.fork()
    except OSError as e:
        os.write(fds[3], ("grpo-sandbox setup failed: fork: %s\n" % e).encode())
        return None
    if pid == 0:
        try:
            _run_process(ctrl, fds)
        except BaseException as e:  # never return into the zygote's loop
            harness._fail_setup("%s: %s" % (type(e).__name__, e))
        os._exit(121)
    try:
        os.setpgid(pid, pid)  # also done by the child: whichever runs first
    except OSError:
        pass
    return pid


def _run_process(ctrl, fds):
    """C: the run's first process. Keeps only its fds, enters new namespaces, forks P."""
    os.setpgid(0, 0)
    job_fd, stdin, stdout, stderr, verdict_fd, done_fd = fds
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target)
    keep = {0, 1, 2, job_fd, verdict_fd, done_fd}
    ctrl.detach()
    for name in os.listdir("/proc/self/fd"):  # the zygote's socket, its stderr, ...
        if int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass  # the directory's own fd, already closed
    job = harness._read_job(job_fd)
    libc = harness._libc()
    if libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        harness._fail_setup("unshare: " + os.strerror(err))
    pid = os.fork()
    if pid:
        os.close(verdict_fd)
        os.close(done_fd)
        os.waitpid(pid, 0)
        os._exit(0)
    _init_process(libc, job, verdict_fd, done_fd)


def _init_process(libc, job, verdict_fd, done_fd):
    """P: PID 1 of the run's namespaces. Fresh writable places, a backstop, then the program."""
    try:
        harness._mount_scratch(libc, "", job["fs"])
        harness._mount(libc, "proc", "/proc", "proc",
                       harness.MS_NOSUID | harness.MS_NODEV | harness.MS_NOEXEC)
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
