"""Engine-side helpers of :class:`grpo.rollout.VLLMGenerator` and its workarounds for vLLM 0.32.

Kept apart from ``vllm.py`` so that the generator reads as the rollout contract, and each
workaround here names the vLLM behaviour it answers (delete it once vLLM changes):

* :func:`reprocess_tied_layers`: vLLM's layer-wise reload skips tied layers;
* :func:`keep_default_process_group`: in-process ``EngineCore.shutdown`` destroys the default
  ``torch.distributed`` group, which under torchrun is the trainer's;
* :func:`checkpoint_names`: what a sync must cover (vLLM only logs a layer it did not reload);
* :class:`ServerWorkerExtension`: :func:`reprocess_tied_layers` for a ``vllm serve`` server,
  called over its ``/collective_rpc`` after a reload from a path.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn


def config_context_length(model_path: str) -> int | None:
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)


def check_engine_fits(model_path: str, max_model_len: int | None, cpu: bool) -> None:
    """Errors vLLM would raise late or obscurely, raised before the engine starts, naming the
    setting to change: a head size the CPU attention backend lacks, a context longer than the
    model's."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    context = getattr(config, "max_position_embeddings", None)
    if max_model_len is not None and context is not None and max_model_len > context:
        raise ValueError(
            f"max_model_len={max_model_len} exceeds the model's context of {context} tokens "
            "(from the trainer: rollout.max_prompt_length + sampling.max_tokens); lower it"
        )
    if not cpu:
        return
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = list(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):  # another vLLM layout: let the engine decide
        return
    if head_dim is not None and head_dim not in supported:
        raise ValueError(
            f"the model's attention head size is {head_dim}, which vLLM's CPU backend does not "
            f"support (supported: {supported}); use rollout='hf', or a model with one of these "
            "head sizes"
        )


def checkpoint_names(model_path: str) -> set[str] | None:
    """Tensor names of a local safetensors checkpoint (read from headers, no data), or None."""
    folder = Path(model_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            names |= set(st.keys())
    return names


def reprocess_tied_layers(worker) -> list[str]:
    """Runs in the engine's worker after ``reload_weights``: re-run weight post-processing on
    every layer whose weight tensor is shared with another layer (tied embeddings).

    vLLM's layer-wise reload processes a layer when *its* weights arrive; a tied ``lm_head``
    gets none (the checkpoint names only ``embed_tokens``), so its post-processing is skipped
    (documented as limitation 2 in ``vllm/model_executor/model_loader/reload``). On CPU that
    post-processing is the oneDNN pre-packing of the GEMM weight, so the tied ``lm_head``
    kept computing logits from the old, packed embedding. Re-processing is idempotent, hence
    done for every member of a tie.
    """
    from vllm.config import set_current_vllm_config

    model = worker.get_model()
    by_weight: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and getattr(module, "quant_method", None) is not None:
            by_weight.setdefault(id(weight), []).append((name, module))
    redone = []
    with set_current_vllm_config(worker.vllm_config):
        for tied in by_weight.values():
            if len(tied) > 1:
                for name, module in tied:
                    module.quant_method.process_weights_after_loading(module)
                    redone.append(name)
    return redone


class ServerWorkerExtension:
    """Mixed into a ``vllm serve`` server's workers (``--worker-extension-cls
    grpo.rollout.vllm_support.ServerWorkerExtension``, which ``python -m grpo.rollout.server``
    and :func:`grpo.rollout.server.launch_server` add): methods callable over the dev-mode
    ``POST /collective_rpc``, whose arguments can only be strings."""

    def grpo_reprocess_tied_layers(self) -> list[str]:
        """:func:`reprocess_tied_layers` after ``reload_weights(weights_path=...)``."""
        return reprocess_tied_layers(self)


@contextlib.contextmanager
def keep_default_process_group():
    """Make ``torch.distributed.destroy_process_group()`` spare the default group."""
    dist = torch.distributed
    original = dist.destroy_process_group

    def destroy_process_group(group=None):
        if group is None or group is dist.group.WORLD:
            return
        original(group)

    dist.destroy_process_group = destroy_process_group
    try:
        yield
    finally:
        dist.destroy_process_group = original
