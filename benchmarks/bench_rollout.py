"""Rollout throughput: VLLMGenerator vs HFGenerator, and the cost of one weight sync.

Same model (the tiny Llama from grpo.tiny, or a wider one with --hidden/--layers), same
prompts, n, max_tokens and sampling settings for both generators; both in float32. Reported:
completion tokens per second (all sampled tokens, eos included, divided by wall time; median
of --repeats runs after one warm-up call), the vLLM engine's start time, and the time of one
``sync_weights`` (median of 5), which must be far below a restart.

    .venv/bin/python benchmarks/bench_rollout.py                 # the table in README.md
    .venv/bin/python benchmarks/bench_rollout.py --hidden 512 --layers 4 --configs 16x8x128

HF runs first, in the same process: the vLLM engine changes the process's torch threads and
VLLMGenerator restores them, so HF's figures do not depend on the order anyway.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def parse_config(text: str) -> tuple[int, int, int]:
    p, n, t = (int(x) for x in text.split("x"))
    return p, n, t


def prompts_for(p: int) -> list:
    out = []
    for i in range(p):
        q = f"What is {i} + {2 * i + 1}? Think, then answer."
        out.append([{"role": "user", "content": q}] if i % 2 else q)
    return out


def time_generate(gen, prompts, n, sampling, repeats: int) -> tuple[float, int]:
    gen.generate(prompts, n, sampling)  # warm-up (vLLM compiles its sampler's helper once)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = gen.generate(prompts, n, sampling)
        runs.append((time.perf_counter() - t0, sum(len(r.completion_ids) for r in out)))
    seconds, tokens = sorted(runs)[len(runs) // 2]
    return seconds, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["8x4x32", "16x8x128"],
                    help="prompts x n x max_tokens")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                    help="vLLM enforce_eager (no torch.compile; starts faster)")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="vllm_cache_"))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import HFGenerator, SamplingConfig, VLLMGenerator
    from grpo.tiny import save_tiny_model

    folder = tempfile.mkdtemp(prefix="bench_rollout_")
    path = save_tiny_model(folder, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=max(1, args.hidden // 32), head_dim=32)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    configs = [parse_config(c) for c in args.configs]
    max_len = max(t for _, _, t in configs) + 64

    load0 = os.getloadavg()[0]
    rows = []
    hf = HFGenerator(model, tok)
    for p, n, t in configs:
        s = SamplingConfig(temperature=args.temperature, max_tokens=t, seed=0)
        rows.append(("HFGenerator", p, n, t,
                     *time_generate(hf, prompts_for(p), n, s, args.repeats)))

    engine = VLLMGenerator(path, dtype="float32", enforce_eager=args.eager, max_model_len=max_len)
    for p, n, t in configs:
        s = SamplingConfig(temperature=args.temperature, max_tokens=t, seed=0)
        rows.append(("VLLMGenerator", p, n, t,
                     *time_generate(engine, prompts_for(p), n, s, args.repeats)))
    syncs = []
    for _ in range(5):
        with torch.no_grad():  # a real change each time, as after an optimizer step
            model.lm_head.weight.mul_(1.001)
        t0 = time.perf_counter()
        engine.sync_weights(model)
        syncs.append(time.perf_counter() - t0)
    start = engine.engine_start_seconds
    engine.close()

    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.2f} M "
          f"params, float32; torch threads {torch.get_num_threads()}; temperature "
          f"{args.temperature}; vLLM enforce_eager={args.eager}; load average (1 min) "
          f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs\n")
    print("| generator | prompts x n | max_tokens | completion tokens | seconds | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, p, n, t, sec, tokens in rows:
        print(f"| {name} | {p} x {n} | {t} | {tokens} | {sec:.2f} | {tokens / sec:,.0f} |")
    print("\n| vLLM engine start (s) | one sync_weights (s, median of 5) | start / sync |")
    print("|---|---|---|")
    sync = statistics.median(syncs)
    print(f"| {start:.1f} | {sync:.3f} | {start / sync:,.0f}x |")


if __name__ == "__main__":
    main()
