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
so the numbers are those of an unpadded forward). Attention runs per segment
(:func:`_packed_attention`, registered with transformers' ``AttentionInterface`` and selected
for the duration of the forward only), the padding-free layout of trl's ``padding_free`` and
verl's ``use_remove_padding`` (there with flash-attention's varlen kernels; here with
``scaled_dot_product_attention`` per segment, which runs everywhere).

A row's completion sharing its prompt's keys/values with the group's other rows is the shared
prefix forward of :func:`grpo.policy.completion_logprobs` (Prefix Grouper, arXiv:2506.05433):
the prompt's tokens run once, and the gradient of its keys/values sums over the rows that read
them. Without prompt sharing each row packs its own copy of its prompt.

Supported: decoders whose attention goes through transformers' ``AttentionInterface`` with plain
causal masking (:data:`PACKABLE_MODEL_TYPES`, no sliding window shorter than the sequence, no
soft-capping). Anything else takes the padded path.
"""

from __future__ import annotations

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
    """

    prompts: tuple[tuple[int, int], ...]
    rows: tuple[tuple[int, int, int], ...]


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
    if window is not None and (model_type == "mistral" or getattr(config, "use_sliding_window", False)):
        return f"a sliding attention window ({window})"
    if getattr(config, "attention_dropout", 0.0):
        return f"attention_dropout={config.attention_dropout}"
    return None


def _is_prefix(mask_BT: torch.Tensor, lengths_B: torch.Tensor, *, right: bool) -> bool:
    cols = torch.arange(mask_BT.shape[1], device=mask_BT.device)
    expected = cols[None, :] < lengths_B[:, None] if right else cols[None, :] >= (mask_BT.shape[1] - lengths_B)[:, None]
    return bool(torch.equal(mask_BT.bool(), expected))


def pack_batch(batch, *, share_prompts: bool) -> PackedInputs | None:
    """The batch's real tokens packed into one row; None when its masks are not the batch
    layout of :mod:`grpo.batch` (left-padded prompts, right-padded completions)."""
    p = batch.prompt_len
    prompt_mask_BP = batch.attention_mask[:, :p].bool()
    comp_mask_BT = batch.completion_mask.bool()
    prompt_len_B, comp_len_B = prompt_mask_BP.sum(1), comp_mask_BT.sum(1)
    if not (_is_prefix(prompt_mask_BP, prompt_len_B, right=False) and _is_prefix(comp_mask_BT, comp_len_B, right=True)):
        return None
    if bool((prompt_len_B == 0).any()):
        return None
    if share_prompts:
        key_BK = torch.cat([batch.input_ids[:, :p], batch.attention_mask[:, :p]], dim=1)
        _, row_to_prompt_B = torch.unique(key_BK, dim=0, return_inverse=True)
        first_of = {}
        for r, u in enumerate(row_to_prompt_B.tolist()):
            first_of.setdefault(u, r)
        prompt_rows = [first_of[u] for u in sorted(first_of)]
        prompt_of_row = row_to_prompt_B.tolist()
    else:
        prompt_rows, prompt_of_row = list(range(len(batch))), list(range(len(batch)))
    ids, pos, prompts, rows, predictor = [], [], [], [], []
    start = 0
    plen = prompt_len_B.tolist()
    for r in prompt_rows:
        n = plen[r]
        ids.append(batch.input_ids[r, p - n:p])
        pos.append(torch.arange(n))
        prompts.append((start, n))
        start += n
    clen = comp_len_B.tolist()
    for r, u in enumerate(prompt_of_row):
        n_in = max(clen[r] - 1, 0)  # the last real token predicts nothing
        ids.append(batch.input_ids[r, p:p + n_in])
        pos.append(torch.arange(plen[r], plen[r] + n_in))
        rows.append((u, start, n_in))
        if clen[r]:
            ps, pn = prompts[u]
            predictor.append(torch.tensor([ps + pn - 1]))
            predictor.append(torch.arange(start, start + n_in))
        start += n_in
    device = batch.input_ids.device
    return PackedInputs(
        input_ids=torch.cat(ids)[None],
        position_ids=torch.cat(pos)[None].to(device),
        layout=PackedLayout(prompts=tuple(prompts), rows=tuple(rows)),
        predictor=(torch.cat(predictor) if predictor else torch.zeros(0, dtype=torch.long)).to(device),
    )


def _packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over a packed row (``query`` ``[1, Hq, N, d]``, ``key``/``value`` ``[1, Hkv, N, d]``),
    segment by segment; returns ``[1, N, Hq, d]`` as transformers' attention functions do."""
    layout: PackedLayout | None = kwargs.get(_LAYOUT_KWARG)
    if layout is None:
        raise RuntimeError(f"attention implementation {IMPLEMENTATION!r} needs a {_LAYOUT_KWARG} argument; it is "
                           "selected only inside grpo.packing.packed_forward")
    if query.shape[0] != 1:
        raise ValueError(f"a packed forward has one row, got {query.shape[0]}")
    # [1, H, N, d] throughout: the CPU flash kernel takes 4-d inputs only (3-d ones fall back to
    # the unfused math path, ~2x slower here)
    q_1HNd, k_1HNd, v_1HNd = query, key, value
    if k_1HNd.shape[1] != q_1HNd.shape[1]:  # grouped-query attention: each kv head serves a group of query heads
        rep = q_1HNd.shape[1] // k_1HNd.shape[1]
        k_1HNd, v_1HNd = k_1HNd.repeat_interleave(rep, dim=1), v_1HNd.repeat_interleave(rep, dim=1)
    # one split per tensor (its backward is one concatenation), not a slice per segment (each
    # slice's backward writes a full-size zero gradient and the sum of all of them costs O(segments x N))
    sizes = [n for _, n in layout.prompts] + [n for _, _, n in layout.rows]
    q_parts, k_parts, v_parts = (t.split(sizes, dim=2) for t in (q_1HNd, k_1HNd, v_1HNd))
    n_prompts = len(layout.prompts)
    pieces = [F.scaled_dot_product_attention(q_parts[u], k_parts[u], v_parts[u], is_causal=True, scale=scaling,
                                             dropout_p=dropout) for u in range(n_prompts)]
    for i, (u, _, n) in enumerate(layout.rows):
        if n == 0:
            continue
        j, pn = n_prompts + i, layout.prompts[u][1]
        # [prompt ; completion] with plain causal masking, prompt queries included and their
        # outputs dropped: the flash kernel's causal path, for (pn + n)^2 / 2 scores instead of
        # n * pn + n^2 / 2 (the prompt's own outputs come from its segment above).
        q = torch.cat([q_parts[u], q_parts[j]], dim=2)
        k = torch.cat([k_parts[u], k_parts[j]], dim=2)
        v = torch.cat([v_parts[u], v_parts[j]], dim=2)
        pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                     dropout_p=dropout)[:, :, pn:])
    return torch.cat(pieces, dim=2).transpose(1, 2), None


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
        return call(input_ids=packed.input_ids, position_ids=packed.position_ids, attention_mask=None,
                    use_cache=False, **{_LAYOUT_KWARG: packed.layout})


__all__ = ["PACKABLE_MODEL_TYPES", "PackedInputs", "PackedLayout", "pack_batch", "packed_forward",
           "unsupported_reason"]
