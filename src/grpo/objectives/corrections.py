"""Behaviour-policy corrections: when the tokens were sampled by another policy than pi_old.

A separate rollout engine (vLLM: other kernels, other numerics) or an older copy of the weights
(asynchronous rollouts) samples from ``pi_rollout``, not from the proximal policy ``pi_old`` the
objective's ratio is taken against. A correction turns ``(log pi_old, log pi_rollout)`` into a
detached per-token weight that multiplies the objective's per-token loss (0 drops a token's
gradient; it stays in the aggregation's denominator).

Built in:

* ``"tis"``: truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework
  Secretly Brings You Off-Policy RL Training"), ``w_t = min(pi_old(o_t) / pi_rollout(o_t), C)``
  with ``C = loss.is_cap``; also the decoupled objective's behaviour weight with asynchronous
  rollouts (AReaL, arXiv:2505.24298 eq. (5)).

A correction is registered like an objective (:func:`register_correction`) and selected with
``loss.correction`` (settings from ``loss.correction_options``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo.objectives.ratios import masked_log_ratio

__all__ = ["CORRECTIONS", "Correction", "TISSettings", "correction_settings", "register_correction"]


@dataclass(frozen=True)
class Correction:
    """``weight``: ``[B, T]`` detached multiplier of the per-token policy loss (logged as
    ``loss/is_weight_*``); ``stats``: ``[B, T]`` per-token quantities logged as ``loss/<name>``
    (their mean over trained tokens)."""

    weight: torch.Tensor
    stats: Mapping[str, torch.Tensor] = field(default_factory=dict)


CorrectionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], Correction]


@dataclass(frozen=True)
class CorrectionSpec:
    name: str
    fn: CorrectionFn
    settings: type


CORRECTIONS: dict[str, CorrectionSpec] = {}
"""Registered corrections by name: the values ``loss.correction`` accepts."""


def register_correction(name: str, *, settings: type) -> Callable[[CorrectionFn], CorrectionFn]:
    """Decorator adding ``fn(old_logp [B, T], rollout_logp [B, T], mask [B, T] bool, settings)
    -> Correction`` to :data:`CORRECTIONS`; ``settings`` is a frozen dataclass that validates
    itself in ``__post_init__``."""

    def add(fn: CorrectionFn) -> CorrectionFn:
        if name in CORRECTIONS and CORRECTIONS[name].fn is not fn:
            raise ValueError(f"a correction named {name!r} is already registered")
        CORRECTIONS[name] = CorrectionSpec(name, fn, settings)
        return fn

    return add


def correction_settings(name: str, options: Mapping[str, Any] | None = None):
    """The settings object of correction ``name`` from ``options`` (errors name the culprit)."""
    if name not in CORRECTIONS:
        raise ValueError(
            f"loss.correction={name!r} is not registered; choose one of {sorted(CORRECTIONS)} or "
            "add yours with grpo.objectives.corrections.register_correction"
        )
    cls = CORRECTIONS[name].settings
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"loss.correction_options has {unknown}, which correction {name!r} does not take; it "
            f"takes {sorted(known) or 'no options'}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"loss.correction_options for correction {name!r}: {e}") from None


@dataclass(frozen=True)
class TISSettings:
    """``cap``: C in ``min(pi_old / pi_rollout, C)`` (``loss.is_cap``)."""

    cap: float = 2.0

    def __post_init__(self):
        if self.cap <= 0:
            raise ValueError(f"is_cap must be > 0, got {self.cap}")


@register_correction("tis", settings=TISSettings)
def truncated_is(old_logp_BT, rollout_logp_BT, mask_BT, s: TISSettings) -> Correction:
    """Token-level TIS: ``min(pi_old / pi_rollout, C)``, detached (module docstring)."""
    log_w_BT = masked_log_ratio(old_logp_BT, rollout_logp_BT, mask_BT).detach()
    return Correction(weight=torch.exp(log_w_BT).clamp(max=s.cap))
