"""GRPOTrainer end to end on CPU with the real parts: tiny Llama, HF generation, real rewards."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo import GRPOConfig, GRPOTrainer
from grpo.rewards import FormatReward, MathReward, Reward, Unscorable
from grpo.tiny import save_tiny_model
from grpo.tracking import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


class CountSevens(Reward):
    """A dense toy reward a random tiny model can climb: the share of '7' characters."""

    def score(self, completion, **example):
        return completion.count("7") / max(len(completion), 1)


class Flaky(Reward):
    """Raises for rows marked flaky: the trainer must exclude them and go on."""

    def score(self, completion, **example):
        if example.get("flaky"):
            raise RuntimeError("verifier crashed")
        return 0.0


class NoGold(Reward):
    def score(self, completion, **example):
        raise Unscorable("no gold answer")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_heads=2,
                           head_dim=32)


def rows(n, **extra):
    return [{"prompt": [{"role": "user", "content": f"Say sevens {i}"}], "answer": "7", **extra} for i in range(n)]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), num_generations=4, prompts_per_step=2, max_steps=2,
                max_completion_length=8, learning_rate=1e-3, beta=0.0, micro_batch_size=4,
                progress_bar=False, save_final_model=False, seed=0)
    return GRPOConfig(**{**base, **kw})


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_run_writes_metrics_completions_config_and_final_model(tiny_dir, tmp_path):
    c = cfg(tmp_path, max_steps=3, save_final_model=True, beta=0.01, log_completions=2)
    trainer = GRPOTrainer(str(tiny_dir), [MathReward(), FormatReward(), CountSevens()], rows(4), c,
                          eval_dataset=rows(2), accuracy_reward="math_reward")
    before = weights(trainer.model)
    last = trainer.train()
    run = Path(c.output_dir)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("reward/total/mean", "reward/count_sevens/mean", "reward/format_reward/mean", "train/accuracy",
                "adv/zero_std_frac", "loss/kl", "loss/clip_frac_high", "policy/entropy", "completions/mean_length",
                "completions/truncated_frac", "rollout/logprob_gap", "time/generate", "time/train", "optim/grad_norm"):
        assert key in last, key
    # KL is 0 while the policy is the reference, and > 0 once an update has moved it (a step
    # whose groups all tie has zero advantages and does not move it)
    assert metrics[0]["loss/kl"] == 0
    moved = [i for i, m in enumerate(metrics[:-1]) if m["optim/grad_norm"] > 0]
    assert moved, "no step had a gradient"
    assert metrics[moved[0] + 1]["loss/kl"] > 0
    # HF generator samples with the trained model itself: its log-probs match the trainer's
    assert last["rollout/logprob_gap"] < 1e-3
    assert len(read_jsonl(run / "completions.jsonl")) == 6
    evals = read_jsonl(run / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 3] and "eval/greedy_accuracy" in evals[0]
    assert (run / "config.yaml").exists() and (run / "final" / "config.json").exists()
    after = weights(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_grpo_raises_a_reward_it_can_climb(tiny_dir, tmp_path):
    """Sign and normalisation end to end: the share of '7' in samples must rise."""
    torch.manual_seed(0)
    c = cfg(tmp_path, max_steps=12, num_generations=8, prompts_per_step=2, max_completion_length=8,
            learning_rate=1e-2, micro_batch_size=16)
    trainer = GRPOTrainer(str(tiny_dir), [CountSevens()], rows(8), c)
    trainer.train()
    curve = [m["reward/total/mean"] for m in read_jsonl(Path(c.output_dir) / "metrics.jsonl")]
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last > first + 0.2, curve  # seen here: 0.016 -> 0.51 (steps 1-3 vs 10-12)


def test_unscorable_and_raising_rewards_are_excluded_and_counted(tiny_dir, tmp_path):
    data = rows(2, flaky=False) + rows(2, flaky=True)
    trainer = GRPOTrainer(str(tiny_dir), [CountSevens(), Flaky()], data, cfg(tmp_path, max_steps=2, prompts_per_step=4))
    last = trainer.train()
    assert 0 < last["reward/flaky/unscorable_frac"] < 1  # the flaky rows only
    assert last["reward/total/unscorable_frac"] == last["reward/flaky/unscorable_frac"]
    gone = GRPOTrainer(str(tiny_dir), [NoGold()], rows(2), cfg(tmp_path / "b", max_steps=1)).train()
    assert gone["reward/total/unscorable_frac"] == 1.0 and gone["adv/zero_std_frac"] == 1.0
    assert gone["adv/max"] == 0.0 and gone["adv/min"] == 0.0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_dir, tmp_path):
    common = dict(max_steps=4, num_iterations=2, minibatch_size=4, prompts_per_step=2, beta=0.01)
    full = GRPOTrainer(str(tiny_dir), [CountSevens()], rows(6), cfg(tmp_path / "full", **common))
    full.train()
    # the "killed" run: stops after step 2, where it saved a checkpoint
    part = GRPOTrainer(str(tiny_dir), [CountSevens()], rows(6), cfg(tmp_path / "part", **{**common, "max_steps": 2},
                                                                  save_steps=2))
    part.train()
    resumed = GRPOTrainer(str(tiny_dir), [CountSevens()], rows(6),
                          cfg(tmp_path / "part", **common, save_steps=2, resume_from="latest"))
    assert resumed.step == 2
    resumed.train()
    a, b = weights(full.model), weights(resumed.model)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6, msg=n)
    steps = [m["step"] for m in read_jsonl(tmp_path / "part" / "run" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


def test_lora_reference_is_the_base_with_adapters_disabled(tiny_dir, tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = GRPOTrainer(str(tiny_dir), [CountSevens()], rows(4),
                          cfg(tmp_path, max_steps=3, beta=0.05, save_final_model=True), peft_config=lora)
    assert trainer.ref_model is None  # no second copy
    base_before = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    last = trainer.train()
    assert last["loss/kl"] > 0
    for n, p in trainer.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n  # frozen base
    saved = json.loads((Path(trainer.config.output_dir) / "final" / "adapter_config.json").read_text())
    assert saved["r"] == 4  # the adapter, as peft saves it (checkpoint.merge_lora: merged; tests/test_trainer_hf.py)


def test_configuration_errors_at_construction(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="reward_funcs is empty"):
        GRPOTrainer(str(tiny_dir), [], rows(2), cfg(tmp_path))
    with pytest.raises(ValueError, match="not among the reward functions"):
        GRPOTrainer(str(tiny_dir), [CountSevens()], rows(2), cfg(tmp_path), accuracy_reward="math")
    with pytest.raises(ValueError, match="2 weights for 1 rewards"):
        GRPOTrainer(str(tiny_dir), [CountSevens()], rows(2), cfg(tmp_path, reward_weights=[1.0, 2.0]))
    with pytest.raises(FileNotFoundError):
        GRPOTrainer(str(tmp_path / "nope"), [CountSevens()], rows(2), cfg(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        GRPOTrainer(str(tiny_dir), [CountSevens()], [], cfg(tmp_path))
    from peft import LoraConfig

    with pytest.raises(ValueError, match="fsdp=True with a peft_config"):
        GRPOTrainer(str(tiny_dir), [CountSevens()], rows(2), cfg(tmp_path, fsdp=True),
                    peft_config=LoraConfig(r=2, target_modules=["q_proj"]))


def test_trl_style_function_rewards_work(tiny_dir, tmp_path):
    def length_reward(completions, **kwargs):  # open-r1 style
        return [float(len(c)) for c in completions]

    last = GRPOTrainer(str(tiny_dir), [length_reward], rows(2), cfg(tmp_path, max_steps=1)).train()
    assert last["reward/length_reward/mean"] > 0


def _one_process(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _torchrun(script, *args, port):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.distributed
def test_two_processes_match_one(tiny_dir, tmp_path):
    """2 gloo processes with the same global batch: same weights on both ranks, and the same as
    one process (rollouts are seeded per prompt, gradients summed with global normalisers)."""
    script = ROOT / "tests" / "dist_train.py"
    one = _one_process(script, tiny_dir, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(script, tiny_dir, tmp_path / "two", port=29517)
    assert two.returncode == 0, two.stderr[-3000:]
    w1 = torch.load(tmp_path / "one" / "weights_rank0.pt")
    w2a = torch.load(tmp_path / "two" / "weights_rank0.pt")
    w2b = torch.load(tmp_path / "two" / "weights_rank1.pt")
    moved = False
    for n in w1:
        torch.testing.assert_close(w2a[n], w2b[n], rtol=0, atol=0, msg=n)  # ranks identical
        torch.testing.assert_close(w2a[n], w1[n], rtol=1e-4, atol=1e-5, msg=n)  # = one process
        moved |= not torch.equal(w1[n], torch.load(tmp_path / "one" / "initial.pt")[n])
    assert moved
    # metrics reduced by kind: a process's loss share is summed, extremes are extremes
    m1, m2 = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    for a, b in zip(m1, m2, strict=True):
        for key in ("loss/loss", "reward/total/mean", "completions/max_length", "completions/min_length",
                    "adv/max", "adv/min", "completions/mean_length", "loss/ratio_max", "loss/kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key


@pytest.mark.distributed
def test_dynamic_sampling_two_processes_match_one(tiny_dir, tmp_path):
    """DAPO dynamic sampling over 2 processes keeps the same groups (every process takes part
    in every round and decides on the gathered rewards) and ends with the same weights."""
    script = ROOT / "tests" / "dist_train.py"
    one = _one_process(script, tiny_dir, tmp_path / "one", "--dynamic")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(script, tiny_dir, tmp_path / "two", "--dynamic", port=29521)
    assert two.returncode == 0, two.stderr[-3000:]
    w1, initial = torch.load(tmp_path / "one" / "weights_rank0.pt"), torch.load(tmp_path / "one" / "initial.pt")
    w2a, w2b = torch.load(tmp_path / "two" / "weights_rank0.pt"), torch.load(tmp_path / "two" / "weights_rank1.pt")
    assert any(not torch.equal(w1[n], initial[n]) for n in w1)
    for n in w1:
        torch.testing.assert_close(w2a[n], w2b[n], rtol=0, atol=0, msg=n)
        torch.testing.assert_close(w2a[n], w1[n], rtol=1e-4, atol=1e-5, msg=n)
    m1, m2 = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert any(m["dynamic/filtered_frac"] > 0 for m in m1)  # groups were dropped
    for a, b in zip(m1, m2, strict=True):
        for key in ("dynamic/rounds", "dynamic/groups_kept", "dynamic/groups_sampled", "loss/loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key



@pytest.mark.distributed
def test_fsdp2_two_processes_match_one_and_resume_exactly(tiny_dir, tmp_path):
    """FSDP2 over 2 gloo processes: each holds half of every weight (DTensor shards), the
    gathered weights equal a 1-process unsharded run, eval and the HF-format final model work,
    and a run stopped at a step-2 checkpoint and resumed ends bit-identical to the uninterrupted
    sharded run (gathered checkpoint, broadcast on load)."""
    script = ROOT / "tests" / "dist_train.py"
    one = _one_process(script, tiny_dir, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(script, tiny_dir, tmp_path / "two", "--fsdp", port=29518)
    assert two.returncode == 0, two.stderr[-3000:]
    kind, shape = (tmp_path / "two" / "param_kind.txt").read_text().split(" ", 1)
    full_rows = torch.load(tmp_path / "one" / "initial.pt")["model.embed_tokens.weight"].shape[0]
    assert kind == "DTensor" and ast.literal_eval(shape)[0] == (full_rows + 1) // 2  # dim-0 shard
    w1 = torch.load(tmp_path / "one" / "weights_rank0.pt")
    w2a = torch.load(tmp_path / "two" / "weights_rank0.pt")
    w2b = torch.load(tmp_path / "two" / "weights_rank1.pt")
    initial = torch.load(tmp_path / "one" / "initial.pt")
    assert any(not torch.equal(w1[n], initial[n]) for n in w1)
    for n in w1:
        torch.testing.assert_close(w2a[n], w2b[n], rtol=0, atol=0, msg=n)
        torch.testing.assert_close(w2a[n], w1[n], rtol=1e-4, atol=1e-5, msg=n)
    assert [e["step"] for e in read_jsonl(tmp_path / "two" / "eval.jsonl")] == [0, 3]
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    for n, p in final.named_parameters():
        torch.testing.assert_close(p.detach(), w2a[n], rtol=0, atol=0, msg=n)

    part = tmp_path / "part"
    first = _torchrun(script, tiny_dir, part, "--fsdp", "--save-steps", "2", "--max-steps", "2", port=29519)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (part / "checkpoints" / "step_2" / "optimizer_full.pt").exists()
    second = _torchrun(script, tiny_dir, part, "--fsdp", "--save-steps", "2", "--resume", port=29520)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = torch.load(part / "weights_rank0.pt")
    for n in w2a:
        torch.testing.assert_close(resumed[n], w2a[n], rtol=0, atol=0, msg=n)
    assert [m["step"] for m in read_jsonl(part / "metrics.jsonl")] == [1, 2, 3]

