"""An online difficulty curriculum: sample prompts by the pass rates their scored rollouts show.

:class:`PassRateCurriculum` takes the place of :class:`grpo.data.PromptSampler` when
``rollout.curriculum="pass_rate"``. It keeps, per training prompt, ``(successes, trials)``
from the accuracy reward of every completion the run has scored (every process's, from the
gathered reward table, so every process holds the same counts and draws the same prompts), and:

* **retires** a prompt once it has ``min_samples`` or more trials and a pass rate
  ``successes / trials >= retire_at`` (0.9): it is never drawn again. This is ScaleRL's
  "no-positive-resampling" (arXiv:2510.13786: prompts with pass rate >= 0.9 are removed
  from later epochs), applied online after each step rather than at epoch ends: a
  group whose answers are all right has zero advantage in GRPO and only costs generation;
* **weights** the draw among the active prompts (``rollout.curriculum_weighting``):

  - ``"variance"`` (default): probability proportional to ``p (1 - p) + floor`` with
    ``p = (successes + 1) / (trials + 2)`` (the mean of the Beta(1, 1) posterior, so an unseen
    prompt has p = 0.5 and the highest weight). ``p (1 - p)`` is the variance of a 0/1 reward:
    the group-relative advantage has nothing to work with at p = 0 or 1 (DAPO's dynamic sampling
    drops such groups after paying for them), most at p = 0.5. ``floor``
    (``rollout.curriculum_floor``, 0.05) keeps prompts that look hopeless drawable, since a
    policy that improves may start solving them;
  - ``"uniform"``: every active prompt alike (no-positive-resampling alone).

  prime-rl's ``DifficultyPoolSampler`` (``orchestrator/curriculum/samplers/pool.py``, commit
  ``559b4477``) sorts tasks into easy/medium/hard pools by their *latest* group mean and
  weights the pools; here the estimate is the running count over every scored completion, and
  the weight a smooth function of it rather than pool thresholds.

A prompt's success is its accuracy reward clipped to [0, 1] (a 0/1 verifier's value; a partial
score counts as that fraction of a success); an unscorable completion (NaN) is no trial.

**Draws.** :meth:`take` draws ``k`` distinct prompts without replacement among the active ones
not yet drawn since the last :meth:`observe` (so DAPO dynamic sampling's extra rounds in one step
get fresh prompts), with a generator seeded by ``(seed, number of draws so far)``: a pure
function of the state, which :meth:`state_dict` holds in full (JSON types), so a resumed run
draws exactly the prompts an uninterrupted one does.

**When too few prompts are active** for a draw (late in a run on an easy dataset, or every
prompt retired), the hardest retired prompts (lowest pass rate, then lowest index) are
un-retired, with a :class:`CurriculumWarning` naming how many: training goes on with the
prompts the policy is least sure of rather than stopping (a run that should stop when the task
is solved says so with ``max_steps`` or ``max_seconds``). An un-retired prompt keeps its counts
and is retired again as soon as it passes ``retire_at`` after its next group.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

Weighting = Literal["variance", "uniform"]


class CurriculumWarning(UserWarning):
    """Too few prompts are active for a draw: retired prompts were brought back."""


class PassRateCurriculum:
    """Per-prompt pass rates, retirement at ``retire_at`` and weighted draws; see the module
    docstring. ``n`` prompts (indices ``0..n-1``), one draw of ``k`` per :meth:`take`."""

    kind = "pass_rate"

    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        retire_at: float = 0.9,
        min_samples: int = 16,
        weighting: Weighting = "variance",
        floor: float = 0.05,
    ):
        if n < 1:
            raise ValueError("the training dataset is empty")
        if weighting not in ("variance", "uniform"):
            raise ValueError(
                f"rollout.curriculum_weighting={weighting!r}: give 'variance' or 'uniform'"
            )
        self.n, self.seed = n, seed
        self.retire_at, self.min_samples = retire_at, min_samples
        self.weighting, self.floor = weighting, floor
        self.successes = np.zeros(n, dtype=np.float64)  # [n] sum of clipped accuracy
        self.trials = np.zeros(n, dtype=np.int64)  # [n] scored completions
        self.retired = np.zeros(n, dtype=bool)  # [n]
        self.pending = np.zeros(n, dtype=bool)  # [n] drawn since the last observe
        self.draws = 0  # takes so far: the seed of the next one
        self.unretired = 0  # prompts brought back because too few were active

    # ------------------------------------------------------------------ sampling
    def weights(self) -> np.ndarray:
        """``[n]`` unnormalised draw weights of every prompt (retired ones included)."""
        if self.weighting == "uniform":
            return np.ones(self.n)
        p = (self.successes + 1.0) / (self.trials + 2.0)  # Beta(1, 1) posterior mean
        return p * (1.0 - p) + self.floor

    def take(self, k: int) -> list[int]:
        """``k`` distinct prompt indices, drawn by :meth:`weights` among the active prompts not
        drawn since the last :meth:`observe`."""
        if k > self.n:
            raise ValueError(
                f"rollout.curriculum draws {k} distinct prompts per step from a dataset of "
                f"{self.n}: lower rollout.prompts_per_step or add prompts"
            )
        free = ~self.pending
        if free.sum() < k:  # dynamic sampling's rounds went through every prompt: start over
            self.pending[:] = False
            free = ~self.pending
        if (free & ~self.retired).sum() < k:
            self._unretire(k - int((free & ~self.retired).sum()), free)
        candidates = np.flatnonzero(free & ~self.retired)  # [m] ascending
        w = self.weights()[candidates]
        rng = np.random.default_rng([self.seed, 0x5C, self.draws])
        chosen = rng.choice(candidates, size=k, replace=False, p=w / w.sum())
        self.draws += 1
        self.pending[chosen] = True
        return [int(i) for i in chosen]

    def _unretire(self, need: int, free: np.ndarray) -> None:
        """Bring back the ``need`` hardest retired prompts among ``free`` ones, loudly."""
        pool = np.flatnonzero(self.retired & free)
        rate = self.successes[pool] / np.maximum(self.trials[pool], 1)
        back = pool[np.lexsort((pool, rate))[:need]]  # lowest pass rate, then lowest index
        self.retired[back] = False
        self.unretired += len(back)
        warnings.warn(
            f"rollout.curriculum: {int(self.retired.sum()) + len(back)} of {self.n} prompts are "
            f"retired (pass rate >= {self.retire_at}), too few left for a step; {len(back)} of "
            "the hardest retired prompts were brought back. The task is (nearly) solved: stop "
            "the run, add harder prompts, or raise rollout.curriculum_retire_at",
            CurriculumWarning,
            stacklevel=3,
        )

    # ------------------------------------------------------------------ bookkeeping
    def observe(self, indices: Iterable[int], accuracy: Iterable[float]) -> None:
        """Count one scored completion per pair: prompt ``indices[i]`` scored ``accuracy[i]``
        (clipped to [0, 1]; NaN, unscorable, is no trial). Then retire the prompts that reached
        ``retire_at`` with ``min_samples`` trials, and end the step's draws."""
        idx = np.asarray(list(indices), dtype=np.int64)
        acc = np.asarray(list(accuracy), dtype=np.float64)
        scored = ~np.isnan(acc)
        np.add.at(self.successes, idx[scored], np.clip(acc[scored], 0.0, 1.0))
        np.add.at(self.trials, idx[scored], 1)
        rate = self.successes / np.maximum(self.trials, 1)
        self.retired |= (self.trials >= self.min_samples) & (rate >= self.retire_at)
        self.pending[:] = False

    def metrics(self) -> dict[str, float]:
        """``curriculum/retired_frac`` (share of the dataset retired) and
        ``curriculum/mean_pass_rate`` (mean pass rate over the prompts scored at least once;
        NaN before any)."""
        seen = self.trials > 0
        rates = self.successes[seen] / self.trials[seen]
        return {
            "curriculum/retired_frac": float(self.retired.mean()),
            "curriculum/mean_pass_rate": float(rates.mean()) if seen.any() else math.nan,
            "curriculum/unretired": float(self.unretired),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The whole state in JSON types (a copy: later draws do not change it). Counts are
        kept for the prompts scored at least once."""
        seen = np.flatnonzero(self.trials)
        return {
            "kind": self.kind,
            "n": self.n,
            "seed": self.seed,
            "draws": self.draws,
            "unretired": self.unretired,
            "seen": seen.tolist(),
            "successes": self.successes[seen].tolist(),
            "trials": self.trials[seen].tolist(),
            "retired": np.flatnonzero(self.retired).tolist(),
            "pending": np.flatnonzero(self.pending).tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(
                "the checkpoint's prompt sampler is the plain one (rollout.curriculum='off'); "
                "this run has rollout.curriculum='pass_rate': resume with the setting the run "
                "started with"
            )
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint curriculum was for n={state['n']}, seed={state['seed']}; "
                f"this run has n={self.n}, seed={self.seed}"
            )
        self.draws, self.unretired = int(state["draws"]), int(state["unretired"])
        self.successes[:], self.trials[:] = 0.0, 0
        self.retired[:], self.pending[:] = False, False
        seen = np.asarray(state["seen"], dtype=np.int64)
        self.successes[seen] = np.asarray(state["successes"], dtype=np.float64)
        self.trials[seen] = np.asarray(state["trials"], dtype=np.int64)
        self.retired[np.asarray(state["retired"], dtype=np.int64)] = True
        self.pending[np.asarray(state["pending"], dtype=np.int64)] = True


__all__ = ["CurriculumWarning", "PassRateCurriculum", "Weighting"]
