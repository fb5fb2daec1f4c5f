"""Scoring a step's completions with several reward functions, keeping every component.

Each reward function is a :class:`grpo.rewards.Reward` or a trl-style function (wrapped with
:func:`grpo.rewards.as_reward`). The total reward of a completion is the weighted sum of its
components; if any component is unscorable (None: no gold answer, verifier timeout, a raising
reward function) the total is None, and the completion is excluded from its group's statistics
(advantage 0) and counted, instead of being scored as wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpo.rewards import Reward, ScoreResult, as_reward


@dataclass(frozen=True)
class StepScores:
    """Per-function results and the weighted total, aligned with the completions."""

    components: dict[str, list[ScoreResult]]
    total: list[float | None]

    def values(self, name: str) -> list[float | None]:
        return [r.value for r in self.components[name]]


def prepare_rewards(funcs: Sequence[Reward | Callable], weights: Sequence[float] | None) -> tuple[list[Reward], list[float]]:
    """Wrap functions as rewards, check names are unique and weights match."""
    if not funcs:
        raise ValueError("reward_funcs is empty: give at least one reward function")
    rewards = [as_reward(f) for f in funcs]
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique (metric keys), got {names}; pass name=... to as_reward "
                         "or set the `name` attribute")
    weights = list(weights) if weights is not None else [1.0] * len(rewards)
    if len(weights) != len(rewards):
        raise ValueError(f"reward_weights has {len(weights)} entries for {len(rewards)} reward functions")
    return rewards, weights


def score_completions(
    rewards: Sequence[Reward],
    weights: Sequence[float],
    prompts: Sequence[Any],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
) -> StepScores:
    """Score ``completions`` (aligned with ``prompts`` and each column) with every reward."""
    components = {r.name: r.evaluate(prompts=prompts, completions=completions, **columns) for r in rewards}
    total: list[float | None] = []
    for i in range(len(completions)):
        parts = [components[r.name][i] for r in rewards]
        total.append(None if any(not p.scored for p in parts)
                     else sum(w * p.value for w, p in zip(weights, parts)))
    return StepScores(components=components, total=total)
