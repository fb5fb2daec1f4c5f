"""Bytes and seconds of one weight sync to a ``ProcessGenerator``: full weights vs a LoRA adapter.

The asynchronous trainer pushes the weights to its generator process after every optimizer
step. A plain model copies every parameter; a peft model copies only its trainable tensors
(the adapter), the child having loaded the frozen base once (trl's AsyncGRPOTrainer does the
same for LoRA, huggingface/trl#7017). At the Qwen2.5-0.5B shape with random weights (no
download): hidden 896, 24 layers, 14 heads, 2 key/value heads, intermediate 4864, vocabulary
151936, tied embeddings; the adapter is the common r=16 on every linear projection
(q, k, v, o, gate, up, down). peft keeps adapter weights in float32 on a bfloat16 base (its
``autocast_adapter_dtype``), so the adapter syncs in float32.

Two timings per sync, each the median of ``--repeats`` syncs:

* ``push``: :meth:`ProcessGenerator.sync_weights` in the trainer, the copy into the shared
  buffers (what holds the learner);
* ``load``: the child (1 torch thread) copying the buffers into its model before it next samples
  (``child_stats()["load_seconds"]``), triggered by a one-token sample.

    python benchmarks/weight_sync.py               # Qwen2.5-0.5B shape, bfloat16
    python benchmarks/weight_sync.py --dtype float32
    python benchmarks/weight_sync.py --quick       # a tiny shape (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

QWEN25_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=128,
    vocab_size=256,
    tie_word_embeddings=True,
)
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(shape: dict, dtype: torch.dtype):
    """A randomly initialised Qwen2 model of ``shape`` and the character tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grpo.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(**shape, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return Qwen2ForCausalLM(config).to(dtype), tok


def measure(model, tok, repeats: int) -> dict:
    """Start a ProcessGenerator on ``model``, then ``repeats`` times: perturb the synced
    tensors, sync, let the child load them; medians of both timings."""
    from grpo.rollout import ProcessGenerator, SamplingConfig

    t0 = time.perf_counter()
    gen = ProcessGenerator(model, tok, threads=1, startup_timeout=600)
    start = time.perf_counter() - t0
    engine = gen.token_engine()
    synced = [p for n, p in model.named_parameters() if n in set(gen.buffer_names)]
    push, load = [], []
    try:
        for i in range(repeats):
            with torch.no_grad():  # a training step's worth of change (not timed)
                synced[i % len(synced)].add_(1e-3)
            gen.sync_weights(model)
            push.append(gen.last_sync_seconds)
            engine.sample([[1]], [i], [1], SamplingConfig(max_tokens=1))
            stats = gen.child_stats()
            assert stats["version"] == gen.version, stats
            load.append(stats["load_seconds"])
    finally:
        gen.close()
    return {
        "tensors": len(gen.buffer_names),
        "bytes": gen.sync_bytes,
        "push": statistics.median(push),
        "load": statistics.median(load),
        "start": start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny shape, for a smoke test")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--repeats", type=int, default=5, help="syncs per row (median)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument(
        "--trainer-threads", type=int, default=None, help="torch threads in this (trainer) process"
    )
    args = parser.parse_args()
    if args.trainer_threads:
        torch.set_num_threads(args.trainer_threads)
    from peft import LoraConfig, get_peft_model

    dtype = getattr(torch, args.dtype)
    shape = TINY if args.quick else QWEN25_05B
    model, tok = build(shape, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    rows = [("full weights", measure(model, tok, args.repeats))]
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=LINEAR)
    peft_model = get_peft_model(model, lora)
    rows.append((f"LoRA r={args.rank}, all linear", measure(peft_model, tok, args.repeats)))

    name = "tiny Qwen2" if args.quick else "Qwen2.5-0.5B shape"
    print(
        f"{name}, {n_params / 1e6:.1f}M parameters, {args.dtype}; median of {args.repeats} syncs; "
        f"trainer threads {torch.get_num_threads()}, child threads 1"
    )
    print(
        "| synced | tensors | MB per sync | push (s) | child load (s) | push + load (s) "
        "| child start (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        print(
            f"| {label} | {r['tensors']} | {r['bytes'] / 1e6:.2f} | {r['push']:.4f} | "
            f"{r['load']:.4f} | {r['push'] + r['load']:.4f} | {r['start']:.1f} |"
        )
    full, adapter = rows[0][1], rows[1][1]
    print(
        f"adapter / full: {adapter['bytes'] / full['bytes']:.2%} of the bytes, "
        f"{(adapter['push'] + adapter['load']) / (full['push'] + full['load']):.2%} of the time"
    )


if __name__ == "__main__":
    main()
