"""FormatReward (R1-Zero template) and LanguageReward (R1 language consistency)."""

from __future__ import annotations

import time

import pytest

from grpo.rewards import UNSCORABLE, FormatReward, LanguageReward
from grpo.rewards.language import chain_of_thought, count_words

STRICT = [
    ("<think>2+2=4</think><answer>4</answer>", 1.0),
    ("<think>\n2+2=4\n</think>\n<answer>\n4\n</answer>\n", 1.0),  # whitespace between blocks
    ("  <think></think> <answer>4</answer>", 1.0),  # an empty think block is allowed
    ("<think>2+2=4</think> so <answer>4</answer>", 0.0),  # text between the blocks
    ("Sure! <think>x</think><answer>4</answer>", 0.0),  # text before
    ("<think>x</think><answer>4</answer> Hope it helps", 0.0),  # text after
    ("<think>x</think><answer> </answer>", 0.0),  # empty answer
    ("<answer>4</answer><think>x</think>", 0.0),  # wrong order
    ("<think>x<think>y</think><answer>4</answer>", 0.0),  # nested / repeated tag
    ("<think>x</think><answer>4</answer><answer>5</answer>", 0.0),
    ("<think>x</think><answer>4", 0.0),  # truncated
    ("4", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize("text, expected", STRICT)
def test_strict_template(text, expected):
    assert FormatReward().score(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>x</think><answer>4</answer>", 1.0),
        ("<think>x</think> so 4", 0.5),  # two of the four tags, once each
        ("<think>x</think><think>y</think><answer>4</answer>", 0.5),  # repeated tags earn nothing
        ("<answer>4</answer>", 0.5),
        ("plain", 0.0),
    ],
)
def test_partial_credit_counts_well_formed_tags(text, expected):
    assert FormatReward(partial=True).score(text) == expected


def test_think_in_prompt():
    completion = "2+2=4</think><answer>4</answer>"  # the prompt ended with "<think>"
    assert FormatReward().score(completion) == 0.0
    assert FormatReward(think_in_prompt=True).score(completion) == 1.0


def test_tag_soup_is_linear_time():
    soup = "<think>" + "</think><answer></answer>x" * 50_000
    t = time.monotonic()
    assert FormatReward().score(soup) == 0.0
    assert FormatReward(partial=True).score(soup) == 0.25
    assert time.monotonic() - t < 0.5


# ------------------------------------------------------------------------------ language
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Let us add the numbers", {"latin": 5}),
        ("我们 把 数字 相加", {"han": 7}),  # one word per Han character (7 characters)
        ("设 x 为 the answer", {"latin": 2, "han": 2}),  # single ASCII letters are variables
        (r"\frac{a}{b} = 3 + 4", {}),  # LaTeX commands, math and digits are not words
        ("Привет мир hello", {"cyrillic": 2, "latin": 1}),
        ("これは テスト", {"kana": 6}),
        ("café naïve", {"latin": 2}),
    ],
)
def test_count_words(text, expected):
    assert count_words(text) == expected


def test_chain_of_thought_part():
    assert chain_of_thought("<think>abc</think><answer>d</answer>") == "abc"
    assert chain_of_thought("abc</think>d", think_in_prompt=True) == "abc"
    assert chain_of_thought("no tags") == "no tags"


def test_language_consistency_proportion():
    r = LanguageReward("en")
    # CoT words: We, add, and (Latin) + 得, 到 (Han) -> 3 / 5
    assert r.score("<think>We add 2 and 2, 得到 4</think><answer>4</answer>") == pytest.approx(0.6)
    assert r.score("<think>we add them</think><answer>四</answer>") == 1.0  # answer not counted
    assert LanguageReward("zh").score("<think>我们 add</think>") == pytest.approx(2 / 3)


def test_target_language_from_column_wins():
    r = LanguageReward("en")
    out = r(
        completions=["<think>hello world</think>", "<think>你好 世界</think>"],
        language=["zh", "zh-CN"],
    )
    assert out == [0.0, 1.0]


def test_language_unscorable_cases():
    res = LanguageReward().evaluate(completions=["<think>hello</think>"])
    assert res[0].status == UNSCORABLE and "no target language" in res[0].reason
    res = LanguageReward("en").evaluate(completions=["<think>1 + 2 = 3</think>"])
    assert res[0].status == UNSCORABLE and "no words" in res[0].reason
    res = LanguageReward("en").evaluate(completions=["<think>hello</think>"], language=["xx"])
    assert res[0].status == UNSCORABLE and "unknown target language" in res[0].reason
    with pytest.raises(ValueError, match="unknown target language"):
        LanguageReward("klingon")


def test_language_no_words_score_is_explicit():
    empty = ["<think></think><answer>7</answer>", "<think>3+4=7</think><answer>7</answer>"]
    assert LanguageReward("en", no_words=0.0)(completions=empty) == [0.0, 0.0]
    assert LanguageReward("en", no_words=1.0)(completions=empty) == [1.0, 1.0]
    # a CoT with words is scored as usual whatever no_words says
    assert LanguageReward("en", no_words=1.0)(completions=["<think>3 加 4 is 7</think>"]) == [0.5]
    with pytest.raises(ValueError, match="no_words"):
        LanguageReward("en", no_words=2.0)
