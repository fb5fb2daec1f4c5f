"""Deprecated alias of :mod:`grpo.sandbox`, the sandbox's home since it became its own package
(code rewards and the Python tool both use it). Goes away in grpo 0.3: import from
``grpo.sandbox`` instead."""

import warnings

from grpo.sandbox import *  # noqa: F403 -- re-exported
from grpo.sandbox import __all__  # noqa: F401 -- the same public names

warnings.warn(
    "grpo.rewards.sandbox is deprecated and goes away in grpo 0.3: import from grpo.sandbox",
    DeprecationWarning,
    stacklevel=2,
)
