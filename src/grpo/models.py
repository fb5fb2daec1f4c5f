"""Building the trainable policy, its optimizer and its generator from GRPOConfig sections."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from grpo.config import ForwardConfig, GRPOConfig, OptimConfig
from grpo.parallel import is_sharded
from grpo.rollout.weights import is_peft_model

def model_dtype(dtype: str) -> torch.dtype:
    """The weights' dtype for ``forward.dtype`` (``"auto"``: float32 master weights)."""
    if dtype == "auto":
        return torch.float32  # fp32 master weights; bf16 compute comes from autocast (mixed_precision)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_policy(model: str | torch.nn.Module, tokenizer: Any, peft_config: Any, forward: ForwardConfig,
                device: torch.device) -> tuple[torch.nn.Module, Any, str | None]:
    """(model on ``device``, tokenizer, path the weights came from or None); ``forward`` gives
    the dtype and gradient checkpointing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = None
    if isinstance(model, (str, Path)):
        path = str(model)
        looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1
        if looks_local and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"model {path!r} is not a local folder (and not an 'org/name' hub id)")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=model_dtype(forward.dtype))
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
    if forward.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.to(device), tokenizer, path


def make_optimizer_and_scheduler(params: list[torch.nn.Parameter], optim: OptimConfig, *, total_steps: int):
    """AdamW and a warm-up + constant / cosine / linear schedule over ``total_steps`` optimizer
    steps (the trainer's: ``max_steps x derived().optimizer_steps_per_step``)."""
    from transformers import get_scheduler

    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=optim.learning_rate, betas=optim.adam_betas,
                                  weight_decay=optim.weight_decay)
    warmup = optim.warmup_steps or round(optim.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}[optim.lr_schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


def make_generator(cfg: GRPOConfig, model: torch.nn.Module, tokenizer: Any, model_path: str | None):
    """The generator ``cfg.rollout.backend`` names, set up from ``cfg.vllm``. vLLM engines load
    from a path: a model given as an object is saved to a temporary folder first (its weights
    are then kept in sync anyway)."""
    from grpo.rollout import HFGenerator

    backend, vllm, template = cfg.rollout.backend, cfg.vllm, cfg.rollout.chat_template_kwargs
    if backend == "hf":
        # Sharded models gather each layer's weights in forward: every process must run the same
        # number of forwards, so generation keeps stepping until all processes' rows are done.
        return HFGenerator(model, tokenizer, synced_gpus=is_sharded(model),
                           chat_template_kwargs=template)
    if backend == "vllm":
        from grpo.rollout import VLLMGenerator

        path = model_path
        if path is None or is_peft_model(model):
            base = model.get_base_model() if is_peft_model(model) else model
            path = model_path or tempfile.mkdtemp(prefix="grpo-vllm-init-")
            if model_path is None:
                base.save_pretrained(path)
                tokenizer.save_pretrained(path)
        return VLLMGenerator(path, tokenizer=tokenizer, gpu_memory_utilization=vllm.gpu_memory_utilization,
                             tensor_parallel_size=vllm.tensor_parallel_size, enable_sleep_mode=vllm.sleep,
                             enforce_eager=vllm.enforce_eager,
                             max_model_len=cfg.rollout.max_prompt_length + cfg.sampling.max_tokens, seed=cfg.seed,
                             dtype=vllm.dtype, chat_template_kwargs=template)
    from grpo.rollout import VLLMServerGenerator

    return VLLMServerGenerator(host=vllm.server_host, port=vllm.server_port, tokenizer=tokenizer,
                               chat_template_kwargs=template)


def mixed_precision(dtype: str, *, cuda: bool | None = None, bf16_supported: bool | None = None) -> str:
    """accelerate's ``mixed_precision`` for ``forward.dtype``: ``"auto"`` on a CUDA GPU with bf16
    support means fp32 master weights and bfloat16 autocast ("bf16"); everything else "no" (an
    explicit dtype already puts the weights, and so the compute, in that dtype).

    >>> mixed_precision("auto", cuda=True, bf16_supported=True)
    'bf16'
    >>> mixed_precision("auto", cuda=False, bf16_supported=False)
    'no'
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
    if bf16_supported is None:
        bf16_supported = cuda and torch.cuda.is_bf16_supported()
    return "bf16" if dtype == "auto" and cuda and bf16_supported else "no"
