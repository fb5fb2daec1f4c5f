"""Length shaping: DAPO overlong penalty, cosine length scaling, n-gram repetition penalty."""

from __future__ import annotations

import math

import pytest

from grpo.rewards import (
    UNSCORABLE,
    CosineLengthReward,
    FormatReward,
    MathReward,
    OverlongPenalty,
    RepetitionPenalty,
)
from grpo.rewards.length import cosine_interp


# ------------------------------------------------------------------------------ DAPO Eq. 13
@pytest.mark.parametrize(
    "n, expected",
    [
        (0, 0.0),
        (16, 0.0),  # L <= L_max - L_cache = 20 - 4 = 16: no penalty
        (17, -0.25),  # (16 - 17) / 4
        (18, -0.5),
        (20, -1.0),  # (16 - 20) / 4 at L_max
        (21, -1.0),  # beyond L_max
        (500, -1.0),
    ],
)
def test_overlong_penalty_hand_computed(n, expected):
    r = OverlongPenalty(max_length=20, cache_length=4)
    assert r.score("", completion_ids=list(range(n))) == pytest.approx(expected)


def test_overlong_penalty_token_count_sources():
    words = lambda text: len(text.split())  # noqa: E731
    by_fn = OverlongPenalty(max_length=4, cache_length=2, length_fn=words)
    assert by_fn.score("a b c") == pytest.approx(-0.5)

    class WhitespaceTokenizer:  # the Hugging Face tokenizer call signature
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": text.split() + (["<s>"] if add_special_tokens else [])}

    by_tok = OverlongPenalty(max_length=4, cache_length=2, tokenizer=WhitespaceTokenizer())
    assert by_tok.score("a b c") == pytest.approx(-0.5)  # special tokens not counted
    # trl's completion_ids column wins over any other count
    assert by_fn(completions=["a b c"], completion_ids=[[1, 2]]) == [0.0]
    res = OverlongPenalty(max_length=4, cache_length=2).evaluate(completions=["a"])
    assert res[0].status == UNSCORABLE and "no token count" in res[0].reason


def test_truncated_completions_get_the_too_long_value_whatever_their_count():
    """The trainer passes ``truncated`` (cut by the generation limit): the true length is above
    the limit, so DAPO's L > L_max branch (-1) and the cosine reward's r_exceed apply."""
    overlong = OverlongPenalty(max_length=20, cache_length=4)
    ids = [[0] * 10, [0] * 10, [0] * 18]
    out = overlong.evaluate(completions=["a"] * 3, completion_ids=ids,
                            truncated=[False, True, False])
    assert [r.value for r in out] == [0.0, -1.0, -0.5]  # a cut at 10 tokens is still overlong
    cosine = CosineLengthReward(FormatReward(), max_length=100, r_exceed=-2.0)
    good = "<think>x</think><answer>4</answer>"
    res = cosine.evaluate(completions=[good, good], completion_ids=[[0] * 50] * 2,
                          truncated=[False, True])
    assert res[0].value == pytest.approx(0.75) and res[1].value == -2.0
    assert res[1].reason == "truncated at the length limit"


def test_overlong_penalty_validates():
    with pytest.raises(ValueError):
        OverlongPenalty(max_length=10, cache_length=0)
    with pytest.raises(ValueError):
        OverlongPenalty(max_length=10, cache_length=11)


# ------------------------------------------------------------------------------ cosine
def test_cosine_interp_hand_computed():
    assert cosine_interp(0, 100, 1.0, 0.5) == pytest.approx(1.0)
    assert cosine_interp(50, 100, 1.0, 0.5) == pytest.approx(0.75)  # cos(pi/2) = 0
    assert cosine_interp(100, 100, 1.0, 0.5) == pytest.approx(0.5)
    # 25%: 0.5 + 0.25 * (1 + cos(pi/4))
    assert cosine_interp(25, 100, 1.0, 0.5) == pytest.approx(0.5 + 0.25 * (1 + math.sqrt(0.5)))


def test_cosine_reward_correct_short_is_best_wrong_short_is_worst():
    r = CosineLengthReward(FormatReward(), max_length=100)
    ok = "<think>x</think><answer>4</answer>"
    scores = {
        (c, n): r.score(ok if c else "bad", completion_ids=[0] * n)
        for c in (True, False)
        for n in (0, 50, 99, 100)
    }
    assert scores[(True, 0)] == pytest.approx(1.0)
    assert scores[(True, 50)] == pytest.approx(0.75)
    assert scores[(False, 0)] == pytest.approx(-1.0)
    assert scores[(False, 50)] == pytest.approx(-0.75)  # -0.5 + 0.5 * -0.5 * (1 + 0)
    assert scores[(True, 100)] == scores[(False, 100)] == -1.0  # r_exceed
    assert scores[(True, 0)] > scores[(True, 50)] > scores[(True, 99)]  # shorter correct: more
    assert scores[(False, 0)] < scores[(False, 50)] < scores[(False, 99)]  # longer wrong: less bad
    assert min(v for (c, n), v in scores.items() if c and n < 100) > max(
        v for (c, n), v in scores.items() if not c
    )  # correct always beats wrong


def test_cosine_reward_wraps_math_in_the_pool_and_keeps_unscorable():
    r = CosineLengthReward(max_length=10)  # MathReward by default
    assert isinstance(r.verifier, MathReward)
    out = r.score_batch(
        [r"\boxed{2}", r"\boxed{3}", r"\boxed{2}"],
        [
            {"answer": "2", "completion_ids": [0] * 5},
            {"answer": "2", "completion_ids": [0] * 5},
            {"completion_ids": [0] * 5},
        ],
    )
    assert out[0].value == pytest.approx(0.75) and out[1].value == pytest.approx(-0.75)
    assert out[2].status == UNSCORABLE and "no gold answer" in out[2].reason


# ------------------------------------------------------------------------------ repetition
@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("a b c a b c", 3, -0.25),  # trigrams abc bca cab abc: 3 distinct of 4
        ("a a a a", 1, -0.75),  # 1 distinct of 4
        ("a b c d", 2, 0.0),  # nothing repeats
        ("a b", 3, 0.0),  # shorter than n
        ("", 3, 0.0),
        ("The cat The CAT the cat", 2, -0.6),  # case-insensitive: "the cat" x3, "cat the" x2
    ],
)
def test_repetition_penalty_hand_computed(text, n, expected):
    assert RepetitionPenalty(ngram_size=n).score(text) == pytest.approx(expected)


def test_repetition_penalty_scale_and_validation():
    assert RepetitionPenalty(ngram_size=1, max_penalty=-2.0).score("a a") == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        RepetitionPenalty(max_penalty=0.5)
    with pytest.raises(ValueError):
        RepetitionPenalty(ngram_size=0)
