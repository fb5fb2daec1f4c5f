"""Settings trl and verl users reach for, each shown to change what it should: overlong
filtering, chat-template variables, epochs, warm-up ratio."""

import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.tiny import build_char_tokenizer, build_tiny_llama
from grpo.tracking import read_jsonl

from conftest import Checksum


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny model whose chat template reads an ``enable_thinking`` variable (as Qwen3's does)."""
    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% if enable_thinking is defined and not enable_thinking %}"
        " /no_think{% endif %} {% endif %}")
    model = build_tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=2, head_dim=32, seed=0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def rows(n):
    return [{"prompt": [{"role": "user", "content": f"Add {i} and 1"}]} for i in range(n)]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), num_generations=4, prompts_per_step=2, max_steps=1,
                max_completion_length=8, learning_rate=1e-2, beta=0.0, progress_bar=False,
                save_final_model=False, seed=0)
    return GRPOConfig(**{**base, **kw})


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_mask_truncated_completions_leaves_cut_completions_out_of_the_loss(tiny_dir, tmp_path):
    """Completions of 3 tokens from a random model are all cut: masked, nothing is trained."""
    masked = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path, max_completion_length=3,
                                                                       mask_truncated_completions=True))
    before = weights(masked.model)
    m = masked.train()
    masked.close()
    assert m["completions/truncated_frac"] == 1.0 and m["adv/zero_std_frac"] < 1.0  # rewards still count
    assert m["train/tokens"] == 0 and m["train/skipped_minibatches"] == 1.0
    assert all(torch.equal(before[n], p) for n, p in masked.model.named_parameters())
    plain = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path / "b", max_completion_length=3))
    before = weights(plain.model)
    m = plain.train()
    plain.close()
    assert m["train/tokens"] == 8 * 3
    assert any(not torch.equal(before[n], p) for n, p in plain.model.named_parameters())


def test_chat_template_kwargs_reach_the_prompt(tiny_dir, tmp_path):
    def first_prompt(config):
        trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(2), config)
        ids = trainer.source.collect(0).rollouts[0].prompt_ids
        trainer.close()
        return trainer.tokenizer.decode(ids)

    assert "/no_think" not in first_prompt(cfg(tmp_path))
    assert first_prompt(cfg(tmp_path, chat_template_kwargs={"enable_thinking": False})).endswith("/no_think ")


def test_num_train_epochs_sets_the_steps_and_sees_every_prompt(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(6), cfg(tmp_path / "b", num_train_epochs=2,
                                                                      log_completions=16))
    assert trainer.config.max_steps == 6  # 2 epochs x 6 prompts / 2 per step
    trainer.train()
    trainer.close()
    prompts = [r["prompt"][0]["content"] for r in read_jsonl(tmp_path / "b" / "run" / "completions.jsonl")]
    assert sorted(set(prompts)) == sorted(r["prompt"][0]["content"] for r in rows(6))
    assert all(prompts.count(p) == 2 * 4 for p in set(prompts))  # each prompt twice, G=4 completions each


def test_warmup_ratio_ramps_the_learning_rate(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path, max_steps=4, warmup_ratio=0.5))
    trainer.train()
    trainer.close()
    lrs = [m["optim/lr"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert lrs == pytest.approx([0.5e-2, 1e-2, 1e-2, 1e-2])  # 2 warm-up steps of 4
    with pytest.raises(ValueError, match="set one of them"):
        cfg(tmp_path, warmup_steps=2, warmup_ratio=0.5)


def test_datasets_the_trainer_cannot_sample_are_refused(tiny_dir, tmp_path):
    with pytest.raises(TypeError, match="Dataset.from_dict"):
        GRPOTrainer(str(tiny_dir), [Checksum()], {"prompt": ["a", "b"]}, cfg(tmp_path))
    with pytest.raises(ValueError, match="eval_dataset is empty"):
        GRPOTrainer(str(tiny_dir), [Checksum()], rows(2), cfg(tmp_path), eval_dataset=[])
    with pytest.raises(KeyError, match="prompt_key="):
        GRPOTrainer(str(tiny_dir), [Checksum()], [{"question": "a"}], cfg(tmp_path))


def test_max_seconds_stops_after_the_step_that_passes_it(tiny_dir, tmp_path, capsys):
    # a budget already spent when the first step ends: exactly one step, then the usual ending
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4),
                          cfg(tmp_path / "a", max_steps=50, max_seconds=1e-6, save_final_model=True))
    trainer.train()
    trainer.close()
    assert [m["step"] for m in read_jsonl(tmp_path / "a" / "run" / "metrics.jsonl")] == [1]
    assert trainer.step == 1 and (tmp_path / "a" / "run" / "final" / "config.json").exists()
    assert "max_seconds=1e-06 reached after step 1 of max_steps=50" in capsys.readouterr().out
    # a budget that is never reached changes nothing
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path / "b", max_steps=3, max_seconds=3600))
    trainer.train()
    trainer.close()
    assert [m["step"] for m in read_jsonl(tmp_path / "b" / "run" / "metrics.jsonl")] == [1, 2, 3]
    with pytest.raises(ValueError, match="max_seconds"):
        cfg(tmp_path, max_seconds=0)


def test_keep_freed_cpu_memory_stops_refaulting_activations():
    """A fresh process allocating and freeing 48 MB tensors (above glibc's largest automatic mmap
    threshold, 32 MB) takes a page fault per 4 KB page on every round; after
    keep_freed_cpu_memory() the freed block is reused and it takes (almost) none. Run in a
    subprocess: the setting is process-wide."""
    import subprocess
    import sys

    script = """
import resource, sys, torch
from grpo.guards import keep_freed_cpu_memory
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rounds():
    start = faults()
    for _ in range(10):
        x = torch.empty(12 * 2**20).fill_(1.0)  # 48 MB
        del x
    return faults() - start
rounds()
before = rounds()
applied = keep_freed_cpu_memory()
rounds()
after = rounds()
print(applied, before, after)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    applied, before, after = out.stdout.split()
    if applied != "True":
        pytest.skip("not glibc: mallopt unavailable")
    assert int(before) > 10 * 12 * 1024 * 0.9  # 12,288 pages faulted in per round
    assert int(after) < int(before) / 100


def test_a_built_generator_with_peft_config_is_refused(tiny_dir, tmp_path):
    """The generator holds the model from before LoRA wrapping: it would sample from a model the
    trainer does not train (and fail at the first weight sync), so the pair is refused."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import HFGenerator
    from grpo.rollout.multiturn import MultiTurnGenerator
    from grpo.rollout.tools import python_tool

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    for gen in (HFGenerator(model, tok), MultiTurnGenerator(HFGenerator(model, tok), tools=[python_tool()])):
        with pytest.raises(ValueError, match=r"generator= holds a model .*peft_config"):
            GRPOTrainer(model, [Checksum()], rows(4), cfg(tmp_path), tokenizer=tok, generator=gen,
                        peft_config=lora)

