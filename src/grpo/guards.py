"""Guards that keep a run from misleading its user: each turns a silent failure into an error or
a loud warning that names the culprit and the fix.

* :func:`check_output_dir`: a fresh run in a folder holding another run's checkpoints would
  mix the two (``resume_from="latest"`` resumes the old run; ``save_total_limit`` deletes the new
  run's checkpoints first).
* :func:`set_torch_threads`: torch's default of one thread per core collapses (0.16 s -> 20+ s a
  step measured on 2 cores) when the scoring pool and the generator compete for those cores.
* :class:`LearningWatch`: a run where nearly every group has no reward spread, or nearly every
  completion is cut at ``sampling.max_tokens``, trains on (almost) nothing; trl users hit
  this in the quick start (completions truncated before any answer, every reward 0).
* :func:`check_prompt_lengths`: ``max_prompt_length`` is enforced on every sampled prompt,
  naming the dataset row.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 1 << 30


def keep_freed_cpu_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse: what a CPU training step allocates and
    frees (activations of ~10 MB and more per layer and micro-batch) then comes back from the
    heap instead of fresh ``mmap`` pages that the kernel must fault in and zero on every step.

    By default glibc serves such blocks by ``mmap`` (or trims the heap top above 128 KB free),
    so every forward + backward re-faults its activations: 150,000 page faults and ~0.3 s of a
    6.3 s training pass at the compute scale of ``benchmarks/bench_vs_trl.py``, none after this
    (``benchmarks/README.md``). Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB for
    the whole process: blocks up to 1 GiB come from the heap, and the heap is not trimmed below
    1 GiB of free space, so the process keeps its peak heap (as a GPU caching allocator keeps its
    peak). No effect on GPU memory; False (nothing done) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    done = (
        mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW) == 1
        and mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW) == 1
    )
    logger.info(
        "glibc malloc keeps freed blocks up to 1 GiB for reuse "
        "(GRPOConfig.forward.cpu_keep_freed_memory): %s",
        "set" if done else "mallopt refused",
    )
    return done


def check_output_dir(
    output_dir: str | Path, *, resume_from: str | None, overwrite: bool, is_main: bool
) -> None:
    """Refuse a fresh run in a folder holding another run's checkpoints, unless asked to
    overwrite (then its checkpoints are deleted) or to resume; and one holding a run that left
    no checkpoints (its logs or final model, which a fresh run would overwrite) unless asked
    to overwrite."""
    from grpo.checkpoint import list_checkpoints

    if resume_from:
        return
    found = list_checkpoints(output_dir)
    if not found:
        left = _run_outputs(Path(output_dir))
        if left and not overwrite:
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} holds another run, without checkpoints "
                f"({', '.join(left)}), which a fresh run would overwrite: set "
                "overwrite_output_dir=True to start over, or choose another output_dir"
            )
        return
    if not overwrite:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} holds checkpoints of another run "
            f"(step_{found[-1][0]}): set resume_from='latest' (or call "
            "train(resume_from_checkpoint=True)) to continue it, "
            "overwrite_output_dir=True to start over (its checkpoints are deleted), or choose "
            "another output_dir"
        )
    if is_main:
        shutil.rmtree(Path(output_dir) / "checkpoints", ignore_errors=True)


def _run_outputs(output_dir: Path) -> list[str]:
    """What a run writes in ``output_dir`` and a fresh run replaces: non-empty logs
    (:class:`grpo.tracking.RunLogger`'s) and the final model."""
    logs = ("metrics.jsonl", "completions.jsonl", "eval.jsonl")
    found = [n for n in logs if (output_dir / n).is_file() and (output_dir / n).stat().st_size]
    if (output_dir / "final").is_dir() and any((output_dir / "final").iterdir()):
        found.append("final/")
    return found


def set_torch_threads(threads: int | None, *, cuda: bool, local_processes: int = 1) -> int:
    """Set torch's intra-op threads: ``threads``, or on a CPU-only machine half the cores this
    process may use, split among the local processes (at least 1). Returns the number set (0
    when left as it is: a GPU run with ``threads`` None)."""
    import torch

    if threads is None:
        if cuda:
            return 0
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        threads = max(1, cores // (2 * max(1, local_processes)))
    torch.set_num_threads(threads)
    return threads


class LearningWatch:
    """Counts consecutive steps on which the run learns (almost) nothing; :meth:`update`
    returns a warning the first time a streak reaches ``patience`` steps, and again every
    ``patience`` steps while it lasts."""

    def __init__(
        self,
        *,
        max_completion_length: int,
        threshold: float = 0.9,
        patience: int = 3,
        rewards_carry_signal: bool = True,
        max_turn_tokens: int | None = None,
    ):
        self.max_len, self.threshold, self.patience = max_completion_length, threshold, patience
        self.max_turn_tokens = max_turn_tokens  # a multi-turn generator's per-turn limit
        self.rewards_carry_signal = (
            rewards_carry_signal  # False: e.g. on-policy distillation's teacher does
        )
        self.streak = 0

    def _length_cuts(self, metrics: dict[str, float]) -> str:
        """Which limit cut the completions: multi-turn trajectories record it (their
        ``tools/stop_<reason>`` fractions); a single-turn sample is cut at sampling.max_tokens."""
        limits = {
            "turn_length": "the multi-turn generator's max_turn_tokens"
            + (f"={self.max_turn_tokens}" if self.max_turn_tokens is not None else ""),
            "token_budget": f"sampling.max_tokens={self.max_len}",
            "context": "the model's context length",
        }
        cuts = [
            (metrics[f"tools/stop_{reason}"], limit)
            for reason, limit in limits.items()
            if metrics.get(f"tools/stop_{reason}")
        ]
        if not cuts:
            return (
                f"cut at sampling.max_tokens={self.max_len} (raise it, or check that the model "
                "can end its answer: eos token, stop strings)"
            )
        cuts.sort(key=lambda c: -c[0])
        return (
            "cut at "
            + ", ".join(f"{limit} ({frac:.0%} of trajectories)" for frac, limit in cuts)
            + " (raise that limit, or check that the model can end its turns: eos token, stop "
            "strings)"
        )

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        dead = metrics.get("adv/zero_std_frac", 0.0) if self.rewards_carry_signal else 0.0
        cut = metrics.get("completions/truncated_frac", 0.0)
        if dead < self.threshold and cut < self.threshold:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak % self.patience:
            return None
        causes = []
        if cut >= self.threshold:
            causes.append(f"{cut:.0%} of completions were {self._length_cuts(metrics)}")
        if dead >= self.threshold:
            causes.append(
                f"{dead:.0%} of groups had no reward spread, so their advantages are 0 (check the "
                "rewards on a few completions in completions.jsonl; consider "
                "rollout.dynamic_sampling=True, more rollout.num_generations, or easier prompts)"
            )
        return (
            f"step {step}: the run is learning almost nothing for {self.streak} steps: "
            + "; ".join(causes)
        )


def check_prompt_lengths(
    prompt_ids: Sequence[Sequence[int]],
    rows: Sequence[int],
    max_prompt_length: int,
    context: int | None = None,
) -> None:
    """Raise naming the first dataset row whose prompt exceeds ``max_prompt_length`` tokens."""
    for ids, row in zip(prompt_ids, rows, strict=True):
        if len(ids) > max_prompt_length:
            extra = f" (the model's context is {context} tokens)" if context else ""
            raise ValueError(
                f"the prompt of dataset row {row} has {len(ids)} tokens, more than "
                f"max_prompt_length={max_prompt_length}{extra}: raise max_prompt_length or drop "
                "prompts that long from the dataset"
            )


def model_context(model: Any) -> int | None:
    """The model's maximum sequence length from its config, if it says."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)
