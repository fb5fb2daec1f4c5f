"""The lab task (grpo.recipes.lab_task): seeded, graded, held-out split disjoint by construction,
gold answers verified by the rewards, usable from a recipe, and its example script runs."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.recipes.lab_task import LEVELS, make_lab_dataset, make_lab_problems, question, split_of

ROOT = Path(__file__).resolve().parents[1]


def _questions(rows):
    return [r["prompt"][0]["content"] for r in rows]


def test_same_seed_same_rows_other_seed_other_rows():
    for level in LEVELS:
        a = make_lab_problems(level, "train", seed=3, size=40)
        assert a == make_lab_problems(level, "train", seed=3, size=40)
        assert _questions(a) != _questions(make_lab_problems(level, "train", seed=4, size=40))
    mixed = make_lab_dataset([1, 2, 3, 4], "train", seed=5, size=20)
    assert mixed == make_lab_dataset([1, 2, 3, 4], "train", seed=5, size=20)
    assert [r["level"] for r in mixed] != sorted(r["level"] for r in mixed)  # shuffled across levels


def test_held_out_disjoint_from_train_for_every_seed():
    for level in LEVELS:
        test = set(_questions(make_lab_problems(level, "test", seed=0)))
        assert len(test) == 50  # distinct
        for seed in (0, 1, 2):
            train = _questions(make_lab_problems(level, "train", seed=seed, size=500))
            assert len(set(train)) == 500 and not test & set(train)
    # the split is a property of the problem, not of the draw: every test row hashes to "test"
    assert all(split_of(r["terms"]) == "test" for r in make_lab_problems(4, "test", seed=9))
    # level 1 is small: its whole train split, and no more
    assert len(make_lab_problems(1, "train")) == sum(split_of(t) == "train" for t in _level1())
    with pytest.raises(ValueError, match="only .* test problems"):
        make_lab_problems(1, "test", size=1000)


def _level1():
    return [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]


def test_levels_are_graded():
    stats = {}
    for level in LEVELS:
        rows = make_lab_problems(level, "train", seed=0, size=300)
        assert all(r["level"] == level for r in rows)
        terms = [r["terms"] for r in rows]
        stats[level] = (
            max(len(t) for t in terms),
            max(abs(x) for t in terms for x in t),
            sum(any(x < 0 for x in t) for t in terms) / len(terms),
        )
    # (terms, largest number, share with a subtraction): each level adds a term or subtraction
    assert stats[1] == (3, 9, 0.0)
    assert stats[2] == (4, 9, 0.0)
    assert stats[3][:2] == (4, 9) and stats[3][2] > 0.5
    assert stats[4][:2] == (5, 9) and stats[4][2] > stats[3][2]
    assert [LEVELS[lv].space for lv in sorted(LEVELS)] == sorted(LEVELS[lv].space for lv in LEVELS)


def test_gold_answers_and_worked_teacher_verified_by_rewards():
    from grpo.recipes.tiny_task import teacher_completion
    from grpo.rewards import FormatReward, MathReward

    math_reward, fmt = MathReward(), FormatReward()
    rng = random.Random(0)
    for level in LEVELS:
        for row in make_lab_problems(level, "test", seed=0, size=10):
            example = {k: v for k, v in row.items() if k != "prompt"}
            assert row["answer"] == str(eval(question(row["terms"])[:-2]))  # the question's value
            gold = f"<think></think><answer>{row['answer']}</answer>"
            assert math_reward.score(gold, **example) == 1.0 and fmt.score(gold, **example) == 1.0
            wrong = f"<think></think><answer>{int(row['answer']) + 1}</answer>"
            assert math_reward.score(wrong, **example) == 0.0
            worked = teacher_completion(row["terms"], rng, think_p=1.0, noformat_p=0.0)
            assert math_reward.score(worked, **example) == 1.0, worked
    # a subtraction is written as one: "9-4=5", never "9+-4=5"
    assert teacher_completion([9, -4, 3], rng, think_p=1.0, noformat_p=0.0) == \
        "<think>9-4=5,5+3=8</think><answer>8</answer>"
    with pytest.raises(ValueError, match="only in the 'symbols'"):
        teacher_completion([9, -4], rng, think_p=1.0, noformat_p=0.0, languages=("en",))


def test_dataset_builder_through_a_recipe(tmp_path):
    from grpo.recipes.assemble import dataset_rows
    from grpo.recipes.errors import RecipeError
    from grpo.recipes.schema import Recipe

    recipe = tmp_path / "lab.yaml"
    recipe.write_text("""
model: tiny
dataset: {name: lab_arithmetic, split: train, kwargs: {levels: [1, 3], size: 30, seed: 2}}
eval_dataset: {name: lab_arithmetic, split: test, kwargs: {levels: [3], size: 5}}
rewards: [{name: math, weight: 1.0}]
trainer: {output_dir: runs/x, max_steps: 1}
""")
    r = Recipe.from_yaml(recipe)
    train, test = dataset_rows(r.dataset), dataset_rows(r.eval_dataset)
    assert len(train) == 60 and {row["level"] for row in train} == {1, 3}
    assert train == make_lab_dataset([1, 3], "train", seed=2, size=30)
    assert [row["level"] for row in test] == [3] * 5
    assert not set(_questions(train)) & set(_questions(test))
    bad = Recipe.from_yaml(recipe, ["dataset.kwargs={level: [1]}"])
    with pytest.raises(RecipeError, match="no option 'level'.*levels"):
        dataset_rows(bad.dataset)
    with pytest.raises(RecipeError, match="level must be one of"):
        dataset_rows(Recipe.from_yaml(recipe, ["dataset.kwargs={levels: [7]}"]).dataset)


@pytest.mark.slow
def test_lab_cpu_quick_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lab_cpu.py"), "--quick", "--levels", "1,4",
         "--hidden-size", "64", "--layers", "1", "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (64, 1, 2)
    # the headroom benchmark's parameter count (read from the saved config) is the model's
    import importlib.util

    import transformers

    spec = importlib.util.spec_from_file_location("lab_headroom", ROOT / "benchmarks" / "lab_headroom.py")
    headroom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headroom)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert headroom.run_facts(tmp_path / "run")["parameters"] == sum(p.numel() for p in model.parameters())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["held_out_greedy_accuracy_by_level_after"]) == {"1", "4"}
    assert summary["grpo_steps"] == 2 and [p["step"] for p in summary["curve"]] == [0, 2]
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["eval/num_prompts/level=4"] == 2
