"""Policy objectives as a registry: each one a pure function from log-probs to a per-token loss.

An objective is the part of the GRPO loss that differs between the papers: how the new policy's
log-probs, the old (proximal) policy's and the advantages make a per-token loss. What they all
share lives in :func:`grpo.loss.compute_loss`: the behaviour-policy correction (TIS, token and
sequence masks: :mod:`grpo.objectives.corrections`), the KL penalty, the entropy bonus and the
aggregation over tokens and sequences with its full-batch normaliser.

An objective is registered with its typed settings (a frozen dataclass that validates itself),
and selected by name with ``loss.objective`` (its settings from ``loss.options``)::

    @register_loss("reinforce", settings=NoSettings)
    def reinforce(x: LossInputs, s: NoSettings) -> PolicyTerm:
        ratio_BT = token_ratio(x.logp, x.old_logp, x.mask)   # 1 in value, grad of log pi
        return PolicyTerm(loss=-ratio_BT * x.advantages, ratio=ratio_BT)

``docs/math.md`` (section 2) has every registered objective's equation, paper and the peer
implementation it was checked against.
"""

from __future__ import annotations

from grpo.objectives import (  # noqa: F401  (registers the built-in objectives)
    cispo,
    clip,
    dppo,
    gmpo,
    sapo,
)
from grpo.objectives.ratios import (
    MAX_LOG_RATIO,
    RATIOS,
    masked_log_ratio,
    sequence_log_ratio,
    sequence_ratio,
    token_ratio,
)
from grpo.objectives.registry import (
    LOSSES,
    LossInputs,
    LossSpec,
    NoSettings,
    PolicyTerm,
    loss_settings,
    register_loss,
)

__all__ = [
    "LOSSES",
    "LossInputs",
    "LossSpec",
    "MAX_LOG_RATIO",
    "NoSettings",
    "PolicyTerm",
    "RATIOS",
    "loss_settings",
    "masked_log_ratio",
    "register_loss",
    "sequence_log_ratio",
    "sequence_ratio",
    "token_ratio",
]
