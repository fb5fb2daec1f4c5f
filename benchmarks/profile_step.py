"""Where one grpo GRPO step spends its time: Python functions (cProfile) and torch ops (torch.profiler).

    PYTHONPATH=src python benchmarks/profile_step.py                  # compute scale, ~3 min on 2 cores
    PYTHONPATH=src python benchmarks/profile_step.py --scale tiny --top 30

Same model, data, rewards and settings as ``bench_vs_trl.py --scale S --rows hf`` (its
``SCALES`` and helpers). ``--warmup`` unprofiled steps, then one step under cProfile and one
under ``torch.profiler`` (CPU activities), then one plain step for the reference split. Printed:

* the step's split (``time/*``) for each of the three steps, so the profilers' overhead shows;
* cProfile: the functions with the largest cumulative time, as % of the profiled step;
* torch ops by self CPU time, grouped (matmul, attention, softmax / log-softmax, element-wise,
  normalisation, optimizer, copies and allocation, sampling), as % of the profiled step, and
  the top ops with their matmul FLOP rate where torch reports FLOPs (``with_flops=True``);
* the machine's float32 matmul rate measured in the same process (``bench_vs_trl.matmul_flops_per_s``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_vs_trl as bvt  # noqa: E402

GROUPS = [  # (group, substrings of aten op names), first match wins
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul")),
    ("attention", ("scaled_dot_product", "_flash_attention", "attention")),
    ("softmax / logsumexp", ("softmax", "logsumexp", "aten::exp", "aten::log")),
    ("normalisation", ("rsqrt", "aten::pow", "aten::mean", "layer_norm", "rms_norm")),
    ("optimizer", ("_foreach", "adam", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")),
    ("sampling", ("multinomial", "aten::sort", "aten::topk", "exponential", "aten::argmax", "aten::cumsum")),
    ("copies / allocation", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::cat", "aten::empty", "aten::zeros",
                             "aten::index", "aten::clone", "aten::contiguous", "aten::fill_", "aten::gather",
                             "aten::scatter", "aten::select", "aten::slice", "aten::where", "aten::masked")),
    ("element-wise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::neg", "aten::sum",
                      "aten::clamp", "aten::sigmoid", "aten::max", "aten::min", "aten::abs", "aten::eq",
                      "aten::ne", "aten::lt", "aten::gt", "aten::ge", "aten::le")),
]


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=list(bvt.SCALES), default="compute")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top", type=int, default=25, help="rows per table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    import torch

    from grpo import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    work = bvt.SCALES[args.scale]["work"]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="profile_step_"))
    from grpo.tiny import save_tiny_model

    model = save_tiny_model(root / "model", **bvt.SCALES[args.scale]["model"])
    peak = bvt.matmul_flops_per_s(bvt.SCALES[args.scale]["model"]["hidden_size"])
    n_profiled = {"cprofile": args.warmup, "torch": args.warmup + 1}
    results: dict = {}

    class Profiled(GRPOTrainer):
        def train_step(self, log):
            which = next((k for k, v in n_profiled.items() if v == self.step), None)
            if which == "cprofile":
                prof = cProfile.Profile()
                t0 = time.perf_counter()
                prof.enable()
                m = super().train_step(log)
                prof.disable()
                results["cprofile"] = (prof, time.perf_counter() - t0)
            elif which == "torch":
                from torch.profiler import ProfilerActivity, profile

                t0 = time.perf_counter()
                with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
                    m = super().train_step(log)
                results["torch"] = (prof, time.perf_counter() - t0)
            else:
                m = super().train_step(log)
            results.setdefault("splits", []).append((which or "plain", {k: v for k, v in m.items()
                                                                       if k.startswith("time/")}))
            return m

    config = GRPOConfig(
        output_dir=str(root / "run"), seed=0, max_steps=args.warmup + 3, num_generations=8, prompts_per_step=4,
        rollout="hf", max_prompt_length=160, max_completion_length=work["max_completion_length"],
        temperature=1.0, beta=0.001, aggregation="token_mean", learning_rate=1e-5, adam_betas=(0.9, 0.99),
        max_grad_norm=1.0, micro_batch_size=work["micro_batch_size"], dtype="float32", logging_steps=1,
        log_completions=0, save_final_model=False, progress_bar=False)
    trainer = Profiled(str(model), bvt._rewards("hf"), bvt.math_rows(), config)
    try:
        trainer.train()
    finally:
        trainer.close()

    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.threads} torch thread(s); "
          f"scale {args.scale}; float32 matmul rate {peak / 1e9:.1f} GFLOP/s\n")
    keys = ["time/generate", "time/logprobs", "time/score", "time/score_wait", "time/train", "time/sync",
            "time/step"]
    print("| step | " + " | ".join(k.split("/")[1] for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for which, split in results["splits"]:
        print(f"| {which} | " + " | ".join(f"{split.get(k, 0):.2f}" for k in keys) + " |")

    prof, total = results["cprofile"]
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream)
    rows = []
    for (file, line, fn), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        short = file.split("site-packages/")[-1].split("/src/")[-1]
        rows.append((ct, f"{short}:{line} {fn}"))
    rows.sort(reverse=True)
    print(f"\ncProfile, one step ({total:.2f} s with the profiler on): cumulative time, % of the step\n")
    print("| % step | s | function |\n|---|---|---|")
    for ct, name in rows[:args.top]:
        print(f"| {100 * ct / total:.1f} | {ct:.2f} | `{name}` |")

    prof, total = results["torch"]
    events = prof.key_averages()
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total / 1e6
    print(f"\ntorch.profiler, one step ({total:.2f} s with the profiler on): self CPU time of torch ops by "
          "group, % of the step (the rest is Python and framework code outside torch ops)\n")
    print("| group | s | % step |\n|---|---|---|")
    for g, s in sorted(groups.items(), key=lambda x: -x[1]):
        print(f"| {g} | {s:.2f} | {100 * s / total:.1f} |")
    print(f"| (outside torch ops) | {total - sum(groups.values()):.2f} | "
          f"{100 * (total - sum(groups.values())) / total:.1f} |")
    print("\n| op | calls | self s | % step | GFLOP/s (matmuls) |\n|---|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        s = e.self_cpu_time_total / 1e6
        rate = f"{e.flops / s / 1e9:.1f}" if getattr(e, "flops", 0) and s > 0 else "-"
        print(f"| `{e.key}` | {e.count} | {s:.2f} | {100 * s / total:.1f} | {rate} |")
    os._exit(0)


if __name__ == "__main__":
    main()
