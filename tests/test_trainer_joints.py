"""The joints between the trainer's layers: records joined by key, loss masks, dynamic
sampling, accumulation invariance, the advantage-estimator table. Real tiny model, real HF
generation, real rewards."""

import random
from dataclasses import replace

import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.advantages import ADVANTAGE_ESTIMATORS, compute_group_advantages, register_advantage_estimator
from grpo.batch import collate_rollouts, join_scores
from grpo.rewards import Reward

from conftest import Checksum


class ConstantOnFlat(Reward):
    """The same reward for every completion of a row marked ``flat`` (a group without signal),
    the checksum elsewhere."""

    def score(self, completion, **example):
        return 1.0 if example["flat"] else Checksum().score(completion)


class Wrapped:
    """A generator that post-processes what a real HFGenerator returns."""

    def __init__(self, inner, edit):
        self.inner, self.edit = inner, edit

    def generate(self, prompts, n, sampling):
        return self.edit(self.inner.generate(prompts, n, sampling))

    def sync_weights(self, model):
        self.inner.sync_weights(model)

    def close(self):
        self.inner.close()


def rows(n, flat=()):
    return [{"prompt": f"Say sevens {i}", "flat": i in flat} for i in range(n)]


def cfg(tmp_path, name="run", **kw):
    base = dict(output_dir=str(tmp_path / name), num_generations=4, prompts_per_step=2, max_steps=1,
                max_completion_length=8, learning_rate=1e-2, beta=0.0, micro_batch_size=8,
                progress_bar=False, save_final_model=False, seed=0)
    return GRPOConfig(**{**base, **kw})


def trained_weights(tiny_dir, config, data, rewards=None, edit=None):
    trainer = GRPOTrainer(str(tiny_dir), rewards or [Checksum()], data, config)
    if edit is not None:
        trainer.generator = trainer.source.generator = Wrapped(trainer.generator, edit)
    trainer.train()
    trainer.close()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def assert_same(a, b, atol=1e-6):
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=1e-5, msg=n)


def max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


# ------------------------------------------------------------------------------ joins by key
def test_rewards_and_advantages_follow_their_completion_when_the_order_is_shuffled(tiny_dir, tmp_path):
    """A generator that returns its records in a random order changes nothing: rewards and
    advantages are joined by (group, sample), not by position."""
    config = cfg(tmp_path, prompts_per_step=3)
    data = rows(6)
    plain = GRPOTrainer(str(tiny_dir), [Checksum()], data, config)
    shuffled = GRPOTrainer(str(tiny_dir), [Checksum()], data, config.model_copy(update={"output_dir": str(tmp_path / "s")}))
    shuffled.source.generator = Wrapped(shuffled.generator, lambda rs: random.Random(1).sample(rs, len(rs)))
    a, b = plain.source.collect(0).result(), shuffled.source.collect(0).result()
    assert [r.key for r in b] != [r.key for r in a]
    adv_a = {r.key: (r.rollout.text, r.reward, r.advantage, r.step_index) for r in a}
    adv_b = {r.key: (r.rollout.text, r.reward, r.advantage, r.step_index) for r in b}
    assert adv_a == adv_b
    assert [r.key for r in b.trained] == sorted(r.key for r in b)  # step order: (group, sample)
    # and by hand: each completion's advantage is its reward against its own group
    for r in b:
        group = sorted((x for x in b if x.rollout.group_id == r.rollout.group_id),
                       key=lambda x: x.key)
        rewards = [Checksum().score(x.rollout.text) for x in group]
        want = compute_group_advantages(rewards, 4).advantages
        assert r.reward == pytest.approx(Checksum().score(r.rollout.text))
        assert r.advantage == pytest.approx(want[r.rollout.sample_index].item(), abs=1e-6)
    plain.close(), shuffled.close()


def test_trained_weights_do_not_depend_on_the_generator_order(tiny_dir, tmp_path):
    data = rows(4)
    a = trained_weights(tiny_dir, cfg(tmp_path, "a"), data)
    b = trained_weights(tiny_dir, cfg(tmp_path, "b"), data, edit=lambda rs: list(reversed(rs)))
    assert_same(a, b, atol=1e-5)


def test_incomplete_groups_are_refused(tiny_dir, tmp_path):
    with pytest.raises(RuntimeError, match="complete groups"):
        trained_weights(tiny_dir, cfg(tmp_path), rows(4), edit=lambda rs: rs[:-1] + rs[:1])


# ------------------------------------------------------------------------------ loss mask
def _mask_tail(token):
    """Mask the last two tokens of every completion out of the loss and overwrite their ids
    (text unchanged, so rewards are unchanged)."""
    def edit(rs):
        out = []
        for r in rs:
            n = len(r.completion_ids)
            k = max(n - 2, 0)
            out.append(replace(r, completion_ids=r.completion_ids[:k] + [token] * (n - k),
                               loss_mask=[1] * k + [0] * (n - k)))
        return out
    return edit


def test_loss_mask_removes_exactly_the_masked_tokens(tiny_dir, tmp_path):
    """Tokens with loss mask 0 contribute nothing: what they are does not change the update
    (the tail is causal, so earlier tokens do not see it), while the unmasked run differs."""
    data = rows(4)
    config = dict(aggregation="token_mean", beta=0.05)
    a = trained_weights(tiny_dir, cfg(tmp_path, "a", **config), data, edit=_mask_tail(11))
    b = trained_weights(tiny_dir, cfg(tmp_path, "b", **config), data, edit=_mask_tail(23))
    assert_same(a, b, atol=1e-7)
    unmasked = trained_weights(tiny_dir, cfg(tmp_path, "c", **config), data,
                               edit=lambda rs: [replace(r, loss_mask=None) for r in _mask_tail(11)(rs)])
    assert max_diff(a, unmasked) > 1e-4


def test_collate_keeps_loss_mask_group_and_version():
    from grpo.rollout import Rollout

    def r(ids, mask, g, v):
        return Rollout([1, 2], ids, [0.0] * len(ids), "x", "stop", 0, 0, loss_mask=mask, group_id=g,
                       policy_version=v)
    b = collate_rollouts([r([5, 6, 7], [1, 0, 1], 7, 3), r([8], None, 2, 3)], None, pad_id=0)
    assert b.loss_mask.tolist() == [[True, False, True], [True, False, False]]
    assert b.completion_mask.tolist() == [[True, True, True], [True, False, False]]
    assert b.group_ids.tolist() == [7, 2] and b.policy_versions.tolist() == [3, 3]
    sub = b.select(torch.tensor([1]))  # every field moves with its row and is trimmed
    assert sub.loss_mask.tolist() == [[True]] and sub.group_ids.tolist() == [2]
    with pytest.raises(ValueError, match="loss_mask"):
        r([5, 6], [1], 0, 0)


# ------------------------------------------------------------------------------ accumulation
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_sum_max_len"])
def test_micro_batch_size_does_not_change_the_update(tiny_dir, tmp_path, aggregation):
    """The gradient of every optimizer step is the same with micro-batches of 4, 1 and 3 (+1):
    the aggregation's denominator covers the whole minibatch, not the micro-batch; and the same
    padded as packed (``padding_free``). (Gradients,
    not weights: Adam's first step is ~ lr * sign(g), which turns float noise in a zero
    gradient into a full step.)"""
    from grpo.learner import Learner

    config = cfg(tmp_path, aggregation=aggregation, beta=0.05, num_iterations=2, minibatch_size=4)
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), config)
    scored = trainer.source.collect(0).result()
    batch = collate_rollouts([r.rollout for r in scored], None, trainer.tokenizer.pad_token_id)
    batch = join_scores(trainer.learner.frozen_logprobs(batch), scored)
    assert scored.advantages.abs().sum() > 0

    def grads(micro, padding_free=True):
        forward = config.forward.model_copy(update={"micro_batch_size": micro,
                                                    "padding_free": padding_free})
        learner = Learner(trainer.model, trainer.ref_model, trainer.optimizer, trainer.scheduler,
                          trainer.parallel, trainer.accelerator.autocast, loss=config.loss,
                          optim=config.optim, forward=forward,
                          temperature=config.sampling.temperature,
                          max_tokens=config.sampling.max_tokens,
                          minibatches_per_step=config.derived().minibatches_per_step)
        seen = []
        learner.optimizer.step = lambda: seen.append([p.grad.clone() for p in learner.params])
        learner.update(batch)
        return seen

    whole, single, ragged, padded = grads(4), grads(1), grads(3), grads(3, padding_free=False)
    assert len(whole) == 4  # 2 passes x 2 minibatches
    for a, b, c, d in zip(whole, single, ragged, padded):
        for x, y, z, w in zip(a, b, c, d):
            torch.testing.assert_close(y, x, atol=1e-7, rtol=1e-4)
            torch.testing.assert_close(z, x, atol=1e-7, rtol=1e-4)
            torch.testing.assert_close(w, x, atol=1e-7, rtol=1e-4)
    trainer.close()


def test_per_token_advantages_reach_the_loss(tiny_dir, tmp_path):
    """[B, T] advantages equal to the broadcast [B] ones give the same update; scaling the
    second half of every completion's advantages changes it."""
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path))
    scored = trainer.source.collect(0).result()
    pad = trainer.tokenizer.pad_token_id
    batch = collate_rollouts([r.rollout for r in scored.trained], None, pad)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    def update(adv):
        with torch.no_grad():
            for n, p in trainer.model.named_parameters():
                p.copy_(start[n])
        trainer.optimizer.state.clear()
        trainer.learner.update(batch.with_advantages(adv))
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    per_seq = update(scored.advantages)
    per_tok = scored.advantages[:, None].expand(len(batch), batch.width).clone()
    assert_same(per_seq, update(per_tok), atol=1e-7)
    per_tok[:, batch.width // 2:] *= 3
    assert max_diff(per_seq, update(per_tok)) > 1e-5
    trainer.close()


# ------------------------------------------------------------------------------ dynamic sampling
def test_dynamic_sampling_trains_only_groups_with_signal(tiny_dir, tmp_path):
    data = rows(8, flat={0, 2, 3, 5, 6})  # 3 of 8 prompts can carry signal
    trainer = GRPOTrainer(str(tiny_dir), [ConstantOnFlat()], data,
                          cfg(tmp_path, dynamic_sampling=True, dynamic_sampling_max_rounds=3, max_steps=2))
    for step in range(2):
        scored = trainer.source.collect(step).result()
        m = scored.metrics
        assert 1 <= m["dynamic/rounds"] <= 3
        assert m["dynamic/groups_sampled"] == 2 * m["dynamic/rounds"] == m["dynamic/prompts_consumed"]
        groups = {}
        for r in scored:
            groups.setdefault(r.rollout.group_id, []).append(r.reward)
        trained = {r.rollout.group_id for r in scored.trained}
        assert trained == {r.rollout.group_id for r in scored if r.advantage is not None}
        assert len(trained) == m["dynamic/groups_kept"] <= 2
        for g in trained:  # never a group without spread
            assert max(groups[g]) - min(groups[g]) > 1e-6
        for g, vals in groups.items():
            if max(vals) - min(vals) > 1e-6 and len(trained) < 2:
                assert g in trained  # with room left, no group with signal is thrown away
        assert m["dynamic/cap_hit"] == float(len(trained) < 2)
        assert m["dynamic/filtered_frac"] == pytest.approx(1 - len(trained) / m["dynamic/groups_sampled"])
    trainer.close()


def test_dynamic_sampling_stops_at_its_cap_and_skips_an_empty_update(tiny_dir, tmp_path):
    data = rows(4, flat={0, 1, 2, 3})  # no prompt ever has signal
    trainer = GRPOTrainer(str(tiny_dir), [ConstantOnFlat()], data,
                          cfg(tmp_path, dynamic_sampling=True, dynamic_sampling_max_rounds=3))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train()
    assert metrics["dynamic/rounds"] == 3 and metrics["dynamic/groups_kept"] == 0
    assert metrics["dynamic/cap_hit"] == 1.0 and metrics["train/skipped_minibatches"] == 1.0
    assert max_diff(before, {n: p.detach() for n, p in trainer.model.named_parameters()}) == 0.0
    trainer.close()


def test_dynamic_sampling_resumes_bit_identically(tiny_dir, tmp_path):
    data = rows(8, flat={0, 3, 5})
    common = dict(dynamic_sampling=True, dynamic_sampling_max_rounds=3, max_steps=3)
    full = trained_weights(tiny_dir, cfg(tmp_path, "full", **common), data, [ConstantOnFlat()])
    trained_weights(tiny_dir, cfg(tmp_path, "part", save_steps=1, **{**common, "max_steps": 1}), data,
                    [ConstantOnFlat()])
    resumed = trained_weights(tiny_dir, cfg(tmp_path, "part", resume_from="latest", **common), data,
                              [ConstantOnFlat()])
    assert_same(full, resumed, atol=0)


class Correct(Reward):
    """Accuracy-like: 0 for every completion of a row marked ``wrong`` (an all-wrong group),
    the checksum elsewhere (so those groups carry signal)."""

    name = "correct"

    def score(self, completion, **example):
        return 0.0 if example["wrong"] else Checksum().score(completion)


class Formatted(Reward):
    """Format-like: the checksum, so that every group's formats differ."""

    name = "format_reward"

    def score(self, completion, **example):
        return Checksum().score(completion[::-1] + "x")


def test_dynamic_sampling_judges_groups_on_the_accuracy_component_by_default(tiny_dir, tmp_path):
    """DAPO eq. 11 filters on correctness: an all-wrong group whose format rewards differ has a
    spread of the total but no signal, and is dropped; ``dynamic_sampling_metric='total'``
    keeps it. Both prompts are sampled in the one round (prompts_per_step = dataset size)."""
    data = [{"prompt": f"Say sevens {i}", "wrong": i == 0} for i in range(2)]

    def trained_prompts(metric, name):
        config = cfg(tmp_path, name, dynamic_sampling=True, dynamic_sampling_max_rounds=1)
        config = config.model_copy(update={"rollout": config.rollout.model_copy(
            update={"dynamic_sampling_metric": metric})})
        trainer = GRPOTrainer(str(tiny_dir), [Correct(), Formatted()], data, config)
        scored = trainer.source.collect(0).result()
        trainer.close()
        totals = {}
        for r in scored:
            totals.setdefault(r.prompt, []).append(r.reward)
        wrong = totals["Say sevens 0"]
        assert max(wrong) - min(wrong) > 1e-6  # the all-wrong group does have a total spread
        return trainer.source.filter_name, {r.prompt for r in scored.trained}, scored.metrics

    name, kept, m = trained_prompts(None, "default")
    assert name == "correct"
    assert kept == {"Say sevens 1"}
    assert m["dynamic/groups_kept"] == 1 and m["dynamic/dropped_total_spread"] == 1
    name, kept, m = trained_prompts("total", "total")
    assert name is None
    assert kept == {"Say sevens 0", "Say sevens 1"}
    assert m["dynamic/groups_kept"] == 2 and m["dynamic/dropped_total_spread"] == 0
    _, kept, _ = trained_prompts("format_reward", "format")  # a named component
    assert kept == {"Say sevens 0", "Say sevens 1"}


def test_dynamic_sampling_metric_defaults_and_refusals(tiny_dir, tmp_path):
    from grpo.source import _filter_signal, filter_component

    two = ["correct", "format_reward"]
    assert filter_component(None, two, "correct", "format_reward") == "correct"
    assert filter_component(None, ["correct"], "correct", None) is None  # one reward: the total
    assert filter_component(None, two, "format_reward", "format_reward") is None
    assert filter_component("format_reward", two, "correct", "format_reward") == "format_reward"
    # a group the component did not score (it does not apply to the row) is judged on the total
    nan = float("nan")
    table = torch.tensor([[0, 0, 0.1, 1.0], [0, 1, 0.2, 1.0],  # metric flat, total spread
                          [1, 0, 0.1, nan], [1, 1, 0.2, nan],  # metric n/a: the total decides
                          [2, 0, 0.1, nan], [2, 1, 0.1, nan]], dtype=torch.float64)
    rollout = cfg(tmp_path).rollout.model_copy(update={"num_generations": 2})
    assert _filter_signal(table, rollout).tolist() == [False, True, False]
    data = [{"prompt": "Say sevens", "wrong": False}]
    config = cfg(tmp_path)
    config = config.model_copy(update={"rollout": config.rollout.model_copy(
        update={"dynamic_sampling_metric": "acc"})})
    with pytest.raises(ValueError, match=r"dynamic_sampling_metric='acc'.*'total', 'correct', "
                                         r"'format_reward'"):
        GRPOTrainer(str(tiny_dir), [Correct(), Formatted()], data, config)
    with pytest.raises(ValueError, match="dynamic_sampling_metric"):  # no grpo 0.1 flat key
        GRPOConfig(dynamic_sampling_metric="total")


# ------------------------------------------------------------------------------ estimator table
def test_advantage_estimators_by_name():
    r = [1.0, 2.0, 3.0, 6.0]
    assert ADVANTAGE_ESTIMATORS["dr_grpo"](r, 4).advantages.tolist() == [-2.0, -1.0, 0.0, 3.0]
    # RLOO: r_i minus the mean of the other three
    assert ADVANTAGE_ESTIMATORS["rloo"](r, 4).advantages.tolist() == pytest.approx(
        [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2])
    std = torch.tensor(r).std().item()
    assert ADVANTAGE_ESTIMATORS["grpo"](r, 4).advantages.tolist() == pytest.approx(
        [(x - 3) / (std + 1e-6) for x in r], abs=1e-6)


def test_a_registered_estimator_is_selected_by_the_config(tiny_dir, tmp_path):
    calls = []

    @register_advantage_estimator("test_sign")
    def sign(rewards, group_size, *, eps=1e-6):
        calls.append(len(rewards))
        out = compute_group_advantages(rewards, group_size, scale="none")
        return replace(out, advantages=out.advantages.sign())

    try:
        trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path, advantage_estimator="test_sign"))
        scored = trainer.source.collect(0).result()
        assert calls == [8] and set(scored.advantages.tolist()) <= {-1.0, 0.0, 1.0}
        trainer.close()
    finally:
        del ADVANTAGE_ESTIMATORS["test_sign"]
    with pytest.raises(ValueError, match="dr_grpo"):
        GRPOConfig(advantage_estimator="test_sign")


def test_gradients_left_on_a_model_do_not_leak_into_the_first_step(tiny_dir, tmp_path):
    """A model object handed over with .grad set (e.g. straight from a warm-up loop) trains
    exactly like a clean one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    out = []
    for name, stale in (("clean", False), ("stale", True)):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        if stale:
            for p in model.parameters():
                p.grad = torch.randn_like(p)
        trainer = GRPOTrainer(model, [Checksum()], rows(4), cfg(tmp_path, name), tokenizer=tok)
        trainer.train()
        trainer.close()
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert_same(out[0], out[1], atol=0)
