"""The scoring pool: order, isolation of bad items, per-item time limits, reuse, recovery."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from grpo.rewards import (
    CRASHED,
    ERROR,
    NOT_APPLICABLE,
    OK,
    TIMEOUT,
    NotApplicable,
    Reward,
    ScoringPool,
)


class Probe(Reward):
    """Scores ``len(completion)``, or misbehaves on command (runs in pool workers)."""

    parallel = True

    def score(self, completion, **example):
        if completion == "raise":
            raise KeyError("boom")
        if completion == "hang":
            while True:  # a pure-Python hang
                pass
        if completion == "sleep":
            time.sleep(60)  # blocked in C: no Python-level timeout can fire
        if completion == "exit":
            os._exit(3)
        if completion == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if completion == "oom":
            return float(len(bytearray(16 * 2**30)))  # beyond the worker's RLIMIT_AS
        if completion == "na":
            raise NotApplicable("not for this row")
        if completion == "ids":
            return float(len(example["completion_ids"])) + 100 * example["truncated"]
        if completion == "pid":
            return float(os.getpid())
        return float(len(completion)) + example.get("offset", 0)


@pytest.fixture(scope="module")
def pool():
    p = ScoringPool(workers=2, preload=())
    yield p
    p.close()


def test_order_is_preserved_across_workers(pool):
    items = ["x" * (i % 7) for i in range(200)]
    res = pool.map(Probe(), items, [{"offset": i} for i in range(200)], time_limit=10)
    assert [r.value for r in res] == [len(s) + i for i, s in enumerate(items)]


def test_pool_is_persistent_and_runs_in_other_processes(pool):
    pool.start()
    started = pool.stats["started"]
    first = {r.value for r in pool.map(Probe(), ["pid"] * 8, [{}] * 8, time_limit=10)}
    second = {r.value for r in pool.map(Probe(), ["pid"] * 8, [{}] * 8, time_limit=10)}
    assert first == second == {float(p) for p in pool.pids}
    assert pool.stats["started"] == started  # no new worker for the second call
    assert os.getpid() not in first


def test_raising_item_is_an_error_and_the_rest_is_scored(pool):
    res = pool.map(Probe(), ["a", "raise", "abc"], [{}] * 3, time_limit=10)
    assert [r.status for r in res] == [OK, ERROR, OK]
    assert res[1].reason == "KeyError: 'boom'" and res[2].value == 3.0


def test_not_applicable_and_per_item_trainer_fields_cross_the_process_boundary(pool):
    examples = [{"completion_ids": [1, 2, 3], "truncated": True}, {}]
    res = pool.map(Probe(), ["ids", "na"], examples, time_limit=10)
    assert res[0].value == 103.0
    assert res[1].status == NOT_APPLICABLE and res[1].reason == "not for this row"


@pytest.mark.parametrize("kind", ["hang", "sleep"])
def test_hanging_item_times_out_and_its_worker_is_replaced(pool, kind):
    killed = pool.stats["killed"]
    t = time.monotonic()
    res = pool.map(Probe(), ["a", kind, "bb", "ccc", kind, "dddd"], [{}] * 6, time_limit=1.0)
    took = time.monotonic() - t
    assert [r.status for r in res] == [OK, TIMEOUT, OK, OK, TIMEOUT, OK]
    assert [r.value for r in res if r.scored] == [1.0, 2.0, 3.0, 4.0]
    assert took < 2 * 1.0 + 3  # two limits at most, plus replacement start-up
    assert pool.stats["killed"] == killed + 2
    assert pool.map(Probe(), ["abc"], [{}], time_limit=5)[0].value == 3.0  # still usable


@pytest.mark.parametrize("kind", ["exit", "segfault"])
def test_dying_worker_crashes_only_its_item(pool, kind):
    res = pool.map(Probe(), ["a", kind, "bb"], [{}] * 3, time_limit=10)
    assert [r.status for r in res] == [OK, CRASHED, OK]
    assert ("exit code 3" if kind == "exit" else "signal 11") in res[1].reason


def test_memory_bomb_in_a_reward_is_an_error(pool):
    res = pool.map(Probe(), ["oom", "ab"], [{}] * 2, time_limit=10)
    assert res[0].status == ERROR and "MemoryError" in res[0].reason and res[1].value == 2.0


def test_worker_killed_between_calls_is_replaced(pool):
    pool.start()
    os.kill(pool.pids[0], signal.SIGKILL)  # no wait: it may still look alive when work is sent
    res = pool.map(Probe(), ["ab"] * 6, [{}] * 6, time_limit=10)
    assert all(r.value == 2.0 for r in res)


def test_unpicklable_reward_is_refused_with_advice(pool):
    r = Probe()
    r.callback = lambda: None
    with pytest.raises(TypeError, match="parallel=False"):
        pool.map(r, ["a"], [{}], time_limit=1)


def test_map_from_a_worker_thread(pool):
    out = []
    th = threading.Thread(
        target=lambda: out.append(pool.map(Probe(), ["abc"], [{}], time_limit=10))
    )
    th.start()
    th.join()
    assert out[0][0].value == 3.0


def test_close_stops_workers():
    p = ScoringPool(workers=1, preload=())
    p.start()
    (pid,) = p.pids
    p.close()
    assert p.pids == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_parallel_reward_uses_the_shared_pool_and_in_process_when_not_parallel():
    parallel = Probe()
    local = Probe(parallel=False)
    (remote_pid,) = {r.value for r in parallel.score_batch(["pid"])}
    assert remote_pid != os.getpid()
    assert local.score_batch(["pid"])[0].value == float(os.getpid())
