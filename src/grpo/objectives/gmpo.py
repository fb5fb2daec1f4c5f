"""GMPO: geometric-mean policy optimisation (arXiv:2507.20673), a sequence-level objective.

The sequence's ratio is the geometric mean of its token ratios, each token ratio clipped first
(in log space, on the side its advantage pushes), and the sequence's loss is that ratio times
the sequence's advantage. With ``x_t = log pi_theta(o_t) - log pi_old(o_t)``::

    x~_t   = min(x_t, clip_high)   if A_t > 0      (only a rise is clipped)
             max(x_t, -clip_low)   if A_t < 0      (only a fall is clipped)
             0                     if A_t = 0
    R_i    = exp( (1 / |o_i|) sum_t m_t x~_t )           sequence ratio, in [e^-low, e^high]
    A_i    = (1 / |o_i|) sum_t m_t A_t                   sequence advantage
    loss_i = -A_i * R_i,        loss = mean_i loss_i

The gradient of token t is ``-A_i R_i / |o_i|`` where its log-ratio was not clipped, 0 where
it was. The returned per-token loss is ``loss_i`` on every token of sequence i, so that its
per-sequence token mean is ``loss_i``: the objective is registered with
``aggregations=("seq_mean_token_mean",)`` and then ``aggregate`` gives ``mean_i loss_i`` (and
with a ``normalizer``, the full batch's mean over sequences).

Settings: ``clip_low = clip_high = 0.4`` (log-space bounds: ratios in ``[e^-0.4, e^0.4]``), the
paper's range and verl's GMPO recipe (``examples/gmpo_trainer``); verl's ActorConfig default
0.2 would be the PPO range, which the paper widens.

Departures from verl's ``compute_policy_loss_geo_mean`` (1dda039b): (a) the token mean divides
by ``|o_i|``, the paper's ``1/|o_i|``, where verl divides by ``|o_i| + 1e-8``: values and
gradients differ by about 1e-8 relative (the tests allow 1e-7); (b) the log-ratio is clamped to
+-20 before use (:mod:`grpo.objectives.ratios`; verl leaves that line commented out), which
changes nothing inside the clip range; (c) the stat counts tokens actually clipped, where verl's
``pg_clipfrac``/``pg_clipfrac_lower`` count tokens outside the range on either side.

Stat: ``gmpo_clip_frac``, tokens whose log-ratio was clipped (A > 0 above ``clip_high`` or
A < 0 below ``-clip_low``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grpo.objectives.ratios import masked_log_ratio
from grpo.objectives.registry import LossInputs, PolicyTerm, register_loss


@dataclass(frozen=True)
class GMPOSettings:
    """``loss.options`` of ``loss.objective="gmpo"``: the token log-ratio is clipped to
    ``[-clip_low, clip_high]`` (log space; verl's ``clip_ratio_low/high`` for ``geo_mean``)."""

    clip_low: float = 0.4
    clip_high: float = 0.4

    def __post_init__(self):
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"{name} must be a finite number > 0 (a log-ratio bound), got {value!r}"
                )


@register_loss("gmpo", settings=GMPOSettings, aggregations=("seq_mean_token_mean",))
def gmpo(x: LossInputs, s: GMPOSettings) -> PolicyTerm:
    """GMPO's sequence loss ``-A_i * R_i``, broadcast over the sequence's tokens."""
    adv_BT, mask_BT = x.advantages, x.mask
    log_ratio_BT = masked_log_ratio(x.logp, x.old_logp, mask_BT)
    clipped_BT = torch.where(
        adv_BT > 0,
        log_ratio_BT.clamp(max=s.clip_high),
        torch.where(
            adv_BT < 0, log_ratio_BT.clamp(min=-s.clip_low), torch.zeros_like(log_ratio_BT)
        ),
    )
    lengths_B = mask_BT.sum(dim=1).clamp(min=1).to(x.logp.dtype)
    masked_adv_BT = torch.where(mask_BT, adv_BT, torch.zeros_like(adv_BT))
    seq_adv_B = masked_adv_BT.sum(dim=1) / lengths_B
    seq_ratio_B = torch.exp(clipped_BT.sum(dim=1) / lengths_B)  # padding: log-ratio 0
    seq_loss_B = -seq_adv_B * seq_ratio_B
    r = log_ratio_BT.detach()
    return PolicyTerm(
        loss=seq_loss_B[:, None].expand_as(x.logp),
        ratio=seq_ratio_B[:, None].expand_as(x.logp),
        stats={
            "gmpo_clip_frac": ((adv_BT > 0) & (r > s.clip_high))
            | ((adv_BT < 0) & (r < -s.clip_low))
        },
    )
