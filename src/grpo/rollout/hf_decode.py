"""HFGenerator's own decode loop: one forward per new token, over the rows still running, into
a key/value cache that is written in place.

``model.generate`` spends generation time on two things that produce no token:

* its ``DynamicCache`` grows every layer's keys and values by ``torch.cat`` at every step, i.e.
  it copies the whole cache once per new token (O(T^2) bytes per row);
* it keeps decoding every row until the last one ends, so a row that sampled eos early still
  costs a full row of each later forward.

This loop writes each new key/value column into a buffer with room for it
(:class:`_PreallocatedLayer`, grown by doubling) and drops finished rows from the batch, their
cache rows with them, whenever enough have finished (:func:`_should_compact`); vLLM does both
(paged KV cache, continuous batching). The sampling is unchanged (:mod:`grpo.rollout.sampling`):
the same warpers in vLLM's order, the same per-row exponential race drawing from the row's own
seeded generator, ``log_softmax`` of the warped float32 scores recorded at the drawn token.
A row's draws depend only on its own generator, so removing other rows from the batch does not
change its tokens (only the float rounding of a differently shaped forward, as with any
batching). Unseeded sampling draws one ``[B, V]`` block from the global RNG per step, so its
stream, unlike a seeded one, depends on which rows are still running.

A row is finished when it samples an eos id, reaches its length limit, or when the text of its
completion so far contains a stop string: exactly the prefixes
:func:`grpo.rollout.tokens.find_ending` cuts, so stopping there loses nothing it would keep.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from grpo.rollout.sampling import (
    distinct_rows,
    exponential_race,
    left_pad,
    logits_warpers,
    position_ids,
    stop_hits,
)
from grpo.rollout.types import SamplingConfig


class _PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose keys/values are views of buffers with room for more
    columns: ``update`` writes the new columns in place instead of concatenating (transformers'
    ``DynamicLayer.update`` copies the whole layer cache for every new token).

    The buffers start with ``capacity`` columns and, when full, are reallocated at twice the size
    (at most ``limit``): O(log T) copies instead of T, and never more than twice the columns in
    use, so a large ``max_tokens`` with short completions does not reserve memory it never uses.
    """

    def __init__(
        self, keys_BHLD: torch.Tensor, values_BHLD: torch.Tensor, capacity: int, limit: int
    ) -> None:
        super().__init__()
        self.limit = limit
        self.dtype, self.device, self.is_initialized = keys_BHLD.dtype, keys_BHLD.device, True
        self._keys, self._values = keys_BHLD, values_BHLD
        self._reserve(keys_BHLD.shape[-2], capacity)

    def _reserve(self, length: int, capacity: int) -> None:
        """Buffers of ``capacity`` columns holding the first ``length`` columns of the old ones."""
        old_k, old_v = self._keys, self._values
        self._keys = old_k.new_empty((*old_k.shape[:2], capacity, old_k.shape[3]))
        self._values = old_v.new_empty((*old_v.shape[:2], capacity, old_v.shape[3]))
        self._keys[:, :, :length] = old_k[:, :, :length]
        self._values[:, :, :length] = old_v[:, :, :length]
        self._view(length)

    def _view(self, length: int) -> None:
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        start, stop = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
        if stop > self.limit:
            raise RuntimeError(f"preallocated cache holds {self.limit} columns, asked for {stop}")
        if stop > self._keys.shape[-2]:
            self._reserve(start, min(self.limit, max(stop, 2 * self._keys.shape[-2])))
        self._keys[:, :, start:stop] = key_states
        self._values[:, :, start:stop] = value_states
        self._view(stop)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        length = self.keys.shape[-2]
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._view(length)


_FIRST_RESERVE = 256  # completion columns reserved before the cache first has to grow


def _should_compact(finished: int, batch: int) -> bool:
    """Drop finished rows once they are an eighth of the batch: removing them copies the live
    rows' cache once (about one decode step's worth of memory traffic), keeping them costs a row
    of every later forward."""
    return finished > 0 and finished * 8 >= batch


def _forward_kwargs(model: nn.Module) -> dict:
    """``logits_to_keep=1`` where the model takes it: the prefill needs the last column only."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes_it = "logits_to_keep" in inspect.signature(target.forward).parameters
    return {"logits_to_keep": 1} if takes_it else {}


def _prefill(model, ids_BL, mask_BL, share_B):
    """Last-column float32 logits ``[B, V]``, the key/value cache of the prompts and the row of
    that cache each batch row reads (``[B]``, or None: row b is row b): rows with equal
    ``share_B`` are computed once (vLLM's prefix caching does the same), or every row separately
    when ``share_B`` is None."""
    if share_B is not None:
        first_U, row_to_unique_B = distinct_rows(share_B)
        if len(first_U) == len(share_B):
            share_B = None
    rows = first_U if share_B is not None else slice(None)
    ids, mask = ids_BL[rows], mask_BL[rows]
    positions = position_ids(mask)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **_forward_kwargs(model),
    )
    logits_BV, cache = out.logits[:, -1].float(), out.past_key_values
    if share_B is None:
        return logits_BV, cache, None
    index_B = row_to_unique_B.to(ids_BL.device)
    return logits_BV[index_B], cache, index_B


def _preallocate(cache, capacity: int, limit: int, index_B: torch.Tensor | None):
    """The batch's cache (row b = prefill row ``index_B[b]``) with every plain full-attention
    layer preallocated (:class:`_PreallocatedLayer`; sliding-window and other layer kinds keep
    their own update), and whether every layer can drop rows."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(
            f"the model's forward returned a {type(cache).__name__} cache, not a "
            "transformers Cache with layers; decode with "
            "HFGenerator(..., use_generate=True)"
        )
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.keys is not None and layer.keys.numel() > 0:
            keys, values = layer.keys, layer.values
            if index_B is not None:
                keys, values = keys[index_B], values[index_B]
            layers[i] = _PreallocatedLayer(keys, values, capacity, limit)
        elif index_B is not None:
            layer.batch_select_indices(index_B)
    return cache, all(hasattr(layer, "batch_select_indices") for layer in layers)


@torch.no_grad()
def decode(
    model: nn.Module,
    tokenizer,
    contexts: Sequence[list[int]],
    *,
    limits: Sequence[int],
    sampling: SamplingConfig,
    eos_ids: Sequence[int],
    pad_id: int,
    generators: list[torch.Generator] | None,
    share: Sequence[int] | None = None,
) -> list[tuple[list[int], list[float]]]:
    """Sample up to ``limits[i]`` tokens after ``contexts[i]`` for every row, one batched forward
    per step over the rows still running.

    Args:
        model: a causal LM (or peft model) in eval mode.
        generators: row ``i`` draws from ``generators[i]``; None: the global torch RNG.
        share: rows with equal ``share[i]`` have equal contexts and share one prefill.

    Returns, per row, the sampled ids and their log-probs up to where that row finished (eos,
    stop string or limit), to be cut with :func:`grpo.rollout.tokens.find_ending`.
    """
    device = next(model.parameters()).device
    b, width, max_new = len(contexts), max(len(c) for c in contexts), max(limits)
    ids_BT, mask_BT = left_pad(contexts, pad_id, extra_columns=max_new)
    ids_BT, mask_BT = ids_BT.to(device), mask_BT.to(device)
    starts_B = torch.tensor([width - len(c) for c in contexts])
    share_B = torch.tensor(list(share)) if share is not None else None
    logits_BV, cache, index_B = _prefill(model, ids_BT[:, :width], mask_BT[:, :width], share_B)
    cache, can_compact = _preallocate(
        cache, width + min(max_new, _FIRST_RESERVE), width + max_new, index_B
    )

    eos = torch.tensor(list(eos_ids), device=device)
    limits_B = torch.tensor(list(limits), device=device)
    positions_B = torch.tensor([len(c) for c in contexts], device=device)
    live_B = torch.arange(b)  # original row of each batch row
    running_B = torch.ones(b, dtype=torch.bool, device=device)
    lengths = [0] * b
    tokens_BT = torch.full((b, max_new), pad_id, dtype=torch.long)
    logp_BT = torch.zeros((b, max_new))
    gens = generators
    warpers = logits_warpers(sampling, starts_B)
    for t in range(max_new):
        scores_BV = logits_BV
        for warp in warpers:
            scores_BV = warp(ids_BT[:, : width + t], scores_BV)
        choice_B = scores_BV.argmax(-1) if sampling.greedy else exponential_race(scores_BV, gens)
        chosen_logp_B = torch.log_softmax(scores_BV, dim=-1).gather(1, choice_B[:, None])[:, 0]
        ids_BT[:, width + t] = choice_B
        tokens_BT[live_B, t], logp_BT[live_B, t] = choice_B.cpu(), chosen_logp_B.cpu()
        ending_B = torch.isin(choice_B, eos) | (t + 1 >= limits_B)
        if sampling.stop:
            ending_B |= stop_hits(tokenizer, ids_BT[:, width : width + t + 1], sampling.stop)
        for i in (running_B & ending_B).nonzero()[:, 0].tolist():
            lengths[live_B[i]] = t + 1
        running_B &= ~ending_B
        if not running_B.any():
            break
        if can_compact and _should_compact(int((~running_B).sum()), len(running_B)):
            keep = running_B.nonzero()[:, 0]  # drop the finished rows, cache rows included
            cache.batch_select_indices(keep)
            ids_BT, mask_BT, positions_B = ids_BT[keep], mask_BT[keep], positions_B[keep]
            limits_B, choice_B, running_B = limits_B[keep], choice_B[keep], running_B[keep]
            starts_B, live_B = starts_B[keep.cpu()], live_B[keep.cpu()]
            gens = [gens[i] for i in keep.tolist()] if gens is not None else None
            warpers = logits_warpers(sampling, starts_B)
        out = model(
            input_ids=choice_B[:, None],
            attention_mask=mask_BT[:, : width + t + 1],
            position_ids=(positions_B + t)[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        logits_BV = out.logits[:, -1].float()
        cache = out.past_key_values
    return [(tokens_BT[i, :n].tolist(), logp_BT[i, :n].tolist()) for i, n in enumerate(lengths)]
