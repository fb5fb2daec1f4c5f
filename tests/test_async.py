"""Asynchronous rollouts: a real generator process with its own weights, the staleness bound,
the decoupled-PPO correction, failures that raise instead of hanging, clean shutdown."""

import math
import os
import signal
import threading
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


def lags_by_step(run_dir):
    """{logged step: [its completions' lags]} from completions.jsonl: the step logged as s
    (1-based) is learner step s-1, so a completion sampled by version v lags s-1-v."""
    out = {}
    for rec in read_jsonl(run_dir / "completions.jsonl"):
        out.setdefault(rec["step"], []).append(rec["step"] - 1 - rec["policy_version"])
    return out


def test_async_run_respects_the_staleness_bound_and_leaves_no_process(tiny_dir, tmp_path):
    """The bound is reached and never passed, and the logged staleness is what trained.
    (``AsyncRolloutSource.collect`` raises on a violation, so ``staleness_max <= 1`` alone
    could never fail here: the checks that can are that the run did go off-policy, up to the
    bound, and that the metric equals the lags of the step's completions.)"""
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path, max_steps=5, log_completions=8))
    assert not isinstance(trainer.source, RolloutSource)
    pid = trainer.source.generator.pid
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trainer.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    lags = lags_by_step(tmp_path / "run")
    assert sorted(lags) == [1, 2, 3, 4, 5] and all(len(v) == 8 for v in lags.values())
    assert lags[1] == [0] * 8  # the first step is sampled by the initial weights
    # step s+1 is sampled while step s trains: asynchronous, one version behind, never two
    assert max(max(v) for v in lags.values()) == 1 and min(min(v) for v in lags.values()) == 0
    for m in metrics:
        assert m["async/staleness_max"] == max(lags[m["step"]])
        assert m["async/staleness_mean"] == pytest.approx(sum(lags[m["step"]]) / 8)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_a_step_beyond_the_bound_is_refused(tiny_dir, tmp_path):
    """The learner-side invariant, independent of the producer's gate: a queued step sampled
    by a version older than the bound allows is an error, not a silent off-policy update."""
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path))
    source = trainer.source
    stale = source.inner.collect(0).result()  # sampled by version 0
    assert {r.rollout.policy_version for r in stale.trained} == {0}
    source._thread = threading.Thread(target=lambda: None)  # no producer: the queue is ours
    source._queue.append((1, stale, source.inner.state_dict()))
    assert source.collect(1).result() is stale  # lag 1 = the bound: taken
    source._queue.append((2, stale, source.inner.state_dict()))
    with pytest.raises(RuntimeError, match=r"step 2 got rollouts of version 0, beyond the bound 1"):
        source.collect(2)
    source._thread = None
    trainer.close()


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
    first = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path, max_steps=2, save_steps=2,
                                                                    log_completions=8))
    first.train()
    consumed = first.source.state_dict()
    first.close()
    second = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8), cfg(tmp_path, max_steps=4, save_steps=2,
                                                                     resume_from="latest", log_completions=8))
    assert second.step == 2 and second.source.state_dict() == consumed
    second.train()
    second.close()
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    # the resumed run numbers its versions from the checkpoint's step: its first step (logged
    # as 3) is sampled by the checkpoint's weights, version 2; the logged staleness is the lags'
    lags = lags_by_step(tmp_path / "run")
    assert sorted(lags) == [1, 2, 3, 4] and all(set(v) <= {0, 1} for v in lags.values())
    assert lags[3] == [0] * 8
    for m in metrics:
        assert m["async/staleness_max"] == max(lags[m["step"]])


SCRIPT_WITHOUT_MAIN_GUARD = """
from grpo import GRPOConfig, GRPOTrainer
from grpo.rewards import Reward


class Half(Reward):
    def score(self, completion, **example):
        return 0.5


config = GRPOConfig(output_dir={out!r}, num_generations=2, prompts_per_step=2, max_steps=1,
                    max_completion_length=4, beta=0.0, progress_bar=False, save_final_model=False,
                    async_staleness=1)
GRPOTrainer({model!r}, [Half()], [{{"prompt": "Say 1"}}, {{"prompt": "Say 2"}}], config).train()
"""


def test_a_script_without_the_main_guard_gets_a_one_line_error(tiny_dir, tmp_path):
    """The generator process is spawned: it re-imports the script, which (unguarded) builds a
    trainer again. That child says so and exits; the parent raises a one-line error naming the
    guard, not multiprocessing's bare EOFError."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "train.py"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD.format(out=str(tmp_path / "run"), model=str(tiny_dir)))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: async rollouts start a generator process")
    assert 'put the training under `if __name__ == "__main__":`' in last
    assert "EOFError" not in done.stderr


def test_the_decoupled_weight_reaches_the_update_of_a_stale_step(tiny_dir, tmp_path):
    """A trainer-level check of the off-policy correction: a step trained on rollouts of the
    previous version weights its tokens by pi_prox / pi_behav, which then differs from 1
    (lr 1e-2 moves the tiny model), while the first step (sampled by the very weights it starts
    from) has weights 1 up to float rounding. Dropping the weight in the learner (rollout_logp
    None under the async correction) logs is_weight == 1 on every step and fails here."""
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8),
                          cfg(tmp_path, max_steps=4, log_completions=8, learning_rate=5e-2))
    trainer.train()
    trainer.close()
    metrics = {m["step"]: m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")}
    lags = lags_by_step(tmp_path / "run")
    assert lags[1] == [0] * 8
    first = metrics[1]
    assert abs(first["loss/is_weight_min"] - 1) < 1e-3 and abs(first["loss/is_weight_max"] - 1) < 1e-3
    stale = [s for s, v in lags.items() if min(v) == 1]  # every completion one version behind
    assert stale, "the run never went off-policy"
    for s in stale:
        m = metrics[s]
        spread = max(abs(m["loss/is_weight_min"] - 1), abs(m["loss/is_weight_max"] - 1))
        assert spread > 1e-2, (s, m["loss/is_weight_min"], m["loss/is_weight_max"])


def test_the_kl_term_is_weighted_by_the_behaviour_weight():
    """Under staleness the KL estimate is taken on the behaviour policy's tokens: it gets the
    same weight w = min(pi_prox / pi_behav, C) as the policy term (docs/math.md 2.9). With
    advantage 0 the loss is the KL term alone: 0.1 * mean(w * k3)."""
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    prox = torch.tensor([[-1.0, -1.0]])
    behav = torch.tensor([[-1.5, -0.2]])  # w = [e^0.5, e^-0.8]
    ref = torch.tensor([[-1.5, -0.5]])  # k3 = [e^-0.5 + 0.5 - 1, e^0.5 - 0.5 - 1]
    out = policy_loss(logp, prox, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=ref, beta=0.1,
                      rollout_logp=behav, is_cap=2.0)
    k3 = [math.exp(-0.5) - 0.5, math.exp(0.5) - 1.5]
    w = [math.exp(0.5), math.exp(-0.8)]
    assert out.loss.item() == pytest.approx(0.1 * (w[0] * k3[0] + w[1] * k3[1]) / 2, rel=1e-6)
    synchronous = policy_loss(logp, prox, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=ref, beta=0.1)
    assert synchronous.loss.item() == pytest.approx(0.1 * (k3[0] + k3[1]) / 2, rel=1e-6)
