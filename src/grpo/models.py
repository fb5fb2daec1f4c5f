"""Building the trainable policy, its optimizer and its generator from a GRPOConfig."""

from __future__ import annotations

import ctypes
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from grpo.config import GRPOConfig
from grpo.parallel import is_sharded
from grpo.rollout.weights import is_peft_model

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 1 << 30


def keep_freed_cpu_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse: what a CPU training step allocates and
    frees (activations of ~10 MB and more per layer and micro-batch) then comes back from the
    heap instead of fresh ``mmap`` pages that the kernel must fault in and zero on every step.

    By default glibc serves such blocks by ``mmap`` (or trims the heap top above 128 KB free),
    so every forward + backward re-faults its activations: 150,000 page faults and ~0.3 s of a
    6.3 s training pass at the compute scale of ``benchmarks/bench_vs_trl.py``, none after this
    (``benchmarks/README.md``). Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB for
    the whole process: blocks up to 1 GiB come from the heap, and the heap is not trimmed below
    1 GiB of free space, so the process keeps its peak heap (as a GPU caching allocator keeps its
    peak). No effect on GPU memory; False (nothing done) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    done = mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW) == 1
    logger.info("glibc malloc keeps freed blocks up to 1 GiB for reuse (GRPOConfig.cpu_keep_freed_memory): %s",
                "set" if done else "mallopt refused")
    return done


def model_dtype(cfg: GRPOConfig) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.float32  # fp32 master weights; bf16 compute comes from autocast (mixed_precision)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]


def load_policy(model: str | torch.nn.Module, tokenizer: Any, peft_config: Any, cfg: GRPOConfig,
                device: torch.device) -> tuple[torch.nn.Module, Any, str | None]:
    """(model on ``device``, tokenizer, path the weights came from or None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = None
    if isinstance(model, (str, Path)):
        path = str(model)
        looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1
        if looks_local and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"model {path!r} is not a local folder (and not an 'org/name' hub id)")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=model_dtype(cfg))
    elif not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a path or a torch.nn.Module, got {type(model).__name__}")
    if tokenizer is None:
        source = path or getattr(getattr(model, "config", None), "_name_or_path", None)
        if not source:
            raise ValueError("pass tokenizer=... when model is a loaded model without a saved path")
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.to(device), tokenizer, path


def make_optimizer_and_scheduler(params: list[torch.nn.Parameter], cfg: GRPOConfig):
    """AdamW and a warm-up + constant / cosine / linear schedule over all optimizer steps."""
    from transformers import get_scheduler

    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)
    total = cfg.max_steps * cfg.derived().optimizer_steps_per_step
    warmup = cfg.warmup_steps or round(cfg.warmup_ratio * total)
    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}[cfg.lr_schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    return optimizer, scheduler


def make_generator(cfg: GRPOConfig, model: torch.nn.Module, tokenizer: Any, model_path: str | None):
    """The generator ``cfg.rollout`` names. vLLM engines load from a path: a model given as an
    object is saved to a temporary folder first (its weights are then kept in sync anyway)."""
    from grpo.rollout import HFGenerator

    if cfg.rollout == "hf":
        # Sharded models gather each layer's weights in forward: every process must run the same
        # number of forwards, so generation keeps stepping until all processes' rows are done.
        return HFGenerator(model, tokenizer, synced_gpus=is_sharded(model),
                           chat_template_kwargs=cfg.chat_template_kwargs)
    if cfg.rollout == "vllm":
        from grpo.rollout import VLLMGenerator

        path = model_path
        if path is None or is_peft_model(model):
            base = model.get_base_model() if is_peft_model(model) else model
            path = model_path or tempfile.mkdtemp(prefix="grpo-vllm-init-")
            if model_path is None:
                base.save_pretrained(path)
                tokenizer.save_pretrained(path)
        return VLLMGenerator(path, tokenizer=tokenizer, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                             tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                             enable_sleep_mode=cfg.vllm_sleep, enforce_eager=cfg.vllm_enforce_eager,
                             max_model_len=cfg.max_prompt_length + cfg.max_completion_length, seed=cfg.seed,
                             dtype=cfg.vllm_dtype, chat_template_kwargs=cfg.chat_template_kwargs)
    from grpo.rollout import VLLMServerGenerator

    return VLLMServerGenerator(host=cfg.vllm_server_host, port=cfg.vllm_server_port, tokenizer=tokenizer,
                               chat_template_kwargs=cfg.chat_template_kwargs)


def mixed_precision(cfg: GRPOConfig, *, cuda: bool | None = None, bf16_supported: bool | None = None) -> str:
    """accelerate's ``mixed_precision`` for the run: ``dtype="auto"`` on a CUDA GPU with bf16
    support means fp32 master weights and bfloat16 autocast ("bf16"); everything else "no" (an
    explicit dtype already puts the weights, and so the compute, in that dtype).

    >>> mixed_precision(GRPOConfig(), cuda=True, bf16_supported=True)
    'bf16'
    >>> mixed_precision(GRPOConfig(), cuda=False, bf16_supported=False)
    'no'
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
    if bf16_supported is None:
        bf16_supported = cuda and torch.cuda.is_bf16_supported()
    return "bf16" if cfg.dtype == "auto" and cuda and bf16_supported else "no"
