"""Time to a target held-out accuracy: grpo.GRPOTrainer vs trl.GRPOTrainer on the lab task.

    .venv/bin/python examples/lab_cpu.py --seed 0 --steps 1 --output-dir runs/lab_warmup   # ~500 s
    .venv/bin/python benchmarks/time_to_target.py --start-model runs/lab_warmup/warmup_model \\
        --seeds 0,1,2 --targets 0.25,0.3 --eval-every 1 --max-steps 30

Both trainers start from the same model (the lab task's warm-up, ``examples/lab_cpu.py``), train
on the same rows (``make_lab_dataset``, levels 1-4, seeded) with the same reward objects
(MathReward + 0.1 x FormatReward) and the lab run's settings, and are evaluated by the same
function, :func:`greedy_accuracy`: greedy decoding (``model.generate``, no sampling) of the 200
held-out problems (50 per level), scored by MathReward. The evaluation runs every ``--eval-every``
steps inside a ``transformers.TrainerCallback`` that both trainers call at ``on_step_end``; its
time is excluded from the wall time (the clock stops while it runs), so "wall time" is training
only: data, generation, scoring, log-probs, update, logging. A run stops at the first evaluation
at or above the highest of ``--targets`` (or at ``--max-steps``); its time to a target is the
training wall time up to the first evaluation at or above it.

The clock starts at ``on_train_begin``, after the trainer is built, and after the shared scoring
pool (:mod:`grpo.rewards.pool`, where both trainers' MathReward scores) has started its workers
(by scoring one step's worth of items): they take 3-5 s to start on this machine, once per
process, whoever calls them first (one item starts one worker, a batch the rest). Left in,
it lands in both trainers' first step and, with targets reached in 4-10 steps, dominates the
comparison; ``--cold-pool`` leaves it in.

Settings matched (lab run -> trl 1.16 option), as in ``bench_vs_trl.py``:

* G = 8, 8 prompts per step (64 completions), one generation per step, one optimizer pass over
  the whole step (mu = 1, no minibatches): trl ``per_device_train_batch_size = 64``,
  ``gradient_accumulation_steps = steps_per_generation = 1``, ``num_iterations = 1``;
* completions up to 64 tokens, temperature 1, top-p 1, no top-k;
* ``loss.aggregation="token_mean"`` = trl ``loss_type="dapo"``; clip 0.2 / 0.28 (DAPO
  clip-higher) = trl ``epsilon=0.2, epsilon_high=0.28``; ``beta=0`` (no reference model);
* ``advantage_estimator="grpo"`` = trl ``scale_rewards="group"``;
* reward weights [1.0, 0.1] = trl ``reward_weights``;
* AdamW lr 1e-4, betas (0.9, 0.99), no weight decay, constant schedule, no warm-up, clip 1.0;
* fp32, one torch thread, no gradient checkpointing; both log metrics every step.

What differs and is not matched: the prompt order (each trainer's own seeded sampler), and the
sampled completions (each trainer's own generator and random stream), so the two runs of a seed
are two draws of the same algorithm, not the same trajectory. Steps to target therefore vary by
trainer and seed as much as by speed; the table shows both, and the time per step.

Each (seed, trainer) runs in a fresh subprocess, the two trainers of a seed one after the other
(alternating who goes first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPLS = ("trl", "grpo")
LEVELS = (1, 2, 3, 4)


# ------------------------------------------------------------------------------- evaluator
def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 64, batch: int = 100) -> float:
    """Held-out greedy accuracy: the fraction of ``rows`` whose greedy completion MathReward
    scores 1. The same function evaluates both trainers' models."""
    import torch

    from grpo.rewards import MathReward

    reward = MathReward()
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    correct = 0
    try:
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
                     for r in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += sum(reward.score(c, **r) == 1.0 for c, r in zip(completions, chunk, strict=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return correct / len(rows)


def make_callback(args, tokenizer, held_out: list[dict], record: list[dict]):
    """A TrainerCallback (both trainers call it after every step) that evaluates every
    ``eval_every`` steps with the clock stopped and stops training at the target."""
    from transformers import TrainerCallback

    class TimeToTarget(TrainerCallback):
        def __init__(self):
            self.start = None
            self.paused = 0.0  # seconds spent evaluating, excluded from the wall time

        def on_train_begin(self, a, state, control, model=None, **kw):
            if not args.cold_pool:
                from grpo.rewards import MathReward

                n = args.prompts_per_step * args.num_generations  # a step's batch: every worker starts
                MathReward()(completions=["<answer>1</answer>"] * n, answer=["1"] * n)
            self.start = time.perf_counter()
            self._evaluate(0, model)

        def on_step_end(self, a, state, control, model=None, **kw):
            step = state.global_step
            if step % args.eval_every == 0 or step >= args.max_steps:
                acc = self._evaluate(step, model)
                if acc >= max(args.targets) or step >= args.max_steps:
                    control.should_training_stop = True

        def _evaluate(self, step: int, model) -> float:
            t0 = time.perf_counter()
            train_s = t0 - self.start - self.paused
            acc = greedy_accuracy(model, tokenizer, held_out, args.max_completion_length)
            self.paused += time.perf_counter() - t0
            record.append({"step": step, "train_s": train_s, "accuracy": acc,
                           "eval_s": time.perf_counter() - t0})
            print(f"step {step:4d}  train {train_s:7.1f} s  held-out greedy {acc:.3f}", flush=True)
            return acc

    return TimeToTarget()


# ------------------------------------------------------------------------------- children
def run_trl(args, train, callback) -> None:
    import torch
    import trl
    from datasets import Dataset

    from grpo.rewards import FormatReward, MathReward

    n = args.prompts_per_step * args.num_generations
    config = trl.GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl_run"), use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        model_init_kwargs={"dtype": torch.float32}, gradient_checkpointing=False,
        max_steps=args.max_steps, per_device_train_batch_size=n, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=1.0, top_p=1.0, top_k=0,
        num_iterations=1, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        reward_weights=[1.0, 0.1], mask_truncated_completions=False,
        learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        logging_steps=1, log_completions=False, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, use_vllm=False,
    )
    trainer = trl.GRPOTrainer(model=args.start_model, reward_funcs=[MathReward(), FormatReward()],
                              train_dataset=Dataset.from_list(train), args=config, callbacks=[callback])
    trainer.train()


def run_grpo(args, train, callback) -> None:
    from grpo import GRPOConfig, GRPOTrainer
    from grpo.rewards import FormatReward, MathReward

    config = GRPOConfig(
        output_dir=str(Path(args.workdir) / "grpo_run"), seed=args.seed, max_steps=args.max_steps,
        overwrite_output_dir=True,
        rollout={"backend": "hf", "num_generations": args.num_generations,
                 "prompts_per_step": args.prompts_per_step, "advantage_estimator": "grpo"},
        sampling={"max_tokens": args.max_completion_length, "temperature": 1.0},
        loss={"beta": 0.0, "eps_low": 0.2, "eps_high": 0.28, "aggregation": "token_mean"},
        optim={"learning_rate": args.lr, "weight_decay": 0.0, "adam_betas": (0.9, 0.99),
               "lr_schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0, "num_iterations": 1},
        forward={"micro_batch_size": args.prompts_per_step * args.num_generations,
                 "torch_threads": args.threads, "gradient_checkpointing": False, "dtype": "float32"},
        reward={"weights": [1.0, 0.1]}, log={"steps": 1, "progress_bar": False},
        checkpoint={"final_model": False},
    )
    trainer = GRPOTrainer(args.start_model, [MathReward(), FormatReward()], train, config, callbacks=[callback])
    try:
        trainer.train()
    finally:
        trainer.close()


def child(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from grpo.recipes.lab_task import make_lab_dataset

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = make_lab_dataset(LEVELS, split="train", seed=args.seed)
    held_out = make_lab_dataset(LEVELS, split="test", seed=0, size=args.eval_per_level)
    tokenizer = AutoTokenizer.from_pretrained(args.start_model)
    record: list[dict] = []
    callback = make_callback(args, tokenizer, held_out, record)
    (run_trl if args.impl == "trl" else run_grpo)(args, train, callback)
    print("RESULT " + json.dumps({"curve": record}), flush=True)
    os._exit(0)


# --------------------------------------------------------------------------------- parent
def spawn(args, impl: str, seed: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--impl", impl, "--seed", str(seed),
           "--workdir", str(work), "--start-model", str(args.start_model)]
    cmd += ["--targets", ",".join(map(str, args.targets))] + (["--cold-pool"] if args.cold_pool else [])
    for k in ("eval_every", "max_steps", "eval_per_level", "num_generations", "prompts_per_step",
              "max_completion_length", "lr", "threads"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    t = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    (work / "stdout.txt").write_text(proc.stdout)
    (work / "stderr.txt").write_text(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-400:]}


def time_to_target(curve: list[dict], target: float) -> tuple[float, int] | None:
    """(training seconds, step) at the first evaluation reaching ``target``, or None."""
    for p in curve:
        if p["accuracy"] >= target:
            return p["train_s"], p["step"]
    return None


def report(args, results: dict) -> str:
    lines = [f"held-out greedy accuracy on {4 * args.eval_per_level} problems, evaluated every {args.eval_every} "
             f"step(s) (eval time excluded), at most {args.max_steps} steps; scoring pool "
             f"{'started inside the clock' if args.cold_pool else 'started before the clock'}."]
    for target in args.targets:
        lines += ["", f"Target {target:.0%}:", "",
                  "| seed | trl steps | trl s | grpo steps | grpo s | grpo/trl time |",
                  "|---:|---:|---:|---:|---:|---:|"]
        ratios = []
        for seed in args.seeds:
            cells, hit = [], {}
            for impl in IMPLS:
                r = results[seed][impl]
                if "error" in r:
                    cells += ["error", "-"]
                    continue
                tt = time_to_target(r["curve"], target)
                last = r["curve"][-1]
                if tt is None:
                    cells += [f"> {last['step']}", f"> {last['train_s']:.0f}"]
                else:
                    hit[impl] = tt[0]
                    cells += [str(tt[1]), f"{tt[0]:.1f}"]
            ratio = hit["grpo"] / hit["trl"] if len(hit) == 2 else None
            if ratio is not None:
                ratios.append(ratio)
            lines.append(f"| {seed} | " + " | ".join(cells) + f" | {'-' if ratio is None else f'{ratio:.2f}x'} |")
        if ratios:
            lines += ["", f"grpo/trl time to {target:.0%}: mean {statistics.mean(ratios):.2f}x over "
                          f"{len(ratios)} seed(s) ({', '.join(f'{x:.2f}' for x in ratios)})"]
    lines += ["", "Seconds per step (training wall time / steps, whole run): " + "; ".join(
        f"seed {seed} " + ", ".join(
            f"{impl} {r['curve'][-1]['train_s'] / r['curve'][-1]['step']:.2f}"
            for impl in IMPLS if "error" not in (r := results[seed][impl]) and r["curve"][-1]["step"])
        for seed in args.seeds)]
    lines += ["", "Curves (step: held-out greedy accuracy):"]
    for seed in args.seeds:
        for impl in IMPLS:
            r = results[seed][impl]
            if "error" in r:
                lines.append(f"- seed {seed} {impl}: {r['error']}")
            else:
                pts = ", ".join(f"{p['step']}: {p['accuracy']:.3f}" for p in r["curve"])
                lines.append(f"- seed {seed} {impl}: {pts}")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start-model", required=True, help="the lab warm-up model (examples/lab_cpu.py's warmup_model)")
    p.add_argument("--seeds", default="0,1,2", help="comma list")
    p.add_argument("--targets", type=_floats, default=[0.25, 0.3],
                   help="comma list of held-out greedy accuracies to time; a run stops at the highest")
    p.add_argument("--cold-pool", action="store_true",
                   help="start the clock before the scoring pool starts (module docstring)")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate every E steps")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--eval-per-level", type=int, default=50)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per (seed, trainer) subprocess")
    p.add_argument("--keep", default=None, help="folder for runs and logs (default: temporary)")
    p.add_argument("--json", default=None, help="also write the raw curves here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="time_to_target_"))
    load = os.getloadavg()
    print(f"# {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start; "
          f"runs in {root}", flush=True)
    results: dict = {}
    t0 = time.perf_counter()
    for i, seed in enumerate(args.seeds):
        results[seed] = {}
        for impl in (IMPLS if i % 2 == 0 else IMPLS[::-1]):
            res = spawn(args, impl, seed, root / f"seed{seed}_{impl}")
            results[seed][impl] = res
            if "error" in res:
                summary = res["error"]
            else:
                tts = [(t, time_to_target(res["curve"], t)) for t in args.targets]
                summary = "; ".join(f"{t:.0%} " + ("not reached" if tt is None else f"at step {tt[1]}, {tt[0]:.1f} s")
                                    for t, tt in tts)
            print(f"# [{time.perf_counter() - t0:5.0f} s] seed {seed} {impl:4s}: {summary}", flush=True)
    load = os.getloadavg()
    print(f"# load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at end; total "
          f"{time.perf_counter() - t0:.0f} s\n")
    print(report(args, results))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
