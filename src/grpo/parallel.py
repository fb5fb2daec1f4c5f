"""How the processes share a run: one object that owns every data-parallel vs FSDP difference.

* :class:`DataParallel`: every process holds the whole model; each trains on its own share of
  the step's completions and gradients are summed over processes (flat buckets, one collective
  per bucket) before the optimizer step.
* :class:`FSDP`: weights, gradients and optimizer state sharded with FSDP2 (``fully_shard``,
  one unit per transformer block; Zhao et al., arXiv:2304.11277). Backward reduce-scatters the
  gradients *averaged* over processes (a divide factor of 1 would need ``PREMUL_SUM``, which
  gloo lacks), so each process's loss is scaled up by the number of processes to compensate.

Both share one convention: a process's loss is its share of the global loss (the aggregation's
denominator is the *global* count, :meth:`Parallelism.normalizer`), and the reduced gradient
is the full-batch gradient, whatever the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def is_sharded(model: torch.nn.Module) -> bool:
    """True for an FSDP2-sharded model."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def metric_reduction(key: str) -> str:
    """How a step metric combines over processes: "sum" for a process's share of a global
    quantity (``loss/loss``, ``train/tokens``), "min"/"max" for extremes (a last name part
    starting with, or a key ending in, min/max), "mean" otherwise (per-process means of
    equal-sized shares)."""
    last = key.rsplit("/", 1)[-1]
    if key in SUMMED_METRICS:
        return "sum"
    if last.startswith("min") or key.endswith("_min"):
        return "min"
    if last.startswith("max") or key.endswith("_max"):
        return "max"
    return "mean"


SUMMED_METRICS = frozenset(
    {
        "loss/loss",
        "train/tokens",
        "train/sequences",
        "completions/tokens",
        "completions/prompt_tokens",
    }
)
TOKEN_WEIGHTED_PREFIXES = ("loss/", "policy/", "rollout/")


class Parallelism:
    """Common part: process count, rank, device, reductions."""

    sharded = False
    _group: Any = None  # the process group of a side channel (None: the default group)

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.device = accelerator.device
        self.is_main = accelerator.is_main_process

    # ------------------------------------------------------------------ model
    def prepare(self, model: torch.nn.Module, ref_model: torch.nn.Module | None) -> None:
        """Make the processes' models identical and laid out for training."""
        if self.world > 1:  # a randomly initialised model differs per process: take rank 0's
            import torch.distributed as dist

            with torch.no_grad():
                for p in model.parameters():
                    dist.broadcast(p.data, src=0)

    def reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients over processes (a process that had no rows contributes zeros)."""

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float | None) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else math.inf)
        if hasattr(norm, "full_tensor"):  # a DTensor when sharded
            norm = norm.full_tensor()
        return float(norm)

    def full_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights for saving (None: ``model.state_dict()`` is already whole)."""
        return None

    # ------------------------------------------------------------------ reductions
    def normalizer(self, local_denominator: float) -> float:
        """The loss denominator that makes this process's loss its share of the global loss:
        the sum of every process's denominator (a collective: every process must call)."""
        return self.global_sum(local_denominator)

    def global_sum(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, "sum").item()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors from every process, in rank order."""
        if self.world == 1:
            return tensor
        if self._group is None:
            return self.accelerator.gather(tensor)
        import torch.distributed as dist

        local = tensor.detach().cpu().contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local, group=self._group)
        return torch.cat(parts).to(tensor.device)

    def side_channel(self) -> Parallelism:
        """These processes, with a :meth:`gather` on a process group of their own (gloo, over
        CPU copies), for a thread that gathers while the main thread runs the learner's
        collectives (the asynchronous rollout producer). Two threads issuing collectives on one
        group would interleave them in a different order on each process. Every process must
        call this, in the same order (it creates the group)."""
        import copy

        import torch.distributed as dist

        view = copy.copy(self)
        view._group = dist.new_group(backend="gloo")
        return view

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric reduced by its kind (:func:`metric_reduction`); every process must call.

        A process may lack a key another has (it trained on no completion this step): the key is
        reduced over the processes that have it. Token-weighted means (``loss/*``,
        ``policy/*``, ``rollout/*``) are weighted by each process's ``train/tokens``."""
        if self.world == 1:
            return metrics
        import torch.distributed as dist

        key_lists: list[list[str]] = [[] for _ in range(self.world)]
        dist.all_gather_object(key_lists, sorted(metrics))
        keys = sorted(set().union(*key_lists))
        t = torch.tensor(
            [metrics.get(k, math.nan) for k in keys], dtype=torch.float64, device=self.device
        )
        per_rank_WK = self.accelerator.gather(t[None]).view(self.world, -1).cpu()
        present_WK = ~torch.isnan(per_rank_WK)
        zeroed_WK = torch.where(present_WK, per_rank_WK, torch.zeros_like(per_rank_WK))
        tokens_W = (
            zeroed_WK[:, keys.index("train/tokens")]
            if "train/tokens" in keys
            else torch.ones(self.world)
        )
        out = {}
        for i, k in enumerate(keys):
            col, have = per_rank_WK[:, i][present_WK[:, i]], present_WK[:, i]
            op = metric_reduction(k)
            if op == "sum":
                out[k] = col.sum().item()
            elif op == "min":
                out[k] = col.min().item()
            elif op == "max":
                out[k] = col.max().item()
            elif k.startswith(TOKEN_WEIGHTED_PREFIXES) and tokens_W[have].sum() > 0:
                out[k] = (zeroed_WK[:, i] * tokens_W * have).sum().item() / tokens_W[
                    have
                ].sum().item()
            else:
                out[k] = col.mean().item()
        return out

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


class DataParallel(Parallelism):
    """Replicated model, gradients summed with one all-reduce per bucket."""

    def reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        if not _dist_ready():
            return
        import torch.distributed as dist

        bucket: list[torch.Tensor] = []
        size = 0
        params = list(params)
        for p in params:
            if p.grad is None:  # this process had no rows in the minibatch: it adds zeros
                p.grad = torch.zeros_like(p)
        for g in [p.grad for p in params] + [None]:
            if g is not None:
                bucket.append(g)
                size += g.numel()
            if bucket and (g is None or size >= 2**24):
                flat = torch.cat([x.reshape(-1) for x in bucket])
                dist.all_reduce(flat)
                offset = 0
                for x in bucket:
                    x.copy_(flat[offset : offset + x.numel()].view_as(x))
                    offset += x.numel()
                bucket, size = [], 0


class FSDP(Parallelism):
    """FSDP2 sharding; see the module docstring."""

    sharded = True

    def prepare(self, model: torch.nn.Module, ref_model: torch.nn.Module | None) -> None:
        super().prepare(model, ref_model)
        for m in (model, ref_model):
            if m is not None:
                shard_model(m)

    def normalizer(self, local_denominator: float) -> float:
        # FSDP averages the reduce-scattered gradients; dividing the denominator by the number of
        # processes turns that average back into the sum.
        return self.global_sum(local_denominator) / self.world

    def full_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        from grpo.checkpoint import full_model_state

        return full_model_state(model)  # a collective: every process calls it


def shard_model(model: torch.nn.Module) -> None:
    """Shard ``model`` over all processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

    One unit per transformer block (the classes the model lists in ``_no_split_modules``, the
    convention accelerate's FSDP auto-wrap uses) and one for the rest at the root (embeddings,
    final norm, LM head). Parameters become DTensors sharded on dim 0: each process keeps
    1/world of the weights, gradients and optimizer state, and a unit's full weights exist only
    while it runs (forward), or from its forward to its backward.
    """
    from torch.distributed.fsdp import fully_shard

    block_names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} lists no _no_split_modules, so its transformer blocks are "
            "unknown: set fsdp=False (data parallel) for this model"
        )
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def make_parallelism(accelerator: Any, fsdp: bool) -> Parallelism:
    """FSDP when asked for and there is more than one process, else data parallel."""
    return (
        FSDP(accelerator) if fsdp and accelerator.num_processes > 1 else DataParallel(accelerator)
    )
