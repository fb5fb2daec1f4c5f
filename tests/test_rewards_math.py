"""MathReward: answer extraction, equivalence tables (real math-verify), hostile inputs."""

from __future__ import annotations

import random
import re
import threading
import time
from decimal import Decimal
from fractions import Fraction

import pytest

from grpo.rewards import OK, UNSCORABLE, MathReward, extract_answer
from grpo.rewards.math import (
    _parse,
    answer_tag,
    gold_text,
    last_boxed,
    last_number,
    literal_verdict,
)

# Pairs checked by hand. (gold, answer) that MUST be judged equal ...
EQUIVALENT = [
    ("0.5", r"\frac{1}{2}"),  # decimal vs LaTeX fraction
    ("1/2", "0.5"),  # plain fraction vs decimal
    (r"\frac{3}{4}", "0.75"),
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),  # \dfrac normalised
    ("3", "3.0"),
    ("1000", "1,000"),  # thousands separator
    ("10^{3}", "1000"),
    (r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}"),  # symbolic equality
    ("x^2+2x+1", "(x+1)^2"),
    (r"\{1,2\}", r"\{2,1\}"),  # sets are unordered
    ("[1,2)", "[1,2)"),  # half-open interval
    ("x=3", "3"),  # an equation's value
    (r"5 \text{ cm}", "5"),  # units dropped
    (r"50\%", r"\frac{1}{2}"),  # percentage
    ("1/3", "0.333333"),  # floats rounded to 6 decimals
    (r"\infty", r"\infty"),
    ("-7", "-7"),
]
# ... and pairs that must NOT be.
DIFFERENT = [
    ("3", "3.01"),
    ("[1,2)", "(1,2)"),  # closed vs open end
    ("(1,2)", "(2,1)"),  # ordered pair / interval order matters
    (r"\pi", "3.14159"),  # pi is not 3.14159 at 6 decimals
    ("2", r"\text{two}"),
    (r"\frac{1}{2}", r"\frac{1}{3}"),
    ("x^2", "x^3"),
    (r"\{1,2\}", r"\{1,2,3\}"),
    ("-1", "1"),
    ("1000", "100"),
    ("x+1", "y+1"),  # different variables
    ("0", r"\emptyset"),
]


@pytest.fixture(scope="module")
def reward():
    return MathReward()


def _batch(reward, pairs):
    completions = [rf"The answer is \boxed{{{a}}}." for _, a in pairs]
    return reward.score_batch(completions, [{"answer": g} for g, _ in pairs])


def test_equivalent_pairs_score_one(reward):
    res = _batch(reward, EQUIVALENT)
    wrong = [(p, r) for p, r in zip(EQUIVALENT, res) if r.value != 1.0]
    assert wrong == []


def test_different_pairs_score_zero(reward):
    res = _batch(reward, DIFFERENT)
    wrong = [(p, r) for p, r in zip(DIFFERENT, res) if r.value != 0.0]
    assert wrong == []


def _literal_pairs() -> list[tuple[str, str]]:
    pairs = [
        ("42", "42"),
        ("42", "42.0"),
        ("7", "8"),
        ("1/2", "0.5"),
        (r"\frac{1}{2}", "2/4"),
        ("-3", "-3"),
        ("-3", "3"),
        ("1/3", "0.333333"),
        ("1/3", "0.33"),
        ("0.1", "0.10"),
        ("10", "010"),
        ("3/6", "1/2"),
        (r"\dfrac{3}{4}", "3/4"),
        ("5", r"\frac{10}{2}"),
        ("1000000", "999999"),
        (r"-\frac{1}{2}", "-0.5"),
        ("2.5", "2.50001"),
    ]
    rng = random.Random(0)
    forms = [
        lambda n, d: str(n // d) if n % d == 0 else f"{n}/{d}",
        lambda n, d: f"\\frac{{{n}}}{{{d}}}",
        lambda n, d: str(n),
        lambda n, d: f"{n / d:.6g}",
    ]
    for _ in range(150):
        n1, d1, n2, d2 = (
            rng.randint(-30, 30),
            rng.randint(1, 8),
            rng.randint(-30, 30),
            rng.randint(1, 8),
        )
        if rng.random() < 0.4:
            n2, d2 = n1 * 2, d1 * 2
        pairs.append((rng.choice(forms)(n1, d1), rng.choice(forms)(n2, d2)))
    return pairs


def test_literal_fast_path_agrees_with_math_verify():
    from math_verify import parse, verify

    decided = 0
    for gold, answer in _literal_pairs():
        fast = literal_verdict(gold, answer)
        if fast is None:
            continue
        decided += 1
        slow = verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + answer + "}"))
        assert fast == slow, (gold, answer)
    assert decided > 120  # the table exercises the fast path, both ways
    assert literal_verdict("x", "1") is None and literal_verdict("0.33", "1/3") is None


# ------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"first \boxed{1}, finally \boxed{2}", "2"),  # several boxes: the last
        (r"\boxed{3} and a truncated \boxed{\frac{1", "3"),  # unclosed last box is skipped
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not groups
        (r"\fbox{7}", "7"),
        (r"\boxed {8}", "8"),
        ("no box here", None),
        (r"\boxed{", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_answer_tag_wins_and_may_contain_a_box():
    assert extract_answer(r"\boxed{1} <answer>2</answer>") == "2"
    assert extract_answer(r"<answer>so \boxed{3}</answer> \boxed{4}") == "3"
    assert extract_answer("<answer> 5 </answer>") == "5"
    assert answer_tag("<answer>1</answer><answer>2") == "1"  # last *complete* pair
    assert extract_answer("<answer>  </answer>") is None


def test_last_number_fallback_is_opt_in():
    text = "we get 12 apples, then 1,234.5 pears and 3/4 of a pie"
    assert extract_answer(text) is None
    assert extract_answer(text, "last_number") == "3/4"
    assert last_number("total: -1,234.5 units") == "-1,234.5"
    with pytest.raises(ValueError):
        MathReward(fallback="first_number")


@pytest.mark.parametrize(
    "gold, expected",
    [
        ("He has 3 + 4 = 7 apples.\n#### 7", "7"),  # GSM8K
        (r"So the area is $\boxed{\frac{9}{2}}$.", r"\frac{9}{2}"),  # MATH solution
        (42, "42"),
        (0.5, "0.5"),
    ],
)
def test_gold_text(gold, expected):
    assert gold_text(gold) == expected


def test_gold_formats_score(reward):
    res = reward.score_batch(
        [r"\boxed{7}", r"\boxed{4.5}", r"\boxed{42}"],
        [{"answer": "#### 7"}, {"answer": r"... $\boxed{\frac{9}{2}}$"}, {"answer": 42}],
    )
    assert [r.value for r in res] == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------ unscorable vs wrong
def test_missing_or_unparsable_gold_is_unscorable_not_wrong(reward):
    res = reward.score_batch(
        [r"\boxed{1}"] * 4, [{}, {"answer": None}, {"answer": "  "}, {"answer": "}{"}]
    )
    assert [r.status for r in res] == [UNSCORABLE] * 4
    assert "no gold answer" in res[0].reason and "could not parse" in res[3].reason


def test_completion_without_an_answer_is_wrong_with_a_reason(reward):
    res = reward.score_batch(["", "I think it is 7.", r"\boxed{}"], [{"answer": "7"}] * 3)
    assert [r.value for r in res] == [0.0, 0.0, 0.0]
    assert all("no <answer>" in r.reason for r in res)


def test_none_completion_is_unscorable(reward):
    (res,) = reward.score_batch([None], [{"answer": "1"}])
    assert res.status == UNSCORABLE and res.reason == "completion is None"


def test_answer_over_the_length_cap_is_wrong_without_parsing():
    r = MathReward(max_answer_chars=50, parallel=False)
    res = r.score_with_reason(r"\boxed{" + "1+" * 100 + "1}", answer="101")
    assert res.value == 0.0 and "longer than 50" in res.reason


# ------------------------------------------------------------------------------ hostile inputs
PATHOLOGICAL = [
    r"\boxed{9^{9^{9^{9}}}}",  # power tower
    r"\boxed{10^{10^{10}}}",
    r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",  # deeply nested braces
    r"\boxed{" + "{" * 5000,  # unbalanced
    r"\boxed{\frac{1}{",
    r"\boxed{\left( \right.\sqrt[}",
    r"\boxed{" + r"\frac{" * 300 + "}",
    r"\boxed{" + "x" * 900 + "}",
    r"\boxed{100000!}",
    "<answer>" + "(" * 800 + "</answer>",
]


def test_pathological_latex_returns_within_the_time_limit():
    r = MathReward(parse_timeout=1, verify_timeout=1, time_limit=6)
    t = time.monotonic()
    res = r.score_batch(PATHOLOGICAL + [r"\boxed{1}"], [{"answer": "1"}] * (len(PATHOLOGICAL) + 1))
    took = time.monotonic() - t
    assert all(x.value != 1.0 for x in res[:-1])  # nothing pathological is "correct"
    assert res[-1].value == 1.0  # and the normal item in the same batch is scored
    # 2 workers, each item <= 6 s hard limit; in practice math-verify's own 1 s limits fire
    assert took < 6 * len(PATHOLOGICAL) / 2 + 5


def test_huge_completion_is_fast_and_scored_correctly():
    huge = ("Let me think. {[(" * 70_000) + r" so \boxed{\frac{1}{2}}"  # ~1 MB, unbalanced
    t = time.monotonic()
    assert extract_answer(huge) == r"\frac{1}{2}"
    assert time.monotonic() - t < 0.5
    res = MathReward().score_batch([huge, "x" * 2_000_000], [{"answer": "0.5"}] * 2)
    assert [x.value for x in res] == [1.0, 0.0]


def test_gold_parse_is_cached():
    r = MathReward(parallel=False)
    assert r.score(r"\boxed{1+x}", answer="x+1") == 1.0  # not plain literals: parsed
    hits = _parse.cache_info().hits
    for _ in range(5):
        r.score(r"\boxed{1+x}", answer="x+1")
    assert _parse.cache_info().hits >= hits + 10  # gold and answer both cached


def test_in_process_scoring_off_the_main_thread():
    # math-verify's signal timeouts raise ValueError off the main thread; MathReward turns them
    # off there (the pool's hard limit is the guard when it runs in the pool)
    out = []
    r = MathReward(parallel=False)
    th = threading.Thread(
        target=lambda: out.append(r.score_with_reason(r"\boxed{0.25}", answer="1/4"))
    )
    th.start()
    th.join()
    assert out[0].status == OK and out[0].value == 1.0


def test_single_item_doctest_style():
    assert MathReward(parallel=False).score(r"... so \boxed{\frac{1}{2}}", answer="0.5") == 1.0


def _plus_one(answer: str) -> str:
    """The literal answer + 1, written the same way (integer, a/b or decimal)."""
    text = answer.strip().strip("$")
    latex = re.fullmatch(r"\\(d?frac)\{(\d+)\}\{(\d+)\}", text)
    if latex:
        cmd, num, den = latex.groups()
        return f"\\{cmd}{{{int(num) + int(den)}}}{{{den}}}"
    if "/" in text:
        value = Fraction(text) + 1
        return f"{value.numerator}/{value.denominator}"
    if "." in text:
        return str(Decimal(text) + 1)
    return str(int(text) + 1)


@pytest.mark.parametrize(
    "task", ["basic_arithmetic", "fraction_simplification", "gsm_symbolic", "decimal_arithmetic"]
)
def test_agrees_with_reasoning_gym_scorers(task):
    """An independent reference: reasoning-gym's own scorer, on its own generated problems,
    for the gold answer and a wrong one (gold + 1)."""
    rg = pytest.importorskip("reasoning_gym")
    data = rg.create_dataset(task, size=8, seed=3)
    completions, examples, expected = [], [], []
    for entry in data:
        for answer in (entry["answer"], _plus_one(entry["answer"])):
            completions.append(f"<think>working</think><answer>{answer}</answer>")
            examples.append({"answer": entry["answer"]})
            expected.append(1.0 if data.score_answer(answer, entry) == 1.0 else 0.0)
    assert expected.count(1.0) == len(data)  # the reference accepts gold, rejects gold + 1
    assert [r.value for r in MathReward().score_batch(completions, examples)] == expected
