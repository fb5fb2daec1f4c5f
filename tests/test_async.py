"""Asynchronous rollouts: a real generator process with its own weights, the staleness bound,
the decoupled-PPO correction, failures that raise instead of hanging, clean shutdown."""

import math
import os
import signal
import time

import psutil
import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.loss import policy_loss
from grpo.rollout import ProcessGenerator, SamplingConfig
from grpo.source import RolloutSource
from grpo.tracking import read_jsonl

from conftest import Checksum


def rows(n):
    return [{"prompt": f"Say {i}"} for i in range(n)]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), num_generations=4, prompts_per_step=2, max_steps=4,
                max_completion_length=8, learning_rate=1e-2, beta=0.0, progress_bar=False,
                save_final_model=False, seed=0, async_staleness=1)
    return GRPOConfig(**{**base, **kw})


def test_async_run_respects_the_staleness_bound_and_leaves_no_process(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path, max_steps=5, log_completions=8))
    assert not isinstance(trainer.source, RolloutSource)
    pid = trainer.source.generator.pid
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trainer.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert all(m["async/staleness_max"] <= 1 for m in metrics)
    # checked from the logged versions too: the step logged as s (1-based) trained on versions s-1-k..s-1
    lags = [rec["step"] - 1 - rec["policy_version"] for rec in read_jsonl(tmp_path / "run" / "completions.jsonl")]
    assert len(lags) == 5 * 8 and set(lags) <= {0, 1}
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_rollouts_carry_the_version_that_sampled_them(tiny_dir, tmp_path):
    """Step 1 is sampled while step 0 trains: with the learner held back, it gets version 0
    (staleness 1); after the push of version 1, step 2 cannot start before version 1 arrives."""
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path))
    source = trainer.source
    first = source.collect(0).result()
    assert {r.rollout.policy_version for r in first} == {0}
    deadline = time.monotonic() + 120
    while source.pending < 1 and time.monotonic() < deadline:  # step 1 made on version 0
        time.sleep(0.05)
    second = source.collect(1).result()
    assert {r.rollout.policy_version for r in second} == {0}
    assert second.metrics["async/staleness_max"] == 1.0
    time.sleep(0.5)
    assert source.pending == 0  # step 2 waits for version >= 1
    source.push_weights(trainer.model, 1)
    third = source.collect(2).result()
    assert {r.rollout.policy_version for r in third} == {1}
    trainer.close()


def test_decoupled_correction_by_hand():
    """AReaL's decoupled objective: clip against the proximal policy (old_logp), weight by
    min(pi_prox / pi_behav, C) from the sampler's log-probs."""
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    prox = torch.tensor([[-1.0, -1.0]])
    behav = torch.tensor([[-1.5, -0.2]])  # w = [e^0.5, e^-0.8]
    out = policy_loss(logp, prox, torch.tensor([1.0]), torch.ones(1, 2), rollout_logp=behav, is_cap=2.0)
    w = [math.exp(0.5), math.exp(-0.8)]
    assert out.loss.item() == pytest.approx(-(w[0] + w[1]) / 2, rel=1e-6)
    capped = policy_loss(logp, prox, torch.tensor([1.0]), torch.ones(1, 2), rollout_logp=behav, is_cap=1.2)
    assert capped.loss.item() == pytest.approx(-(1.2 + w[1]) / 2, rel=1e-6)


def test_a_dead_generator_is_an_error_not_a_hang(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    gen = ProcessGenerator(model, tok, timeout=60)
    assert len(gen.generate(["Say 1"], 2, SamplingConfig(max_tokens=4, seed=0))) == 2
    os.kill(gen.pid, signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(RuntimeError, match=r"died \(exit code -9\)"):
        gen.generate(["Say 1"], 2, SamplingConfig(max_tokens=4, seed=0))


def test_a_stalled_generator_times_out_and_is_stopped(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    gen = ProcessGenerator(model, tok, timeout=3)
    assert gen.generate(["Say 1"], 1, SamplingConfig(max_tokens=2, seed=0))
    pid = gen.pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="stalled"):
        gen.generate(["Say 1"], 1, SamplingConfig(max_tokens=2, seed=0))
    assert time.monotonic() - t0 < 30
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_weights_pushed_reach_the_generator(tiny_dir):
    """After a push the child samples from the new weights: greedy output follows them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    gen = ProcessGenerator(model, tok)
    greedy = SamplingConfig(temperature=0, max_tokens=4)
    try:
        seven = tok.convert_tokens_to_ids("7")
        with torch.no_grad():
            model.lm_head.weight.zero_()
            model.lm_head.weight[seven] = 1.0
            model.model.norm.weight.fill_(1.0)
            for p in model.model.layers.parameters():
                p.zero_()
            model.model.embed_tokens.weight.fill_(1.0)
        gen.sync_weights(model, version=3)
        out = gen.generate(["Say 1"], 1, greedy)
        assert out[0].completion_ids == [seven] * 4 and out[0].policy_version == 3
    finally:
        gen.close()


def test_async_settings_are_checked(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match=r"async\.staleness=1 .*rollout\.backend='hf'"):
        cfg(tmp_path, rollout={"backend": "vllm"})


def test_async_run_resumes_from_a_checkpoint(tiny_dir, tmp_path):
    """Checkpoints save the data position the learner consumed (prefetched steps are sampled
    again); a resumed async run continues from there. Not bit-identical (module docstring)."""
    first = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path, max_steps=2, save_steps=2))
    first.train()
    consumed = first.source.state_dict()
    first.close()
    second = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path, max_steps=4, save_steps=2,
                                                                     resume_from="latest"))
    assert second.step == 2 and second.source.state_dict() == consumed
    second.train()
    second.close()
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["async/staleness_max"] <= 1 for m in metrics)
