"""The Reward API: one protocol, typed results, and trl's calling convention.

A reward answers one question per completion: how good is it, or *why can it not be told*, or
*does it apply at all*.

**The protocol** is one method, ``reward.evaluate(prompts=..., completions=..., **columns) ->
list[ScoreResult]``: trl-style inputs in (string or chat completions, dataset columns aligned
with them), one :class:`ScoreResult` (value, status, reason) per completion out, in order.
Everything that scores calls it: :class:`~grpo.rewards.CombinedReward` on its components, the
trainer, held-out evaluation, rejection sampling. A reward implements it one of two ways:

* **per item**, the usual way to write a verifier: subclass :class:`Reward` and implement
  ``score(completion, **example)``, returning a ``float``, raising :class:`Unscorable` with a
  reason ("this row should be scored, but cannot be told": no gold answer, verifier timeout),
  or raising :class:`NotApplicable` ("this reward is not for this row", e.g. a math reward on
  a code row of a multi-task dataset). Returning None counts as unscorable (its reason says
  how to be explicit). The inherited ``evaluate`` leaves out rows outside ``applies_to=``
  (status ``"n/a"``) and scores the others with ``score_batch``: in the shared process pool
  for rewards marked ``parallel`` (math-verify's signal-based timeouts need a process's main
  thread; hostile inputs need a process that can be killed), otherwise in-process on a
  watchdog thread with the same per-item ``time_limit`` (``grpo.rewards.deadline``).
  ``score_with_reason`` is one item as a ScoreResult.
* **per batch**: implement ``evaluate`` itself (a trl function, ``as_reward``; a weighted
  sum, ``CombinedReward``), or ``score_batch`` (a reward model's batched forward). The
  per-item ``score`` and ``score_with_reason`` then score a batch of one through ``evaluate``
  (one generic path, here in the base class).

``reward(prompts=..., completions=..., **columns)`` is trl's reward-function convention
(``trl.GRPOTrainer._calculate_rewards``), so a ``grpo`` reward drops into trl unchanged; it
calls ``evaluate``, returns ``list[float | None]`` (None: not scored, which trl skips) and keeps
the full records in ``reward.last_results``.

A crash never looks like a wrong answer: an exception inside ``score``, or a value that is not
a finite number, becomes a result with status ``"error"`` and the cause in its reason, never a
silent 0.0.

>>> class Shorter(Reward):
...     def score(self, completion, **example):
...         return 1.0 if len(completion) < example["limit"] else 0.0
>>> r = Shorter()
>>> r.name
'shorter'
>>> r(prompts=["p", "p"], completions=["hi", "hello there"], limit=[5, 5])
[1.0, 0.0]
>>> r(completions=[[{"role": "assistant", "content": "hi"}]], limit=[5])
[1.0]
>>> r.evaluate(completions=["hi"], limit=[5])   # the protocol: the full records
[ScoreResult(value=1.0, status='ok', reason=None)]

A reward that scores whole batches implements ``evaluate``; ``score`` still works on one item:

>>> class Longest(Reward):
...     def evaluate(self, *, prompts=None, completions, **columns):
...         top = max(map(len, completions))
...         return [ScoreResult(float(len(c) == top)) for c in completions]
>>> Longest()(completions=["a", "abc", "ab"]), Longest().score("a")
([0.0, 1.0, 0.0], 1.0)
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpo.rewards.result import (  # noqa: F401 -- the records are part of this module's API
    CRASHED,
    ERROR,
    FAILED,
    NOT_APPLICABLE,
    OK,
    STATUSES,
    TIMEOUT,
    UNSCORABLE,
    NotApplicable,
    ScoreResult,
    Unscorable,
    checked_value,
)

log = logging.getLogger(__name__)

# Keywords trl passes every reward function that are one object per batch, not per completion.
BATCH_KEYWORDS = ("trainer_state", "log_extra", "log_metric")
# Keywords of a multi-turn rollout (grpo.rollout.trajectory.trajectory_columns) that hold live
# objects (its record, with its environment and tools): in-process only, never sent to the pool.
LIVE_KEYWORDS = ("trajectory", "environments")


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def completion_text(completion: Any) -> str | None:
    """The text of a completion given as a string or as trl chat messages.

    Chat completions are lists of ``{"role", "content"}`` dicts; the text is the content of
    the assistant messages joined (trl passes exactly one). ``None`` stays ``None``.

    >>> completion_text([{"role": "assistant", "content": "42"}])
    '42'
    """
    if completion is None or isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):  # a single message
        completion = [completion]
    if isinstance(completion, Sequence):
        parts = []
        for message in completion:
            if not isinstance(message, Mapping) or "content" not in message:
                raise TypeError(f"chat completion items must be messages, got {message!r:.80}")
            if message.get("role", "assistant") != "assistant":
                continue
            content = message["content"]
            if isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}]
                content = "".join(b.get("text", "") for b in content if isinstance(b, Mapping))
            parts.append(content if isinstance(content, str) else str(content))
        return "".join(parts)
    raise TypeError(f"a completion must be a string or chat messages, got {type(completion)}")


def batch_examples(n: int, prompts: Sequence[Any] | None, columns: Mapping[str, Any]) -> list[dict]:
    """Per-completion example dicts from trl-style columns.

    trl passes every dataset column as a list aligned with ``completions`` (and
    ``completion_ids``; grpo adds ``truncated``) plus batch-level objects (``trainer_state``,
    ``log_metric``, ``log_extra``). Aligned lists become fields of each example; batch-level
    objects are not per-item data and are left out.
    """
    aligned = {
        k: v
        for k, v in columns.items()
        if k not in BATCH_KEYWORDS and isinstance(v, (list, tuple)) and len(v) == n
    }
    examples = [{k: v[i] for k, v in aligned.items()} for i in range(n)]
    if prompts is not None:
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        for ex, p in zip(examples, prompts, strict=True):
            ex.setdefault("prompt", p)
    return examples


def score_one(reward: Reward, completion: str | None, example: Mapping[str, Any]) -> ScoreResult:
    """Score one item, turning *any* exception into an ``"error"`` result with its reason.

    This is the isolation boundary of batch scoring (here or in a pool worker): one bad item
    must not sink the batch, and its failure must stay distinguishable from a 0.0.
    """
    try:
        return reward.score_with_reason(completion, **example)
    except NotApplicable as na:  # from a subclass's own score_with_reason
        return ScoreResult.not_applicable(na.reason)
    except Exception as e:  # noqa: BLE001 -- the boundary: reported as status "error", never 0.0
        return ScoreResult.unscorable(f"{type(e).__name__}: {e}"[:500], ERROR)


class Reward:
    """Base class of every reward. Subclass it and implement :meth:`score` (one item) or
    :meth:`evaluate` (a whole batch); callers use only ``evaluate`` and trl's ``__call__``.

    Class attributes a subclass may set (and the constructor overrides per instance):

    * ``name``: the metric key (default: the class name in snake_case).
    * ``parallel``: score batches in the shared process pool (default False: in-process).
      Set it for slow or hostile-input verifiers (math-verify, code execution).
    * ``time_limit``: seconds one item may take. In the pool its worker is then killed; in
      process its thread is abandoned (``grpo.rewards.deadline``). Status ``"timeout"``.
    * ``applies_to``: None (every row), a field name (rows where that field is present and not
      None) or a predicate ``f(example) -> bool``. Other rows get status ``"n/a"`` without
      being scored. Honoured by ``evaluate`` and ``__call__`` (what trainers call).

    Subclasses that define ``__init__`` should call ``super().__init__(**kwargs)``, but a
    subclass that does not still works with the class defaults.
    """

    name: str = "reward"  # set per subclass by __init_subclass__
    parallel: bool = False
    time_limit: float = 30.0
    applies_to: str | Callable[[Mapping[str, Any]], bool] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _snake_case(cls.__name__)

    def __init__(
        self,
        *,
        name: str | None = None,
        parallel: bool | None = None,
        time_limit: float | None = None,
        applies_to: str | Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        if name is not None:
            self.name = name  # type: ignore[misc]  # per-instance override of the class default
        if parallel is not None:
            self.parallel = parallel
        if time_limit is not None:
            if not time_limit > 0:
                raise ValueError(f"time_limit must be > 0, got {time_limit}")
            self.time_limit = time_limit
        if applies_to is not None:
            if not (isinstance(applies_to, str) or callable(applies_to)):
                raise TypeError(
                    f"applies_to must be a field name or a predicate, got {applies_to!r}"
                )
            self.applies_to = applies_to

    # trl names reward functions by ``__name__`` (trl.trainer.utils.get_callable_name); the
    # property makes trl's metric key ``rewards/<name>/mean`` use our ``name``.
    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self.name

    # ------------------------------------------------------------------ the protocol
    def evaluate(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[ScoreResult]:
        """The reward protocol: trl-style inputs (string or chat completions, columns aligned
        with them, trl's batch-level keywords) -> one ScoreResult per completion, in order.

        Override it to score whole batches. This default scores per item: rows outside
        ``applies_to`` are ``"n/a"`` and not scored, the others go to :meth:`score_batch`.
        """
        if _scores_by_batch(type(self)) and type(self).score_batch is Reward.score_batch:
            # score_batch would score each item through evaluate again, without end
            raise NotImplementedError(
                f"{type(self).__name__}.evaluate calls Reward.evaluate, which scores each item "
                "with score(): implement score(), or score the batch in evaluate itself"
            )
        texts = [completion_text(c) for c in completions]
        examples = batch_examples(len(texts), prompts, columns)
        keep = [i for i, ex in enumerate(examples) if self.applies(ex)]
        results = [ScoreResult.not_applicable(self._not_for_row())] * len(texts)
        if keep:
            scored = self.score_batch([texts[i] for i in keep], [examples[i] for i in keep])
            for i, r in zip(keep, scored, strict=True):
                results[i] = r
        warn_failures(self.name, results)
        return results

    def __call__(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        """trl's reward-function convention: one float (or None: not scored) per completion.

        The full records stay in ``self.last_results`` (per thread) for logging. When trl
        passes its ``log_metric`` callback, the fraction of items that could not be scored
        (``n/a`` excluded) is logged as ``<name>/unscorable_frac``.
        """
        results = self.evaluate(prompts=prompts, completions=completions, **columns)
        self._last.results = results
        log_metric = columns.get("log_metric")
        if callable(log_metric) and results:
            log_metric(f"{self.name}/unscorable_frac", failed_fraction(results))
        return [r.value for r in results]

    # ------------------------------------------------------------------ per item
    def score(self, completion: str, **example: Any) -> float:
        """Score one completion. ``example`` holds the dataset row's fields (and, from a
        trainer, ``prompt``, ``completion_ids`` and ``truncated``).

        Return a float; raise :class:`Unscorable` when it cannot be told, or
        :class:`NotApplicable` when this reward is not for this row. A reward that implements
        ``evaluate`` (or ``score_batch``) instead gets this for free: its result for a batch of
        one, the value of an ``"ok"`` result, else the matching exception with its reason.
        """
        if not _scores_by_batch(type(self)):
            raise NotImplementedError(
                f"{type(self).__name__} must implement score() (one item) or evaluate() (a batch)"
            )
        return _value_or_raise(self._evaluate_one(completion, example))

    def score_with_reason(self, completion: str | None, **example: Any) -> ScoreResult:
        """One item as a :class:`ScoreResult`: ``score``'s value, or why there is none.
        Exceptions other than Unscorable and NotApplicable propagate (batch scoring turns them
        into ``"error"``). A reward that scores batches answers with a batch of one."""
        if _scores_by_batch(type(self)):
            return self._evaluate_one(completion, example)
        if completion is None:
            return ScoreResult.unscorable("completion is None")
        who = f"{type(self).__name__}.score"
        try:
            value = self.score(completion, **example)
        except Unscorable as u:
            return ScoreResult.unscorable(u.reason)
        except NotApplicable as na:
            return ScoreResult.not_applicable(na.reason)
        if value is None:
            return ScoreResult.unscorable(
                f"{who} returned None; raise Unscorable(reason) when a row cannot be scored, "
                "NotApplicable(reason) when the reward is not for this row"
            )
        return checked_value(value, who)

    def _evaluate_one(self, completion: Any, example: Mapping[str, Any]) -> ScoreResult:
        """The per-item path of a reward that scores batches: ``evaluate`` on a batch of one
        (the example's fields become one-value columns; ``prompt`` becomes ``prompts``)."""
        columns = {
            k: v if k in BATCH_KEYWORDS else [v] for k, v in example.items() if k != "prompt"
        }
        prompt = example.get("prompt")
        (result,) = self.evaluate(
            prompts=None if prompt is None else [prompt], completions=[completion], **columns
        )
        return result

    def applies(self, example: Mapping[str, Any]) -> bool:
        """Whether this reward is for this row (``applies_to``)."""
        rule = self.applies_to
        if rule is None:
            return True
        if isinstance(rule, str):
            return example.get(rule) is not None
        return bool(rule(example))

    def _not_for_row(self) -> str:
        rule = self.applies_to
        if isinstance(rule, str):
            return f"no {rule!r} in this row (applies_to={rule!r})"
        return f"applies_to={getattr(rule, '__name__', rule)} is false for this row"

    # ------------------------------------------------------------------ default evaluate's items
    def score_batch(
        self, completions: Sequence[str | None], examples: Sequence[Mapping[str, Any]] | None = None
    ) -> list[ScoreResult]:
        """Score items the default ``evaluate`` kept, in order: parallel rewards in the shared
        process pool (without the live ``LIVE_KEYWORDS``: a reward that reads a multi-turn
        ``trajectory`` runs in-process), others on a watchdog thread; both with the per-item
        ``time_limit``.
        Override it for truly batched scoring that still wants ``applies_to`` handled."""
        if examples is None:
            examples = [{} for _ in completions]
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples for {len(completions)} completions")
        if not completions:
            return []
        if self.parallel:
            from grpo.rewards.pool import get_pool

            sent = [{k: v for k, v in e.items() if k not in LIVE_KEYWORDS} for e in examples]
            return get_pool().map(self, completions, sent, time_limit=self.time_limit)
        from grpo.rewards.deadline import run_items

        return run_items(
            lambda i: score_one(self, completions[i], examples[i]),
            len(completions),
            time_limit=self.time_limit,
            owner=self.name,
        )

    @property
    def last_results(self) -> list[ScoreResult] | None:
        """The ScoreResults of this thread's last ``__call__``."""
        return getattr(self._last, "results", None)

    @property
    def _last(self) -> threading.local:
        # created lazily so that subclasses need not call __init__
        local = self.__dict__.get("_last_local")
        if local is None:
            local = self.__dict__.setdefault("_last_local", threading.local())
        return local

    def __getstate__(self) -> dict[str, Any]:
        # Rewards are pickled to pool workers. The per-thread results are not picklable, and
        # applies_to is decided here before items are sent (a lambda would not pickle).
        state = self.__dict__.copy()
        state.pop("_last_local", None)
        state.pop("applies_to", None)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _scores_by_batch(cls: type[Reward]) -> bool:
    """Whether a reward class scores only batches: it implements ``evaluate`` or
    ``score_batch`` but neither ``score`` nor ``score_with_reason``."""

    def implements(method: str) -> bool:
        return getattr(cls, method) is not getattr(Reward, method)

    return (implements("evaluate") or implements("score_batch")) and not (
        implements("score") or implements("score_with_reason")
    )


def _value_or_raise(result: ScoreResult) -> float:
    """A result as ``score`` answers: its value, or the exception that says why there is none."""
    if result.status == NOT_APPLICABLE:
        raise NotApplicable(result.reason or "not applicable")
    if not result.scored:
        raise Unscorable(result.reason or result.status)
    return result.value  # type: ignore[return-value]


def failed_fraction(results: Sequence[ScoreResult]) -> float:
    """Share of items that could not be scored (statuses in ``FAILED``; ``n/a`` is not)."""
    return sum(r.failed for r in results) / max(len(results), 1)


def warn_failures(name: str, results: Sequence[ScoreResult]) -> None:
    """Log a warning naming the reward when items raised, timed out or crashed."""
    bad = [r for r in results if r.status in (ERROR, TIMEOUT, CRASHED)]
    if bad:
        log.warning(
            "reward %r: %d/%d items failed (%s); first: %s",
            name,
            len(bad),
            len(results),
            bad[0].status,
            bad[0].reason,
        )
