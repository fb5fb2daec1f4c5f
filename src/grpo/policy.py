"""The policy model as the trainer sees it: a :class:`grpo.batch.RolloutBatch` -> per-token
log-probs.

In a batch every row's completion starts at the same column ``prompt_len`` (prompts left-padded,
completions right-padded; :mod:`grpo.batch`), so the hidden state at column
``prompt_len - 1 + t`` predicts completion token ``t``. Position ids count only real
tokens, so left padding does not shift positions (the numbers match an unpadded forward).
Log-probs come from :func:`grpo.logprobs.token_logprobs_and_entropy` on the backbone's last
hidden states, so the ``[B, L, V]`` float32 logits never exist.

By default the padded batch does not reach the model at all: its real tokens are packed into one
row (:mod:`grpo.packing`), so no matrix product runs on padding; the padded forward remains for
models the packed attention does not support.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from grpo.batch import RolloutBatch
from grpo.logprobs import TokenLogprobs, token_logprobs_and_entropy
from grpo.packing import pack_batch, packed_forward, unsupported_reason
from grpo.parallel import is_sharded
from grpo.rollout.sampling import position_ids
from grpo.rollout.weights import is_peft_model


def _backbone_and_head(model: torch.nn.Module):
    """(decoder that returns last_hidden_state, lm-head weight [V, H]) of a causal LM.

    Works for plain transformers models and peft-wrapped ones (whose LoRA layers stay active).
    """
    inner = model.get_base_model() if is_peft_model(model) else model
    if hasattr(inner, "get_decoder"):
        decoder = inner.get_decoder()
    else:
        decoder = getattr(inner, "model", None)
    head = inner.get_output_embeddings()
    if decoder is None or head is None:
        raise TypeError(f"{type(inner).__name__} is not a causal LM with a decoder and an LM head")
    return decoder, head.weight


def completion_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = False,
    share_prompts: bool = True,
    padding_free: bool = True,
) -> TokenLogprobs:
    """Per-token log-probs ``[B, T]`` of the batch's completions under ``model``.

    With ``share_prompts`` (and rows that repeat a prompt, as a GRPO group's G rows do), each
    distinct prompt goes through the model once and its key/value cache is indexed out to its
    rows, which then run only their completion tokens (shared-prefix forward, as in Prefix
    Grouper, arXiv:2506.05433). Causal attention makes this exact: a prompt's hidden states do
    not depend on what follows, and the gradient of the shared keys/values sums over the rows,
    as it would over G copies. Equal to the one-pass forward up to float rounding; it is used
    only when the decoder can return a cache under autograd (not with gradient checkpointing).

    With ``padding_free`` (and a model :mod:`grpo.packing` supports; otherwise a warning, once
    per reason) the real tokens are packed into one row: no work on padding, and the shared
    prompts are part of the same single forward. Log-probs at padding positions are 0. Not
    under gradient checkpointing: its recomputation in backward runs after the packed
    attention has been deselected.
    """
    decoder, weight = _backbone_and_head(model)
    sharded = is_sharded(model)
    checkpointing = getattr(decoder, "gradient_checkpointing", False)
    if padding_free and not checkpointing and _packable(decoder):
        packed = pack_batch(batch, share_prompts=share_prompts)
        if packed is not None:
            return _packed_logprobs(
                model,
                decoder,
                weight,
                batch,
                packed,
                sharded,
                temperature=temperature,
                chunk_size=chunk_size,
                with_entropy=with_entropy,
            )
    hidden_BTH = None
    if share_prompts and not sharded and not checkpointing:
        hidden_BTH = _shared_prompt_hidden(decoder, batch)
    if hidden_BTH is None:
        if sharded:
            hidden_BLH, weight = _sharded_forward(
                model,
                decoder,
                lambda call: call(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=position_ids(batch.attention_mask),
                    use_cache=False,
                ),
            )
        else:
            hidden_BLH = decoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask),
                use_cache=False,
            ).last_hidden_state
        t = batch.completion_ids.shape[1]
        # column p-1+t predicts token t
        hidden_BTH = hidden_BLH[:, batch.prompt_len - 1 : batch.prompt_len - 1 + t]
    targets = batch.completion_ids.masked_fill(~batch.completion_mask, 0)
    return token_logprobs_and_entropy(
        hidden_BTH,
        weight.to(hidden_BTH.dtype),
        targets,
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )


_warned: set[str] = set()


def _packable(decoder: torch.nn.Module) -> bool:
    reason = unsupported_reason(decoder.config)
    if reason is not None and reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"padding-free forward off for this model ({reason}): batches run padded, "
            "which is exact but spends compute on padding. Pass padding_free=False "
            "(GRPOConfig.padding_free) to silence this.",
            stacklevel=3,
        )
    return reason is None


def _packed_logprobs(
    model,
    decoder,
    weight,
    batch: RolloutBatch,
    packed,
    sharded: bool,
    *,
    temperature: float,
    chunk_size: int | None,
    with_entropy: bool,
) -> TokenLogprobs:
    """:func:`completion_logprobs` on the packed row: log-probs of the real completion tokens
    only (the LM head runs on no padding either), scattered back to ``[B, T]``."""
    if sharded:
        hidden_1NH, weight = _sharded_forward(
            model, decoder, lambda call: packed_forward(call, decoder.config, packed)
        )
    else:
        hidden_1NH = packed_forward(decoder, decoder.config, packed).last_hidden_state
    real_BT = batch.completion_mask.bool()
    hidden_1MH = hidden_1NH[:, packed.predictor]
    lp = token_logprobs_and_entropy(
        hidden_1MH,
        weight.to(hidden_1MH.dtype),
        batch.completion_ids[real_BT][None],
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
    zeros_BT = torch.zeros(real_BT.shape, dtype=lp.logp.dtype, device=lp.logp.device)
    entropy_BT = zeros_BT.masked_scatter(real_BT, lp.entropy[0]) if with_entropy else zeros_BT
    return TokenLogprobs(logp=zeros_BT.masked_scatter(real_BT, lp.logp[0]), entropy=entropy_BT)


def _sharded_forward(model: torch.nn.Module, decoder: torch.nn.Module, run):
    """(last hidden states, LM-head weight ``[V, H]``) of an FSDP2-sharded model, whose forward
    ``run(call)`` makes with the inputs it wants (padded or packed).

    The root module must run (its hooks gather the embeddings, final norm and LM head, and
    arrange their gradient reduction), so the whole model is called, with ``logits_to_keep``
    an empty index: no logits are made, the decoder's output is caught by a hook. The root
    keeps its weights gathered from forward to backward, so the head weight read afterwards is
    the full tensor that backward will reduce-scatter."""
    caught: dict[str, torch.Tensor] = {}
    hook = decoder.register_forward_hook(
        lambda mod, args, out: caught.update(h=out.last_hidden_state)
    )
    try:
        no_logits = torch.empty(0, dtype=torch.long, device=next(model.parameters()).device)
        run(lambda **inputs: model(**inputs, logits_to_keep=no_logits))
    finally:
        hook.remove()
    weight = model.get_output_embeddings().weight
    if hasattr(weight, "full_tensor"):  # still sharded (not expected): gather it, differentiably
        weight = weight.full_tensor()
    return caught["h"], weight


def _shared_prompt_hidden(decoder: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor | None:
    """Hidden states ``[B, T, H]`` that predict the completion tokens, each distinct prompt run
    once; None when no prompt repeats (then one pass over everything is cheaper)."""
    p, t = batch.prompt_len, batch.completion_ids.shape[1]
    first_U, row_to_prompt_B = batch.distinct_prompts()
    if len(first_U) == len(batch):
        return None
    ids_UP, mask_UP = batch.input_ids[first_U, :p], batch.attention_mask[first_U, :p]
    prompt = decoder(
        input_ids=ids_UP, attention_mask=mask_UP, position_ids=position_ids(mask_UP), use_cache=True
    )
    cache = prompt.past_key_values
    if cache is None:  # a decoder without a cache
        return None
    first_BH = prompt.last_hidden_state[row_to_prompt_B, -1]  # last prompt position -> token 0
    if t == 1:
        return first_BH[:, None]
    # [U, ...] -> [B, ...]: each row gets its prompt's keys/values
    cache.reorder_cache(row_to_prompt_B)
    rest = decoder(  # completion tokens 0..T-2 predict tokens 1..T-1
        input_ids=batch.input_ids[:, p : p + t - 1],
        attention_mask=batch.attention_mask[:, : p + t - 1],
        position_ids=position_ids(batch.attention_mask)[:, p : p + t - 1],
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # [B, T-1, H]
    return torch.cat([first_BH[:, None], rest], dim=1)


@contextmanager
def reference_model(model: torch.nn.Module, ref: torch.nn.Module | None):
    """The reference policy: ``ref`` if given, else ``model`` with its LoRA adapters disabled."""
    if ref is not None:
        yield ref
    elif is_peft_model(model):
        with model.disable_adapter():
            yield model
    else:
        raise ValueError("beta > 0 needs a reference: pass a reference model or use a peft model")


__all__ = ["completion_logprobs", "reference_model"]
