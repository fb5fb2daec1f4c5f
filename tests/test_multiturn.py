"""MultiTurnGenerator: token-in/token-out trajectories, chat templates, limits and metrics.

Template tests drive the generator with a scripted policy (a token engine that writes fixed
turns), since what they check is how the stream is assembled: the sampled ids kept as they are,
observations appended as template deltas. The real-model tests (tests/test_multiturn_hf.py)
check the same on HF sampling.
"""

from __future__ import annotations

import json
import time

import pytest
from tokenizers import AddedToken

from grpo.rollout.chat import TemplateError, check_prefix_preserving, encode_text, render
from grpo.rollout.multiturn import MultiTurnGenerator, turn_seed
from grpo.rollout.tools import CodeBlockParser, EnvStep, HermesParser
from grpo.rollout.trajectory import Trajectory, multiturn_metrics, trajectory_columns
from grpo.rollout.types import BaseGenerator, SamplingConfig
from grpo.tiny import build_char_tokenizer

# A Qwen2.5-style ChatML template (tools in a system block, consecutive tool results grouped in
# one user turn inside <tool_response> tags, "\n" after every <|im_end|>), on the char tokenizer.
CHATML = (
    "{%- if tools %}{{ '<|im_start|>system\\nTools:' }}{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{%- else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen3-like: reasoning is stripped from assistant turns that are not the last one.
STRIPS_THINK = CHATML.replace(
    "{%- else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}",
    "{%- elif m['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\\n' + m['content'].split('</think>')[-1] + '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}")


def chatml_tokenizer(template=CHATML):
    tok = build_char_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
                   special_tokens=True)
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    tok.eos_token = "<|im_end|>"
    tok.chat_template = template
    return tok


class Scripted:
    """A token engine whose policy is a function of the context text: it "samples" the ids of
    ``policy(context) + eos`` (log-prob -1 each), cut at the row's limit."""

    def __init__(self, tokenizer, policy, max_context=4096):
        self.tokenizer, self.policy, self.max_context = tokenizer, policy, max_context
        self.eos_ids = [tokenizer.eos_token_id]
        self.seeds: list = []

    def sample(self, contexts, seeds, limits, sampling):
        self.seeds.append(list(seeds))
        out = []
        for ctx, limit in zip(contexts, limits):
            ids = encode_text(self.tokenizer, self.policy(self.tokenizer.decode(ctx))) + self.eos_ids
            out.append((ids[:limit], [-1.0] * min(len(ids), limit)))
        return out


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def calls_then_answers(context: str) -> str:
    """Call the tool twice (the second time after seeing the first result), then answer."""
    n = context.count("<tool_response>") + context.count("<|tool|>")
    if n < 2:
        return "<think>step</think><tool_call>" + json.dumps({"name": "multiply", "arguments": {"a": 6, "b": 7 + n}}) \
            + "</tool_call>"
    return "<answer>42</answer>"


PROMPT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "6*7?"}]
SAMPLING = SamplingConfig(max_tokens=400, seed=3)


@pytest.mark.parametrize("make_tok", [build_char_tokenizer, chatml_tokenizer], ids=["tiny", "chatml"])
@pytest.mark.parametrize("stop_at_call", [True, False])
def test_incremental_stream_equals_the_conversation_rendered_once(make_tok, stop_at_call):
    tok = make_tok()
    gen = MultiTurnGenerator(Scripted(tok, calls_then_answers), tools=[multiply], stop_at_call=stop_at_call)
    (t,) = gen.generate([PROMPT], 1, SAMPLING)
    assert isinstance(t, Trajectory) and t.stop_reason == "done" and t.turns == 3
    assert [c.output for c in t.tool_calls] == ["42", "48"] and t.text == "<answer>42</answer>"
    full = render(tok, [*PROMPT, *t.messages], generation_prompt=False, tools=gen.tool_schemas)
    full_ids = encode_text(tok, full)
    stream = t.prompt_ids + t.completion_ids
    assert full_ids[:len(stream)] == stream  # token for token
    assert tok.decode(full_ids[len(stream):]).strip() == ""  # only the template's text after the last eos
    # sampled tokens are trained on with their log-probs; appended ones are masked, log-prob 0
    for tok_id, m, lp in zip(t.completion_ids, t.loss_mask, t.logprobs):
        assert (m, lp) in ((1, -1.0), (0, 0.0))
    eos = tok.eos_token_id
    forced_end = [i for i, x in enumerate(t.completion_ids) if x == eos and t.loss_mask[i] == 0 and t.loss_mask[i - 1]]
    assert len(forced_end) == (2 if stop_at_call else 0)  # turns stopped at </tool_call>: their eos is appended


def test_rendering_the_tool_turn_alone_would_drop_the_chatml_separator():
    """The verl bug (issues 6501, 3720): the tool turn rendered in isolation lacks the '\\n' that
    follows <|im_end|> in the full conversation; the delta keeps it."""
    tok = chatml_tokenizer()
    gen = MultiTurnGenerator(Scripted(tok, calls_then_answers), tools=[multiply], render_tools=False,
                             stop_at_call=False)
    (t,) = gen.generate([PROMPT], 1, SAMPLING)
    first_env = t.loss_mask.index(0)
    delta = tok.decode(t.completion_ids[first_env:t.loss_mask.index(1, first_env)])
    alone = render(tok, [t.messages[1]], generation_prompt=True)
    assert delta == "\n" + alone and not alone.startswith("\n")


def test_a_template_that_rewrites_earlier_turns_is_refused_before_sampling():
    tok = chatml_tokenizer(STRIPS_THINK)
    with pytest.raises(TemplateError, match="not prefix-preserving"):
        check_prefix_preserving(tok, [tok.eos_token_id])
    engine = Scripted(tok, calls_then_answers)
    with pytest.raises(TemplateError, match="not prefix-preserving"):
        MultiTurnGenerator(engine, tools=[multiply]).generate([PROMPT], 1, SAMPLING)
    assert engine.seeds == []  # nothing was sampled


def test_a_template_whose_turns_do_not_end_with_eos_is_refused():
    tok = chatml_tokenizer()
    tok.eos_token = "<eos>"  # the template closes turns with <|im_end|>, the model would stop at <eos>
    with pytest.raises(TemplateError, match="none of the eos tokens"):
        check_prefix_preserving(tok, [tok.eos_token_id])


def test_a_mismatch_found_at_run_time_ends_that_trajectory_only():
    # trims whitespace around assistant content: the probe passes, a turn ending in spaces does not
    tok = chatml_tokenizer(CHATML.replace("'\\n' + m['content'] + '<|im_end|>", "'\\n' + (m['content'] | trim) + '<|im_end|>"))

    def policy(ctx):
        return "<tool_call>{\"name\": \"multiply\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>" + \
            ("  " if "spaces" in ctx else "") if "<tool_response>" not in ctx else "done"
    gen = MultiTurnGenerator(Scripted(tok, policy), tools=[multiply], stop_at_call=False)
    with pytest.warns(UserWarning, match="not prefix-preserving"):
        out = gen.generate([[{"role": "user", "content": "spaces"}], [{"role": "user", "content": "fine"}]], 1, SAMPLING)
    assert [t.stop_reason for t in out] == ["template_mismatch", "done"]


# ---------------------------------------------------------------------------- the contract
def test_prompt_major_groups_seeds_and_rows():
    tok = build_char_tokenizer()
    engine = Scripted(tok, calls_then_answers)
    seen = []

    class Env:
        def reset(self, **row):
            seen.append(row)

        def step(self, message):
            return None
    gen = MultiTurnGenerator(engine, environment=Env, dataset=[{"prompt": PROMPT, "answer": "42"}])
    out = gen.generate([PROMPT, PROMPT], 3, SamplingConfig(max_tokens=50, seed=10))
    assert [(t.prompt_index, t.sample_index) for t in out] == [(p, k) for p in range(2) for k in range(3)]
    assert engine.seeds == [[10, 11, 12, 13, 14, 15]]  # turn 0: seed + p*n + k, as single-turn
    assert seen == [{"prompt": PROMPT, "answer": "42"}] * 6
    assert turn_seed(10, 1) != turn_seed(11, 1) and turn_seed(10, 1) == turn_seed(10, 1)
    with pytest.raises(KeyError, match="not in the dataset"):
        gen.generate([[{"role": "user", "content": "unknown"}]], 1, SAMPLING)


def test_inline_observations_for_text_prompts():
    tok = build_char_tokenizer()

    def policy(ctx):
        return "x<python>2*21</python>" if "output" not in ctx else "<answer>42</answer>"
    gen = MultiTurnGenerator(Scripted(tok, policy), tools=[_python_stub()], parser=CodeBlockParser(),
                             observations="inline", inline_format="<output>{}</output>")
    (t,) = gen.generate(["What is 2*21?"], 1, SAMPLING)
    assert tok.decode(t.completion_ids) == "x<python>2*21</python><output>42</output><answer>42</answer><eos>"
    assert t.text == "x<python>2*21</python><output>42</output><answer>42</answer>" and t.stop_reason == "done"
    assert t.loss_mask == [1] * 22 + [0] * 19 + [1] * 5  # chars, but <answer> </answer> <eos>


def _python_stub():
    def python(code: str) -> str:
        """Evaluates arithmetic.

        Args:
            code: an expression
        """
        a, b = code.split("*")
        return str(int(a) * int(b))
    return python


# ---------------------------------------------------------------------------- limits
class Endless:
    """Never done: answers every message."""

    def reset(self, **row):
        pass

    def step(self, message):
        return EnvStep(observations=[{"role": "tool", "content": "again"}])


def talk(ctx):
    return "hmm"


def test_an_environment_that_never_finishes_stops_at_the_turn_cap():
    gen = MultiTurnGenerator(Scripted(build_char_tokenizer(), talk), environment=Endless, max_turns=3)
    (t,) = gen.generate([PROMPT], 1, SAMPLING)
    assert t.stop_reason == "max_turns" and t.turns == 3 and t.finish_reason == "stop"
    assert t.loss_mask[-1] == 1  # the last observation is not appended after the cap


def test_token_budget_and_context_end_the_trajectory_as_truncated():
    tok = build_char_tokenizer()
    gen = MultiTurnGenerator(Scripted(tok, talk), environment=Endless, max_turns=50)
    (t,) = gen.generate([PROMPT], 1, SamplingConfig(max_tokens=40))
    assert t.stop_reason == "token_budget" and t.truncated and len(t.completion_ids) <= 40
    prompt_len = len(encode_text(tok, render(tok, PROMPT, generation_prompt=True)))
    gen = MultiTurnGenerator(Scripted(tok, talk, max_context=prompt_len + 30), environment=Endless, max_turns=50)
    (t,) = gen.generate([PROMPT], 1, SAMPLING)
    assert t.stop_reason == "context" and t.truncated and len(t.prompt_ids) + len(t.completion_ids) < prompt_len + 30
    gen = MultiTurnGenerator(Scripted(tok, lambda c: "a" * 50), environment=Endless, max_turn_tokens=10)
    (t,) = gen.generate([PROMPT], 1, SAMPLING)
    assert t.stop_reason == "turn_length" and t.truncated and len(t.completion_ids) == 10


class Raises(Endless):
    def step(self, message):
        raise RuntimeError("environment bug")


class Hangs(Endless):
    def step(self, message):
        time.sleep(30)


class Garbage(Endless):
    def step(self, message):
        return 3.14


@pytest.mark.parametrize("env, reason, detail", [
    (Raises, "env_error", "RuntimeError: environment bug"),
    (Hangs, "env_timeout", "ran past 0.3 s"),
    (Garbage, "env_error", "must return an EnvStep"),
])
def test_a_failing_environment_ends_its_trajectory_not_the_run(env, reason, detail):
    gen = MultiTurnGenerator(Scripted(build_char_tokenizer(), talk), environment=env, env_timeout_s=0.3)
    t0 = time.monotonic()
    out = gen.generate([PROMPT], 2, SAMPLING)
    assert time.monotonic() - t0 < 5
    assert all(t.stop_reason == reason and detail in t.stop_detail and t.turns == 1 for t in out)


def test_bad_tool_calls_are_answered_and_the_trajectory_goes_on():
    tok = build_char_tokenizer()
    script = ["<tool_call>{broken</tool_call>", '<tool_call>{"name": "divide", "arguments": {}}</tool_call>',
              "<answer>?</answer>"]

    def policy(ctx):
        return script[ctx.count("<|tool|>")]
    gen = MultiTurnGenerator(Scripted(tok, policy), tools=[multiply], max_turns=5)
    (t,) = gen.generate([PROMPT], 1, SAMPLING)
    assert [c.status for c in t.tool_calls] == ["malformed", "unknown_tool"] and t.stop_reason == "done"
    assert "unknown tool 'divide'" in t.messages[3]["content"]


def test_configuration_errors():
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="exactly one of"):
        MultiTurnGenerator(Scripted(tok, talk))
    with pytest.raises(ValueError, match="max_turns"):
        MultiTurnGenerator(Scripted(tok, talk), tools=[multiply], max_turns=0)
    with pytest.raises(TypeError, match="token-level sampling"):
        MultiTurnGenerator(object(), tools=[multiply])
    with pytest.raises(ValueError, match="observations='inline'"):
        MultiTurnGenerator(Scripted(tok, talk), tools=[multiply]).generate(["text prompt"], 1, SAMPLING)


# ---------------------------------------------------------------------------- metrics, rewards
def test_metrics_worked_by_hand():
    tok = build_char_tokenizer()
    gen = MultiTurnGenerator(Scripted(tok, calls_then_answers), tools=[multiply])
    two_calls = gen.generate([PROMPT], 1, SAMPLING)[0]
    no_call = MultiTurnGenerator(Scripted(tok, lambda c: "<answer>1</answer>"), tools=[multiply]).generate(
        [PROMPT], 1, SAMPLING)[0]
    m = multiturn_metrics([two_calls, no_call], [1.0, 0.0])
    assert m["tools/turns_mean"] == (3 + 1) / 2 and m["tools/calls_mean"] == 1.0 and m["tools/call_rate"] == 0.5
    assert m["tools/error_frac"] == 0.0 and m["tools/stop_done"] == 1.0
    env = two_calls.env_tokens
    assert m["tools/env_token_frac"] == env / (len(two_calls.completion_ids) + len(no_call.completion_ids))
    assert m["tools/reward_calls_2"] == 1.0 and m["tools/reward_calls_0"] == 0.0


def test_rewards_read_the_trajectory_grpo_and_trl_style():
    import grpo.data
    import grpo.source
    from grpo.rewards import CombinedReward, Reward

    # the trainer's own reward keywords (grpo.source.reward_inputs, moving to grpo.data)
    reward_inputs = getattr(grpo.data, "reward_inputs", None) or grpo.source.reward_inputs

    tok = build_char_tokenizer()
    out = MultiTurnGenerator(Scripted(tok, calls_then_answers), tools=[multiply]).generate([PROMPT], 2, SAMPLING)

    class UsedTool(Reward):  # grpo style: the record arrives as a field of the example
        def score(self, completion, **example):
            return float(any(c.status == "ok" for c in example["trajectory"].tool_calls))

    def tool_messages(completions, environments, **kwargs):  # trl style: message lists, environments
        assert all(env.turn == 2 for env in environments)  # ToolEnvironment counted two turns with calls
        return [float(sum(m["role"] == "tool" for m in c)) for c in completions]

    rows = [{"prompt": PROMPT, "answer": "42"}]
    inputs = {**reward_inputs(out, [PROMPT], rows), **trajectory_columns(out, [PROMPT])}
    scores = CombinedReward([UsedTool(), tool_messages]).breakdown(**inputs)
    assert scores.component_values("used_tool") == [1.0, 1.0]
    assert scores.component_values("tool_messages") == [2.0, 2.0]


@pytest.mark.parametrize("module", ["grpo.rollout.tools", "grpo.rollout.trajectory", "grpo.rollout.multiturn",
                                    "grpo.recipes.multiturn"])
def test_module_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0


def test_the_docs_stateful_environment():
    class GuessTheNumber:  # as in docs/tools.md
        def reset(self, secret, **row):
            self.secret = int(secret)

        def step(self, message):
            guess = int(message.strip() or -1)
            if guess == self.secret:
                return None
            return "higher" if guess < self.secret else "lower"

    tok = build_char_tokenizer()

    def policy(ctx):  # binary search over what the environment said
        return {0: "5", 1: "8" if ctx.endswith("higher<|assistant|>") else "2"}.get(ctx.count("<|tool|>"), "7")
    prompt = [{"role": "user", "content": "guess"}]
    gen = MultiTurnGenerator(Scripted(tok, policy), environment=GuessTheNumber,
                             dataset=[{"prompt": prompt, "secret": "7"}])
    (t,) = gen.generate([prompt], 1, SAMPLING)
    assert [m["content"] for m in t.messages] == ["5", "higher", "8", "lower", "7"]
    assert t.stop_reason == "done" and t.environment.secret == 7 and t.tool_calls == ()


def test_the_generators_chat_template_kwargs_are_rendered_every_turn():
    tok = chatml_tokenizer(CHATML.replace("'\\n' + m['content'] + '<|im_end|>", "'\\n' + (mark if m['role'] == 'user' "
                                          "else '') + m['content'] + '<|im_end|>"))
    engine = Scripted(tok, calls_then_answers)

    class Declaring(BaseGenerator):  # HFGenerator(chat_template_kwargs=...) declares them so
        chat_template_kwargs = {"mark": "!"}

        def token_engine(self):
            return engine

    (t,) = MultiTurnGenerator(Declaring(), tools=[multiply]).generate([PROMPT], 1, SAMPLING)
    assert "<|im_start|>user\n!6*7?" in tok.decode(t.prompt_ids) and t.stop_reason == "done"


def test_a_generation_prompt_the_messages_do_not_repeat_is_refused():
    # Qwen3's enable_thinking=False writes "<think>\n\n</think>" in the generation prompt only
    tok = chatml_tokenizer(CHATML.replace("{{ '<|im_start|>assistant\\n' }}{% endif %}",
                                          "{{ '<|im_start|>assistant\\n<think></think>' }}{% endif %}"))
    with pytest.raises(TemplateError, match="not prefix-preserving"):
        check_prefix_preserving(tok, [tok.eos_token_id])
