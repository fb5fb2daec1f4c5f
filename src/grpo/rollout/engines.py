"""Token-level sampling for multi-turn rollouts: contexts of token ids in, sampled ids out.

A multi-turn trajectory continues from its own tokens (token-in, token-out): the next turn is
sampled from ``prompt + everything so far`` as ids, never from re-tokenized text. The single-turn
generators take prompts, so :func:`token_engine` adapts them:

* :class:`HFEngine` on an :class:`grpo.rollout.HFGenerator`: the same ``generate`` call, warpers
  (vLLM's order), sampled-token log-prob recorder and per-row exponential-race sampler as the
  generator (:mod:`grpo.rollout.hf`), but each row with its *own* seed and context;
* :class:`VLLMEngine` on a :class:`grpo.rollout.VLLMGenerator`: one request per row with
  ``prompt_token_ids`` and its seed (vLLM's per-request seeds).

Each returns, per row, the raw sampled ids and their log-probs; the caller cuts them at the end
of the turn with :func:`grpo.rollout.tokens.find_ending`, as the generators do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from grpo.rollout.types import SamplingConfig


class TokenEngine(Protocol):
    tokenizer: Any
    eos_ids: list[int]
    max_context: int | None

    def sample(self, contexts: Sequence[list[int]], seeds: Sequence[int | None], limits: Sequence[int],
               sampling: SamplingConfig) -> list[tuple[list[int], list[float]]]:
        """Row ``i``: up to ``limits[i]`` tokens after ``contexts[i]``, drawn with ``seeds[i]``
        (None: the global RNG), with ``sampling``'s temperature, truncation and stop strings."""
        ...


class HFEngine:
    """Per-row seeded sampling with ``transformers.generate`` (see :mod:`grpo.rollout.hf`)."""

    def __init__(self, generator: Any):
        from grpo.rollout.tokens import eos_token_ids
        from grpo.rollout.weights import unwrap_model

        self.generator = generator
        self.tokenizer = generator.tokenizer
        model = unwrap_model(generator.model)
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        self.eos_ids = eos_token_ids(self.tokenizer, getattr(model, "generation_config", None))

    def sample(self, contexts, seeds, limits, sampling):
        from grpo.rollout.weights import unwrap_model

        model = unwrap_model(self.generator.model)
        step = self.generator.max_batch_size or len(contexts)
        was_training = model.training
        model.eval()
        try:
            out = []
            for s in range(0, len(contexts), step):
                out += self._sample(model, contexts[s:s + step], seeds[s:s + step], limits[s:s + step], sampling)
            return out
        finally:
            model.train(was_training)

    def _sample(self, model, contexts, seeds, limits, sampling):
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from grpo.rollout.hf import (
            _device,
            _RowSampler,
            _SampledTokenLogprobs,
            _warpers,
            _without_model_generation_defaults,
        )

        device = _device(model)
        width = max(len(c) for c in contexts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        ids_BL = torch.full((len(contexts), width), pad, dtype=torch.long)
        mask_BL = torch.zeros((len(contexts), width), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding
            ids_BL[i, width - len(c):] = torch.tensor(c)
            mask_BL[i, width - len(c):] = 1
        config = GenerationConfig(do_sample=False, max_new_tokens=max(limits), eos_token_id=list(self.eos_ids),
                                  pad_token_id=pad, stop_strings=list(sampling.stop) or None, num_beams=1,
                                  return_dict_in_generate=True)
        recorder = _SampledTokenLogprobs()
        if getattr(sampling, "repetition_penalty", 1.0) != 1.0:  # it needs each row's first real column
            warpers = _warpers(sampling, torch.tensor([width - len(c) for c in contexts]))
        else:
            warpers = _warpers(sampling)
        processors = [*warpers, recorder]
        if not sampling.greedy:
            gens = None
            if any(s is not None for s in seeds):
                if any(s is None for s in seeds):
                    raise ValueError("seeds must be all None or all ints")
                gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
            processors.append(_RowSampler(gens))
        with _without_model_generation_defaults(model):
            out = model.generate(input_ids=ids_BL.to(device), attention_mask=mask_BL.to(device),
                                 generation_config=config, logits_processor=LogitsProcessorList(processors),
                                 tokenizer=self.tokenizer if sampling.stop else None)
        sampled_BT = out.sequences[:, width:].cpu()
        logp_BT = recorder.result(out.sequences[:, -1]).cpu()
        return [(sampled_BT[i, :limits[i]].tolist(), logp_BT[i, :limits[i]].tolist()) for i in range(len(contexts))]


class VLLMEngine:
    """Per-row seeded sampling with a colocated vLLM engine: one request per row."""

    def __init__(self, generator: Any):
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.eos_ids = list(generator.eos_ids)
        self.max_context = generator.max_model_len

    def sample(self, contexts, seeds, limits, sampling):
        from vllm import SamplingParams

        extra = {}
        if getattr(sampling, "repetition_penalty", 1.0) != 1.0:
            extra["repetition_penalty"] = sampling.repetition_penalty
        params = [SamplingParams(
            **extra, n=1, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k_enabled else 0, min_p=sampling.min_p, max_tokens=limit,
            stop=list(sampling.stop) or None, stop_token_ids=list(self.eos_ids), include_stop_str_in_output=True,
            logprobs=0, seed=seed, detokenize=bool(sampling.stop)) for seed, limit in zip(seeds, limits, strict=True)]
        outputs = self.generator.llm.generate([{"prompt_token_ids": list(c)} for c in contexts], params,
                                              use_tqdm=False)
        result = []
        for request in outputs:
            sample = request.outputs[0]
            ids = list(sample.token_ids)
            result.append((ids, [step[t].logprob for t, step in zip(ids, sample.logprobs, strict=True)]))
        return result


def token_engine(generator: Any) -> TokenEngine:
    """The token-level engine of a generator: HF, colocated vLLM, or one that is already an
    engine (has ``sample``, ``tokenizer``, ``eos_ids``, ``max_context``)."""
    name = type(generator).__name__
    if all(hasattr(generator, a) for a in ("sample", "tokenizer", "eos_ids", "max_context")):
        return generator
    if name == "HFGenerator" or (hasattr(generator, "model") and hasattr(generator, "max_batch_size")):
        return HFEngine(generator)
    if name == "VLLMGenerator":
        return VLLMEngine(generator)
    raise TypeError(f"MultiTurnGenerator needs token-level sampling; {name} has none (supported: HFGenerator, "
                    "VLLMGenerator, or an object with sample(contexts, seeds, limits, sampling))")
