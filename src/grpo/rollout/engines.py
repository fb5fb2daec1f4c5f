"""Token-level sampling for multi-turn rollouts: contexts of token ids in, sampled ids out.

A multi-turn trajectory continues from its own tokens (token-in, token-out): the next turn is
sampled from ``prompt + everything so far`` as ids, never from re-tokenized text. The single-turn
generators take prompts, so :func:`token_engine` adapts them:

* :class:`HFEngine` on an :class:`grpo.rollout.HFGenerator`: the generator's own
  :meth:`~grpo.rollout.HFGenerator.sample_tokens` (its decode loop, warpers in vLLM's order,
  per-row exponential-race sampler), each row with its *own* seed and context;
* :class:`VLLMEngine` on a :class:`grpo.rollout.VLLMGenerator`: one request per row with
  ``prompt_token_ids`` and its seed (vLLM's per-request seeds), with the generator's current
  LoRA adapter when it syncs adapters only.

Each returns, per row, the raw sampled ids and their log-probs; the caller cuts them at the end
of the turn with :func:`grpo.rollout.tokens.find_ending`, as the generators do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from grpo.rollout.types import SamplingConfig


@runtime_checkable
class TokenEngine(Protocol):
    tokenizer: Any
    eos_ids: list[int]
    max_context: int | None

    def sample(
        self,
        contexts: Sequence[list[int]],
        seeds: Sequence[int | None],
        limits: Sequence[int],
        sampling: SamplingConfig,
    ) -> list[tuple[list[int], list[float]]]:
        """Row ``i``: up to ``limits[i]`` tokens after ``contexts[i]``, drawn with ``seeds[i]``
        (None: the global RNG), with ``sampling``'s temperature, truncation and stop strings."""
        ...


class HFEngine:
    """Per-row seeded sampling with the generator's
    :meth:`~grpo.rollout.HFGenerator.sample_tokens`."""

    def __init__(self, generator: Any):
        from grpo.rollout.tokens import eos_token_ids
        from grpo.rollout.weights import unwrap_model

        self.generator = generator
        self.tokenizer = generator.tokenizer
        model = unwrap_model(generator.model)
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        self.eos_ids = eos_token_ids(self.tokenizer, getattr(model, "generation_config", None))

    def sample(self, contexts, seeds, limits, sampling):
        if any(s is not None for s in seeds) and any(s is None for s in seeds):
            raise ValueError("seeds must be all None or all ints")
        seeded = seeds[0] is not None if len(seeds) else False
        step = self.generator.max_batch_size or len(contexts)
        out = []
        for s in range(0, len(contexts), step):
            out += self.generator.sample_tokens(
                contexts[s : s + step],
                limits[s : s + step],
                sampling,
                seeds=seeds[s : s + step] if seeded else None,
            )
        return out


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
        params = [
            SamplingParams(
                **extra,
                n=1,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k_enabled else 0,
                min_p=sampling.min_p,
                max_tokens=limit,
                stop=list(sampling.stop) or None,
                stop_token_ids=list(self.eos_ids),
                include_stop_str_in_output=True,
                logprobs=0,
                seed=seed,
                detokenize=bool(sampling.stop),
            )
            for seed, limit in zip(seeds, limits, strict=True)
        ]
        outputs = self.generator.llm.generate(
            [{"prompt_token_ids": list(c)} for c in contexts],
            params,
            use_tqdm=False,
            lora_request=self.generator.lora_request,  # read per call: it changes at each sync
        )
        result = []
        for request in outputs:
            sample = request.outputs[0]
            ids = list(sample.token_ids)
            result.append(
                (ids, [step[t].logprob for t, step in zip(ids, sample.logprobs, strict=True)])
            )
        return result


def token_engine(generator: Any) -> TokenEngine:
    """The token-level engine of a generator (its declared
    :meth:`grpo.rollout.BaseGenerator.token_engine`: HF, colocated vLLM), or ``generator``
    itself if it is already a :class:`TokenEngine`."""
    from grpo.rollout.types import BaseGenerator

    if isinstance(generator, BaseGenerator):
        return generator.token_engine()
    if isinstance(generator, TokenEngine):
        return generator
    return BaseGenerator.token_engine(generator)  # the TypeError naming what is supported
