"""``MultiTurnGenerator``: tool-using trajectories behind the single-turn ``generate`` contract.

``generate(prompts, n, sampling)`` returns ``len(prompts) * n`` :class:`Trajectory` records,
prompt-major, groups of ``n`` contiguous, ``prompt_index`` / ``sample_index`` set: the rollout
source, the trainer and the learner use it unchanged
(``GRPOTrainer(..., generator=MultiTurnGenerator(HFGenerator(model, tok), tools=[...]))``).
GRPO's group-relative advantage (DeepSeekMath arXiv:2402.03300 eq. 3) is then computed per
trajectory, and the loss runs over the policy's own tokens only (``loss_mask``), the recipe of
tool-integrated RL (ToRL, Li et al. 2025, arXiv:2503.23383; ReTool, Feng et al. 2025,
arXiv:2504.11536: tool output is masked out of the loss).

Each round, every unfinished trajectory samples one assistant turn (one batched engine call),
then every environment answers (concurrently, each within ``env_timeout_s``), and the
observations are appended as tokens with ``loss_mask`` 0 and log-prob 0 (:mod:`grpo.rollout.chat`:
token-in, token-out; nothing sampled is re-tokenized). Two ways to show an observation:

* ``observations="messages"`` (chat prompts): as messages of their own (``tool`` role), the turn
  markers written by the chat template; the model ends a turn with eos or, with ``stop_at_call``,
  right after the closing tag of a call (the template's end-of-turn token is then appended);
* ``observations="inline"``: inside the one assistant message, formatted by ``inline_format``
  (ToRA / Qwen2.5-Math TIR style ```` ```output ```` blocks); the only way for text prompts.
  Each turn stops after a call's closing tag; eos ends the trajectory.

Limits, each ending a trajectory (never the run) with a ``stop_reason``: ``max_turns``;
``sampling.max_tokens`` as the budget of *all* completion tokens, sampled and appended (so the
trainer's ``max_completion_length`` still bounds a row); the model's context;
``max_turn_tokens`` per turn; an environment step that raises or runs past ``env_timeout_s``;
a template that stops extending the stream. Tool failures (malformed or unknown calls, raising
or hanging tools, huge output) are answered to the model as errors and recorded per call.

Seeding: sample ``k`` of prompt ``p`` draws its first turn from ``seed + p*n + k``, exactly the
single-turn generators' stream, and turn ``t > 0`` from a hash of that seed and ``t``: a
trajectory depends on its own seed only, not on the other rows of the call.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from grpo.rollout.chat import (
    TemplateError,
    check_prefix_preserving,
    encode_text,
    observation_delta,
    render,
)
from grpo.rollout.engines import token_engine
from grpo.rollout.sampling import row_seed
from grpo.rollout.tokens import encode_prompt, find_ending
from grpo.rollout.tools import (
    ERROR,
    TIMEOUT,
    Environment,
    ToolCall,
    ToolCallParser,
    ToolEnvironment,
    as_env_step,
    call_with_timeout,
    environment_factory,
    tool_schema,
)
from grpo.rollout.trajectory import (
    CONTEXT,
    DONE,
    ENV_ERROR,
    ENV_TIMEOUT,
    MAX_TURNS,
    TEMPLATE_MISMATCH,
    TOKEN_BUDGET,
    TURN_LENGTH,
    Trajectory,
)
from grpo.rollout.types import BaseGenerator, Prompt, SamplingConfig


def turn_seed(seed: int | None, turn: int) -> int | None:
    """Seed of turn ``turn`` of the trajectory whose first turn is seeded ``seed`` (its
    :func:`~grpo.rollout.sampling.row_seed`).

    >>> turn_seed(7, 0), turn_seed(7, 1) == turn_seed(7, 1), turn_seed(None, 3)
    (7, True, None)
    """
    if seed is None or turn == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


@dataclass
class _State:
    """One trajectory being built."""

    p: int
    k: int
    prompt: Prompt
    prompt_ids: list[int]
    env: Any
    seed: int | None
    stream_text: str
    ids: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    turns: int = 0
    last_turn: str = ""  # the text of the last sampled turn (special tokens skipped)
    last_start: int = 0  # where the last assistant message's tokens begin in ``ids``
    stop_reason: str | None = None
    stop_detail: str = ""
    length_cut: bool = False

    def end(self, reason: str, detail: str = "", *, length: bool = False) -> None:
        self.stop_reason, self.stop_detail, self.length_cut = reason, detail, length

    def append(self, ids: Sequence[int], logp: Sequence[float] | None) -> None:
        self.ids += ids
        self.logp += list(logp) if logp is not None else [0.0] * len(ids)
        self.mask += [1 if logp is not None else 0] * len(ids)


class MultiTurnGenerator(BaseGenerator):
    """Multi-turn tool-use rollouts on an HF or colocated vLLM generator (see the module docstring).

    Args:
        generator: an :class:`grpo.rollout.HFGenerator` or :class:`grpo.rollout.VLLMGenerator`
            (its engine samples the turns; ``sync_weights`` / ``close`` / sleep go to it).
        tools: typed, documented functions (:mod:`grpo.rollout.tools`); builds one
            :class:`ToolEnvironment` per trajectory. Give ``tools`` or ``environment``.
        environment: a class (or zero-argument factory) of :class:`Environment` objects; one
            instance per trajectory, ``reset(**row)`` with its dataset row. An instance, or a
            factory that needs arguments or returns one shared object, is refused here
            (:func:`grpo.rollout.tools.environment_factory`).
        parser: how tool calls are written (default :class:`grpo.rollout.tools.HermesParser`).
        max_turns: most assistant turns per trajectory.
        max_turn_tokens: most sampled tokens per turn (None: only the overall budget).
        tool_timeout_s: per tool call; env_timeout_s: per environment step.
        max_tool_output_chars: a longer tool result is cut before the model sees it.
        observations: ``"messages"`` or ``"inline"`` (see the module docstring).
        inline_format: how an inline observation is written (``{}`` = its text).
        stop_at_call: end a turn right after a call's closing tag (no text after a call).
        render_tools: pass the tools' JSON schemas to the chat template (``tools=``).
        dataset: rows to look prompts up in for ``reset`` when ``generate`` gets no ``rows``.
        max_workers: environment steps run concurrently on this many threads.
    """

    def __init__(
        self,
        generator: Any,
        *,
        tools: Sequence[Callable] | None = None,
        environment: Callable[[], Environment] | None = None,
        parser: ToolCallParser | None = None,
        max_turns: int = 4,
        max_turn_tokens: int | None = None,
        tool_timeout_s: float = 10.0,
        env_timeout_s: float = 60.0,
        max_tool_output_chars: int = 2000,
        observations: str = "messages",
        inline_format: str = "\n```output\n{}\n```\n",
        stop_at_call: bool = True,
        render_tools: bool = True,
        dataset: Sequence[dict] | None = None,
        prompt_key: str = "prompt",
        max_workers: int = 8,
    ):
        if (tools is None) == (environment is None):
            raise ValueError(
                "give exactly one of tools=[...] (functions) or environment=Class (stateful)"
            )
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if max_turn_tokens is not None and max_turn_tokens < 1:
            raise ValueError(f"max_turn_tokens must be >= 1 or None, got {max_turn_tokens}")
        if observations not in ("messages", "inline"):
            raise ValueError(f"observations must be 'messages' or 'inline', got {observations!r}")
        if "{}" not in inline_format:
            raise ValueError(
                f"inline_format needs a '{{}}' for the observation, got {inline_format!r}"
            )
        self.generator, self.engine = generator, token_engine(generator)
        # the wrapped generator's declared capabilities (a bare token engine: the defaults)
        self._inner = generator if isinstance(generator, BaseGenerator) else BaseGenerator()
        self.tokenizer = self.engine.tokenizer
        # extra chat-template variables the wrapped generator renders prompts with (enable_thinking)
        self.template_kwargs = dict(self._inner.chat_template_kwargs)
        if tools is not None:
            tools = list(tools)
            parser = parser or _default_parser()
            self.tool_schemas = [tool_schema(t) for t in tools] if render_tools else None
            self.make_env: Callable[[], Any] = lambda: ToolEnvironment(
                tools, parser, timeout_s=tool_timeout_s, max_output_chars=max_tool_output_chars
            )
            self.make_env()  # checks the tools' signatures now, not at the first generate
        else:
            self.tool_schemas = None
            self.make_env = environment_factory(environment)  # a wrong value is refused here
        self.stops = tuple(parser.stop) if (parser is not None and stop_at_call) else ()
        self.max_turns, self.max_turn_tokens = max_turns, max_turn_tokens
        self.env_timeout_s = env_timeout_s
        self.observations, self.inline_format = observations, inline_format
        self.prompt_key = prompt_key
        self._rows_by_prompt = (
            None if dataset is None else {_key(r[prompt_key]): r for r in dataset}
        )
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpo-env")
        self._template_checked = False
        self._closed = False
        self._warned_mismatch = False

    accepts_rows = True
    """``generate`` takes the prompts' dataset rows (``rows=``) for the environments' ``reset``."""

    # -- Generator protocol ------------------------------------------------------------------
    # its capabilities are the wrapped generator's (weights, device, sleep mode); not versioned:
    # its trajectories do not carry a weight version (the asynchronous trainer's AsyncGenerator
    # tags a whole generate call, every turn of it sampled under one version)
    @property
    def sleep_enabled(self) -> bool:  # type: ignore[override]
        return self._inner.sleep_enabled

    @property
    def returns_logprobs(self) -> bool:  # type: ignore[override]
        return self._inner.returns_logprobs

    @property
    def policy_model(self):
        return self._inner.policy_model

    @property
    def device(self):
        return self._inner.device

    def sleep(self, level: int = 1) -> None:
        self._inner.sleep(level)

    def wake_up(self) -> None:
        self._inner.wake_up()

    def sync_weights(self, model) -> None:
        self._inner.sync_weights(model)

    def close(self) -> None:
        """Close the wrapped generator and the environment threads; idempotent."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._inner.close()

    def check_template(self) -> None:
        """Raise :class:`grpo.rollout.chat.TemplateError` if the tokenizer's chat template is not
        prefix-preserving for tool conversations (done once, before the first chat rollout)."""
        if self.observations == "messages":
            check_prefix_preserving(
                self.tokenizer, self.engine.eos_ids, tools=self.tool_schemas, **self.template_kwargs
            )
        self._template_checked = True

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        sampling: SamplingConfig,
        rows: Sequence[dict] | None = None,
    ) -> list[Trajectory]:
        """``len(prompts) * n`` trajectories, prompt-major; ``rows`` (one per prompt) go to the
        environments' ``reset`` (default: looked up in ``dataset``, else ``{"prompt": prompt}``)."""
        if self._closed:
            raise RuntimeError("this MultiTurnGenerator is closed")
        if (
            isinstance(prompts, (str, bytes))
            or not isinstance(n, int)
            or n < 1
            or len(prompts) == 0
        ):
            raise ValueError(
                f"generate needs a non-empty list of prompts and n >= 1, "
                f"got {type(prompts).__name__}, n={n!r}"
            )
        if rows is not None and len(rows) != len(prompts):
            raise ValueError(f"{len(rows)} rows for {len(prompts)} prompts")
        encoded = [self._encode(prompt) for prompt in prompts]
        states = [
            self._start(
                p,
                k,
                prompt,
                encoded[p],
                n,
                sampling,
                rows[p] if rows is not None else self._row(prompt),
            )
            for p, prompt in enumerate(prompts)
            for k in range(n)
        ]
        stop = tuple(dict.fromkeys(tuple(sampling.stop) + self.stops))
        turn_sampling = replace(sampling, stop=stop, seed=None)
        for turn in range(self.max_turns):
            running = [s for s in states if s.stop_reason is None and self._room(s, sampling) > 0]
            if not running:
                break
            limits = [self._room(s, sampling) for s in running]
            contexts = [s.prompt_ids + s.ids for s in running]  # token-in: ids, never text
            seeds = [turn_seed(s.seed, turn) for s in running]
            raw = self.engine.sample(contexts, seeds, limits, turn_sampling)
            for s, (ids, logp), limit in zip(running, raw, limits, strict=True):
                self._take_turn(s, ids, logp, limit, stop, sampling)
            stepping = [s for s in running if s.stop_reason is None]
            for s, outcome in zip(stepping, self._pool.map(self._step, stepping), strict=True):
                self._observe(s, outcome, sampling)
        return [self._record(s) for s in states]

    # -- one trajectory --------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """The prompt's ids as trajectories start from them (chat prompts: rendered with the
        tools' schemas when ``render_tools``); a prompt-length check should use these."""
        return self._encode(prompt)[0]

    def _encode(self, prompt: Prompt) -> tuple[list[int], str]:
        if isinstance(prompt, str):
            if self.observations != "inline":
                raise ValueError(
                    "text prompts need observations='inline' (tool messages need a "
                    "chat conversation)"
                )
            return encode_prompt(self.tokenizer, prompt), prompt
        if not self._template_checked:
            self.check_template()
        text = render(
            self.tokenizer,
            prompt,
            generation_prompt=True,
            tools=self.tool_schemas,
            **self.template_kwargs,
        )
        return encode_text(self.tokenizer, text), text

    def _start(
        self,
        p: int,
        k: int,
        prompt: Prompt,
        encoded: tuple[list[int], str],
        n: int,
        sampling: SamplingConfig,
        row: dict,
    ) -> _State:
        ids, text = encoded
        ctx = self.engine.max_context
        if not ids or (ctx is not None and len(ids) >= ctx):
            raise ValueError(
                f"prompt {p} has {len(ids)} tokens; the context holds {ctx}: "
                "no room for a completion"
            )
        env = self.make_env()
        env.reset(**row)  # a failing reset is a bug in the environment or the data: it raises
        seed = row_seed(sampling.seed, p, n, k)
        return _State(p, k, prompt, ids, env, seed, text)

    def _room(self, s: _State, sampling: SamplingConfig) -> int:
        room = sampling.max_tokens - len(s.ids)
        if self.engine.max_context is not None:
            room = min(room, self.engine.max_context - len(s.prompt_ids) - len(s.ids))
        if self.max_turn_tokens is not None:
            room = min(room, self.max_turn_tokens)
        if room <= 0 and s.stop_reason is None:
            s.end(self._length_reason(s, sampling), length=True)
        return room

    def _length_reason(self, s: _State, sampling: SamplingConfig) -> str:
        ctx = self.engine.max_context
        if ctx is not None and len(s.prompt_ids) + len(s.ids) >= ctx:
            return CONTEXT
        return TOKEN_BUDGET if len(s.ids) >= sampling.max_tokens else TURN_LENGTH

    def _take_turn(
        self, s: _State, ids, logp, limit: int, stop: tuple[str, ...], sampling: SamplingConfig
    ) -> None:
        ending = find_ending(
            self.tokenizer, ids, eos_ids=self.engine.eos_ids, stop=stop, limit=limit
        )
        turn_ids, n = list(ids[: ending.length]), ending.length
        s.append(turn_ids, logp[:n])
        s.turns += 1
        # The message keeps any special token sampled mid-turn (the template re-renders it as the
        # same token); only the closing eos is left for the template to write.
        raw = self.tokenizer.decode(turn_ids, skip_special_tokens=False)
        ended_by_eos = bool(turn_ids) and turn_ids[-1] in self.engine.eos_ids
        body = turn_ids[:-1] if ended_by_eos else turn_ids
        content = self.tokenizer.decode(body, skip_special_tokens=False)
        s.stream_text += raw
        s.last_turn = self.tokenizer.decode(turn_ids, skip_special_tokens=True)
        s.last_start = len(s.ids) - n if self.observations == "messages" else 0
        if self.observations == "inline" and s.messages:
            s.messages[-1]["content"] += content
        else:
            s.messages.append({"role": "assistant", "content": content})
        if ending.finish_reason == "length":
            s.end(self._length_reason(s, sampling), length=True)
        elif self.observations == "inline" and ended_by_eos:
            s.end(DONE)  # inline: eos closes the one assistant message

    def _step(self, s: _State) -> tuple[str, Any]:
        return call_with_timeout(lambda: s.env.step(s.last_turn), self.env_timeout_s)

    def _observe(self, s: _State, outcome: tuple[str, Any], sampling: SamplingConfig) -> None:
        status, value = outcome
        if status == TIMEOUT:
            return s.end(ENV_TIMEOUT, f"environment step ran past {self.env_timeout_s:g} s")
        if status == ERROR:
            return s.end(ENV_ERROR, f"{type(value).__name__}: {value}"[:500])
        try:
            step = as_env_step(value)
        except TypeError as e:
            return s.end(ENV_ERROR, str(e))
        s.calls += [replace(c, turn=s.turns - 1) for c in step.tool_calls]
        s.info.update(step.info)
        if step.done:
            return s.end(DONE)
        if s.turns >= self.max_turns:
            return s.end(MAX_TURNS)
        observations = [dict(o) for o in step.observations]
        if self.observations == "inline":
            delta = "".join(self.inline_format.format(o["content"]) for o in observations)
        else:
            try:
                delta = observation_delta(
                    self.tokenizer,
                    [*s.prompt, *s.messages, *observations],
                    s.stream_text,
                    tools=self.tool_schemas,
                    **self.template_kwargs,
                )
            except TemplateError as e:
                if not self._warned_mismatch:
                    self._warned_mismatch = True
                    warnings.warn(f"trajectory ended: {e}", stacklevel=3)
                return s.end(TEMPLATE_MISMATCH, str(e)[:500])
        env_ids = encode_text(self.tokenizer, delta)
        s.stream_text += delta
        if self.observations == "inline":
            s.messages[-1]["content"] += delta
        else:
            s.messages += observations
        ctx = self.engine.max_context
        if ctx is not None and len(s.prompt_ids) + len(s.ids) + len(env_ids) >= ctx:
            return s.end(CONTEXT, "the observation does not fit", length=True)
        if len(s.ids) + len(env_ids) > sampling.max_tokens:
            return s.end(TOKEN_BUDGET, "the observation does not fit", length=True)
        s.append(env_ids, None)

    def _record(self, s: _State) -> Trajectory:
        text = self.tokenizer.decode(s.ids[s.last_start :], skip_special_tokens=True)
        return Trajectory(
            prompt_ids=list(s.prompt_ids),
            completion_ids=list(s.ids),
            logprobs=list(s.logp),
            text=text,
            finish_reason="length" if s.length_cut else "stop",
            prompt_index=s.p,
            sample_index=s.k,
            loss_mask=list(s.mask),
            messages=tuple(s.messages),
            tool_calls=tuple(s.calls),
            turns=s.turns,
            stop_reason=s.stop_reason or MAX_TURNS,
            stop_detail=s.stop_detail,
            info=dict(s.info),
            environment=s.env,
        )

    def _row(self, prompt: Prompt) -> dict:
        if self._rows_by_prompt is not None:
            row = self._rows_by_prompt.get(_key(prompt))
            if row is None:
                raise KeyError(
                    f"prompt {str(prompt)[:80]!r} is not in the dataset given to MultiTurnGenerator"
                )
            return dict(row)
        return {self.prompt_key: prompt}


def _key(prompt: Prompt) -> str:
    return json.dumps(prompt, sort_keys=True, default=str)


def _default_parser() -> ToolCallParser:
    from grpo.rollout.tools import HermesParser

    return HermesParser()
