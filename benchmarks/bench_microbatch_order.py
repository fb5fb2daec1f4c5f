"""Padding work in the log-prob passes: group order vs sorted by length vs packed (padding-free).

    PYTHONPATH=src python benchmarks/bench_microbatch_order.py            # compute scale, ~2 min

The evidence behind a proposed trainer change (benchmarks/README.md, "grpo vs trl, compute
scale"). A GRPO step's rows are padded per micro-batch to its longest completion
(``RolloutBatch.select`` trims only the columns that are padding in *every* row), and a random
group of G rows almost always holds one long completion, so in group order nearly every
micro-batch is as wide as the longest completion of the step. Sorting the step's rows by
completion length before cutting micro-batches puts the short ones together; packing
(``grpo.packing``, the default since) removes the padding altogether.

What runs: the ``bench_vs_trl.py --scale compute`` model; one real rollout batch (4 prompts x
G=8, 128 new tokens, ``grpo.rollout.HFGenerator``); then, for each order, the policy's log-probs
(``grpo.policy.completion_logprobs``, shared-prompt forward on) of every micro-batch of 16 rows,
forward + backward of a token-sum loss, and the same without gradients (the reference pass),
padded (``padding_free=False``) in group order and sorted, and packed. Median of ``--repeats``;
columns counted = rows x padded completion length (packed: the real completion tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_vs_trl as bvt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--max-completion-length", type=int, default=128)
    args = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.batch import collate_rollouts
    from grpo.policy import completion_logprobs
    from grpo.rollout import HFGenerator, SamplingConfig
    from grpo.tiny import save_tiny_model

    torch.set_num_threads(1)
    path = save_tiny_model(Path(tempfile.mkdtemp()) / "m", **bvt.SCALES["compute"]["model"])
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prompts = [r["prompt"] for r in bvt.math_rows()[:4]]
    rollouts = HFGenerator(model, tok).generate(prompts, 8, SamplingConfig(max_tokens=args.max_completion_length,
                                                                          seed=0))
    batch = collate_rollouts(rollouts, None, tok.pad_token_id)
    lengths = batch.completion_mask.sum(1)
    by_length = torch.argsort(lengths, stable=True)
    orders = {"padded, group order": (torch.arange(len(batch)), False),
              "padded, sorted by length": (by_length, False),
              "packed (padding-free), sorted by length": (by_length, True)}
    print(f"# completion lengths: mean {lengths.float().mean():.1f}, min {lengths.min()}, max {lengths.max()}; "
          f"{len(batch)} rows, micro-batch {args.micro_batch_size}")
    print("\n| order | padded columns | real tokens | fwd+bwd s | no-grad fwd s |\n|---|---|---|---|---|")
    for name, (order, packed) in orders.items():
        micro = [batch.select(order[s:s + args.micro_batch_size])
                 for s in range(0, len(batch), args.micro_batch_size)]
        columns = int(lengths.sum()) if packed else sum(len(m) * m.completion_ids.shape[1] for m in micro)
        train, nograd = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for m in micro:
                completion_logprobs(model, m, padding_free=packed).logp.sum().backward()
            train.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with torch.no_grad():
                for m in micro:
                    completion_logprobs(model, m, padding_free=packed)
            nograd.append(time.perf_counter() - t0)
        print(f"| {name} | {columns} | {int(lengths.sum())} | {statistics.median(train):.2f} "
              f"| {statistics.median(nograd):.2f} |")


if __name__ == "__main__":
    main()
