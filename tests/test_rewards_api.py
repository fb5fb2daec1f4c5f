"""The Reward API: results, trl's calling convention, as_reward, weighted combination."""

from __future__ import annotations

import logging
import math
import pickle

import pytest

from grpo.rewards import (
    ERROR,
    NOT_APPLICABLE,
    OK,
    UNSCORABLE,
    CombinedReward,
    FormatReward,
    MathReward,
    NotApplicable,
    Reward,
    ScoreResult,
    Unscorable,
    as_reward,
    completion_text,
)


class LengthBonus(Reward):
    def score(self, completion, **example):
        if "limit" not in example:
            raise Unscorable("no limit")
        return 1.0 if len(completion) <= example["limit"] else 0.0


class Fragile(Reward):
    def score(self, completion, **example):
        if completion == "boom":
            raise ZeroDivisionError("division by zero")
        if completion == "none":
            return None
        if completion == "nan":
            return math.nan
        if completion == "inf":
            return math.inf
        if completion == "text":
            return "0.5"
        if completion == "na":
            raise NotApplicable("not my task")
        return 0.5


def open_r1_style(completions, answer, **kwargs):
    """A reward written for trl / open-r1: chat completions, batch in, list out."""
    return [1.0 if c[0]["content"].strip() == a else 0.0 for c, a in zip(completions, answer)]


# ------------------------------------------------------------------------------ names
def test_default_name_is_snake_case_class_name():
    assert LengthBonus().name == "length_bonus"
    assert MathReward().name == "math_reward" and FormatReward().name == "format_reward"
    assert LengthBonus(name="short").name == "short"
    assert LengthBonus.name == "length_bonus"  # the class default is untouched by an instance


def test_dunder_name_is_the_metric_key_but_class_name_stays():
    # trl names reward functions by __name__ (trl.trainer.utils.get_callable_name)
    assert LengthBonus(name="short").__name__ == "short"
    assert LengthBonus.__name__ == "LengthBonus"


# ------------------------------------------------------------------------------ results
def test_score_result_value_and_status_must_agree():
    assert ScoreResult(1.0).scored
    with pytest.raises(ValueError):
        ScoreResult(None)  # status "ok" needs a value
    with pytest.raises(ValueError):
        ScoreResult(1.0, UNSCORABLE)
    with pytest.raises(ValueError):
        ScoreResult(None, "maybe")


def test_score_with_reason_distinguishes_every_case():
    r = Fragile()
    assert r.score_with_reason("x") == ScoreResult(0.5)
    assert r.score_with_reason(None).status == UNSCORABLE
    none = r.score_with_reason("none")
    assert none.status == UNSCORABLE and "NotApplicable" in none.reason  # says how to be explicit
    for bad in ("nan", "inf", "text"):  # not a finite number: a bug, never a score
        res = r.score_with_reason(bad)
        assert res.status == ERROR and "Fragile.score returned" in res.reason, bad
    assert r.score_with_reason("na") == ScoreResult(None, NOT_APPLICABLE, "not my task")
    with pytest.raises(ZeroDivisionError):  # a bug propagates from the single-item API
        r.score_with_reason("boom")
    u = LengthBonus().score_with_reason("abc")
    assert u.status == UNSCORABLE and u.reason == "no limit"


def test_an_exception_in_a_batch_is_an_error_not_a_zero(caplog):
    with caplog.at_level(logging.WARNING):
        out = Fragile()(completions=["a", "boom", "b"])
    assert out == [0.5, None, 0.5]
    res = Fragile()
    res(completions=["boom"])
    (only,) = res.last_results
    assert only.status == ERROR and "ZeroDivisionError" in only.reason
    assert "1/3 items failed" in caplog.text


# ------------------------------------------------------------------------------ trl convention
def test_called_like_trl_with_string_completions_and_columns():
    r = LengthBonus()
    state = object()  # trl passes batch-level objects too: they are not per-item columns
    out = r(
        prompts=["p1", "p2", "p3"],
        completions=["ab", "abcdef", "abc"],
        limit=[2, 2, 9],
        completion_ids=[[1, 2], [1] * 6, [1] * 3],
        trainer_state=state,
        log_extra=lambda *a: None,
    )
    assert out == [1.0, 0.0, 1.0]
    assert [x.status for x in r.last_results] == [OK, OK, OK]


def test_called_like_trl_with_chat_completions():
    chat = [[{"role": "assistant", "content": "ab"}], [{"role": "assistant", "content": "abcd"}]]
    assert LengthBonus()(
        prompts=[[{"role": "user", "content": "q"}]] * 2, completions=chat, limit=[3, 3]
    ) == [1.0, 0.0]


def test_completion_text_forms():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a"}]) == "a"
    assert completion_text({"role": "assistant", "content": "a"}) == "a"
    assert (
        completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]) == "a"
    )
    assert (
        completion_text([{"role": "tool", "content": "t"}, {"role": "assistant", "content": "b"}])
        == "b"
    )
    assert completion_text(None) is None
    with pytest.raises(TypeError):
        completion_text(42)


def test_prompt_reaches_score_as_a_field():
    class EchoesPrompt(Reward):
        def score(self, completion, **example):
            return float(example["prompt"] == completion)

    assert EchoesPrompt()(prompts=["a", "b"], completions=["a", "c"]) == [1.0, 0.0]


def test_log_metric_receives_unscorable_fraction():
    logged = []
    LengthBonus()(
        completions=["a", "b"], limit=[1, 1], log_metric=lambda k, v: logged.append((k, v))
    )
    LengthBonus()(completions=["a", "b"], log_metric=lambda k, v: logged.append((k, v)))
    assert logged == [("length_bonus/unscorable_frac", 0.0), ("length_bonus/unscorable_frac", 1.0)]


def test_reward_pickles_after_a_call():
    r = LengthBonus(name="x")
    r(completions=["a"], limit=[1])
    clone = pickle.loads(pickle.dumps(r))
    assert clone.name == "x" and clone.last_results is None


# ------------------------------------------------------------------------------ as_reward
def test_as_reward_wraps_an_open_r1_style_function():
    r = as_reward(open_r1_style)
    assert r.name == "open_r1_style"
    chat = [[{"role": "assistant", "content": " 4"}], [{"role": "assistant", "content": "5"}]]
    assert r(prompts=["q", "q"], completions=chat, answer=["4", "4"]) == [1.0, 0.0]
    assert as_reward(r) is r


def test_as_reward_maps_none_to_not_applicable_and_bad_values_to_errors():
    r = as_reward(lambda completions, **kw: [None, math.nan, 2, "3", math.inf][: len(completions)],
                  name="odd")
    res = r.evaluate(completions=list("abcde"))
    assert [x.status for x in res] == [NOT_APPLICABLE, ERROR, OK, ERROR, ERROR]
    assert res[2].value == 2.0
    assert "reward function 'odd' (item 1) returned nan" in res[1].reason
    assert "returned '3' (str)" in res[3].reason


def test_as_reward_single_item_score():
    assert (
        as_reward(
            lambda completions, limit, **kw: [float(len(c) < n) for c, n in zip(completions, limit)]
        ).score("ab", limit=3)
        == 1.0
    )


# ------------------------------------------------------------------------------ combination
def test_combined_reward_hand_computed():
    combo = CombinedReward(
        [LengthBonus(), Fragile(), as_reward(open_r1_style)],
        weights={"length_bonus": 2.0, "fragile": -1.0},
    )
    chat = [[{"role": "assistant", "content": c}] for c in ("4", "na", "44444")]
    out = combo.breakdown(completions=chat, limit=[1, 9, 1], answer=["4", "4", "4"])
    # row 0: 2*1 + -1*0.5 + 1*1 = 2.5;  row 1: 2*1 + (n/a) + 1*0 = 2.0;  row 2: 0 - 0.5 + 0
    assert out.values == [2.5, 2.0, -0.5]
    assert out.component_values("fragile") == [0.5, None, 0.5]
    assert out.weights == {"length_bonus": 2.0, "fragile": -1.0, "open_r1_style": 1.0}
    assert out.total[1].reason is None  # n/a is not a failure: nothing was skipped
    m = out.metrics()
    assert m["rewards/length_bonus/mean"] == pytest.approx(2 / 3)
    assert m["rewards/fragile/unscorable_frac"] == 0.0
    assert m["rewards/fragile/frac/na"] == pytest.approx(1 / 3)
    assert m["rewards/fragile/frac/ok"] == pytest.approx(2 / 3)
    assert m["rewards/total/mean"] == pytest.approx((2.5 + 2.0 - 0.5) / 3)
    # population std of (2.5, 2.0, -0.5): mean 4/3, var ((7/6)^2 + (2/3)^2 + (11/6)^2) / 3
    assert m["rewards/total/std"] == pytest.approx(math.sqrt((49 / 36 + 16 / 36 + 121 / 36) / 3))


def test_combination_rule_not_applicable_skipped_failures_propagate():
    combo = CombinedReward([LengthBonus(), Fragile()], weights=[1.0, 10.0])
    lenient = CombinedReward([LengthBonus(), Fragile()], weights=[1.0, 10.0], missing="skip")
    out = combo.breakdown(completions=["na", "none", "boom", "ab"], limit=[9, 9, 9, 1])
    # n/a: left out (1.0); unscorable / error of a component that applies: the total is too
    assert out.values == [1.0, None, None, 0.0 + 10 * 0.5]
    assert [r.status for r in out.total] == [OK, UNSCORABLE, UNSCORABLE, OK]
    assert "fragile unscorable" in out.total[1].reason
    assert "fragile error: ZeroDivisionError" in out.total[2].reason
    assert lenient(completions=["none"], limit=[9]) == [1.0]
    assert "skipped fragile" in lenient.last_breakdown.total[0].reason
    # no component applies: unscorable, both ways
    nothing = CombinedReward([Fragile(), Fragile(name="other")])
    (res,) = nothing.breakdown(completions=["na"]).total
    assert res.status == UNSCORABLE and res.reason.startswith("no reward applies")
    # every component failed, lenient: unscorable too
    assert lenient(completions=["none"]) == [None]


def test_combined_reward_validates_names_and_weights():
    with pytest.raises(ValueError, match="unique"):
        CombinedReward([LengthBonus(), LengthBonus()])
    with pytest.raises(ValueError, match="unknown"):
        CombinedReward([LengthBonus()], weights={"nope": 1.0})
    with pytest.raises(ValueError, match="2 weights for 1"):
        CombinedReward([LengthBonus()], weights=[1, 2])


@pytest.mark.parametrize(
    "module",
    ["rewards.base", "rewards.code", "rewards.combine", "rewards.format", "rewards.function",
     "rewards.language", "rewards.length", "rewards.math", "rewards.monitor", "sandbox"],
)
def test_docstring_examples(module):
    """The doctest-size examples in the verifiers' docstrings are run, so they stay true."""
    import doctest
    import importlib

    mod = importlib.import_module(f"grpo.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
