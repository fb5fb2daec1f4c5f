"""Step metrics as pure functions of a step's records (keys documented in docs/metrics.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from grpo.advantages import GroupAdvantages
from grpo.rewards import RewardBreakdown
from grpo.textstats import fraction, has_reflection, is_language_mixed


ACCURACY_WORDS = ("accuracy", "correct", "math", "code", "verif")
"""A reward whose name contains one of these (case-insensitive), and not ``format``, is taken
as the accuracy reward by default: grpo's ``math_reward`` / ``code_reward``, trl's
``accuracy_reward`` / ``reasoning_accuracy_reward``, a user's ``correctness`` or ``verifier``."""
FORMAT_WORD = "format"
"""A reward whose name contains this (case-insensitive) is taken as the format reward by default:
``format_reward``, trl's ``think_format_reward``."""


def report_names(
    names: Sequence[str],
    accuracy: str | None = None,
    format_name: str | None = None,
    *,
    config: Any = None,
) -> tuple[str | None, str | None]:
    """(the reward reported as accuracy, the one reported as format rate) among the reward
    ``names``; None where no reward is. Named explicitly by ``accuracy`` / ``format_name`` (the
    trainer's ``accuracy_reward`` / ``format_reward``) or by ``config`` (a
    :class:`grpo.config.RewardConfig`: ``reward.accuracy`` / ``reward.format``); else by name:
    accuracy is the first reward whose name contains one of :data:`ACCURACY_WORDS` but not
    ``format``, format the first whose name contains :data:`FORMAT_WORD`. Never the first reward
    just for being first: a length penalty is no accuracy.

    >>> report_names(["math_reward", "format_reward"])
    ('math_reward', 'format_reward')
    >>> report_names(["overlong_penalty", "accuracy_reward", "think_format_reward"])
    ('accuracy_reward', 'think_format_reward')
    >>> report_names(["count_sevens"])
    (None, None)
    """
    names = list(names)
    given = {
        "accuracy": (accuracy, "accuracy_reward", getattr(config, "accuracy", None)),
        "format": (format_name, "format_reward", getattr(config, "format", None)),
    }
    for field_name, (arg, arg_name, field) in given.items():
        if arg is not None and field is not None and arg != field:
            raise ValueError(
                f"GRPOTrainer({arg_name}={arg!r}) and reward.{field_name}={field!r} name "
                f"different rewards: give one of them"
            )
    accuracy = accuracy or given["accuracy"][2]
    format_name = format_name or given["format"][2]
    for n, setting in ((accuracy, "accuracy"), (format_name, "format")):
        if n is not None and n not in names:
            raise ValueError(
                f"reward.{setting}={n!r} (GRPOTrainer's {setting}_reward) is not among the "
                f"reward functions {names}: give one of these names"
            )
    if accuracy is None:
        accuracy = next((n for n in names if _is_accuracy_name(n)), None)
    if format_name is None:
        format_name = next((n for n in names if FORMAT_WORD in n.lower()), None)
    return accuracy, format_name


def _is_accuracy_name(name: str) -> bool:
    low = name.lower()
    return FORMAT_WORD not in low and any(w in low for w in ACCURACY_WORDS)


def accuracy_range_warning(values: Sequence[float | None], accuracy: str) -> str | None:
    """The warning to give when the accuracy reward ``accuracy`` scored outside [0, 1]
    (``values``: its scores, None = unscorable), else None. Accuracy is a fraction correct: a
    reward outside [0, 1] (a penalty, a shaped or scaled score) makes ``train/accuracy``, the
    progress bar's ``acc=`` and the report's accuracy panel wrong.

    >>> accuracy_range_warning([0.0, 1.0, None], "math_reward") is None
    True
    >>> accuracy_range_warning([-0.5, 1.0], "my_correctness")[:40]
    "the reward 'my_correctness' is reported "
    """
    out = [v for v in values if v is not None and v == v and not 0.0 <= v <= 1.0]
    if not out:
        return None
    return (
        f"the reward {accuracy!r} is reported as accuracy (train/accuracy, acc=, the report's "
        f"accuracy panel) but scored {out[0]:g}, outside [0, 1]: name the 0/1 correctness reward "
        f"with reward.accuracy=NAME (GRPOTrainer(accuracy_reward=NAME)), or rename this reward "
        f"so that its name does not contain {' / '.join(ACCURACY_WORDS)}"
    )


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
