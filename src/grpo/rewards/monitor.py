"""Stop a run whose reward cannot score anything, naming the reward and why.

A failing item is excluded from training and counted (``<prefix>/<name>/frac/<status>``), so one
bad item costs nothing. A reward that fails on *every* item is different: the run goes on
learning nothing from it (a dataset without the ``answer`` column leaves the math reward
unscorable on every row; a reward function with a bug raises on every batch).
:class:`RewardMonitor` raises :class:`RewardFailure` once a component -- or the total -- has
scored no item for ``patience`` consecutive steps.

A step counts against a reward when none of its items scored and at least one applied:
``n/a`` items are not failures, and a step where the reward applied to nothing (a multi-task
batch without its task) neither counts nor resets the count.

Data-parallel runs: every process must stop together, or the others hang in their next
collective. Pass ``metrics`` averaged over the processes (``<prefix>/<name>/frac/ok`` and
``.../frac/na`` from :meth:`RewardBreakdown.metrics`): the decision then reads the same on every
process ("no item scored" = the mean of the ok fractions is 0), while the reasons come from the
local breakdown.

>>> from grpo.rewards import CombinedReward, MathReward
>>> combo, monitor = CombinedReward([MathReward(parallel=False)]), RewardMonitor(patience=2)
>>> monitor.update(combo.breakdown(completions=[r"\\boxed{4}"], solution=["4"]))
>>> monitor.update(combo.breakdown(completions=[r"\\boxed{4}"], solution=["4"]))
Traceback (most recent call last):
grpo.rewards.monitor.RewardFailure: reward 'math_reward' scored no completion for 2 ...
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from grpo.rewards.base import NOT_APPLICABLE, OK, ScoreResult
from grpo.rewards.combine import RewardBreakdown


class RewardFailure(RuntimeError):
    """A reward scored no completion for ``patience`` consecutive steps."""

    def __init__(self, message: str, component: str, reason: str | None):
        super().__init__(message)
        self.component = component
        self.reason = reason


class RewardMonitor:
    """Call :meth:`update` once per step with the step's breakdown.

    Args:
        patience: consecutive steps without a single scored item before it raises (>= 1).
        prefix: the metric prefix of the ``metrics`` passed to ``update`` (if any).
    """

    def __init__(self, patience: int = 3, *, prefix: str = "reward"):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.prefix = prefix
        self.streaks: dict[str, int] = {}
        self.first_reason: dict[str, str | None] = {}

    def update(
        self, breakdown: RewardBreakdown, metrics: Mapping[str, float] | None = None
    ) -> None:
        """Record a step; raise :class:`RewardFailure` if a reward has now failed for
        ``patience`` steps in a row."""
        failure = self.observe(breakdown, metrics)
        if failure is not None:
            raise failure

    def observe(
        self, breakdown: RewardBreakdown, metrics: Mapping[str, float] | None = None
    ) -> RewardFailure | None:
        """:meth:`update` without raising: the failure, or None."""
        found: RewardFailure | None = None
        # components first, so that the message names the culprit rather than the total
        for name, results in [*breakdown.components.items(), ("total", breakdown.total)]:
            ok, na = self._fractions(name, results, metrics)
            if ok > 0:
                self.streaks[name] = 0
                self.first_reason.pop(name, None)
                continue
            if na >= 1.0:  # applied to nothing this step: no evidence either way
                continue
            self.streaks[name] = self.streaks.get(name, 0) + 1
            failed = [r for r in results if r.failed]
            if name not in self.first_reason or self.first_reason[name] is None:
                self.first_reason[name] = failed[0].reason if failed else None
            if found is None and self.streaks[name] >= self.patience:
                found = self._failure(name, results)
        return found

    def _fractions(
        self, name: str, results: list[ScoreResult], metrics: Mapping[str, float] | None
    ) -> tuple[float, float]:
        if metrics is not None:
            base = f"{self.prefix}/{name}/frac"
            if f"{base}/ok" not in metrics or f"{base}/na" not in metrics:
                raise KeyError(
                    f"metrics have no {base}/ok or {base}/na: pass breakdown.metrics(prefix) "
                    f"(averaged over processes) with RewardMonitor(prefix=...) matching it"
                )
            return metrics[f"{base}/ok"], metrics[f"{base}/na"]
        n = max(len(results), 1)
        return (
            sum(r.status == OK for r in results) / n,
            sum(r.status == NOT_APPLICABLE for r in results) / n,
        )

    def _failure(self, name: str, results: list[ScoreResult]) -> RewardFailure:
        counts = Counter(r.status for r in results)
        seen = ", ".join(f"{s} {c}/{len(results)}" for s, c in counts.most_common())
        seen = seen or "no items here"
        reason = self.first_reason.get(name) or "(failed on other processes only)"
        what = (
            "no completion could be scored by the combined reward"
            if name == "total"
            else f"reward {name!r} scored no completion"
        )
        message = (
            f"{what} for {self.streaks[name]} consecutive steps (last step: {seen}); first "
            f"reason: {reason}. Training on would learn nothing from it: fix the reward or the "
            f"dataset columns it reads (RewardMonitor(patience={self.patience}) sets how many "
            "such steps are tolerated)"
        )
        return RewardFailure(message, name, reason)
