"""The Reward API: one base class, typed results, and trl's calling convention.

A reward answers one question per completion: how good is it, or *why can it not be told*.

* Users subclass :class:`Reward` and implement ``score(completion, **example)``, returning a
  ``float`` or ``None`` (unscorable), or raising :class:`Unscorable` with a reason.
* ``score_with_reason`` turns that into a :class:`ScoreResult` record (value, status, reason).
* ``score_batch`` scores many completions, in the shared process pool for rewards marked
  ``parallel`` (math-verify's signal-based timeouts need a process's main thread; hostile
  inputs need a process that can be killed), in-process otherwise.
* ``reward(prompts=..., completions=..., **columns)`` is trl's reward-function convention
  (``trl.GRPOTrainer._calculate_rewards``), so a ``grpo`` reward drops into trl unchanged; it
  returns ``list[float | None]`` and keeps the full records in ``reward.last_results``.

A crash never looks like a wrong answer: an exception inside ``score`` becomes a result with
status ``"error"`` and the exception in its reason, never a silent 0.0.

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
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# ScoreResult.status values.
OK = "ok"  # scored; value is a float
UNSCORABLE = "unscorable"  # the verifier could not decide (no gold answer, verifier timeout, ...)
ERROR = "error"  # score() raised an unexpected exception (a bug, or input it cannot handle)
TIMEOUT = "timeout"  # the item ran past its time limit; its worker process was killed
CRASHED = "crashed"  # the worker process died while scoring the item (segfault, OOM kill, ...)
STATUSES = (OK, UNSCORABLE, ERROR, TIMEOUT, CRASHED)


class Unscorable(Exception):
    """Raised inside ``score`` to say "this completion cannot be scored", with a reason.

    Use it for missing or unusable *reference data* and verifier failures (no gold answer,
    no tests, the verifier timed out), not for bad completions: a completion without an
    answer is wrong (0.0), not unscorable.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One completion's score. ``value`` is None exactly when ``status`` is not ``"ok"``.

    ``reason`` says why a completion is unscorable, and may also explain a scored value
    (e.g. ``"no \\\\boxed{} or <answer> found"`` for a 0.0).
    """

    value: float | None
    status: str = OK
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if (self.value is None) != (self.status != OK):
            raise ValueError(f"value={self.value!r} does not match status={self.status!r}")

    @property
    def scored(self) -> bool:
        return self.status == OK

    @classmethod
    def unscorable(cls, reason: str, status: str = UNSCORABLE) -> ScoreResult:
        return cls(None, status, reason)


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

    trl passes every dataset column as a list aligned with ``completions`` plus batch-level
    objects (``trainer_state``, ``log_metric``, ``log_extra``, ...). Aligned lists become
    fields of each example; other values are not per-item data and are left out.
    """
    aligned = {k: v for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
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
    except Exception as e:  # noqa: BLE001 -- the boundary: reported as status "error", never 0.0
        return ScoreResult.unscorable(f"{type(e).__name__}: {e}"[:500], ERROR)


class Reward:
    """Base class of every reward. Subclass it and implement :meth:`score`.

    Class attributes a subclass may set:

    * ``name``: the metric key (default: the class name in snake_case).
    * ``parallel``: score batches in the shared process pool (default False: in-process).
      Set it for slow or hostile-input verifiers (math-verify, code execution).
    * ``time_limit``: seconds one item may take in the pool before its worker is killed and
      the item is reported with status ``"timeout"``.

    The constructor accepts the same three as keyword arguments to override them per instance.
    Subclasses that define ``__init__`` should call ``super().__init__(...)``, but a subclass
    that does not still works with the class defaults.
    """

    name: str = "reward"  # set per subclass by __init_subclass__
    parallel: bool = False
    time_limit: float = 30.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _snake_case(cls.__name__)

    def __init__(
        self, *, name: str | None = None, parallel: bool | None = None,
        time_limit: float | None = None,
    ) -> None:
        if name is not None:
            self.name = name  # type: ignore[misc]  # per-instance override of the class default
        if parallel is not None:
            self.parallel = parallel
        if time_limit is not None:
            if not time_limit > 0:
                raise ValueError(f"time_limit must be > 0, got {time_limit}")
            self.time_limit = time_limit

    # trl names reward functions by ``__name__`` (trl.trainer.utils.get_callable_name); the
    # property makes trl's metric key ``rewards/<name>/mean`` use our ``name``.
    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self.name

    # ------------------------------------------------------------------ per item
    def score(self, completion: str, **example: Any) -> float | None:
        """Score one completion. ``example`` holds the dataset row's fields.

        Return a float, or None / raise :class:`Unscorable` when it cannot be scored.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score()")

    def score_with_reason(self, completion: str | None, **example: Any) -> ScoreResult:
        """``score`` as a :class:`ScoreResult`. Exceptions other than Unscorable propagate."""
        if completion is None:
            return ScoreResult.unscorable("completion is None")
        try:
            value = self.score(completion, **example)
        except Unscorable as u:
            return ScoreResult.unscorable(u.reason)
        if value is None:
            return ScoreResult.unscorable(f"{type(self).__name__}.score returned None")
        value = float(value)
        if math.isnan(value):
            return ScoreResult.unscorable(f"{type(self).__name__}.score returned NaN")
        return ScoreResult(value)

    # ------------------------------------------------------------------ batches
    def score_batch(
        self, completions: Sequence[str | None], examples: Sequence[Mapping[str, Any]] | None = None
    ) -> list[ScoreResult]:
        """Score a batch, in order. Parallel rewards go to the shared process pool."""
        if examples is None:
            examples = [{} for _ in completions]
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples for {len(completions)} completions")
        if self.parallel and len(completions) > 0:
            from grpo.rewards.pool import get_pool

            return get_pool().map(self, completions, examples, time_limit=self.time_limit)
        return [score_one(self, c, ex) for c, ex in zip(completions, examples, strict=True)]

    def evaluate(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[ScoreResult]:
        """trl-style inputs (string or chat completions, aligned columns) -> ScoreResults."""
        texts = [completion_text(c) for c in completions]
        results = self.score_batch(texts, batch_examples(len(texts), prompts, columns))
        _warn_errors(self.name, results)
        return results

    def __call__(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        """trl's reward-function convention: one float (or None) per completion.

        The full records stay in ``self.last_results`` (per thread) for logging. When trl
        passes its ``log_metric`` callback, the fraction of unscorable items is logged as
        ``<name>/unscorable_frac``.
        """
        results = self.evaluate(prompts=prompts, completions=completions, **columns)
        self._last.results = results
        log_metric = columns.get("log_metric")
        if callable(log_metric) and results:
            log_metric(f"{self.name}/unscorable_frac", unscorable_fraction(results))
        return [r.value for r in results]

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
        # rewards are pickled to pool workers; the per-thread results are not picklable
        state = self.__dict__.copy()
        state.pop("_last_local", None)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def unscorable_fraction(results: Sequence[ScoreResult]) -> float:
    return sum(not r.scored for r in results) / max(len(results), 1)


def _warn_errors(name: str, results: Sequence[ScoreResult]) -> None:
    errors = [r for r in results if r.status in (ERROR, CRASHED)]
    if errors:
        log.warning(
            "reward %r: %d/%d items failed (%s); first: %s",
            name, len(errors), len(results), errors[0].status, errors[0].reason,
        )


class FunctionReward(Reward):
    """A trl-style reward function ``f(prompts=..., completions=..., **kw) -> list[float|None]``
    used as a :class:`Reward` (see :func:`as_reward`).

    The function is called once per batch with the *raw* completions (strings or chat
    messages, as trl would give them) and every column, so open-r1-style functions work as
    they are. Being a batch function, it cannot be isolated per item: an exception it raises
    propagates.
    """

    def __init__(self, fn: Callable[..., Sequence[float | None]], *, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"as_reward needs a callable, got {fn!r}")
        inner = fn
        while hasattr(inner, "func"):  # functools.partial
            inner = inner.func
        super().__init__(name=name or getattr(inner, "__name__", type(inner).__name__))
        self.fn = fn

    def evaluate(
        self, *, prompts: Sequence[Any] | None = None, completions: Sequence[Any], **columns: Any
    ) -> list[ScoreResult]:
        if prompts is not None:
            columns = {"prompts": prompts, **columns}
        values = self.fn(completions=completions, **columns)
        if len(values) != len(completions):
            raise ValueError(
                f"reward function {self.name!r} returned {len(values)} values "
                f"for {len(completions)} completions"
            )
        out = []
        for v in values:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out.append(ScoreResult.unscorable(f"reward function {self.name!r} returned {v}"))
            else:
                out.append(ScoreResult(float(v)))
        return out

    def score(self, completion: str, **example: Any) -> float | None:
        prompt = example.pop("prompt", None)
        columns = {k: [v] for k, v in example.items()}
        prompts = None if prompt is None else [prompt]
        (result,) = self.evaluate(prompts=prompts, completions=[completion], **columns)
        return result.value

    def __repr__(self) -> str:
        return f"as_reward({getattr(self.fn, '__name__', self.fn)!r})"


def as_reward(
    fn: Reward | Callable[..., Sequence[float | None]], *, name: str | None = None
) -> Reward:
    """Wrap a plain trl-style reward function as a :class:`Reward` (a Reward passes through).

    >>> def short(completions, **kwargs):
    ...     return [float(len(c) < 4) for c in completions]
    >>> as_reward(short)(prompts=["q", "q"], completions=["abc", "abcdef"])
    [1.0, 0.0]
    """
    if isinstance(fn, Reward):
        return fn
    return FunctionReward(fn, name=name)
