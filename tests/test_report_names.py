"""Which reward is reported as accuracy and which as format rate (docs/trainer.md, "Which reward
is accuracy, and which is format"): named, or by the reward's name, never the first reward just
for being first; a warning when the accuracy reward leaves [0, 1]."""

import warnings

import pytest
from conftest import Checksum

from grpo import GRPOConfig, GRPOTrainer
from grpo.metrics import report_names
from grpo.source import filter_component


def _text(c):
    return c if isinstance(c, str) else c[-1]["content"]


def length_penalty(completions, **kwargs):
    """A length penalty, listed first as in the issue: never the accuracy."""
    return [-len(_text(c)) / 100 for c in completions]


def correctness(completions, **kwargs):
    """Accuracy-named and dense (a checksum of the text, in [0, 1])."""
    return [sum(map(ord, _text(c))) % 7 / 7 for c in completions]


def signed(completions, **kwargs):
    """A +-1 reward: reported as accuracy only when named so, and then warned about."""
    return [1.0 if sum(map(ord, _text(c))) % 2 else -1.0 for c in completions]


def rows(n):
    return [{"prompt": [{"role": "user", "content": f"Say sevens {i}"}]} for i in range(n)]


def run(tiny_dir, tmp_path, rewards, steps=1, **kw):
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=steps, seed=0,
                     rollout={"num_generations": 4, "prompts_per_step": 2}, sampling={"max_tokens": 8},
                     loss={"beta": 0.0}, log={"progress_bar": False}, checkpoint={"final_model": False},
                     **kw.pop("config", {}))
    trainer = GRPOTrainer(str(tiny_dir), rewards, rows(4), cfg, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        last = trainer.train()
    trainer.close()
    return trainer, last, [str(w.message) for w in caught]


def test_the_rule_on_names():
    assert report_names(["overlong_penalty", "math_reward", "format_reward"]) == ("math_reward", "format_reward")
    assert report_names(["length_penalty", "accuracy_reward", "think_format_reward"]) == \
        ("accuracy_reward", "think_format_reward")
    assert report_names(["code_format", "code_reward"]) == ("code_reward", "code_format")  # format wins
    assert report_names(["repetition_penalty", "checksum"]) == (None, None)  # not the first reward
    assert report_names(["checksum", "my_verifier"], format_name="checksum") == ("my_verifier", "checksum")
    # with no accuracy reward dynamic sampling and the length penalty's pass rate read the total
    assert filter_component(None, ["length_penalty", "checksum"], None, None) is None
    assert filter_component(None, ["length_penalty", "correctness"],
                            *report_names(["length_penalty", "correctness"])) == "correctness"


def test_length_penalty_first_is_not_accuracy_and_trls_think_format_is_format(tiny_dir, tmp_path):
    from trl.rewards import think_format_reward

    trainer, last, caught = run(tiny_dir, tmp_path / "a", [length_penalty, correctness, think_format_reward])
    assert (trainer.accuracy_name, trainer.format_name) == ("correctness", "think_format_reward")
    assert last["reward/length_penalty/mean"] < 0
    assert last["train/accuracy"] == last["reward/correctness/mean"]
    assert last["train/format_rate"] == last["reward/think_format_reward/mean"]
    assert trainer.filter_name == "correctness"  # dynamic sampling / length penalty's pass rate
    assert not [m for m in caught if "outside [0, 1]" in m]

    trainer, last, _ = run(tiny_dir, tmp_path / "b", [length_penalty, Checksum()])
    assert trainer.accuracy_name is None and trainer.filter_name is None
    assert "train/accuracy" not in last and "train/format_rate" not in last
    assert "reward/length_penalty/mean" in last


def test_named_accuracy_warns_once_outside_0_1(tiny_dir, tmp_path):
    trainer, last, caught = run(tiny_dir, tmp_path, [length_penalty, signed], steps=2,
                                config={"reward": {"accuracy": "signed"}})
    assert trainer.accuracy_name == "signed"
    assert last["train/accuracy"] == last["reward/signed/mean"]
    out = [m for m in caught if "outside [0, 1]" in m]
    assert len(out) == 1, caught  # once, though both steps score -1
    assert "'signed'" in out[0] and "reward.accuracy" in out[0]


def test_explicit_names_are_checked(tiny_dir, tmp_path):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=1, log={"progress_bar": False},
                sampling={"max_tokens": 8})
    with pytest.raises(ValueError, match=r"'math'.*not among the reward functions \['length_penalty', 'checksum'\]"):
        GRPOTrainer(str(tiny_dir), [length_penalty, Checksum()], rows(2), GRPOConfig(**base),
                    accuracy_reward="math")
    with pytest.raises(ValueError, match=r"reward.format='fmt'.*\['length_penalty', 'checksum'\]"):
        GRPOTrainer(str(tiny_dir), [length_penalty, Checksum()], rows(2),
                    GRPOConfig(**base, reward={"format": "fmt"}))
    with pytest.raises(ValueError, match=r"accuracy_reward='checksum'.*reward.accuracy='length_penalty'"):
        report_names(["length_penalty", "checksum"], "checksum",
                     config=GRPOConfig(**base, reward={"accuracy": "length_penalty"}).reward)
    trainer = GRPOTrainer(str(tiny_dir), [length_penalty, Checksum()], rows(2), GRPOConfig(**base),
                          accuracy_reward="checksum", format_reward="length_penalty")
    assert (trainer.accuracy_name, trainer.format_name) == ("checksum", "length_penalty")
    trainer.close()


def test_every_packaged_recipe_reports_an_accuracy_reward():
    """A recipe names its accuracy reward in ``trainer.reward.accuracy`` when its name does not
    say so (r1_zero_countdown's countdown_reward)."""
    from grpo.recipes import build_rewards, find_recipe
    from grpo.recipes.schema import Recipe

    for name in ("r1_zero_cpu", "r1_zero_gsm8k", "r1_zero_countdown", "tool_math_qwen2.5"):
        recipe = Recipe.from_yaml(find_recipe(name))
        rewards, _ = build_rewards(recipe.rewards)
        names = [getattr(r, "name", None) or r.__name__ for r in rewards]
        accuracy, _ = report_names(names, config=recipe.trainer.reward)
        assert accuracy is not None, name
    countdown = Recipe.from_yaml(find_recipe("r1_zero_countdown"))
    assert countdown.trainer.reward.accuracy == "countdown_reward"
