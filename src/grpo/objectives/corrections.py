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
* ``"tis_sequence"``: sequence-level TIS, ``w_i = min(prod_t pi_old / pi_rollout, C)`` on every
  token of row i (SkyRL ``tis_ratio_type="sequence"``, verl ``rollout_is="sequence"``, trl
  ``sequence_truncate``).
* ``"icepop"``: IcePop token masking (Ring-1T report, arXiv:2510.18855, its ``M(k)``),
  ``w_t = r_t`` if ``low <= r_t <= high`` else 0 (verl's ``decoupled_token_icepop`` preset,
  trl ``token_mask``).
* ``"mis_sequence"``: masked importance sampling at sequence level, ``w_i = prod_t r_t`` if it
  lies in ``[low, high]`` else 0 (trl's default ``vllm_importance_sampling_mode``
  ``sequence_mask``; verl's sequence IcePop).
* ``"geo_mask"``: geometric sequence mask, rows whose geometric-mean ratio
  ``exp(mean_t log r_t)`` leaves ``[low, high]`` get weight 0, kept rows 1 (or the token TIS
  weight ``min(r_t, cap)``) (SkyRL ``sequence_mask_metric="geometric"``, verl ``seq_mean_k1``).

``r_t = pi_old(o_t) / pi_rollout(o_t)`` throughout; every bound is inclusive (a ratio equal to
``low`` or ``high`` is kept), as in all three peers. The masking corrections report
``correction_masked_frac``: the fraction of trained tokens whose weight they set to 0.

Zeroed tokens stay in the aggregation's denominator (a weight multiplies the per-token loss; the
loss mask is not changed), as trl, SkyRL and verl's ``rollout_is`` do. verl's rejection sampling
(``rollout_rs``: token_k1 / seq_sum_k1 / seq_mean_k1) instead removes rejected tokens from the
loss mask, so they also leave the denominator: with token_mean aggregation grpo's loss is verl's
times ``kept / all`` tokens. grpo keeps one convention for every correction so that a
correction never changes what a loss is divided by (the trainer's ``normalizer`` is fixed from
the loss mask before the step).

A correction is registered like an objective (:func:`register_correction`) and selected with
``loss.correction`` (settings from ``loss.correction_options``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo.objectives.registry import build_settings
from grpo.objectives.ratios import MAX_LOG_RATIO, masked_log_ratio, sequence_log_ratio

__all__ = [
    "CORRECTIONS",
    "Correction",
    "GeoMaskSettings",
    "IcePopSettings",
    "MISSequenceSettings",
    "SequenceTISSettings",
    "TISSettings",
    "correction_settings",
    "register_correction",
]


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
    return build_settings(
        CORRECTIONS[name].settings,
        options,
        field="loss.correction_options",
        what=f"correction {name!r}",
    )


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


# ----------------------------------------------------------------------------------- helpers
def _sequence_log_product_B(old_logp_BT, rollout_logp_BT, mask_BT) -> torch.Tensor:
    """``[B]`` ``clamp(sum_t log r_t, -20, 20)``: the log of the product ratio over each row's
    real tokens, clamped like SkyRL's ``safe_exp_delta`` and verl's ``SAFETY_BOUND`` (trl does
    not clamp; identical whenever the product lies in ``[e^-20, e^20]``)."""
    log_r_BT = masked_log_ratio(old_logp_BT, rollout_logp_BT, mask_BT).detach()
    return log_r_BT.sum(dim=1).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def _in_range(x, low: float | None, high: float | None) -> torch.Tensor:
    """``low <= x <= high`` (inclusive; None: unbounded on that side)."""
    keep = torch.ones_like(x, dtype=torch.bool)
    if low is not None:
        keep = keep & (x >= low)
    if high is not None:
        keep = keep & (x <= high)
    return keep


def _masked_frac_stats(keep_BT: torch.Tensor, mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"correction_masked_frac": mask_BT & ~keep_BT}


def _check_bounds(low: float | None, high: float | None, *, need_low: bool = False) -> None:
    if need_low and low is None:
        raise ValueError("low must be a number > 0, got None")
    if low is not None and not low > 0:
        raise ValueError(f"low must be > 0 (a ratio), got {low}")
    if high is not None and not high > 0:
        raise ValueError(f"high must be > 0 (a ratio), got {high}")
    if low is not None and high is not None and not low <= high:
        raise ValueError(f"need low <= high, got low={low}, high={high}")


# ------------------------------------------------------------------------- sequence-level TIS
@dataclass(frozen=True)
class SequenceTISSettings:
    """``cap``: C in ``min(prod_t r_t, C)``; default 5.0, SkyRL's
    ``sequence_tis_ratio_clip_high`` (the one peer with a sequence-specific default: trl uses its
    token cap 3.0, verl its token threshold 2.0; a product over hundreds of tokens spreads far
    wider than one token's ratio, so the sequence cap is the larger one). ``floor``: an optional
    lower clamp ``max(., floor)`` (trl's ``vllm_importance_sampling_clip_min``; None: none)."""

    cap: float = 5.0
    floor: float | None = None

    def __post_init__(self):
        if not self.cap > 0:
            raise ValueError(f"cap must be > 0, got {self.cap}")
        if self.floor is not None and not 0 < self.floor <= self.cap:
            raise ValueError(f"floor must be in (0, cap={self.cap}] or None, got {self.floor}")


@register_correction("tis_sequence", settings=SequenceTISSettings)
def sequence_truncated_is(old_logp_BT, rollout_logp_BT, mask_BT, s: SequenceTISSettings):
    """Sequence-level TIS: ``w_i = min(exp(clamp(sum_t log r_t, +-20)), C)`` on every token of
    row i, detached. The product (not the geometric mean) is the exact likelihood ratio of the
    whole completion (SkyRL ``compute_tis_ratio`` "sequence", verl
    ``compute_rollout_correction_weights`` "sequence", trl ``sequence_truncate``).

    Stat ``correction_capped_frac``: trained tokens of rows whose weight was truncated (at
    ``cap``, or raised to ``floor``)."""
    log_w_B = _sequence_log_product_B(old_logp_BT, rollout_logp_BT, mask_BT)
    raw_B = torch.exp(log_w_B)
    w_B = raw_B.clamp(min=s.floor, max=s.cap)
    capped_BT = mask_BT & (w_B != raw_B)[:, None]
    weight_BT = w_B[:, None].expand_as(old_logp_BT).clone()
    return Correction(weight=weight_BT, stats={"correction_capped_frac": capped_BT})


# -------------------------------------------------------------------------------------- IcePop
@dataclass(frozen=True)
class IcePopSettings:
    """Keep a token's ratio iff ``low <= r_t <= high`` (the paper's alpha, beta). Defaults
    0.5 / 5.0: verl's ``decoupled_token_icepop`` preset ("0.5_5.0"). ``low=None``: no lower bound
    (trl's ``token_mask`` with its default ``clip_min=None``)."""

    low: float | None = 0.5
    high: float = 5.0

    def __post_init__(self):
        _check_bounds(self.low, self.high)


@register_correction("icepop", settings=IcePopSettings)
def icepop(old_logp_BT, rollout_logp_BT, mask_BT, s: IcePopSettings) -> Correction:
    """IcePop (Ring-1T, arXiv:2510.18855): ``w_t = r_t * 1[low <= r_t <= high]``, detached: a
    token the two engines disagree on by more than the band gets no gradient, the others are
    importance-weighted. Same as verl ``rollout_is="token"`` with threshold ``"low_high"`` and
    trl ``token_mask`` (with ``clip_min=low``). SkyRL's ``token_mask_is_threshold_*`` keeps
    weight 1 in the band (the ratio only with its token TIS also on): grpo follows the paper,
    verl and trl, whose kept tokens carry their ratio."""
    r_BT = torch.exp(masked_log_ratio(old_logp_BT, rollout_logp_BT, mask_BT).detach())
    keep_BT = _in_range(r_BT, s.low, s.high)
    weight_BT = torch.where(keep_BT, r_BT, torch.zeros_like(r_BT))
    return Correction(weight=weight_BT, stats=_masked_frac_stats(keep_BT, mask_BT))


# -------------------------------------------------------------------- sequence-level masked IS
@dataclass(frozen=True)
class MISSequenceSettings:
    """Keep row i's product ratio iff ``low <= prod_t r_t <= high``. Defaults: trl's
    ``vllm_importance_sampling_clip_max=3.0`` and ``clip_min=None`` (no lower bound)."""

    high: float = 3.0
    low: float | None = None

    def __post_init__(self):
        _check_bounds(self.low, self.high)


@register_correction("mis_sequence", settings=MISSequenceSettings)
def sequence_masked_is(old_logp_BT, rollout_logp_BT, mask_BT, s: MISSequenceSettings):
    """Masked importance sampling at sequence level: ``w_i = R_i * 1[low <= R_i <= high]`` with
    ``R_i = exp(clamp(sum_t log r_t, +-20))``, on every token of row i, detached: trl's default
    ``vllm_importance_sampling_mode="sequence_mask"``, verl ``rollout_is="sequence"`` with
    threshold ``"low_high"``. (SkyRL's ``sequence_mask_metric="product"`` and verl's
    ``seq_sum_k1`` drop the same rows but give kept rows weight 1.)"""
    log_w_B = _sequence_log_product_B(old_logp_BT, rollout_logp_BT, mask_BT)
    r_B = torch.exp(log_w_B)
    keep_B = _in_range(r_B, s.low, s.high)
    w_B = torch.where(keep_B, r_B, torch.zeros_like(r_B))
    keep_BT = keep_B[:, None].expand_as(mask_BT)
    return Correction(
        weight=w_B[:, None].expand_as(old_logp_BT).clone(),
        stats=_masked_frac_stats(keep_BT, mask_BT),
    )


# ------------------------------------------------------------------------ geometric row mask
@dataclass(frozen=True)
class GeoMaskSettings:
    """Keep row i iff ``low <= exp(mean_t log r_t) <= high``; defaults 0.99 / 1.01, SkyRL's
    ``geo_mask_low`` / ``geo_mask_high``. ``cap``: None gives kept rows weight 1 (SkyRL's mask
    alone); a number gives their tokens the TIS weight ``min(r_t, cap)`` (SkyRL with
    ``tis_ratio_type="token"``, verl ``rollout_is="token"`` + ``rollout_rs="seq_mean_k1"``)."""

    low: float = 0.99
    high: float = 1.01
    cap: float | None = None

    def __post_init__(self):
        _check_bounds(self.low, self.high, need_low=True)
        if self.high is None:
            raise ValueError("high must be a number > 0, got None")
        if self.cap is not None and not self.cap > 0:
            raise ValueError(f"cap must be > 0 or None, got {self.cap}")


@register_correction("geo_mask", settings=GeoMaskSettings)
def geometric_mask(old_logp_BT, rollout_logp_BT, mask_BT, s: GeoMaskSettings) -> Correction:
    """Geometric sequence mask: ``g_i = exp(sum_t m_t log r_t / max(sum_t m_t, 1))`` (the
    per-token geometric mean, length-independent unlike the product), ``w_{i,t} = 1[low <= g_i
    <= high] * (1 or min(r_t, cap))``, detached. SkyRL ``compute_sequence_mask`` "geometric"
    (recommended there as the first correction to try). verl's ``seq_mean_k1`` is the same mask
    written on ``log(pi_rollout / pi_old)``: its threshold ``"L_U"`` is grpo's ``low=1/U,
    high=1/L``; verl also removes rejected rows from the denominator (module docstring)."""
    log_r_BT = masked_log_ratio(old_logp_BT, rollout_logp_BT, mask_BT).detach()
    g_B = torch.exp(sequence_log_ratio(old_logp_BT.detach(), rollout_logp_BT.detach(), mask_BT))
    keep_B = _in_range(g_B, s.low, s.high)
    keep_BT = keep_B[:, None].expand_as(mask_BT)
    inner_BT = torch.ones_like(log_r_BT) if s.cap is None else torch.exp(log_r_BT).clamp(max=s.cap)
    weight_BT = torch.where(keep_BT, inner_BT, torch.zeros_like(inner_BT))
    return Correction(weight=weight_BT, stats=_masked_frac_stats(keep_BT, mask_BT))
