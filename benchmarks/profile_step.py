"""Where one grpo GRPO step spends its time, by Python function and by torch op (cProfile).

    PYTHONPATH=src python benchmarks/profile_step.py                  # compute scale, ~2 min on 2 cores
    PYTHONPATH=src python benchmarks/profile_step.py --scale tiny --top 30

Same model, data, rewards and settings as ``bench_vs_trl.py --scale S --rows hf`` (its
``SCALES`` and helpers). ``--warmup`` unprofiled steps, then one step under cProfile, then one
plain step. Printed:

* the step's split (``time/*``) of every step, so the profiler's overhead shows;
* cumulative time of the functions that make up the step (grpo's own, transformers' model and
  generation loop, autograd's backward), as % of the profiled step;
* self time of the functions and built-in torch calls with the most (``torch._C._nn.linear`` is
  the matmuls of forward passes, ``run_backward`` the whole C++ backward), as % of the step;
* the machine's float32 matmul rate measured in the same process (``bench_vs_trl.matmul_flops_per_s``).

(torch.profiler over a whole step was tried: on this 2-core machine it grew past 15 GB while
aggregating the events and slowed generation 5x, so it is not used.)
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_vs_trl as bvt  # noqa: E402

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
    n_profiled = {"cprofile": args.warmup}
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
            else:
                m = super().train_step(log)
            results.setdefault("splits", []).append((which or "plain", {k: v for k, v in m.items()
                                                                       if k.startswith("time/")}))
            return m

    config = GRPOConfig(
        output_dir=str(root / "run"), seed=0, max_steps=args.warmup + 2,
        rollout={"backend": "hf", "num_generations": 8, "prompts_per_step": 4, "max_prompt_length": 160},
        sampling={"max_tokens": work["max_completion_length"], "temperature": 1.0},
        loss={"beta": 0.001, "aggregation": "token_mean"},
        optim={"learning_rate": 1e-5, "adam_betas": (0.9, 0.99), "max_grad_norm": 1.0},
        forward={"micro_batch_size": work["micro_batch_size"], "dtype": "float32"},
        log={"steps": 1, "completions": 0, "progress_bar": False}, checkpoint={"final_model": False})
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
    rows = []
    for (file, line, fn), (_cc, calls, self_s, cum_s, _callers) in pstats.Stats(prof).stats.items():
        short = file.split("site-packages/")[-1].split("/src/")[-1]
        rows.append({"name": f"{short}:{line} {fn}" if line else fn, "calls": calls, "self": self_s, "cum": cum_s,
                     "file": short})
    wrappers = ("torch/nn/modules/module.py", "utils/generic.py", "output_capturing.py", "_contextlib.py",
                "modeling_layers.py", "autograd/__init__.py", "autograd/graph.py", "torch/_tensor.py")
    steps = [r for r in rows if r["file"].startswith(("grpo/", "transformers/")) or "run_backward" in r["name"]]
    steps = [r for r in steps if not r["file"].endswith(wrappers)]
    print(f"\ncProfile, one step ({total:.2f} s with the profiler on): cumulative time, % of the step\n")
    print("| % step | s | calls | function |\n|---|---|---|---|")
    for r in sorted(steps, key=lambda r: -r["cum"])[:args.top]:
        print(f"| {100 * r['cum'] / total:.1f} | {r['cum']:.2f} | {r['calls']} | `{r['name']}` |")
    print(f"\nSelf time (time inside the function itself; built-in torch calls are the ops), % of the step\n")
    print("| % step | s | calls | function |\n|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["self"])[:args.top]:
        print(f"| {100 * r['self'] / total:.1f} | {r['self']:.2f} | {r['calls']} | `{r['name']}` |")
    os._exit(0)


if __name__ == "__main__":
    main()
