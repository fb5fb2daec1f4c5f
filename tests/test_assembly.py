"""One recipe schema and one assembly path behind ``grpo train``, ``grpo eval``, ``grpo sample``
and ``grpo pipeline``: a pipeline's grpo stage is a Recipe, refused exactly as ``grpo train``
refuses it; the packaged tool recipe trains and evaluates with tools through the commands; and
``grpo sample`` / ``grpo eval`` sample with what the one generator factory builds."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import pytest
import yaml

from grpo import cli
from grpo.pipeline.recipe import GRPOStage, PipelineRecipe
from grpo.pipeline.recipe import check_recipe as check_pipeline
from grpo.recipes import RECIPE_DIR, RecipeError, check_recipe, find_recipe
from grpo.recipes.schema import Recipe
from grpo.tracking import read_jsonl


def _pipeline_cli(argv):
    from grpo.pipeline.commands import register

    parser = argparse.ArgumentParser(prog="grpo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------------------ one schema
def test_a_stage_with_a_bad_function_reward_kwarg_fails_as_grpo_train_does(tmp_path, monkeypatch,
                                                                         capsys):
    (tmp_path / "stage_rewards.py").write_text(textwrap.dedent("""
        def shouting(completions, **kw):
            return [float(c.isupper()) for c in completions]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "stage_rewards", raising=False)  # another test's module of that name
    rewards = [{"name": "stage_rewards:shouting", "kwargs": {"loud": True}}]
    recipe = {"model": "tiny", "dataset": {"name": "tiny_arithmetic"}, "rewards": rewards,
              "trainer": {"output_dir": str(tmp_path / "run")}}
    with pytest.raises(RecipeError) as train:
        check_recipe(Recipe(**recipe))  # what grpo train checks first (build_trainer)
    assert "reward 'stage_rewards:shouting' is a function: it takes no kwargs (got ['loud'])" \
        in str(train.value)
    stage = {"name": "rl", "type": "grpo", "data": {"builder": "tiny_arithmetic"},
             "rewards": rewards}
    with pytest.raises(RecipeError) as pipe:  # the pipeline used to drop the kwargs silently
        check_pipeline(PipelineRecipe(model="some/model", stages=[stage]))
    assert type(pipe.value) is type(train.value)
    assert str(pipe.value) == f"pipeline recipe is invalid:\n  stage 1 ('rl'): {train.value}"

    # and from the shell: one line each, exit status 2, the same words
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump({"model": "m", "stages": [stage]}))
    capsys.readouterr()
    assert cli.main(["train", str(tmp_path / "train.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"grpo: {train.value}"
    assert _pipeline_cli(["pipeline", str(tmp_path / "pipe.yaml"), "--check"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"grpo pipeline: pipeline recipe is invalid: stage 1 ('rl'): {train.value}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
def test_every_packaged_train_recipe_is_a_valid_pipeline_stage(name):
    """A grpo stage is a Recipe: a `grpo train` recipe, given a name and a type, is a stage."""
    body = yaml.safe_load(find_recipe(name).read_text())
    body.pop("quick", None)  # `grpo train --quick`'s smoke form: a stage refuses it (test_recipe_data)
    recipe = PipelineRecipe(model="base/model", stages=[{**body, "name": "rl", "type": "grpo"}])
    check_pipeline(recipe)
    stage = recipe.stages[0]
    assert isinstance(stage, GRPOStage) and isinstance(stage, Recipe)
    assert stage.model_dump(include=set(Recipe.model_fields) - {"quick"}) == \
        Recipe.from_yaml(find_recipe(name)).model_dump(exclude={"quick"})


def test_stage_keys_are_checked_with_the_recipes_words(tmp_path):
    stage = {"name": "rl", "type": "grpo", "data": {"builder": "tiny_arithmetic"},
             "rewards": [{"name": "math"}]}
    path = tmp_path / "p.yaml"
    for change, message in [
        ({"trainer": {"loss": {"betta": 0}}}, ("unknown key 'stages.0.trainer.loss.betta'; did "
                                               "you mean 'stages.0.trainer.loss.beta'?")),
        ({"beta": 0}, "unknown key 'stages.0.beta'; did you mean 'stages.0.trainer.loss.beta'?"),
        ({"multiturn": {"max_turnz": 2}}, "did you mean 'stages.0.multiturn.max_turns'?"),
        ({"dataset": {"name": "tiny_arithmetic"}}, ("exactly one of data (from / builder / hub / "
                                                    "path) or dataset")),
        ({"multiturn": {"max_turn_tokens": 4096}}, ("multiturn.max_turn_tokens=4096 exceeds "
                                                    "trainer.sampling.max_tokens=1024")),
    ]:
        path.write_text(yaml.safe_dump({"model": "m", "stages": [{**stage, **change}]}))
        with pytest.raises(RecipeError) as info:
            PipelineRecipe.from_yaml(path)
        assert message in str(info.value), str(info.value)
    tools = {**stage, "dataset": {"name": "tiny_arithmetic", "limit": 4}, "multiturn": {},
             "lora": {"r": 4}}
    del tools["data"]
    check_pipeline(PipelineRecipe(model="m", stages=[tools]))


# ------------------------------------------------------------------------------ the tool recipe
TINY_TOOLS = [
    "model=tiny", "tiny.hidden_size=64", "tiny.num_heads=2", "tiny.warmup_steps=0",
    "dataset.name=tiny_arithmetic", "dataset.limit=8",
    "eval_dataset.name=tiny_arithmetic", "eval_dataset.limit=2",
    "trainer.max_steps=2", "trainer.rollout.backend=hf", "trainer.rollout.num_generations=2",
    "trainer.rollout.prompts_per_step=2", "trainer.rollout.max_prompt_length=128",
    "trainer.sampling.max_tokens=24", "trainer.optim.minibatch_size=null",
    "trainer.forward.gradient_checkpointing=false", "trainer.eval.samples=2",
    "trainer.log.progress_bar=false", "multiturn.max_turns=2", "multiturn.max_turn_tokens=10",
]


def test_the_packaged_tool_recipe_trains_and_evaluates_with_grpo_train_and_eval(tmp_path):
    run = tmp_path / "run"
    settings = [*TINY_TOOLS, f"trainer.output_dir={run}"]
    assert cli.main(["train", "tool_math_qwen2.5", *settings]) == 0
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 2 and all("tools/call_rate" in m for m in metrics)  # multi-turn rollouts
    for m in metrics:  # every trajectory ended for a reason of the multi-turn loop
        assert sum(v for k, v in m.items() if k.startswith("tools/stop_")) == pytest.approx(1.0)
    # the math reward runs in the process pool: the live trajectory columns stay behind
    assert {c["reward_status"] for c in read_jsonl(run / "completions.jsonl")} == {"ok"}
    in_training = {e["step"]: e for e in read_jsonl(run / "eval.jsonl")}
    assert sorted(in_training) == [0, 2]
    assert in_training[2]["eval/greedy_length"] <= 10  # one turn of at most max_turn_tokens

    out = tmp_path / "eval.json"
    assert cli.main(["eval", "tool_math_qwen2.5", *settings, "--model", str(run),
                     "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == {k: v for k, v in in_training[2].items() if k != "step"}


# ------------------------------------------------------------------------------ one generator facto
def test_grpo_sample_and_grpo_eval_sample_what_build_generator_builds(tiny_dir, tmp_path):
    from grpo.config import VLLMConfig
    from grpo.evaluation import eval_sampling, evaluate, report_names, scoring_reward
    from grpo.models import build_generator
    from grpo.recipes import build_rewards
    from grpo.recipes.assemble import dataset_rows
    from grpo.rollout import SamplingConfig

    out = tmp_path / "rs"
    assert _pipeline_cli(["sample", "--model", str(tiny_dir), "--dataset", "tiny_arithmetic",
                          "--limit", "3", "--n", "2", "--reward", "format", "--verifiers", "",
                          "--keep-truncated", "--max-tokens", "6", "--seed", "5",
                          "--output-dir", str(out)]) == 0
    sampled = [s["text"] for rec in read_jsonl(out / "samples.jsonl") for s in rec["samples"]]
    rows = dataset_rows(Recipe(model="m", dataset={"name": "tiny_arithmetic", "limit": 3},
                               rewards=[{"name": "format"}]).dataset)
    generator = build_generator("hf", VLLMConfig(), str(tiny_dir))
    try:
        expected = generator.generate([r["prompt"] for r in rows], 2,
                                      SamplingConfig(max_tokens=6, seed=5))
    finally:
        generator.close()
    assert sampled == [r.text for r in expected] and len(set(sampled)) > 1

    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "model": str(tiny_dir), "dataset": {"name": "tiny_arithmetic", "limit": 4},
        "eval_dataset": {"name": "tiny_arithmetic", "split": "test", "limit": 3},
        "rewards": [{"name": "math"}, {"name": "format", "weight": 0.1}],
        "trainer": {"seed": 7, "sampling": {"max_tokens": 8}, "eval": {"samples": 2}}}))
    dump = tmp_path / "eval.json"
    assert cli.main(["eval", str(recipe_path), "--output", str(dump)]) == 0
    recipe = Recipe.from_yaml(recipe_path)
    cfg = recipe.trainer
    reward = scoring_reward(*build_rewards(recipe.rewards))
    accuracy, format_name = report_names([r.name for r in reward.rewards])
    generator = build_generator("hf", cfg.vllm, str(tiny_dir), seed=cfg.seed)
    try:
        expected = evaluate(generator, dataset_rows(recipe.eval_dataset), reward, accuracy=accuracy,
                            format_name=format_name, k=2, sampling=eval_sampling(cfg.sampling, 7))
    finally:
        generator.close()
    assert json.loads(dump.read_text()) == expected


@pytest.mark.vllm
def test_grpo_sample_hands_the_vllm_section_to_the_engine(tiny_dir, tmp_path, monkeypatch):
    """`--vllm KEY=VALUE` are the fields of GRPOConfig's vllm section (a pipeline sample stage's
    `vllm:` too): here max_model_len caps prompt + completion at 24 tokens."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm_cache"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n"
                            for i in range(4)))
    out = tmp_path / "rs"
    assert _pipeline_cli(["sample", "--model", str(tiny_dir), "--data-file", str(rows), "--n", "2",
                          "--reward", "format", "--verifiers", "", "--keep-truncated",
                          "--max-tokens", "64", "--rollout", "vllm", "--vllm", "enforce_eager=true",
                          "--vllm", "dtype=float32", "--vllm", "max_model_len=24",
                          "--output-dir", str(out)]) == 0
    lengths = [s["n_tokens"] for rec in read_jsonl(out / "samples.jsonl") for s in rec["samples"]]
    assert len(lengths) == 8 and max(lengths) == 24 - len("0+1=")  # not --max-tokens 64
