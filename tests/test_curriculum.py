"""The online difficulty curriculum (grpo.curriculum): pass-rate bookkeeping, retirement,
weighting, determinism and exact resume; in the trainer, retired prompts are never drawn again,
its metrics are logged, a resumed run matches an uninterrupted one, and 'off' is the plain
sampler."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.curriculum import CurriculumWarning, PassRateCurriculum
from grpo.data import PromptSampler
from grpo.rewards import Reward
from grpo.tracking import read_jsonl


# ---------------------------------------------------------------------------- unit
def test_pass_rates_count_every_scored_completion_and_skip_unscorable():
    c = PassRateCurriculum(4, retire_at=0.9, min_samples=4)
    c.observe([0, 0, 1, 1, 1], [1.0, 0.0, 0.5, 2.0, math.nan])  # 2.0 clips to 1, NaN is no trial
    assert c.trials.tolist() == [2, 2, 0, 0]
    assert c.successes.tolist() == [1.0, 1.5, 0.0, 0.0]
    # rates 1/2 and 1.5/2 over the 2 seen prompts: (0.5 + 0.75) / 2
    assert c.metrics()["curriculum/mean_pass_rate"] == pytest.approx(0.625)
    assert c.metrics()["curriculum/retired_frac"] == 0.0


def test_retired_at_the_threshold_only_after_min_samples():
    c = PassRateCurriculum(3, retire_at=0.9, min_samples=4)
    c.observe([0, 0, 0], [1.0, 1.0, 1.0])  # 3/3 but only 3 trials
    assert not c.retired.any()
    c.observe([0], [1.0])  # 4/4
    assert c.retired.tolist() == [True, False, False]
    c.observe([1] * 10, [1.0] * 9 + [0.0])  # exactly 0.9 retires (>=)
    c.observe([2] * 10, [1.0] * 8 + [0.0] * 2)  # 0.8 does not
    assert c.retired.tolist() == [True, True, False]
    assert c.metrics()["curriculum/retired_frac"] == pytest.approx(2 / 3)
    for _ in range(20):  # the one active prompt is drawn every time
        assert c.take(1) == [2]
        c.observe([], [])


def test_variance_weighting_by_hand():
    c = PassRateCurriculum(3, floor=0.05)
    c.observe([0] * 2 + [1] * 2, [1.0, 1.0, 0.0, 1.0])
    # p = (s + 1) / (n + 2): prompt 0: 3/4, prompt 1: 2/4, prompt 2 (unseen): 1/2
    # w = p (1 - p) + 0.05: 3/16 + 0.05 = 0.2375, 0.25 + 0.05 = 0.30, 0.30
    np.testing.assert_allclose(c.weights(), [0.2375, 0.30, 0.30])
    assert PassRateCurriculum(3, weighting="uniform").weights().tolist() == [1.0, 1.0, 1.0]


def test_draw_frequencies_follow_the_weights():
    c = PassRateCurriculum(2, floor=0.0, min_samples=10**6)
    c.observe([0] * 100, [1.0] * 100)  # p0 = 101/102: weight ~0.0097; p1 = 1/2: 0.25
    counts = np.zeros(2)
    for _ in range(2000):
        counts[c.take(1)] += 1
        c.pending[:] = False
    w = c.weights()
    assert counts[0] / counts.sum() == pytest.approx(w[0] / w.sum(), abs=0.01)


def test_take_is_distinct_within_a_step_and_deterministic_by_seed():
    a, b, other = (PassRateCurriculum(10, seed=s) for s in (3, 3, 4))
    seq_a = [a.take(4) + a.take(4) for _ in range(5) if a.observe([], []) is None]
    seq_b = [b.take(4) + b.take(4) for _ in range(5) if b.observe([], []) is None]
    seq_o = [other.take(4) + other.take(4) for _ in range(5) if other.observe([], []) is None]
    assert seq_a == seq_b and seq_a != seq_o
    assert all(len(set(s)) == 8 for s in seq_a)  # two rounds of one step: no prompt twice


def test_state_round_trip_continues_the_same_draws():
    a = PassRateCurriculum(20, seed=1, min_samples=2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = a.take(5)
        a.observe(np.repeat(idx, 2), rng.integers(0, 2, 10).astype(float))
    state = json.loads(json.dumps(a.state_dict()))  # what the checkpoint's JSON holds
    b = PassRateCurriculum(20, seed=1, min_samples=2)
    b.load_state_dict(state)
    for _ in range(4):
        idx = a.take(5)
        assert b.take(5) == idx
        acc = rng.integers(0, 2, 10).astype(float)
        a.observe(np.repeat(idx, 2), acc)
        b.observe(np.repeat(idx, 2), acc)
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        PassRateCurriculum(20, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="curriculum='pass_rate'"):
        PassRateCurriculum(5).load_state_dict(PromptSampler(5).state_dict())


def test_every_prompt_retired_brings_back_the_hardest_loudly():
    c = PassRateCurriculum(4, min_samples=1)
    c.observe([0, 1, 2, 3] * 10, [1.0] * 40)
    c.observe([2, 3], [0.0, 0.0])  # prompts 2 and 3: 10/11 = 0.909, still retired but hardest
    assert c.retired.all()
    with pytest.warns(CurriculumWarning, match="4 of 4 prompts are retired"):
        assert sorted(c.take(2)) == [2, 3]
    assert c.metrics()["curriculum/unretired"] == 2.0


# ---------------------------------------------------------------------------- trainer
class Solved(Reward):
    """Accuracy that marks rows: 1 on an ``easy`` row, else 1 for a seventh of the completions (by
    a checksum of the text: a die the tiny model throws)."""

    def score(self, completion, **example):
        return 1.0 if example.get("easy") else float(sum(map(ord, completion)) % 7 == 0)


def rows(n):
    return [{"prompt": [{"role": "user", "content": f"Q {i}"}], "easy": i % 2 == 0} for i in range(n)]


def cfg(tmp_path, **kw):
    rollout = {"num_generations": 4, "prompts_per_step": 2, **kw.pop("rollout", {})}
    base = dict(output_dir=str(tmp_path / "run"), max_steps=4, seed=0, rollout=rollout,
                sampling={"max_tokens": 6}, optim={"learning_rate": 1e-3},
                forward={"micro_batch_size": 8},
                log={"progress_bar": False, "completions": 16},
                checkpoint={"final_model": False})
    return GRPOConfig(**{**base, **kw})


CURRICULUM = {"curriculum": "pass_rate", "curriculum_min_samples": 4}


def drawn(tmp_path):
    """The prompts of each logged step, from the completions log."""
    steps = {}
    for line in read_jsonl(Path(tmp_path) / "run" / "completions.jsonl"):
        steps.setdefault(line["step"], set()).add(line["prompt"][0]["content"])
    return steps


class Bonus(Reward):
    """A constant second reward: the weighted total is no pass rate (the curriculum must read
    the accuracy component, not the total)."""

    def score(self, completion, **example):
        return 0.5


def test_trainer_never_draws_a_retired_prompt_and_logs_the_metrics(tiny_dir, tmp_path):
    # 4 of 8 prompts per step: once the 4 easy ones are retired, every step draws the 4 hard ones
    rollout = {**CURRICULUM, "curriculum_weighting": "uniform", "prompts_per_step": 4}
    t = GRPOTrainer(str(tiny_dir), [Solved(), Bonus()], rows(8), cfg(tmp_path, rollout=rollout, max_steps=6),
                    accuracy_reward="solved")
    t.train()
    cur = t.source.curriculum
    assert cur.unretired == 0  # no prompt was brought back: retirement is for good
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all("curriculum/retired_frac" in m and "curriculum/mean_pass_rate" in m for m in metrics)
    assert metrics[-1]["curriculum/retired_frac"] == pytest.approx(cur.retired.mean())
    # the counts are the logged accuracy of every completion (all P x G are logged), by prompt
    log = read_jsonl(tmp_path / "run" / "completions.jsonl")
    successes, trials = np.zeros(8), np.zeros(8)
    for line in log:
        i = int(line["prompt"][0]["content"].split()[1])
        successes[i] += line["rewards"]["solved"]["value"]
        trials[i] += 1
    np.testing.assert_array_equal(cur.successes, successes)
    np.testing.assert_array_equal(cur.trials, trials)
    # an easy prompt (4/4 in its first group, min_samples 4) is retired after its first step
    retired_after = {}
    for step, prompts in sorted(drawn(tmp_path).items()):
        for q in prompts:
            assert q not in retired_after, f"{q} drawn at step {step}, retired after {retired_after[q]}"
        retired_after.update({q: step for q in prompts if int(q.split()[1]) % 2 == 0})
    assert len(retired_after) == 4  # every easy prompt was drawn, each once
    assert all(cur.retired[int(q.split()[1])] for q in retired_after)


def test_resumed_curriculum_run_draws_the_same_prompts_and_ends_bit_identical(tiny_dir, tmp_path):
    common = dict(rollout=CURRICULUM, max_steps=4)
    full = GRPOTrainer(str(tiny_dir), [Solved()], rows(8), cfg(tmp_path / "full", **common),
                       accuracy_reward="solved")
    full.train()
    part = GRPOTrainer(str(tiny_dir), [Solved()], rows(8),
                       cfg(tmp_path / "part", **{**common, "max_steps": 2}, checkpoint={"steps": 2}),
                       accuracy_reward="solved")
    part.train()
    resumed = GRPOTrainer(str(tiny_dir), [Solved()], rows(8),
                          cfg(tmp_path / "part", **common, checkpoint={"steps": 2}, resume_from="latest"),
                          accuracy_reward="solved")
    assert resumed.step == 2
    resumed.train()
    assert drawn(tmp_path / "full") == drawn(tmp_path / "part")
    assert full.source.curriculum.state_dict() == resumed.source.curriculum.state_dict()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=0, msg=n)


def test_off_is_the_plain_sampler(tiny_dir, tmp_path):
    t = GRPOTrainer(str(tiny_dir), [Solved()], rows(8), cfg(tmp_path, max_steps=3), accuracy_reward="solved")
    # the plain sampler itself (its own tests: tests/test_trainer_parts.py)
    assert t.source.curriculum is None and type(t.source.sampler) is PromptSampler
    t.train()
    plain = PromptSampler(8, seed=0)
    expected = {s: {f"Q {i}" for i in plain.take(2)} for s in (1, 2, 3)}
    assert drawn(tmp_path) == expected
    assert "curriculum/retired_frac" not in read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]


def test_curriculum_refusals_name_the_setting(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="reported as accuracy"):
        GRPOTrainer(str(tiny_dir), [Solved(name="count")], rows(8), cfg(tmp_path, rollout=CURRICULUM))
    with pytest.raises(ValueError, match="prompts_per_step=2 distinct prompts .* of 1"):
        GRPOTrainer(str(tiny_dir), [Solved()], rows(1), cfg(tmp_path, rollout=CURRICULUM),
                    accuracy_reward="solved")


def test_dynamic_sampling_rounds_draw_fresh_prompts_and_all_count(tiny_dir, tmp_path):
    """DAPO's extra rounds (easy groups have no spread and are dropped) draw prompts not yet
    drawn in the step, and every round's completions count, dropped groups included."""
    rollout = {**CURRICULUM, "dynamic_sampling": True, "dynamic_sampling_max_rounds": 3}
    t = GRPOTrainer(str(tiny_dir), [Solved(), Bonus()], rows(8),
                    cfg(tmp_path, rollout=rollout, max_steps=3, log={"progress_bar": False, "completions": 99}),
                    accuracy_reward="solved")
    t.train()
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    sampled = sum(m["dynamic/groups_sampled"] for m in metrics)
    assert max(m["dynamic/rounds"] for m in metrics) > 1
    assert t.source.curriculum.trials.sum() == sampled * 4
    per_step, successes, trials = {}, np.zeros(8), np.zeros(8)
    for line in read_jsonl(tmp_path / "run" / "completions.jsonl"):
        key = (line["step"], line["prompt"][0]["content"])
        per_step[key] = per_step.get(key, 0) + 1
        i = int(key[1].split()[1])
        successes[i] += line["rewards"]["solved"]["value"]
        trials[i] += 1
    np.testing.assert_array_equal(t.source.curriculum.successes, successes)  # each by its prompt
    np.testing.assert_array_equal(t.source.curriculum.trials, trials)
    assert len(per_step) == sampled and set(per_step.values()) == {4}  # no prompt twice in a step
