"""Launched by tests/test_trainer.py::test_two_processes_match_one, alone or under torchrun.

usage: dist_train.py MODEL_DIR OUT_DIR
"""

import sys
from pathlib import Path

import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.rewards import Reward


class CountSevens(Reward):
    def score(self, completion, **example):
        return completion.count("7") / max(len(completion), 1)


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    rows = [{"prompt": f"Say sevens {i}"} for i in range(8)]
    cfg = GRPOConfig(output_dir=str(out), num_generations=4, prompts_per_step=4, max_steps=3,
                     max_completion_length=6, learning_rate=1e-3, beta=0.01, num_iterations=2,
                     minibatch_size=8, micro_batch_size=2, progress_bar=False, save_final_model=False)
    trainer = GRPOTrainer(model_dir, [CountSevens()], rows, cfg)
    rank = trainer.accelerator.process_index
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        torch.save({n: p.detach().clone() for n, p in trainer.model.named_parameters()}, out / "initial.pt")
    trainer.train()
    torch.save({n: p.detach().clone() for n, p in trainer.model.named_parameters()}, out / f"weights_rank{rank}.pt")


if __name__ == "__main__":
    main()
