"""The clipped surrogate of PPO as GRPO uses it, with its published options.

DeepSeekMath (arXiv:2402.03300) eq. (3) / DeepSeek-R1 eq. (1), as a loss to minimise::

    r_t  = pi_theta(o_t) / pi_old(o_t)
    pg_t = -min(r_t * A_t, clip(r_t, 1 - eps_low, 1 + eps_high) * A_t)

* ``eps_low != eps_high``: "clip-higher", DAPO (arXiv:2503.14476) eq. (10) (DAPO: 0.2 / 0.28).
* ``dual_clip=c``: for A < 0 the loss is also capped at ``c * |A|`` (Ye et al. 2020,
  arXiv:1912.09729 eq. (5)).
* ``ratio_level="sequence"``: GSPO (arXiv:2507.18071) eq. (7), the ratio is the sequence's
  geometric mean ``s_i = exp(mean_t log r_t)``, in the GSPO-token form of eq. (13) whose value is
  ``s_i`` and whose gradient, with ``seq_mean_token_mean`` aggregation, equals GSPO's.

Stats (token fractions): ``clip_frac_low`` (A < 0 and r below 1 - eps_low: gradient clipped to
0), ``clip_frac_high`` (A > 0 and r above 1 + eps_high), ``dual_clip_frac`` (A < 0 tokens capped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from grpo.objectives.registry import LossInputs, PolicyTerm, register_loss
from grpo.objectives.ratios import RATIOS

RatioLevel = Literal["token", "sequence"]


@dataclass(frozen=True)
class ClipSettings:
    """``loss.eps_low``, ``loss.eps_high``, ``loss.dual_clip``, ``loss.ratio_level``."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    ratio_level: RatioLevel = "token"

    def __post_init__(self):
        if not (0.0 <= self.eps_low < 1.0) or self.eps_high < 0.0:
            raise ValueError(
                f"need 0 <= eps_low < 1 and eps_high >= 0, got {self.eps_low}, {self.eps_high}"
            )
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (e.g. 3.0) or None, got {self.dual_clip}")
        if self.ratio_level not in RATIOS:
            raise ValueError(
                f"ratio_level must be one of {sorted(RATIOS)}, got {self.ratio_level!r}"
            )


@register_loss("grpo", settings=ClipSettings)
def clipped_surrogate(x: LossInputs, s: ClipSettings) -> PolicyTerm:
    """PPO's clipped surrogate with GRPO's options (module docstring)."""
    adv_BT, mask_BT = x.advantages, x.mask
    ratio_BT = RATIOS[s.ratio_level](x.logp, x.old_logp, mask_BT)
    clipped_BT = ratio_BT.clamp(1.0 - s.eps_low, 1.0 + s.eps_high)
    pg_BT = torch.maximum(-ratio_BT * adv_BT, -clipped_BT * adv_BT)
    dual_capped_BT = torch.zeros_like(mask_BT)
    if s.dual_clip is not None:
        cap_BT = -s.dual_clip * adv_BT
        dual_capped_BT = (adv_BT < 0) & (pg_BT > cap_BT)
        pg_BT = torch.where(adv_BT < 0, torch.minimum(pg_BT, cap_BT), pg_BT)
    r = ratio_BT.detach()
    return PolicyTerm(
        loss=pg_BT,
        ratio=ratio_BT,
        stats={
            "clip_frac_low": (r < 1.0 - s.eps_low) & (adv_BT < 0),
            "clip_frac_high": (r > 1.0 + s.eps_high) & (adv_BT > 0),
            "dual_clip_frac": dual_capped_BT,
        },
    )
