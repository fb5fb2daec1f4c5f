"""Padding-free forward: a micro-batch's real tokens packed into one sequence, no padding work.

A padded batch costs ``B x L`` columns in every matrix product, but only the real tokens carry
information. GRPO batches are ragged (a group's completions differ in length, one long row pads
the others), so at the compute scale of ``benchmarks/bench_vs_trl.py`` ~16% of the training and
reference-pass matmul work was on padding even with micro-batches cut from rows sorted by length.

Here every distinct prompt's real tokens and every row's completion tokens are laid end to end
in one row ``[1, N]`` (``N`` = real tokens only)::

    [ p0 p0 p0 | p1 p1 | c0 c0 c0 c0 | c1 c1 | c2 c2 c2 | ... ]
      prompt 0   prompt 1  row 0 (of p0)  row 1    row 2 (of p1)

Linear layers, norms and the MLP act on tokens independently, so they run on ``N`` rows with no
padding. Only attention needs the structure: a prompt attends causally to itself; a row's
completion attends to its prompt and causally to itself, with positions continuing from its
prompt's length (position ids count real tokens only, as in :mod:`grpo.policy`'s padded path,
so the numbers are those of an unpadded forward). :func:`_packed_attention` (registered with
transformers' ``AttentionInterface`` and selected for the duration of the forward only) gathers
each row's ``[prompt; completion]`` queries, keys and values into a right-padded batch for one
``scaled_dot_product_attention`` call and gathers the outputs back: padding costs attention
work only, not the matrix products around it. This is the padding-free layout of trl's
``padding_free`` and verl's ``use_remove_padding`` (there with flash-attention's varlen
kernels; here with a kernel that runs everywhere).

A row's completion sharing its prompt's keys/values with the group's other rows is the shared
prefix forward of :func:`grpo.policy.completion_logprobs` (Prefix Grouper, arXiv:2506.05433):
the prompt's tokens run once, and the gradient of its keys/values sums over the rows that read
them. Without prompt sharing each row packs its own copy of its prompt.

Supported: decoders whose attention goes through transformers' ``AttentionInterface`` with plain
causal masking (:data:`PACKABLE_MODEL_TYPES`, with no sliding window and no attention dropout;
:func:`unsupported_reason`). Anything else takes the padded path.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMPLEMENTATION = "grpo_packed"
PACKABLE_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
_LAYOUT_KWARG = "grpo_packed_layout"


@dataclass(frozen=True)
class PackedLayout:
    """Where each segment lies in the packed sequence.

    ``prompts[u] = (start, length)``; ``rows[r] = (prompt u, start, length)`` of the row's
    completion tokens that are inputs (all but the last real one: it predicts nothing).
    ``gather[r, s]``: the packed position of token ``s`` of row r's sequence ``[prompt;
    completion]`` (right-padded to the longest, padding pointing anywhere); ``scatter[j]``: where
    packed position j's attention output lies in the flattened ``[R * S]`` rows.
    """

    prompts: tuple[tuple[int, int], ...]
    rows: tuple[tuple[int, int, int], ...]
    gather: torch.Tensor  # [R, S] long
    scatter: torch.Tensor  # [N] long


@dataclass(frozen=True)
class PackedInputs:
    """One micro-batch packed: ``input_ids``/``position_ids`` ``[1, N]``, the layout, and for
    every real completion token (row-major order of ``completion_mask``) the packed position
    whose hidden state predicts it (``predictor``, ``[M]``)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    layout: PackedLayout
    predictor: torch.Tensor


def unsupported_reason(config) -> str | None:
    """Why a model cannot take the packed forward (None: it can)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {sorted(PACKABLE_MODEL_TYPES)}"
    window = getattr(config, "sliding_window", None)
    if window is not None and (
        model_type == "mistral" or getattr(config, "use_sliding_window", False)
    ):
        return f"a sliding attention window ({window})"
    if getattr(config, "attention_dropout", 0.0):
        return f"attention_dropout={config.attention_dropout}"
    return None


def _is_prefix(mask_BT: torch.Tensor, lengths_B: torch.Tensor, *, right: bool) -> bool:
    cols = torch.arange(mask_BT.shape[1], device=mask_BT.device)
    expected = (
        cols[None, :] < lengths_B[:, None]
        if right
        else cols[None, :] >= (mask_BT.shape[1] - lengths_B)[:, None]
    )
    return bool(torch.equal(mask_BT.bool(), expected))


def pack_batch(batch, *, share_prompts: bool) -> PackedInputs | None:
    """The batch's real tokens packed into one row; None when its masks are not the batch
    layout of :mod:`grpo.batch` (left-padded prompts, right-padded completions)."""
    p = batch.prompt_len
    prompt_mask_BP = batch.attention_mask[:, :p].bool()
    comp_mask_BT = batch.completion_mask.bool()
    prompt_len_B, comp_len_B = prompt_mask_BP.sum(1), comp_mask_BT.sum(1)
    if not (
        _is_prefix(prompt_mask_BP, prompt_len_B, right=False)
        and _is_prefix(comp_mask_BT, comp_len_B, right=True)
    ):
        return None
    if bool((prompt_len_B == 0).any()):
        return None
    if share_prompts:
        first_U, row_to_prompt_B = batch.distinct_prompts()
        prompt_rows, prompt_of_row = first_U.tolist(), row_to_prompt_B.tolist()
    else:
        prompt_rows, prompt_of_row = list(range(len(batch))), list(range(len(batch)))
    ids, pos, prompts, rows, predictor = [], [], [], [], []
    start = 0
    plen = prompt_len_B.tolist()
    for r in prompt_rows:
        n = plen[r]
        ids.append(batch.input_ids[r, p - n : p])
        pos.append(torch.arange(n))
        prompts.append((start, n))
        start += n
    clen = comp_len_B.tolist()
    for r, u in enumerate(prompt_of_row):
        n_in = max(clen[r] - 1, 0)  # the last real token predicts nothing
        ids.append(batch.input_ids[r, p : p + n_in])
        pos.append(torch.arange(plen[r], plen[r] + n_in))
        rows.append((u, start, n_in))
        if clen[r]:
            ps, pn = prompts[u]
            predictor.append(torch.tensor([ps + pn - 1]))
            predictor.append(torch.arange(start, start + n_in))
        start += n_in
    device = batch.input_ids.device
    gather, scatter = _row_indices(prompts, rows, start)
    return PackedInputs(
        input_ids=torch.cat(ids)[None],
        position_ids=torch.cat(pos)[None].to(device),
        layout=PackedLayout(
            prompts=tuple(prompts),
            rows=tuple(rows),
            gather=gather.to(device),
            scatter=scatter.to(device),
        ),
        predictor=(torch.cat(predictor) if predictor else torch.zeros(0, dtype=torch.long)).to(
            device
        ),
    )


def _row_indices(prompts, rows, n_packed):
    """(gather ``[R, S]``, scatter ``[N]``) between the packed row and a right-padded batch of
    sequences ``[prompt; completion]``, one per row (S = the longest). A prompt's own outputs are
    read from the first row that holds it."""
    width = max(prompts[u][1] + n for u, _, n in rows)
    gather = torch.zeros(len(rows), width, dtype=torch.long)
    scatter = torch.zeros(n_packed, dtype=torch.long)
    seen = set()
    for r, (u, s, n) in enumerate(rows):
        ps, pn = prompts[u]
        gather[r, :pn] = torch.arange(ps, ps + pn)
        gather[r, pn : pn + n] = torch.arange(s, s + n)
        scatter[s : s + n] = r * width + torch.arange(pn, pn + n)
        if u not in seen:
            seen.add(u)
            scatter[ps : ps + pn] = r * width + torch.arange(pn)
    return gather, scatter


def _packed_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """Attention over a packed row (``query`` ``[1, Hq, N, d]``, ``key``/``value``
    ``[1, Hkv, N, d]``; returns ``[1, N, Hq, d]`` as transformers' attention functions do), in one
    call: q/k/v are gathered into a right-padded batch of ``[prompt; completion]`` rows (a prompt's
    keys/values into each of its rows; the gather's backward sums their gradients), attention is
    plain causal (with right padding every key a real query sees is real), and the outputs are
    gathered back to the packed order (a prompt's from the first row holding it).

    One attention call per layer whatever the number of rows, where a loop over segments makes
    one per row and prompt (the same speed on CPU, measured; on a GPU each is several kernel
    launches). The attention scores of a row's prompt part are recomputed per row: (pn + n)^2 / 2
    scores instead of n * pn + n^2 / 2, attention being a few percent of the FLOPs."""
    layout: PackedLayout | None = kwargs.get(_LAYOUT_KWARG)
    if layout is None:
        raise RuntimeError(
            f"attention implementation {IMPLEMENTATION!r} needs a {_LAYOUT_KWARG} argument; it is "
            "selected only inside grpo.packing.packed_forward"
        )
    if query.shape[0] != 1:
        raise ValueError(f"a packed forward has one row, got {query.shape[0]}")
    if key.shape[1] != query.shape[1]:
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    r, width = layout.gather.shape
    flat = layout.gather.reshape(-1)

    def to_rows(t_1HNd):  # [1, H, N, d] -> [R, H, S, d]
        h, d = t_1HNd.shape[1], t_1HNd.shape[3]
        return t_1HNd[0].index_select(1, flat).view(h, r, width, d).transpose(0, 1)

    out_RHSd = F.scaled_dot_product_attention(
        to_rows(query),
        to_rows(key),
        to_rows(value),
        is_causal=True,
        scale=scaling,
        dropout_p=dropout,
    )
    h, d = out_RHSd.shape[1], out_RHSd.shape[3]
    out_HNd = out_RHSd.transpose(0, 1).reshape(h, r * width, d).index_select(1, layout.scatter)
    return out_HNd.transpose(0, 1)[None], None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _packed_attention)


@contextmanager
def _attention_implementation(config, name: str):
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_forward(call, config, packed: PackedInputs):
    """Run ``call(input_ids=, position_ids=, **kwargs)`` (a decoder, or a whole model) on the
    packed row with the packed attention selected; returns what ``call`` returns."""
    _register()
    with _attention_implementation(config, IMPLEMENTATION):
        return call(
            input_ids=packed.input_ids,
            position_ids=packed.position_ids,
            attention_mask=None,
            use_cache=False,
            **{_LAYOUT_KWARG: packed.layout},
        )


__all__ = [
    "PACKABLE_MODEL_TYPES",
    "PackedInputs",
    "PackedLayout",
    "pack_batch",
    "packed_forward",
    "unsupported_reason",
]
