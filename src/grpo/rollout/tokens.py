"""Prompts in, completions out: the token-level rules every generator shares.

Sharing them is what makes the generators interchangeable. A prompt is tokenized here once, the
same way for HF and vLLM, and the engines only ever see token ids; the end of a completion
(eos, stop string, length) and its text are decided here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grpo.rollout.types import FinishReason, Prompt, Rollout, SamplingConfig


def encode_prompt(tokenizer, prompt: Prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids of one prompt, as the policy is conditioned on them.

    ``chat_template_kwargs`` are extra variables for the chat template (e.g. Qwen3's
    ``enable_thinking``), as trl's ``chat_template_kwargs``.

    Chat messages: the tokenizer's chat template is rendered once with
    ``add_generation_prompt=True`` and the result tokenized *without* adding special tokens
    again (a template already writes its BOS; adding one more is the classic double-BOS bug).
    Plain text: tokenized with the tokenizer's special tokens (e.g. BOS), as a user would.
    The trainer should tokenize prompts with this function too (or reuse
    ``Rollout.prompt_ids``).
    """
    text, special = render_prompt(tokenizer, prompt, chat_template_kwargs)
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def render_prompt(
    tokenizer, prompt: Prompt, chat_template_kwargs: dict | None = None
) -> tuple[str, bool]:
    """(the text :func:`encode_prompt` tokenizes, whether it adds the tokenizer's special
    tokens): a chat prompt rendered by the chat template, a text prompt as it is."""
    if isinstance(prompt, str):
        return prompt, True
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        if not prompt:
            raise ValueError("a chat prompt needs at least one message, got []")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("chat-message prompts need a tokenizer with a chat_template")
        text = tokenizer.apply_chat_template(
            list(prompt), tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
        return text, False
    raise TypeError(
        f"a prompt is a string or a list of chat messages (dicts), got {type(prompt).__name__}"
    )


def prompt_lengths(
    tokenizer,
    prompts: Sequence[Prompt],
    chat_template_kwargs: dict | None = None,
    batch_size: int = 1024,
) -> list[int]:
    """``len(encode_prompt(tokenizer, p, chat_template_kwargs))`` for every prompt, tokenizing
    ``batch_size`` rendered prompts per tokenizer call (a fast tokenizer encodes a batch in
    parallel: the cost is one chat-template rendering per prompt plus the batched encoding)."""
    lengths: list[int] = []
    for start in range(0, len(prompts), batch_size):
        rendered = [
            render_prompt(tokenizer, p, chat_template_kwargs)
            for p in prompts[start : start + batch_size]
        ]
        out = [0] * len(rendered)
        for special in (True, False):
            which = [i for i, (_, s) in enumerate(rendered) if s is special]
            if which:
                ids = tokenizer([rendered[i][0] for i in which], add_special_tokens=special)
                for i, one in zip(which, ids["input_ids"], strict=True):
                    out[i] = len(one)
        lengths += out
    return lengths


def encode_prompts(
    tokenizer,
    prompts: Sequence[Prompt],
    n: int,
    max_context: int | None,
    chat_template_kwargs: dict | None = None,
) -> list[list[int]]:
    """Validate a ``generate()`` call and tokenize its prompts.

    Raises ValueError for an empty prompt list, ``n < 1``, a prompt that tokenizes to nothing,
    or one that leaves no room for a single completion token in ``max_context``.
    """
    if isinstance(prompts, (str, bytes)) or (
        isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], dict)
    ):
        raise TypeError(
            "prompts must be a sequence of prompts; wrap a single prompt or conversation in a list"
        )
    if len(prompts) == 0:
        raise ValueError("generate() needs at least one prompt, got an empty list")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (completions per prompt) must be an int >= 1, got {n!r}")
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = encode_prompt(tokenizer, prompt, chat_template_kwargs)
        if not ids:
            raise ValueError(f"prompt {i} tokenizes to no tokens; the model needs a context")
        if max_context is not None and len(ids) >= max_context:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens but the context holds {max_context}: "
                "no room for a completion; shorten the prompt or raise max_model_len"
            )
        encoded.append(ids)
    return encoded


def eos_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Ids that end a completion: the tokenizer's eos plus the model's generation-config eos."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    extra = getattr(generation_config, "eos_token_id", None)
    if isinstance(extra, int):
        extra = [extra]
    for i in extra or []:
        if int(i) not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id; completions could never stop")
    return ids


def first_stop_end(text: str, stop: Sequence[str]) -> int | None:
    """End offset of the stop string that completes first in ``text``, or None."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return min(ends) if ends else None


@dataclass(frozen=True)
class Ending:
    length: int  # completion tokens to keep
    finish_reason: FinishReason
    text: str


def find_ending(
    tokenizer, ids: Sequence[int], *, eos_ids: Sequence[int], stop: Sequence[str], limit: int
) -> Ending:
    """Where a sampled token stream ends, why, and its text (the rules of :class:`Rollout`).

    ``ids`` may run past the end (HF pads finished rows); the completion is cut after the first
    eos token, or after the token that completes the first stop string, or at ``limit`` tokens.
    The stop-string position is found by bisection over decoded prefixes (O(log T) decodes): a
    prefix's text contains a stop string from some length on, and never loses it after.
    """
    ids = list(ids[:limit])
    eos = set(eos_ids)
    end, reason = len(ids), "length"
    for t, tok in enumerate(ids):
        if tok in eos:
            end, reason = t + 1, "stop"
            break
    text = tokenizer.decode(ids[:end], skip_special_tokens=True)
    if stop and first_stop_end(text, stop) is not None:
        lo, hi = 1, end  # smallest k in [lo, hi] whose prefix text holds a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            if first_stop_end(tokenizer.decode(ids[:mid], skip_special_tokens=True), stop) is None:
                lo = mid + 1
            else:
                hi = mid
        end, reason = lo, "stop"
        text = tokenizer.decode(ids[:end], skip_special_tokens=True)
    if stop and (cut := first_stop_end(text, stop)) is not None:
        text = text[:cut]  # the last token may run past the stop string: drop what follows
    return Ending(end, reason, text)


def make_rollout(
    tokenizer,
    prompt_ids: list[int],
    sampled_ids: Sequence[int],
    sampled_logprobs: Sequence[float],
    *,
    prompt_index: int,
    sample_index: int,
    eos_ids: Sequence[int],
    sampling: SamplingConfig,
    limit: int,
) -> Rollout:
    """Cut a sampled stream at its end (:func:`find_ending`) and build the record.

    The finish reason is inferred from the tokens for every engine, so the rules cannot drift
    between generators (vLLM stops at the same place, as its tests check).
    """
    ending = find_ending(tokenizer, sampled_ids, eos_ids=eos_ids, stop=sampling.stop, limit=limit)
    n = ending.length
    return Rollout(
        prompt_ids=list(prompt_ids),
        completion_ids=[int(t) for t in sampled_ids[:n]],
        logprobs=[float(x) for x in sampled_logprobs[:n]],
        text=ending.text,
        finish_reason=ending.finish_reason,
        prompt_index=prompt_index,
        sample_index=sample_index,
    )
