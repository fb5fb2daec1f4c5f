"""The objective registry: the records an objective takes and returns, and :data:`LOSSES`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class LossInputs:
    """What every objective receives. ``[B, T]`` each (``docs/shapes.md``).

    Attributes:
        logp: log pi_theta(o_t), requires grad.
        old_logp: log pi_old(o_t), the proximal policy (the weights that started this step),
            detached; equal to ``logp.detach()`` when fully on-policy.
        advantages: per-token advantages (a sequence's advantage broadcast over its tokens).
        mask: bool, True on trained completion tokens.
    """

    logp: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class PolicyTerm:
    """An objective's output.

    Attributes:
        loss: ``[B, T]`` per-token policy loss to minimise (padding positions are ignored).
        ratio: ``[B, T]`` the importance ratio pi_theta / pi_old the objective used (the value
            logged as ``loss/ratio_*``, and the weight of the KL term with
            ``kl_ratio_correction``); keep its graph if the objective's gradient flows through it.
        stats: ``[B, T]`` per-token quantities (indicators such as "clipped here"), each logged
            as ``loss/<name>``: its mean over the trained tokens.
    """

    loss: torch.Tensor
    ratio: torch.Tensor
    stats: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class NoSettings:
    """For an objective without settings."""


Objective = Callable[[LossInputs, Any], PolicyTerm]


@dataclass(frozen=True)
class LossSpec:
    """A registered objective: its function, its settings type (a frozen dataclass whose
    ``__post_init__`` validates), and the aggregations it is defined with (None: any)."""

    name: str
    fn: Objective
    settings: type
    aggregations: tuple[str, ...] | None = None


LOSSES: dict[str, LossSpec] = {}
"""Registered objectives by name: the values ``loss.objective`` accepts."""


def register_loss(
    name: str, *, settings: type = NoSettings, aggregations: tuple[str, ...] | None = None
) -> Callable[[Objective], Objective]:
    """Decorator adding an objective to :data:`LOSSES` under ``name``.

    ``settings`` is a frozen dataclass; ``loss.options`` builds it (unknown keys and values its
    ``__post_init__`` rejects are refused by name at configuration). ``aggregations`` lists the
    aggregation modes the objective is defined with, when it is not defined with all of them
    (a sequence-level objective): another is refused at configuration.
    """
    if not (dataclasses.is_dataclass(settings) and isinstance(settings, type)):
        raise TypeError(
            f"settings of objective {name!r} must be a dataclass type, got {settings!r}"
        )

    def add(fn: Objective) -> Objective:
        if name in LOSSES and LOSSES[name].fn is not fn:
            raise ValueError(f"an objective named {name!r} is already registered")
        LOSSES[name] = LossSpec(name, fn, settings, aggregations)
        return fn

    return add


def loss_settings(name: str, options: Mapping[str, Any] | None = None, *, where: str = "loss"):
    """The settings object of objective ``name`` built from ``options``; a ValueError names the
    unknown objective, an unknown option (with the ones it takes) or a value refused."""
    if name not in LOSSES:
        raise ValueError(
            f"{where}.objective={name!r} is not registered; choose one of {sorted(LOSSES)} or add "
            "yours with grpo.objectives.register_loss"
        )
    return build_settings(
        LOSSES[name].settings, options, field=f"{where}.options", what=f"objective {name!r}"
    )


def build_settings(cls: type, options: Mapping[str, Any] | None, *, field: str, what: str):
    """``cls(**options)`` for a registered entry's settings dataclass; a ValueError names the
    config ``field``, the entry (``what``) and the unknown options (with the ones it takes) or
    the value its ``__post_init__`` refused. Shared by objectives and corrections."""
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"{field} has {unknown}, which {what} does not take; it takes "
            f"{sorted(known) or 'no options'}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field} for {what}: {e}") from None
