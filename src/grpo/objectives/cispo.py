"""CISPO: clipped importance-sampling-weight policy optimisation (MiniMax-M1, arXiv:2506.13585).

Eq. (4)-(5) of the paper, as the per-token loss to minimise that trl and verl compute::

    r_t       = pi_theta(o_t) / pi_old(o_t)
    w_t       = clip(r_t, 1 - eps_low, 1 + eps_high)            the IS weight, eq. (5)
    loss_t    = -sg(w_t) * A_t * log pi_theta(o_t)              gradient: -w_t * A_t * grad log pi

Unlike PPO's clip, which zeroes the gradient of a token whose ratio left the trust region,
CISPO clips (and detaches) the importance-sampling *weight* only: every token keeps a gradient,
at most ``1 + eps_high`` times its on-policy size. The loss *value* contains ``log pi``, so it
is not a ratio surrogate (it is not 0 at r = 1); only its gradient is meaningful.

Settings, and how the peers name them:

* ``eps_low=1.0, eps_high=4.0`` (defaults): the weight lies in ``[0, 5]``, i.e. no lower bound
  (r > 0 always) and the cap 5. These are SkyRL's ``cispo_eps_clip_low/high`` defaults, and the
  cap equals trl's recommended ``epsilon_high=5.0``: **trl's epsilon_high is an absolute cap**
  on the ratio (``clamp(r, max=epsilon_high)``, no lower bound), so trl's ``epsilon_high=c``
  is ``eps_high = c - 1`` here (with ``eps_low >= 1``). verl (``clip_ratio_low/high``) and
  SkyRL use offsets from 1 as grpo does; verl's CISPO recipe uses ``eps_low=10`` (no lower
  bound) and ``eps_high=0.2``. The paper tunes only ``eps_high`` and leaves the lower bound off.
* The paper normalises over all tokens of the group (``loss.aggregation="token_mean"``, grpo's
  default); like every token-level objective it accepts any aggregation.

Departures: the log-ratio is clamped to +-20 before exp (:mod:`grpo.objectives.ratios`; verl
and SkyRL do the same, trl does not). Checked against trl 1.16.0, verl 1dda039b and SkyRL
a9564572 (``tests/test_objectives.py``, ``tests/data/peers/losses_cispo.json``).

Stat: ``cispo_clip_frac``, tokens with A > 0 whose ratio is above the cap ``1 + eps_high``
(trl's ``cispo_clip_ratio``: the positive-advantage tokens whose weight the cap reduced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grpo.objectives.ratios import token_ratio
from grpo.objectives.registry import LossInputs, PolicyTerm, register_loss


@dataclass(frozen=True)
class CISPOSettings:
    """``loss.options`` of ``loss.objective="cispo"``: the IS weight is clipped to
    ``[1 - eps_low, 1 + eps_high]`` (offsets from 1; trl's absolute ``epsilon_high`` is
    ``1 + eps_high``). ``eps_low >= 1`` means no lower bound."""

    eps_low: float = 1.0
    eps_high: float = 4.0

    def __post_init__(self):
        for name in ("eps_low", "eps_high"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@register_loss("cispo", settings=CISPOSettings)
def cispo(x: LossInputs, s: CISPOSettings) -> PolicyTerm:
    """CISPO's per-token loss ``-sg(clip(r)) * A * log pi`` (module docstring)."""
    ratio_BT = token_ratio(x.logp, x.old_logp, x.mask)
    weight_BT = ratio_BT.detach().clamp(1.0 - s.eps_low, 1.0 + s.eps_high)
    r = ratio_BT.detach()
    return PolicyTerm(
        loss=-weight_BT * x.advantages * x.logp,
        ratio=ratio_BT,
        stats={"cispo_clip_frac": (r > 1.0 + s.eps_high) & (x.advantages > 0)},
    )
