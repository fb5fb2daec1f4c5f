"""The ``grpo`` command: the packaged offline CPU recipe, evaluation of checkpoints that reproduces
the trainer's numbers, fast failure without the Hub, and one-line errors for recipe mistakes."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from grpo import cli
from grpo.recipes import RecipeError, build_rewards, find_recipe
from grpo.recipes.schema import Recipe
from grpo.tracking import read_jsonl

CLI = [sys.executable, "-m", "grpo.cli"]


def offline_env(tmp_path, **extra):
    """No Hub: HF_HUB_OFFLINE and an empty cache, so nothing can come from a download."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
            **extra}


# ------------------------------------------------------------------------------ end to end
def test_packaged_cpu_recipe_trains_offline_and_eval_reproduces_the_training_evals(tmp_path):
    run = tmp_path / "run"
    settings = ["tiny.warmup_steps=20", f"trainer.output_dir={run}", "trainer.eval.max_prompts=12"]
    out = subprocess.run(CLI + ["train", "r1_zero_cpu", *settings, "trainer.max_steps=4", "trainer.eval.steps=2",
                                "trainer.checkpoint.steps=2", "trainer.log.progress_bar=false"],
                         capture_output=True, text=True, timeout=600, env=offline_env(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "tiny_model" / "config.json").exists() and (run / "report" / "report.html").exists()
    in_training = {e["step"]: e for e in read_jsonl(run / "eval.jsonl")}
    assert sorted(in_training) == [0, 2, 4]
    assert in_training[2]["eval/mean@4_length"] != in_training[4]["eval/mean@4_length"]  # the model moved

    # a checkpoint, the run folder (its final model), and the recipe's own model (= step 0)
    for model, step in ((run / "checkpoints" / "step_2", 2), (run, 4), (None, 0)):
        dump = tmp_path / f"eval_{step}.json"
        args = CLI + ["eval", "r1_zero_cpu", *settings, "--output", str(dump)]
        args += ["--model", str(model)] if model else ["--by", "answer"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=offline_env(tmp_path))
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(dump.read_text())
        expected = {k: v for k, v in in_training[step].items() if k != "step"}
        assert {k: got[k] for k in expected} == expected, f"--model {model} differs from the step-{step} evaluation"
        if model is None:  # --by answer: every metric per gold answer, over all 12 prompts
            counts = [v for k, v in got.items() if k.startswith("eval/num_prompts/answer=")]
            assert sum(counts) == 12 and len(counts) > 1
            assert any(k.startswith("eval/greedy_accuracy/answer=") for k in got)
        else:
            assert set(got) == set(expected)


def test_lora_checkpoint_eval_reproduces_the_training_eval(tmp_path, monkeypatch):
    """A LoRA run's checkpoint holds only the adapters: they go onto the recipe's model wrapped
    with the recipe's lora config. A dense reward (shorter is better) makes the adapters move."""
    (tmp_path / "dense.py").write_text("from grpo.rewards import Reward\n\nclass Short(Reward):\n"
                                       "    def score(self, completion, **example):\n"
                                       "        return -len(completion) / 10\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    recipe = recipe_file(tmp_path, f"""\
        model: tiny
        tiny: {{hidden_size: 64, num_heads: 2, head_dim: 32, warmup_steps: 20}}
        dataset: {{name: tiny_arithmetic, split: train, limit: 16}}
        eval_dataset: {{name: tiny_arithmetic, split: test, limit: 6}}
        rewards: [{{name: "dense:Short"}}, {{name: format, weight: 0.1}}]
        lora: {{r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}}
        trainer: {{output_dir: {run}, max_steps: 2, rollout: {{num_generations: 4, prompts_per_step: 2}},
                  sampling: {{max_tokens: 12}}, optim: {{learning_rate: 1.0e-2}}, loss: {{beta: 0.0}},
                  checkpoint: {{steps: 2}}, eval: {{samples: 4}}, log: {{progress_bar: false}},
                  reward: {{accuracy: short}}}}
        """)  # `short` is not named as accuracy: say so, for the mean@4_accuracy compared below
    assert cli.main(["train", recipe]) == 0
    in_training = {e["step"]: e for e in read_jsonl(run / "eval.jsonl")}
    assert in_training[0]["eval/mean@4_accuracy"] != in_training[2]["eval/mean@4_accuracy"]  # the adapters moved
    assert cli.main(["eval", recipe, "--model", str(run / "checkpoints" / "step_2"), "--output",
                     str(tmp_path / "ck.json")]) == 0
    assert json.loads((tmp_path / "ck.json").read_text()) == {k: v for k, v in in_training[2].items() if k != "step"}


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "unreachable_endpoint"])
def test_hub_recipe_fails_fast_without_the_hub(tmp_path, env):
    t0 = time.perf_counter()
    out = subprocess.run(CLI + ["train", "r1_zero_gsm8k"], capture_output=True, text=True, timeout=120,
                         env=offline_env(tmp_path, **env))
    took = time.perf_counter() - t0
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Qwen/Qwen2.5-0.5B" in out.stderr and "grpo train r1_zero_cpu" in out.stderr
    assert ("HF_HUB_OFFLINE" if env["HF_HUB_OFFLINE"] == "1" else "unreachable") in out.stderr
    assert took < 15, f"took {took:.1f} s"


# ------------------------------------------------------------------------------ errors that say what to change
def recipe_file(tmp_path, body: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


BASE = """\
    model: tiny
    dataset: {name: tiny_arithmetic, split: train, limit: 8}
    eval_dataset: {name: tiny_arithmetic, split: test, limit: 4}
    rewards:
      - {name: math, weight: 1.0}
      - {name: format, weight: 0.1}
    """


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("overrides, message", [
    (["trainer.betta=0"], "unknown key 'trainer.betta'; did you mean 'trainer.loss.beta'?"),
    (["beta=0"], "unknown key 'beta'; did you mean 'trainer.loss.beta'?"),
    (["datset.name=x"], "unknown key 'datset'; did you mean 'dataset'?"),
    (["rewards.0.wieght=2"], "unknown key 'rewards.0.wieght'; did you mean 'rewards.0.weight'?"),
    (["rewards.5.weight=2"], "rewards is a list of 2 entries; use an index 0..1"),
    (["trainer.rollout.num_generations=1"], "trainer.rollout.num_generations: Input should be greater than or equal to 2"),
    (["tiny.hiden_size=64"], "did you mean 'tiny.hidden_size'?"),
    (["model=Qwen/Qwen2.5-0.5B", "tiny.seed=1"], "the 'tiny' section applies to model: tiny"),
])
def test_recipe_mistakes_are_one_line_errors_with_exit_code_2(tmp_path, capsys, overrides, message):
    code, err = run_main(capsys, "train", recipe_file(tmp_path, BASE), *overrides)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_list_index_overrides_reach_the_right_reward(tmp_path):
    recipe = Recipe.from_yaml(recipe_file(tmp_path, BASE), ["rewards.1.weight=0.5", "rewards.0.kwargs.answer_key=gold"])
    assert [r.weight for r in recipe.rewards] == [1.0, 0.5]
    assert recipe.rewards[0].kwargs == {"answer_key": "gold"} and recipe.rewards[1].name == "format"


@pytest.mark.parametrize("dataset, message", [
    ("{name: tiny_arithmetic, kwargs: {sise: 3}}", "dataset 'tiny_arithmetic' has no option 'sise'; did you mean 'size'?"),
    ("{name: countdown, kwargs: {min_numbrs: 3}}", "dataset 'countdown' has no option 'min_numbrs'; did you mean "
                                                   "'min_numbers'?"),
    ("{name: gsm8k, kwargs: {subset: main}}", "dataset 'gsm8k' has no option 'subset'"),
    ("{name: tiny_arithmetc}", "unknown dataset 'tiny_arithmetc'; did you mean 'tiny_arithmetic'?"),
])
def test_dataset_kwargs_typos_are_errors(tmp_path, capsys, dataset, message):
    body = BASE.replace("{name: tiny_arithmetic, split: train, limit: 8}", dataset)
    code, err = run_main(capsys, "train", recipe_file(tmp_path, body), f"trainer.output_dir={tmp_path / 'run'}",
                         "tiny.warmup_steps=0")
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_rewards_by_registry_name_or_dotted_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        from grpo.rewards import Reward

        class Brevity(Reward):
            def __init__(self, limit=10, **kw):
                super().__init__(**kw)
                self.limit = limit

            def score(self, completion, **example):
                return float(len(completion) <= self.limit)

        def shouting(completions, **kw):
            return [float(c.isupper()) for c in completions]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)  # another test's module of that name
    body = BASE.rstrip(" ") + "      - {name: 'my_rewards:Brevity', weight: 0.2, kwargs: {limit: 3}}\n" \
                  "      - {name: 'my_rewards:shouting'}\n"
    made, weights = build_rewards(Recipe.from_yaml(recipe_file(tmp_path, body)).rewards)
    assert [type(r).__name__ for r in made[:3]] == ["MathReward", "FormatReward", "Brevity"]
    assert made[2].limit == 3 and made[2].score("abcd") == 0.0 and made[3](completions=["HI"]) == [1.0]
    assert weights == [1.0, 0.1, 0.2, 1.0]
    for name, kwargs, message in [
        ("maths", {}, "unknown reward 'maths'; did you mean 'math'?"),
        ("my_rewards:Brevty", {}, "'my_rewards' has no 'Brevty'; did you mean 'Brevity'?"),
        ("no_such_module:X", {}, "cannot import 'no_such_module'"),
        ("my_rewards:Brevity", {"limt": 3}, "reward 'my_rewards:Brevity' has no option 'limt'; did you mean 'limit'?"),
        ("math", {"answer_kye": "a"}, "did you mean 'answer_key'?"),
        ("my_rewards:shouting", {"x": 1}, "is a function: it takes no kwargs"),
    ]:
        recipe = Recipe.from_yaml(recipe_file(tmp_path, BASE), [f"rewards.0.name={name}"] +
                                  [f"rewards.0.kwargs.{k}={v}" for k, v in kwargs.items()])
        with pytest.raises(RecipeError) as info:
            build_rewards(recipe.rewards)
        assert message in str(info.value), str(info.value)


def test_unknown_recipe_name_suggests_the_packaged_one(capsys):
    code, err = run_main(capsys, "train", "r1_zero_gsm8")
    assert code == 2 and "did you mean 'r1_zero_gsm8k'?" in err and "r1_zero_cpu" in err
    assert find_recipe("r1_zero_cpu").exists()


def test_eval_without_eval_dataset_and_report_of_a_missing_run(tmp_path, capsys):
    body = BASE.replace("    eval_dataset: {name: tiny_arithmetic, split: test, limit: 4}\n", "")
    code, err = run_main(capsys, "eval", recipe_file(tmp_path, body))
    assert code == 2 and "the recipe has no eval_dataset" in err
    code, err = run_main(capsys, "report", str(tmp_path / "nowhere"))
    assert code == 2 and "is it a grpo run folder?" in err


def test_eval_options_checked_before_any_generation(tmp_path, capsys):
    body = BASE.rstrip(" ") + "    trainer: {output_dir: %s, eval: {samples: 4}}\n" % (tmp_path / "run")
    code, err = run_main(capsys, "eval", recipe_file(tmp_path, body), "--pass-k", "8")
    assert code == 2 and "--pass-k 8: pass@K needs 1 <= K <= trainer.eval.samples=4" in err
    code, err = run_main(capsys, "eval", recipe_file(tmp_path, body), "tiny.warmup_steps=0", "--by", "difficulty")
    assert code == 2 and "--by difficulty: the eval rows have no column 'difficulty' (columns: answer, prompt, terms)" \
        in err.splitlines()[-1]


def test_eval_pass_k_without_an_accuracy_reward_is_a_one_line_error(tmp_path, capsys):
    body = BASE.replace("      - {name: math, weight: 1.0}\n", "").rstrip(" ")
    body += "    trainer: {output_dir: %s, eval: {samples: 4}}\n" % (tmp_path / "run")
    for flag in ("--pass-k", "--cons-k"):
        code, err = run_main(capsys, "eval", recipe_file(tmp_path, body), "tiny.warmup_steps=0", flag, "2")
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"{flag}: needs an accuracy reward" in err and "trainer.reward.accuracy=" in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was built


def test_eval_model_that_is_no_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for model, message in ((tmp_path / "empty", "not a saved model (no config.json)"),
                           (tmp_path / "nowhere", "is not a local folder")):
        code, err = run_main(capsys, "eval", recipe_file(tmp_path, BASE), "--model", str(model))
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_trainer_refusals_are_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_3").mkdir(parents=True)  # another run's checkpoint
    code, err = run_main(capsys, "train", recipe_file(tmp_path, BASE), f"trainer.output_dir={run}",
                         "tiny.warmup_steps=0")
    assert code == 2 and err.startswith("grpo: output_dir") and "resume_from" in err and len(err.splitlines()) == 1
    assert not (run / "tiny_model").exists()  # refused before anything was built


def test_help_config_documents_every_key_without_pydantic_internals(capsys):
    assert cli.main(["train", "--help-config"]) == 0
    text = capsys.readouterr().out
    assert "PydanticUndefined" not in text
    assert "trainer.sampling.stop (default ()): Stop strings" in text
    assert "trainer.sampling.max_tokens (default 1024): Most completion tokens" in text  # the trainer's default
    assert "trainer.loss.beta (default 0.001): KL coefficient" in text
    assert "\ntrainer.loss: The policy loss" in text  # one title per section
    assert "  model (required): " in text and "rewards.N.name (required)" in text and "tiny.warmup_steps" in text


def test_subcommand_modules_register_through_one_list(tmp_path, monkeypatch):
    (tmp_path / "extra_commands.py").write_text(textwrap.dedent("""
        def register(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("--code", type=int, default=7)
            p.set_defaults(func=lambda args: args.code)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("extra_commands",))
    assert cli.main(["hello", "--code", "5"]) == 5
