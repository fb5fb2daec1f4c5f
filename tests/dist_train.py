"""Launched by tests/test_trainer.py::test_two_processes_match_one, alone or under torchrun.

usage: dist_train.py MODEL_DIR OUT_DIR [--fsdp] [--dynamic] [--async] [--save-steps N] [--max-steps N] [--resume]

With --async (tests/test_async.py), each process records the prompts it scored per step in
scored_rank<R>.jsonl.
"""

import argparse
import json
import os
from pathlib import Path

import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.rewards import Reward


class CountSevens(Reward):
    def score(self, completion, **example):
        return completion.count("7") / max(len(completion), 1)


class FlatOrChecksum(Reward):
    """Every completion of a ``flat`` row scores 1 (a group without signal, which dynamic
    sampling drops); elsewhere an arbitrary checksum of the text (signal in almost every group)."""

    def score(self, completion, **example):
        return 1.0 if example["flat"] else sum(map(ord, completion)) % 13 / 13


def recorded(reward, path: Path, fail_at: int | None = None):
    """A trl-style reward function scoring with ``reward`` that appends, per call, the step and
    the prompts this process scored (the asynchronous producer calls it). At step ``fail_at``
    on rank 1 it kills that process's generator child (a process failing while the other
    trains: its next generation raises)."""

    def record(completions, prompts, trainer_state, **columns):
        if trainer_state.global_step == fail_at and os.environ.get("RANK") == "1":
            import signal

            import psutil

            for child in psutil.Process().children():
                if any("spawn_main" in part for part in child.cmdline()):
                    os.kill(child.pid, signal.SIGKILL)
        with path.open("a") as f:
            f.write(json.dumps({"step": trainer_state.global_step, "prompts": list(prompts)}) + "\n")
        return reward(completions=completions, prompts=prompts, **columns)

    return record


def full_weights(model) -> dict:
    """Every parameter as a plain tensor (an FSDP2 shard is gathered: all processes must call)."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("out", type=Path)
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dynamic", action="store_true", help="DAPO dynamic sampling, some prompts without signal")
    p.add_argument("--async", dest="async_", action="store_true", help="asynchronous rollouts, staleness 1")
    p.add_argument("--fail-at", type=int, default=None,
                   help="with --async: rank 1's generator process is killed at this step")
    args = p.parse_args()
    rows = [{"prompt": f"Say sevens {i}", "flat": i % 3 == 0} for i in range(8)]
    reward = FlatOrChecksum() if args.dynamic else CountSevens()
    if args.async_:
        args.out.mkdir(parents=True, exist_ok=True)
        reward = recorded(reward, args.out / f"scored_rank{os.environ.get('RANK', '0')}.jsonl", args.fail_at)
    cfg = GRPOConfig(output_dir=str(args.out), num_generations=4, prompts_per_step=4, max_steps=args.max_steps,
                     max_completion_length=6, learning_rate=1e-3, beta=0.01, num_iterations=2,
                     minibatch_size=8, micro_batch_size=2, progress_bar=False, save_final_model=args.fsdp,
                     fsdp=args.fsdp, save_steps=args.save_steps, resume_from="latest" if args.resume else None,
                     dynamic_sampling=args.dynamic, dynamic_sampling_max_rounds=3,
                     async_staleness=1 if args.async_ else 0)
    trainer = GRPOTrainer(args.model_dir, [reward], rows, cfg, eval_dataset=rows[:2] if args.fsdp else None)
    rank = trainer.accelerator.process_index
    args.out.mkdir(parents=True, exist_ok=True)
    initial = full_weights(trainer.model)
    if rank == 0:
        torch.save(initial, args.out / "initial.pt")
    trainer.train()
    torch.save(full_weights(trainer.model), args.out / f"weights_rank{rank}.pt")
    if rank == 0:
        local = next(iter(trainer.model.parameters()))
        kind = type(local).__name__
        (args.out / "param_kind.txt").write_text(f"{kind} {tuple(getattr(local, 'to_local', lambda: local)().shape)}")


if __name__ == "__main__":
    main()
