r"""Math accuracy reward: extract the final answer, decide equivalence with math-verify.

DeepSeek-R1 (arXiv:2501.12948, §2.2.2 "Reward Modeling"): *accuracy rewards* check that the
final answer, given "in a specified format (e.g., within a box)", is correct; R1-Zero trains on
this rule-based reward alone. Equivalence is decided by math-verify (HF), which parses LaTeX
and plain expressions to sympy and compares numerically and symbolically: 1/2 == 0.5 ==
\frac{1}{2} == 50\%, {1,2} == {2,1}, intervals, equations ("x=3" vs "3"), units dropped.

Extraction (ours, linear-time so that megabyte completions stay cheap):

1. the content of the last complete ``<answer>...</answer>``; inside it the last ``\boxed{}``
   if there is one;
2. else the content of the last complete ``\boxed{...}`` / ``\fbox{...}`` (nested braces
   balanced; a truncated, unclosed box is skipped);
3. else the configurable fallback: ``"last_number"`` takes the last number of the text;
   ``None`` (default, as R1 requires a specified format) finds no answer: score 0.0.

Deviations / choices, all visible in ``ScoreResult.reason``:

* No answer found, or an answer longer than ``max_answer_chars``: 0.0 (the model's fault).
* Gold answer missing or unparsable: unscorable (the data's fault).
* math-verify timed out or raised while comparing: unscorable, never 0.0 (math-verify itself
  would return False, making a verifier failure look like a wrong answer).
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction
from typing import Any, Literal

from grpo.rewards.base import Reward, ScoreResult, Unscorable

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?")


_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)


def _matching_braces(text: str, start: int = 0) -> dict[int, int]:
    """Map each '{' index (from ``start`` on) to its matching '}' index; unmatched ones absent.

    Escaped characters (``\\{``, ``\\}`` are LaTeX set braces, not groups) are skipped. The
    regex visits only backslashes and braces, so a megabyte of prose costs milliseconds.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKEN_RE.finditer(text, start):
        ch = m.group()
        if ch == "{":
            stack.append(m.start())
        elif ch == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def last_boxed(text: str) -> str | None:
    r"""Content of the last complete ``\boxed{...}`` (or ``\fbox{...}``) in ``text``.

    >>> last_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> last_boxed(r"\boxed{2} then \boxed{unclosed")
    '2'
    """
    starts = [m.end() - 1 for m in _BOX_RE.finditer(text)]  # index of each box's '{'
    if not starts:
        return None
    pairs = _matching_braces(text, starts[0])
    for open_idx in reversed(starts):
        close = pairs.get(open_idx)
        if close is not None:
            return text[open_idx + 1 : close]
    return None


def answer_tag(text: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>``."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>") : end]


def last_number(text: str) -> str | None:
    """The last number in ``text`` (integers, 1,000-style groups, decimals, a/b fractions)."""
    last = None
    for last in _NUMBER_RE.finditer(text):  # noqa: B007 -- we want the final match
        pass
    return None if last is None else last.group(0).replace(" ", "")


def extract_answer(text: str, fallback: Literal["last_number"] | None = None) -> str | None:
    """The final answer of a completion (see module docstring for the order), or None."""
    tagged = answer_tag(text)
    if tagged is not None:
        boxed = last_boxed(tagged)
        answer = boxed if boxed is not None else tagged
    else:
        answer = last_boxed(text)
    if answer is None and fallback == "last_number":
        answer = last_number(text)
    if answer is not None:
        answer = answer.strip()
    return answer or None


_INT_RE = re.compile(r"-?\d+")
_DEC_RE = re.compile(r"-?\d+\.\d+")
_SLASH_RE = re.compile(r"(-?\d+)/(\d+)")
_FRAC_RE = re.compile(r"(-?)\\d?frac\{(-?\d+)\}\{(\d+)\}")


def _literal(text: str) -> tuple[Fraction, bool] | None:
    """(exact value, has a decimal point) of a plain number literal, else None."""
    s = text.replace(" ", "").strip("$")
    if _INT_RE.fullmatch(s):
        return Fraction(int(s)), False
    if _DEC_RE.fullmatch(s):
        return Fraction(s), True
    m = _SLASH_RE.fullmatch(s)
    if m and int(m.group(2)):
        return Fraction(int(m.group(1)), int(m.group(2))), False
    m = _FRAC_RE.fullmatch(s)
    if m and int(m.group(3)):
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) else value), False
    return None


def literal_verdict(gold: str, answer: str) -> bool | None:
    r"""Decide plain-number pairs without sympy, with math-verify's verdict; None = undecided.

    Exactly equal rationals are equal for math-verify too; two *exact* literals (integers,
    a/b, \frac{a}{b}) that differ are different for it too. Decimals that differ are left to
    math-verify, which rounds floats (0.333333 equals 1/3 at 6 decimals). Most GSM8K-style
    answers are integers, so this skips the LaTeX parser (about 2-20 ms) for most items.

    >>> literal_verdict("42", "42.0"), literal_verdict(r"\frac{1}{2}", "2/4")
    (True, True)
    >>> literal_verdict("7", "8"), literal_verdict("0.33", "1/3")
    (False, None)
    """
    g, a = _literal(gold), _literal(answer)
    if g is None or a is None:
        return None
    if g[0] == a[0]:
        return True
    if not g[1] and not a[1]:
        return False
    return None


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _timeout(seconds: int) -> int | None:
    # math-verify's timeouts use signal.alarm, which raises ValueError off the main thread;
    # there they are disabled and the process pool's hard time limit is the only guard.
    return seconds if _on_main_thread() else None


@functools.lru_cache(maxsize=8192)
def _parse(answer: str, timeout_s: int | None) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return tuple(
        parse(
            "\\boxed{" + answer + "}",
            extraction_config=[
                LatexExtractionConfig(boxed_match_priority=0),
                ExprExtractionConfig(),
            ],
            parsing_timeout=timeout_s,
            raise_on_error=True,
        )
    )


def gold_text(gold: Any) -> str:
    r"""The answer part of a gold field: a bare answer, a solution with ``\boxed{}``, or a
    GSM8K-style solution ending in ``#### 42``."""
    text = str(gold)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = last_boxed(text)
    return (boxed if boxed is not None else text).strip()


class MathReward(Reward):
    r"""1.0 if the completion's final answer equals the gold answer, else 0.0 (R1 accuracy).

    Args:
        answer_key: example field holding the gold answer (``str``, number, a solution with
            ``\boxed{}``, or GSM8K ``"... #### 42"``).
        fallback: ``"last_number"`` to take the last number when no ``<answer>`` tag or
            ``\boxed{}`` is present; None (default) scores such completions 0.0.
        max_answer_chars: longer extracted answers score 0.0 without being parsed (a wall of
            text in a box is not an answer, and parsing it can take seconds).
        parse_timeout, verify_timeout: math-verify's own per-call limits in seconds (only on a
            main thread, i.e. in pool workers). The pool's ``time_limit`` kills anything that
            ignores them (a C-level big-integer power holds the GIL and never sees a signal).
        float_rounding: decimals math-verify rounds floats to before comparing.

    Gold answers are parsed once per process and cached (GRPO scores each gold answer
    ``num_generations`` times).

    >>> r = MathReward(parallel=False)
    >>> r.score(r"... so the answer is \boxed{\frac{1}{2}}", answer="0.5")
    1.0
    >>> r.score("<answer>0.75</answer>", answer=r"\frac{3}{5}")
    0.0
    """

    parallel = True
    time_limit = 20.0

    def __init__(
        self,
        answer_key: str = "answer",
        *,
        fallback: Literal["last_number"] | None = None,
        max_answer_chars: int = 1000,
        parse_timeout: int = 5,
        verify_timeout: int = 5,
        float_rounding: int = 6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if fallback not in (None, "last_number"):
            raise ValueError(f"fallback must be None or 'last_number', got {fallback!r}")
        self.answer_key = answer_key
        self.fallback = fallback
        self.max_answer_chars = max_answer_chars
        self.parse_timeout = parse_timeout
        self.verify_timeout = verify_timeout
        self.float_rounding = float_rounding

    def gold(self, example: dict[str, Any]) -> tuple:
        """The parsed gold answer of an example (cached), or raise Unscorable."""
        from math_verify.errors import TimeoutException

        gold = example.get(self.answer_key)
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            raise Unscorable(f"no gold answer in field {self.answer_key!r}")
        try:
            parsed = _parse(gold_text(gold), _timeout(self.parse_timeout))
        except TimeoutException:
            raise Unscorable(
                f"math-verify timed out parsing the gold answer {str(gold)[:80]!r}"
            ) from None
        if not parsed:
            raise Unscorable(f"math-verify could not parse the gold answer {str(gold)[:80]!r}")
        return parsed

    def score(self, completion: str, **example: Any) -> float:
        return self._score(completion, example)[0]

    def score_with_reason(self, completion: str | None, **example: Any) -> ScoreResult:
        if completion is None:
            return ScoreResult.unscorable("completion is None")
        try:
            value, note = self._score(completion, example)
        except Unscorable as u:
            return ScoreResult.unscorable(u.reason)
        return ScoreResult(value, reason=note)

    def _score(self, completion: str, example: dict[str, Any]) -> tuple[float, str | None]:
        from math_verify import verify
        from math_verify.errors import TimeoutException

        gold = self.gold(example)
        answer = extract_answer(completion, self.fallback)
        if answer is None:
            where = "<answer> or \\boxed{}" + (" or a number" if self.fallback else "")
            return 0.0, f"no {where} found"
        if len(answer) > self.max_answer_chars:
            return 0.0, f"answer longer than {self.max_answer_chars} characters"
        verdict = literal_verdict(gold_text(example[self.answer_key]), answer)
        if verdict is not None:
            return float(verdict), None
        try:
            pred = _parse(answer, _timeout(self.parse_timeout))
        except TimeoutException:
            raise Unscorable(f"math-verify timed out parsing the answer {answer[:80]!r}") from None
        if not pred:
            return 0.0, f"answer {answer[:80]!r} could not be parsed"
        failure = None
        for g in gold:  # pair by pair: one raising pair must not hide a later match
            for p in pred:
                try:
                    if verify(
                        g,
                        p,
                        float_rounding=self.float_rounding,
                        timeout_seconds=_timeout(self.verify_timeout),
                        raise_on_error=True,
                    ):
                        return 1.0, None
                except TimeoutException:
                    failure = "math-verify timed out comparing the answer"
                except Exception as e:  # noqa: BLE001 -- sympy raises many types; never a 0.0
                    failure = failure or f"math-verify raised {type(e).__name__}: {str(e)[:120]}"
        if failure is not None:
            raise Unscorable(failure)
        return 0.0, None

    # ------------------------------------------------------------------ majority vote (cons@k)
    def vote_answer(self, completion: str) -> str | None:
        r"""The final answer as it votes in a majority vote (``cons@k``,
        :func:`grpo.evaluation.majority_vote`): extracted as for scoring, whitespace runs
        collapsed; None (no vote) when there is none, it is longer than ``max_answer_chars``, or
        math-verify cannot parse it to an expression (or times out trying): ``???`` does not
        vote, although scoring compares it as a string and finds it wrong.

        >>> MathReward().vote_answer(r"so \boxed{\frac{1}{2}  }"), MathReward().vote_answer("7")
        ('\\frac{1}{2}', None)
        """
        from math_verify.errors import TimeoutException

        answer = extract_answer(completion, self.fallback)
        if answer is None or len(answer) > self.max_answer_chars:
            return None
        answer = " ".join(answer.split())
        if _literal(answer) is not None:
            return answer
        try:
            parsed = _parse(answer, _timeout(self.parse_timeout))
        except (TimeoutException, Exception):  # noqa: BLE001 -- a timeout or a parser error
            return None
        # math-verify keeps the raw string next to what it parsed; the string alone: unparsed
        return answer if any(not isinstance(x, str) for x in parsed) else None

    def same_answer(self, a: str, b: str) -> bool:
        r"""Whether two voted answers are the same answer for this verifier: math-verify's
        equivalence (as in scoring, ``a`` in the place of the gold answer), so "1/2", "0.5" and
        ``\frac{1}{2}`` are one answer. A comparison that times out or raises is "different".

        >>> r = MathReward()
        >>> r.same_answer("1/2", "0.5"), r.same_answer("x=3", "3"), r.same_answer("2", "3")
        (True, True, False)
        """
        from math_verify import verify
        from math_verify.errors import TimeoutException

        if a == b:
            return True
        verdict = literal_verdict(a, b)
        if verdict is not None:
            return verdict
        try:
            pa = _parse(a, _timeout(self.parse_timeout))
            pb = _parse(b, _timeout(self.parse_timeout))
            for g in pa:
                for p in pb:
                    if verify(
                        g,
                        p,
                        float_rounding=self.float_rounding,
                        timeout_seconds=_timeout(self.verify_timeout),
                        raise_on_error=True,
                    ):
                        return True
        except (TimeoutException, Exception):  # noqa: BLE001 -- sympy raises many types
            return False
        return False

    def explain(self, completion: str, **example: Any) -> dict[str, Any]:
        """What was extracted and how it parsed (for debugging a score)."""
        answer = extract_answer(completion, self.fallback)
        parsed = _parse(answer, _timeout(self.parse_timeout)) if answer else ()
        return {
            "answer": answer,
            "parsed": [str(x) for x in parsed],
            "gold": [str(x) for x in self.gold(example)],
        }
