"""Length shaping: DAPO's soft overlong punishment, cosine length scaling, n-gram repetition.

* :class:`OverlongPenalty` -- DAPO (Yu et al., arXiv:2503.14476, §3.4 "Overlong Reward
  Shaping", Eq. 13). With L = |y| the completion length in tokens:

      R(y) = 0                                 if L <= L_max - L_cache
           = ((L_max - L_cache) - L) / L_cache if L_max - L_cache < L <= L_max
           = -1                                if L > L_max

  added to the accuracy reward, so truncated rambling is punished smoothly instead of
  receiving the same reward as a wrong answer.
* :class:`CosineLengthReward` -- Yeo et al., "Demystifying Long Chain-of-Thought Reasoning in
  LLMs" (arXiv:2502.03373, §4 "cosine length-scaling reward"): a correctness reward whose
  value moves along half a cosine with the length, ``CosFn(t, T, a, b) = b + (a - b)(1 +
  cos(pi t / T)) / 2`` (a at t = 0, b at t = T): correct answers earn more when short
  (``r_correct_0 > r_correct_L``), wrong answers are punished less when long
  (``r_wrong_0 < r_wrong_L``), and reaching ``max_length`` earns ``r_exceed``. It *replaces*
  the plain accuracy reward (it wraps one). Default values are our unit-scale choice; the paper
  tunes them per setting.
* :class:`RepetitionPenalty` -- the n-gram repetition penalty the same paper pairs with it:
  ``max_penalty * (1 - distinct n-grams / n-grams)`` over whitespace words. Deviation: one
  sequence-level value (as in open-r1), not the paper's per-token penalty.

Token counts: trl passes every reward a ``completion_ids`` column (so does grpo's trainer);
those are used when present (exact). Otherwise pass ``tokenizer=`` (a Hugging Face tokenizer)
or ``length_fn=``; with none of them an item is unscorable.

Truncation: grpo's trainer also passes ``truncated`` (the completion was cut by the generation
length limit, no end-of-sequence token). A truncated response is longer than the limit, so its
true length is unknown but above it: both rewards then give their "too long" value (``-1`` for
DAPO's L > L_max, ``r_exceed`` for the cosine reward), whatever the token count. Without the
flag (trl) the count decides, which agrees when the generation limit equals ``max_length``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpo.rewards.base import (
    CRASHED,
    ERROR,
    NOT_APPLICABLE,
    Reward,
    ScoreResult,
    Unscorable,
)


class _TokenLength:
    """Mixin: the length of a completion in tokens."""

    tokenizer: Any = None
    length_fn: Callable[[str], int] | None = None

    @staticmethod
    def truncated(example: Mapping[str, Any]) -> bool:
        """Whether the trainer says this completion was cut by the length limit."""
        return bool(example.get("truncated", False))

    def num_tokens(self, completion: str, example: Mapping[str, Any]) -> int:
        ids = example.get("completion_ids")
        if ids is not None:
            return len(ids)
        if self.length_fn is not None:
            return int(self.length_fn(completion))
        if self.tokenizer is not None:
            return len(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
        raise Unscorable("no token count: no completion_ids column, tokenizer or length_fn")


class OverlongPenalty(_TokenLength, Reward):
    """DAPO soft overlong punishment (Eq. 13): 0, then linearly down to -1, then -1.

    Args:
        max_length: L_max, in tokens (DAPO: 20480 = 16384 expected + 4096 buffer). Usually
            the generation's ``max_completion_length``.
        cache_length: L_cache, the length of the punishment ramp before ``max_length``.

    >>> r = OverlongPenalty(max_length=100, cache_length=20, length_fn=len)
    >>> [r.score("x" * n) for n in (80, 90, 100, 101)]
    [0.0, -0.5, -1.0, -1.0]
    """

    def __init__(
        self,
        max_length: int,
        cache_length: int,
        *,
        tokenizer: Any = None,
        length_fn: Callable[[str], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < cache_length <= max_length:
            raise ValueError(
                f"need 0 < cache_length <= max_length, got {cache_length}, {max_length}"
            )
        self.max_length = max_length
        self.cache_length = cache_length
        self.tokenizer = tokenizer
        self.length_fn = length_fn

    def score(self, completion: str, **example: Any) -> float:
        if self.truncated(example):
            return -1.0  # cut at the generation limit: L > L_max
        n = self.num_tokens(completion, example)
        threshold = self.max_length - self.cache_length
        if n <= threshold:
            return 0.0
        if n <= self.max_length:
            return (threshold - n) / self.cache_length
        return -1.0


def cosine_interp(t: float, horizon: float, at_zero: float, at_horizon: float) -> float:
    """Half-cosine from ``at_zero`` (t = 0) to ``at_horizon`` (t = horizon)."""
    t = min(max(t, 0.0), horizon)
    return at_horizon + 0.5 * (at_zero - at_horizon) * (1.0 + math.cos(math.pi * t / horizon))


class CosineLengthReward(_TokenLength, Reward):
    """Correctness reward scaled by length along a half cosine (Yeo et al. 2025).

    Args:
        verifier: the correctness reward (default :class:`~grpo.rewards.MathReward`); a
            completion is correct when its score is ``>= threshold``. Its unscorable results
            stay unscorable.
        max_length: T, in tokens; completions of ``max_length`` tokens or more get
            ``r_exceed``.
        r_correct_0, r_correct_L: reward of a correct answer at length 0 and at T.
        r_wrong_0, r_wrong_L: reward of a wrong answer at length 0 and at T.

    >>> from grpo.rewards import FormatReward
    >>> r = CosineLengthReward(FormatReward(), max_length=100, length_fn=len)
    >>> ok = "<think></think><answer>1</answer>"   # 33 characters, "correct"
    >>> round(r.score(ok), 4), round(r.score("wrong"), 4)
    (0.8773, -0.9969)
    """

    def __init__(
        self,
        verifier: Reward | None = None,
        *,
        max_length: int,
        r_correct_0: float = 1.0,
        r_correct_L: float = 0.5,
        r_wrong_0: float = -1.0,
        r_wrong_L: float = -0.5,  # noqa: N803
        r_exceed: float = -1.0,
        threshold: float = 0.5,
        tokenizer: Any = None,
        length_fn: Callable[[str], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_length <= 0:
            raise ValueError(f"max_length must be > 0, got {max_length}")
        if verifier is None:
            from grpo.rewards.math import MathReward

            verifier = MathReward()
        self.verifier = verifier
        self.max_length = max_length
        self.r_correct = (r_correct_0, r_correct_L)
        self.r_wrong = (r_wrong_0, r_wrong_L)
        self.r_exceed = r_exceed
        self.threshold = threshold
        self.tokenizer = tokenizer
        self.length_fn = length_fn

    def shape(self, correct: bool, n_tokens: int) -> float:
        if n_tokens >= self.max_length:
            return self.r_exceed
        at_zero, at_horizon = self.r_correct if correct else self.r_wrong
        return cosine_interp(n_tokens, self.max_length, at_zero, at_horizon)

    def score(self, completion: str, **example: Any) -> float:
        res = self.verifier.score_with_reason(completion, **example)
        return self._shaped(res, completion, example).value  # type: ignore[return-value]

    def score_with_reason(self, completion: str | None, **example: Any) -> ScoreResult:
        if completion is None:
            return ScoreResult.unscorable("completion is None")
        res = self.verifier.score_with_reason(completion, **example)
        return self._shaped(res, completion, example)

    def score_batch(
        self, completions: Sequence[str | None], examples: Sequence[Mapping[str, Any]] | None = None
    ) -> list[ScoreResult]:
        # the verifier scores the batch its own way (the process pool for MathReward)
        examples = examples if examples is not None else [{} for _ in completions]
        verdicts = self.verifier.score_batch(completions, examples)
        return [
            self._shaped(v, c, ex) if c is not None else v
            for v, c, ex in zip(verdicts, completions, examples, strict=True)
        ]

    def _shaped(
        self, verdict: ScoreResult, completion: str, example: Mapping[str, Any]
    ) -> ScoreResult:
        if verdict.status in (NOT_APPLICABLE, ERROR, CRASHED):  # a verifier's bug stays visible
            return verdict
        if self.truncated(example):  # exceeded the length limit: correctness does not matter
            return ScoreResult(self.r_exceed, reason="truncated at the length limit")
        if not verdict.scored:
            return verdict
        try:
            n = self.num_tokens(completion, example)
        except Unscorable as u:
            return ScoreResult.unscorable(u.reason)
        correct = verdict.value >= self.threshold  # type: ignore[operator]
        note = f"{'correct' if correct else 'wrong'}, {n} tokens"
        return ScoreResult(self.shape(correct, n), reason=note)


class RepetitionPenalty(Reward):
    """``max_penalty`` x the fraction of repeated word n-grams (0 when nothing repeats).

    >>> RepetitionPenalty(ngram_size=2).score("a b a b a b")   # 5 bigrams, 2 distinct
    -0.6
    """

    def __init__(self, *, ngram_size: int = 3, max_penalty: float = -1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        if max_penalty > 0:
            raise ValueError(f"max_penalty must be <= 0, got {max_penalty}")
        self.ngram_size = ngram_size
        self.max_penalty = max_penalty

    def score(self, completion: str, **example: Any) -> float:
        words = completion.lower().split()
        n = self.ngram_size
        total = len(words) - n + 1
        if total <= 0:
            return 0.0
        distinct = len(set(zip(*(words[i:] for i in range(n)), strict=False)))
        return self.max_penalty * (1.0 - distinct / total)
