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
    pid = trainer.source.generator.inner.pid
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


def test_async_refuses_a_generator_on_the_trained_model_and_a_sleeping_engine(tiny_dir, tmp_path):
    """What cannot sample ahead is refused by name: an HFGenerator samples from the very model
    the learner changes, and a vLLM engine cannot sleep while it samples the next step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout import HFGenerator

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match=r"async\.staleness=1 .*generator= \(HFGenerator\) samples from "
                                         r"the trained model object itself"):
        GRPOTrainer(model, [Checksum()], rows(8), cfg(tmp_path), tokenizer=tok,
                    generator=HFGenerator(model, tok))
    with pytest.raises(ValueError, match=r"async\.staleness=1 with vllm\.sleep=True"):
        cfg(tmp_path, rollout={"backend": "vllm"}, vllm={"sleep": True})


def test_async_drives_the_generator_it_is_given(tiny_dir, tmp_path):
    """generator= with weights of its own is wrapped, never replaced: the given process samples
    every training step (its pid stays the one given) and evaluation too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.async_source import AsyncGenerator

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    given = ProcessGenerator(model, tok)
    trainer = GRPOTrainer(model, [Checksum()], rows(8), cfg(tmp_path, max_steps=3, log_completions=8),
                          tokenizer=tok, generator=given, eval_dataset=rows(2))
    try:
        assert isinstance(trainer.generator, AsyncGenerator) and trainer.generator.inner is given
        assert trainer.source.generator is trainer.generator
        trainer.train()
        assert given.pid is not None  # the same child, alive to the end
        lags = lags_by_step(tmp_path / "run")
        assert max(max(v) for v in lags.values()) == 1  # it ran ahead of the learner
    finally:
        trainer.close()


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


@pytest.mark.slow
def test_async_multiturn_trains_with_its_tools(tmp_path):
    """wrap_generator= (multi-turn tool use) with async: the trainer wraps the generator process
    in the MultiTurnGenerator and runs that ahead of the learner; the trajectories it trains on
    carry tool calls and their observations (before, async silently sampled single turns)."""
    import copy

    from test_multiturn_hf import PROMPTS, python, taught_model

    from grpo.async_source import AsyncGenerator
    from grpo.rollout.multiturn import MultiTurnGenerator
    from grpo.rollout.tools import CodeBlockParser

    model, tok = taught_model()
    model = copy.deepcopy(model).train()
    data = [{"prompt": p, "answer": python(p[0]["content"])} for p in PROMPTS]

    def exact(completions, answer, **kwargs):
        return [float(f"<answer>{a}</answer>" in c[-1]["content"]) for c, a in zip(completions, answer)]

    def wrap(generator):
        return MultiTurnGenerator(generator, tools=[python], parser=CodeBlockParser(), max_turns=3,
                                  render_tools=False)

    config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=3, seed=0, **{"async": {"staleness": 1}},
                        rollout={"num_generations": 4, "prompts_per_step": 2}, sampling={"max_tokens": 60},
                        optim={"learning_rate": 1e-3}, loss={"beta": 0.0}, forward={"micro_batch_size": 8},
                        log={"progress_bar": False, "completions": 8}, checkpoint={"final_model": False})
    trainer = GRPOTrainer(model, [exact], data, config, tokenizer=tok, wrap_generator=wrap)
    try:
        gen = trainer.source.generator
        assert isinstance(gen, AsyncGenerator) and isinstance(gen.inner, MultiTurnGenerator)
        assert isinstance(gen.inner.generator, ProcessGenerator)
        trainer.train()
    finally:
        trainer.close()
    logged = read_jsonl(tmp_path / "run" / "completions.jsonl")
    assert {r["step"] for r in logged} == {1, 2, 3}
    called = [r for r in logged if r["tool_calls"] and r["tool_calls"][0]["status"] == "ok"]
    assert len(called) >= len(logged) // 2, logged  # the taught model calls its tool
    for r in called:  # the tool ran on what the model wrote (sampled: not always the prompt's)
        code = r["tool_calls"][0]["arguments"]["code"]
        assert [m["role"] for m in r["messages"]][:2] == ["assistant", "tool"]
        assert f"<python>{code}</python>" in r["messages"][0]["content"]
        assert r["messages"][1]["content"] == r["tool_calls"][0]["output"] == python(code)
    assert max(r["step"] - 1 - r["policy_version"] for r in logged) == 1  # sampled ahead
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(math.isfinite(m["loss/loss"]) for m in metrics)


def test_async_lora_trains_and_pushes_only_the_adapter(tiny_dir, tmp_path):
    """LoRA with async: the child follows the adapter, and a push copies only adapter tensors
    (the base weights never cross after the start)."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(8),
                          cfg(tmp_path, max_steps=3, log_completions=8, learning_rate=5e-2), peft_config=lora)
    try:
        child = trainer.source.generator.inner
        assert isinstance(child, ProcessGenerator)
        adapter = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert adapter and all("lora_" in n for n in adapter)
        assert child.sync_bytes == sum(p.numel() * p.element_size() for p in adapter.values())
        before = {n: p.detach().clone() for n, p in adapter.items()}
        trainer.train()
        assert any(not torch.equal(before[n], p) for n, p in adapter.items())
        # the child samples with the pushed adapter: its log-probs are the trained model's
        probe = trainer.generator.generate(["Say 1"], 2, SamplingConfig(max_tokens=4, seed=0))
        assert {r.policy_version for r in probe} == {3}
    finally:
        trainer.close()
    lags = lags_by_step(tmp_path / "run")
    assert max(max(v) for v in lags.values()) == 1
    metrics = {m["step"]: m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")}
    # step 1 is sampled by the initial adapter the child was built with: weights 1
    assert abs(metrics[1]["loss/is_weight_min"] - 1) < 1e-3 and abs(metrics[1]["loss/is_weight_max"] - 1) < 1e-3


def _scored(run_dir, rank):
    """{step: [prompts]} this rank's producer scored (dist_train.py --async)."""
    out = {}
    for rec in read_jsonl(run_dir / f"scored_rank{rank}.jsonl"):
        out.setdefault(rec["step"], []).extend(rec["prompts"])
    return out


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dp", "fsdp"])
def test_two_processes_train_asynchronously_on_disjoint_complete_groups(tiny_dir, tmp_path, layout):
    """2 gloo processes, each with its own generator process running ahead: each step's prompts
    are split between the ranks into disjoint, complete groups (G samples each), versions are
    global (both ranks push at every step, so the logged staleness is the same bound), the ranks
    end with identical weights, every reduced metric is finite. The data-parallel run is stopped
    at a checkpoint and resumed. The producers gather on a process group of their own: on the
    default group their gathers would interleave with the learner's all-reduces and hang."""
    from test_trainer import ROOT, _torchrun

    script, run = ROOT / "tests" / "dist_train.py", tmp_path / "run"
    fsdp = ["--fsdp"] if layout == "fsdp" else []
    if layout == "dp":  # two steps, a checkpoint, then resumed to four
        first = _torchrun(script, tiny_dir, run, "--async", "--max-steps", "2", "--save-steps", "2", port=29531)
        assert first.returncode == 0, first.stderr[-3000:]
        done = _torchrun(script, tiny_dir, run, "--async", "--max-steps", "4", "--save-steps", "2", "--resume",
                         port=29532)
    else:
        done = _torchrun(script, tiny_dir, run, "--async", "--max-steps", "4", *fsdp, port=29533)
    assert done.returncode == 0, done.stderr[-3000:]
    w0, w1 = torch.load(run / "weights_rank0.pt"), torch.load(run / "weights_rank1.pt")
    initial = torch.load(run / "initial.pt")
    for n in w0:
        torch.testing.assert_close(w0[n], w1[n], rtol=0, atol=0, msg=n)
    assert any(not torch.equal(w0[n], initial[n]) for n in w0)
    by_rank = [_scored(run, 0), _scored(run, 1)]
    assert sorted(by_rank[0]) == sorted(by_rank[1]) == [0, 1, 2, 3]
    for step in range(4):
        mine, theirs = (set(r[step]) for r in by_rank)
        assert mine and theirs and not mine & theirs, (step, mine, theirs)  # disjoint groups
        assert len(mine | theirs) == 4  # prompts_per_step, all sampled
        for r in by_rank:  # complete groups: G = 4 samples of each prompt, on one rank
            assert all(r[step].count(p) == 4 for p in set(r[step]))
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for m in metrics for v in m.values() if isinstance(v, float))
    assert max(m["async/staleness_max"] for m in metrics) == 1  # went off-policy, within the bound


@pytest.mark.distributed
@pytest.mark.slow
def test_a_process_that_fails_stops_the_asynchronous_run(tiny_dir, tmp_path):
    """Rank 1's generator process is killed at step 2: rank 1's producer fails, its learner
    raises naming the dead process, and torchrun stops rank 0 (which would otherwise wait in a
    collective): the launch fails promptly instead of hanging."""
    from test_trainer import ROOT, _torchrun

    t0 = time.monotonic()
    done = _torchrun(ROOT / "tests" / "dist_train.py", tiny_dir, tmp_path / "run", "--async", "--max-steps", "6",
                     "--fail-at", "2", port=29534)
    assert done.returncode != 0
    assert "the asynchronous rollout producer failed" in done.stderr
    assert "the generator process died (exit code -9)" in done.stderr
    assert time.monotonic() - t0 < 240
