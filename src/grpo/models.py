"""Building the trainable policy, its optimizer and its generator from GRPOConfig sections."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from grpo.config import ForwardConfig, GRPOConfig, OptimConfig, VLLMConfig
from grpo.parallel import is_sharded
from grpo.rollout.weights import active_adapter, is_peft_model


def model_dtype(dtype: str) -> torch.dtype:
    """The weights' dtype for ``forward.dtype`` (``"auto"``: float32 master weights)."""
    if dtype == "auto":
        return (
            torch.float32
        )  # fp32 master weights; bf16 compute comes from autocast (mixed_precision)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def check_model_path(path: str) -> str:
    """``path`` itself, unless it looks like a local folder (not an ``org/name`` hub id) that
    does not exist: then FileNotFoundError.

    >>> check_model_path("Qwen/Qwen2.5-0.5B")
    'Qwen/Qwen2.5-0.5B'
    """
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(
            f"model {path!r} is not a local folder (and not an 'org/name' hub id)"
        )
    return path


def is_adapter_dir(path: str | Path) -> bool:
    """A saved peft adapter (``adapter_config.json``, no ``config.json``): what a LoRA run's
    ``final/`` holds unless ``checkpoint.merge_lora``."""
    folder = Path(path).expanduser()
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def load_adapter_merged(path: str, dtype: str) -> torch.nn.Module:
    """The adapter's base model (``base_model_name_or_path`` in ``adapter_config.json``) with the
    adapter merged in: a plain transformers model, so that what loads it (evaluation, sampling,
    SFT, vLLM from a saved copy) needs no peft."""
    from peft import AutoPeftModelForCausalLM

    return AutoPeftModelForCausalLM.from_pretrained(
        path, dtype=model_dtype(dtype)
    ).merge_and_unload()


def load_policy(
    model: str | torch.nn.Module,
    tokenizer: Any,
    peft_config: Any,
    forward: ForwardConfig,
    device: torch.device,
) -> tuple[torch.nn.Module, Any, str | None]:
    """(model on ``device``, tokenizer, path the weights came from or None); ``forward`` gives
    the dtype and gradient checkpointing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = None
    if isinstance(model, (str, Path)) and is_adapter_dir(model):
        adapter = str(model)  # its tokenizer is saved beside it; no path: vLLM gets a saved copy
        model = load_adapter_merged(adapter, forward.dtype)
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(adapter)
    elif isinstance(model, (str, Path)):
        path = check_model_path(str(model))
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


def make_optimizer_and_scheduler(
    params: list[torch.nn.Parameter], optim: OptimConfig, *, total_steps: int
):
    """AdamW and a warm-up + constant / cosine / linear schedule over ``total_steps`` optimizer
    steps (the trainer's: ``max_steps x derived().optimizer_steps_per_step``)."""
    from transformers import get_scheduler

    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(
        params, lr=optim.learning_rate, betas=optim.adam_betas, weight_decay=optim.weight_decay
    )
    warmup = optim.warmup_steps or round(optim.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}[
        optim.lr_schedule
    ]
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )
    return optimizer, scheduler


def build_generator(
    backend: str,
    vllm: VLLMConfig,
    model: str | torch.nn.Module,
    tokenizer: Any = None,
    *,
    model_path: str | None = None,
    max_model_len: int | None = None,
    seed: int = 0,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The one generator factory: the engine ``backend`` names, set up from the ``vllm`` section,
    for a model given as a path / hub id or as a loaded module (the trainer's policy).

    * ``"hf"``: :class:`grpo.rollout.HFGenerator` samples with the model itself. A path is
      loaded as the trainer loads its policy (:func:`load_policy`: float32 weights, the GPU if
      there is one). A sharded model keeps every process stepping until all rows are done.
    * ``"vllm"``: a colocated :class:`grpo.rollout.VLLMGenerator` loads from a path; a loaded
      module (a peft model: its base) without ``model_path`` is saved to a temporary folder
      first, its weights then kept in sync by the caller (``sync_weights``).
    * ``"vllm_server"``: a running ``trl vllm-serve`` at ``vllm.server_host:server_port``.

    ``max_model_len`` is vLLM's context when ``vllm.max_model_len`` is unset (None: the
    model's); ``seed`` seeds the engine; ``chat_template_kwargs`` go to every chat template.
    """
    from grpo.rollout import HFGenerator

    template = dict(chat_template_kwargs or {})
    # a LoRA policy pushes its adapter alone (vllm.lora_sync='adapter') or merged weights
    adapter = (
        isinstance(model, torch.nn.Module) and is_peft_model(model) and vllm.lora_sync == "adapter"
    )
    if backend == "vllm_server":  # the model is the server's
        from grpo.rollout import VLLMServerGenerator

        return VLLMServerGenerator(
            host=vllm.server_host,
            port=vllm.server_port,
            tokenizer=tokenizer,
            chat_template_kwargs=template,
            weight_transport=vllm.weight_transport,
            weights_dir=vllm.weights_dir,
            lora=adapter,
        )
    if backend not in ("hf", "vllm"):
        raise ValueError(
            f"unknown rollout backend {backend!r}; choose 'hf', 'vllm' or 'vllm_server'"
        )
    if backend == "vllm" and isinstance(model, (str, Path)) and is_adapter_dir(model):
        # vLLM loads plain weights: the merged model, saved to a temporary folder below
        from transformers import AutoTokenizer

        tokenizer = (
            tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(model))
        )
        model = load_adapter_merged(str(model), ForwardConfig().dtype)
    if not isinstance(model, torch.nn.Module):
        model_path = check_model_path(str(model))
    if backend == "hf":
        if not isinstance(model, torch.nn.Module):
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model, tokenizer, _ = load_policy(model_path, tokenizer, None, ForwardConfig(), device)
        # Sharded models gather each layer's weights in forward: every process must run the same
        # number of forwards, so generation keeps stepping until all processes' rows are done.
        return HFGenerator(
            model, tokenizer, synced_gpus=is_sharded(model), chat_template_kwargs=template
        )
    from grpo.rollout import VLLMGenerator

    path = model_path
    if isinstance(model, torch.nn.Module) and (path is None or is_peft_model(model)):
        base = model.get_base_model() if is_peft_model(model) else model
        path = model_path or tempfile.mkdtemp(prefix="grpo-vllm-init-")
        if model_path is None:
            base.save_pretrained(path)
            tokenizer.save_pretrained(path)
    return VLLMGenerator(
        path,
        tokenizer=tokenizer,
        seed=seed,
        dtype=vllm.dtype,
        gpu_memory_utilization=vllm.gpu_memory_utilization,
        tensor_parallel_size=vllm.tensor_parallel_size,
        enable_sleep_mode=vllm.sleep,
        enforce_eager=vllm.enforce_eager,
        max_model_len=vllm.max_model_len or max_model_len,
        chat_template_kwargs=template,
        lora_adapter=model.peft_config[active_adapter(model)] if adapter else None,
        lora_dir=vllm.weights_dir if adapter else None,
    )


def trainer_generator(
    cfg: GRPOConfig, model: torch.nn.Module, tokenizer: Any, model_path: str | None
) -> Any:
    """:func:`build_generator` as the trainer (and ``grpo eval``, to reproduce its numbers) calls
    it: ``cfg.rollout.backend`` and ``cfg.vllm``, a vLLM context of prompt + completion tokens,
    the run's seed and chat-template variables."""
    return build_generator(
        cfg.rollout.backend,
        cfg.vllm,
        model,
        tokenizer,
        model_path=model_path,
        max_model_len=cfg.rollout.max_prompt_length + cfg.sampling.max_tokens,
        seed=cfg.seed,
        chat_template_kwargs=cfg.rollout.chat_template_kwargs,
    )


def mixed_precision(
    dtype: str, *, cuda: bool | None = None, bf16_supported: bool | None = None
) -> str:
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
