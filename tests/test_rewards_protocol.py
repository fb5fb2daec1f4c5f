"""The reward protocol: every caller scores through ``evaluate``; a reward implements it per
item (``score``) or per batch (``evaluate``), and either way gets the other side for free."""

from __future__ import annotations

import os
import time

import pytest

from grpo.rewards import (
    ERROR,
    NOT_APPLICABLE,
    OK,
    TIMEOUT,
    UNSCORABLE,
    CombinedReward,
    NotApplicable,
    Reward,
    ScoreResult,
    Unscorable,
    as_reward,
    completion_text,
)


class Divides(Reward):
    """Per item only: 1.0 if ``n`` divides the completion's length, else 0.0."""

    def score(self, completion, **example):
        n = example.get("n")
        if n is None:
            raise Unscorable("no n")
        if n < 0:
            raise NotApplicable("negative n")
        if n == 13:
            raise RuntimeError("unlucky")
        return float(len(completion) % n == 0)


class Pid(Reward):
    """Per item only, in the pool: the id of the process that scored the item."""

    parallel = True

    def score(self, completion, **example):
        if completion == "sleep":
            time.sleep(2)
        return float(os.getpid())


class Echo(Reward):
    """Per batch only: records each call; an item is worth ``value`` + its length (``value``
    None: n/a, "x": unscorable, "e": error)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def evaluate(self, *, prompts=None, completions, **columns):
        self.calls.append({"prompts": prompts, "completions": completions, **columns})
        out = []
        for c, v in zip(completions, columns["value"], strict=True):
            if v is None:
                out.append(ScoreResult.not_applicable("no value"))
            elif v == "x":
                out.append(ScoreResult.unscorable("cannot tell"))
            elif v == "e":
                out.append(ScoreResult.unscorable("it broke", ERROR))
            else:
                out.append(ScoreResult(float(v) + len(completion_text(c))))
        return out


# ------------------------------------------------------------------------------ per item
def test_a_reward_with_only_score_works_through_evaluate_and_call():
    comps, n = ["ab", "abc", "x", "abcd", "y", "z"], [2, 2, None, -1, 13, 1]
    res = Divides().evaluate(prompts=["p"] * 6, completions=comps, n=n)
    assert [r.value for r in res] == [1.0, 0.0, None, None, None, 1.0]
    assert [r.status for r in res] == [OK, OK, UNSCORABLE, NOT_APPLICABLE, ERROR, OK]
    assert res[2].reason == "no n" and res[3].reason == "negative n"
    assert res[4].reason == "RuntimeError: unlucky"
    # applies_to: rows without n are n/a without being scored; the rest keep their places
    picky = Divides(applies_to="n")
    assert picky(completions=comps, n=n) == [1.0, 0.0, None, None, None, 1.0]
    assert [r.status for r in picky.last_results] == [OK, OK, NOT_APPLICABLE, NOT_APPLICABLE,
                                                      ERROR, OK]
    assert picky.last_results[2].reason == "no 'n' in this row (applies_to='n')"


def test_a_reward_with_only_score_keeps_the_pool_and_the_watchdog():
    remote = Pid().evaluate(completions=["a", "b"])
    assert all(r.status == OK and r.value != os.getpid() for r in remote)  # scored in a worker
    local = Pid(parallel=False, time_limit=0.5, name="pid_local")
    assert local(completions=["a", "sleep", "b"]) == [os.getpid(), None, os.getpid()]
    assert [r.status for r in local.last_results] == [OK, TIMEOUT, OK]  # the watchdog's limit


# ------------------------------------------------------------------------------ per batch
def test_a_reward_with_only_evaluate_works_through_score_and_call():
    r = Echo()
    assert r(completions=["a", "bb", "c", "d"], value=[1, 2, None, "x"]) == [2.0, 4.0, None, None]
    state = object()
    assert r.score("abc", value=1.0, prompt="q", trainer_state=state) == 4.0
    # a batch of one: prompt -> prompts, a field -> a one-value column, batch keywords as they are
    assert r.calls[-1] == {"prompts": ["q"], "completions": ["abc"], "value": [1.0],
                           "trainer_state": state}
    assert r.score([{"role": "assistant", "content": "ab"}], value=0) == 2.0  # chat, as given
    assert r.calls[-1]["prompts"] is None
    assert r.score_with_reason("a", value=None) == ScoreResult(None, NOT_APPLICABLE, "no value")
    assert r.score_with_reason("a", value="e") == ScoreResult(None, ERROR, "it broke")
    with pytest.raises(NotApplicable, match="no value"):
        r.score("a", value=None)
    with pytest.raises(Unscorable, match="cannot tell"):
        r.score("a", value="x")
    with pytest.raises(Unscorable, match="it broke"):
        r.score("a", value="e")


def test_a_reward_with_only_score_batch_gets_applies_to_and_score():
    class BatchSize(Reward):
        def score_batch(self, completions, examples=None):
            return [ScoreResult(float(len(completions)))] * len(completions)

    r = BatchSize(applies_to="keep")
    assert r(completions=list("abc"), keep=[1, None, 1]) == [2.0, None, 2.0]
    assert r.score("a", keep=1) == 1.0
    with pytest.raises(NotApplicable, match="applies_to='keep'"):
        r.score("a")


def test_a_reward_must_implement_score_or_evaluate():
    class Nothing(Reward):
        pass

    with pytest.raises(NotImplementedError, match="must implement score"):
        Nothing().score("a")
    (res,) = Nothing().evaluate(completions=["a"])  # in a batch: an error, never a score
    assert res.status == ERROR and "NotImplementedError" in res.reason

    class OnTopOfTheDefault(Reward):  # evaluate over Reward.evaluate, but nothing per item
        def evaluate(self, **inputs):
            return super().evaluate(**inputs)

    with pytest.raises(NotImplementedError, match="implement score"):  # not a loop
        OnTopOfTheDefault().evaluate(completions=["a"])
    with pytest.raises(NotImplementedError, match="implement score"):
        OnTopOfTheDefault().score("a")


# ------------------------------------------------------------------------------ combination
def shout(completions, **kwargs):
    """trl-style: 1.0 for an upper-case completion, None (does not apply) for "?"."""
    return [None if c == "?" else float(c.isupper()) for c in completions]


def tenth_of_length(completions, log_extra=None, **kwargs):
    """trl-style, and logs a column the way trl functions do."""
    if log_extra is not None:
        log_extra("length", [len(c) for c in completions])
    return [len(c) / 10 for c in completions]


def test_combined_reward_over_a_function_a_reward_and_a_combined_reward():
    inner = CombinedReward([tenth_of_length, Divides(name="divides_inner")], weights=[0.5, 2.0],
                           name="inner")
    outer = CombinedReward([shout, Divides(), inner],
                           weights={"shout": 10.0, "divides": 1.0, "inner": 100.0})
    comps, n = ["AB", "abc", "?", "ABCD"], [2, 3, 2, 13]
    out = outer.breakdown(completions=comps, n=n)
    # inner: 0.5 * len/10 + 2 * divides  ->  0.1 + 2 = 2.1,  0.15 + 2 = 2.15,  0.05 + 0,  error
    inner_values = inner.last_breakdown.values
    assert inner_values[:3] == pytest.approx([2.1, 2.15, 0.05]) and inner_values[3] is None
    assert out.component_values("inner") == inner.last_breakdown.values
    # outer: 10 * shout + 1 * divides + 100 * inner
    #   "AB":   10 + 1 + 210 = 221;   "abc": 0 + 1 + 215 = 216
    #   "?":    shout n/a (left out), 0 + 5 = 5;   "ABCD": divides error -> unscorable
    assert out.values[:3] == pytest.approx([221.0, 216.0, 5.0]) and out.values[3] is None
    assert [r.status for r in out.components["shout"]] == [OK, OK, NOT_APPLICABLE, OK]
    assert [r.status for r in out.components["inner"]] == [OK, OK, OK, UNSCORABLE]
    assert out.total[3].reason.startswith("divides error: RuntimeError: unlucky")
    assert out.extra == {"length": [2, 3, 1, 4]}  # logged two levels down, kept at the top
    # the protocol and trl's call give the same totals
    assert [r.value for r in outer.evaluate(completions=comps, n=n)] == out.values
    assert outer(completions=comps, n=n) == out.values
    with pytest.warns(FutureWarning, match="use CombinedReward.breakdown"):
        assert outer.evaluate_all(completions=comps, n=n) == out  # the former name
    # one item through the base class's per-item path
    assert outer.score("AB", n=2) == pytest.approx(221.0)
    assert outer.score_with_reason("?", n=2).value == pytest.approx(5.0)
    res = outer.score_with_reason("ABCD", n=13)
    assert res.status == UNSCORABLE and "divides error" in res.reason
    with pytest.raises(Unscorable, match="divides error"):
        outer.score("ABCD", n=13)


def test_a_function_reward_on_one_item_is_its_batch_of_one():
    calls = []

    def spy(completions, **kwargs):
        calls.append(kwargs | {"completions": completions})
        return [None if kwargs["answer"][0] is None else 1.0]

    r = as_reward(spy)
    assert r.score("x", answer="4", prompt="p") == 1.0
    assert calls[-1] == {"prompts": ["p"], "completions": ["x"], "answer": ["4"]}
    assert r.score_with_reason("x", answer=None).status == NOT_APPLICABLE
    with pytest.raises(NotApplicable, match="returned None"):
        r.score("x", answer=None)


def test_docs_rewards_md_examples_run():
    """The ``>>>`` examples of docs/rewards.md (the protocol, both ways) stay true."""
    import doctest
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "rewards.md"
    result = doctest.testfile(str(page), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
