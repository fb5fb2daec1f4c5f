"""A persistent process pool for scoring: per-item time limits, order kept, nothing hangs.

Why processes, and why this pool rather than ``concurrent.futures``:

* math-verify's timeouts use ``signal.alarm``, which works only on a process's main thread;
  pool workers run items on their main thread, so its timeouts stay on.
* A hostile or pathological item can hang inside C code (a huge integer power, a regex) where
  no signal handler runs. The only reliable stop is to kill the process. A ProcessPoolExecutor
  cannot kill one task; this pool kills that item's worker, reports the item with status
  ``"timeout"``, and starts a replacement while the other workers go on.
* The trainer process holds a torch model, maybe a vLLM engine, and their threads: forking it
  is unsafe. Workers are fresh interpreters (``python -m grpo.rewards._worker``, started with
  ``subprocess``: fork+exec, which is thread-safe), connected by a socket pair.

Why not ``multiprocessing``'s ``forkserver`` or ``spawn``: both re-run the user's main script
in every worker (as ``__mp_main__``). Measured with a trl training script on the 2-core CI
machine: its imports (torch, transformers, trl) took 18 s per worker, longer than the item
time limit, so every item of the first batch timed out. Our workers import only ``grpo.rewards``
and math-verify (about 1 s for two workers, in parallel; ``benchmarks/bench_rewards.py``
prints the start-up cost). The main script is imported in a worker only when a reward class
defined in it must be unpickled there (exactly what multiprocessing would do, but only then).

Items go to workers in small contiguous chunks (GRPO groups are contiguous, so a worker's
cache of parsed gold answers gets hits), two chunks in flight per worker so that it never
idles waiting for the (busy) trainer process. A worker acknowledges each chunk once it has
loaded the reward (``load_limit``, generous: it may import the main script), then returns one
result per item as it finishes, in order: the item at the head of its queue is the one running,
and each item gets its own deadline of ``time_limit`` seconds.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from grpo.rewards.result import CRASHED, ERROR, TIMEOUT, ScoreResult

if TYPE_CHECKING:
    from grpo.rewards.base import Reward  # base hands batches to the pool: imports go that way

log = logging.getLogger(__name__)

# Imported by every worker at start, so that the first item does not pay for them.
PRELOAD = ("grpo.rewards.math", "grpo.rewards.code", "math_verify")


def default_workers() -> int:
    """Worker count: this process's share of the CPUs it may use (divided among the local
    data-parallel ranks, ``LOCAL_WORLD_SIZE``), at least 1 and at most 32.
    ``GRPO_REWARD_WORKERS`` overrides it."""
    env = os.environ.get("GRPO_REWARD_WORKERS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(n // ranks, 32))


class _Worker:
    def __init__(self, proc: subprocess.Popen, conn: Connection):
        self.proc = proc
        self.conn = conn
        self.call_id: int | None = None  # the call whose reward it holds
        self.pending: deque[tuple[int, Any, Any]] = deque()
        self.deadline = math.inf
        self.loaded = False


class ScoringPool:
    """Persistent pool of scoring processes, created lazily and reused across calls.

    ``map(reward, completions, examples, time_limit=...)`` returns one
    :class:`~grpo.rewards.result.ScoreResult` per item, in order. An item that raises becomes
    ``"error"``; one that runs past ``time_limit`` seconds becomes ``"timeout"`` (its worker is
    killed and replaced); one whose worker dies becomes ``"crashed"``. The rest of the batch is
    scored either way.

    Args:
        workers: number of worker processes (default :func:`default_workers`).
        memory_limit_mb: soft RLIMIT_AS of each worker (default 4096), so a runaway sympy
            expansion raises MemoryError (status "error") instead of swapping the host.
        load_limit: seconds a worker may take to start and unpickle a reward (it may have to
            import the user's main script) before its chunk is reported as timed out.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        memory_limit_mb: int | None = 4096,
        load_limit: float = 300.0,
        preload: Sequence[str] = PRELOAD,
    ) -> None:
        self.size = workers or default_workers()
        self.memory_limit = memory_limit_mb * 2**20 if memory_limit_mb else None
        self.load_limit = load_limit
        self.preload = tuple(preload)
        self._workers: list[_Worker | None] = [None] * self.size
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        self.stats = {"started": 0, "killed": 0, "crashed": 0}

    # ------------------------------------------------------------------ workers
    def _start(self, slot: int) -> _Worker:
        ours, theirs = socket.socketpair()
        main = sys.modules.get("__main__")
        main_path = getattr(main, "__file__", None) if main is not None else None
        setup = {
            "sys_path": list(sys.path),
            "main_path": main_path,
            "memory_limit": self.memory_limit,
            "preload": self.preload,
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "grpo.rewards._worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            theirs.close()  # so that the worker's death reads as EOF here
        conn = Connection(ours.detach())
        conn.send(setup)
        self.stats["started"] += 1
        w = _Worker(proc, conn)
        self._workers[slot] = w
        return w

    def _discard(self, w: _Worker, *, kill: bool) -> None:
        if kill and w.proc.poll() is None:
            w.proc.kill()
            self.stats["killed"] += 1
        w.conn.close()
        try:
            w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover -- SIGKILL always ends it
            log.warning("scoring worker %d did not exit after SIGKILL", w.proc.pid)
        self._workers[self._workers.index(w)] = None

    def start(self) -> ScoringPool:
        """Start all workers now (otherwise they start on first use)."""
        with self._lock:
            self._check_pid()
            for slot, w in enumerate(self._workers):
                if w is None:
                    self._start(slot)
            return self

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # we are a forked child: the workers are the parent's
            self._workers = [None] * self.size
            self._pid = os.getpid()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the workers (politely, then by SIGKILL after ``timeout`` seconds)."""
        with self._lock:
            if os.getpid() != self._pid:
                return
            live = [w for w in self._workers if w is not None]
            for w in live:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
            end = time.monotonic() + timeout
            for w in live:
                try:
                    w.proc.wait(timeout=max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                w.conn.close()
            self._workers = [None] * self.size

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.proc.pid for w in self._workers if w is not None]

    # ------------------------------------------------------------------ scoring
    def map(
        self,
        reward: Reward,
        completions: Sequence[str | None],
        examples: Sequence[Mapping[str, Any]],
        *,
        time_limit: float,
    ) -> list[ScoreResult]:
        n = len(completions)
        if len(examples) != n:
            raise ValueError(f"{len(examples)} examples for {n} completions")
        if n == 0:
            return []
        try:
            blob = pickle.dumps(reward, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise TypeError(
                f"reward {reward!r} cannot be sent to pool workers ({e}); "
                "make it picklable or pass parallel=False"
            ) from e
        items = list(zip(range(n), completions, examples, strict=True))
        with self._lock:
            self._check_pid()
            return self._map(blob, items, time_limit)

    def _map(self, blob: bytes, items: list, time_limit: float) -> list[ScoreResult]:
        call_id = next(self._ids)
        self._early_deaths = 0
        chunk = max(1, min(16, math.ceil(len(items) / (8 * self.size))))
        queue = deque(items[i : i + chunk] for i in range(0, len(items), chunk))
        results: list[ScoreResult | None] = [None] * len(items)
        busy: dict[Connection, _Worker] = {}
        try:
            while queue or busy:
                self._dispatch(queue, busy, call_id, blob, chunk, time_limit)
                if not busy:  # every send failed (workers died): start fresh ones and retry
                    continue
                timeout = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
                for conn in wait(list(busy), timeout):
                    self._collect(busy[conn], busy, queue, results, call_id, time_limit)
                now = time.monotonic()
                for conn, w in list(busy.items()):
                    if now >= w.deadline and w.pending:
                        self._expire(w, queue, results, time_limit)
                        del busy[conn]
        except BaseException:
            for w in busy.values():  # they hold work of an abandoned call
                self._discard(w, kill=True)
            raise
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _dispatch(
        self, queue: deque, busy: dict, call_id: int, blob: bytes, chunk: int, time_limit: float
    ) -> None:
        """Keep chunks in flight per worker, so that a worker never waits for this (possibly
        busy) process between chunks; results still come back one by one, in order, so the
        head of ``pending`` is the item running now."""
        for slot in range(self.size):
            w = self._workers[slot]
            if w is not None and not w.pending and w.proc.poll() is not None:  # died while idle
                self._discard(w, kill=False)
                self.stats["crashed"] += 1
                w = None
            # two chunks in flight while there is work for everyone; one near the end, so
            # that no worker sits on a queued chunk while another one idles
            depth = 2 if len(queue) > self.size else 1
            while queue and (w is None or len(w.pending) < depth * chunk):
                if w is None:
                    w = self._start(slot)
                work = queue.popleft()
                first = w.call_id != call_id
                try:
                    w.conn.send((call_id, blob if first else None, work))
                except OSError:  # it died: put the work back; its death is handled below/next
                    queue.appendleft(work)
                    if not w.pending:
                        self._discard(w, kill=False)
                        self.stats["crashed"] += 1
                    break
                if first:
                    w.call_id, w.loaded = call_id, False
                if not w.pending:
                    w.deadline = time.monotonic() + (self.load_limit if first else time_limit)
                w.pending.extend(work)
                busy[w.conn] = w

    def _collect(
        self, w: _Worker, busy: dict, queue: deque, results: list, call_id: int, time_limit: float
    ) -> None:
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[1] != call_id:
                    continue
                if msg[0] == "loaded":
                    w.loaded = True
                else:
                    _, _, idx, res = msg
                    results[idx] = res
                    if w.pending and w.pending[0][0] == idx:  # items run in order
                        w.pending.popleft()
                w.deadline = time.monotonic() + time_limit
        except (EOFError, OSError):  # the worker died (segfault, OOM killer, os._exit in a reward)
            try:
                code = w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                code = None
            signalled = code is not None and code < 0
            how = f"killed by signal {-code}" if signalled else f"exit code {code}"
            self._early_deaths += not w.loaded
            # Dying before it loaded the reward is not the first item's fault (a worker killed
            # while idle): requeue everything, unless it keeps happening (the reward itself
            # kills workers while unpickling).
            if w.pending and (w.loaded or self._early_deaths > 2):
                idx = w.pending.popleft()[0]
                results[idx] = ScoreResult.unscorable(f"worker process died ({how})", CRASHED)
            self._requeue(w, queue)
            del busy[w.conn]
            self._discard(w, kill=False)
            self.stats["crashed"] += 1
            return
        if not w.pending:
            del busy[w.conn]

    def _expire(self, w: _Worker, queue: deque, results: list, time_limit: float) -> None:
        if w.loaded:  # the item at the head of its chunk ran out of time
            idx = w.pending.popleft()[0]
            results[idx] = ScoreResult.unscorable(
                f"timed out after {time_limit:g} s (worker killed)", TIMEOUT
            )
            self._requeue(w, queue)
        else:  # could not even load the reward: the items are not to blame, but cannot wait
            for idx, _, _ in w.pending:
                results[idx] = ScoreResult.unscorable(
                    f"worker did not load the reward within {self.load_limit:g} s", ERROR
                )
            w.pending = deque()
        self._discard(w, kill=True)

    @staticmethod
    def _requeue(w: _Worker, queue: deque) -> None:
        if w.pending:
            queue.appendleft(list(w.pending))
            w.pending = deque()


_POOL: ScoringPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> ScoringPool:
    """The process-wide scoring pool, created on first use and closed at exit."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ScoringPool()
            atexit.register(shutdown_pool)
        return _POOL


def set_pool(pool: ScoringPool | None) -> None:
    """Replace the process-wide pool (closing the old one), e.g. to change its size."""
    global _POOL
    with _POOL_LOCK:
        old, _POOL = _POOL, pool
        if pool is not None:
            atexit.register(shutdown_pool)  # registering twice is harmless: the 2nd is a no-op
    if old is not None and old is not pool:
        old.close()


def shutdown_pool() -> None:
    """Close the process-wide pool, if one was created."""
    set_pool(None)
