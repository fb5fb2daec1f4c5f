"""Adversarial tests of grpo.sandbox, one property per test, on the real sandbox.

Each test runs hostile code and checks three things: the host and this (scoring) process are
unaffected, the outcome is a failure (or the true result), and the call returns within its
limit. Tests run in the mode this host supports ("namespaces" here and in CI), on the default
pre-forked path; the core properties also run on the per-run path and in the fallback
"rlimits" mode. What pre-forking must add (nothing of one run reaches the next, the zygote is
out of reach) is tested in ``test_sandbox_prefork.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from grpo.sandbox import (
    SandboxLimits,
    run_python,
    run_tests,
    sandbox_layers,
    sandbox_mode,
)

MODE = sandbox_mode()
PATHS = {  # how a run starts: run_python / run_tests keyword arguments
    "prefork": {"mode": "namespaces", "prefork": True},
    "per-run": {"mode": "namespaces", "prefork": False},
    "rlimits": {"mode": "rlimits", "prefork": False},
}
ALL_PATHS = [p for p in PATHS if MODE == "namespaces" or p == "rlimits"]
FAST = SandboxLimits(wall_time_s=3.0, cpu_time_s=3.0, memory_mb=256, max_processes=8)
SANDBOX_UID_MIN = 2_000_000_000
REPO = Path(__file__).resolve().parents[1]


def sandbox_processes(settle_s: float = 3.0) -> list[tuple[int, str, bytes]]:
    """(pid, state, command) of live (not zombie) processes owned by this process's sandbox
    uids (2e9 + (pid x 4096 + n) mod 2^30: not those of other processes on the machine), after
    letting SIGKILLed ones finish dying for up to ``settle_s`` seconds. None after a run."""
    base = SANDBOX_UID_MIN + (os.getpid() * 4096) % 2**30
    end = time.monotonic() + settle_s
    while True:
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if not 0 <= entry.stat().st_uid - base < 4096:
                    continue
                state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state in ("Z", "X"):
                    continue
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()[:80]
            except (FileNotFoundError, ProcessLookupError, IndexError):  # it finished dying meanwhile
                continue
            pids.append((int(entry.name), state, cmd))
        if not pids or time.monotonic() > end:
            return pids
        time.sleep(0.05)


def code(src: str) -> str:
    return textwrap.dedent(src).strip() + "\n"


def timed(fn, *args, **kwargs):
    t = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t


# ------------------------------------------------------------------------------ basics
def test_layers_match_mode():
    layers = sandbox_layers()
    for layer in ("wall-timeout", "process-group", "rlimits", "scrubbed-env", "temp-workdir",
                  "no-keyring"):
        assert layer in layers
    ns = {"pid-namespace", "net-namespace", "ipc-namespace", "mount-namespace"}
    assert ns <= set(layers) if MODE == "namespaces" else not ns & set(layers)
    assert ("pre-forked" in layers) == (MODE == "namespaces")  # the default where possible
    assert "pre-forked" not in sandbox_layers(prefork=False)
    assert not (ns | {"pre-forked"}) & set(sandbox_layers("rlimits"))
    with pytest.raises(ValueError, match="namespaces"):
        sandbox_layers("rlimits", prefork=True)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_kernel_keyring_is_refused(path):
    # keys are not namespaced: one stored under a run's uid would outlive the run
    probe = code("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        nr = {"x86_64": 248, "aarch64": 217}[os.uname().machine]  # add_key
        r = libc.syscall(nr, b"user", b"grpo-test", b"secret", 6, -4)  # the user keyring
        print(r, os.strerror(ctypes.get_errno()) if r < 0 else "stored")
        if os.uname().machine == "x86_64":  # the x32 ABI's getpid: refused by the filter
            r = libc.syscall(0x40000000 + 39)  # (the kernel alone would say ENOSYS)
            print(r, os.strerror(ctypes.get_errno()) if r < 0 else "ran")
    """)
    res = run_python(probe, limits=FAST, **PATHS[path])
    assert res.ok and res.stdout.startswith("-1 Operation not permitted\n")
    assert res.stdout.count("-1 Operation not permitted\n") == res.stdout.count("\n")


@pytest.mark.parametrize("path", ALL_PATHS)
def test_runs_a_program_with_stdin(path):
    res = run_python("print(sum(map(int, input().split())))", stdin="2 3 4", **PATHS[path])
    assert res.ok and res.stdout == "9\n"


@pytest.mark.parametrize("path", ALL_PATHS)
def test_assert_tests_report_each_result(path):
    run = run_tests(
        "def sq(x): return x * x",
        ["assert sq(3) == 9", "assert sq(2) == 5", "assert sq(-1) == 1"],
        **PATHS[path],
    )
    assert run.passed == (True, False, True) and not run.tampered


@pytest.mark.parametrize("path", ALL_PATHS)
def test_a_traceback_shows_the_program_s_frames_as_python_prints_them(path):
    res = run_python("def g():\n    raise KeyError(1)\ng()\n", limits=FAST, **PATHS[path])
    assert res.returncode == 1 and res.stderr == (
        'Traceback (most recent call last):\n  File "program.py", line 3, in <module>\n'
        '  File "program.py", line 2, in g\nKeyError: 1\n')  # no harness frame, no host path
    run = run_tests("x = (1 +\n", ["assert True"], limits=FAST, **PATHS[path])
    assert run.program_error == "SyntaxError" and run.result.stderr == (
        '  File "solution.py", line 1\n    x = (1 +\n        ^\n'
        "SyntaxError: '(' was never closed\n")


@pytest.mark.parametrize("path", ALL_PATHS)
def test_a_program_that_breaks_traceback_printing_still_gets_its_verdict(path):
    program = "import traceback\ntraceback.print_exception = None\nraise KeyError(1)\n"
    res = run_python(program, limits=FAST, **PATHS[path])
    assert (res.returncode, res.stderr, res.setup_failed) == (1, "", False)
    run = run_tests(program, ["assert True"], limits=FAST, **PATHS[path])
    assert run.program_error == "KeyError" and not run.result.setup_failed


# ------------------------------------------------------------------------------ time
@pytest.mark.parametrize("path", ALL_PATHS)
def test_infinite_loop_is_killed_at_the_wall_limit(path):
    limits = SandboxLimits(wall_time_s=1.5, cpu_time_s=30)
    res, took = timed(run_python, "while True:\n    pass\n", limits=limits, **PATHS[path])
    assert res.timed_out and not res.ok
    assert took < 1.5 + 1.5


def test_cpu_time_limit_kills_before_the_wall_limit():
    limits = SandboxLimits(wall_time_s=20, cpu_time_s=1)
    res, took = timed(run_python, "while True:\n    pass\n", limits=limits)
    assert not res.ok and not res.timed_out
    assert res.returncode in (-9, -24)  # SIGKILL at the hard limit or SIGXCPU at the soft one
    # ended by the CPU limit, well before the wall limit (a loaded machine stretches the
    # wall time a 1 s CPU budget takes, so the bound is the wall limit itself)
    assert took < limits.wall_time_s


def test_sleeping_program_is_killed_at_the_wall_limit():
    res, took = timed(
        run_python, "import time\ntime.sleep(60)\n", limits=SandboxLimits(wall_time_s=1.0)
    )
    assert res.timed_out and took < 2.5


def test_each_assert_test_has_its_own_time_limit():
    run, took = timed(
        run_tests,
        "def f(n):\n    while n: pass\n    return 0\n",
        ["assert f(0) == 0", "assert f(1) == 0", "assert f(0) == 0"],
        limits=FAST,
        test_timeout_s=0.5,
    )
    assert run.passed == (True, False, True)
    assert took < 3


# ------------------------------------------------------------------------------ processes
@pytest.mark.parametrize("path", ALL_PATHS)
def test_fork_bomb_is_contained(path):
    bomb = code("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    res, took = timed(
        run_python, bomb, limits=SandboxLimits(wall_time_s=2, max_processes=8), **PATHS[path]
    )
    assert not res.ok and took < 4.5
    assert sandbox_processes() == []  # every fork died with the run
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


@pytest.mark.parametrize("path", ALL_PATHS)
def test_detached_daemon_does_not_survive_the_run(path):
    daemon = code("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        print("parent done")
    """)
    res = run_python(daemon, limits=FAST, **PATHS[path])
    assert res.ok and res.stdout == "parent done\n"
    assert sandbox_processes() == []


@pytest.mark.parametrize("path", ALL_PATHS)
def test_cannot_kill_the_scoring_process(path):
    me = os.getpid()
    attack = code(f"""
        import os, signal
        for target in (os.getppid(), {me}, 1, -1):
            try:
                os.kill(target, signal.SIGKILL)
                print("sent", target)
            except OSError as e:
                print("refused", target, type(e).__name__)
        try:
            os.killpg(os.getpgid({me}), signal.SIGKILL)
        except OSError as e:
            print("refused pgid", type(e).__name__)
    """)
    res = run_python(attack, limits=FAST, **PATHS[path])
    assert f"refused {me}" in res.stdout or MODE == "namespaces" and f"sent {me}" not in res.stdout
    assert os.getpid() == me  # still alive to check


def test_pid_namespace_hides_host_processes():
    if MODE != "namespaces":
        pytest.skip("no PID namespace on this host")
    res = run_python(
        "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))", limits=FAST
    )
    assert res.ok and len(eval(res.stdout)) <= 2  # itself (pid 1), maybe a transient helper


# ------------------------------------------------------------------------------ memory, output
@pytest.mark.parametrize("path", ALL_PATHS)
def test_memory_bomb_fails_inside_the_sandbox(path):
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n"
    res, took = timed(
        run_python, bomb, limits=SandboxLimits(wall_time_s=5, memory_mb=256), **PATHS[path]
    )
    assert not res.ok and not res.timed_out and "MemoryError" in res.stderr
    assert took < 5


def test_gigabytes_of_output_are_cut_off():
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    limits = SandboxLimits(wall_time_s=10, max_file_mb=4, max_output_bytes=1000)
    res, took = timed(run_python, flood, limits=limits)
    # at 4 MiB writes fail with EFBIG (Python ignores SIGXFSZ), long before the wall limit
    assert not res.ok and ("File too large" in res.stderr or res.returncode == -25)
    assert res.output_truncated and len(res.stdout) == 1000
    assert took < 5


def test_disk_filling_is_capped():
    fill = code("""
        import os
        n = 0
        try:
            while True:
                with open(f"f{n}", "wb") as f:
                    f.write(b"x" * 2**20)
                n += 1
        except OSError as e:
            print(n, type(e).__name__)
    """)
    res = run_python(fill, limits=SandboxLimits(wall_time_s=10, workdir_mb=16))
    if MODE != "namespaces":
        pytest.skip("no size-capped tmpfs work folder without a mount namespace")
    assert res.ok and int(res.stdout.split()[0]) <= 16


def test_non_utf8_output_is_decoded_with_replacement():
    res = run_python("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe\\x80 end\\n')\n")
    assert res.ok and res.stdout.startswith("ok ") and res.stdout.endswith(" end\n")
    assert "\ufffd" in res.stdout


# ------------------------------------------------------------------------------ files
def test_cannot_read_host_files():
    secret = REPO / "pyproject.toml"
    probe = code(f"""
        for path in ("/etc/passwd", "/etc/shadow", {str(secret)!r}, "/root/.bashrc"):
            try:
                print(path, len(open(path).read()))
            except OSError as e:
                print(path, "refused", type(e).__name__)
    """)
    res = run_python(probe, limits=FAST)
    assert res.ok
    assert f"{secret} refused" in res.stdout and "/etc/shadow refused" in res.stdout
    if MODE == "namespaces":
        assert "/etc/passwd refused" in res.stdout  # not even world-readable files


@pytest.mark.parametrize("path", ALL_PATHS)
def test_cannot_write_or_delete_host_files(tmp_path, path):
    tmp_path.chmod(0o755)
    canary = tmp_path / "canary.txt"
    canary.write_text("original")
    canary.chmod(0o644)
    project_file = REPO / "pyproject.toml"
    before = project_file.read_bytes()
    attack = code(f"""
        import os, shutil
        for path in ({str(canary)!r}, {str(project_file)!r}):
            for action in ("write", "delete"):
                try:
                    if action == "write":
                        open(path, "w").write("pwned")
                    else:
                        os.remove(path)
                    print(action, path, "done")
                except OSError as e:
                    print(action, path, "refused")
        try:
            shutil.rmtree({str(REPO / "src")!r})
        except OSError:
            print("rmtree refused")
    """)
    res = run_python(attack, limits=FAST, **PATHS[path])
    assert res.ok and "done" not in res.stdout
    assert canary.read_text() == "original" and project_file.read_bytes() == before
    assert (REPO / "src" / "grpo" / "sandbox" / "__init__.py").exists()


def test_world_writable_host_files_are_out_of_reach():
    if MODE != "namespaces":
        pytest.skip("without a mount namespace, world-writable files are writable by anyone")
    shared = Path("/tmp") / f"grpo-canary-{os.getpid()}"
    shared.mkdir(mode=0o777, exist_ok=True)
    shared.chmod(0o777)
    target = shared / "open.txt"
    target.write_text("original")
    target.chmod(0o666)
    try:
        res = run_python(f"open({str(target)!r}, 'w').write('pwned')\n", limits=FAST)
        assert not res.ok and "FileNotFoundError" in res.stderr
        assert target.read_text() == "original"
    finally:
        target.unlink()
        shared.rmdir()


@pytest.mark.parametrize("path", ALL_PATHS)
def test_work_folder_starts_empty_and_is_removed(path, monkeypatch):
    import tempfile

    import grpo.sandbox.process as process

    # a scratch root of our own (reachable by the run's uid), so other runs cannot interfere
    scratch = Path(tempfile.mkdtemp(prefix="grpo-test-", dir=process._scratch_dir()))
    scratch.chmod(0o711)
    monkeypatch.setattr(process, "_scratch_dir", lambda: str(scratch))
    try:
        program = "import os\nprint(os.listdir('.'))\nopen('left.txt', 'w').write('x')\n"
        res = run_python(program, limits=FAST, **PATHS[path])
        assert res.ok and res.stdout == "[]\n"
        assert list(scratch.iterdir()) == []  # the run's private folder is gone
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------------ network, env
def test_no_network_connections():
    if MODE != "namespaces":
        pytest.skip("no network namespace on this host")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    probe = code(f"""
        import socket
        for host, port in (("127.0.0.1", {port}), ("1.1.1.1", 53), ("pypi.org", 443)):
            try:
                socket.create_connection((host, port), timeout=1).close()
                print("connected", host)
            except OSError as e:
                print("refused", host, type(e).__name__)
    """)
    try:
        res = run_python(probe, limits=FAST)
    finally:
        server.close()
    assert res.ok and "connected" not in res.stdout and res.stdout.count("refused") == 3


@pytest.mark.parametrize("path", ALL_PATHS)
def test_environment_is_scrubbed(monkeypatch, path):
    monkeypatch.setenv("GRPO_TEST_SECRET", "hunter2")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    res = run_python("import os\nprint(sorted(os.environ.items()))\n", limits=FAST, **PATHS[path])
    assert res.ok
    assert "hunter2" not in res.stdout and "hf_secret" not in res.stdout
    assert set(eval(res.stdout)) <= {
        (k, v) for k, v in eval(res.stdout) if k in {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"}
    }


# ------------------------------------------------------------------------------ test hacking
@pytest.mark.parametrize("path", ALL_PATHS)
def test_sys_exit_zero_before_the_tests_passes_nothing(path):
    program = "import sys\ndef f(x):\n    return 0\nsys.exit(0)\n"
    run = run_tests(program, ["assert f(1) == 1", "assert f(2) == 2"], limits=FAST, **PATHS[path])
    assert run.passed == (False, False) and run.program_error == "SystemExit"


@pytest.mark.parametrize("path", ALL_PATHS)
def test_os_exit_zero_before_the_tests_passes_nothing(path):
    program = "import os\ndef f(x):\n    return 0\nos._exit(0)\n"
    run = run_tests(program, ["assert f(1) == 1", "assert f(2) == 2"], limits=FAST, **PATHS[path])
    assert run.result.returncode == 0  # the exit status alone would have said "success"
    assert run.passed == (False, False)


def test_exit_inside_the_tested_function_fails_that_test():
    program = "import os\ndef f(x):\n    if x == 2:\n        os._exit(0)\n    return x\n"
    run = run_tests(
        program, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"], limits=FAST
    )
    assert run.passed == (True, False, False)  # the process ended: later tests never ran


def test_patching_builtins_does_not_make_tests_pass():
    program = code("""
        import builtins
        def f():
            return [3, 1]
        builtins.sorted = lambda *a, **k: [1, 2, 3]
        builtins.len = lambda x: 3
        builtins.AssertionError = type("Nope", (Exception,), {})
        builtins.exec = lambda *a, **k: None
        __builtins__ = {"sorted": lambda *a, **k: [1, 2, 3]}
    """)
    run = run_tests(
        program,
        ["assert sorted(f()) == [1, 2, 3]", "assert len(f()) == 3", "assert sorted(f()) == [1, 3]"],
        limits=FAST,
    )
    assert run.passed == (False, False, True)  # only the true statement passes


@pytest.mark.parametrize("path", ALL_PATHS)
def test_the_builtins_tests_are_restored_from_cannot_be_patched(path):
    # through the harness's frame (the program is exec'd from it) or its module, if imported
    program = code("""
        import builtins, sys
        fake = lambda *a, **k: [1, 2, 3]
        builtins.sorted = fake
        pristine = sys._getframe(1).f_locals.get("pristine")
        try:
            pristine["sorted"] = fake
        except TypeError:
            print("immutable")
        harness = sys.modules.get("harness")
        if harness is not None:
            harness.PRISTINE_BUILTINS = tuple({**vars(builtins), "sorted": fake}.items())
    """)
    run = run_tests(program, ["assert sorted([3, 1]) == [1, 2, 3]"], limits=FAST, **PATHS[path])
    assert run.passed == (False,) and run.result.stdout == "immutable\n"


def test_overriding_assert_in_the_tested_function_does_not_help():
    program = code("""
        import builtins, sys
        def f(x):
            builtins.AssertionError = KeyboardInterrupt
            sys.settrace(lambda *a: None)
            return x + 1
    """)
    run = run_tests(program, ["assert f(1) == 3", "assert f(1) == 2"], limits=FAST)
    assert run.passed == (False, True)


def test_printing_fake_results_does_not_pass_tests():
    program = code("""
        import os
        fake = "".join(f"test {i} pass\\n" for i in range(3)) + "done\\n"
        print(fake)
        for fd in range(3, 30):
            try:
                os.write(fd, fake.encode())
            except OSError:
                pass
        def f(x):
            return None
    """)
    run = run_tests(program, ["assert f(1) == 1", "assert f(2) == 2"], limits=FAST)
    assert run.passed == (False, False)


def test_recursion_bomb_fails_without_harm():
    program = "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1) + 1\n"
    run, took = timed(run_tests, program, ["assert f(0) == 1", "assert 1 == 1"], limits=FAST)
    assert run.passed[0] is False and took < FAST.wall_time_s + 1.5
    plain = run_tests(
        "def g():\n    return g()\n", ["assert g() == 1", "assert 1 == 1"], limits=FAST
    )
    assert plain.passed == (False, True)  # RecursionError fails only its own test


def test_runs_in_parallel():
    # two runs that sleep 1 s each finish together in about 1 s, not 2
    program = "import time\ntime.sleep(1)\nprint('ok')\n"
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(run_python(program, limits=FAST)))
        for _ in range(2)
    ]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [r.stdout for r in results] == ["ok\n", "ok\n"]
    assert time.monotonic() - t < 1.95  # one after the other: >= 2 s of sleeping alone


@pytest.mark.parametrize("path", ALL_PATHS)
def test_setup_failure_is_reported_not_mistaken_for_a_failing_program(tmp_path, monkeypatch, path):
    assert sandbox_mode() == MODE  # probed with the real interpreter, before the fake one
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")  # exits "successfully" without running anything
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    monkeypatch.setenv("GRPO_SANDBOX_PYTHON", str(fake))
    res = run_python("print(1)", limits=FAST, **PATHS[path])
    assert res.setup_failed and not res.ok
    assert "setup failed" in res.describe()


def test_sandbox_never_runs_code_in_this_process(tmp_path):
    marker = tmp_path / "ran-here"
    run_python(f"open({str(marker)!r}, 'w').write('x')\n", limits=FAST)
    assert not marker.exists()
    assert "grpo_sandbox_flag" not in sys.modules
    run_python("import sys\nsys.modules['grpo_sandbox_flag'] = sys\n", limits=FAST)
    assert "grpo_sandbox_flag" not in sys.modules


def test_old_module_path_is_a_deprecated_alias():
    """``grpo.rewards.sandbox`` (the home in grpo 0.1) still works until grpo 0.3."""
    sys.modules.pop("grpo.rewards.sandbox", None)
    with pytest.warns(DeprecationWarning, match="import from grpo.sandbox"):
        import grpo.rewards.sandbox as old
    import grpo.sandbox as new

    assert old.run_python is new.run_python and old.SandboxLimits is new.SandboxLimits
    assert set(old.__all__) == set(new.__all__)


# ------------------------------------------------------------------------------ unprivileged host
NONROOT_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from grpo.sandbox import SandboxLimits, run_python, sandbox_layers, sandbox_mode
out = {"uid": os.getuid(), "mode": sandbox_mode(), "layers": sandbox_layers()}
probe = "try:\\n    open('/etc/passwd')\\n    print('read')\\nexcept OSError:\\n    print('refused')"
out["passwd"] = run_python(probe).stdout.strip()
bomb = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n"
res = run_python(bomb, limits=SandboxLimits(wall_time_s=1.5, max_processes=8))
out["bomb_ok"] = res.ok
# every run has this one uid here: a run must still not reach a concurrent one (kill(0)
# signals the caller's process group; kill(-1) every process it may signal)
import threading
slow = run_python("import time\\ntime.sleep(0.5)\\nprint('alive')")  # start the zygote
results = {}
victim = threading.Thread(target=lambda: results.update(victim=run_python(
    "import time\\ntime.sleep(1.5)\\nprint('alive')")))
victim.start()
time.sleep(0.5)
attack = "import os, signal\\nfor pid in (0, -1):\\n    try:\\n        os.kill(pid, signal.SIGKILL)\\n"
attack += "    except OSError:\\n        pass\\n"
results["attacker"] = run_python(attack)
victim.join()
out["victim"] = results["victim"].stdout
out["layers_prefork"] = "pre-forked" in sandbox_layers()
from grpo.sandbox.prefork import STATS
out["zygotes"] = STATS  # a zygote taken down would be replaced (and its run rerun): count
# the program's uid owns the root's tmpfs mounts here: none of them may be writable
places = ("/", "/dev", "/usr", "/proc")
probe = f"for d in {places!r}:\\n    try:\\n        open(d + '/leak', 'w')\\n        print(d)\\n"
out["writable"] = run_python(probe + "    except OSError:\\n        pass\\n").stdout
os.environ["GRPO_SANDBOX"] = "rlimits"
import grpo.sandbox as sb
sb._MODE = None
out["rlimits_layers"] = sb.sandbox_layers()
out["rlimits_run"] = run_python("import os; print(sorted(os.environ))").stdout.strip()
print(json.dumps(out))
"""


def test_unprivileged_user_gets_user_namespace_and_dropped_capabilities():
    """As a normal user (uid 65534 via setpriv), the sandbox builds the same namespaces inside
    an unprivileged user namespace and drops every capability instead of changing uid."""
    import json

    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    src = REPO / "src"
    if os.geteuid() != 0 or setpriv is None or not os.path.exists(python):
        pytest.skip("needs root, setpriv and a system python to impersonate a normal user")
    if not all(os.stat(p).st_mode & 0o005 for p in (src, src / "grpo", REPO)):
        pytest.skip("the source tree is not readable by other users")
    proc = subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            python,
            "-I",
            "-c",
            NONROOT_SCRIPT,
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534
    assert "rlimits" in out["rlimits_layers"] and "uid-drop" not in out["rlimits_layers"]
    assert out["rlimits_run"] == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']"
    assert out["bomb_ok"] is False
    if out["mode"] != "namespaces":
        pytest.skip("unprivileged user namespaces are disabled on this host")
    assert "cap-drop" in out["layers"] and "mount-namespace" in out["layers"]
    assert out["passwd"] == "refused"
    assert out["layers_prefork"] and out["victim"] == "alive\n"
    assert out["zygotes"] == {"started": 1, "died": 0}
    assert out["writable"] == ""
