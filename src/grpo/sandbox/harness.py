"""Sandbox harness: the first (trusted) code run inside a sandboxed interpreter.

Run by :mod:`grpo.sandbox` as ``python -I -S -B <this file> JOB_FD VERDICT_FD DONE_FD``
(``-I`` keeps this file's folder out of ``sys.path``) for one run; its functions are also the
building blocks of the pre-forked path (``zygote.py``).
Standard library only, and only cheap modules (``marshal`` and ``_signal`` are built in; json,
signal and traceback would add ~40 ms to every run).

Steps, in this order, before any untrusted code runs:

1. read the job (a marshalled dict) from JOB_FD and close it;
2. if asked, build a fresh root file system in the private mount namespace made by
   ``unshare`` and ``pivot_root`` into it (read-only /usr and Python, a tmpfs /work and /tmp,
   a minimal /dev, a /proc of the new PID namespace; the host's files are detached);
3. fork: the child (the program's process) writes ``ready`` to VERDICT_FD, then runs the
   program (and, in "assert" mode, each test); the parent stays as a supervisor that reports
   the child's exit status;
4. in the child, before that: resource limits (CPU, address space, file size, processes, open
   files, no core); privileges dropped (to a dedicated uid/gid when started as real root, else
   every capability); no_new_privs; a seccomp filter that refuses the kernel keyring calls.

Verdict lines carry a per-run token and are written only by this harness, after the code they
report on has run: a program that exits early, prints fake results or patches builtins gets
no ``pass`` line for a test it did not pass. (A program that deliberately introspects this
harness could forge lines: see the limits in :mod:`grpo.sandbox`'s docstring.)
"""

import _signal
import builtins
import ctypes
import gc
import marshal
import os
import resource
import sys


def _fail_setup(msg):
    os.write(2, ("grpo-sandbox setup failed: " + msg + "\n").encode())
    os._exit(121)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:  # once per interpreter: a zygote's forks inherit it ready to use
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


def _mount(libc, src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (src, target, os.strerror(err)))


def _build_root(fs, scratch=True):
    """Make fs["newroot"] the root: read-only binds of fs["ro_binds"], a /proc, a minimal /dev,
    and (``scratch``) tmpfs /work and /tmp; without ``scratch`` they are bare mount points."""
    libc = _libc()
    root = fs["newroot"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in fs["ro_binds"]:
        if not os.path.lexists(path):
            continue
        target = root + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            continue
        os.makedirs(target, exist_ok=True)
        _mount(libc, path, target, None, MS_BIND | MS_REC)
        _mount(libc, None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(root + "/work")
    os.makedirs(root + "/tmp")
    if scratch:
        _mount_scratch(libc, root, fs)
    os.makedirs(root + "/dev")
    _mount(libc, "tmpfs", root + "/dev", "tmpfs", MS_NOSUID, "size=64k,mode=755")
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(root + "/dev/" + dev, "w").close()
        _mount(libc, "/dev/" + dev, root + "/dev/" + dev, None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, root + "/dev/" + name)
    # read-only (its device nodes are bind mounts of their own and stay writable): without
    # uid drop the program's uid owns this tmpfs, and a zygote's runs all share it
    _mount(libc, None, root + "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    os.makedirs(root + "/proc")
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/.old")
    os.chdir(root)
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError("pivot_root: unknown syscall number on " + os.uname().machine)
    if libc.syscall(nr, b".", b".old") != 0:
        err = ctypes.get_errno()
        raise OSError(err, "pivot_root: " + os.strerror(err))
    os.chdir("/")
    if libc.umount2(b"/.old", MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "umount old root: " + os.strerror(err))
    os.rmdir("/.old")
    _mount(libc, None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mount_scratch(libc, root, fs):
    """The run's writable places: a tmpfs /work owned by its uid and a tmpfs /tmp."""
    owner = "" if fs["uid"] is None else ",uid=%d,gid=%d" % (fs["uid"], fs["uid"])
    _mount(
        libc,
        "tmpfs",
        root + "/work",
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        "size=%dm,mode=700%s" % (fs["work_mb"], owner),
    )
    _mount(
        libc,
        "tmpfs",
        root + "/tmp",
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        "size=%dm,mode=1777" % fs["tmp_mb"],
    )


def _set_limits(lim):
    def cap(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))

    cap(resource.RLIMIT_CPU, lim["cpu_s"], lim["cpu_s"] + 1)
    cap(resource.RLIMIT_AS, lim["memory_bytes"])
    cap(resource.RLIMIT_FSIZE, lim["file_bytes"])
    cap(resource.RLIMIT_NPROC, lim["nproc"])
    cap(resource.RLIMIT_NOFILE, lim["nofile"])
    cap(resource.RLIMIT_CORE, 0)


def _drop_privileges(uid, drop_caps, deny_keyrings):
    libc = _libc()
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # from real root to an unprivileged uid: every capability goes too
    elif drop_caps:
        # root inside a user namespace: keep the uid (the only one mapped), clear capabilities
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            ]

        PR_CAPBSET_DROP = 24
        for cap in range(64):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        data = (Data * 2)()
        if libc.capset(ctypes.byref(Header(0x20080522, 0)), data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "capset: " + os.strerror(err))
    PR_SET_NO_NEW_PRIVS = 38
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    if deny_keyrings:
        _deny_keyrings(libc)


# (audit arch, syscall numbers of add_key, request_key, keyctl)
KEYRING_SYSCALLS = {
    "x86_64": (0xC000003E, (248, 249, 250)),
    "aarch64": (0xC00000B7, (217, 218, 219)),
}


def _deny_keyrings(libc):
    """Seccomp filter: add_key, request_key and keyctl fail with EPERM, as does any syscall of
    another ABI (i386 via int 0x80, x32). The kernel keyring is not namespaced: a key a run
    stores under its uid would outlive the run and be readable by a later run of that uid."""
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, _keyring_filter(), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "seccomp filter: " + os.strerror(err))


_KEYRING_FILTER = None


def _keyring_filter():
    """The BPF program (a ``struct sock_fprog`` reference), built once per interpreter."""
    global _KEYRING_FILTER
    if _KEYRING_FILTER is not None:
        return _KEYRING_FILTER
    arch, numbers = KEYRING_SYSCALLS[os.uname().machine]
    LD_ABS, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(numbers)
    prog = [
        (LD_ABS, 0, 0, 4),
        (JEQ, 1, 0, arch),
        (RET, 0, 0, deny),  # foreign ABI: deny
        (LD_ABS, 0, 0, 0),
        (JGE, n + 1, 0, 0x40000000),
    ]  # x32 numbers: deny
    prog += [(JEQ, n - i, 0, nr) for i, nr in enumerate(numbers)]
    prog += [(RET, 0, 0, allow), (RET, 0, 0, deny)]

    class Insn(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    insns = (Insn * len(prog))(*[Insn(*i) for i in prog])
    fprog = Prog(len(prog), insns)
    fprog.keep = insns  # the array must live as long as the struct that points to it
    _KEYRING_FILTER = ctypes.byref(fprog)
    return _KEYRING_FILTER


# The builtins every assert-mode test starts with, as (name, object) pairs: immutable, so a
# program that reaches them (through the harness's frame) cannot change what its tests get. A
# zygote takes them once; its forks then need not touch every builtin to copy them.
PRISTINE_BUILTINS = ()


class _TestTimeout(BaseException):
    pass


def _main():
    job_fd, verdict_fd, done_fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    job = _read_job(job_fd)
    try:
        if job["fs"] is not None:
            _build_root(job["fs"])
    except OSError as e:
        _fail_setup("%s: %s" % (type(e).__name__, e))
    _fork_program(job, verdict_fd, done_fd)


def _read_job(job_fd):
    chunks, size = [], os.fstat(job_fd).st_size + 1  # a buffer of the job's size, not 1 MB
    while True:
        chunk = os.read(job_fd, size)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(job_fd)
    return marshal.loads(b"".join(chunks))


def _fork_program(job, verdict_fd, done_fd):
    """Fork the program's process; this one becomes its supervisor and never returns. Returns
    (or raises the program's SystemExit) in the program's process once a script-mode program
    ends: the interpreter's exit then flushes its output."""
    pid = os.fork()
    if pid:
        _supervise(pid, verdict_fd, done_fd, job["token"], job.get("backstop_s"))
    os.close(done_fd)  # only the supervisor may say "done"
    gc.enable()  # whatever the parent did: the program gets the usual collector
    try:
        _set_limits(job["limits"])
        _drop_privileges(job["uid"], job["drop_caps"], job["deny_keyrings"])
        os.chdir(job["cwd"])
    except OSError as e:
        _fail_setup("%s: %s" % (type(e).__name__, e))
    _run(job, verdict_fd)


def _supervise(pid, verdict_fd, done_fd, token, backstop_s=None):
    """Wait for the program's process and report how it ended.

    The supervisor keeps its privileges (it runs no untrusted code and only waits), so the
    program cannot signal it. It reaps orphans too: in a PID namespace it is PID 1, and as
    such gets only the signals it handles from inside: none (Python's SIGINT handler is
    removed, or a same-uid program could raise KeyboardInterrupt in it). Its own exit status
    says nothing (``unshare --fork`` loses the signal of a killed child), hence the report line.
    ``backstop_s``: it exits after that many seconds, whatever the launcher does (as PID 1 it
    would ignore a default-action SIGALRM, hence the handler; the program cannot send it one).
    """
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    if backstop_s:
        _signal.signal(_signal.SIGALRM, lambda signum, frame: os._exit(0))
        _signal.alarm(backstop_s)
    while True:
        try:
            wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if wpid == pid:
            code = os.waitstatus_to_exitcode(status)
            os.write(verdict_fd, ("%s exit %d\n" % (token, code)).encode())
            os.write(done_fd, b"x")  # the report is complete: the launcher may stop waiting
            os._exit(0)


def _run(job, verdict_fd):
    # Everything the harness needs after this point is bound to a local now, before the
    # program can patch a module attribute or a builtin.
    token = job["token"]
    write, encode_exit = os.write, os._exit
    exec_, compile_, type_ = builtins.exec, builtins.compile, builtins.type
    base_exc, range_, len_ = BaseException, range, len
    pristine = PRISTINE_BUILTINS or tuple(builtins.__dict__.items())
    bdict_clear, bdict_update = builtins.__dict__.clear, builtins.__dict__.update
    settrace, setprofile = sys.settrace, sys.setprofile
    setitimer, sigsignal, sigmask = _signal.setitimer, _signal.signal, _signal.pthread_sigmask
    itimer, sigalrm, sig_setmask = _signal.ITIMER_REAL, _signal.SIGALRM, _signal.SIG_SETMASK
    flush_out, flush_err = sys.stdout.flush, sys.stderr.flush
    exc_info = sys.exc_info

    def print_exc():  # stderr is for humans only: a late import or a broken print is harmless
        kind, value, tb = exc_info()
        try:
            import traceback

            # The program's frames only, as python prints them: the harness's own frame (a host
            # path) says nothing, and without it a SyntaxError costs no stack walk.
            traceback.print_exception(kind, value, tb.tb_next)
        except base_exc:
            pass

    def report(line):
        write(verdict_fd, (token + " " + line + "\n").encode())

    def exc_name(e):  # a program may set a class __name__ with spaces or newlines
        name = type_(e).__name__
        return "".join(c for c in name[:60] if c.isalnum() or c == "_") or "Exception"

    def on_alarm(signum, frame):
        raise _TestTimeout()

    report("ready")
    mode = job["mode"]
    if mode == "script":  # stdin/stdout program: run as __main__; exit status is the verdict
        sys.argv = ["program.py"]
        scope = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec_(compile_(job["program"], "program.py", "exec"), scope)
        except SystemExit:
            raise
        except base_exc:
            print_exc()
            flush_out()
            encode_exit(1)
        return

    # "assert" mode: the program is loaded as a module (its `if __name__ == "__main__":`
    # block does not run), then each test runs in its namespace with pristine builtins.
    scope = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec_(compile_(job["program"], "solution.py", "exec"), scope)
    except base_exc as e:
        report("program-error " + exc_name(e))
        print_exc()
        flush_out()
        flush_err()
        encode_exit(0)
    report("program-ok")
    tests, per_test = job["tests"], job["test_timeout_s"]
    for i in range_(len_(tests)):
        bdict_clear()
        bdict_update(pristine)
        scope["__builtins__"] = builtins
        settrace(None)
        setprofile(None)
        sigsignal(sigalrm, on_alarm)
        sigmask(sig_setmask, [])
        outcome = "pass"
        try:
            setitimer(itimer, per_test)
            exec_(compile_(tests[i], "test_%d.py" % i, "exec"), scope)
            setitimer(itimer, 0)
        except base_exc as e:
            setitimer(itimer, 0)
            outcome = "fail " + ("Timeout" if type_(e) is _TestTimeout else exc_name(e))
        report("test %d %s" % (i, outcome))
    report("done")
    try:
        flush_out()
        flush_err()
    except base_exc:
        pass
    encode_exit(0)


if __name__ == "__main__":
    _main()
