"""SAPO: soft adaptive policy optimisation (arXiv:2511.20347).

A smooth, temperature-controlled gate replaces PPO's hard clip. Per token, as a loss::

    r_t    = pi_theta(o_t) / pi_old(o_t)
    tau_t  = tau_pos if A_t > 0 else tau_neg                  (A = 0 takes tau_neg)
    g(r)   = sigmoid(tau_t * (r_t - 1)) * 4 / tau_t
    loss_t = -A_t * g(r_t)

The gradient flows through r: ``d loss_t / d log pi = -A_t * 4 s (1 - s) * r_t`` with
``s = sigmoid(tau (r - 1))``. At r = 1 it equals plain policy gradient's ``-A_t``; away from 1
it decays smoothly instead of dropping to 0 at a clip edge. A larger ``tau_neg`` than
``tau_pos`` (1.05 vs 1.0, the defaults of trl, verl and SkyRL) makes the gate of
negative-advantage tokens decay faster.

Aggregation: the paper (and trl, verl and SkyRL's documented use) average each sequence's
tokens, then the sequences: ``loss.aggregation="seq_mean_token_mean"``. grpo does not restrict
it (the objective is per token); verl hard-codes that mode and ignores its ``loss_agg_mode``.

Departures: the log-ratio is clamped to +-20 before exp (as verl and SkyRL; trl does not).
Checked against trl 1.16.0, verl 1dda039b and SkyRL a9564572 (``tests/test_objectives.py``,
``tests/data/peers/losses_sapo.json``). No objective-specific stats: the ratio is logged as
``loss/ratio_*`` like every objective's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grpo.objectives.ratios import token_ratio
from grpo.objectives.registry import LossInputs, PolicyTerm, register_loss


@dataclass(frozen=True)
class SAPOSettings:
    """``loss.options`` of ``loss.objective="sapo"``: the gate temperatures for positive and
    non-positive advantages (trl: ``sapo_temperature_pos/neg``; verl, SkyRL: ``tau_pos/neg``)."""

    tau_pos: float = 1.0
    tau_neg: float = 1.05

    def __post_init__(self):
        for name in ("tau_pos", "tau_neg"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@register_loss("sapo", settings=SAPOSettings)
def sapo(x: LossInputs, s: SAPOSettings) -> PolicyTerm:
    """SAPO's soft-gated per-token loss ``-A * sigmoid(tau (r - 1)) * 4 / tau``."""
    ratio_BT = token_ratio(x.logp, x.old_logp, x.mask)
    tau_BT = torch.where(
        x.advantages > 0,
        torch.full_like(ratio_BT, s.tau_pos),
        torch.full_like(ratio_BT, s.tau_neg),
    )
    gate_BT = torch.sigmoid(tau_BT * (ratio_BT - 1.0)) * (4.0 / tau_BT)
    return PolicyTerm(loss=-x.advantages * gate_BT, ratio=ratio_BT)
