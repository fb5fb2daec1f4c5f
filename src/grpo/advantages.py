"""Group-relative advantages: GRPO and its known variants, as pure tensor functions.

Shapes follow ``docs/shapes.md``: rewards are ``[N]`` with ``N = P * G`` (P prompts, G
completions per prompt), each prompt's group **contiguous** (rows ``p*G ... p*G + G - 1``).

The estimators (``r`` = rewards of one group, ``n`` = number of scorable rewards in it):

* GRPO, DeepSeekMath (arXiv:2402.03300) sec. 4.1.2 (outcome supervision: the advantage of
  every token of o_i in the objective eq. (3)), used unchanged by DeepSeek-R1
  (arXiv:2501.12948) eq. (3)::

      A_i = (r_i - mean(r)) / (std(r) + eps)                       scale="group"

* Dr. GRPO, "Understanding R1-Zero-Like Training" (arXiv:2503.20783) sec. 3.1: drop the std
  division, which up-weights groups that are almost all right or all wrong::

      A_i = r_i - mean(r)                                          scale="none"

* Batch-std scaling ("Tricks or Traps? A Deep Dive into RL for LLM Reasoning",
  arXiv:2508.08221, "group mean, batch std"; also REINFORCE++ arXiv:2501.03262)::

      A_i = (r_i - mean(r)) / (std(all scorable rewards in the batch) + eps)   scale="batch"

* RLOO, "Back to Basics: Revisiting REINFORCE Style Optimization..." (arXiv:2402.14740)
  eq. (5): leave-one-out baseline, the mean of the *other* rewards in the group::

      A_i = r_i - (sum(r) - r_i) / (n - 1)  =  n / (n - 1) * (r_i - mean(r))    leave_one_out=True

  It composes with ``scale`` (the deviation is then divided by the chosen std).

* MaxRL (arXiv:2602.02710), :func:`maxrl_advantages`: ``(r_i - mean) / (mean + eps)``, 0
  where the mean is <= 0.
* GDPO (arXiv:2601.05242), :func:`gdpo_advantages`: each reward component normalised within its
  group, weighted sum, then normalised over the batch.

The trainer picks one by name from :data:`ADVANTAGE_ESTIMATORS` (``GRPOConfig.advantage_estimator``:
"grpo", "batch_std", "dr_grpo", "rloo", "maxrl", "gdpo"); :func:`register_advantage_estimator`
adds another. :func:`length_penalized` (``rollout.length_penalty``, prime-rl PR #2901) shapes
the rewards before the estimator.

Conventions (stated because implementations differ):

* **std is Bessel-corrected** (divides by ``n - 1``), as ``torch.std`` does and as trl's and
  verl's GRPO implementations do, so advantages from ``grpo`` and ``trl`` on the same rewards
  are identical. The population std would scale every advantage by ``sqrt(n / (n - 1))``
  (3% for G=16), a constant absorbed by the learning rate.
* **eps = 1e-6** in the denominator only guards against division by zero; groups whose
  scorable rewards are all equal are detected exactly (max == min) and get advantage 0, rather
  than relying on eps to shrink ``0 / (0 + eps)``.
* **Unscorable rewards** (``None`` or NaN: the verifier could not decide) are excluded from
  their group's mean and std and get advantage 0, so they neither push nor pull the policy.
  A group with fewer than two scorable rewards has no baseline: all its advantages are 0.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

Scale = Literal["group", "batch", "none"]
_SCALES = ("group", "batch", "none")


@dataclass(frozen=True)
class GroupAdvantages:
    """Advantages and the group statistics a training run should log.

    Attributes:
        advantages: ``[N]`` float32, one per completion.
        group_mean: ``[P]`` mean of each group's scorable rewards (NaN if none).
        group_std: ``[P]`` Bessel std of each group's scorable rewards (0 if fewer than 2).
        zero_std_frac: fraction of groups with no learning signal (all scorable rewards equal,
            or fewer than two scorable): the "dead group" rate DAPO's dynamic sampling targets.
        unscorable_frac: fraction of the N rewards that were None/NaN.
    """

    advantages: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor
    zero_std_frac: float
    unscorable_frac: float


def _as_reward_tensor(rewards: torch.Tensor | Sequence[float | None]) -> torch.Tensor:
    if isinstance(rewards, torch.Tensor):
        if rewards.dim() != 1:
            raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
        return rewards.detach().to(torch.float64)
    values = [float("nan") if r is None else float(r) for r in rewards]
    return torch.tensor(values, dtype=torch.float64)


def compute_group_advantages(
    rewards: torch.Tensor | Sequence[float | None],  # [N], groups contiguous
    group_size: int,
    *,
    scale: Scale = "group",
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> GroupAdvantages:
    """Group-relative advantages with statistics; see the module docstring for formulas.

    Args:
        rewards: ``[N]`` scalar rewards, ``N = P * group_size``, groups contiguous. ``None``
            (in a list) or NaN marks an unscorable completion.
        group_size: G, completions per prompt (>= 2: one completion has no baseline).
        scale: "group" (GRPO), "batch" (batch std) or "none" (Dr. GRPO).
        leave_one_out: use the RLOO baseline instead of the group mean.
        eps: added to the std in the denominator.

    Returns:
        A :class:`GroupAdvantages` record.

    Example (the arithmetic: mean 0.5, Bessel std sqrt(1/3) = 0.5774, 0.5 / 0.5774 = 0.866):

    >>> out = compute_group_advantages([1.0, 0.0, 1.0, 0.0], group_size=4)
    >>> [round(a, 3) for a in out.advantages.tolist()]
    [0.866, -0.866, 0.866, -0.866]
    """
    r = _as_reward_tensor(rewards)
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size < 2:
        raise ValueError(
            f"group_size must be >= 2 (got {group_size}): GRPO's baseline is the mean of the "
            "other completions of the same prompt; sample at least 2 per prompt."
        )
    if r.numel() == 0 or r.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({r.numel()}) must be a positive multiple of group_size "
            f"({group_size}); rewards hold {group_size} contiguous completions per prompt."
        )
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")
    if torch.isinf(r).any():
        raise ValueError("rewards contain +/-inf; return None (unscorable) instead of inf.")

    r_PG = r.view(-1, group_size)  # [P, G]
    valid_PG = ~torch.isnan(r_PG)
    n_P = valid_PG.sum(dim=1)  # [P]
    r0_PG = torch.where(valid_PG, r_PG, torch.zeros_like(r_PG))
    sum_P = r0_PG.sum(dim=1)
    mean_P = sum_P / n_P.clamp(min=1)
    dev_PG = torch.where(valid_PG, r_PG - mean_P[:, None], torch.zeros_like(r_PG))
    std_P = torch.sqrt((dev_PG**2).sum(dim=1) / (n_P - 1).clamp(min=1))

    # Exact detection of groups without signal: all scorable rewards equal, or < 2 scorable.
    hi_P = torch.where(valid_PG, r_PG, torch.full_like(r_PG, -torch.inf)).amax(dim=1)
    lo_P = torch.where(valid_PG, r_PG, torch.full_like(r_PG, torch.inf)).amin(dim=1)
    dead_P = (n_P < 2) | (hi_P == lo_P)

    if leave_one_out:
        # mean of the others = (sum - r_i) / (n - 1); r_i - that = n / (n - 1) * (r_i - mean)
        dev_PG = dev_PG * (n_P / (n_P - 1).clamp(min=1))[:, None]

    if scale == "group":
        adv_PG = dev_PG / (std_P[:, None] + eps)
    elif scale == "batch":
        flat_valid = r[~torch.isnan(r)]
        batch_std = flat_valid.std() if flat_valid.numel() > 1 else torch.zeros((), dtype=r.dtype)
        adv_PG = dev_PG / (batch_std + eps)
    else:
        adv_PG = dev_PG

    adv_PG = torch.where(valid_PG & ~dead_P[:, None], adv_PG, torch.zeros_like(adv_PG))
    group_mean = torch.where(n_P > 0, mean_P, torch.full_like(mean_P, float("nan")))
    return GroupAdvantages(
        advantages=adv_PG.reshape(-1).to(torch.float32),
        group_mean=group_mean.to(torch.float32),
        group_std=torch.where(n_P > 1, std_P, torch.zeros_like(std_P)).to(torch.float32),
        zero_std_frac=dead_P.double().mean().item(),
        unscorable_frac=1.0 - valid_PG.double().mean().item(),
    )


def group_advantages(
    rewards: torch.Tensor | Sequence[float | None],  # [N]
    group_size: int,
    *,
    scale: Scale = "group",
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:  # [N]
    """The ``[N]`` advantages of :func:`compute_group_advantages` (same arguments).

    >>> group_advantages(torch.tensor([3.0, 1.0, 2.0, 2.0]), 2, scale="none").tolist()
    [1.0, -1.0, 0.0, 0.0]
    """
    return compute_group_advantages(
        rewards, group_size, scale=scale, leave_one_out=leave_one_out, eps=eps
    ).advantages


# ------------------------------------------------------------------------- the estimator table
@dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage estimator receives: one step's kept groups, contiguous, ``N = P * G``.

    Attributes:
        rewards: ``[N]`` float64 weighted total reward, NaN where unscorable.
        group_size: G.
        components: ``[N, K]`` float64 each reward function's own (unweighted) value, NaN where it
            was unscorable or did not apply; ``names`` and ``weights`` name and weigh the K
            columns (a multi-reward estimator such as GDPO normalises them separately).
        lengths: ``[N]`` completion lengths in tokens (length-aware estimators).
        metric: ``[N]`` the accuracy-like column (``rollout.dynamic_sampling_metric``'s
            component, else the total), NaN where unscorable: the pass rate of
            :func:`length_penalized`.
        eps: the denominator guard of std-normalising estimators.
    """

    rewards: torch.Tensor
    group_size: int
    components: torch.Tensor | None = None
    names: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    lengths: torch.Tensor | None = None
    metric: torch.Tensor | None = None
    eps: float = 1e-6

    @classmethod
    def of(cls, rewards, group_size: int | None = None, *, eps: float = 1e-6) -> AdvantageInputs:
        """``rewards`` if it already is one, else inputs from a reward list and G."""
        if isinstance(rewards, AdvantageInputs):
            return rewards
        if group_size is None:
            raise TypeError("group_size is needed with a plain reward list")
        return cls(_as_reward_tensor(rewards), group_size, eps=eps)


AdvantageEstimator = Callable[..., GroupAdvantages]
"""``fn(inputs: AdvantageInputs) -> GroupAdvantages``; groups contiguous."""

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator adding an estimator to :data:`ADVANTAGE_ESTIMATORS` under ``name`` (the value of
    ``rollout.advantage_estimator`` that selects it). It is called with one
    :class:`AdvantageInputs` (rewards, G, per-component rewards, lengths) and returns
    :class:`GroupAdvantages`.

    >>> from dataclasses import replace
    >>> @register_advantage_estimator("sign")
    ... def sign_advantages(x: AdvantageInputs) -> GroupAdvantages:
    ...     out = compute_group_advantages(x.rewards, x.group_size, scale="none", eps=x.eps)
    ...     return replace(out, advantages=out.advantages.sign())
    >>> ADVANTAGE_ESTIMATORS["sign"](AdvantageInputs.of([3.0, 1.0], 2)).advantages.tolist()
    [1.0, -1.0]
    >>> del ADVANTAGE_ESTIMATORS["sign"]

    An estimator written for grpo 0.1, ``fn(rewards, group_size, *, eps)``, still works (it is
    called with the totals) and warns once at registration.
    """

    def add(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS and ADVANTAGE_ESTIMATORS[name] is not fn:
            raise ValueError(f"an advantage estimator named {name!r} is already registered")
        params = list(inspect.signature(fn).parameters)
        entry = fn
        if len(params) >= 2 and params[1] == "group_size" and fn.__module__ != __name__:
            warnings.warn(
                f"advantage estimator {name!r} has grpo 0.1's signature fn(rewards, group_size, "
                "*, eps); it is called with the total rewards. Take one AdvantageInputs "
                "instead (grpo.advantages.register_advantage_estimator).",
                DeprecationWarning,
                stacklevel=2,
            )

            def entry(x: AdvantageInputs, _fn=fn) -> GroupAdvantages:
                return _fn(x.rewards, x.group_size, eps=x.eps)

        ADVANTAGE_ESTIMATORS[name] = entry
        return fn

    return add


@register_advantage_estimator("grpo")
def grpo_advantages(rewards, group_size: int | None = None, *, eps=1e-6) -> GroupAdvantages:
    """GRPO: ``(r_i - mean) / (std + eps)`` per group (DeepSeekMath sec. 4.1.2). Takes
    :class:`AdvantageInputs`, or rewards and G."""
    x = AdvantageInputs.of(rewards, group_size, eps=eps)
    return compute_group_advantages(x.rewards, x.group_size, scale="group", eps=x.eps)


@register_advantage_estimator("batch_std")
def batch_std_advantages(rewards, group_size: int | None = None, *, eps=1e-6) -> GroupAdvantages:
    """Group mean, batch std (arXiv:2508.08221; REINFORCE++ arXiv:2501.03262)."""
    x = AdvantageInputs.of(rewards, group_size, eps=eps)
    return compute_group_advantages(x.rewards, x.group_size, scale="batch", eps=x.eps)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(rewards, group_size: int | None = None, *, eps=1e-6) -> GroupAdvantages:
    """Dr. GRPO: ``r_i - mean`` with no std division (arXiv:2503.20783 sec. 3.1)."""
    x = AdvantageInputs.of(rewards, group_size, eps=eps)
    return compute_group_advantages(x.rewards, x.group_size, scale="none", eps=x.eps)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards, group_size: int | None = None, *, eps=1e-6) -> GroupAdvantages:
    """RLOO: ``r_i`` minus the mean of the other rewards of its group (arXiv:2402.14740 eq. 5)."""
    x = AdvantageInputs.of(rewards, group_size, eps=eps)
    return compute_group_advantages(
        x.rewards, x.group_size, scale="none", leave_one_out=True, eps=x.eps
    )


def groups_with_signal(
    rewards: torch.Tensor | Sequence[float | None],  # [N], groups contiguous
    group_size: int,
    *,
    tol: float = 1e-6,
) -> torch.Tensor:  # [P] bool
    """Which groups carry a learning signal: at least two scorable rewards whose spread
    (max - min) exceeds ``tol``. DAPO's dynamic sampling (arXiv:2503.14476 sec. 3.2, eq. 11's
    constraint ``0 < |{o_i : is_equivalent(a, o_i)}| < G``) keeps exactly these; a tolerance
    instead of ``std != 0`` keeps float noise (0.1 + 0.2 vs 0.3) from passing as signal and
    works for continuous rewards.

    >>> groups_with_signal([1.0, 1.0, 0.0, 1.0, 0.5, 0.5 + 1e-9], 2).tolist()
    [False, True, False]
    """
    r_PG = _as_reward_tensor(rewards).view(-1, group_size)
    valid_PG = ~torch.isnan(r_PG)
    hi_P = torch.where(valid_PG, r_PG, torch.full_like(r_PG, -torch.inf)).amax(dim=1)
    lo_P = torch.where(valid_PG, r_PG, torch.full_like(r_PG, torch.inf)).amin(dim=1)
    return (valid_PG.sum(dim=1) >= 2) & (hi_P - lo_P > tol)


# ------------------------------------------------------------------- MaxRL, GDPO, length penalty
def _no_spread_P(r_PG: torch.Tensor, valid_PG: torch.Tensor) -> torch.Tensor:  # [P] bool
    """Groups with fewer than two scorable rewards, or all of them equal (exactly)."""
    hi_P = torch.where(valid_PG, r_PG, torch.full_like(r_PG, -torch.inf)).amax(dim=1)
    lo_P = torch.where(valid_PG, r_PG, torch.full_like(r_PG, torch.inf)).amin(dim=1)
    return (valid_PG.sum(dim=1) < 2) | (hi_P == lo_P)


def _group_rows(x: AdvantageInputs) -> torch.Tensor:  # [P, G] float64
    r = x.rewards.detach().to(torch.float64)
    if r.numel() == 0 or r.numel() % x.group_size != 0:
        raise ValueError(
            f"number of rewards ({r.numel()}) must be a positive multiple of group_size "
            f"({x.group_size})"
        )
    return r.view(-1, x.group_size)


@register_advantage_estimator("maxrl")
def maxrl_advantages(rewards, group_size: int | None = None, *, eps=1e-6) -> GroupAdvantages:
    """MaxRL (arXiv:2602.02710): the group deviation divided by the group **mean**::

        A_i = (r_i - mean(r)) / (mean(r) + eps)     if mean(r) > 0,   else 0

    The paper's estimator assumes a success probability (rewards in [0, 1], canonically
    binary); dividing by the pass rate up-weights hard prompts like ``1 / p``.

    Checked against SkyRL ``compute_maxrl_advantage`` (a9564572; equal with eps = 1e-6 for
    mean > 0) and prime-rl ``MaxRLAlgorithm.score_group`` (559b4477; no eps, equal up to the
    factor ``mean / (mean + eps)``). Departures:

    * mean <= 0 gives 0, as prime-rl does; SkyRL has no guard, and a negative mean divides by a
      negative number and **flips the sign** of every advantage of the group (a better answer
      would be pushed down). A zero mean is 0 in both peers.
    * unscorable rewards are excluded from the mean and get 0, and groups with fewer than two
      scorable rewards or no spread get 0, as every grpo estimator does (both peers have no
      notion of an unscorable reward; a singleton group gives SkyRL ``A = r``).
    """
    x = AdvantageInputs.of(rewards, group_size, eps=eps)
    stats = compute_group_advantages(x.rewards, x.group_size, scale="none", eps=x.eps)
    r_PG = _group_rows(x)
    valid_PG = ~torch.isnan(r_PG)
    n_P = valid_PG.sum(dim=1)
    mean_P = torch.where(valid_PG, r_PG, torch.zeros_like(r_PG)).sum(dim=1) / n_P.clamp(min=1)
    adv_PG = (r_PG - mean_P[:, None]) / (mean_P[:, None] + x.eps)
    keep_PG = valid_PG & ~_no_spread_P(r_PG, valid_PG)[:, None] & (mean_P > 0)[:, None]
    adv_PG = torch.where(keep_PG, adv_PG, torch.zeros_like(adv_PG))
    return replace(stats, advantages=adv_PG.reshape(-1).to(torch.float32))


def _nanmean_nanstd(v: torch.Tensor, valid: torch.Tensor, dim: int):
    """NaN-skipping mean and Bessel std along ``dim`` (std NaN with fewer than two values)."""
    n = valid.sum(dim=dim, keepdim=True)
    v0 = torch.where(valid, v, torch.zeros_like(v))
    mean = v0.sum(dim=dim, keepdim=True) / n.clamp(min=1)
    dev = torch.where(valid, v - mean, torch.zeros_like(v))
    var = (dev**2).sum(dim=dim, keepdim=True) / (n - 1).clamp(min=1)
    std = torch.where(n > 1, var.sqrt(), torch.full_like(var, float("nan")))
    return mean, std


@register_advantage_estimator("gdpo")
def gdpo_advantages(rewards, group_size: int | None = None, *, eps=1e-6) -> GroupAdvantages:
    """GDPO (arXiv:2601.05242): normalise each reward component within its group, sum with the
    reward weights, then normalise the sum over the batch::

        z_ik = (r_ik - mean_g(r_.k)) / (std_g(r_.k) + eps)        per group g, per component k
        s_i  = sum_k w_k z_ik
        A_i  = (s_i - mean_batch(s)) / (std_batch(s) + eps)        per completion

    so a component with a small spread (a format reward everyone almost gets) is not drowned by
    one with a large spread, as it is when the weighted total is normalised (GRPO).

    Follows trl 1.16 ``multi_objective_aggregation="normalize_then_sum"`` (equal with trl's
    eps = 1e-4): means and Bessel stds skip NaN; a z that is NaN (the component is unscorable
    for the row, or has fewer than two scorable values in the group) adds 0; a row whose
    components are **all** unscorable is left out of the batch statistics and gets 0.
    Without components (a plain reward list) the total is the one component. With one
    component, gdpo is GRPO's advantages divided by one batch-wide constant (their std over
    the batch, + eps): GRPO rescaled to unit batch std.

    verl's ``compute_gdpo_outcome_advantage`` (1dda039b) whitens the sum over the batch's
    **tokens** (``masked_whiten``: long completions weigh more in the mean and std, and a
    group without spread gets a non-zero advantage when lengths differ) and turns a None reward
    into NaN for the whole batch. grpo follows trl: the batch statistic is per completion, like
    every other grpo estimator (the loss aggregation decides token weighting, not the
    advantage), and unscorable rewards are excluded.
    """
    x = AdvantageInputs.of(rewards, group_size, eps=eps)
    stats = compute_group_advantages(x.rewards, x.group_size, scale="group", eps=x.eps)
    comps = x.components
    if comps is None or comps.numel() == 0 or comps.shape[1] == 0:
        comps, weights = x.rewards.detach()[:, None], (1.0,)
    else:
        weights = x.weights or (1.0,) * comps.shape[1]
    c_NK = comps.detach().to(torch.float64)
    if c_NK.dim() != 2 or len(weights) != c_NK.shape[1]:
        raise ValueError(
            f"components must be [N, K] with K = len(weights) = {len(weights)}, "
            f"got shape {tuple(c_NK.shape)}"
        )
    g, k = x.group_size, c_NK.shape[1]
    c_PGK = c_NK.view(-1, g, k)
    valid_PGK = ~torch.isnan(c_PGK)
    mean_P1K, std_P1K = _nanmean_nanstd(c_PGK, valid_PGK, dim=1)
    z_PGK = (c_PGK - mean_P1K) / (std_P1K + x.eps)  # NaN where unscorable or std undefined
    w_K = torch.tensor(weights, dtype=torch.float64)
    s_N = torch.nan_to_num(z_PGK * w_K, nan=0.0).sum(dim=2).reshape(-1)
    scored_N = valid_PGK.any(dim=2).reshape(-1)
    mean, std = _nanmean_nanstd(s_N, scored_N, dim=0)
    adv_N = torch.nan_to_num((s_N - mean) / (std + x.eps), nan=0.0)
    adv_N = torch.where(scored_N, adv_N, torch.zeros_like(adv_N))
    return replace(stats, advantages=adv_N.to(torch.float32))


def length_penalized(inputs: AdvantageInputs, coef: float) -> AdvantageInputs:
    """Inputs whose rewards carry a pass-rate-scaled linear length penalty (prime-rl PR #2901,
    ``LinearLengthPenaltyConfig``, output term), reward shaping before any estimator::

        r'_i = r_i - coef * p_g * len_i / max(1, max_{j in g} len_j)

    ``p_g`` is the group's pass rate, the mean of its scorable ``metric`` values (the
    accuracy-like column; the total where a group's metric scored nothing, 0 where nothing
    did). A group that is all wrong is not penalised, an all-right one fully; every member of a
    group is penalised, right or wrong; equal lengths within a group shift it by a constant,
    which any baseline removes.

    Departures from prime-rl (559b4477; identical arithmetic at the merge 16efd8af): its pass
    rate is the mean **reward**; grpo's is the accuracy-like component, so that a format
    reward does not scale the penalty (identical when the reward is the accuracy). prime-rl
    also adds input-token and turn terms (0.1 each), which grpo's single-turn completions do
    not have: with equal prompts and one turn they are constant within a group and cancel.
    Only the total changes: an estimator reading ``components`` (gdpo) does not see it.
    Unscorable rewards stay unscorable.

    >>> x = AdvantageInputs(torch.tensor([1.0, 0.0]), 2, lengths=torch.tensor([10.0, 5.0]),
    ...                     metric=torch.tensor([1.0, 0.0]))
    >>> length_penalized(x, 0.25).rewards.tolist()  # p = 0.5: 1 - 0.125 * 1, 0 - 0.125 * 0.5
    [0.875, -0.0625]
    """
    if coef == 0:
        return inputs
    if inputs.lengths is None:
        raise ValueError("length_penalized needs AdvantageInputs.lengths")
    g = inputs.group_size
    r_PG = _group_rows(inputs)
    len_PG = inputs.lengths.detach().to(torch.float64).view(-1, g)
    m = inputs.metric if inputs.metric is not None else inputs.rewards
    m_PG = m.detach().to(torch.float64).view(-1, g)
    valid_PG = ~torch.isnan(m_PG)
    p_P1, _ = _nanmean_nanstd(m_PG, valid_PG, dim=1)
    total_p_P1, _ = _nanmean_nanstd(r_PG, ~torch.isnan(r_PG), dim=1)
    p_P1 = torch.where(valid_PG.any(dim=1, keepdim=True), p_P1, total_p_P1)
    frac_PG = len_PG / len_PG.amax(dim=1, keepdim=True).clamp(min=1)
    shaped_PG = r_PG - coef * p_P1 * frac_PG  # NaN rewards stay NaN
    return replace(inputs, rewards=shaped_PG.reshape(-1))
