"""Importance ratios between two policies' per-token log-probs, with the numeric guard.

``[B, T]`` tensors (``docs/shapes.md``); padding positions (``mask`` False) may hold any value
and are zeroed before ``exp``, so they can never produce ``inf * 0 = nan``.

The log-ratio is clamped to ``[-MAX_LOG_RATIO, MAX_LOG_RATIO]`` before ``exp`` (as verl does):
in the normal range (a ratio between 2e-9 and 5e8) nothing changes; beyond it a token whose
probability collapsed can no longer produce a loss of 1e8 and an overflowing gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MAX_LOG_RATIO = 20.0
"""Bound on |log p - log q| before exp."""


def masked_log_ratio(
    logp_BT: torch.Tensor, other_logp_BT: torch.Tensor, mask_BT: torch.Tensor
) -> torch.Tensor:
    """``clamp(log p - log q, -20, 20)`` on real tokens, 0 at padding."""
    log_ratio_BT = (logp_BT - other_logp_BT).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.where(mask_BT, log_ratio_BT, torch.zeros_like(logp_BT))


def token_ratio(logp_BT, old_logp_BT, mask_BT) -> torch.Tensor:
    """PPO/GRPO per-token ratio ``exp(log pi - log pi_old)``; 1 at padding."""
    return torch.exp(masked_log_ratio(logp_BT, old_logp_BT, mask_BT))


def sequence_log_ratio(logp_BT, old_logp_BT, mask_BT) -> torch.Tensor:
    """``[B]`` mean over each sequence's real tokens of the (clamped) log-ratio: the log of the
    geometric mean of its token ratios (0 for an empty sequence)."""
    log_ratio_BT = masked_log_ratio(logp_BT, old_logp_BT, mask_BT)
    return log_ratio_BT.sum(dim=1) / mask_BT.sum(dim=1).clamp(min=1)


def sequence_ratio(logp_BT, old_logp_BT, mask_BT) -> torch.Tensor:
    """GSPO-token ratio (arXiv:2507.18071 eq. (13)): value ``exp(mean_t log r_t)`` per sequence,
    gradient ``s_i * grad log pi(o_t)`` per token."""
    seq_log_ratio_B = sequence_log_ratio(logp_BT, old_logp_BT, mask_BT)
    logp_masked_BT = torch.where(mask_BT, logp_BT, torch.zeros_like(logp_BT))
    return torch.exp(seq_log_ratio_B.detach()[:, None] + logp_masked_BT - logp_masked_BT.detach())


RATIOS: dict[str, Callable[..., torch.Tensor]] = {"token": token_ratio, "sequence": sequence_ratio}
