"""On-policy distillation through GRPOTrainer: the teacher's per-token term, by hand and
through the reference path; pure distillation moves the student towards the teacher."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo import GRPOConfig, GRPOTrainer
from grpo.batch import collate_rollouts, join_scores
from grpo.tiny import build_tiny_llama
from grpo.tracking import read_jsonl

from conftest import Checksum


def rows(n):
    return [{"prompt": f"Say {i}"} for i in range(n)]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), num_generations=4, prompts_per_step=2, max_steps=1,
                max_completion_length=8, learning_rate=1e-2, beta=0.0, progress_bar=False,
                save_final_model=False, seed=0)
    return GRPOConfig(**{**base, **kw})


def teacher_model(tiny_dir, seed=7):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    return build_tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=2, head_dim=32, seed=seed)


def test_distillation_term_by_hand(tiny_dir, tmp_path):
    """advantage[b, t] = task advantage[b] - coef * (log p_student - log p_teacher)[b, t] on the
    sampled tokens, 0 at padding; teacher log-probs equal a direct forward of the teacher."""
    teacher = teacher_model(tiny_dir)
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path, distill_coef=0.5), teacher=teacher)
    collected = trainer.source.collect(0)
    batch = collate_rollouts(collected.rollouts, None, trainer.tokenizer.pad_token_id)
    batch = trainer.learner.frozen_logprobs(batch)
    scored = collected.result()
    batch = join_scores(batch, scored)
    out, metrics = trainer.learner.with_distillation(batch)
    r = scored.trained[0].rollout
    ids = torch.tensor([r.prompt_ids + r.completion_ids])
    with torch.no_grad():
        logits = teacher(ids).logits[0, len(r.prompt_ids) - 1:-1]
    want_teacher = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None])[:, 0]
    n = len(r.completion_ids)
    torch.testing.assert_close(batch.teacher_logp[0, :n], want_teacher, atol=1e-5, rtol=0)
    want = scored.advantages[0] - 0.5 * (torch.tensor(r.logprobs) - want_teacher)
    torch.testing.assert_close(out.advantages[0, :n], want, atol=1e-5, rtol=0)
    assert (out.advantages[~batch.loss_mask] == scored.advantages[:, None].expand_as(out.advantages)[~batch.loss_mask]).all()
    m = batch.loss_mask
    kl = ((batch.rollout_logp - batch.teacher_logp)[m]).mean().item()
    assert metrics["distill/reverse_kl"] == pytest.approx(kl, rel=1e-5)
    trainer.close()


def completion_logprobs(model, r):
    """An independent, unbatched forward: ``model``'s log-probs of ``r``'s completion tokens."""
    ids = torch.tensor([r.prompt_ids + r.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(r.prompt_ids) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None])[:, 0]


def test_teacher_and_reference_logprobs_come_from_their_own_models(tiny_dir, tmp_path):
    """With a reference (beta > 0) and a teacher that differs from it, the chunked frozen pass
    (micro-batches of 3 over 8 rows) gives every row the teacher's log-probs as teacher_logp
    and the initial student's as ref_logp, each equal to an independent forward of its own
    model. (A teacher that is a copy of the reference could not tell the two apart.)"""
    student = AutoModelForCausalLM.from_pretrained(tiny_dir)
    initial = copy.deepcopy(student).eval()
    teacher = teacher_model(tiny_dir)
    trainer = GRPOTrainer(student, [Checksum()], rows(4), cfg(tmp_path, beta=0.1, micro_batch_size=3),
                          teacher=teacher, tokenizer=AutoTokenizer.from_pretrained(tiny_dir))
    rollouts = trainer.source.collect(0).rollouts
    batch = collate_rollouts(rollouts, None, trainer.tokenizer.pad_token_id)
    batch = trainer.learner.frozen_logprobs(batch)
    assert len(rollouts) == 8
    for i, r in enumerate(rollouts):
        n = len(r.completion_ids)
        want_teacher, want_ref = completion_logprobs(teacher, r), completion_logprobs(initial, r)
        assert (want_teacher - want_ref).abs().max() > 0.1  # the two models do differ
        torch.testing.assert_close(batch.teacher_logp[i, :n], want_teacher, atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.ref_logp[i, :n], want_ref, atol=1e-5, rtol=0)
    trainer.close()


def test_pure_distillation_moves_the_student_towards_the_teacher(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [], rows(8), cfg(tmp_path, max_steps=12, learning_rate=3e-3,
                                                            num_generations=8, prompts_per_step=4),
                          teacher=teacher_model(tiny_dir))
    trainer.train()
    trainer.close()
    kl = [m["distill/reverse_kl"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert sum(kl[-3:]) / 3 < 0.7 * sum(kl[:3]) / 3, kl


def _teacher_pair(tiny_dir, tmp_path, kind):
    """A teacher (model and saved directory) of one kind: "padded" (5 spare embedding rows, as
    checkpoints of one family differ), "short" (3 rows fewer than the student's tokenizer),
    "other_tokenizer" (the student's row count, a tokenizer with two more tokens)."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = teacher_model(tiny_dir)
    if kind != "other_tokenizer":
        model.resize_token_embeddings(len(tok) + (5 if kind == "padded" else -3))
    path = tmp_path / f"teacher_{kind}"
    model.save_pretrained(path)
    if kind == "other_tokenizer":
        tok.add_tokens(["<extra_a>", "<extra_b>"])
    tok.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path), path


@pytest.mark.parametrize(
    "kind, refusal",
    [("padded", None), ("short", "vocabulary has"), ("other_tokenizer", "tokenizers differ")],
)
def test_a_teacher_is_checked_alike_as_a_path_and_as_a_model(tiny_dir, tmp_path, kind, refusal):
    """The same teacher is accepted or refused whether given as distill.teacher (a path) or as
    GRPOTrainer(teacher=model): extra embedding rows are fine, missing ones or another tokenizer
    are not."""
    model, path = _teacher_pair(tiny_dir, tmp_path, kind)
    as_model = dict(config=cfg(tmp_path), teacher=model)
    as_path = dict(config=cfg(tmp_path, distill={"teacher": str(path)}))
    for kwargs in (as_model, as_path):
        if refusal is None:
            trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), **kwargs)
            assert trainer.teacher is not None
        else:
            with pytest.raises(ValueError, match=refusal):
                GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), **kwargs)


def test_a_teacher_with_another_vocabulary_is_refused(tiny_dir, tmp_path):
    from grpo.tiny import build_char_tokenizer

    other = build_tiny_llama(build_char_tokenizer(), hidden_size=64, num_layers=1, num_heads=2, head_dim=32)
    other.resize_token_embeddings(other.get_input_embeddings().num_embeddings - 5)
    with pytest.raises(ValueError, match="vocabulary"):
        GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path), teacher=other)
    path = tmp_path / "teacher"
    other.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.add_tokens(["<extra_a>", "<extra_b>"])
    tok.save_pretrained(path)
    with pytest.raises(ValueError, match="tokenizers differ"):
        GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path, teacher_model=str(path)))


@pytest.mark.parametrize("setting, key", [
    ({"rollout": {"dynamic_sampling": True}}, r"rollout\.dynamic_sampling=True"),
    ({"sampling": {"top_p": 0.9}}, r"sampling\.top_p=0\.9"),
])
def test_a_teacher_model_is_refused_with_dynamic_or_truncated_sampling(tiny_dir, tmp_path, setting, key):
    """GRPOTrainer(teacher=model) gets the config's distill.teacher refusals."""
    with pytest.raises(ValueError, match=key + r" with distill\.teacher \(here a model"):
        GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path, **setting), teacher=teacher_model(tiny_dir))
