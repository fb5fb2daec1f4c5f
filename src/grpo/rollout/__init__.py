"""Rollout layer: sample G completions per prompt, with the sampler's log-probs.

``Rollout`` / ``SamplingConfig`` / ``Generator`` are plain records and a protocol; the
generators are imported lazily, so ``import grpo.rollout`` pulls in neither torch nor vLLM:

* :class:`HFGenerator` (``grpo.rollout.hf``): ``transformers.generate`` on the training model;
* :class:`VLLMGenerator` (``grpo.rollout.vllm``): a colocated vLLM engine with in-place weight
  sync;
* :class:`VLLMServerGenerator` (``grpo.rollout.server``): a separately started
  ``trl vllm-serve`` server, through trl's ``VLLMClient``;
* :class:`ProcessGenerator` (``grpo.rollout.process``): an HF generator in a child process with
  its own copy of the weights (shared memory), for asynchronous rollouts;
* :class:`MultiTurnGenerator` (``grpo.rollout.multiturn``): multi-turn tool use over an HF or
  vLLM engine, token-exact trajectories with loss mask 0 on tool output (docs/tools.md).

See docs/rollout.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from grpo.rollout.types import (
    BaseGenerator,
    FinishReason,
    Generator,
    Prompt,
    Rollout,
    SamplingConfig,
    as_generator,
)

if TYPE_CHECKING:
    from grpo.rollout.hf import HFGenerator
    from grpo.rollout.multiturn import MultiTurnGenerator
    from grpo.rollout.process import ProcessGenerator
    from grpo.rollout.server import VLLMServerGenerator
    from grpo.rollout.tokens import encode_prompt
    from grpo.rollout.vllm import VLLMGenerator

_LAZY = {
    "HFGenerator": "grpo.rollout.hf",
    "MultiTurnGenerator": "grpo.rollout.multiturn",
    "ProcessGenerator": "grpo.rollout.process",
    "VLLMGenerator": "grpo.rollout.vllm",
    "VLLMServerGenerator": "grpo.rollout.server",
    "encode_prompt": "grpo.rollout.tokens",
}

__all__ = [
    "BaseGenerator",
    "FinishReason",
    "Generator",
    "HFGenerator",
    "MultiTurnGenerator",
    "ProcessGenerator",
    "Prompt",
    "Rollout",
    "SamplingConfig",
    "VLLMGenerator",
    "VLLMServerGenerator",
    "as_generator",
    "encode_prompt",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
