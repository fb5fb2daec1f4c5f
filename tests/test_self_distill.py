"""On-policy self-distillation (distill.self_context): the policy, given a privileged prompt (its
prompt plus the row's verified answer), is the teacher of its own samples.

Mutations tried, each caught (test named):
- teacher pass on the student's own prompt instead of the privileged one
  -> test_teacher_logprobs_are_the_policy_given_the_privileged_prompt,
     test_step_zero_reverse_kl_is_positive
- no teacher pass at all for self_context -> the above and test_self_distillation_trains
- the privileged prompts' padding unmasked (mask all ones)
  -> test_teacher_logprobs_..., test_select_keeps_each_rows_privileged_prompt
- select() not moving the privileged prompts with their rows
  -> test_select_keeps_each_rows_privileged_prompt
- every rollout given the first prompt's privileged ids
  -> test_the_source_encodes_..., test_chat_prompts_..., test_teacher_logprobs_...
- context appended to the first user message -> test_privileged_prompt_chat
- context prepended instead of appended -> test_privileged_prompt_plain
- no start check of the template's columns -> test_a_missing_column_is_refused_at_start
- distillation_conflict not applied to self_context
  -> test_self_context_gets_the_distillation_refusals
"""

import copy

import pytest
import torch
from transformers import AutoTokenizer

from grpo import GRPOConfig, GRPOTrainer
from grpo.batch import collate_rollouts, join_scores
from grpo.distill import privileged_prompt, self_context_columns
from grpo.rollout.tokens import encode_prompt
from grpo.tracking import read_jsonl

from conftest import Checksum

TEMPLATE = "The verified final answer is {answer}. Solve the problem again."


def rows(n):
    # answers of different lengths: the privileged prompts are left-padded to different widths
    return [{"prompt": f"Say {i}", "answer": "7" * (i + 1)} for i in range(n)]


def cfg(tmp_path, num_generations=4, temperature=1.0, micro_batch_size=8, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=1, seed=0,
                rollout={"num_generations": num_generations, "prompts_per_step": 2},
                sampling={"max_tokens": 8, "temperature": temperature},
                optim={"learning_rate": 1e-2}, loss={"beta": 0.0},
                forward={"micro_batch_size": micro_batch_size},
                log={"progress_bar": False}, checkpoint={"final_model": False},
                distill={"self_context": TEMPLATE})
    return GRPOConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- (a) the prompt
def test_privileged_prompt_plain():
    assert privileged_prompt("What is 2+2?", {"answer": 4, "x": 1}, TEMPLATE) == (
        "What is 2+2?\n\nThe verified final answer is 4. Solve the problem again."
    )


def test_privileged_prompt_chat():
    """Appended to the *last* user message; the other messages and the input are unchanged."""
    chat = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "second"},
    ]
    before = copy.deepcopy(chat)
    out = privileged_prompt(chat, {"answer": "42"}, "Answer: {answer}")
    assert out == before[:3] + [{"role": "user", "content": "second\n\nAnswer: 42"}]
    assert chat == before
    with pytest.raises(ValueError, match="no.*|has none"):
        privileged_prompt([{"role": "system", "content": "S"}], {"answer": 1}, "{answer}")


@pytest.mark.parametrize("template, match", [
    ("the answer is {}", "not a column name"),
    ("the answer is {answer!r}", "format spec or conversion"),
    ("no column at all", "reads no dataset column"),
    ("unbalanced {answer", "not a format template"),
])
def test_bad_templates_are_refused_naming_the_template(template, match):
    with pytest.raises(ValueError, match=match) as e:
        self_context_columns(template)
    assert "distill.self_context" in str(e.value)
    with pytest.raises(ValueError, match=match):
        GRPOConfig(distill={"self_context": template})


def test_the_source_encodes_the_privileged_prompt_of_each_rollouts_row(tiny_dir, tmp_path):
    """Each rollout's teacher_prompt_ids are its own row's privileged prompt, encoded as the
    student's prompt is (plain text here: with the tokenizer's BOS)."""
    data = rows(4)
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], data, cfg(tmp_path))
    collected = trainer.source.collect(0)
    tok = trainer.tokenizer
    for r in collected.rollouts:
        row = next(x for x in data if encode_prompt(tok, x["prompt"]) == r.prompt_ids)
        assert r.teacher_prompt_ids == encode_prompt(tok, privileged_prompt(row["prompt"], row, TEMPLATE))
    assert all(r.teacher_prompt_ids != r.prompt_ids for r in collected.rollouts)
    collected.result()
    trainer.close()


def test_chat_prompts_get_the_context_in_the_last_user_message(tiny_dir, tmp_path):
    data = [{"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": f"Say {i}"}],
             "answer": str(i)} for i in range(2)]
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], data, cfg(tmp_path))
    collected = trainer.source.collect(0)
    tok = trainer.tokenizer
    for r in collected.rollouts:
        row = next(x for x in data if encode_prompt(tok, x["prompt"]) == r.prompt_ids)
        want = row["prompt"][:1] + [{"role": "user", "content": row["prompt"][1]["content"]
                                     + "\n\nThe verified final answer is " + row["answer"]
                                     + ". Solve the problem again."}]
        assert r.teacher_prompt_ids == encode_prompt(tok, want)
        assert r.teacher_prompt_ids != r.prompt_ids
    collected.result()
    trainer.close()


# ----------------------------------------------------------------------------- (b) the teacher
def _frozen_batch(trainer):
    collected = trainer.source.collect(0)
    batch = collate_rollouts(collected.rollouts, None, trainer.tokenizer.pad_token_id)
    batch = trainer.learner.frozen_logprobs(batch)
    scored = collected.result()
    return join_scores(batch, scored), scored


@pytest.mark.parametrize("forward", [{}, {"share_prompt_forward": True}, {"padding_free": True}],
                         ids=["padded", "shared_prompts", "padding_free"])
def test_teacher_logprobs_are_the_policy_given_the_privileged_prompt(tiny_dir, tmp_path, forward):
    """teacher_logp[b, t] = log softmax(model(privileged prompt + completion) / T) of completion
    token t, from an independent unbatched forward of the same (step-start) weights, for every
    row of a batch whose privileged prompts have different lengths, in micro-batches of 3, with
    each of the learner's forward layouts."""
    temperature = 0.7
    config = cfg(tmp_path, temperature=temperature, micro_batch_size=3)
    config = config.updated({f"forward.{k}": v for k, v in forward.items()})
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), config)
    before = copy.deepcopy(trainer.model).eval()
    batch, scored = _frozen_batch(trainer)
    assert batch.teacher_logp is not None and not batch.teacher_logp.requires_grad
    widths = {len(r.rollout.teacher_prompt_ids) for r in scored.trained}
    assert len(widths) > 1  # left padding of the privileged prompts is exercised
    for i, rec in enumerate(scored.trained):  # join_scores puts the batch in step order
        r = rec.rollout
        ids = torch.tensor([r.teacher_prompt_ids + r.completion_ids])
        with torch.no_grad():
            logits = before(ids).logits[0, len(r.teacher_prompt_ids) - 1:-1].float() / temperature
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None])[:, 0]
        n = len(r.completion_ids)
        torch.testing.assert_close(batch.teacher_logp[i, :n], want, atol=1e-5, rtol=0)
        # and the student's (sampler's) log-probs are the same model on the plain prompt
        ids = torch.tensor([r.prompt_ids + r.completion_ids])
        with torch.no_grad():
            logits = before(ids).logits[0, len(r.prompt_ids) - 1:-1].float() / temperature
        plain = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None])[:, 0]
        torch.testing.assert_close(batch.rollout_logp[i, :n], plain, atol=1e-4, rtol=0)
        assert (want - plain).abs().max() > 1e-3  # the privileged prompt changes the teacher
    out, metrics = trainer.learner.with_distillation(batch)
    m = batch.loss_mask
    kl = (batch.rollout_logp - batch.teacher_logp)[m].mean().item()
    assert metrics["distill/reverse_kl"] == pytest.approx(kl, rel=1e-5)
    want_adv = scored.advantages[:, None] - (batch.rollout_logp - batch.teacher_logp)
    torch.testing.assert_close(out.advantages[m], want_adv[m], atol=1e-6, rtol=0)
    trainer.close()


def test_select_keeps_each_rows_privileged_prompt(tiny_dir, tmp_path):
    """Selecting rows (minibatches, the join) moves each row's privileged prompt with it, and the
    teacher view keeps the completion columns identical."""
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path))
    collected = trainer.source.collect(0)
    batch = collate_rollouts(collected.rollouts, None, trainer.tokenizer.pad_token_id)
    idx = [5, 0, 3]
    sub = batch.select(idx)
    view = sub.teacher_view()
    for j, i in enumerate(idx):
        r = collected.rollouts[i]
        real = view.input_ids[j][view.attention_mask[j].bool()].tolist()
        assert real == r.teacher_prompt_ids + r.completion_ids
    assert torch.equal(view.input_ids[:, view.prompt_len:], sub.input_ids[:, sub.prompt_len:])
    assert torch.equal(view.completion_mask, sub.completion_mask)
    collected.result()
    trainer.close()


# ----------------------------------------------------------------------------- (c, e) training
@pytest.mark.parametrize("rewards", [[], [Checksum()]], ids=["pure", "mixed"])
def test_self_distillation_trains(tiny_dir, tmp_path, rewards):
    """Pure (no reward function: the term is the only signal) and mixed OPSD train two steps:
    the weights change and distill/reverse_kl is logged, finite, every step."""
    trainer = GRPOTrainer(str(tiny_dir), rewards, rows(4), cfg(tmp_path, max_steps=2))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    trainer.close()
    changed = sum(not torch.equal(a, p.detach()) for a, p in zip(before, trainer.model.parameters()))
    assert changed > 0
    kl = [m["distill/reverse_kl"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(kl) == 2 and all(torch.isfinite(torch.tensor(kl))), kl


def test_step_zero_reverse_kl_is_positive(tiny_dir, tmp_path):
    """At step 0 student and teacher share weights; only the privileged prompt separates them.
    A teacher pass on the plain prompt would make the term (and the KL) ~0."""
    trainer = GRPOTrainer(str(tiny_dir), [], rows(4), cfg(tmp_path, num_generations=8))
    batch, _ = _frozen_batch(trainer)
    _, metrics = trainer.learner.with_distillation(batch)
    trainer.close()
    print("step-0 reverse KL", metrics["distill/reverse_kl"])
    assert metrics["distill/reverse_kl"] > 1e-3, metrics


# ----------------------------------------------------------------------------- (d) refusals
def test_self_context_with_a_teacher_is_refused(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match=r"distill\.self_context=.*distill\.teacher='t'"):
        GRPOConfig(distill={"self_context": TEMPLATE, "teacher": "t"})
    from grpo.tiny import build_tiny_llama

    teacher = build_tiny_llama(AutoTokenizer.from_pretrained(tiny_dir), hidden_size=64, num_layers=1,
                               num_heads=2, head_dim=32)
    with pytest.raises(ValueError, match=r"distill\.self_context=.*distill\.teacher \(here a model"):
        GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path), teacher=teacher)


@pytest.mark.parametrize("setting, key", [
    ({"rollout": {"dynamic_sampling": True}}, r"rollout\.dynamic_sampling=True"),
    ({"sampling": {"top_k": 5}}, r"sampling\.top_k=5"),
])
def test_self_context_gets_the_distillation_refusals(setting, key):
    with pytest.raises(ValueError, match=key + r" with distill\.self_context"):
        GRPOConfig(distill={"self_context": TEMPLATE}, **setting)


def test_a_missing_column_is_refused_at_start(tiny_dir, tmp_path):
    data = rows(3)
    del data[2]["answer"]
    with pytest.raises(ValueError, match=r"distill\.self_context='The verified.*'answer'.*row 2"):
        GRPOTrainer(str(tiny_dir), [Checksum()], data, cfg(tmp_path))
    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": "Say 1", "solution": "1"}])
    with pytest.raises(ValueError, match=r"reads the column 'answer'.*columns: \['prompt', 'solution'\]"):
        GRPOTrainer(str(tiny_dir), [Checksum()], ds, cfg(tmp_path))
