"""The pre-forked sandbox: nothing one run does reaches the next, the zygote is out of reach,
and the zygote's death or the scoring process's death is handled. On the real sandbox.

The core test: a probe program prints a fingerprint of everything a run could inherit
(files in every writable place, processes, environment, builtins and modules, signal handlers
and mask, timers, limits, umask, IPC objects, abstract sockets). Each attack program changes
or leaves behind one kind of state; the probe's fingerprint after it must equal the one before.
"""

from __future__ import annotations

import ast
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from grpo.sandbox import prefork
from grpo.sandbox import (
    SandboxLimits,
    run_python,
    run_tests,
    sandbox_mode,
    sandbox_prefork,
)

pytestmark = pytest.mark.skipif(
    sandbox_mode() != "namespaces", reason="pre-forking needs the namespaces mode"
)

FAST = SandboxLimits(wall_time_s=4.0, cpu_time_s=4.0, memory_mb=256, max_processes=8)
BIG_OUTPUT = SandboxLimits(wall_time_s=10.0, memory_mb=256, max_output_bytes=8 * 2**20)
SANDBOX_UID_MIN = 2_000_000_000
REPO = Path(__file__).resolve().parents[1]


def code(src: str) -> str:
    return textwrap.dedent(src).strip() + "\n"


def zygote():
    """This process's zygote (started if needed)."""
    run_python("pass", prefork=True)
    [z] = [z for (pid, _), z in prefork._ZYGOTES.items() if pid == os.getpid()]
    return z


def sandbox_processes(settle_s: float = 3.0, owner: int | None = None) -> list[int]:
    """Live processes of this test process's sandbox uids (``owner``: of that process's),
    once SIGKILLed ones had ``settle_s`` s to die. Uids are 2e9 + (pid x 4096 + n) mod 2^30:
    sandboxes of other processes on the machine are not counted."""
    base = SANDBOX_UID_MIN + ((owner or os.getpid()) * 4096) % 2**30
    end = time.monotonic() + settle_s
    while True:
        pids = []
        for entry in os.scandir("/proc"):
            try:
                if entry.name.isdigit() and 0 <= entry.stat().st_uid - base < 4096:
                    state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1]
                    if state.split()[0] not in ("Z", "X"):
                        pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
        if not pids or time.monotonic() > end:
            return pids
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def wait_for(condition, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------ the probe
PROBE = code(r"""
    import builtins, ctypes, errno, os, resource, signal, socket, sys

    def tree(top):
        out = []
        for root, dirs, files in os.walk(top):
            for name in sorted(dirs + files):
                path = os.path.join(root, name)
                st = os.lstat(path)
                out.append((path, oct(st.st_mode), st.st_size))
        return out

    def ident(v):  # stable across forks of one zygote, changed by any replacement
        return (type(v).__name__, getattr(v, "__module__", None), getattr(v, "__qualname__", None))

    def attempt(fn):
        try:
            return repr(fn())
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    libc = ctypes.CDLL(None, use_errno=True)

    def c_call(fn, *args):
        r = fn(*args)
        return r if r >= 0 else errno.errorcode.get(ctypes.get_errno())

    def abstract_connect():
        s = socket.socket(socket.AF_UNIX)
        s.connect("\0grpo-leak")
        return "connected"

    state = {
        "cwd": os.getcwd(),
        "files": {top: tree(top) for top in ("/work", "/tmp", "/dev")},
        "root": sorted(os.listdir("/")),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "environ": dict(os.environ),
        "builtins": {k: ident(v) for k, v in vars(builtins).items()},
        "modules": {name: {k: ident(v) for k, v in sorted(vars(m).items()) if callable(v)}
                    for name, m in sorted(sys.modules.items()) if m is not None},
        "sys": [list(sys.path), [ident(f) for f in sys.meta_path + sys.path_hooks],
                sys.getrecursionlimit(), ident(sys.excepthook), sys.gettrace(),
                sys.getprofile()],
        "signals": {s.name: repr(signal.getsignal(s)) for s in signal.valid_signals()
                    if isinstance(s, signal.Signals)},
        "sigmask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "timers": [signal.getitimer(signal.ITIMER_REAL), signal.getitimer(signal.ITIMER_VIRTUAL)],
        "alarm": signal.alarm(0),
        "rlimits": {n: resource.getrlimit(getattr(resource, n)) for n in dir(resource)
                    if n.startswith("RLIMIT_")},
        "umask": os.umask(0o022),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "sysvipc": {k: open("/proc/sysvipc/" + k).read() for k in ("shm", "msg", "sem")},
        "shmget": c_call(libc.shmget, 0x6772706F, 0, 0),
        "msgget": c_call(libc.msgget, 0x6772706F, 0),
        "mq_open": c_call(libc.mq_open, b"/grpo-leak", os.O_RDONLY),
        "abstract_socket": attempt(abstract_connect),
        "hash": hash("grpo"),  # the zygote's hash seed: the same for every run
    }
    print(repr(state))
""")


def probe() -> dict:
    res = run_python(PROBE, limits=BIG_OUTPUT, prefork=True)
    assert res.ok and not res.output_truncated, res.stderr
    return ast.literal_eval(res.stdout)


# ------------------------------------------------------------------------------ the attacks
DAEMON = """
    import os, socket, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:  # a detached grandchild that keeps writing and holds a socket
            s = socket.socket(socket.AF_UNIX)
            s.bind("\\0grpo-leak")
            s.listen(1)
            for i in range(1000):
                for top in ("/work", "/tmp"):
                    try:
                        open(f"{top}/daemon-{i}", "w").write("x")
                    except OSError:
                        pass
                time.sleep(0.01)
        os._exit(0)
    time.sleep(0.1)
"""
ATTACKS = {
    "background_process": DAEMON,
    "files": """
        import os
        for top in ("/work", "/tmp", "/", "/dev", "/dev/shm", "/usr", "/proc", "/usr/lib"):
            for name in ("left.txt", ".hidden"):
                try:
                    with open(os.path.join(top, name), "w") as f:
                        f.write("left behind")
                except OSError:
                    pass
        os.makedirs("/tmp/deep/er", exist_ok=True)
        os.chmod("/tmp/deep", 0o777)
        os.mkfifo("/work/fifo")
        os.symlink("/etc/passwd", "/tmp/link")
    """,
    "environment": """
        import os
        os.environ["LEAK"] = "1"
        os.putenv("PUTENV_LEAK", "1")
        del os.environ["PATH"]
        os.chdir("/tmp")
        os.umask(0o777)
    """,
    "monkeypatch": """
        import builtins, marshal, os, sys, types
        builtins.len = lambda x: 42
        builtins.print = lambda *a, **k: None
        builtins.LEAK = 1
        os.listdir = lambda *a: []
        marshal.loads = lambda *a: None
        sys.modules["json"] = types.ModuleType("json")
        harness = sys.modules.get("harness")
        if harness is not None:  # the harness the zygote imported: patch it in our copy
            harness._run = harness._supervise = lambda *a, **k: None
        sys.path.insert(0, "/work")
        open("/work/json.py", "w").write("LEAK = 1\\n")
        sys.setrecursionlimit(50)
        sys.excepthook = lambda *a: None
        sys.settrace(lambda *a: None)
    """,
    "signals": """
        import signal
        signal.signal(signal.SIGUSR1, lambda *a: None)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGCHLD])
        signal.setitimer(signal.ITIMER_VIRTUAL, 100)
        signal.alarm(100)
    """,
    "limits": """
        import os, resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (10, 10))
        resource.setrlimit(resource.RLIMIT_STACK, (2**20, 2**20))
        os.nice(10)
        os.umask(0o077)
    """,
    "ipc": """
        import ctypes, os, time
        libc = ctypes.CDLL(None, use_errno=True)
        key = 0x6772706F
        shm = libc.shmget(key, 4096, 0o1666)  # IPC_CREAT | 0666: outlives its creator
        assert shm >= 0, ctypes.get_errno()
        assert libc.msgget(key, 0o1666) >= 0
        assert libc.semget(key, 1, 0o1666) >= 0
        mq_open = libc.mq_open
        mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        assert mq_open(b"/grpo-leak", os.O_CREAT | os.O_RDWR, 0o666, None) >= 0
    """,
    "zygote": """
        import ctypes, os, signal
        libc = ctypes.CDLL(None, use_errno=True)
        me = os.getpid()
        reached = []
        for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
            if pid == me:
                continue
            if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
                reached.append(("ptrace", pid))
            for path, mode in ((f"/proc/{pid}/mem", "r+b"), (f"/proc/{pid}/environ", "rb"),
                               (f"/proc/{pid}/oom_score_adj", "w")):
                try:
                    open(path, mode).close()
                    reached.append((path, mode))
                except OSError:
                    pass
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                    reached.append(("kill", pid, sig))
                except OSError:
                    pass
        for pid in range(2, 4000):  # pids not listed: the zygote lives outside this namespace
            try:
                os.kill(pid, 0)
                if pid != me:
                    reached.append(("exists", pid))
            except OSError:
                pass
        print(reached)
        try:
            os.kill(-1, signal.SIGKILL)  # every process it may signal but itself and its PID 1
            print("killed some")
        except OSError as e:
            print(type(e).__name__)
    """,
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_nothing_one_run_does_reaches_the_next(attack):
    z = zygote()
    before = probe()
    res = run_python(code(ATTACKS[attack]), limits=FAST, prefork=True)
    assert res.ok, res.stderr
    if attack == "zygote":
        assert res.stdout == "[]\nProcessLookupError\n"  # reached nothing, no one to kill
    after = probe()
    assert [key for key in before if after[key] != before[key]] == []  # what differs
    assert zygote() is z and z.alive()  # the same zygote served every run: no respawn
    assert sandbox_processes() == []


def test_each_run_has_its_own_uid_and_a_fresh_process_tree():
    prog = "import os\nprint(os.getuid(), os.getpid(), os.getppid(), os.listdir('/proc/1/task'))"
    outs = [run_python(prog, limits=FAST, prefork=True).stdout.split(" ", 1) for _ in range(3)]
    uids = {int(uid) for uid, _ in outs}
    assert len(uids) == 3 and min(uids) >= SANDBOX_UID_MIN
    assert {rest for _, rest in outs} == {"2 1 ['1']\n"}  # PID 2 under its own PID 1


def test_assert_mode_hacks_do_not_carry_over():
    hack = "import builtins\nbuiltins.AssertionError = None\nbuiltins.__import__ = None\n"
    run_tests(hack, ["assert True"], limits=FAST, prefork=True)
    run = run_tests("def f(x):\n    return x", ["assert f(1) == 1", "assert f(1) == 2",
                                                 "import json\nassert json.dumps(1) == '1'"],
                    limits=FAST, prefork=True)
    assert run.passed == (True, False, True) and not run.tampered


def test_concurrent_runs_do_not_mix():
    # many threads share one zygote; each run must get its own input, output and verdicts
    prog = "import sys, time\nx = input()\ntime.sleep(0.05)\nprint(x * 2)\nsys.exit(int(x) % 3)"
    results: dict[int, object] = {}

    def one(i):
        results[i] = run_python(prog, stdin=str(i), limits=FAST, prefork=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, res in results.items():
        assert res.stdout == f"{str(i) * 2}\n" and res.returncode == i % 3, (i, res)
    assert len(results) == 24


def test_runs_that_end_out_of_order_keep_their_own_results():
    # run i sleeps longer the smaller i is: they end in the reverse of the order they started
    results: dict[int, object] = {}

    def one(i):
        program = f"import time\ntime.sleep({(12 - i) * 0.03})\nprint({i})\n"
        program += f"def f():\n    return {i}\n"
        results[i] = run_tests(program, [f"assert f() == {i}", f"assert f() != {i}"],
                               limits=FAST, prefork=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(12))
    for i, run in results.items():
        assert (run.passed, run.result.stdout, run.tampered) == ((True, False), f"{i}\n", False)


def test_concurrent_runs_cannot_see_or_touch_each_other():
    # A leaves files and a live process, then B (running meanwhile) looks and kills all it can
    a = code("""
        import os, time
        for path in ("/work/mark", "/tmp/mark"):
            open(path, "w").write("a")
        child = os.fork()
        if child == 0:
            time.sleep(3)
            os._exit(0)
        time.sleep(1.5)
        print(os.listdir("/work"), os.listdir("/tmp"), os.waitpid(child, os.WNOHANG) == (0, 0))
    """)
    b = code("""
        import os, signal
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print(os.listdir("/work"), os.listdir("/tmp"), pids, os.getuid() >= 2_000_000_000)
        try:
            os.kill(-1, signal.SIGKILL)  # every process it may signal but itself
        except OSError as e:
            print(type(e).__name__)  # there is none
    """)
    out = {}
    first = threading.Thread(target=lambda: out.update(a=run_python(a, limits=FAST, prefork=True)))
    first.start()
    time.sleep(0.5)  # A has written its files and forked its child by now
    out["b"] = run_python(b, limits=FAST, prefork=True)
    first.join()
    assert out["b"].stdout == "[] [] [1, 2] True\nProcessLookupError\n", out["b"]
    assert out["a"].stdout == "['mark'] ['mark'] True\n", out["a"]  # untouched by B


def test_concurrent_runs_cannot_talk_over_abstract_sockets():
    listener = code("""
        import socket, time
        s = socket.socket(socket.AF_UNIX)
        s.bind("\\0grpo-chat")
        s.listen(1)
        s.settimeout(2)
        try:
            s.accept()
            print("accepted")
        except OSError:
            print("alone")
    """)
    talker = code("""
        import socket, time
        time.sleep(0.5)
        try:
            socket.socket(socket.AF_UNIX).connect("\\0grpo-chat")
            print("connected")
        except OSError as e:
            print(type(e).__name__)
    """)
    out = {}

    def run(name, program):
        out[name] = run_python(program, limits=FAST, prefork=True).stdout

    threads = [threading.Thread(target=run, args=("listener", listener)),
               threading.Thread(target=run, args=("talker", talker))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {"listener": "alone\n", "talker": "ConnectionRefusedError\n"}


# ------------------------------------------------------------------------------ script exits
@pytest.mark.parametrize("program, code_, stdout, stderr", [
    ("print('no newline', end='')", 0, "no newline", ""),
    ("import sys\nprint('x')\nsys.exit(3)", 3, "x\n", ""),
    ("import sys\nsys.exit('bye')", 1, "", "bye\n"),
    ("import atexit\natexit.register(print, 'at exit')", 0, "at exit\n", ""),
    ("import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), print('joined'))"
     ").start()", 0, "joined\n", ""),
    ("raise KeyError('k')", 1, "", "KeyError: 'k'\n"),
])
def test_a_forked_program_ends_like_a_fresh_interpreter(program, code_, stdout, stderr):
    for pf in (True, False):
        res = run_python(program, limits=FAST, prefork=pf)
        assert (res.returncode, res.stdout) == (code_, stdout), (pf, res)
        assert res.stderr.endswith(stderr), (pf, res)


# ------------------------------------------------------------------------------ the zygote
def test_a_dead_zygote_is_replaced_with_a_warning(caplog):
    z = zygote()
    os.kill(z.pid, signal.SIGKILL)  # its launcher: --kill-child takes the zygote along
    z.proc.wait()
    with caplog.at_level(logging.WARNING, logger="grpo.sandbox"):
        res = run_python("print(6 * 7)", limits=FAST, prefork=True)
    assert res.ok and res.stdout == "42\n"
    assert zygote() is not z and "died" in caplog.text and "starting a new one" in caplog.text


def test_a_run_cut_short_by_the_zygote_s_death_runs_again(caplog):
    z = zygote()
    [zygote_pid] = children(z.pid)
    out = []
    runner = threading.Thread(target=lambda: out.append(run_python(
        "import time\ntime.sleep(1)\nprint('done')", limits=FAST, prefork=True)))
    earlier = set(children(zygote_pid))  # runs of earlier tests it has not reaped yet
    with caplog.at_level(logging.WARNING, logger="grpo.sandbox"):
        runner.start()
        wait_for(lambda: set(children(zygote_pid)) - earlier)  # this run is under way
        os.kill(zygote_pid, signal.SIGKILL)
        runner.join()
    assert out[0].ok and out[0].stdout == "done\n"
    assert "running it again on a new one" in caplog.text


def test_a_zygote_that_cannot_start_is_a_loud_setup_failure(tmp_path, monkeypatch, caplog):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no interpreter here' >&2\nexit 3\n")
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    monkeypatch.setenv("GRPO_SANDBOX_PYTHON", str(fake))
    with caplog.at_level(logging.ERROR, logger="grpo.sandbox"):
        res = run_tests("def f(): pass", ["assert f() is None"], limits=FAST, prefork=True)
    assert res.result.setup_failed and res.passed == (False,)
    assert "exit status 3" in res.result.stderr and "no interpreter here" in res.result.stderr
    assert "did not start" in caplog.text


ORPHAN_SCRIPT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from grpo.sandbox import prefork
from grpo.sandbox import SandboxLimits, run_python
run_python("pass", prefork=True)
[z] = prefork._ZYGOTES.values()
print(z.pid, flush=True)
run_python("import time\\nwhile True: time.sleep(1)", prefork=True,
           limits=SandboxLimits(wall_time_s=float(sys.argv[2])))
"""


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_runs_end_when_the_scoring_process_dies_or_hangs(how):
    """Dies: the zygote sees its socket close and kills everything. Hangs (SIGSTOP, so the
    launcher never sends its kill): the run's PID 1 ends the run at wall + 2 s by itself."""
    wall = 1.0 if how == "hangs" else 30.0
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(REPO / "src"), str(wall)],
                            stdout=subprocess.PIPE, text=True)
    try:
        launcher_pid = int(proc.stdout.readline())  # the zygote's ``unshare``
        wait_for(lambda: sandbox_processes(settle_s=0, owner=proc.pid) != [])  # it runs
        os.kill(proc.pid, signal.SIGKILL if how == "dies" else signal.SIGSTOP)
        settle = prefork.BACKSTOP_S + wall + 3
        assert sandbox_processes(settle_s=settle, owner=proc.pid) == []
        if how == "dies":  # the zygote exited, so did ``unshare --fork`` (which waits for it)
            time.sleep(0.5)
            assert not alive(launcher_pid)
    finally:
        proc.kill()
        proc.wait()


def test_the_per_run_path_is_a_setting(monkeypatch):
    monkeypatch.setenv("GRPO_SANDBOX_PREFORK", "0")
    assert not sandbox_prefork()
    before = dict(prefork.STATS)
    prefork.close_zygotes()
    assert run_python("print(1)", limits=FAST).stdout == "1\n"
    assert not [k for k in prefork._ZYGOTES if k[0] == os.getpid()]  # no zygote started
    monkeypatch.setenv("GRPO_SANDBOX_PREFORK", "yes")
    with pytest.raises(ValueError, match="GRPO_SANDBOX_PREFORK"):
        sandbox_prefork()
    monkeypatch.delenv("GRPO_SANDBOX_PREFORK")
    assert sandbox_prefork() and prefork.STATS == before
