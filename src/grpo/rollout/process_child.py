"""The generator process's side of :class:`grpo.rollout.ProcessGenerator`: rebuild the parent's
model (and its peft adapter) from the folder the parent wrote, then answer its messages,
loading the shared-memory buffers into the model whenever the weight version moved.

Kept apart from :mod:`grpo.rollout.process` (the parent's side): this is all that runs in the
child besides the HF generator and engine it drives.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import replace

import torch

STATE_FILE = "state.pt"
"""The parent's full state dict, in the folder the child loads from."""


def build_model(
    folder: str, dtype: torch.dtype, attn: str | None, peft: tuple | None, device: str
) -> torch.nn.Module:
    """The parent's model rebuilt from ``folder``: the same architecture (and adapter), the
    same weights, on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    kwargs = {"attn_implementation": attn} if attn else {}
    with _no_init_weights():  # every weight is loaded below: skip the random init (~15 s at 0.5B)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    model.tie_weights()  # which the skipped init would have done
    try:
        model.generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:  # the parent's model had none
        pass
    if peft is not None:
        from peft import get_peft_model

        name, peft_config, _ = peft
        peft_config.base_model_name_or_path = model.name_or_path or None  # no rename warning
        model = get_peft_model(model, peft_config, adapter_name=name)
    state = torch.load(os.path.join(folder, STATE_FILE), weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    others = peft[2] if peft is not None else []
    unexpected = [k for k in unexpected if not any(f".{o}." in k for o in others)]
    if missing or unexpected:
        raise RuntimeError(
            "the generator process could not rebuild the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def serve(
    folder: str,
    buffers: dict[str, torch.Tensor],
    version,
    lock,
    conn,
    options: dict,
) -> None:
    """The child's loop. Messages: ``("generate", prompts, n, sampling, chat_kwargs)`` ->
    rollouts; ``("sample", contexts, seeds, limits, sampling, refresh)`` -> ``(version,
    rows)``; ``("stats",)`` -> a dict (its model's device, version, loads); answered
    ``("ok", payload)`` or ``("error", traceback)``. ``("close",)`` ends it."""
    torch.set_num_threads(options["threads"])
    device = options["device"]
    from transformers import AutoTokenizer

    from grpo.rollout.engines import HFEngine
    from grpo.rollout.hf import HFGenerator

    try:
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        model = build_model(folder, options["dtype"], options["attn"], options["peft"], device)
        params = dict(model.named_parameters())
        if unknown := [n for n in buffers if n not in params]:
            raise RuntimeError(f"the generator process's model has no parameters {unknown[:5]}")
        if options["peft"] is None and (extra := [n for n in params if n not in buffers]):
            # a weight tied in the parent but not here would never be synced
            raise RuntimeError(
                f"the generator process's model has parameters {extra[:5]} "
                "that the parent's does not (tied weights?)"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder)
        generator = HFGenerator(model, tokenizer, **options["generator"])
        engine = HFEngine(generator)
    except Exception:  # noqa: BLE001 -- sent to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    here = str(next(model.parameters()).device)
    conn.send(
        ("ok", {"eos_ids": engine.eos_ids, "max_context": engine.max_context, "device": here})
    )
    state = {"have": -1, "load_seconds": None, "loads": 0}

    def refresh() -> int:
        with lock:
            current = version.value
            if current != state["have"]:
                t0 = time.perf_counter()
                with torch.no_grad():
                    for name, buf in buffers.items():
                        params[name].copy_(buf)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                state.update(have=current, load_seconds=time.perf_counter() - t0)
                state["loads"] += 1
        return state["have"]

    while True:
        message = conn.recv()
        kind = message[0]
        if kind == "close":
            return
        try:
            if kind == "generate":
                _, prompts, n, sampling, chat_kwargs = message
                have = refresh()
                generator.chat_template_kwargs = chat_kwargs
                out = generator.generate(prompts, n, sampling)
                conn.send(("ok", [replace(r, policy_version=have) for r in out]))
            elif kind == "sample":
                _, contexts, seeds, limits, sampling, again = message
                have = refresh() if again or state["have"] < 0 else state["have"]
                conn.send(("ok", (have, engine.sample(contexts, seeds, limits, sampling))))
            elif kind == "stats":
                stats = {k: state[k] for k in ("loads", "load_seconds")}
                conn.send(("ok", {"device": here, "version": state["have"], **stats}))
            else:
                raise ValueError(f"unknown message {kind!r}")
        except Exception:  # noqa: BLE001 -- sent to the parent, which raises it
            conn.send(("error", traceback.format_exc()))
