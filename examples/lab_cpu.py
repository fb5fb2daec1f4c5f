"""The lab run: the CPU R1-Zero recipe on a task with headroom, the unit an ablation sweep runs.

    .venv/bin/python examples/lab_cpu.py --seed 0 --steps 150
    .venv/bin/python examples/lab_cpu.py --set loss.objective=cispo --output-dir runs/lab_cispo
    .venv/bin/python examples/lab_cpu.py --quick           # smoke test (seconds)

Same model, rewards and GRPO settings as examples/r1_zero_cpu.py (a 0.5M-parameter Llama with a
character tokenizer, an 800-step warm-up on the sloppy teacher, then GRPO with MathReward +
0.1 x FormatReward, G=8, 8 prompts a step, DAPO clip-higher, beta=0, lr 1e-4), on the lab task
(``grpo.recipes.lab_task``): chains of 3-5 digits joined by + (levels 1-2) or + and - (levels 3-4).
The demo's task saturates at ~100% by step 50; on this one the same recipe plateaus at ~32-36%
held-out greedy accuracy (L2 ~65%, L3 ~20%, L4 ~5-10%; benchmarks/README.md, "Lab task
headroom"), so a change of algorithm has room to show. A longer warm-up raises that plateau
(``--warmup-steps 2400``: ~66%, ``7200``: ~97%; "More compute keeps paying" there). ~11 min per
run on a loaded 2-core machine (warm-up ~8 min; 150 GRPO steps ~1.5 min); ``--start-model`` reuses
a warm-up. ``--hidden-size`` / ``--layers`` size the model (heads of 32 dims).

Departures from the R1-Zero demo: completions capped at 64 tokens (a level-4 worked chain is up
to ~50), held-out evaluation of 50 problems per level (``eval.by: [level]``) with 2 samples each.

Writes to ``--output-dir``: ``eval.jsonl`` (the trainer's evaluations, per level under
``eval/greedy_accuracy/level=N``), ``summary.json`` (held-out greedy accuracy overall and per
level, before and after GRPO; steps, seconds) and the run report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", default=None, help="run folder (default runs/lab_cpu_seed<N>)")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps (default 150; --quick: 2)")
    ap.add_argument("--levels", type=_levels, default=[1, 2, 3, 4], help="comma-separated levels (default 1,2,3,4)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default 800; --quick: 5")
    ap.add_argument("--eval-per-level", type=int, default=None, help="held-out problems per level (default 50; --quick: 2)")
    ap.add_argument("--eval-steps", type=int, default=50, help="evaluate every N GRPO steps")
    ap.add_argument("--hidden-size", type=int, default=128,
                    help="model width (default 128: the demo's 0.55M model; heads of 32 dims)")
    ap.add_argument("--layers", type=int, default=2, help="model depth (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: this model's matmuls are tiny)")
    ap.add_argument("--start-model", default=None,
                    help="skip the warm-up and start GRPO from this saved model (e.g. another run's warmup_model)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any config override, repeatable: --set loss.objective=cispo --set rollout.dynamic_sampling=true")
    ap.add_argument("--quick", action="store_true",
                    help="tiny settings for a smoke test (seconds); flags given explicitly keep their value")
    a = ap.parse_args()
    for name, full, quick in (("steps", 150, 2), ("warmup_steps", 800, 5), ("eval_per_level", 50, 2)):
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)

    import torch

    from grpo import GRPOConfig, GRPOTrainer
    from grpo.config import apply_overrides
    from grpo.recipes.lab_task import make_lab_dataset
    from grpo.recipes.tiny_task import warmup_sft
    from grpo.report import write_report
    from grpo.rewards import FormatReward, MathReward
    from grpo.tiny import build_char_tokenizer, build_tiny_llama
    from grpo.tracking import read_jsonl

    run = Path(a.output_dir or f"runs/lab_cpu_seed{a.seed}")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    tokenizer = build_char_tokenizer()
    if a.hidden_size % 32:
        ap.error(f"--hidden-size must be a multiple of 32 (heads of 32 dims), got {a.hidden_size}")
    model = build_tiny_llama(tokenizer, hidden_size=a.hidden_size, num_layers=a.layers,
                             num_heads=a.hidden_size // 32, head_dim=32, seed=a.seed)
    train = make_lab_dataset(a.levels, split="train", seed=a.seed)
    held_out = make_lab_dataset(a.levels, split="test", seed=0, size=a.eval_per_level)  # the same for every seed
    print(f"[build] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; levels {a.levels}: "
          f"{len(train)} train / {len(held_out)} held-out problems", flush=True)

    if a.start_model:
        start = Path(a.start_model)
    else:
        warmup_sft(model, tokenizer, train, steps=a.warmup_steps, seed=a.seed)
        start = run / "warmup_model"
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(start)
        tokenizer.save_pretrained(start)
    t_warm = time.perf_counter() - t0

    config = GRPOConfig(
        output_dir=str(run), seed=a.seed, max_steps=a.steps, overwrite_output_dir=True,
        rollout={"backend": "hf", "num_generations": 8, "prompts_per_step": 8},
        sampling={"max_tokens": 64, "temperature": 1.0},
        loss={"beta": 0.0, "eps_low": 0.2, "eps_high": 0.28, "aggregation": "token_mean"},
        optim={"learning_rate": 1e-4}, forward={"micro_batch_size": 64, "torch_threads": a.threads},
        reward={"weights": [1.0, 0.1]}, eval={"steps": a.eval_steps, "samples": 2, "by": ["level"]},
        log={"progress_bar": False}, checkpoint={"final_model": True})
    if a.set:
        config = GRPOConfig(**apply_overrides(config.to_dict(), a.set, config_at=""))
    trainer = GRPOTrainer(str(start), [MathReward(), FormatReward()], train, config, eval_dataset=held_out)
    try:
        trainer.train()
    finally:
        trainer.close()
    evals = read_jsonl(run / "eval.jsonl")
    before, after = evals[0], evals[-1]
    report = write_report(run)

    def per_level(ev: dict) -> dict[str, float]:
        return {str(lv): ev[f"eval/greedy_accuracy/level={lv}"] for lv in a.levels}

    summary = {
        "seed": a.seed, "grpo_steps": a.steps, "levels": a.levels, "overrides": a.set,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "held_out_greedy_accuracy_before": before["eval/greedy_accuracy"],
        "held_out_greedy_accuracy_after": after["eval/greedy_accuracy"],
        "held_out_greedy_accuracy_by_level_before": per_level(before),
        "held_out_greedy_accuracy_by_level_after": per_level(after),
        "held_out_per_level": a.eval_per_level,
        "curve": [{"step": ev.get("step"), "greedy_accuracy": ev["eval/greedy_accuracy"], "by_level": per_level(ev)}
                  for ev in evals],
        "seconds_warmup": round(t_warm, 1), "seconds_total": round(time.perf_counter() - t0, 1),
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    levels = "  ".join(f"L{lv} {per_level(before)[str(lv)]:.0%}->{per_level(after)[str(lv)]:.0%}" for lv in a.levels)
    print(f"\nheld-out greedy accuracy: {before['eval/greedy_accuracy']:.1%} before GRPO -> "
          f"{after['eval/greedy_accuracy']:.1%} after {a.steps} steps ({levels})")
    print(f"total {summary['seconds_total']:.0f} s; report: {report}")


if __name__ == "__main__":
    main()
