"""Run untrusted Python (model-written code) in a sandboxed process.

Model code is hostile by default: it is never executed in the scoring process. Each run gets
these layers, the strongest the host allows (:func:`sandbox_layers` says which are active):

========================  ===================================================================
layer                     what it does
========================  ===================================================================
``wall-timeout``          the run is killed (SIGKILL to all its processes) after
                          ``wall_time_s``; a backstop kills it 2 s later even if the scoring
                          process hangs or dies (``timeout(1)`` per run; pre-forked: the
                          run's own PID 1, and the zygote when its scoring process is gone)
``process-group``         own session and process group, killed as a whole
``rlimits``               CPU seconds, address space, file size (also caps stdout/stderr),
                          process count (RLIMIT_NPROC), open files, no core dumps
``scrubbed-env``          environment rebuilt from scratch: no secrets, no PYTHON* variables
``temp-workdir``          an empty working folder, removed afterwards
``no-new-privs``          setuid binaries cannot regain privileges
``no-keyring``            seccomp: add_key/request_key/keyctl fail (the kernel keyring is not
                          namespaced: a key stored under a uid would outlive the run), as
                          does every syscall of a foreign ABI (i386, x32)
``uid-drop``              started as root: the program runs as its own unused uid/gid (so
                          RLIMIT_NPROC applies, it cannot signal other processes or write
                          root-owned files)
``cap-drop``              started as a normal user inside a user namespace: every capability
                          is dropped
``pid-namespace``         its own PID namespace: it sees and can signal only its own
                          processes; all of them die with it
``net-namespace``         its own network namespace: no interface but a down loopback
``ipc-namespace``         its own System V IPC / POSIX message queue namespace (a shared
                          memory segment would otherwise outlive the run)
``mount-namespace``       a fresh root (``pivot_root``): read-only /usr and the Python
                          install, a size-capped tmpfs /work and /tmp of its own, a minimal
                          read-only /dev, its own /proc; host files (the project, /etc, /root,
                          /home) are not reachable at all
``pre-forked``            (not a layer: how runs start) see below
========================  ===================================================================

Modes, tried in order at first use (a probe run must succeed) and cached per process:
``"namespaces"`` (all layers; real root, or an unprivileged user namespace) and ``"rlimits"``
(no namespaces: no network isolation, the file system is protected only by file permissions
and, as root, the uid drop). Force one with ``GRPO_SANDBOX=namespaces|rlimits``.

Pre-forked runs (the default in "namespaces" mode on x86-64 and arm64; ``prefork=False`` or
``GRPO_SANDBOX_PREFORK=0`` for the per-run path). Per run, the per-run path starts
``timeout``, ``unshare`` and a fresh ``python -I -S -B`` that builds the root file system:
about 20 ms of CPU, most of a short program's cost. Pre-forked, each scoring process starts
one *zygote* on first use: that interpreter enters its own mount, PID, IPC and network
namespaces, builds the read-only root once and then only clones. Per run it clones one
process straight into *new* mount, PID, IPC and network namespaces of the run's own, where it
is PID 1 and the leader of its own session; it mounts a fresh /work, /tmp and /proc, then
forks the program's process, which sets its limits, drops to a fresh uid and installs the
seccomp filter exactly as on the per-run path. What the zygote changes, and why each run
still starts from the same clean state:

* the zygote never runs untrusted code and never reads a job (a run's data reaches the run's
  own processes through its own fds), so what every run inherits is the zygote's pristine
  state; a program's changes to builtins, modules, signal handlers, the environment, limits or
  the working folder live in its own copy-on-write process and die with it;
* a run cannot reach the zygote: the zygote is outside the run's PID namespace (no pid to
  signal or ptrace, no /proc entry: the run's /proc is its own) and its session, runs as root
  or with every capability while the program has none, is not dumpable, and shares no
  writable file or memory with it; the run closes every fd but its own before anything else;
* nothing written survives a run: /work and /tmp are the run's own tmpfs, System V IPC and
  message queues its own namespace, abstract unix sockets its own network namespace (also
  between runs that overlap in time: several threads may share one zygote); every process of
  the run dies with its PID 1; keys are refused (``no-keyring``);
* a run that hangs is killed (SIGKILL to its PID 1 takes every descendant with it); if the
  zygote dies, the next run starts a new one (logged as a warning) and a run it took down is
  run once more; a zygote that cannot start makes the run a setup failure (unscorable),
  never a silent fallback to the per-run path.

What pre-forking gives up (use the per-run path if it matters to you): every run's
interpreter is a copy of the zygote's, so all runs of one zygote share its address-space
layout (ASLR) and its string-hash seed (``PYTHONHASHSEED``: set iteration order is the same
from run to run), and start with the modules the zygote imported (``os``, ``ctypes``,
``marshal``, ``select``, ``traceback`` and its ``re``, ...) already in ``sys.modules``. None
of these carries data from one run to the next. Not available in "rlimits" mode (no
namespaces to isolate forks from each other): that mode always uses the per-run path.

What it protects against: infinite loops, fork bombs, memory bombs, unbounded output, disk
filling, reading/writing/deleting files outside the working folder, network access, reading
the parent's environment, signalling or killing the parent, leftover processes, one run
leaving state (files, processes, IPC objects, keys) for a later one.

What it does NOT protect against:

* kernel exploits (the seccomp filter only refuses the keyring calls; use a VM or gVisor for
  truly adversarial code);
* CPU-time side channels and other runs' timing;
* in "assert" mode the program and the tests share one interpreter (tests call the program's
  functions). The harness binds what it needs before the program runs, restores pristine
  builtins (from an immutable copy) before each test, reports over a private channel with a
  per-run token, and counts a test only if it reported ``pass`` *after* running it. That
  defeats early ``sys.exit(0)`` / ``os._exit(0)``, printing fake results, and patching
  ``builtins``; it does not stop a program written to introspect the harness (frames, ``gc``,
  audit hooks) and forge its report, nor objects whose ``__eq__`` always returns True.
  Untrusted *policies* do find such hacks in long RL runs: watch pass rates that rise without
  better answers.
* with the "rlimits" mode only: network access, reading world-readable files, and leaving
  files in world-writable host folders (/tmp, /dev/shm) for a later run.

The package, used by code rewards (:class:`grpo.rewards.CodeReward`) and the Python tool
(:func:`grpo.rollout.tools.python_tool`); it imports the standard library only:

==================  =========================================================================
``__init__``        this API: modes, layers, :func:`run_python`, :func:`run_tests`
``process.py``      limits, results, the per-run path (``timeout``, ``unshare``, a fresh
                    interpreter per run) and what both paths share
``prefork.py``      the pre-forked path, host side: one zygote per scoring process
``zygote.py``       run as a script inside the namespaces: builds the root once, forks runs
``harness.py``      run as a script (or by the zygote): the first code of every run, then the
                    program and its tests
==================  =========================================================================

``grpo.rewards.sandbox``, its home in grpo 0.1, is a deprecated alias of this package that goes
away in grpo 0.3 (as grpo 0.1's flat config keys do).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from grpo.sandbox.prefork import SUPPORTED as PREFORK_SUPPORTED
from grpo.sandbox.prefork import launch_prefork
from grpo.sandbox.process import (
    KEYRING_FILTER,
    SandboxLimits,
    SandboxResult,
    _is_root,
    _launch,
    _plan,
)

__all__ = [
    "MODES",
    "SandboxLimits",
    "SandboxResult",
    "TestRun",
    "run_python",
    "run_tests",
    "sandbox_layers",
    "sandbox_mode",
    "sandbox_prefork",
]

log = logging.getLogger(__name__)

MODES = ("namespaces", "rlimits")
_COMMON_LAYERS = (
    "wall-timeout",
    "process-group",
    "rlimits",
    "scrubbed-env",
    "temp-workdir",
    "no-new-privs",
) + (("no-keyring",) if KEYRING_FILTER else ())
_NS_LAYERS = ("pid-namespace", "net-namespace", "ipc-namespace", "mount-namespace")


@dataclass(frozen=True)
class TestRun:
    """Outcome of an assert-style test run: one pass flag per test."""

    passed: tuple[bool, ...]
    result: SandboxResult
    program_error: str | None = None  # exception the program raised while loading, if any
    tampered: bool = False  # the verdict channel held lines the harness did not write


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
        probe = _launch(
            {"mode": "script", "program": "print(6 * 7)"},
            None,
            SandboxLimits(wall_time_s=20),
            "namespaces",
        )
        if probe.ok and probe.stdout == "42\n":
            return "namespaces"
        log.warning(
            "grpo sandbox: namespaces unavailable (%s); using rlimits only", probe.describe()
        )
    return "rlimits"


def sandbox_prefork(mode: str | None = None, prefork: bool | None = None) -> bool:
    """Whether runs in ``mode`` are pre-forked: ``prefork`` if given, else
    ``GRPO_SANDBOX_PREFORK`` (``1`` by default, ``0`` for the per-run path). Only the
    "namespaces" mode on x86-64 or arm64 Linux can pre-fork (asking for it elsewhere raises
    ValueError; by default those use the per-run path)."""
    mode = mode or sandbox_mode()
    if prefork is None:
        env = os.environ.get("GRPO_SANDBOX_PREFORK", "1")
        if env not in ("0", "1"):
            raise ValueError(f"GRPO_SANDBOX_PREFORK must be 0 or 1, got {env!r}")
        return env == "1" and mode == "namespaces" and PREFORK_SUPPORTED
    if prefork and mode != "namespaces":
        raise ValueError(f"prefork=True needs the 'namespaces' sandbox mode, not {mode!r}")
    if prefork and not PREFORK_SUPPORTED:
        raise ValueError(f"prefork=True is not supported on {os.uname().machine}")
    return bool(prefork)


def sandbox_layers(mode: str | None = None, prefork: bool | None = None) -> tuple[str, ...]:
    """Names of the isolation layers active in ``mode`` (default: this process's mode), plus
    ``"pre-forked"`` when runs start from a zygote (:func:`sandbox_prefork`)."""
    mode = mode or sandbox_mode()
    layers = _COMMON_LAYERS + (("uid-drop",) if _plan(mode)[1] else ())
    if mode == "namespaces":
        layers += (() if _is_root() else ("cap-drop",)) + _NS_LAYERS
    if sandbox_prefork(mode, prefork):
        layers += ("pre-forked",)
    return layers


def _launch_job(
    job: dict,
    stdin: bytes | None,
    limits: SandboxLimits | None,
    mode: str | None,
    prefork: bool | None,
) -> SandboxResult:
    mode = mode or sandbox_mode()
    limits = limits or SandboxLimits()
    if sandbox_prefork(mode, prefork):
        return launch_prefork(job, stdin, limits)
    return _launch(job, stdin, limits, mode)


# ---------------------------------------------------------------------------- public runs
def run_python(
    program: str,
    *,
    stdin: str | bytes = b"",
    limits: SandboxLimits | None = None,
    mode: str | None = None,
    prefork: bool | None = None,
) -> SandboxResult:
    """Run ``program`` as ``__main__`` in the sandbox, feeding it ``stdin``. ``prefork``:
    False for the per-run path (see the module docstring; default :func:`sandbox_prefork`).

    >>> run_python("print(input()[::-1])", stdin="abc").stdout
    'cba\\n'
    """
    if isinstance(stdin, str):
        stdin = stdin.encode()
    return _launch_job({"mode": "script", "program": program}, stdin, limits, mode, prefork)


def run_tests(
    program: str,
    tests: Sequence[str],
    *,
    limits: SandboxLimits | None = None,
    test_timeout_s: float = 5.0,
    mode: str | None = None,
    prefork: bool | None = None,
) -> TestRun:
    """Load ``program`` as a module, then run each test (assert-style Python) in its namespace.

    A test passes only if the harness reports it ran without raising. Everything runs in one
    sandboxed process; each test has its own ``test_timeout_s`` (a test stuck in C code is
    stopped by the run's wall limit instead, failing the remaining tests).

    >>> run_tests("def add(a, b): return a + b",
    ...           ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]).passed
    (True, False)
    """
    tests = list(tests)
    res = _launch_job(
        {"mode": "assert", "program": program, "tests": tests, "test_timeout_s": test_timeout_s},
        None,
        limits,
        mode,
        prefork,
    )
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
