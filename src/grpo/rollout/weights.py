"""The weights an inference engine should hold for a training model, under HF names.

GRPO samples from the current policy (DeepSeekMath, arXiv:2402.03300, Alg. 1: "update the old
policy model pi_old <- pi_theta" before sampling), so after each optimizer step the engine needs
the training weights. This module turns whatever the trainer holds into ``(name, tensor)`` pairs
named as in the base model's HF checkpoint, which is what vLLM's ``model.load_weights`` (and
trl's VLLMClient) take:

* data-parallel wrappers (``DistributedDataParallel``, ``DataParallel``, DeepSpeed's engine; what
  ``accelerate.prepare`` returns) and ``torch.compile`` wrappers are unwrapped;
* FSDP2 / DTensor parameters are gathered with ``full_tensor()``;
* peft models: vanilla LoRA is merged *out of place*: ``W + sum_a delta_a`` with peft's own
  ``get_delta_weight`` (the formula of ``LoraLayer.merge``), and the same for a LoRA bias;
  adapter tensors are dropped and ``.base_layer`` / ``modules_to_save`` names map back to the
  base model's. The training weights are never modified, so they stay bit-exact. peft's
  in-place ``merge_adapter()`` / ``unmerge_adapter()`` (what trl does) subtracts the delta
  again after the push, and ``W + d - d != W`` in floating point: in bf16 each sync would move
  the base weights by up to an ulp. LoRA variants (DoRA, ...) and other peft tuners, whose merge
  is not ``W + delta``, do use merge/unmerge, inside a ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_WRAPPER_NAMES = ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that holds the weights, under DDP / DataParallel / DeepSpeed / compile."""
    while True:
        if type(model).__name__ in _WRAPPER_NAMES and isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _materialize(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 shards are DTensors


@contextmanager
def inference_weights(model: nn.Module) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
    """Context manager yielding an iterator of ``(hf_name, tensor)`` to push to an engine.

    Tensors are views of (or, for merged LoRA layers, fresh tensors computed from) the training
    weights, produced one at a time; consume them inside the ``with`` block.
    """
    model = unwrap_model(model)
    if not is_peft_model(model):
        yield ((name, _materialize(p)) for name, p in model.named_parameters())
        return
    if _needs_inplace_merge(model):
        model.merge_adapter()
        try:
            yield _peft_named_weights(model, add_delta=False)
        finally:
            model.unmerge_adapter()
    else:
        yield _peft_named_weights(model, add_delta=True)


def _named_parameters(model: nn.Module, *, remove_duplicate: bool = True):
    """``(hf_name, parameter)`` under base-model names, adapter tensors left out."""
    if not is_peft_model(model):
        yield from model.named_parameters(remove_duplicate=remove_duplicate)
        return
    active = _active(model)
    prefix = getattr(model.base_model, "prefix", "lora_")
    for n, p in model.get_base_model().named_parameters(remove_duplicate=remove_duplicate):
        if (hf := _hf_name(n, prefix, active)) is not None:
            yield hf, p


def weight_metadata(model: nn.Module) -> list[tuple[str, str, list[int]]]:
    """``(hf_name, dtype, shape)`` of what :func:`inference_weights` yields, without merging.

    trl's VLLMClient announces the tensors before streaming them. A merged LoRA weight keeps
    its base weight's dtype and shape, so the base parameters describe it.
    """
    return [
        (n, str(p.dtype).removeprefix("torch."), list(p.shape))
        for n, p in _named_parameters(unwrap_model(model))
    ]


def weight_names(model: nn.Module) -> set[str]:
    """Every HF name the model's weights answer to, tied aliases included (a checkpoint of a
    model with tied embeddings may or may not store ``lm_head.weight``)."""
    return {n for n, _ in _named_parameters(unwrap_model(model), remove_duplicate=False)}


# --- peft ------------------------------------------------------------------------------------


def _lora_layers(base: nn.Module) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in base.modules() if isinstance(m, LoraLayer)]


def _active(peft_model) -> list[str]:
    active = peft_model.active_adapters
    return [active] if isinstance(active, str) else list(active)


def _needs_inplace_merge(peft_model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = peft_model.get_base_model()
    lora = {id(m) for m in _lora_layers(base)}
    active = _active(peft_model)
    for m in base.modules():
        if not isinstance(m, BaseTunerLayer):
            continue
        if id(m) not in lora:
            return True  # another tuner type (IA3, LoHa, ...): use its own merge
        if any(a in getattr(m, "lora_variant", {}) for a in active):
            return True  # DoRA & co.: merge is not W + delta
    return False


def _hf_name(name: str, tuner_prefix: str, active: list[str]) -> str | None:
    """Base-model name of a parameter of ``peft_model.get_base_model()``, or None to skip it."""
    parts = name.split(".")
    if any(p.startswith(tuner_prefix) for p in parts):
        return None  # adapter tensors (lora_A, lora_B, lora_magnitude_vector, ...)
    if "original_module" in parts:
        return None  # modules_to_save keeps the frozen original next to the trained copy
    if "modules_to_save" in parts:
        i = parts.index("modules_to_save")
        if parts[i + 1] not in active:
            return None
        parts = parts[:i] + parts[i + 2 :]
    return ".".join(p for p in parts if p != "base_layer")


def _peft_named_weights(peft_model, *, add_delta: bool) -> Iterator[tuple[str, torch.Tensor]]:
    base = peft_model.get_base_model()
    active = _active(peft_model)
    tuner_prefix = getattr(peft_model.base_model, "prefix", "lora_")
    deltas: dict[int, tuple[object, str]] = {}  # id(base param) -> (lora layer, "weight"|"bias")
    if add_delta:
        for layer in _lora_layers(base):
            base_layer = layer.get_base_layer()
            deltas[id(base_layer.weight)] = (layer, "weight")
            if getattr(base_layer, "bias", None) is not None:
                deltas[id(base_layer.bias)] = (layer, "bias")
    for name, p in base.named_parameters():
        hf_name = _hf_name(name, tuner_prefix, active)
        if hf_name is None:
            continue
        t = _materialize(p)
        if id(p) in deltas:
            layer, kind = deltas[id(p)]
            t = _merged(layer, kind, t, active)
        yield hf_name, t


def _merged(layer, kind: str, t: torch.Tensor, active: list[str]) -> torch.Tensor:
    """``t`` plus the deltas of the active, not yet merged adapters of one LoRA layer.

    Mirrors ``peft.tuners.lora.LoraLayer.merge``: ``weight += get_delta_weight(a)`` and, with
    ``lora_bias``, ``bias += lora_B[a].bias * scaling[a]``; computed out of place.
    """
    if getattr(layer, "disable_adapters", False):
        return t
    out = t
    for a in active:
        if a not in layer.lora_A or a in layer.merged_adapters:
            continue
        if kind == "weight":
            delta = layer.get_delta_weight(a)
        elif layer.lora_bias.get(a, False):
            delta = layer.lora_B[a].bias * layer.scaling[a]
        else:
            continue
        out = (out + _materialize(delta)).to(t.dtype)
    return out


# --- writing weights to a folder (engines that reload from a path) ---------------------------


def model_config(model: nn.Module):
    """The HF config of the (base) model behind wrappers and peft."""
    model = unwrap_model(model)
    return (model.get_base_model() if is_peft_model(model) else model).config


def save_inference_weights(model: nn.Module, folder, *, dtype: torch.dtype | None = None) -> int:
    """Write :func:`inference_weights` (LoRA merged out of place) as ``model.safetensors`` with
    the model's ``config.json`` into ``folder``, cast to ``dtype`` (None: as trained), for an
    engine that reloads from a path (vLLM's ``reload_weights(weights_path=...)``). Returns the
    bytes of the safetensors file.

    Tied weights appear once, under the first name (as in an HF checkpoint). Tensors are copied
    to host memory one at a time; the file is written in one go.
    """
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with inference_weights(model) as weights:
        tensors = {name: t.to("cpu", dtype or t.dtype).contiguous() for name, t in weights}
    path = folder / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    model_config(model).save_pretrained(folder)
    return path.stat().st_size


def active_adapter(peft_model: nn.Module) -> str:
    """The one active adapter of a peft model (engines load one adapter per request)."""
    model = unwrap_model(peft_model)
    if not is_peft_model(model):
        raise TypeError(
            f"adapter-only weight sync needs a peft model, got {type(model).__name__}; "
            "without LoRA push the full weights (lora=False)"
        )
    active = _active(model)
    if len(active) != 1:
        raise ValueError(
            f"adapter-only weight sync pushes one adapter, but {active} are active; "
            "set_adapter() the trained one"
        )
    return active[0]


def save_adapter(peft_model: nn.Module, folder) -> int:
    """Write the active adapter only (``adapter_model.safetensors`` + ``adapter_config.json``,
    the layout of peft's ``save_pretrained``, which vLLM's LoRA loader reads) into ``folder``;
    returns the bytes of the safetensors file. The base weights are not written."""
    from pathlib import Path

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    name = active_adapter(peft_model)
    model = unwrap_model(peft_model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=name)
    tensors = {k: _materialize(v).to("cpu").contiguous() for k, v in state.items()}
    path = folder / "adapter_model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    model.peft_config[name].save_pretrained(str(folder))
    return path.stat().st_size
