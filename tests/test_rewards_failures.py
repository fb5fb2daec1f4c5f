"""Loud reward failures: what a broken reward becomes, the monitor that stops a run learning
nothing, metrics per status, per-item records, and the checks made at construction."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest
import torch

from grpo.rewards import (
    ERROR,
    NOT_APPLICABLE,
    OK,
    UNSCORABLE,
    CombinedReward,
    FormatReward,
    MathReward,
    Reward,
    RewardFailure,
    RewardMonitor,
    as_reward,
)

GOOD = "<think>a</think><answer>4</answer>"


# ------------------------------------------------------------------------------ plain functions
def raises(completions, **kwargs):
    return [1.0 / 0 for _ in completions]


def returns_text(completions, **kwargs):
    return "1.0"


def forgets_to_return(completions, **kwargs):
    [1.0 for _ in completions]  # noqa: B018 -- the bug under test


def returns_a_dict(completions, **kwargs):
    return {"score": 1.0}


def one_short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)


@pytest.mark.parametrize("fn, says", [
    (raises, "reward function 'raises' raised ZeroDivisionError: float division by zero"),
    (returns_text, "reward function 'returns_text' returned '1.0' (str) instead of a list"),
    (forgets_to_return,
     "reward function 'forgets_to_return' returned None (NoneType) instead of a list"),
    (returns_a_dict,
     "reward function 'returns_a_dict' returned {'score': 1.0} (dict) instead of a list"),
    (one_short, "reward function 'one_short' returned 2 values for 3 completions"),
])
def test_a_whole_batch_failure_is_an_error_on_every_item_naming_the_function(fn, says):
    combo = CombinedReward([FormatReward(), fn])
    out = combo.breakdown(completions=[GOOD] * 3)  # does not raise
    res = out.components[fn.__name__]
    assert [r.status for r in res] == [ERROR] * 3
    assert res[0].reason.startswith(says)
    if fn is not raises:  # the fix is in the reason
        assert "must return a list with one float (None where it does not apply)" in res[0].reason
    assert out.values == [None] * 3  # an applicable component failed: nothing to train on
    assert out.component_values("format_reward") == [1.0] * 3


def test_per_item_values_numpy_torch_and_non_finite():
    as_np = as_reward(lambda completions, **kw: np.array([1, 0.5]), name="np")
    as_torch = as_reward(lambda completions, **kw: torch.tensor([1.0, -math.inf]), name="pt")
    assert as_np(completions=["a", "b"]) == [1.0, 0.5]
    gen = as_reward(lambda completions, **kw: (len(c) for c in completions), name="gen")
    assert gen(completions=["a", "bb"]) == [1.0, 2.0]
    res = as_torch.evaluate(completions=["a", "b"])
    assert res[0].value == 1.0 and res[1].status == ERROR and "returned -inf" in res[1].reason


def test_an_async_function_is_awaited():
    async def judge(completions, **kwargs):
        await asyncio.sleep(0.01)
        return [float(len(c)) for c in completions]

    assert as_reward(judge)(completions=["a", "bb"]) == [1.0, 2.0]


def test_a_reward_whose_batch_scoring_raises_is_an_error_not_a_crash():
    class BrokenBatch(Reward):
        def score(self, completion, **example):
            return 1.0

        def score_batch(self, completions, examples=None):
            raise RuntimeError("backend down")

    out = CombinedReward([BrokenBatch(), FormatReward()]).breakdown(completions=[GOOD, GOOD])
    assert [r.reason for r in out.components["broken_batch"]] == [
        "reward 'broken_batch' raised RuntimeError: backend down"] * 2


# ------------------------------------------------------------------------------ monitor
def test_monitor_stops_a_run_whose_dataset_lacks_the_gold_answer_column():
    combo = CombinedReward([MathReward(parallel=False), FormatReward()])
    monitor = RewardMonitor(patience=3)
    rows = dict(completions=[GOOD] * 4, solution=["4"] * 4)  # "solution", not "answer"
    monitor.update(combo.breakdown(**rows))
    monitor.update(combo.breakdown(**rows))
    with pytest.raises(RewardFailure) as info:
        monitor.update(combo.breakdown(**rows))
    failure = info.value
    assert failure.component == "math_reward"
    assert failure.reason == "no gold answer in field 'answer'"
    assert "reward 'math_reward' scored no completion for 3 consecutive steps" in str(failure)
    assert "unscorable 4/4" in str(failure)


def test_monitor_counts_only_steps_where_nothing_that_applies_scored():
    def sometimes(completions, kind, **kwargs):
        return [{"ok": 1.0, "none": None}.get(k, "broken") for k in kind]

    combo = CombinedReward([sometimes, FormatReward()])
    monitor = RewardMonitor(patience=2)

    def step(*kinds):
        out = combo.breakdown(completions=[GOOD] * len(kinds), kind=list(kinds))
        return monitor.observe(out)

    assert step("bad", "none") is None  # 1 failing step
    assert step("none", "none") is None  # applied to nothing: neither counts nor resets
    assert step("ok", "bad") is None  # one scored item resets the count
    assert step("bad", "bad") is None
    failure = step("bad", "none")
    assert failure is not None and failure.component == "sometimes"
    assert "error 1/2, n/a 1/2" in str(failure) and "returned 'broken' (str)" in failure.reason


def test_monitor_decides_from_metrics_averaged_over_processes():
    """Each process passes its local breakdown and the metrics averaged over all processes: the
    decision (from the metrics) is the same everywhere; the reason is local."""
    math_reward = MathReward(parallel=False)
    combo = CombinedReward([math_reward])
    here = combo.breakdown(completions=[GOOD] * 2)  # no gold here: unscorable
    there = combo.breakdown(completions=[GOOD] * 2, answer=["4", "5"])  # scored elsewhere
    mean = {k: (here.metrics("reward")[k] + there.metrics("reward")[k]) / 2
            for k in here.metrics("reward") if "/frac/" in k}
    monitor = RewardMonitor(patience=1)
    assert monitor.observe(here, mean) is None  # another process scored: not a failure
    assert RewardMonitor(patience=1).observe(here) is not None  # local view alone would stop


def test_monitor_names_the_total_when_no_reward_applies():
    only_math = as_reward(lambda completions, **kw: [None] * len(completions), name="math_only")
    monitor = RewardMonitor(patience=1)
    with pytest.raises(RewardFailure, match="no completion could be scored by the combined reward"):
        monitor.update(CombinedReward([only_math]).breakdown(completions=["x"]))


# ------------------------------------------------------------------------------ metrics, records
def test_metrics_per_status_hand_computed_and_item_record():
    def mixed(completions, **kwargs):
        return [1.0, None, "x", 0.0]

    out = CombinedReward([mixed]).breakdown(completions=list("abcd"))
    m = out.metrics("reward")
    # items: ok, n/a, error, ok
    assert m["reward/mixed/frac/ok"] == 0.5
    assert m["reward/mixed/frac/na"] == 0.25
    assert m["reward/mixed/frac/error"] == 0.25
    assert m["reward/mixed/frac/unscorable"] == m["reward/mixed/frac/timeout"] == 0.0
    assert m["reward/mixed/frac/crashed"] == 0.0
    assert m["reward/mixed/unscorable_frac"] == 0.25  # could not be scored: n/a not counted
    assert m["reward/mixed/mean"] == 0.5
    # total: ok, unscorable (nothing applies), unscorable (error), ok
    assert m["reward/total/frac/ok"] == 0.5 and m["reward/total/frac/unscorable"] == 0.5
    rec = out.item_record(2)
    assert rec["reward"] is None and rec["reward_status"] == UNSCORABLE
    mixed = rec["rewards"]["mixed"]
    assert mixed["status"] == ERROR and "returned 'x'" in mixed["reason"]
    assert out.item_record(0) == {"reward": 1.0, "reward_status": OK,
                                  "rewards": {"mixed": {"value": 1.0, "status": OK}}}
    assert out.item_record(1)["rewards"]["mixed"]["status"] == NOT_APPLICABLE
    json.dumps([out.item_record(i) for i in range(4)])


def test_log_metric_and_log_extra_are_kept_and_forwarded():
    def chatty(completions, log_extra, log_metric, **kwargs):
        log_extra("parsed", [c.upper() for c in completions])
        log_metric("chatty/calls", 1.0)
        return [0.0] * len(completions)

    seen = []
    out = CombinedReward([chatty]).breakdown(
        completions=["a", "b"], log_extra=lambda c, v: seen.append((c, v)),
        log_metric=lambda k, v: seen.append((k, v)))
    assert out.extra == {"parsed": ["A", "B"]} and out.item_record(1)["extra"] == {"parsed": "B"}
    assert out.metrics("reward")["reward/logged/chatty/calls"] == 1.0
    assert seen == [("parsed", ["A", "B"]), ("chatty/calls", 1.0)]


# ------------------------------------------------------------------------------ construction
@pytest.mark.parametrize("name", ["total", "logged", "a/b", ""])
def test_a_reward_name_that_would_clash_with_the_breakdown_is_refused(name):
    with pytest.raises(ValueError, match="clash with the breakdown's own metric keys"):
        CombinedReward([FormatReward(), as_reward(lambda completions, **kw: [0.0], name=name)])


def test_a_reward_class_instead_of_an_instance_says_how_to_fix_it():
    with pytest.raises(TypeError, match=r"pass MathReward\(\) \(an instance\)"):
        as_reward(MathReward)
    with pytest.raises(TypeError, match=r"reward 1 of 2: got the class MathReward.*MathReward\(\)"):
        CombinedReward([FormatReward(), MathReward])
    with pytest.raises(TypeError, match="a reward must be a grpo Reward instance or a function"):
        as_reward(3)
    with pytest.raises(TypeError, match=r"add \*\*kwargs to its signature"):
        as_reward(lambda completions: [0.0])


def test_applies_to_marks_rows_not_applicable_without_scoring_them():
    """A multi-task batch: the math reward is for the rows with an answer, scored in the pool."""
    math_reward = MathReward(applies_to="answer")
    combo = CombinedReward([math_reward, FormatReward()])
    out = combo.breakdown(completions=[GOOD, GOOD, GOOD], answer=["4", None, "5"])
    assert [r.status for r in out.components["math_reward"]] == [OK, NOT_APPLICABLE, OK]
    assert out.values == [2.0, 1.0, 1.0]
    picky = as_reward(lambda completions, **kw: [float(len(c)) for c in completions], name="picky")
    picky.applies_to = lambda ex: ex["task"] == "code"
    res = picky.evaluate(completions=["a", "bb", "ccc"], task=["code", "math", "code"])
    assert [r.value for r in res] == [1.0, None, 3.0]  # called with the two code rows only
