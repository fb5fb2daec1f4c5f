"""DeepSeek-R1's pipeline beyond R1-Zero (arXiv:2501.12948 sec. 2.3-2.4), as library pieces.

==============================  ==============================================================
``rejection_sample``            n samples per prompt -> rewards -> keep rule -> SFT rows + pass
                                rates (+ RL prompts by pass rate); resumable (``grpo sample``)
``KeepRule``                    what is kept: verifiers / threshold, language, length, dedup, k
``sft``                         cold start / distillation SFT through trl's SFTTrainer
                                (``grpo sft``)
``run_pipeline``                a multi-stage recipe (sft, grpo, sample, ...) (``grpo pipeline``)
``grpo.distill``                on-policy distillation advantages (pure tensor functions, below
                                the trainer)
==============================  ==============================================================

Importing this package is cheap: trl, transformers and datasets load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers: at run time __getattr__ imports these on first use
    from grpo.pipeline.keep import KeepRule  # noqa: F401 -- re-exported
    from grpo.pipeline.run import run_pipeline  # noqa: F401 -- re-exported
    from grpo.pipeline.sample import (  # noqa: F401 -- re-exported
        NothingKeptError,
        SampleResult,
        rejection_sample,
    )
    from grpo.sft import SFTResult, sft  # noqa: F401 -- re-exported

_LAZY = {
    "KeepRule": "grpo.pipeline.keep",
    "NothingKeptError": "grpo.pipeline.sample",
    "SampleResult": "grpo.pipeline.sample",
    "rejection_sample": "grpo.pipeline.sample",
    "SFTResult": "grpo.sft",
    "sft": "grpo.sft",
    "run_pipeline": "grpo.pipeline.run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
