"""Weighted combination of rewards, keeping every component's scores for logging.

R1 sums its rule-based rewards (accuracy + format, later + language consistency); DAPO adds
the overlong penalty to the accuracy reward. :class:`CombinedReward` computes, per completion i,

    total_i = sum over the components k that apply to i of  w_k * r_k(i)

and keeps each ``r_k`` as :class:`~grpo.rewards.base.ScoreResult` records, so a trainer logs
``<prefix>/<name>/mean`` per component and the reasons of the items that were not scored.

The combination rule (``missing="propagate"``, the default):

* a component with status ``"n/a"`` (it does not apply to this row: a trl function returned
  None, a grpo Reward raised NotApplicable or has ``applies_to``) is left out of the sum, as
  trl's ``nansum`` leaves out None;
* the total is *unscorable* when a component that applies could not be scored (status
  ``unscorable``, ``error``, ``timeout`` or ``crashed``): the total of an item whose
  correctness is unknown would be a wrong number, and it must not be trained on;
* the total is *unscorable* when no component applies to the item.

``missing="skip"`` is the lenient variant: components that could not be scored are left out
too, and the total is unscorable only when no component scored.

It is called with exactly the keywords trl passes reward functions (``prompts``,
``completions``, ``completion_ids``, the dataset columns, ``trainer_state``, ``log_extra``,
``log_metric``) plus grpo's ``truncated``; every component receives them (see
``grpo.rewards.function`` for plain functions). What components log through ``log_extra`` /
``log_metric`` is kept in the breakdown (``extra``, ``logged``) and forwarded to the caller's
callbacks if it passed any.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from grpo.rewards.base import (
    ERROR,
    NOT_APPLICABLE,
    STATUSES,
    Reward,
    ScoreResult,
    completion_text,
    failed_fraction,
)
from grpo.rewards.function import as_reward

RESERVED_NAMES = ("total", "logged")  # metric keys of the breakdown itself


def status_key(status: str) -> str:
    """The metric-key spelling of a status (``"n/a"`` -> ``"na"``)."""
    return "na" if status == NOT_APPLICABLE else status


@dataclass(frozen=True)
class RewardBreakdown:
    """The combined scores of a batch and every component's records (same order).

    ``extra``: columns components logged with ``log_extra`` (one value per completion);
    ``logged``: scalars they logged with ``log_metric``.
    """

    total: list[ScoreResult]
    components: dict[str, list[ScoreResult]]
    weights: dict[str, float]
    extra: dict[str, list] = field(default_factory=dict)
    logged: dict[str, float] = field(default_factory=dict)

    @property
    def values(self) -> list[float | None]:
        """Total per completion (None where unscorable)."""
        return [r.value for r in self.total]

    def component_values(self, name: str) -> list[float | None]:
        return [r.value for r in self.components[name]]

    def metrics(self, prefix: str = "rewards") -> dict[str, float]:
        """Namespaced scalars, for ``total`` and each component ``<name>``:

        * ``<prefix>/<name>/mean``, ``.../std``: over the items scored (NaN if none);
        * ``<prefix>/<name>/unscorable_frac``: share of items that could not be scored
          (statuses unscorable, error, timeout, crashed; ``n/a`` is not counted);
        * ``<prefix>/<name>/frac/<status>``: share of items per status, for every status
          ``ok``, ``na``, ``unscorable``, ``error``, ``timeout``, ``crashed`` (always present,
          so that the keys are the same every step);
        * ``<prefix>/logged/<key>``: what components logged with ``log_metric``.
        """
        out: dict[str, float] = {}
        for name, results in [("total", self.total), *self.components.items()]:
            vals = [r.value for r in results if r.value is not None]
            mean = sum(vals) / len(vals) if vals else math.nan
            var = sum((v - mean) ** 2 for v in vals) / len(vals) if vals else math.nan
            out[f"{prefix}/{name}/mean"] = mean
            out[f"{prefix}/{name}/std"] = math.sqrt(var)
            out[f"{prefix}/{name}/unscorable_frac"] = failed_fraction(results)
            n = max(len(results), 1)
            for status in STATUSES:
                out[f"{prefix}/{name}/frac/{status_key(status)}"] = (
                    sum(r.status == status for r in results) / n
                )
        for key, value in self.logged.items():
            out[f"{prefix}/logged/{key}"] = value
        return out

    def reasons(self) -> dict[str, list[str | None]]:
        """Per component, the reason of each item (None where there is none)."""
        return {name: [r.reason for r in rs] for name, rs in self.components.items()}

    def item_record(self, i: int) -> dict[str, Any]:
        """Item ``i`` as JSON-ready fields for a completions log::

        {"reward": 1.5, "reward_status": "ok",            # + "reward_reason" if any
         "rewards": {"math_reward": {"value": 1.0, "status": "ok", "reason": "..."}, ...},
         "extra": {"gold_parsed": "...", ...}}            # only if components logged any
        """
        total = self.total[i]
        out: dict[str, Any] = {"reward": total.value, "reward_status": total.status}
        if total.reason is not None:
            out["reward_reason"] = total.reason
        out["rewards"] = {name: rs[i].record() for name, rs in self.components.items()}
        if self.extra:
            out["extra"] = {col: vals[i] for col, vals in self.extra.items()}
        return out


class CombinedReward(Reward):
    """``sum_k weight_k * reward_k``; each reward a :class:`Reward` or a trl-style function.

    >>> from grpo.rewards import FormatReward, MathReward
    >>> combo = CombinedReward([MathReward(parallel=False), FormatReward()], weights=[1.0, 0.5])
    >>> out = combo.breakdown(completions=["<think>..</think><answer>4</answer>"], answer=["4"])
    >>> out.values, out.component_values("format_reward")
    ([1.5], [1.0])
    """

    def __init__(
        self,
        rewards: Sequence[Reward | Callable[..., Sequence[float | None]]],
        weights: Sequence[float] | Mapping[str, float] | None = None,
        *,
        missing: Literal["propagate", "skip"] = "propagate",
        name: str = "reward",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.rewards = []
        for k, r in enumerate(rewards):
            try:
                self.rewards.append(as_reward(r))
            except TypeError as e:
                raise TypeError(f"reward {k} of {len(rewards)}: {e}") from None
        names = [r.name for r in self.rewards]
        _check_names(names)
        if weights is None:
            weights = [1.0] * len(self.rewards)
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(names)
            if unknown:
                raise ValueError(f"weights for unknown rewards {sorted(unknown)}; have {names}")
            weights = [weights.get(n, 1.0) for n in names]
        if len(weights) != len(self.rewards):
            raise ValueError(f"{len(weights)} weights for {len(self.rewards)} rewards")
        weights = [float(w) for w in weights]
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite numbers, got {weights}")
        if missing not in ("skip", "propagate"):
            raise ValueError(f"missing must be 'propagate' or 'skip', got {missing!r}")
        for r in self.rewards:
            if r.parallel:
                _check_picklable(r)
        self.weights = dict(zip(names, weights, strict=True))
        self.missing = missing

    def breakdown(
        self,
        *,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_extra: Callable[[str, list], None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> RewardBreakdown:
        """Score with every component (each through its ``evaluate``, in its own way: pool or
        watchdog thread) and combine, keeping every component's records. Takes trl's reward
        keywords (module docstring). Raises only for malformed inputs (a trainer's bug); every
        failure of a reward is a status in the breakdown."""
        n = len(completions)
        for c in completions:
            completion_text(c)  # malformed completions are the caller's bug: raise now
        for key, col in (
            ("prompts", prompts),
            ("completion_ids", completion_ids),
            ("truncated", columns.get("truncated")),
        ):
            if col is not None and len(col) != n:
                raise ValueError(f"{len(col)} {key} for {n} completions")
        extra: dict[str, list] = {}
        logged: dict[str, float] = {}

        def keep_extra(column: str, values: Sequence) -> None:
            values = list(values)
            if len(values) == n:
                extra[column] = values
            if log_extra is not None:
                log_extra(column, values)

        def keep_metric(key: str, value: float) -> None:
            logged[key] = float(value)
            if log_metric is not None:
                log_metric(key, value)

        call = dict(
            completions=completions,
            trainer_state=trainer_state,
            log_extra=keep_extra,
            log_metric=keep_metric,
            **columns,
        )
        if prompts is not None:
            call["prompts"] = prompts
        if completion_ids is not None:
            call["completion_ids"] = completion_ids
        components = {r.name: _component_results(r, call, n) for r in self.rewards}
        total = [self._combine({name: rs[i] for name, rs in components.items()}) for i in range(n)]
        return RewardBreakdown(total, components, dict(self.weights), extra, logged)

    def _combine(self, row: Mapping[str, ScoreResult]) -> ScoreResult:
        applies = {n: r for n, r in row.items() if r.status != NOT_APPLICABLE}
        if not applies:
            why = "; ".join(f"{n}: {r.reason}" for n, r in row.items())
            return ScoreResult.unscorable(f"no reward applies ({why})")
        failed = [f"{n} {r.status}: {r.reason}" for n, r in applies.items() if not r.scored]
        scored = {n: r.value for n, r in applies.items() if r.scored}
        if failed and (self.missing == "propagate" or not scored):
            return ScoreResult.unscorable("; ".join(failed))
        value = sum(self.weights[n] * v for n, v in scored.items())  # type: ignore[operator]
        return ScoreResult(value, reason=("skipped " + "; ".join(failed)) if failed else None)

    def evaluate(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[ScoreResult]:
        """The reward protocol: the totals of :meth:`breakdown` (kept, per thread, in
        ``last_breakdown``)."""
        breakdown = self.breakdown(prompts=prompts, completions=completions, **columns)
        self._last.breakdown = breakdown
        return breakdown.total

    def evaluate_all(self, **inputs: Any) -> RewardBreakdown:
        """Deprecated: grpo 0.1's name of :meth:`breakdown`; goes in grpo 0.3."""
        warnings.warn(
            "CombinedReward.evaluate_all is deprecated and goes in grpo 0.3; use "
            "CombinedReward.breakdown",
            FutureWarning,
            stacklevel=2,
        )
        return self.breakdown(**inputs)

    @property
    def last_breakdown(self) -> RewardBreakdown | None:
        """This thread's last breakdown (from ``evaluate`` or a trl-style call)."""
        return getattr(self._last, "breakdown", None)


def _component_results(reward: Reward, call: dict[str, Any], n: int) -> list[ScoreResult]:
    """One component's ``evaluate`` on the batch; a raise or a wrong count is ``"error"`` on
    every item, never an exception out of the combination."""
    try:
        results = reward.evaluate(**call)
    except Exception as e:  # noqa: BLE001 -- a component's evaluate (or score_batch) raised
        return [
            ScoreResult.unscorable(
                f"reward {reward.name!r} raised {type(e).__name__}: {e}"[:500], ERROR
            )
        ] * n
    if len(results) != n:
        return [
            ScoreResult.unscorable(
                f"reward {reward.name!r} returned {len(results)} results for {n} completions", ERROR
            )
        ] * n
    return list(results)


def _check_names(names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique (they are metric keys): {names}")
    for n in names:
        if n in RESERVED_NAMES or not n or "/" in n:
            raise ValueError(
                f"a reward is named {n!r}, which would clash with the breakdown's own metric keys "
                f"(reserved: {RESERVED_NAMES}; no '/' or empty names); rename it with "
                "as_reward(fn, name=...) or YourReward(name=...)"
            )


def _check_picklable(reward: Reward) -> None:
    try:
        pickle.dumps(reward, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(
            f"reward {reward.name!r} is parallel but cannot be sent to the scoring pool's worker "
            f"processes ({e}); make it picklable or pass parallel=False"
        ) from e
