"""Time limits for rewards scored in-process (plain functions, ``parallel=False`` rewards).

Real sleeps and real busy loops, on real threads: each test must finish in about its time
limits. The loops watch an event only so that the test can end them at teardown (an
abandoned thread cannot be killed; a spinning one would slow every later test in this process).
"""

from __future__ import annotations

import threading
import time

import pytest

from grpo.rewards import OK, TIMEOUT, UNSCORABLE, CombinedReward, FormatReward, Reward, as_reward
from grpo.rewards.deadline import MAX_ABANDONED, live_abandoned

RELEASE = threading.Event()


@pytest.fixture(autouse=True, scope="module")
def release_abandoned_threads():
    yield
    RELEASE.set()


class Loops(Reward):
    """Loops forever (in Python) on "loop", scores the length of anything else."""

    def score(self, completion, **example):
        if completion == "loop":
            while not RELEASE.is_set():
                pass
        return float(len(completion))


def sleepy(completions, **kwargs):
    time.sleep(30)  # a real sleep, far past the limit
    return [1.0] * len(completions)


def test_a_sleeping_function_times_out_on_every_item_and_the_call_returns():
    r = as_reward(sleepy, time_limit=0.3)
    t = time.monotonic()
    res = r.evaluate(completions=["a", "b", "c"])
    took = time.monotonic() - t
    assert [x.status for x in res] == [TIMEOUT] * 3
    assert "'sleepy' did not return within 0.3 s" in res[0].reason and "abandoned" in res[0].reason
    assert took < 0.3 + 1.0


def test_a_looping_item_times_out_alone_and_the_rest_is_scored_in_order():
    r = Loops(time_limit=0.3)
    t = time.monotonic()
    res = r.evaluate(completions=["a", "loop", "bb", "ccc"])
    took = time.monotonic() - t
    assert [x.status for x in res] == [OK, TIMEOUT, OK, OK]
    assert [x.value for x in res] == [1.0, None, 2.0, 3.0]
    assert took < 0.3 + 1.0
    assert live_abandoned("loops") >= 1  # the loop goes on: a thread cannot be killed
    RELEASE.set()  # (end it, so that it does not slow the other tests)


def test_many_fast_items_are_not_limited_by_the_batch_time():
    # 200 items of 5 ms = 1 s in all, each well within its 0.2 s limit
    class Slowish(Reward):
        def score(self, completion, **example):
            time.sleep(0.005)
            return 1.0

    res = Slowish(time_limit=0.2).evaluate(completions=["x"] * 200)
    assert all(r.status == OK for r in res)


def test_combined_reward_does_not_wait_for_a_hung_component():
    combo = CombinedReward([FormatReward(), as_reward(sleepy, name="judge", time_limit=0.3)])
    t = time.monotonic()
    out = combo.breakdown(completions=["<think>a</think><answer>1</answer>"] * 2)
    assert time.monotonic() - t < 0.3 + 1.0
    assert out.component_values("format_reward") == [1.0, 1.0]
    assert [r.status for r in out.components["judge"]] == [TIMEOUT, TIMEOUT]
    assert [r.status for r in out.total] == [UNSCORABLE, UNSCORABLE]  # an applicable part failed


def test_abandoned_threads_are_bounded_per_reward():
    gate = threading.Event()

    def stuck(completions, **kwargs):
        gate.wait(30)
        return [0.0] * len(completions)

    r = as_reward(stuck, time_limit=0.1)
    for _ in range(MAX_ABANDONED):
        assert r.evaluate(completions=["a"])[0].status == TIMEOUT
    assert live_abandoned("stuck") == MAX_ABANDONED
    t = time.monotonic()
    (res,) = r.evaluate(completions=["a"])  # not even started: answered at once
    assert time.monotonic() - t < 0.05
    assert res.status == TIMEOUT
    assert res.reason.startswith(f"not run: {MAX_ABANDONED} earlier calls")
    gate.set()  # the stuck calls return; their late results are dropped
    deadline = time.monotonic() + 5
    while live_abandoned("stuck") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live_abandoned("stuck") == 0
    assert r.evaluate(completions=["a"])[0].value == 0.0  # runs again
