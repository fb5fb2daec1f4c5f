"""Held-out evaluation as R1 reports it: greedy accuracy, mean accuracy over k samples, format rate.

DeepSeek-R1 (arXiv:2501.12948) sec. 3 reports pass@1 estimated as the mean accuracy of k
samples per question at temperature > 0 (its "mean@k"); greedy accuracy is the cheap, noiseless
number to watch during training. "Accuracy" is the mean score of one reward function (by
default the first), so for 0/1 verifiers it is the fraction correct.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpo.data import reward_columns
from grpo.rollout import SamplingConfig


def _mean(values: Sequence[float | None]) -> float:
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else float("nan")


def evaluate(generator, rows: Sequence[dict[str, Any]], reward, *, accuracy: str,
             format_name: str | None, k: int, sampling: SamplingConfig, prompt_key: str = "prompt",
             ) -> dict[str, float]:
    """Metrics under ``eval/``: greedy and mean@k accuracy, format rate, mean length.

    ``reward`` is a :class:`grpo.rewards.CombinedReward`; ``accuracy`` / ``format_name`` name
    its components."""
    prompts = [r[prompt_key] for r in rows]
    out: dict[str, float] = {}
    for tag, n, samp in (("greedy", 1, SamplingConfig(temperature=0.0, max_tokens=sampling.max_tokens,
                                                          stop=sampling.stop)),
                         (f"mean@{k}", k, sampling)):
        rollouts = generator.generate(prompts, n, samp)
        texts = [r.text for r in rollouts]
        scores = reward.evaluate_all(prompts=[p for p in prompts for _ in range(n)], completions=texts,
                                     **reward_columns(rows, n, prompt_key))
        out[f"eval/{tag}_accuracy"] = _mean(scores.component_values(accuracy))
        if format_name is not None:
            out[f"eval/{tag}_format_rate"] = _mean(scores.component_values(format_name))
        out[f"eval/{tag}_length"] = sum(len(r.completion_ids) for r in rollouts) / len(rollouts)
    return out
