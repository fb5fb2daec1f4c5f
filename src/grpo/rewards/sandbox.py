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

import logging
import os
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from grpo.rewards._sandbox_process import (
    SandboxLimits,
    SandboxResult,
    _is_root,
    _launch,
    _plan,
)

__all__ = ["MODES", "SandboxLimits", "SandboxResult", "TestRun", "run_python", "run_tests",
           "sandbox_layers", "sandbox_mode"]

log = logging.getLogger(__name__)

MODES = ("namespaces", "rlimits")
_COMMON_LAYERS = ("wall-timeout", "process-group", "rlimits", "scrubbed-env", "temp-workdir",
                  "no-new-privs")
_NS_LAYERS = ("pid-namespace", "net-namespace", "mount-namespace")


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

    >>> run_tests("def add(a, b): return a + b",
    ...           ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]).passed
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
