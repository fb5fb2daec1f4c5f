"""grpo: Group Relative Policy Optimization for LLM reasoning (DeepSeekMath / DeepSeek-R1).

The pure math (``grpo.advantages``, ``grpo.loss``, ``grpo.logprobs``) imports only torch.
``GRPOTrainer`` and ``GRPOConfig`` are loaded on first use, so ``import grpo`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GRPOConfig", "GRPOTrainer", "__version__"]

if TYPE_CHECKING:
    from grpo.config import GRPOConfig
    from grpo.trainer import GRPOTrainer


def __getattr__(name: str) -> Any:
    if name == "GRPOConfig":
        from grpo.config import GRPOConfig

        return GRPOConfig
    if name == "GRPOTrainer":
        from grpo.trainer import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(f"module 'grpo' has no attribute {name!r}")
