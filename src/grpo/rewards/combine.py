"""Weighted combination of rewards, keeping every component's scores for logging.

R1 sums its rule-based rewards (accuracy + format, later + language consistency); DAPO adds
the overlong penalty to the accuracy reward. :class:`CombinedReward` computes

    total_i = sum_k w_k * r_k(i)

and keeps each ``r_k`` as :class:`~grpo.rewards.base.ScoreResult` records, so a trainer logs
``rewards/<name>/mean`` per component and the reasons of unscorable items.

Unscorable components (``missing``):

* ``"skip"`` (default, trl's convention: ``nansum`` over reward functions): the sum runs over
  the components that scored; the total is unscorable only if every component is.
* ``"propagate"``: the total is unscorable as soon as one component is (strict: an item whose
  correctness is unknown is not trained on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grpo.rewards.base import Reward, ScoreResult, as_reward, unscorable_fraction


@dataclass(frozen=True)
class RewardBreakdown:
    """The combined scores of a batch and every component's records (same order)."""

    total: list[ScoreResult]
    components: dict[str, list[ScoreResult]]
    weights: dict[str, float]

    @property
    def values(self) -> list[float | None]:
        """Total per completion (None where unscorable)."""
        return [r.value for r in self.total]

    def component_values(self, name: str) -> list[float | None]:
        return [r.value for r in self.components[name]]

    def metrics(self, prefix: str = "rewards") -> dict[str, float]:
        """Namespaced scalars: ``<prefix>/<name>/{mean,std,unscorable_frac}``, and the total
        as ``<prefix>/total/...``. Means and stds are over scored items (NaN if none)."""
        out: dict[str, float] = {}
        for name, results in [("total", self.total), *self.components.items()]:
            vals = [r.value for r in results if r.value is not None]
            mean = sum(vals) / len(vals) if vals else math.nan
            var = sum((v - mean) ** 2 for v in vals) / len(vals) if vals else math.nan
            out[f"{prefix}/{name}/mean"] = mean
            out[f"{prefix}/{name}/std"] = math.sqrt(var)
            out[f"{prefix}/{name}/unscorable_frac"] = unscorable_fraction(results)
        return out

    def reasons(self) -> dict[str, list[str | None]]:
        """Per component, the reason of each item (None where there is none)."""
        return {name: [r.reason for r in rs] for name, rs in self.components.items()}


class CombinedReward(Reward):
    """``sum_k weight_k * reward_k``; each reward a :class:`Reward` or a trl-style function.

    >>> from grpo.rewards import FormatReward, MathReward
    >>> combo = CombinedReward([MathReward(parallel=False), FormatReward()], weights=[1.0, 0.5])
    >>> out = combo.evaluate_all(completions=["<think>..</think><answer>4</answer>"], answer=["4"])
    >>> out.values, out.component_values("format_reward")
    ([1.5], [1.0])
    """

    def __init__(
        self, rewards: Sequence[Reward | Callable[..., Sequence[float | None]]],
        weights: Sequence[float] | Mapping[str, float] | None = None, *,
        missing: Literal["skip", "propagate"] = "skip", name: str = "reward", **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.rewards = [as_reward(r) for r in rewards]
        names = [r.name for r in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique (they are metric keys): {names}")
        if weights is None:
            weights = [1.0] * len(self.rewards)
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(names)
            if unknown:
                raise ValueError(f"weights for unknown rewards {sorted(unknown)}; have {names}")
            weights = [float(weights.get(n, 1.0)) for n in names]
        if len(weights) != len(self.rewards):
            raise ValueError(f"{len(weights)} weights for {len(self.rewards)} rewards")
        if missing not in ("skip", "propagate"):
            raise ValueError(f"missing must be 'skip' or 'propagate', got {missing!r}")
        self.weights = dict(zip(names, map(float, weights), strict=True))
        self.missing = missing

    def evaluate_all(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> RewardBreakdown:
        """Score with every component (each in its own way: pool or in-process) and combine."""
        components = {
            r.name: r.evaluate(prompts=prompts, completions=completions, **columns)
            for r in self.rewards
        }
        total = [self._combine({n: rs[i] for n, rs in components.items()})
                 for i in range(len(completions))]
        return RewardBreakdown(total, components, dict(self.weights))

    def _combine(self, row: Mapping[str, ScoreResult]) -> ScoreResult:
        missing = [f"{n}: {r.reason}" for n, r in row.items() if not r.scored]
        if missing and (self.missing == "propagate" or len(missing) == len(row)):
            return ScoreResult.unscorable("; ".join(missing))
        value = sum(self.weights[n] * r.value for n, r in row.items() if r.value is not None)
        return ScoreResult(value, reason=("skipped " + "; ".join(missing)) if missing else None)

    def evaluate(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[ScoreResult]:
        breakdown = self.evaluate_all(prompts=prompts, completions=completions, **columns)
        self._last.breakdown = breakdown
        return breakdown.total

    @property
    def last_breakdown(self) -> RewardBreakdown | None:
        """This thread's last breakdown (from ``evaluate`` or a trl-style call)."""
        return getattr(self._last, "breakdown", None)

    def score(self, completion: str, **example: Any) -> float | None:
        prompt = example.pop("prompt", None)
        out = self.evaluate_all(prompts=None if prompt is None else [prompt],
                                completions=[completion], **{k: [v] for k, v in example.items()})
        return out.values[0]
