"""In-process scoring under a deadline, so that a reward that sleeps or loops cannot stall a run.

Rewards scored in the process pool are killed at their time limit (``grpo.rewards.pool``).
Everything else -- plain trl-style functions and rewards with ``parallel=False`` -- runs here:
on a daemon thread, while the calling thread waits with a deadline of ``time_limit`` seconds
*per item* (a batch function is one item: the whole call).

A thread cannot be killed. An item past its deadline is reported with status ``"timeout"``,
its thread is *abandoned* (it runs on until it returns; whatever it computes later is dropped),
and the items after it go on in a fresh thread. An abandoned thread keeps what it holds (a
CPU, memory), so each reward may have at most :data:`MAX_ABANDONED` of them alive: beyond that
its calls are not started at all and every item reports ``"timeout"`` with that reason, until
one of them returns. ``grpo.rewards.RewardMonitor`` stops a run whose reward times out on every
item for a few steps.

Limits: a hang in C code that holds the GIL (a huge integer power, a catastrophic regex) stops
every thread of the process, this watchdog included. Rewards exposed to such inputs belong in
the process pool (``parallel=True``), where a hang costs one killed worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from grpo.rewards.result import TIMEOUT, ScoreResult

log = logging.getLogger(__name__)

MAX_ABANDONED = 4  # live abandoned threads per reward before its calls stop being started

_PENDING = object()
_abandoned: dict[str, list[_Job]] = {}
_abandoned_lock = threading.Lock()


class _Job(threading.Thread):
    """Runs ``fn(i)`` for each index in order; ``current`` is (index, start time) of the item
    running now. Once ``abandoned``, nothing it computes is stored."""

    def __init__(self, fn: Callable[[int], Any], indices: list[int], results: list, owner: str):
        super().__init__(daemon=True, name=f"grpo-reward-{owner}")
        self.fn, self.indices, self.results = fn, indices, results
        self.current = (indices[0], time.monotonic())
        self.abandoned = False
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in self.indices:
                self.current = (i, time.monotonic())
                value = self.fn(i)
                with self.lock:
                    if self.abandoned:
                        return
                    self.results[i] = value
        except BaseException as e:  # noqa: BLE001 -- handed to the waiting thread, re-raised there
            self.error = e
        finally:
            self.finished.set()


def live_abandoned(owner: str) -> int:
    """How many abandoned threads of reward ``owner`` are still running."""
    with _abandoned_lock:
        jobs = [j for j in _abandoned.get(owner, []) if j.is_alive()]
        _abandoned[owner] = jobs
        return len(jobs)


def _abandon(job: _Job, owner: str) -> None:
    with job.lock:
        job.abandoned = True
    with _abandoned_lock:
        _abandoned.setdefault(owner, []).append(job)


def run_items(
    fn: Callable[[int], Any],
    n: int,
    *,
    time_limit: float,
    owner: str,
    on_timeout: Callable[[int, str], Any] | None = None,
) -> list:
    """``[fn(0), ..., fn(n-1)]`` computed on a daemon thread, each call within ``time_limit``.

    A call past its deadline gives ``on_timeout(i, reason)`` instead (default: a
    ``"timeout"`` ScoreResult) and the rest continue on a new thread. ``fn`` should not raise;
    if it does, the exception is re-raised here. ``owner`` (the reward's name) appears in the
    reasons and in the threads' names.
    """
    if on_timeout is None:
        on_timeout = lambda i, reason: ScoreResult.unscorable(reason, TIMEOUT)  # noqa: E731
    results: list = [_PENDING] * n
    todo = list(range(n))
    while todo:
        stuck = live_abandoned(owner)
        if stuck >= MAX_ABANDONED:
            reason = (
                f"not run: {stuck} earlier calls of reward {owner!r} are still running past "
                f"their {time_limit:g} s limit (threads cannot be killed); fix the hang, or "
                "score it in killable processes with parallel=True"
            )
            for i in todo:
                results[i] = on_timeout(i, reason)
            break
        job = _Job(fn, todo, results, owner)
        job.start()
        while True:
            i, started = job.current
            if job.finished.wait(max(0.0, started + time_limit - time.monotonic())):
                if job.error is not None:
                    raise job.error
                todo = []
                break
            if job.current != (i, started):  # it moved on meanwhile
                continue
            _abandon(job, owner)
            if results[i] is _PENDING:
                reason = (
                    f"reward {owner!r} did not return within {time_limit:g} s; its thread "
                    "was abandoned (threads cannot be killed) and runs on"
                )
                results[i] = on_timeout(i, reason)
                log.warning("%s", reason)
            todo = [j for j in todo if results[j] is _PENDING]
            break
    return results
