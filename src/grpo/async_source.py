"""Asynchronous rollouts with bounded staleness: the next steps are sampled while the learner
trains.

In a synchronous step the learner waits for generation and the generator waits for the learner.
:class:`AsyncRolloutSource` runs a producer thread that drives a :class:`RolloutSource` whose
generator is a :class:`grpo.rollout.ProcessGenerator` (a child process with its own copy of the
weights), filling a bounded queue of scored steps; the learner takes step ``s``'s batch from the
queue while step ``s+1``'s is being sampled. The recipe is the one every large-scale library
converged on (verl's one-step-off-policy and fully-async trainers, AReaL arXiv:2505.24298,
PipelineRL, prime-rl):

* **versions**: the weights the learner has after ``v`` updates are version ``v``; every
  rollout carries the version that sampled it (``Rollout.policy_version``);
* **a staleness bound** ``k`` (``async.staleness``): step ``s`` trains only on rollouts of
  version ``>= s - k``. The producer does not start step ``s`` before version ``s - k`` is in
  the generator, and the queue holds at most ``k`` steps, so no sample is ever too old when
  taken; the bound is still checked on every step, and a violation is an error.
  ``k = 0`` is the synchronous trainer itself (this class is not used);
* **the off-policy correction**: AReaL's decoupled PPO objective (arXiv:2505.24298 eq. 5): the
  clip is taken against the *proximal* policy (the learner's weights before this step's update,
  whose log-probs the learner computes as ``old_logp``), and each token's policy-gradient term
  is weighted by ``pi_prox / pi_behav`` with ``pi_behav`` the sampler's log-probs
  (``rollout_logp``), truncated at ``is_cap`` (the TIS machinery of :mod:`grpo.loss`). In
  AReaL's ablation, plain PPO on staleness-4 data fell from 42.0 to 23.3 on AIME24 and the
  decoupled objective kept 42.2;
* **weight pushes** are a memcpy into shared memory under a lock (the learner is held only for
  that copy); the child picks the new version up before its next generation.

What is no longer bit-reproducible: which weight version samples which step depends on how the
producer and the learner race, so two runs with the same seed can differ (sampling itself is
still seeded per step and prompt). A resumed run restarts the producer from the data position
the learner had consumed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from grpo.rollout.process import ProcessGenerator
from grpo.source import Collected, RolloutSource, ScoredStep


class AsyncRolloutSource:
    """Scored steps produced ahead of the learner; see the module docstring."""

    def __init__(
        self,
        inner: RolloutSource,
        generator: ProcessGenerator,
        *,
        staleness: int,
        max_steps: int,
        start_step: int = 0,
        timeout: float = 600.0,
    ):
        if staleness < 1:
            raise ValueError(f"staleness must be >= 1 for an asynchronous source, got {staleness}")
        self.inner, self.generator, self.staleness = inner, generator, staleness
        self.max_steps, self.timeout = max_steps, timeout
        self._queue: deque[tuple[int, ScoredStep, dict]] = deque()
        self._cond = threading.Condition()
        self._next = start_step  # the step the producer makes next
        self._weights = start_step  # the version in the generator
        self._consumed_state = inner.state_dict()
        self._error: BaseException | None = None
        self._stop = False
        self._generator_idle = 0.0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ learner side
    def collect(self, step: int) -> Collected:
        """Step ``step``'s scored batch, waiting for the producer if it is not ready."""
        self._start()
        t0 = time.perf_counter()
        with self._cond:
            while not (self._queue or self._error is not None):
                if not self._thread.is_alive():
                    raise RuntimeError("the rollout producer thread ended without a batch")
                if not self._cond.wait(timeout=self.timeout):
                    raise TimeoutError(f"no rollouts for step {step} within {self.timeout:.0f} s")
            if self._error is not None:
                raise RuntimeError("the asynchronous rollout producer failed") from self._error
            depth = len(self._queue)
            made_for, scored, state = self._queue.popleft()
            generator_idle, self._generator_idle = self._generator_idle, 0.0
            self._cond.notify_all()
        if made_for != step:
            raise RuntimeError(f"rollouts made for step {made_for} handed to step {step}")
        trained = [r.rollout for r in scored.trained]
        versions = [r.policy_version for r in trained]
        if (
            versions and step - min(versions) > self.staleness
        ):  # an invariant: the producer's gate prevents it
            raise RuntimeError(
                f"step {step} got rollouts of version {min(versions)}, beyond the bound "
                f"{self.staleness}"
            )
        self._consumed_state = state
        lags = [step - v for v in versions] or [0]
        scored.metrics.update(
            {
                "async/staleness_mean": sum(lags) / len(lags),
                "async/staleness_max": float(max(lags)),
                "async/queue_depth": float(depth),
                "async/learner_idle": time.perf_counter() - t0,
                "async/generator_idle": generator_idle,
            }
        )
        return Collected(trained, lambda: scored)

    @property
    def pending(self) -> int:
        """Scored steps made ahead of the learner, waiting to be collected (at most
        ``staleness``)."""
        with self._cond:
            return len(self._queue)

    def push_weights(self, model: Any, version: int) -> None:
        """The learner's weights after ``version`` updates, to the generator (a memcpy)."""
        self.generator.sync_weights(model, version)
        with self._cond:
            self._weights = version
            self._cond.notify_all()

    def state_dict(self) -> dict[str, Any]:
        """The data position after the last step the *learner* took (prefetched steps are
        sampled again after a resume)."""
        return self._consumed_state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._thread is not None:
            raise RuntimeError("load the state before the first collect")
        self.inner.load_state_dict(state)
        self._consumed_state = self.inner.state_dict()

    def start_at(self, step: int) -> None:
        """Resume: the next step to produce and the generator's version."""
        self._next = self._weights = step

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout)
        self.generator.close()
        self.inner.close()

    # ------------------------------------------------------------------ producer side
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._produce, name="grpo-rollout-producer", daemon=True
            )
            self._thread.start()

    def _produce(self) -> None:
        try:
            while True:
                t0 = time.perf_counter()
                with self._cond:
                    # room in the queue, and weights recent enough for the next step
                    while (
                        not self._stop
                        and self._next < self.max_steps
                        and (
                            len(self._queue) >= self.staleness
                            or self._weights < self._next - self.staleness
                        )
                    ):
                        self._cond.wait()
                    if self._stop or self._next >= self.max_steps:
                        return
                    step = self._next
                    self._generator_idle += time.perf_counter() - t0
                scored = self.inner.collect(step).result()
                state = self.inner.state_dict()
                with self._cond:
                    self._queue.append((step, scored, state))
                    self._next += 1
                    self._cond.notify_all()
        except BaseException as e:  # noqa: BLE001 -- handed to the learner, which raises it
            with self._cond:
                self._error = e
                self._cond.notify_all()
