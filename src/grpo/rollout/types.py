"""Typed records of the rollout layer: what a generator returns and how it is asked to sample.

One :class:`Rollout` per sampled completion. GRPO (DeepSeekMath, arXiv:2402.03300, Sec. 4.1)
samples a *group* of G completions per prompt and scores each against its group, so the order
of the records is part of the contract: ``generate(prompts, n)`` returns ``len(prompts) * n``
records, prompt-major, the group of prompt ``p`` at indices ``p*n .. p*n + n-1``.

Log-prob semantics (the same for every generator in :mod:`grpo.rollout`)
-------------------------------------------------------------------------
``Rollout.logprobs[t]`` is ``log pi_sample(o_t | q, o_<t)``, the log-probability of the sampled
token under the distribution the sampler actually drew from:

    z = penalize_repeats(logits)                  (repetition_penalty; 1.0 = off, the default)
    z = z / temperature                           (greedy, temperature 0: no processing at all)
    z = min_p(z); z = top_k(z); z = top_p(z)      (masked tokens -> -inf; vLLM's order)
    pi_sample = softmax(z)                        (so renormalised over the kept tokens)

That is vLLM's ``logprobs_mode="processed_logprobs"`` (vLLM's *default*, ``raw_logprobs``, is
taken *before* temperature). With the GRPO defaults ``top_p=1, top_k=0, min_p=0`` it equals
``log_softmax(logits / temperature)``, exactly what the trainer recomputes with
:func:`grpo.logprobs.token_logprobs` (``temperature=`` the same value). With truncation on,
``pi_sample`` puts more mass on the kept tokens than ``softmax(logits / T)``: the sampler's
log-prob is then the behaviour policy's, which is what an importance-sampling correction such
as TIS (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training") needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]
Prompt = str | list[dict]  # plain text, or chat messages [{"role": ..., "content": ...}]


@dataclass(frozen=True)
class Rollout:
    """One sampled completion and everything the trainer needs to train on it."""

    prompt_ids: list[int]
    """Exactly the token ids the policy was conditioned on (chat template applied once)."""
    completion_ids: list[int]
    """Exactly the sampled tokens, up to and including the one that ended the sample (``<eos>``,
    or the token completing a stop string); nothing after it."""
    logprobs: list[float]
    """``log pi_sample`` of each completion token (see the module docstring); same length."""
    text: str
    """``completion_ids`` decoded with special tokens skipped; if a stop string ended the
    sample, the text ends right after that stop string (it is kept, so a format reward can see
    e.g. a closing ``</answer>``)."""
    finish_reason: FinishReason
    """``"stop"``: ended by eos or a stop string; ``"length"``: cut at ``max_tokens`` or at the
    context limit."""
    prompt_index: int
    """Index of its prompt in the ``generate()`` call, i.e. its group."""
    sample_index: int
    """0..n-1 inside the group."""
    loss_mask: list[int] | None = None
    """Per completion token: 1 if the policy chose it and it is trained on, 0 if not (tool or
    environment output appended to a trajectory, tokens forced by a template). None = all 1."""
    group_id: int | None = None
    """Identity of its prompt's group within a training step, set by the rollout source (not a
    position: records may be filtered or reordered, rewards are joined to them by this id)."""
    policy_version: int = 0
    """The optimizer step whose weights sampled it (the trainer's step counter at generation),
    so that staleness can be measured and bounded."""
    teacher_prompt_ids: list[int] | None = None
    """On-policy self-distillation (``distill.self_context``): the ids of the *privileged*
    prompt (the prompt with the row's context appended) on which the policy, as its own
    teacher, scores ``completion_ids``. Set by the rollout source; None: no self-distillation."""

    @property
    def truncated(self) -> bool:
        """True when the completion was cut by a length limit rather than ended by the model."""
        return self.finish_reason == "length"

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.completion_ids):
            raise ValueError(
                f"logprobs ({len(self.logprobs)}) and completion_ids ({len(self.completion_ids)}) "
                "must have the same length"
            )
        if self.loss_mask is None:
            object.__setattr__(self, "loss_mask", [1] * len(self.completion_ids))
        elif len(self.loss_mask) != len(self.completion_ids):
            raise ValueError(
                f"loss_mask ({len(self.loss_mask)}) and completion_ids "
                f"({len(self.completion_ids)}) must have the same length"
            )


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Field semantics follow vLLM's ``SamplingParams``.

    Also the ``sampling`` section of :class:`grpo.GRPOConfig` (pydantic validates it there: an
    unknown key is an error, and these attribute docstrings are the field descriptions)."""

    __pydantic_config__ = {"extra": "forbid", "use_attribute_docstrings": True}

    temperature: float = 1.0
    """Softmax temperature (> 0), or 0 for greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with cumulative probability >= top_p.
    1.0 = off."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 or -1 = off."""
    min_p: float = 0.0
    """Drop tokens whose probability is below ``min_p`` x the top token's; 0 = off."""
    repetition_penalty: float = 1.0
    """vLLM's (and CTRL's, Keskar et al. 2019, arXiv:1909.05858 sec. 4.1) repetition penalty: the
    logit of every token already in the prompt or the completion is divided by it when positive,
    multiplied when negative, before temperature. 1.0 = off. The sampler's distribution (and so
    ``Rollout.logprobs``) then differs from the policy's ``softmax(logits / T)``."""
    max_tokens: int = 256
    """Most completion tokens per sample."""
    stop: tuple[str, ...] = field(default=())
    """Stop strings: a sample ends once its text contains one (the string is kept in ``text``)."""
    seed: int | None = None
    """Seed for reproducible sampling: sample k of prompt p is drawn from its own stream seeded
    ``seed + p*n + k`` (vLLM and HF generators alike), so a row's tokens do not depend on the
    other rows of the call. None: the global RNG, not reproducible."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a single string is a common slip: treat it as one stop
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be an int >= -1 (0 or -1 = off), got {self.top_k!r}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(
                f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}"
            )
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def top_k_enabled(self) -> bool:
        return self.top_k > 0


@runtime_checkable
class Generator(Protocol):
    """What the trainer calls. Every generator of :mod:`grpo.rollout` implements it by deriving
    from :class:`BaseGenerator`, which also *declares* its capabilities (see there)."""

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig
    ) -> list[Rollout]:
        """``len(prompts) * n`` rollouts, prompt-major: groups contiguous (index ``p*n + k``)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the sampler use ``model``'s current weights (after an optimizer step)."""
        ...

    def close(self) -> None:
        """Release the engine; idempotent."""
        ...


class BaseGenerator:
    """The base of every generator: the :class:`Generator` methods and its capabilities, declared.

    The trainer and the rollout source read these attributes; they never probe a generator with
    ``hasattr`` or by its class name. A subclass overrides what differs from the defaults:

    * ``versioned`` (False): its rollouts carry in ``Rollout.policy_version`` the version of the
      weights of its own that sampled them (a child process, a server); False: the rollout
      source tags each rollout with the step that asked for it;
    * ``accepts_rows`` (False): ``generate`` takes the prompts' dataset rows (``rows=``);
    * ``returns_logprobs`` (True): ``Rollout.logprobs`` are the sampler's log-probs (see the
      module docstring); False for placeholders, then ``loss.use_tis`` and the asynchronous
      correction are refused;
    * ``sleep_enabled`` (False) with :meth:`sleep` / :meth:`wake_up`: put to sleep while the
      learner trains (vLLM's sleep mode frees the engine's GPU memory);
    * ``max_turn_tokens`` (None): a multi-turn generator's per-turn limit, read by the learning
      watch;
    * ``encode_prompt`` (None): a method ``prompt -> ids`` for a generator that renders more
      than the prompt (tool schemas); None: the tokenizer's chat template;
    * ``chat_template_kwargs`` (empty): the chat-template variables it renders prompts with;
    * :attr:`policy_model` (None): the training model object it samples from (HFGenerator), so
      there are no separate numerics to correct; None: weights of its own;
    * :attr:`device` (None): the device it samples on, when it manages one;
    * :meth:`token_engine`: token-level sampling for :class:`grpo.rollout.MultiTurnGenerator`.

    A generator that is not a subclass (duck-typed: an object with ``generate``) is wrapped by
    :func:`as_generator` with these defaults.
    """

    versioned: bool = False
    accepts_rows: bool = False
    returns_logprobs: bool = True
    sleep_enabled: bool = False
    max_turn_tokens: int | None = None
    encode_prompt: Callable[[Prompt], list[int]] | None = None
    chat_template_kwargs: Mapping[str, Any] = MappingProxyType({})

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig
    ) -> list[Rollout]:
        raise NotImplementedError(f"{type(self).__name__} must implement generate()")

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Default: nothing to do (it samples from ``model`` itself, or holds no weights). A
        generator with weights of its own overrides it."""

    def close(self) -> None:
        """Default: nothing to release."""

    def sleep(self, level: int = 1) -> None:
        """Free the engine's memory while the learner trains (only with ``sleep_enabled``)."""
        raise RuntimeError(f"{type(self).__name__} has no sleep mode (sleep_enabled is False)")

    def wake_up(self) -> None:
        raise RuntimeError(f"{type(self).__name__} has no sleep mode (sleep_enabled is False)")

    @property
    def policy_model(self) -> torch.nn.Module | None:
        return None

    @property
    def device(self) -> torch.device | None:
        return None

    def token_engine(self) -> Any:
        raise TypeError(
            f"MultiTurnGenerator needs token-level sampling; {type(self).__name__} has none "
            "(supported: HFGenerator, VLLMGenerator, or an object with "
            "sample(contexts, seeds, limits, sampling), tokenizer, eos_ids and max_context)"
        )


_CAPABILITIES = (
    "versioned",
    "accepts_rows",
    "returns_logprobs",
    "sleep_enabled",
    "max_turn_tokens",
    "encode_prompt",
    "policy_model",
    "token_engine",
)


class _DuckGenerator(BaseGenerator):
    """A duck-typed generator (``generate``, optionally ``sync_weights`` / ``close``) with the
    default capabilities."""

    def __init__(self, inner: Any):
        self.inner = inner

    def generate(self, prompts, n, sampling, **kwargs):
        return self.inner.generate(prompts, n, sampling, **kwargs)

    def sync_weights(self, model) -> None:
        if callable(sync := getattr(self.inner, "sync_weights", None)):
            sync(model)

    def close(self) -> None:
        if callable(close := getattr(self.inner, "close", None)):
            close()


def as_generator(generator: Any) -> BaseGenerator:
    """``generator`` itself if it derives from :class:`BaseGenerator`; a duck-typed object with
    ``generate`` wrapped with the default capabilities; anything else refused (TypeError).

    A duck-typed object that declares a capability (say ``accepts_rows = True``) is refused
    rather than wrapped: the wrapper would drop it silently. Subclass :class:`BaseGenerator`.
    """
    if isinstance(generator, BaseGenerator):
        return generator
    name = type(generator).__name__
    if not callable(getattr(generator, "generate", None)):
        raise TypeError(
            f"{name} is not a generator: it has no generate(prompts, n, sampling) method "
            "(subclass grpo.rollout.BaseGenerator)"
        )
    declared = [a for a in _CAPABILITIES if hasattr(generator, a)]
    if declared:
        raise TypeError(
            f"{name} declares {', '.join(declared)} but does not derive from "
            "grpo.rollout.BaseGenerator, so the trainer would not read it; subclass "
            "grpo.rollout.BaseGenerator (class attributes / properties of that name)"
        )
    return _DuckGenerator(generator)
