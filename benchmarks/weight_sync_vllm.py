"""Bytes and seconds of one weight push to a vLLM server: full weights vs the LoRA adapter only.

Starts one ``trl vllm-serve`` server (``grpo.rollout.server.launch_server``, runtime LoRA on),
then, from a :class:`grpo.rollout.VLLMServerGenerator` in this process, times
``sync_weights`` for

* ``filesystem``: the full inference weights (a peft model's LoRA merged out of place) written
  as safetensors in the server's dtype, reloaded in place by the server;
* ``lora adapter``: the active adapter only, loaded as a new runtime adapter
  (``VLLMServerGenerator(lora=True)``).

Random weights at the shape of Qwen2.5-0.5B (``--shape 0.5b``: 24 layers, hidden 896, 14 heads
of 64, 2 KV heads, MLP 4864, vocabulary 151936, tied embeddings) or the tiny test model
(``--shape tiny``); LoRA of rank ``--rank`` on every linear layer of the blocks. Median of
``--repeats`` pushes, each after a real weight change. ``bytes`` = what crosses to the server
(the file written), ``seconds`` = the whole ``sync_weights`` (write, reload/load, cache reset).

    .venv/bin/python benchmarks/weight_sync_vllm.py --shape 0.5b

The NCCL transport needs CUDA on both sides and is not measured here (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, intermediate_size=512, vocab_size=None),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, vocab_size=151936),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_shape(path: Path, shape: str):
    """A randomly initialised Qwen2 model of ``shape`` with the char tokenizer, saved."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grpo.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tok)
    config = Qwen2Config(**dims, max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         torch_dtype="float32")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def perturb(model, scale: float = 1e-3) -> None:
    """A stand-in for an optimizer step: every trainable tensor moves."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p), alpha=scale)


def server_sync_rows(shape: str = "tiny", rank: int = 16, repeats: int = 3,
                     dtype: str = "bfloat16") -> list[dict]:
    """One row per transport: ``{"transport", "shape", "bytes", "seconds"}`` (median)."""
    from peft import LoraConfig, get_peft_model

    from grpo.rollout import VLLMServerGenerator
    from grpo.rollout.server import launch_server

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_shape(tmp / "model", shape)
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                      target_modules=TARGETS,
                                                      init_lora_weights=False))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        args = ["--enforce_eager", "--max_model_len", "256", "--dtype", dtype,
                "--distributed_executor_backend", "uni", "--no-enable-chunked-prefill"]
        with launch_server(str(tmp / "model"), args=args, lora_rank=rank,
                           startup_timeout=600, log_path=str(tmp / "server.log")) as server:
            for name, kwargs in [("filesystem", dict(weight_transport="filesystem")),
                                 ("lora adapter", dict(lora=True))]:
                gen = VLLMServerGenerator(base_url=server.base_url, **kwargs)
                seconds, sizes = [], []
                for _ in range(repeats):
                    perturb(peft_model)
                    gen.sync_weights(peft_model)
                    seconds.append(gen.last_sync_seconds)
                    sizes.append(gen.last_sync_bytes)
                gen.close()
                rows.append({"transport": name, "shape": shape, "bytes": sizes[-1],
                             "seconds": statistics.median(seconds)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", help="the server's dtype (what is written)")
    a = ap.parse_args()
    rows = server_sync_rows(a.shape, a.rank, a.repeats, a.dtype)
    print(f"| transport | shape | bytes (MB) | seconds (median of {a.repeats}) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['transport']} | {r['shape']} | {r['bytes'] / 1e6:.2f} | {r['seconds']:.3f} |")
    full, adapter = rows
    print(f"adapter / full: {adapter['bytes'] / full['bytes']:.4f} of the bytes, "
          f"{adapter['seconds'] / full['seconds']:.3f} of the time")


if __name__ == "__main__":
    main()
