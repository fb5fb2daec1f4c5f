"""One scored record per completion, joined to the learner's batch once, by key.

End to end (real tiny model, real generation, rewards, frozen log-probs and minibatches): the
completions handed to the learner shuffled, or copied with ``dataclasses.replace`` (a new
object, so an identity join would lose them), train to bit-identical weights. By hand: the join
puts each advantage on its own row, in step order, and refuses a missing or repeated key.
"""

import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo import GRPOConfig, GRPOTrainer
from grpo.batch import collate_rollouts, join_scores, rollout_key
from grpo.rewards import Reward, RewardBreakdown, ScoreResult
from grpo.rollout import Rollout
from grpo.source import Collected, ScoredRollout, ScoredStep

from conftest import Checksum


class ConstantOnFlat(Reward):
    """The same reward for every completion of a row marked ``flat`` (a group without signal,
    which dynamic sampling drops), the checksum elsewhere."""

    def score(self, completion, **example):
        return 1.0 if example["flat"] else Checksum().score(completion)


class Reordered:
    """A rollout source that hands the learner its inner source's step edited: the collected
    completions and the scored records each shuffled and/or copied (``dataclasses.replace``);
    with ``every_sampled``, the learner also gets the completions that are not trained."""

    def __init__(self, inner, *, shuffle: bool, copy: bool, every_sampled: bool = False):
        self.inner, self.shuffle, self.copy = inner, shuffle, copy
        self.every_sampled = every_sampled

    def _edit(self, items, rng, copy_one):
        items = rng.sample(items, len(items)) if self.shuffle else list(items)
        return [copy_one(x) for x in items] if self.copy else items

    def collect(self, step):
        collected = self.inner.collect(step)
        rng = random.Random(step)
        rollouts = collected.rollouts
        if self.every_sampled:
            rollouts = [r.rollout for r in collected.result()]
        rollouts = self._edit(rollouts, rng, replace)

        def finish():
            scored = collected.result()
            records = self._edit(scored.records, rng,
                                 lambda r: replace(r, rollout=replace(r.rollout)))
            return ScoredStep(records, scored.metrics)
        return Collected(rollouts, finish)

    def state_dict(self):
        return self.inner.state_dict()

    def close(self):
        self.inner.close()


def config(tmp_path, name, **rollout):
    # beta > 0: reference log-probs before the join; 2 passes x 2 minibatches: old-policy
    # log-probs and minibatches by step_index; micro-batches of 3: rows of unequal lengths
    return GRPOConfig(
        output_dir=str(tmp_path / name), seed=0, max_steps=2,
        rollout={"num_generations": 4, "prompts_per_step": 2, **rollout},
        sampling={"max_tokens": 8}, loss={"beta": 0.05},
        optim={"learning_rate": 1e-2, "num_iterations": 2, "minibatch_size": 4},
        forward={"micro_batch_size": 3}, log={"progress_bar": False, "completions": 0},
        checkpoint={"final_model": False})


def trained(tiny_dir, cfg, data, reward, edit=None):
    trainer = GRPOTrainer(str(tiny_dir), [reward], data, cfg)
    if edit is not None:
        trainer.source = Reordered(trainer.source, **edit)
    metrics = trainer.train()
    trainer.close()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, metrics


EDITS = {"shuffled": dict(shuffle=True, copy=False), "copied": dict(shuffle=False, copy=True),
         "shuffled_and_copied": dict(shuffle=True, copy=True)}


@pytest.fixture(scope="module")
def plain(tiny_dir, tmp_path_factory):
    data = [{"prompt": f"Say sevens {i}"} for i in range(4)]
    cfg = config(tmp_path_factory.mktemp("plain"), "run")
    weights, _ = trained(tiny_dir, cfg, data, Checksum())
    return data, weights


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_shuffled_or_copied_completions_train_identical_weights(tiny_dir, tmp_path, plain, edit):
    data, want = plain
    got, metrics = trained(tiny_dir, config(tmp_path, edit), data, Checksum(), EDITS[edit])
    assert metrics["train/skipped_minibatches"] == 0.0
    start = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert any(not torch.equal(want[n], p) for n, p in start.named_parameters())  # it trained
    for n in want:
        assert torch.equal(got[n], want[n]), n


def test_untrained_completions_are_left_out_by_key(tiny_dir, tmp_path):
    """DAPO dynamic sampling drops groups without reward spread: handed every sampled completion,
    shuffled and copied, the learner trains on exactly the kept ones."""
    data = [{"prompt": f"Say sevens {i}", "flat": i in (0, 2, 5)} for i in range(8)]
    common = dict(dynamic_sampling=True, dynamic_sampling_max_rounds=2)
    want, m = trained(tiny_dir, config(tmp_path, "a", **common), data, ConstantOnFlat())
    assert m["dynamic/groups_sampled"] > m["dynamic/groups_kept"] > 0  # some completions untrained
    got, _ = trained(tiny_dir, config(tmp_path, "b", **common), data, ConstantOnFlat(),
                     dict(shuffle=True, copy=True, every_sampled=True))
    for n in want:
        assert torch.equal(got[n], want[n]), n


# ------------------------------------------------------------------------------ the join by hand
def rollout(group, sample, n_tokens):
    ids = list(range(3, 3 + n_tokens))
    return Rollout([1, 2], ids, [-0.5] * n_tokens, "x", "stop", prompt_index=0,
                   sample_index=sample, group_id=group)


def record(r, advantage, step_index):
    scores = RewardBreakdown([ScoreResult(0.0)], {}, {})
    return ScoredRollout(r, "prompt", scores, advantage, step_index)


def step():
    """Two groups of two; group 5 untrained (dropped), group 9's completions trained at step
    positions 0 and 1."""
    rs = [rollout(9, 1, 3), rollout(5, 0, 1), rollout(9, 0, 2), rollout(5, 1, 4)]
    records = [record(rs[2], 1.5, 0), record(rs[1], None, None), record(rs[3], None, None),
               record(rs[0], -1.5, 1)]
    return rs, records


def test_join_puts_each_advantage_on_its_own_row_in_step_order():
    rs, records = step()
    batch = collate_rollouts(rs, None, pad_id=0)
    assert batch.keys() == [(9, 1), (5, 0), (9, 0), (5, 1)] == [rollout_key(r) for r in rs]
    out = join_scores(batch, random.Random(0).sample(records, len(records)))
    assert out.keys() == [(9, 0), (9, 1)]  # untrained rows left out, step order
    assert out.advantages.tolist() == [1.5, -1.5] and out.step_index.tolist() == [0, 1]
    assert out.completion_mask.sum(1).tolist() == [2, 3]  # the rows of rs[2] and rs[0]
    scored = ScoredStep(records)
    assert [r.key for r in scored.trained] == [(9, 0), (9, 1)]
    assert scored.advantages.tolist() == [1.5, -1.5]
    assert len(scored.breakdown.total) == 4


def test_join_refuses_missing_and_repeated_keys():
    rs, records = step()
    batch = collate_rollouts(rs, None, pad_id=0)
    missing = r"1 batch row\(s\) have no scored record, keys .*\(5, 1\)"
    with pytest.raises(ValueError, match=missing):  # a row without its record
        join_scores(batch, records[:2] + records[3:])
    no_row = r"trained completion \(group, sample\) = \(9, 1\) has no row"
    with pytest.raises(ValueError, match=no_row):  # a trained record without its row
        join_scores(collate_rollouts(rs[1:], None, pad_id=0), records)
    twice = r"two scored records have the key \(group, sample\) = \(9, 0\)"
    with pytest.raises(ValueError, match=twice):
        join_scores(batch, records + [record(rs[2], 0.5, 2)])
    same_rows = r"batch rows 0 and 4 have the same key \(group, sample\) = \(9, 1\)"
    with pytest.raises(ValueError, match=same_rows):
        join_scores(collate_rollouts(rs + [rs[0]], None, pad_id=0), records)
