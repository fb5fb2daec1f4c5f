"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states, data position, step.

A checkpoint is a folder ``output_dir/checkpoints/step_<N>`` written atomically (to a temporary
name, then renamed), so a run killed while saving never leaves a half-written "latest". Resuming
from it and training to the end gives the same weights as an uninterrupted run with the same
seed: generation is seeded per step and prompt, and every other source of randomness is restored.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights of an FSDP2 model, on CPU, in process 0 (empty elsewhere). A
    collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    rank: int = 0,
    is_main: bool = True,
    keep: int = 2,
    barrier=lambda: None,
    sharded: bool = False,
) -> Path:
    """Write ``checkpoints/step_<step>``; keeps the newest ``keep`` checkpoints.

    ``sharded`` (FSDP2): weights and optimizer state are gathered to process 0 and written
    unsharded (``optimizer_full.pt``, keyed by parameter name), so a run can resume on any
    number of processes; every process must call this.
    """
    if sharded:  # collectives first, on every process
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        model_state = full_model_state(model)
        optim_state = get_optimizer_state_dict(
            model, optimizer, options=_full_options(cpu_offload=True)
        )
    else:
        model_state, optim_state = _trainable_state(model), optimizer.state_dict()
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if is_main:
        torch.save(model_state, tmp / "model.pt")
        torch.save(optim_state, tmp / ("optimizer_full.pt" if sharded else "optimizer.pt"))
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(
            json.dumps({"step": step, **trainer_state}, indent=1)
        )
    barrier()
    if is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(list_checkpoints(output_dir))[:-keep]:
            shutil.rmtree(old[1], ignore_errors=True)
    barrier()
    return final


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(
        (int(p.name.split("_")[1]), p)
        for p in root.glob("step_*")
        if p.name.split("_")[1].isdigit()
    )


def resolve_checkpoint(resume_from: str, output_dir: str | Path) -> Path:
    """``"latest"`` -> the newest checkpoint in ``output_dir``; else the given folder."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"resume_from='latest' but {output_dir}/checkpoints has no checkpoint"
            )
        return found[-1][1]
    path = Path(resume_from)
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"{path} is not a grpo checkpoint (no trainer_state.json)")
    return path


def load_checkpoint(
    path: Path, *, model, optimizer, scheduler, rank: int = 0, sharded: bool = False
) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns the trainer state."""
    full = (path / "optimizer_full.pt").exists()
    if full != sharded:
        raise ValueError(
            f"checkpoint {path} was written {'with' if full else 'without'} fsdp; resume it with "
            f"fsdp={full}"
        )
    if sharded:
        _load_sharded(path, model, optimizer, rank)
    else:
        _load_replicated(path, model, optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())


def _load_sharded(path: Path, model, optimizer, rank: int) -> None:
    """Process 0 reads the full tensors and broadcasts them; each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    weights = (
        torch.load(path / "model.pt", map_location="cpu", weights_only=True) if rank == 0 else {}
    )
    optim = (
        torch.load(path / "optimizer_full.pt", map_location="cpu", weights_only=False)
        if rank == 0
        else {}
    )
    set_model_state_dict(model, weights, options=_full_options(broadcast_from_rank0=True))
    set_optimizer_state_dict(
        model, optimizer, optim, options=_full_options(broadcast_from_rank0=True)
    )


def _load_replicated(path: Path, model, optimizer) -> None:
    weights = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(
            f"checkpoint {path} lacks {len(missing)} trainable parameters, e.g. {missing[:3]}"
        )
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    )
