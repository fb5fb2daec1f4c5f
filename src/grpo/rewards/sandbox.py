"""Deprecated alias of :mod:`grpo.sandbox`, the sandbox's home since it became its own package
(code rewards and the Python tool both use it). Goes away in grpo 0.3: import from
``grpo.sandbox`` instead."""

import warnings

from grpo.sandbox import (  # noqa: F401 -- re-exported
    MODES,
    SandboxLimits,
    SandboxResult,
    TestRun,
    run_python,
    run_tests,
    sandbox_layers,
    sandbox_mode,
    sandbox_prefork,
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

warnings.warn(
    "grpo.rewards.sandbox is deprecated and goes away in grpo 0.3: import from grpo.sandbox",
    DeprecationWarning,
    stacklevel=2,
)
