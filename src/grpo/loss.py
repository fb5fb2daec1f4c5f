"""The GRPO policy loss: an objective, its correction, KL penalty, entropy bonus, aggregation.

:func:`compute_loss` composes a registered objective (:mod:`grpo.objectives`: the clipped
surrogate below, CISPO, SAPO, ...) with what every objective shares; :func:`policy_loss` is its
clipped-surrogate form with the settings as keyword arguments.

Pure tensor functions; no config objects, no distributed calls. Shapes (``docs/shapes.md``):
``B`` sequences (completions), ``T`` completion positions; log-probs and masks are ``[B, T]``,
advantages ``[B]`` (one per sequence, broadcast over its tokens) or ``[B, T]``.

The per-token objective, DeepSeekMath (arXiv:2402.03300) eq. (3) / DeepSeek-R1 eq. (1), written
as a loss to minimise::

    r_t      = pi_theta(o_t) / pi_old(o_t)                     importance ratio
    pg_t     = -min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A)
    loss_t   = w_t * pg_t + beta * KL_t(pi_theta || pi_ref)
    loss     = aggregate(loss_t, mask) - c_H * token_mean(H_t)   entropy bonus (trl #6140)

Options, each named after its paper:

* ``eps_low != eps_high``: "clip-higher", DAPO (arXiv:2503.14476) eq. (10); DAPO uses
  eps_low=0.2, eps_high=0.28.
* ``dual_clip=c``: for A < 0 the loss is also capped at ``c * |A|`` (Ye et al. 2020,
  "Mastering Complex Control in MOBA Games with Deep RL", arXiv:1912.09729 eq. (5)).
* ``ratio_level="sequence"``: GSPO (arXiv:2507.18071) eq. (7), the ratio is the geometric
  mean over the sequence ``s_i = exp(mean_t log r_t)``; implemented in the GSPO-token form of
  eq. (13), ``s_{i,t} = sg[s_i] * pi(o_t) / sg[pi(o_t)]``, whose value is ``s_i`` and whose
  gradient, with ``seq_mean_token_mean`` aggregation, equals GSPO's.
* KL estimators (Schulman 2020, "Approximating KL Divergence"), with ``d = log pi_ref - log pi``:
  ``k1 = -d``, ``k2 = d^2 / 2``, ``k3 = exp(d) - d - 1`` (DeepSeekMath eq. (4), unbiased and
  non-negative, the default). ``beta = 0`` skips the term and needs no reference log-probs.
* ``rollout_logp`` + ``is_cap=C``: truncated importance sampling (TIS; Yao et al. 2025, "Your
  Efficient RL Framework Secretly Brings You Off-Policy RL Training"): the rollout engine's
  numerics differ from the trainer's, so the samples come from ``pi_rollout``, not ``pi_old``;
  the policy-gradient term is weighted by ``w_t = min(pi_old(o_t) / pi_rollout(o_t), C)``
  (detached). Without ``rollout_logp``, ``w_t = 1``.

Aggregation modes (:func:`aggregate`), with an optional ``normalizer`` so that gradient
accumulation or data-parallel shards sum to the full-batch loss:

* ``"seq_mean_token_mean"``: mean over sequences of each sequence's token mean (DeepSeekMath
  eq. (3), the ``1/G sum_i 1/|o_i| sum_t`` of GRPO). ``normalizer`` = total sequences.
* ``"token_mean"``: sum over all tokens / number of tokens (DAPO eq. (8), token-level loss).
  ``normalizer`` = total tokens.
* ``"seq_sum_max_len"``: sum over all tokens / (B * max completion length) (Dr. GRPO,
  arXiv:2503.20783 sec. 3.1, removing the length bias). ``normalizer`` = total sequences x the
  generation budget ``max_len`` (default: this batch's ``B * T``).

:func:`aggregation_denominator` is the one home of these denominators; the trainer sums it over
micro-batches and processes to get the ``normalizer``.

Numeric guard: the log-ratio ``log pi - log pi_old`` is clamped to ``[-20, 20]`` before ``exp``
(as verl does). In the normal range (|log-ratio| < 20, a ratio between 2e-9 and 5e8) nothing
changes; beyond it a single token whose probability collapsed can no longer produce a loss
of 1e8 and an overflowing gradient (its gradient is 0 there, and the clip already zeroes it for
any ratio outside ``[1 - eps_low, 1 + eps_high]`` on the side the advantage pushes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from grpo.objectives import LOSSES, LossInputs, loss_settings
from grpo.objectives.clip import ClipSettings
from grpo.objectives.corrections import CORRECTIONS, TISSettings
from grpo.objectives.corrections import correction_settings as default_correction_settings
from grpo.objectives.ratios import (  # noqa: F401  (re-exported: grpo 0.1 imported them from here)
    MAX_LOG_RATIO,
    RATIOS,
    sequence_ratio,
    token_ratio,
)

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_sum_max_len"]
KLEstimator = Literal["k1", "k2", "k3"]
RatioLevel = Literal["token", "sequence"]

# Bound on the log-ratio inside k3's exp: exp(20) ~ 5e8 is finite in bf16/fp32; larger gaps
# mean the policy left the reference entirely and the estimate is meaningless anyway.
_K3_MAX_LOG_RATIO = 20.0


# ----------------------------------------------------------------------------- aggregation
def _masked(loss_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    # where, not multiply: an inf at a padding position must not become inf * 0 = nan.
    return torch.where(mask_BT, loss_BT, torch.zeros_like(loss_BT))


def _token_mean(loss_BT: torch.Tensor, mask_BT: torch.Tensor, denom: float | torch.Tensor):
    return _masked(loss_BT, mask_BT).sum() / denom


def _seq_mean_token_mean(loss_BT: torch.Tensor, mask_BT: torch.Tensor, denom: float | torch.Tensor):
    per_seq_B = _masked(loss_BT, mask_BT).sum(dim=1) / mask_BT.sum(dim=1).clamp(min=1)
    return per_seq_B.sum() / denom


AGGREGATIONS: dict[
    str, Callable[[torch.Tensor, torch.Tensor, float | torch.Tensor], torch.Tensor]
] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_sum_max_len": _token_mean,  # same numerator; the denominator is the generation budget
}


def aggregation_denominator(
    mask_BT: torch.Tensor, mode: Aggregation = "token_mean", *, max_len: int | None = None
) -> float:
    """What :func:`aggregate` divides by for these rows: tokens (``token_mean``), sequences
    (``seq_mean_token_mean``), or sequences x ``max_len`` (``seq_sum_max_len``, Dr. GRPO's
    constant generation budget; None: this batch's width ``T``, which only equals the budget
    when some completion used all of it).

    Additive over rows, so the full batch's denominator is the sum over micro-batches and
    processes: that sum is the ``normalizer`` that makes their losses add up to the full-batch
    loss.

    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> [aggregation_denominator(mask, m, max_len=8) for m in AGGREGATIONS]
    [3.0, 2.0, 16.0]
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {mode!r}")
    if mode == "token_mean":
        return float(mask_BT.bool().sum())
    if mode == "seq_mean_token_mean":
        return float(mask_BT.shape[0])
    return float(mask_BT.shape[0] * (mask_BT.shape[1] if max_len is None else max_len))


def aggregate(
    loss_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    mode: Aggregation = "token_mean",
    normalizer: float | torch.Tensor | None = None,
    *,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce per-token losses ``[B, T]`` to a scalar with a named mode (module docstring).

    ``normalizer`` replaces the mode's denominator (:func:`aggregation_denominator`) with the
    value for the *whole* batch, so per-shard losses add up to the full-batch loss. ``max_len``
    is Dr. GRPO's generation budget for ``seq_sum_max_len``.

    >>> loss = torch.tensor([[1.0, 3.0], [2.0, 0.0]]); mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    >>> aggregate(loss, mask, "token_mean").item()            # (1 + 3 + 2) / 3
    2.0
    >>> aggregate(loss, mask, "seq_mean_token_mean").item()   # ((1 + 3) / 2 + 2 / 1) / 2
    2.0
    >>> aggregate(loss, mask, "seq_sum_max_len").item()       # (1 + 3 + 2) / (2 * 2)
    1.5
    >>> aggregate(loss, mask, "seq_sum_max_len", max_len=6).item()   # (1 + 3 + 2) / (2 * 6)
    0.5
    """
    denom = (
        aggregation_denominator(mask_BT, mode, max_len=max_len)
        if normalizer is None
        else normalizer
    )
    return AGGREGATIONS[mode](loss_BT, mask_BT.bool(), denom)


# ---------------------------------------------------------------------------- KL estimators
def kl_k1(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref (unbiased, high variance, can be negative)."""
    return logp_BT - ref_logp_BT


def kl_k2(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2 (biased, low variance, >= 0)."""
    return 0.5 * (logp_BT - ref_logp_BT) ** 2


def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1 (DeepSeekMath eq. (4): unbiased, >= 0)."""
    d = (ref_logp_BT - logp_BT).clamp(max=_K3_MAX_LOG_RATIO)
    return torch.exp(d) - d - 1.0


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


# ------------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class LossOutput:
    """The loss to back-propagate, its policy part, and named detached statistics.

    ``stats`` (0-dim tensors) holds what every objective reports: ``kl`` (token mean of the KL
    estimator; 0 if beta = 0), ``ratio_mean/min/max`` (the objective's ratio pi_theta / pi_old
    over trained tokens), ``is_weight_mean/min/max`` (the behaviour correction's weight; 1
    without one), ``entropy_bonus`` (with an entropy coefficient), ``num_tokens``; plus the
    objective's and the correction's own (``clip_frac_low``, ...: token fractions). Each is
    also an attribute: ``out.kl``.
    """

    loss: torch.Tensor
    pg_loss: torch.Tensor
    stats: dict[str, torch.Tensor]

    def __getattr__(self, name: str) -> torch.Tensor:
        stats = self.__dict__.get("stats", {})
        if name in stats:
            return stats[name]
        raise AttributeError(name)

    def metrics(self, prefix: str = "loss/") -> dict[str, float]:
        """Python floats under namespaced keys, e.g. ``loss/clip_frac_high``."""
        out = {prefix + "loss": float(self.loss.detach()), prefix + "pg_loss": float(self.pg_loss)}
        out.update({prefix + k: float(v.detach()) for k, v in self.stats.items()})
        return out


def _check_inputs(logp_BT, old_logp_BT, advantages, mask_BT, ref_logp_BT, rollout_logp_BT, beta):
    if logp_BT.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp_BT.shape)}")
    for name, t in (
        ("old_logp", old_logp_BT),
        ("mask", mask_BT),
        ("ref_logp", ref_logp_BT),
        ("rollout_logp", rollout_logp_BT),
    ):
        if t is not None and t.shape != logp_BT.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(logp_BT.shape)} "
                "(the shape of logp)"
            )
    if advantages.shape not in (logp_BT.shape[:1], logp_BT.shape):
        raise ValueError(
            f"advantages must be [B]={tuple(logp_BT.shape[:1])} or [B, T], got "
            f"{tuple(advantages.shape)}"
        )
    if beta < 0:
        raise ValueError(f"beta (KL coefficient) must be >= 0, got {beta}")
    if beta > 0 and ref_logp_BT is None:
        raise ValueError(
            "beta > 0 needs ref_logp (reference-model log-probs); pass them or set beta=0"
        )


def compute_loss(
    logp: torch.Tensor,  # [B, T] log pi_theta(o_t), requires grad
    old_logp: torch.Tensor,  # [B, T] log pi_old(o_t), the proximal policy (trainer numerics)
    advantages: torch.Tensor,  # [B] or [B, T]
    mask: torch.Tensor,  # [B, T] 1 for trained completion tokens, 0 for padding
    *,
    objective: str = "grpo",
    settings: Any = None,
    ref_logp: torch.Tensor | None = None,  # [B, T] log pi_ref(o_t); needed when beta > 0
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    kl_ratio_correction: bool = False,
    rollout_logp: torch.Tensor | None = None,  # [B, T] the sampler's log-probs, or None
    correction: str = "tis",
    correction_settings: Any = None,
    entropy: torch.Tensor | None = None,  # [B, T] the policy's entropy, with its graph
    entropy_coef: float = 0.0,
    aggregation: Aggregation = "token_mean",
    normalizer: float | torch.Tensor | None = None,
    max_len: int | None = None,
    entropy_normalizer: float | torch.Tensor | None = None,
) -> LossOutput:
    """The policy loss: a registered objective, corrected, regularised and aggregated::

        loss_t = w_t * objective_t + beta * KL_t
        loss   = aggregate(loss_t, mask) - entropy_coef * sum_t(mask_t * H_t) / N_tokens

    The entropy bonus is a *token mean* whatever ``aggregation`` is (trl 1.16's, huggingface/trl
    #6140): ``entropy_coef`` means the same for every aggregation. ``N_tokens`` is
    ``entropy_normalizer``, the trained-token count of the whole minibatch (over micro-batches
    and processes), so micro-batches add up to the full-batch term; trl divides each
    micro-batch's own token mean by the accumulation steps instead, which depends on how the
    batch is cut (docs/math.md, "Entropy bonus").

    Args:
        logp, old_logp, mask, ref_logp, rollout_logp, entropy: ``[B, T]`` per-token tensors.
        advantages: ``[B]`` (broadcast over tokens) or ``[B, T]``.
        objective: a name in :data:`grpo.objectives.LOSSES` ("grpo": the clipped surrogate).
        settings: that objective's settings object (None: its defaults).
        beta: KL coefficient (DeepSeek-R1: 0.001). 0 disables the KL term.
        kl_estimator: "k1", "k2" or "k3".
        kl_ratio_correction: multiply the per-token KL estimate by the objective's importance
            ratio ``pi_theta / pi_old`` (trl's ``use_bias_correction_kl``): the tokens were
            sampled from pi_old, so ``E_old[r_t * KL_t]`` estimates the KL of pi_theta itself
            once the policy has moved within the step; identical when on-policy.
        rollout_logp: the behaviour policy's log-probs; given, ``w_t`` comes from ``correction``
            (:mod:`grpo.objectives.corrections`), else ``w_t = 1``. ``w_t`` weights the KL term
            too (the tokens are the behaviour policy's samples; docs/math.md 2.9).
        correction, correction_settings: the correction's name and settings (None: defaults).
        entropy, entropy_coef: an entropy bonus (a coefficient != 0 needs ``entropy``, with its
            graph for a gradient: :func:`grpo.logprobs.token_logprobs_and_entropy`).
        aggregation: reduction mode, see :func:`aggregate`.
        normalizer: full-batch denominator for the aggregation (accumulation / sharding).
        max_len: the generation budget, ``seq_sum_max_len``'s length (None: the batch width).
        entropy_normalizer: the entropy term's token count for the whole batch (None: this
            batch's, ``aggregation_denominator(mask, "token_mean")``).
    """
    mask_BT = mask.bool()
    _check_inputs(logp, old_logp, advantages, mask_BT, ref_logp, rollout_logp, beta)
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {kl_estimator!r}"
        )
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
    spec = LOSSES.get(objective)
    if spec is None or settings is None:
        settings = loss_settings(objective)
        spec = LOSSES[objective]
    if spec.aggregations is not None and aggregation not in spec.aggregations:
        raise ValueError(
            f"objective {objective!r} is defined with aggregation {list(spec.aggregations)}, "
            f"got {aggregation!r}"
        )
    if entropy_coef != 0.0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs the policy's entropy; pass entropy=")

    adv_BT = advantages[:, None].expand_as(logp) if advantages.dim() == 1 else advantages
    adv_BT = adv_BT.to(logp.dtype)
    term = spec.fn(LossInputs(logp, old_logp, adv_BT, mask_BT), settings)
    pg_BT = term.loss
    correction_stats = {}
    if rollout_logp is not None:
        if correction_settings is None:
            correction_settings = default_correction_settings(correction)
        fix = CORRECTIONS[correction].fn(old_logp, rollout_logp, mask_BT, correction_settings)
        w_BT = fix.weight.detach()
        correction_stats = fix.stats
    else:
        w_BT = torch.ones_like(logp)
    pg_BT = pg_BT * w_BT
    loss_BT = pg_BT

    if beta > 0:
        assert ref_logp is not None  # checked above
        # padding may hold non-finite log-probs; give the estimator ref_logp there (KL 0) so no
        # nan can reach the gradient through the masked positions
        kl_BT = KL_ESTIMATORS[kl_estimator](torch.where(mask_BT, logp, ref_logp), ref_logp)
        kl_term_BT = kl_BT * term.ratio if kl_ratio_correction else kl_BT
        # the tokens were drawn by the behaviour policy: the KL estimate of the policy's own
        # distribution is weighted like the policy-gradient term (docs/math.md 2.9); w = 1 when
        # there is no behaviour policy apart from pi_old
        loss_BT = loss_BT + beta * kl_term_BT * w_BT
    else:
        kl_BT = torch.zeros_like(logp)
    loss = aggregate(loss_BT, mask_BT, aggregation, normalizer, max_len=max_len)
    if entropy_coef != 0.0:
        assert entropy is not None  # checked above
        n_tok = (
            aggregation_denominator(mask_BT, "token_mean")
            if entropy_normalizer is None
            else entropy_normalizer
        )
        if isinstance(n_tok, torch.Tensor):
            n_tok = n_tok.clamp(min=1)
        else:
            n_tok = max(float(n_tok), 1.0)
        loss = loss - entropy_coef * _token_mean(entropy, mask_BT, n_tok)
    with torch.no_grad():
        nz = mask_BT.sum().clamp(min=1)

        def token_mean(x_BT: torch.Tensor) -> torch.Tensor:
            return _masked(x_BT.detach().to(torch.float32), mask_BT).sum() / nz

        r, w = term.ratio.detach(), w_BT.detach()
        ratio_min, ratio_max = _masked_min_max(r, mask_BT)
        w_min, w_max = _masked_min_max(w, mask_BT)
        stats = {
            "kl": token_mean(kl_BT),
            **{k: token_mean(v) for k, v in term.stats.items()},
            "ratio_mean": token_mean(r),
            "ratio_min": ratio_min,
            "ratio_max": ratio_max,
            "is_weight_mean": token_mean(w),
            "is_weight_min": w_min,
            "is_weight_max": w_max,
            **{k: token_mean(v) for k, v in correction_stats.items()},
        }
        if entropy_coef != 0.0:
            stats["entropy_bonus"] = token_mean(entropy)
        stats["num_tokens"] = mask_BT.sum()
        pg_loss = aggregate(pg_BT.detach(), mask_BT, aggregation, normalizer, max_len=max_len)
    return LossOutput(loss=loss, pg_loss=pg_loss, stats=stats)


def policy_loss(
    logp: torch.Tensor,  # [B, T] log pi_theta(o_t), requires grad
    old_logp: torch.Tensor,  # [B, T] log pi_old(o_t), the policy that sampled (trainer numerics)
    advantages: torch.Tensor,  # [B] or [B, T]
    mask: torch.Tensor,  # [B, T] 1 for completion tokens, 0 for padding
    *,
    ref_logp: torch.Tensor | None = None,  # [B, T] log pi_ref(o_t); needed when beta > 0
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    kl_estimator: KLEstimator = "k3",
    aggregation: Aggregation = "token_mean",
    ratio_level: RatioLevel = "token",
    rollout_logp: torch.Tensor | None = None,  # [B, T] the rollout engine's log-probs (TIS)
    is_cap: float = 2.0,
    normalizer: float | torch.Tensor | None = None,
    max_len: int | None = None,
    kl_ratio_correction: bool = False,
) -> LossOutput:
    """The clipped, KL-regularised GRPO loss (objective ``"grpo"``, correction ``"tis"``):
    :func:`compute_loss` with the clip settings as arguments; formulas in the module docstring.

    Args:
        beta: KL coefficient (DeepSeek-R1: 0.001). 0 disables the KL term.
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``.
        dual_clip: constant c > 1 bounding the loss of negative-advantage tokens, or None.
        ratio_level: "token" (GRPO) or "sequence" (GSPO).
        rollout_logp: sampler log-probs for truncated importance sampling, or None.
        is_cap: C, the truncation of the TIS weight.
        The others: as :func:`compute_loss`.
    """
    return compute_loss(
        logp,
        old_logp,
        advantages,
        mask,
        objective="grpo",
        settings=ClipSettings(eps_low, eps_high, dual_clip, ratio_level),
        ref_logp=ref_logp,
        beta=beta,
        kl_estimator=kl_estimator,
        kl_ratio_correction=kl_ratio_correction,
        rollout_logp=rollout_logp,
        correction="tis",
        correction_settings=TISSettings(is_cap),
        aggregation=aggregation,
        normalizer=normalizer,
        max_len=max_len,
    )


# ------------------------------------------------------------------ adaptive entropy bonus
@dataclass
class EntropyController:
    """The entropy bonus's coefficient, static or adaptive (trl 1.16 ``use_adaptive_entropy``,
    huggingface/trl #6140; the rule of Skywork-OR1, arXiv:2505.22312 sec. 3.2.4).

    Static (``target`` None): :attr:`applied` is always ``coef``. Adaptive: the bonus is on only
    while the entropy measured at the previous optimizer step is at or below ``target``
    (``last_entropy`` starts at +inf: no bonus at the first step), and after every optimizer
    step :meth:`update` moves ``coef`` by ``delta`` towards more bonus when the measured entropy
    is at or below the target, towards less above it, clamped to ``[coef_min, coef_max]``. The
    new coefficient is first applied at the next step. Same arithmetic as trl's (its trace is
    reproduced exactly in tests/test_entropy.py).

    >>> c = EntropyController(0.01, target=0.4, delta=0.01, coef_max=0.05)
    >>> c.applied            # first step: last_entropy = inf > target
    0.0
    >>> c.update(0.3); c.coef, c.applied
    (0.02, 0.02)
    >>> c.update(0.9); c.coef, c.applied
    (0.01, 0.0)
    """

    coef: float
    target: float | None = None
    delta: float = 0.005
    coef_min: float = 0.0
    coef_max: float = 1.0
    last_entropy: float = math.inf

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    @property
    def enabled(self) -> bool:
        """Whether the loss has an entropy term at all (fixed for the run, as trl's)."""
        return self.adaptive or self.coef != 0.0

    @property
    def applied(self) -> float:
        """The coefficient this optimizer step's loss uses."""
        if self.target is None:
            return self.coef
        return self.coef if self.last_entropy <= self.target else 0.0

    @staticmethod
    def measure(entropy_sum: float, num_tokens: float) -> float:
        """Token-weighted mean entropy of a minibatch from its sums over micro-batches and
        processes (trl: ``sum(H * mask) / max(1, sum(mask))`` over the accumulation window)."""
        return float(entropy_sum) / max(1.0, float(num_tokens))

    def update(self, measured: float) -> None:
        """After an optimizer step whose minibatch had mean entropy ``measured`` (adaptive only)."""
        if self.target is None:
            return
        if measured <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = float(measured)

    def state_dict(self) -> dict[str, float]:
        """JSON-able state for exact resume (+inf is written as ``Infinity``)."""
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state["coef"])
        self.last_entropy = float(state["last_entropy"])


def _masked_min_max(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over unmasked entries (1.0 and 1.0 when there are none)."""
    big = torch.finfo(x_BT.dtype).max
    lo = torch.where(mask_BT, x_BT, torch.full_like(x_BT, big)).amin()
    hi = torch.where(mask_BT, x_BT, torch.full_like(x_BT, -big)).amax()
    empty = ~mask_BT.any()
    one = torch.ones_like(lo)
    return torch.where(empty, one, lo), torch.where(empty, one, hi)
