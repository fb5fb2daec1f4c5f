"""MultiTurnGenerator on the real HF generator: a tiny model taught (a few seconds of supervised
steps) to call a Python tool, sampled for real, its trajectories checked token by token against
the model's own log-probs and the chat template, and trained on by GRPOTrainer unchanged."""

from __future__ import annotations

import functools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from grpo.rollout import HFGenerator, SamplingConfig
from grpo.rollout.chat import encode_text, render
from grpo.rollout.multiturn import MultiTurnGenerator
from grpo.rollout.tools import CodeBlockParser
from grpo.rollout.trajectory import Trajectory
from grpo.tiny import build_char_tokenizer, build_tiny_llama

PROMPTS = [[{"role": "user", "content": f"{a}*{b}"}] for a, b in [(2, 3), (4, 5), (6, 7), (8, 9)]]


def python(code: str) -> str:
    """Evaluates a product of two integers (a stand-in for the sandboxed tool, which
    tests/test_tools.py covers).

    Args:
        code: "a*b"
    """
    a, b = code.split("*")
    return str(int(a) * int(b))


@pytest.fixture(scope="module")
def taught():
    return taught_model()


@functools.cache
def taught_model():
    """A tiny model that writes <python>a*b</python>, then copies the result into <answer>
    (built once per test session; callers deep-copy it before training it)."""
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=2, head_dim=32, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = random.Random(0)
    for _ in range(150):
        xs, ys = [], []
        for _ in range(16):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            prompt = render(tok, [{"role": "user", "content": f"{a}*{b}"}], generation_prompt=True)
            parts = [(prompt, False), (f"<python>{a}*{b}</python>", True), (f"<eos><|tool|>{a * b}<|assistant|>", False),
                     (f"<answer>{a * b}</answer><eos>", True)]
            x = [i for text, _ in parts for i in encode_text(tok, text)]
            y = [i if train else -100 for text, train in parts for i in encode_text(tok, text)]
            xs.append(x)
            ys.append(y)
        t = max(map(len, xs))
        x = torch.tensor([s + [tok.pad_token_id] * (t - len(s)) for s in xs])
        y = torch.tensor([s + [-100] * (t - len(s)) for s in ys])
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval(), tok


def make(model, tok, **kw):
    return MultiTurnGenerator(HFGenerator(model, tok, share_prompt_prefill=False), tools=[python],
                              parser=CodeBlockParser(), max_turns=3, render_tools=False, **kw)


def test_greedy_trajectories_call_the_tool_and_match_the_template(taught):
    model, tok = taught
    out = make(model, tok).generate(PROMPTS, 1, SamplingConfig(temperature=0.0, max_tokens=60))
    ok = [t for t in out if t.tool_calls and t.tool_calls[0].status == "ok"]
    assert len(ok) >= 3, [tok.decode(t.completion_ids) for t in out]
    for t, prompt in zip(out, PROMPTS):
        assert isinstance(t, Trajectory) and t.stop_reason in ("done", "token_budget")
        # rendered once, the conversation is the stream (+ the <eos> a cut last turn did not reach)
        full = encode_text(tok, render(tok, [*prompt, *t.messages], generation_prompt=False))
        stream = t.prompt_ids + t.completion_ids
        assert full[:len(stream)] == stream and len(full) - len(stream) == (t.stop_reason == "token_budget")


def test_sampled_logprobs_are_the_models_and_observations_are_masked(taught):
    model, tok = taught
    out = make(model, tok).generate(PROMPTS, 2, SamplingConfig(temperature=1.0, max_tokens=60, seed=5))
    assert any(t.env_tokens for t in out)
    for t in out:
        ids = torch.tensor([t.prompt_ids + t.completion_ids])
        with torch.no_grad():
            logp_T = torch.log_softmax(model(input_ids=ids).logits[0, len(t.prompt_ids) - 1:-1].float(), -1)
        expected = logp_T.gather(1, torch.tensor(t.completion_ids)[:, None]).squeeze(1)
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        got = torch.tensor(t.logprobs)
        torch.testing.assert_close(got[mask], expected[mask], atol=2e-4, rtol=0)
        assert (got[~mask] == 0).all()


def test_first_turn_is_the_single_turn_sample_and_rows_are_independent(taught):
    model, tok = taught
    sampling = SamplingConfig(temperature=1.0, max_tokens=60, seed=11)
    out = make(model, tok).generate(PROMPTS[:2], 2, sampling)
    single = HFGenerator(model, tok, share_prompt_prefill=False).generate(
        PROMPTS[:2], 2, SamplingConfig(temperature=1.0, max_tokens=60, seed=11, stop=("</python>",)))
    for t, s in zip(out, single):
        assert t.completion_ids[:len(s.completion_ids)] == s.completion_ids
    # prompt 1's group alone, seeded where it was in the pair: the same trajectories
    again = make(model, tok).generate(PROMPTS[1:2], 2, SamplingConfig(temperature=1.0, max_tokens=60, seed=11 + 2))
    assert [t.completion_ids for t in again] == [t.completion_ids for t in out[2:]]
    assert [t.completion_ids for t in make(model, tok).generate(PROMPTS[:2], 2, sampling)] == \
        [t.completion_ids for t in out]


def test_grpo_trainer_trains_on_trajectories_unchanged(taught, tmp_path):
    import copy

    from grpo import GRPOConfig, GRPOTrainer
    from grpo.batch import collate_rollouts

    model, tok = taught
    model = copy.deepcopy(model).train()
    rows = [{"prompt": p, "answer": python(p[0]["content"])} for p in PROMPTS]

    def exact(completions, answer, **kwargs):
        return [float(f"<answer>{a}</answer>" in c[-1]["content"]) for c, a in zip(completions, answer)]

    config = GRPOConfig(output_dir=str(tmp_path / "run"), num_generations=4, prompts_per_step=2, max_steps=2,
                        max_completion_length=60, learning_rate=1e-3, beta=0.0, micro_batch_size=8,
                        progress_bar=False, save_final_model=False, seed=0)
    trainer = GRPOTrainer(model, [exact], rows, config, tokenizer=tok, generator=make(model, tok))
    try:
        collected = trainer.source.collect(0)
        trajs = collected.rollouts
        assert len(trajs) == 8 and all(isinstance(t, Trajectory) and t.group_id is not None for t in trajs)
        batch = collate_rollouts(trajs, None, tok.pad_token_id)
        for i, t in enumerate(trajs):  # environment tokens are real tokens, but not trained on
            n = len(t.completion_ids)
            assert batch.completion_mask[i, :n].all()
            assert batch.loss_mask[i, :n].tolist() == [bool(m) for m in t.loss_mask]
        # the reward saw each trajectory as its messages: the final assistant turn decides
        scored = collected.result()
        want = []
        for rec in scored:
            final = [m for m in rec.rollout.messages if m["role"] == "assistant"][-1]["content"]
            want.append(float(f"<answer>{python(rec.prompt[0]['content'])}</answer>" in final))
        assert [rec.reward for rec in scored] == want
        # the taught model answers through the tool: a right answer needs the observation
        assert 0 < sum(want) < len(want), want  # and the step has signal to train on
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.train()
    finally:
        trainer.close()
    from grpo.tracking import read_jsonl

    logged = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in logged] == [1, 2]
    assert all(math.isfinite(m["loss/loss"]) for m in logged)
    assert max((p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()) > 0


def test_lora_with_the_trainers_engine_wrapped_trains_and_syncs(taught, tmp_path):
    """The LoRA set-up of docs/tools.md: wrap_generator wraps the engine the trainer builds on the
    adapted model (generator= with peft_config is refused); two steps run, so the weights are
    synced once, and the adapters move."""
    import copy

    from peft import LoraConfig

    from grpo import GRPOConfig, GRPOTrainer

    model, tok = taught
    rows = [{"prompt": p, "answer": python(p[0]["content"])} for p in PROMPTS]

    def exact(completions, answer, **kwargs):
        return [float(f"<answer>{a}</answer>" in c[-1]["content"]) for c, a in zip(completions, answer)]

    config = GRPOConfig(output_dir=str(tmp_path / "run"), seed=0,
                        rollout={"num_generations": 4, "prompts_per_step": 2}, sampling={"max_tokens": 60},
                        optim={"learning_rate": 1e-2}, loss={"beta": 0.0}, max_steps=2,
                        log={"progress_bar": False}, checkpoint={"final_model": False})
    trainer = GRPOTrainer(copy.deepcopy(model).train(), [exact], rows, config, tokenizer=tok,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                          wrap_generator=lambda gen: MultiTurnGenerator(gen, tools=[python], parser=CodeBlockParser(),
                                                                        max_turns=3, render_tools=False))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    after = dict(trainer.model.named_parameters())
    assert before and any(not torch.equal(v, after[k]) for k, v in before.items())
    assert torch.isfinite(torch.tensor(metrics["loss/loss"]))


def test_learning_nothing_names_the_per_turn_limit_that_cut(taught, tmp_path):
    """Every first turn cut at max_turn_tokens=3: the warning used to blame sampling.max_tokens=60,
    which a user would raise to no effect; it names the limit the trajectories record."""
    import copy

    from grpo import GRPOConfig, GRPOTrainer

    model, tok = taught
    rows = [{"prompt": p} for p in PROMPTS]
    config = GRPOConfig(output_dir=str(tmp_path / "run"), seed=0, max_steps=3,
                        rollout={"num_generations": 2, "prompts_per_step": 2}, sampling={"max_tokens": 60},
                        loss={"beta": 0.0}, log={"progress_bar": False}, checkpoint={"final_model": False})
    trainer = GRPOTrainer(copy.deepcopy(model).train(), [lambda completions, **kw: [1.0] * len(completions)],
                          rows, config, tokenizer=tok,
                          wrap_generator=lambda gen: MultiTurnGenerator(gen, tools=[python], parser=CodeBlockParser(),
                                                                        max_turns=3, render_tools=False,
                                                                        max_turn_tokens=3))
    try:
        with pytest.warns(UserWarning, match="learning almost nothing") as caught:
            metrics = trainer.train()
    finally:
        trainer.close()
    assert metrics["tools/stop_turn_length"] == 1.0 and metrics["completions/truncated_frac"] == 1.0
    message = next(str(w.message) for w in caught if "learning almost nothing" in str(w.message))
    assert ("100% of completions were cut at the multi-turn generator's max_turn_tokens=3 "
            "(100% of trajectories) (raise that limit") in message, message
    assert "sampling.max_tokens" not in message, message


def test_completions_log_holds_the_whole_trajectory(taught, tmp_path):
    """A multi-turn run's completions.jsonl row is the whole trajectory: the assistant turn with
    its tool call, the tool's observation, the final answer, in order with their roles (not the
    last assistant turn alone); the report still reads it."""
    import copy
    import html

    from grpo import GRPOConfig, GRPOTrainer
    from grpo.report import write_report
    from grpo.tracking import read_jsonl

    model, tok = taught
    rows = [{"prompt": p, "answer": python(p[0]["content"])} for p in PROMPTS]

    def exact(completions, answer, **kwargs):
        return [float(f"<answer>{a}</answer>" in c[-1]["content"]) for c, a in zip(completions, answer)]

    config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, seed=0,
                        rollout={"num_generations": 2, "prompts_per_step": 2}, sampling={"max_tokens": 60},
                        optim={"learning_rate": 1e-3}, loss={"beta": 0.0}, forward={"micro_batch_size": 4},
                        log={"progress_bar": False, "completions": 4}, checkpoint={"final_model": False})
    model = copy.deepcopy(model).train()
    trainer = GRPOTrainer(model, [exact], rows, config, tokenizer=tok, generator=make(model, tok))
    try:
        trainer.train()
    finally:
        trainer.close()
    logged = read_jsonl(tmp_path / "run" / "completions.jsonl")
    assert len(logged) == 4
    called = [r for r in logged if r["tool_calls"] and r["tool_calls"][0]["status"] == "ok"]
    assert called, logged
    for r in called:
        a, b = r["prompt"][0]["content"].split("*")
        roles = [m["role"] for m in r["messages"]]
        assert roles[:2] == ["assistant", "tool"], roles
        assert f"<python>{a}*{b}</python>" in r["messages"][0]["content"]  # the call, as written
        assert r["messages"][1]["content"] == str(int(a) * int(b))  # the observation
        assert r["tool_calls"][0] == {"turn": 0, "name": "python", "arguments": {"code": f"{a}*{b}"},
                                      "status": "ok", "output": str(int(a) * int(b))}
        assert r["turns"] == roles.count("assistant") and r["stop_reason"] in ("done", "token_budget")
        assert r["completion"] != r["messages"][0]["content"]  # completion: the last turn only
    page = write_report(tmp_path / "run").read_text()
    assert html.escape(json.dumps(called[-1]["messages"][0]["content"], ensure_ascii=False)) in page
