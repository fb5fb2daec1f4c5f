"""Runs that cannot mislead: trl's own reward functions through the trainer, failing rewards that
stop the run, guarded output folders, prompt lengths, warnings when nothing is learned, the
loss's numeric guard. Real tiny model, real HF generation, real trl and math-verify."""

import math

import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.checkpoint import list_checkpoints
from grpo.guards import set_torch_threads
from grpo.loss import policy_loss
from grpo.rewards import CosineLengthReward, FormatReward, MathReward, OverlongPenalty, Reward, RewardFailure
from grpo.tracking import read_jsonl

from conftest import Checksum


class Constant(Reward):
    def score(self, completion, **example):
        return 1.0


def chat_rows(n, **extra):
    return [{"prompt": [{"role": "user", "content": f"What is {i}+1?"}], "solution": str(i + 1), **extra}
            for i in range(n)]


def cfg(tmp_path, name="run", **kw):
    base = dict(output_dir=str(tmp_path / name), num_generations=4, prompts_per_step=2, max_steps=2,
                max_completion_length=8, learning_rate=1e-3, beta=0.0, progress_bar=False,
                save_final_model=False, seed=0)
    return GRPOConfig(**{**base, **kw})


def test_trl_reward_functions_train_unchanged(tiny_dir, tmp_path):
    """trl's own reward functions, called as trl calls them (chat completions, completion_ids,
    trainer_state ...): before, `think_format_reward` crashed on plain strings and the soft
    overlong punishment had no token ids."""
    from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

    overlong = get_soft_overlong_punishment(max_completion_len=8, soft_punish_cache=4)
    trainer = GRPOTrainer(str(tiny_dir), [accuracy_reward, think_format_reward, overlong], chat_rows(4),
                          cfg(tmp_path, log_completions=8))
    metrics = trainer.train()
    trainer.close()
    name = overlong.__name__
    assert metrics[f"reward/{name}/unscorable_frac"] == 0.0
    assert metrics["reward/think_format_reward/unscorable_frac"] == 0.0
    # completions cut at 8 tokens are punished by the full amount; trl's formula, by hand
    records = read_jsonl(tmp_path / "run" / "completions.jsonl")
    assert {r["rewards"]["think_format_reward"]["status"] for r in records} == {"ok"}
    assert any(r["rewards"][name]["value"] == pytest.approx(-1.0) for r in records)


def test_rewards_that_do_not_apply_leave_the_total_scorable(tiny_dir, tmp_path):
    """trl's convention for multi-task data: None = this reward does not apply to this row."""
    def math_only(completions, task, **kw):
        return [float(len(c[0]["content"]) % 2) if t == "math" else None for c, t in zip(completions, task)]

    def echo_only(completions, task, **kw):
        return [None if t == "math" else float(len(c[0]["content"]) % 3) / 2 for c, t in zip(completions, task)]

    rows = [{**r, "task": "math" if i % 2 else "echo"} for i, r in enumerate(chat_rows(4))]
    trainer = GRPOTrainer(str(tiny_dir), [math_only, echo_only], rows,
                          cfg(tmp_path, max_steps=1, prompts_per_step=4, log_completions=16))
    metrics = trainer.train()
    trainer.close()
    assert metrics["adv/unscorable_frac"] == 0.0 and metrics["reward/total/unscorable_frac"] == 0.0
    records = read_jsonl(tmp_path / "run" / "completions.jsonl")
    assert all(r["reward_status"] == "ok" for r in records)
    assert {r["rewards"]["math_only"]["status"] for r in records} == {"ok", "n/a"}


def test_a_reward_that_never_scores_stops_the_run_naming_it(tiny_dir, tmp_path):
    rows = [{"prompt": f"What is {i}+1?"} for i in range(4)]  # no "answer" column
    trainer = GRPOTrainer(str(tiny_dir), [MathReward(parallel=False), FormatReward()], rows,
                          cfg(tmp_path, max_steps=6, reward_failure_patience=3))
    with pytest.raises(RewardFailure, match="math_reward.*answer"):
        trainer.train()
    trainer.close()
    assert trainer.step == 2  # stopped during step 3


def test_length_rewards_score_every_completion_in_the_trainer(tiny_dir, tmp_path):
    rows = [{"prompt": f"Say {i}", "answer": "7"} for i in range(4)]
    trainer = GRPOTrainer(str(tiny_dir), [OverlongPenalty(max_length=8, cache_length=4),
                                          CosineLengthReward(MathReward(parallel=False), max_length=8)],
                          rows, cfg(tmp_path, max_steps=1))
    metrics = trainer.train()
    trainer.close()
    assert metrics["reward/overlong_penalty/unscorable_frac"] == 0.0
    assert metrics["reward/cosine_length_reward/unscorable_frac"] == 0.0


def test_a_fresh_run_refuses_a_folder_with_another_runs_checkpoints(tiny_dir, tmp_path):
    rows = chat_rows(4)
    GRPOTrainer(str(tiny_dir), [Checksum()], rows, cfg(tmp_path, max_steps=1, save_steps=1)).train()
    # refused by train(), before any step: the trainer may yet be told train(resume_from_checkpoint=True)
    unresumed = GRPOTrainer(str(tiny_dir), [Checksum()], rows, cfg(tmp_path, max_steps=1))
    with pytest.raises(FileExistsError, match="resume_from='latest'.*resume_from_checkpoint=True.*overwrite_output_dir"):
        unresumed.train()
    unresumed.close()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows, cfg(tmp_path, max_steps=1, overwrite_output_dir=True))
    assert list_checkpoints(tmp_path / "run") == []
    trainer.config.save_steps = 1
    trainer.train()
    trainer.close()
    resumed = GRPOTrainer(str(tiny_dir), [Checksum()], rows, cfg(tmp_path, max_steps=1, resume_from="latest",
                                                                   save_steps=1))
    resumed.close()


def test_a_run_learning_nothing_says_so(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Constant()], chat_rows(4), cfg(tmp_path, max_steps=3))
    with pytest.warns(UserWarning, match="learning almost nothing.*no reward spread"):
        trainer.train()
    trainer.close()


def test_prompts_longer_than_max_prompt_length_are_refused_naming_the_row(tiny_dir, tmp_path):
    rows = [{"prompt": "short"}, {"prompt": "a much longer prompt than allowed " * 3}]
    # at start, not at the step that samples it (hours in)
    with pytest.raises(ValueError, match=r"train_dataset row 1 has \d+ tokens, more than "
                                         r"rollout.max_prompt_length=20: raise"):
        GRPOTrainer(str(tiny_dir), [Checksum()], rows, cfg(tmp_path, prompts_per_step=2, max_prompt_length=20))


def test_config_mistakes_name_the_fix(tiny_dir, tmp_path):
    with pytest.raises(TypeError, match="GRPOConfig\\(\\*\\*your_dict\\)"):
        GRPOTrainer(str(tiny_dir), [Checksum()], chat_rows(2), {"beta": 0.0})
    from trl import GRPOConfig as TrlConfig

    # a trl GRPOConfig is converted (grpo.trl_args; tests/test_trl_args.py), also as config=
    trl_cfg = TrlConfig(output_dir=str(tmp_path / "t"), use_cpu=True, bf16=False, max_completion_length=8)
    assert GRPOTrainer(str(tiny_dir), [Checksum()], chat_rows(2), trl_cfg).config.rollout.num_generations == 8
    with pytest.raises(TypeError, match="not a dataset"):
        GRPOTrainer(str(tiny_dir), [Checksum()], chat_rows(2), object())
    with pytest.raises(TypeError, match="MathReward\\(\\)"):
        GRPOTrainer(str(tiny_dir), [MathReward], chat_rows(2), cfg(tmp_path))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        GRPOTrainer(str(tiny_dir), [Checksum()], chat_rows(2), cfg(tmp_path, max_prompt_length=10**6))
    # prompts_per_step=3 with the other defaults works: micro-batches need not divide the step
    GRPOTrainer(str(tiny_dir), [Checksum()], chat_rows(4), cfg(tmp_path, prompts_per_step=3, max_steps=1)).train()


def test_cpu_runs_use_half_the_cores_by_default():
    before = torch.get_num_threads()
    try:
        n = set_torch_threads(None, cuda=False)
        import os

        assert n == max(1, len(os.sched_getaffinity(0)) // 2) == torch.get_num_threads()
        assert set_torch_threads(None, cuda=True) == 0  # a GPU run is left alone
        assert set_torch_threads(3, cuda=False) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ loss guards
def test_log_ratio_guard_keeps_an_absurd_token_finite_and_changes_nothing_normal():
    logp = torch.tensor([[-1.0, -0.5, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -0.4, -25.0]])  # last token: log-ratio 25 (ratio 7e10)
    mask = torch.ones(1, 3)
    out = policy_loss(logp, old, torch.tensor([-1.0]), mask)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 2] == 0.0  # beyond the bound the token gets no gradient (was 7e10 / 3)
    # in the normal range: identical to the unguarded formula, computed by hand
    r = torch.exp(torch.tensor([0.2, -0.1]))
    want = torch.maximum(r * 1.0, r.clamp(0.8, 1.2) * 1.0)
    assert out.loss.item() == pytest.approx((want.sum().item() + math.exp(20.0)) / 3, rel=1e-6)


def test_kl_ratio_correction_weights_the_kl_by_the_ratio():
    logp = torch.tensor([[-1.0, -2.0]])
    old = torch.tensor([[-1.5, -2.0]])
    ref = torch.tensor([[-1.2, -1.0]])
    mask = torch.ones(1, 2)
    plain = policy_loss(logp, old, torch.zeros(1), mask, ref_logp=ref, beta=1.0)
    fixed = policy_loss(logp, old, torch.zeros(1), mask, ref_logp=ref, beta=1.0, kl_ratio_correction=True)
    k3 = [math.exp(d) - d - 1 for d in (-0.2, 1.0)]  # d = ref - logp
    ratio = [math.exp(0.5), 1.0]
    assert plain.loss.item() == pytest.approx(sum(k3) / 2, rel=1e-6)
    assert fixed.loss.item() == pytest.approx((k3[0] * ratio[0] + k3[1] * ratio[1]) / 2, rel=1e-6)
    on_policy = policy_loss(logp, logp, torch.zeros(1), mask, ref_logp=ref, beta=1.0, kl_ratio_correction=True)
    assert on_policy.loss.item() == pytest.approx(policy_loss(logp, logp, torch.zeros(1), mask, ref_logp=ref,
                                                              beta=1.0).loss.item())


def test_dr_grpo_budget_is_the_same_for_the_loss_called_directly():
    logp = torch.tensor([[-1.0, -1.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    out = policy_loss(logp, logp.detach(), torch.tensor([1.0]), mask, aggregation="seq_sum_max_len", max_len=10)
    assert out.loss.item() == pytest.approx(-2 / 10)  # 2 tokens x (-A) / (1 sequence x budget 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_dtype_trains_in_bf16_autocast_on_cuda(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], chat_rows(4), cfg(tmp_path, max_steps=1))
    assert trainer.accelerator.mixed_precision == "bf16"
    with trainer.accelerator.autocast():
        x = torch.randn(2, 2, device="cuda")
        assert (x @ x).dtype == torch.bfloat16
    trainer.close()


def test_auto_dtype_is_float32_on_cpu(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], chat_rows(2), cfg(tmp_path, max_steps=1))
    assert trainer.accelerator.mixed_precision == "no"
    assert next(trainer.model.parameters()).dtype == torch.float32
    trainer.close()
