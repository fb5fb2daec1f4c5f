"""Tiny models built offline, for tests, CPU demos and benchmarks.

No weights can be downloaded on a CI machine, so ``grpo`` builds its own small causal LM: a
Llama-architecture model (supported by transformers, peft and vLLM alike) with a
character-level tokenizer. Saved with ``save_pretrained`` and loaded back through the Auto
classes, it goes through exactly the code path a user's model does.

The tokenizer has one token per printable ASCII character plus:

* special tokens ``<pad>``, ``<eos>`` and the chat-role markers ``<|system|>``, ``<|user|>``,
  ``<|assistant|>`` (a chat template uses them, so prompts can be chat messages);
* the R1 template tags ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` as single, *non*
  special tokens: they survive ``decode(skip_special_tokens=True)`` and cost one step each;
* optionally ``extra_tokens``: more single, non-special tokens (whole words, or characters of
  another script), matched before the text is split into characters.

vLLM's CPU attention supports head_dim 32, 64, 80, 96, 112, 128, ... (not 16), hence the defaults.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARS = [c for c in string.printable if c not in "\r\x0b\x0c"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<eos>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


QWEN25_SHAPES: dict[str, dict] = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151_936,
        published_params=0.49e9,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151_936,
        published_params=1.54e9,
    ),
}
"""Qwen2.5's ``config.json`` sizes (hub: Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-1.5B; tied embeddings)
and the model cards' parameter counts, for benchmarks that build a randomly initialised
``Qwen2ForCausalLM`` of a real shape offline (``published_params`` is not a config field)."""


def qwen25_config_kwargs(name: str) -> dict:
    """``Qwen2Config`` keyword arguments for the Qwen2.5 shape ``name`` ("0.5b", "1.5b")."""
    shape = {k: v for k, v in QWEN25_SHAPES[name].items() if k != "published_params"}
    return {**shape, "tie_word_embeddings": True}


def build_char_tokenizer(extra_tokens: Sequence[str] = ()):
    """A character-level ``PreTrainedTokenizerFast`` with a chat template, eos and pad.

    ``extra_tokens`` are added after the characters, each one token (e.g. ``(" plus ", "加")``:
    a word in one step, or a character outside printable ASCII, which would otherwise be
    unknown)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    extra = list(dict.fromkeys(extra_tokens))
    clash = [t for t in extra if t in SPECIAL_TOKENS + TAG_TOKENS + CHARS or not t]
    if clash:
        raise ValueError(f"extra_tokens {clash} are empty or already tokens of the char tokenizer")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + TAG_TOKENS + CHARS + extra)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS + extra])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<pad>",
        model_max_length=2048,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_llama(
    tokenizer=None,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    head_dim: int = 32,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
):
    """A randomly initialised ``LlamaForCausalLM`` sized for the char tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(
    path: str | Path, *, seed: int = 0, extra_tokens: Sequence[str] = (), **model_kwargs
) -> Path:
    """Build the tiny model and tokenizer and ``save_pretrained`` both into ``path``."""
    path = Path(path)
    tokenizer = build_char_tokenizer(extra_tokens)
    model = build_tiny_llama(tokenizer, seed=seed, **model_kwargs)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
