"""Sampling primitives shared by the rollout engines (and, for position ids, the learner).

=============================  ==============================================================
:func:`row_seed`               the one seed scheme: sample ``k`` of prompt ``p`` of ``n``
:func:`position_ids`           positions from an attention mask (padding does not shift them)
:func:`left_pad`               contexts as one left-padded ``[B, W]`` batch and its mask
:func:`distinct_rows`          the first row of each distinct prompt (a shared prefill)
:func:`logits_warpers`         penalty, temperature, min-p, top-k, top-p in vLLM's order
:func:`exponential_race`       each row's pick from its own random stream (Gumbel-max)
:class:`RowSampler`            the race as ``generate``'s last logits processor
:class:`SampledTokenLogprobs`  records ``log_softmax`` of the warped scores at the pick
:func:`stop_hits`              rows whose text so far holds a stop string
:class:`StopInText`            that test as ``generate``'s stopping criterion
=============================  ==============================================================

The HF generator (:mod:`grpo.rollout.hf`: ``generate``) and its own decode loop
(:mod:`grpo.rollout.hf_decode`) both sample with these, so the two paths give the same tokens
and log-probs; the seed scheme is also vLLM's, so every generator gives a prompt the same
streams. Objects passed to ``generate`` as processors or criteria are plain callables, as
transformers only calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

import torch

from grpo.rollout.tokens import first_stop_end
from grpo.rollout.types import SamplingConfig

__all__ = [
    "RepetitionPenaltyProcessor",
    "RowSampler",
    "SampledTokenLogprobs",
    "StopInText",
    "distinct_rows",
    "exponential_race",
    "left_pad",
    "logits_warpers",
    "position_ids",
    "row_seed",
    "stop_hits",
]


# ------------------------------------------------------------------------------------- seeds
@overload
def row_seed(seed: int, prompt_index: int, n: int, sample_index: int = 0) -> int: ...
@overload
def row_seed(seed: None, prompt_index: int, n: int, sample_index: int = 0) -> None: ...


def row_seed(seed: int | None, prompt_index: int, n: int, sample_index: int = 0) -> int | None:
    """The seed of sample ``sample_index`` of prompt ``prompt_index``, ``n`` samples per prompt:
    ``seed + prompt_index * n + sample_index`` (:attr:`SamplingConfig.seed`), None if unseeded.

    Every row draws from a stream of its own, so its tokens do not depend on which other rows
    share a batch. vLLM seeds sample ``k`` of an ``n``-sample request ``request_seed + k``, so
    a vLLM request for prompt ``p`` is seeded ``row_seed(seed, p, n)``.

    >>> row_seed(1234, 2, 4, 1), row_seed(1234, 2, 4), row_seed(None, 2, 4, 1)
    (1243, 1242, None)
    """
    if seed is None:
        return None
    return seed + prompt_index * n + sample_index


# ------------------------------------------------------------------------------ batch layout
def position_ids(mask_BL: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Position ids ``[B, L]`` from an attention mask: a real token's position counts the real
    tokens before it, so left padding does not shift positions. A padding column takes the
    position of the last real token before it, or ``pad`` before the first one (transformers'
    ``generate`` uses 1 there). Padding is masked out of attention, so only real positions
    change the numbers.

    >>> position_ids(torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]))
    tensor([[0, 0, 0, 1, 2, 2],
            [0, 1, 2, 3, 4, 5]])
    """
    seen_BL = mask_BL.cumsum(-1)  # real tokens up to and including each column
    return torch.where(seen_BL == 0, pad, seen_BL - 1)


def left_pad(
    contexts: Sequence[list[int]], pad_id: int, *, extra_columns: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask ``[B, W + extra_columns]`` (W = the longest context): each
    context ends at column W, padding on its left; the extra columns, for the tokens to be
    generated, hold ``pad_id`` and count as real in the mask."""
    width = max(len(c) for c in contexts)
    ids_BT = torch.full((len(contexts), width + extra_columns), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(contexts), width + extra_columns), dtype=torch.long)
    for i, c in enumerate(contexts):
        ids_BT[i, width - len(c) : width] = torch.tensor(c)
        mask_BT[i, width - len(c) :] = 1
    return ids_BT, mask_BT


def distinct_rows(share_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows labelled ``share_B`` (equal label = equal prompt): the first row of each distinct
    label ``[U]`` and each row's distinct-label index ``[B]`` (what a shared prefill computes once
    and then indexes out)."""
    _, row_to_unique_B = torch.unique(share_B, return_inverse=True)
    first_U = torch.stack(
        [(row_to_unique_B == u).nonzero()[0, 0] for u in range(int(row_to_unique_B.max()) + 1)]
    )
    return first_U, row_to_unique_B


# ---------------------------------------------------------------------------------- warping
class RepetitionPenaltyProcessor:
    """vLLM's repetition penalty over each row's prompt and completion so far: the logit of a
    token already seen is divided by ``penalty`` if positive, multiplied if not. Left padding
    is not "seen" (``starts[b]`` is the first real column of row b)."""

    def __init__(self, penalty: float, starts_B: torch.Tensor) -> None:
        self.penalty, self.starts_B = penalty, starts_B

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cols = torch.arange(input_ids.shape[1], device=input_ids.device)
        real_BL = cols[None, :] >= self.starts_B.to(input_ids.device)[:, None]
        counts_BV = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        counts_BV.scatter_add_(1, input_ids, real_BL.to(torch.int32))  # occurrences in real columns
        seen_BV = counts_BV > 0
        penalized = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
        return torch.where(seen_BV, penalized, scores)


def logits_warpers(sampling: SamplingConfig, starts_B: torch.Tensor | None = None) -> list:
    """vLLM's sampler order (vllm/v1/sample/sampler.py): penalties, temperature, min_p, top_k,
    top_p. The repetition penalty needs ``starts_B``, each row's first real column."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out: list = []
    if sampling.repetition_penalty != 1.0 and starts_B is not None:
        out.append(RepetitionPenaltyProcessor(sampling.repetition_penalty, starts_B))
    if sampling.greedy:
        return out  # vLLM's greedy log-probs: no temperature, no masks
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.min_p > 0:
        out.append(MinPLogitsWarper(sampling.min_p))
    if sampling.top_k_enabled:
        out.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(sampling.top_p))
    return out


# --------------------------------------------------------------------------------- sampling
def exponential_race(
    scores_BV: torch.Tensor, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """Each row's pick ``[B]`` by the exponential race of :class:`RowSampler`: row ``b`` draws
    its ``V`` noises from ``generators[b]`` (None: one block from the global RNG)."""
    noise_BV = torch.empty(scores_BV.shape, dtype=torch.float64, device=scores_BV.device)
    if generators is None:
        noise_BV.exponential_()
    else:
        for row_V, gen in zip(noise_BV, generators, strict=True):
            row_V.exponential_(generator=gen)
    gumbel_BV = -noise_BV.clamp_min_(torch.finfo(torch.float64).tiny).log_()
    return (scores_BV.double() + gumbel_BV).argmax(dim=-1)


class RowSampler:
    """Last logits processor when sampling: picks each row's next token, from that row's own
    random stream, and hands ``generate`` (run greedy) scores that are 0 at the pick, -inf
    elsewhere.

    The pick is the exponential race (Gumbel-max trick): with ``E_v ~ Exp(1)`` i.i.d.,
    ``argmax_v (s_v - log E_v)`` is distributed as ``softmax(s)`` (``-log E`` is a standard
    Gumbel variable; Gumbel 1954, as used for sampling by Maddison et al. 2014). ``s`` are the
    warped scores, -inf outside the kept set, so truncation is respected. Noise is float64 and
    clamped away from 0, so ``-log E`` is always finite.

    Args:
        generators: one seeded generator per row, or None to draw from the global torch RNG.
    """

    def __init__(self, generators: list[torch.Generator] | None) -> None:
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        choice_B1 = exponential_race(scores, self.generators)[:, None]
        return torch.full_like(scores, -math.inf).scatter_(1, choice_B1, 0.0)


class SampledTokenLogprobs:
    """Last logits processor: ``log_softmax`` of the scores the sampler draws from, gathered at
    the token it drew (visible one step later as ``input_ids[:, -1]``)."""

    def __init__(self) -> None:
        self.prev_BV: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []  # each [B]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev_BV is not None:
            self.steps.append(self.prev_BV.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev_BV = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def result(self, last_tokens_B: torch.Tensor) -> torch.Tensor:  # [B, T]
        assert self.prev_BV is not None, "generate() sampled no token"
        last = self.prev_BV.gather(1, last_tokens_B[:, None]).squeeze(1)
        return torch.stack([*self.steps, last], dim=1)


# ------------------------------------------------------------------------------------ stops
def stop_hits(tokenizer, completions_BT: torch.Tensor, stop: Sequence[str]) -> torch.Tensor:
    """``[B]`` bool: the text of row b's completion so far (special tokens skipped, as in the
    rollout's text) contains a stop string, i.e. :func:`grpo.rollout.tokens.find_ending` cuts it
    at or before its last token."""
    texts = tokenizer.batch_decode(completions_BT.cpu(), skip_special_tokens=True)
    hits = [first_stop_end(text, stop) is not None for text in texts]
    return torch.tensor(hits, device=completions_BT.device)


class StopInText:
    """``generate``'s stopping criterion for stop strings, by :func:`stop_hits` on the columns
    after ``width`` (the prompts'). transformers' own ``stop_strings`` matches token *names*, so
    a sampled special token such as ``<pad>`` would end a row on the stop string "a" that the
    rollout's text never contains."""

    def __init__(self, tokenizer, stop: Sequence[str], width: int) -> None:
        self.tokenizer, self.stop, self.width = tokenizer, tuple(stop), width

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs
    ) -> torch.BoolTensor:
        return stop_hits(self.tokenizer, input_ids[:, self.width :], self.stop)
