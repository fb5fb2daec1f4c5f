"""Step metrics as pure functions of a step's records (keys documented in docs/metrics.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from grpo.advantages import GroupAdvantages
from grpo.rewards import RewardBreakdown
from grpo.textstats import fraction, has_reflection, is_language_mixed


def reward_metrics(
    scores: RewardBreakdown, accuracy: str | None, format_name: str | None
) -> dict[str, float]:
    """``reward/<name>/{mean,std,unscorable_frac}``, ``reward/total/*``, ``train/accuracy``,
    ``train/format_rate``."""
    out = scores.metrics(prefix="reward")
    if accuracy is not None:
        out["train/accuracy"] = out[f"reward/{accuracy}/mean"]
    if format_name is not None:
        out["train/format_rate"] = out[f"reward/{format_name}/mean"]
    return out


def advantage_metrics(adv: GroupAdvantages) -> dict[str, float]:
    """``adv/{mean,std,min,max,zero_std_frac,unscorable_frac}`` over the whole step."""
    a = adv.advantages
    return {
        "adv/mean": a.mean().item(),
        "adv/std": a.std(unbiased=False).item(),
        "adv/min": a.min().item(),
        "adv/max": a.max().item(),
        "adv/zero_std_frac": adv.zero_std_frac,
        "adv/unscorable_frac": adv.unscorable_frac,
    }


def completion_metrics(rollouts: Sequence) -> dict[str, float]:
    """Lengths (tokens), truncation, reflection-word and language-mixing rates."""
    lengths = [len(r.completion_ids) for r in rollouts]
    texts = [r.text for r in rollouts]
    return {
        "completions/mean_length": sum(lengths) / len(lengths),
        "completions/max_length": float(max(lengths)),
        "completions/min_length": float(min(lengths)),
        "completions/tokens": float(sum(lengths)),
        "completions/prompt_tokens": float(sum(len(r.prompt_ids) for r in rollouts)),
        "completions/truncated_frac": fraction([r.truncated for r in rollouts]),
        "completions/reflection_rate": fraction([has_reflection(t) for t in texts]),
        "completions/language_mixing_rate": fraction([is_language_mixed(t) for t in texts]),
    }


def masked_mean(x_BT, mask_BT) -> float:
    """Mean of ``x`` over the masked-in entries (0.0 when there are none)."""
    n = int(mask_BT.sum())
    return float((x_BT * mask_BT).sum()) / n if n else 0.0


def logprob_gap(trainer_logp_BT, rollout_logp_BT, mask_BT) -> dict[str, float]:
    """``rollout/logprob_gap{,_max}``: |trainer - sampler| log-prob over trained tokens, the
    mismatch TIS corrects (empty when no token is trained); ``_count`` weighs it."""
    diff = (trainer_logp_BT - rollout_logp_BT).abs()[mask_BT.bool()]
    if not diff.numel():
        return {}
    return {
        "rollout/logprob_gap": diff.mean().item(),
        "rollout/logprob_gap_max": diff.max().item(),
        "_count": diff.numel(),
    }


class StatAccumulator:
    """Combines per-micro-batch loss statistics: token-weighted means, min of mins, max of maxes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.mins: dict[str, float] = {}
        self.maxs: dict[str, float] = {}

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for k, v in metrics.items():
            if k.endswith("_min"):
                self.mins[k] = min(v, self.mins.get(k, math.inf))
            elif k.endswith("_max"):
                self.maxs[k] = max(v, self.maxs.get(k, -math.inf))
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v * weight
                self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}
        return {**out, **self.mins, **self.maxs}
