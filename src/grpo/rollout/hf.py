"""``HFGenerator``: the rollout interface on a ``transformers`` model.

For machines without vLLM and for debugging. It samples from the *same* model object the
trainer optimises, so ``sync_weights`` has nothing to do, and it returns the same records with
the same log-prob semantics as :class:`grpo.rollout.VLLMGenerator` (see
:mod:`grpo.rollout.types`): the sampling warpers run in vLLM's order (temperature, min-p, top-k,
top-p; transformers' own order puts min-p last), and ``log_softmax`` of the final scores is
recorded at the token that was sampled. Only one ``[B, V]`` row block is kept for that
(``output_scores=True`` would keep ``[T, B, V]``).

Two decode paths give the same rollouts: by default the generator's own loop
(:mod:`grpo.rollout.hf_decode`: a preallocated key/value cache, finished rows dropped from the
batch); with ``use_generate`` (always with ``synced_gpus``) transformers' ``generate``, with the
warpers, a recording processor and the sampler passed as logits processors. Batches are
left-padded; each row is cut after its own eos / stop string
(:func:`grpo.rollout.tokens.find_ending`), since ``generate`` pads rows that finished early.

Seeded sampling is per row, like vLLM's per-request seeds: sample ``k`` of prompt ``p`` draws
from its own ``torch.Generator`` seeded ``seed + p*n + k`` (:func:`~grpo.rollout.sampling.row_seed`;
:class:`~grpo.rollout.sampling.RowSampler`, an exponential race, i.e. Gumbel-max). A row's
tokens then do not depend on which other rows share the batch (or leave it early), so a whole
step can be one batched call and still give every prompt the same samples in 1 process or N
(up to float rounding of differently padded batches).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from grpo.rollout.sampling import (
    RowSampler,
    SampledTokenLogprobs,
    StopInText,
    distinct_rows,
    left_pad,
    logits_warpers,
    position_ids,
    row_seed,
)
from grpo.rollout.tokens import encode_prompts, eos_token_ids, make_rollout
from grpo.rollout.types import BaseGenerator, Prompt, Rollout, SamplingConfig
from grpo.rollout.weights import unwrap_model


class HFGenerator(BaseGenerator):
    """Rollouts with ``model.generate`` on the training model itself.

    Args:
        model: the policy being trained (a transformers causal LM, a peft model, or either
            wrapped by DDP / accelerate); generation runs in eval mode, the mode is restored.
        tokenizer: its tokenizer (chat template for message prompts, eos, decoding).
        max_batch_size: most sequences (prompts x n) per ``generate`` call; None = all at once.
        synced_gpus: keep every process stepping until all are done (transformers'
            ``synced_gpus``), for sharded (FSDP) models whose forward is a collective. Every
            process must then call ``generate`` as often, with as many rows.
        chat_template_kwargs: extra variables for the chat template (e.g. ``enable_thinking``).
        share_prompt_prefill: run each distinct prompt's prefill once and copy its key/value
            cache to its ``n`` rows (vLLM's prefix caching does the same); rows then differ only
            by float rounding from separately prefilled ones. Not with ``synced_gpus``.
        use_generate: decode with transformers' ``generate`` (its growing ``DynamicCache``,
            every row stepped until the last one ends) instead of the generator's own loop
            (:mod:`grpo.rollout.hf_decode`); same tokens and log-probs up to float rounding,
            slower. ``synced_gpus`` implies it (a sharded forward is a collective: every
            process must run as many forwards of as many rows).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        max_batch_size: int | None = None,
        synced_gpus: bool = False,
        share_prompt_prefill: bool = True,
        use_generate: bool = False,
        chat_template_kwargs: dict | None = None,
    ):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.synced_gpus = synced_gpus
        self.share_prompt_prefill = share_prompt_prefill and not synced_gpus
        self.use_generate = use_generate or synced_gpus
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._closed = False

    # -- Generator protocol ------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig
    ) -> list[Rollout]:
        """``len(prompts) * n`` rollouts, prompt-major (see :class:`grpo.rollout.Generator`)."""
        if self._closed:
            raise RuntimeError("HFGenerator is closed")
        model = unwrap_model(self.model)
        max_ctx = getattr(model.config, "max_position_embeddings", None)
        encoded = encode_prompts(self.tokenizer, prompts, n, max_ctx, self.chat_template_kwargs)
        eos_ids = eos_token_ids(self.tokenizer, getattr(model, "generation_config", None))
        rows = [(p, k) for p in range(len(encoded)) for k in range(n)]  # prompt-major
        step = self.max_batch_size or len(rows)
        out: list[Rollout] = []
        was_training = model.training
        model.eval()
        try:
            for s in range(0, len(rows), step):
                out += self._generate_rows(
                    model, encoded, rows[s : s + step], n, sampling, eos_ids, max_ctx
                )
        finally:
            model.train(was_training)
        return out

    def sync_weights(self, model: nn.Module) -> None:
        """No-op: generation already uses the training model's parameters.

        Raises if ``model`` is not (a wrapper of) the generator's model, which would mean the
        trainer and the sampler silently diverged.
        """
        if unwrap_model(model) is not unwrap_model(self.model):
            raise ValueError(
                "HFGenerator samples from the model it was built with; pass that model "
                "(or build a new HFGenerator for a different one)"
            )

    def close(self) -> None:
        self._closed = True

    @property
    def policy_model(self) -> nn.Module:
        """The training model itself: no separate numerics, nothing to push."""
        return self.model

    @property
    def device(self) -> torch.device:
        return next(unwrap_model(self.model).parameters()).device

    def token_engine(self):
        from grpo.rollout.engines import HFEngine

        return HFEngine(self)

    def __enter__(self) -> HFGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def sample_tokens(
        self,
        contexts: Sequence[list[int]],
        limits: Sequence[int],
        sampling: SamplingConfig,
        *,
        seeds: Sequence[int] | None = None,
        share: Sequence[int] | None = None,
    ) -> list[tuple[list[int], list[float]]]:
        """Sampled ids and their log-probs after each token context: the layer under
        :meth:`generate`, also used by multi-turn engines (whole conversations as contexts).

        Args:
            contexts: token ids to continue, one row each (any lengths; left-padded here).
            limits: the most new tokens per row.
            sampling: how to sample (its ``seed`` is ignored: see ``seeds``).
            seeds: row ``i`` draws from its own stream seeded ``seeds[i]``; None: the global RNG.
            share: rows with equal ``share[i]`` have equal contexts: their prefill runs once
                (with ``share_prompt_prefill``).

        Returns, per row, the ids up to where it finished (eos, stop string or its limit) or
        beyond, to be cut with :func:`grpo.rollout.tokens.find_ending`.
        """
        model = unwrap_model(self.model)
        eos_ids = eos_token_ids(self.tokenizer, getattr(model, "generation_config", None))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_ids[0]
        gens = None
        if seeds is not None and not sampling.greedy:
            gens = [torch.Generator(device=_device(model)).manual_seed(int(s)) for s in seeds]
        share = share if self.share_prompt_prefill else None
        was_training = model.training
        model.eval()
        try:
            if self.use_generate:
                return self._generate_with_hf(
                    model, contexts, limits, sampling, eos_ids, pad, gens, share
                )
            from grpo.rollout.hf_decode import decode

            return decode(
                model,
                self.tokenizer,
                contexts,
                limits=limits,
                sampling=sampling,
                eos_ids=eos_ids,
                pad_id=pad,
                generators=gens,
                share=share,
            )
        finally:
            model.train(was_training)

    def _generate_rows(self, model, encoded, rows, n, sampling, eos_ids, max_ctx) -> list[Rollout]:
        prompts = [encoded[p] for p, _ in rows]
        limits = [
            sampling.max_tokens if max_ctx is None else min(sampling.max_tokens, max_ctx - len(ids))
            for ids in prompts
        ]
        seeds = None
        if sampling.seed is not None:
            seeds = [row_seed(sampling.seed, p, n, k) for p, k in rows]
        sampled = self.sample_tokens(
            prompts, limits, sampling, seeds=seeds, share=[p for p, _ in rows]
        )
        return [
            make_rollout(
                self.tokenizer,
                prompts[i],
                ids,
                logps,
                prompt_index=p,
                sample_index=k,
                eos_ids=eos_ids,
                sampling=sampling,
                limit=limits[i],
            )
            for i, ((p, k), (ids, logps)) in enumerate(zip(rows, sampled, strict=True))
        ]

    def _generate_with_hf(self, model, contexts, limits, sampling, eos_ids, pad, generators, share):
        """Each row's sampled ids and log-probs from one ``model.generate`` call."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        device = _device(model)
        width = max(len(ids) for ids in contexts)
        input_ids_BL, mask_BL = left_pad(contexts, pad)
        config = GenerationConfig(
            do_sample=False,  # greedy over the scores RowSampler leaves: its pick
            max_new_tokens=max(limits),  # rows with lower limits are cut below
            eos_token_id=list(eos_ids),
            pad_token_id=pad,
            num_beams=1,
            return_dict_in_generate=True,
        )
        recorder = SampledTokenLogprobs()
        starts_B = torch.tensor([width - len(ids) for ids in contexts])
        processors = [*logits_warpers(sampling, starts_B), recorder]
        if not sampling.greedy:
            processors.append(RowSampler(generators))
        processors = LogitsProcessorList(processors)
        input_ids_BL, mask_BL = input_ids_BL.to(device), mask_BL.to(device)
        cache = None
        if share is not None:
            cache = _shared_prefill(model, input_ids_BL, mask_BL, share)
        with _without_model_generation_defaults(model):
            out = model.generate(
                input_ids=input_ids_BL,
                attention_mask=mask_BL,
                past_key_values=cache,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList(
                    [StopInText(self.tokenizer, sampling.stop, width)] if sampling.stop else []
                ),
                synced_gpus=self.synced_gpus,
            )
        sampled_BT = out.sequences[:, width:].cpu()
        logp_BT = recorder.result(out.sequences[:, -1]).cpu()
        return [(sampled_BT[i, :n].tolist(), logp_BT[i, :n].tolist()) for i, n in enumerate(limits)]


@torch.no_grad()
def _shared_prefill(
    model: nn.Module, input_ids_BL: torch.Tensor, mask_BL: torch.Tensor, share: Sequence[int]
):
    """Key/value cache of every row's prompt but its last token, each distinct prompt (equal
    ``share``) computed once (``generate`` then runs that last token itself, so the first sampled
    token's scores go through the logits processors as usual). None when no prompt repeats."""
    first_row_U, row_to_unique_B = distinct_rows(torch.tensor(list(share)))
    if len(first_row_U) == len(share) or input_ids_BL.shape[1] < 2:
        return None
    ids_UL, mask_UL = input_ids_BL[first_row_U, :-1], mask_BL[first_row_U, :-1]
    positions_UL = position_ids(mask_UL, pad=1)  # generate's convention
    cache = model(
        input_ids=ids_UL, attention_mask=mask_UL, position_ids=positions_UL, use_cache=True
    ).past_key_values
    if cache is None:
        return None
    cache.reorder_cache(row_to_unique_B.to(input_ids_BL.device))
    return cache


@contextmanager
def _without_model_generation_defaults(model: nn.Module) -> Iterator[None]:
    """Hide the model's own ``generation_config`` while sampling.

    transformers fills every field left unset in the ``generate`` config from the model's
    ``generation_config.json`` (e.g. Qwen2.5 ships ``repetition_penalty=1.05``, ``top_k=20``):
    those processors would change the sampling distribution behind the SamplingConfig's back,
    and vLLM ignores them once explicit sampling parameters are given. A blank config leaves
    transformers' neutral global defaults.
    """
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
