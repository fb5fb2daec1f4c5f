"""DPPO: trust-region masks on the probability change (arXiv:2602.04879), as verl computes it.

Instead of clipping the ratio, DPPO drops (masks) the tokens whose probability moved out of a
trust region *in the direction the advantage pushes*; the kept tokens get a truncated
importance weight. Per token, with ``p = pi_theta(o_t)``, ``p_old = pi_old(o_t)``::

    r_t    = p / p_old
    loss_t = -A_t * sg(min(r_t, cap)) * log pi_theta(o_t) * M_t        M_t in {0, 1}, detached

and the mask ``M_t`` (the paper's eqs. (13)-(14), Binary-TV and Binary-KL):

* ``divergence="tv"``: ``M = [p - p_old <= delta_high]`` if A > 0, else
  ``[p - p_old >= -delta_low]`` (thresholds on the *probability* difference, not ratio offsets);
* ``divergence="kl"``: with the binary KL
  ``D = p_old (log p_old - log p) + (1 - p_old) log((1 - p_old + 1e-8) / (1 - p + 1e-8))``,
  ``M = [D <= delta or p <= p_old]`` if A > 0, else ``[D <= delta or p >= p_old]``.

A = 0 takes the second branch (its loss is 0 either way). The gradient is
``-A_t min(r_t, cap) M_t grad log pi``: the importance-weighted policy gradient on the kept
tokens. ``cap`` is verl's ``clip_ratio_c``, a TIS-style truncation (the paper, sec. 5.4), not a
dual clip. The loss value contains ``log pi`` (as CISPO's), so only its gradient is meaningful.

Defaults, from verl's ActorConfig: ``delta_low = delta_high = delta = 0.2``, ``cap = 3.0``
(SkyRL's ``delta_low/high`` default is also 0.2). verl's DPPO recipe uses 0.15 (TV), 0.05 (KL)
and ``cap = 1e4``.

Peers: verl ``compute_policy_loss_dppo_tv`` / ``_kl`` (1dda039b), matched exactly in value and
gradient; SkyRL ``dppo_policy_loss`` (a9564572), whose masks are the same but whose surrogate
``-r A M`` has no truncation and no ``log pi`` factor: its gradient matches where
``r <= cap``, its value does not. Departures: none from verl (the +-20 log-ratio clamp is
verl's too); the paper's Top-K variants are not implemented (by neither peer either).

Stats: ``dppo_masked_frac``, tokens the trust region masked (1 - M); ``dppo_capped_frac``, kept
tokens whose weight the cap truncated (r > cap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from grpo.objectives.ratios import token_ratio
from grpo.objectives.registry import LossInputs, PolicyTerm, register_loss

Divergence = Literal["tv", "kl"]

# Guards log(1 - p) at p = 1 in the binary KL (the value verl and SkyRL use).
_BINARY_KL_EPS = 1e-8


@dataclass(frozen=True)
class DPPOSettings:
    """``loss.options`` of ``loss.objective="dppo"``.

    Attributes:
        divergence: "tv" (Binary-TV mask) or "kl" (Binary-KL mask).
        delta_low, delta_high: TV thresholds on ``p - p_old`` for A <= 0 / A > 0.
        delta: the binary-KL threshold (``divergence="kl"``).
        cap: truncation of the importance weight (verl's ``clip_ratio_c``).
    """

    divergence: Divergence = "tv"
    delta_low: float = 0.2
    delta_high: float = 0.2
    delta: float = 0.2
    cap: float = 3.0

    def __post_init__(self):
        if self.divergence not in ("tv", "kl"):
            raise ValueError(f"divergence must be 'tv' or 'kl', got {self.divergence!r}")
        for name in ("delta_low", "delta_high", "delta", "cap"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not math.isnan(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")


def trust_region_mask(logp_BT, old_logp_BT, adv_BT, s: DPPOSettings) -> torch.Tensor:
    """``[B, T]`` bool: True where the token stays in DPPO's trust region (module docstring)."""
    p_BT, p_old_BT = logp_BT.exp(), old_logp_BT.exp()
    if s.divergence == "tv":
        diff_BT = p_BT - p_old_BT
        return torch.where(adv_BT > 0, diff_BT <= s.delta_high, diff_BT >= -s.delta_low)
    kl_BT = p_old_BT * (old_logp_BT - logp_BT) + (1.0 - p_old_BT) * torch.log(
        (1.0 - p_old_BT + _BINARY_KL_EPS) / (1.0 - p_BT + _BINARY_KL_EPS)
    )
    inside_BT = kl_BT <= s.delta
    return torch.where(adv_BT > 0, inside_BT | (p_BT <= p_old_BT), inside_BT | (p_BT >= p_old_BT))


@register_loss("dppo", settings=DPPOSettings)
def dppo(x: LossInputs, s: DPPOSettings) -> PolicyTerm:
    """DPPO's masked, truncated-IS per-token loss ``-A * sg(min(r, cap)) * log pi * M``."""
    ratio_BT = token_ratio(x.logp, x.old_logp, x.mask)
    r = ratio_BT.detach()
    keep_BT = trust_region_mask(x.logp.detach(), x.old_logp, x.advantages, s)
    weight_BT = r.clamp(max=s.cap) * keep_BT.to(r.dtype)
    return PolicyTerm(
        loss=-x.advantages * weight_BT * x.logp,
        ratio=ratio_BT,
        stats={"dppo_masked_frac": ~keep_BT, "dppo_capped_frac": keep_BT & (r > s.cap)},
    )
