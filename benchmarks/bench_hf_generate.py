"""HFGenerator's decode paths side by side: transformers' ``generate`` vs the own loop.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_hf_generate.py            # ~1.5 min
    PYTHONPATH=src .venv/bin/python benchmarks/bench_hf_generate.py --repeats 3 --threads 2

The work of one GRPO step at ``bench_vs_trl.py --scale compute``: the same 25 M-parameter Llama
(hidden 512, 6 layers, char tokenizer, fp32, built offline), 4 of its math chat prompts x n=8 =
32 rows, at most 128 new tokens, temperature 1, seeded. Paths, each timed per call, interleaved
so that machine load hits them alike (repeat r uses seed r for every path):

* ``generate``: ``HFGenerator(use_generate=True)``: ``model.generate`` (DynamicCache grown by
  ``torch.cat`` every step, every row stepped until the last one ends);
* ``own, all rows``: the own loop with row dropping switched off (preallocated cache only);
* ``own``: the default own loop (preallocated cache + finished rows dropped).

Printed per path: median seconds per call, completion tokens, decode row-forwards (rows fed to
the single-token forwards, counted by a forward hook), and, against ``generate``, how many rows
came out with identical tokens and the largest log-prob difference on them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import SCALES, math_rows  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import HFGenerator, SamplingConfig
    from grpo.rollout import hf_decode
    from grpo.tiny import save_tiny_model

    path = save_tiny_model(Path(tempfile.mkdtemp()) / "model", **SCALES["compute"]["model"])
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prompts = [row["prompt"] for row in math_rows()[:args.prompts]]
    rows_fed = []
    model.register_forward_pre_hook(
        lambda m, a, kw: rows_fed.append(kw["input_ids"].shape[0] if kw["input_ids"].shape[1] == 1 else 0),
        with_kwargs=True)

    def own_all_rows(model, tok):
        gen = HFGenerator(model, tok)
        real = gen.generate

        def generate(*a, **kw):
            with mock.patch.object(hf_decode, "_should_compact", lambda finished, batch: False):
                return real(*a, **kw)
        gen.generate = generate
        return gen

    paths = {"generate": lambda m, t: HFGenerator(m, t, use_generate=True),
             "own, all rows": own_all_rows,
             "own": lambda m, t: HFGenerator(m, t)}
    times = {k: [] for k in paths}
    stats = {k: {"tokens": 0, "row_forwards": 0, "same_rows": 0, "rows": 0, "max_dlogp": 0.0} for k in paths}
    for make in paths.values():  # warm-up: one full call per path (generate's first is ~1.5x slower)
        make(model, tok).generate(prompts, args.n, SamplingConfig(max_tokens=args.max_tokens, seed=99))
    for r in range(args.repeats):
        sampling = SamplingConfig(max_tokens=args.max_tokens, seed=r)
        outs = {}
        for name, make in paths.items():
            gen = make(model, tok)
            rows_fed.clear()
            t0 = time.perf_counter()
            outs[name] = gen.generate(prompts, args.n, sampling)
            times[name].append(time.perf_counter() - t0)
            s = stats[name]
            s["tokens"] += sum(len(x.completion_ids) for x in outs[name])
            s["row_forwards"] += sum(rows_fed)
            for a, b in zip(outs[name], outs["generate"], strict=True):
                s["rows"] += 1
                if a.completion_ids == b.completion_ids:
                    s["same_rows"] += 1
                    d = (torch.tensor(a.logprobs) - torch.tensor(b.logprobs)).abs().max().item()
                    s["max_dlogp"] = max(s["max_dlogp"], d)
            print(f"repeat {r} {name:14s} {times[name][-1]:6.2f} s", flush=True)

    base = statistics.median(times["generate"])
    print(f"\n{args.prompts} prompts x n={args.n}, max {args.max_tokens} new tokens, {args.threads} thread(s), "
          f"{args.repeats} repeats (medians)")
    print("| path | s/call | vs generate | completion tokens | decode row-forwards | rows identical to generate "
          "| max abs log-prob diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in paths:
        s, t = stats[name], statistics.median(times[name])
        print(f"| {name} | {t:.2f} | {t / base:.2f}x | {s['tokens'] / args.repeats:.0f} | "
              f"{s['row_forwards'] / args.repeats:.0f} | {s['same_rows']}/{s['rows']} | {s['max_dlogp']:.1e} |")


if __name__ == "__main__":
    main()
