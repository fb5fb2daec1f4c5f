"""Appending observations to a token stream without re-tokenizing it (token-in, token-out).

A trajectory's tokens are the prompt, then each sampled turn *exactly as sampled*, then the
tokens the environment adds. Those are found by rendering the conversation with the chat
template and taking the text that follows what the stream already holds::

    stream_text = render(prompt, generation prompt) + decoded turn 1          (as sampled)
    new_text    = render(prompt + [assistant 1, tool 1], generation prompt)
    new_text    = stream_text + delta          <- required: the template is prefix-preserving
    stream     += tokenize(delta)              (loss mask 0: the policy did not choose them)

so the separators the template writes between messages (ChatML's ``\\n`` after ``<|im_end|>``)
land in the delta. Rendering the tool message *alone* drops them: the bug verl users hit at every
assistant -> tool boundary (verl issues 6501, 3720), which makes training and sampling see
different sequences. A template that rewrites earlier turns (strips ``<think>`` from past
assistant messages, trims whitespace, closes assistant messages with a token that is not an eos)
breaks the requirement: :func:`check_prefix_preserving` finds that before training, and at run
time :func:`observation_delta` raises :class:`TemplateError` for the trajectory concerned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Messages = Sequence[Mapping[str, Any]]


class TemplateError(ValueError):
    """The chat template does not extend the token stream (see the module docstring)."""


def render(
    tokenizer,
    messages: Messages,
    *,
    generation_prompt: bool,
    tools: list | None = None,
    **template_kwargs: Any,
) -> str:
    """The chat template's text (``template_kwargs``: extra template variables, e.g.
    ``enable_thinking``)."""
    return tokenizer.apply_chat_template(
        list(messages),
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=generation_prompt,
        **template_kwargs,
    )


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of template-rendered text (the template writes its own special tokens)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (
        f"at character {i}: the stream has {a[max(0, i - 30) : i + 30]!r}, "
        f"the template {b[max(0, i - 30) : i + 30]!r}"
    )


def observation_delta(
    tokenizer,
    messages: Messages,
    stream_text: str,
    *,
    tools: list | None = None,
    **template_kwargs: Any,
) -> str:
    """The text the template writes after ``stream_text`` for ``messages`` (the conversation up
    to and including the new observations) and the next generation prompt."""
    new_text = render(tokenizer, messages, generation_prompt=True, tools=tools, **template_kwargs)
    if not new_text.startswith(stream_text):
        raise TemplateError(
            "the chat template is not prefix-preserving: re-rendering the conversation "
            f"changes text the model already saw, {_first_difference(stream_text, new_text)}"
        )
    return new_text[len(stream_text) :]


def assistant_end(
    tokenizer, eos_ids: Sequence[int], tools: list | None = None, **template_kwargs: Any
) -> str:
    """The eos token text the template closes an assistant message with (a sampled turn ends
    with it). TemplateError if the template's text after an assistant message starts with none
    of ``eos_ids``' tokens: then no sampled turn can match the rendered conversation."""
    marker = "\x00MARK\x00"
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    text = render(tokenizer, probe, generation_prompt=False, tools=tools, **template_kwargs)
    tail = text[text.index(marker) + len(marker) :]
    for i in eos_ids:
        eos = tokenizer.convert_ids_to_tokens(int(i))
        if tail.startswith(eos):
            return eos
    raise TemplateError(
        f"the chat template closes an assistant message with {tail[:40]!r}, which starts with none "
        f"of the eos tokens {tokenizer.convert_ids_to_tokens(list(eos_ids))}: a turn the model "
        "ends with eos cannot match the rendered conversation; make the template's end-of-turn "
        "token an eos (the generation config's eos_token_id) or use a training template"
    )


def check_prefix_preserving(
    tokenizer,
    eos_ids: Sequence[int],
    *,
    tools: list | None = None,
    probe: Messages | None = None,
    **template_kwargs: Any,
) -> None:
    """Raise :class:`TemplateError` unless building a tool conversation turn by turn, token by
    token, gives the same ids as rendering it once (up to the template's text after the final
    eos, e.g. ChatML's last ``\\n``, which no one samples).

    The probe conversation (user, assistant with a tool call, tool, assistant) is replayed the
    way :class:`grpo.rollout.multiturn.MultiTurnGenerator` builds a trajectory: each assistant
    turn tokenized as the model would sample it (content, then eos), each observation appended as
    the delta of a fresh rendering.
    """
    kw = dict(tools=tools, **template_kwargs)
    eos = assistant_end(tokenizer, eos_ids, **kw)
    probe = list(
        probe
        or [
            {"role": "user", "content": "What is 12*34?"},
            {
                "role": "assistant",
                "content": '<think>use the tool</think><tool_call>\n{"name": "python", '
                '"arguments": {"code": "12*34"}}\n</tool_call>',
            },
            {"role": "tool", "content": "408"},
            {"role": "assistant", "content": "<think>done</think><answer>408</answer>"},
        ]
    )
    first = next(i for i, m in enumerate(probe) if m["role"] == "assistant")
    text = render(tokenizer, probe[:first], generation_prompt=True, **kw)
    ids = encode_text(tokenizer, text)
    i = first
    while i < len(probe):
        turn = probe[i]["content"] + eos  # an assistant turn as sampled
        text += turn
        ids += encode_text(tokenizer, turn)
        j = i + 1
        while j < len(probe) and probe[j]["role"] != "assistant":
            j += 1
        if j > i + 1:  # observations, then the next assistant turn
            delta = observation_delta(tokenizer, probe[:j], text, **kw)
            text += delta
            ids += encode_text(tokenizer, delta)
        i = j
    full = render(tokenizer, probe, generation_prompt=False, **kw)
    if not full.startswith(text):
        raise TemplateError(
            "the chat template renders the whole conversation differently from the turn-by-turn "
            f"stream, {_first_difference(text, full)}"
        )
    full_ids = encode_text(tokenizer, full)
    if full_ids[: len(ids)] != ids:
        raise TemplateError(
            "the turn-by-turn token ids differ from the ids of the conversation rendered once "
            "(tokens merge across a turn boundary); the stream would not be what the template gives"
        )
