"""Plain trl-style reward functions as :class:`~grpo.rewards.Reward` objects (``as_reward``).

A trl reward function is called once per batch with keyword arguments only
(``trl.GRPOTrainer._calculate_rewards``): ``prompts``, ``completions`` (chat messages for chat
prompts, strings for text prompts), ``completion_ids``, every dataset column but the prompt
(aligned per completion), ``trainer_state``, ``log_extra`` and ``log_metric``. It returns one
float per completion, or None where it does not apply (trl leaves those out of the weighted
sum). :class:`FunctionReward` calls it exactly so; grpo's own extra keyword ``truncated`` is
passed only to functions that name it as a parameter. ``async def`` functions (an LLM judge)
are run to completion on the scoring thread's own event loop.

Nothing a function does can stop the run or look like a score (all reported, none raised):

====================================================  =======================================
the function ...                                      becomes
====================================================  =======================================
returns a float (bool, int, numpy, 0-d tensor) item   ``"ok"``
returns None for an item                              ``"n/a"`` (trl: does not apply)
returns a string, a list, NaN or inf for an item      ``"error"`` for that item, value in reason
raises, returns None / a string / a dict instead of   ``"error"`` on every item, the reason
a list, or a list of the wrong length                 naming the function and the fix
does not return within ``time_limit`` (per call)      ``"timeout"`` on every item (its thread
                                                      is abandoned: ``grpo.rewards.deadline``)
====================================================  =======================================
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from grpo.rewards.base import (
    ERROR,
    TIMEOUT,
    Reward,
    ScoreResult,
    batch_examples,
    checked_value,
    warn_failures,
)
from grpo.rewards.deadline import run_items

log = logging.getLogger(__name__)

GRPO_KEYWORDS = ("truncated",)  # grpo's additions to trl's keywords: only for functions that ask
_FIX = (
    "a reward function must return a list with one float (None where it does not apply) "
    "per completion"
)


class FunctionReward(Reward):
    """A trl-style reward function ``f(prompts=..., completions=..., **kw) -> list[float|None]``
    used as a :class:`Reward` (see :func:`as_reward`).

    It implements only ``evaluate`` (the function scores the whole batch in one call, so
    ``time_limit`` here is per call); ``score`` and ``score_with_reason`` on one item call it
    with a batch of one (``Reward``'s generic per-item path).
    """

    time_limit = 60.0

    def __init__(
        self,
        fn: Callable[..., Sequence[float | None]],
        *,
        name: str | None = None,
        time_limit: float | None = None,
        applies_to: str | Callable[[Mapping[str, Any]], bool] | None = None,
    ):
        _check_function(fn)
        inner = fn
        while isinstance(inner, functools.partial):
            inner = inner.func
        if name is None:
            name = getattr(inner, "__name__", type(inner).__name__)
        super().__init__(name=name, time_limit=time_limit, applies_to=applies_to)
        self.fn = fn
        self.extras = tuple(k for k in GRPO_KEYWORDS if k in _named_parameters(fn))

    def evaluate(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[ScoreResult]:
        """The reward protocol: one call of the function on the rows it applies to, under the
        watchdog (``time_limit`` per call); what it returns, item by item, as ScoreResults."""
        n = len(completions)
        if n == 0:
            return []
        kwargs = {k: v for k, v in columns.items() if k not in GRPO_KEYWORDS or k in self.extras}
        if prompts is not None:
            kwargs["prompts"] = prompts
        kwargs["completions"] = completions
        keep = list(range(n))
        if self.applies_to is not None:
            examples = batch_examples(n, prompts, columns)
            keep = [i for i, ex in enumerate(examples) if self.applies(ex)]
            kwargs = {
                k: [v[i] for i in keep] if _aligned(k, v, n) else v for k, v in kwargs.items()
            }
        results = [ScoreResult.not_applicable(self._not_for_row())] * n
        if keep:
            m = len(keep)
            (scored,) = run_items(
                lambda _: self._call(kwargs, m),
                1,
                time_limit=self.time_limit,
                owner=self.name,
                on_timeout=lambda _, reason: [ScoreResult.unscorable(reason, TIMEOUT)] * m,
            )
            for i, r in zip(keep, scored, strict=True):
                results[i] = r
        warn_failures(self.name, results)
        return results

    def _call(self, kwargs: dict[str, Any], n: int) -> list[ScoreResult]:
        who = f"reward function {self.name!r}"
        try:
            values = self.fn(**kwargs)
            if inspect.isawaitable(values):  # an async function (trl supports them): run it here
                import asyncio

                values = asyncio.run(_awaited(values))
        except Exception as e:  # noqa: BLE001 -- reported on every item as status "error"
            log.warning("%s raised", who, exc_info=True)
            reason = f"{who} raised {type(e).__name__}: {e}"[:500]
            return [ScoreResult.unscorable(reason, ERROR)] * n
        if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):  # numpy, torch
            values = values.tolist()
        if isinstance(values, Iterable) and not isinstance(values, (str, bytes, Mapping)):
            values = list(values)  # trl iterates what it gets: a tuple or a generator is fine
        else:
            return [
                ScoreResult.unscorable(
                    f"{who} returned {values!r:.60} ({type(values).__name__}) instead of a list; "
                    f"{_FIX}",
                    ERROR,
                )
            ] * n
        if len(values) != n:
            return [
                ScoreResult.unscorable(
                    f"{who} returned {len(values)} values for {n} completions; {_FIX}", ERROR
                )
            ] * n
        return [
            ScoreResult.not_applicable(f"{who} returned None")
            if v is None
            else checked_value(v, f"{who} (item {i})")
            for i, v in enumerate(values)
        ]

    def __repr__(self) -> str:
        return f"as_reward({getattr(self.fn, '__name__', self.fn)!r})"


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _aligned(key: str, value: Any, n: int) -> bool:
    return key != "trainer_state" and isinstance(value, (list, tuple)) and len(value) == n


def _named_parameters(fn: Callable) -> set[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_function(fn: Any) -> None:
    if isinstance(fn, type):
        name = fn.__name__
        if issubclass(fn, Reward):
            raise TypeError(f"got the class {name}, not a reward: pass {name}() (an instance)")
        raise TypeError(f"got the class {name}: pass an instance, {name}(...), or a function")
    if not callable(fn):
        raise TypeError(
            f"a reward must be a grpo Reward instance or a function "
            f"f(completions, **kwargs) -> list[float | None]; got {fn!r:.80} ({type(fn).__name__})"
        )
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(
            f"reward function {getattr(fn, '__name__', fn)!r} has no **kwargs: trl calls reward "
            "functions with prompts=, completions=, completion_ids=, every dataset column, "
            "trainer_state=, log_extra= and log_metric=; add **kwargs to its signature"
        )


def as_reward(
    fn: Reward | Callable[..., Sequence[float | None]],
    *,
    name: str | None = None,
    time_limit: float | None = None,
) -> Reward:
    """Wrap a plain trl-style reward function as a :class:`Reward` (a Reward passes through).

    >>> def short(completions, **kwargs):
    ...     return [float(len(c) < 4) for c in completions]
    >>> as_reward(short)(prompts=["q", "q"], completions=["abc", "abcdef"])
    [1.0, 0.0]
    >>> as_reward(Reward)
    Traceback (most recent call last):
    TypeError: got the class Reward, not a reward: pass Reward() (an instance)
    """
    if isinstance(fn, Reward):
        if name is not None and name != fn.name:
            raise ValueError(
                f"as_reward(name={name!r}) on the Reward {fn!r}: pass name= to its constructor"
            )
        return fn
    return FunctionReward(fn, name=name, time_limit=time_limit)
