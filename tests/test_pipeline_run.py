"""Multi-stage pipelines end to end (tiny stages, real trl / GRPOTrainer / rejection sampling), the
checks made before anything runs, the packaged GPU recipes, and the CLI commands."""

import argparse
import json
from pathlib import Path

import pytest
import yaml

from grpo.config import FlatConfigWarning
from grpo.pipeline import run_pipeline
from grpo.pipeline.recipe import PipelineRecipe, check_recipe

RECIPES = Path(__file__).resolve().parents[1] / "src" / "grpo" / "pipeline" / "recipes"
TINY_GRPO = {"max_steps": 2, "rollout": {"num_generations": 2, "prompts_per_step": 2},
             "sampling": {"max_tokens": 8}, "loss": {"beta": 0.0}, "log": {"progress_bar": False},
             "optim": {"learning_rate": 1.0e-4}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from grpo.recipes.tiny_task import make_problems, teacher_rows
    from grpo.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("pipe")
    model = save_tiny_model(root / "base", hidden_size=64, num_heads=2, head_dim=32)
    cold = root / "cold.jsonl"
    cold.write_text("".join(json.dumps(r) + "\n" for r in teacher_rows(make_problems(), 32)))
    return root, model, cold


def _recipe(model, cold, out):
    return {
        "output_dir": str(out), "model": str(model),
        "stages": [
            {"name": "cold_start", "type": "sft", "data": {"path": str(cold)},
             "sft": {"max_steps": 2, "per_device_train_batch_size": 8, "logging_steps": 1, "learning_rate": 1.0e-3}},
            {"name": "reasoning_rl", "type": "grpo", "data": {"builder": "tiny_arithmetic", "limit": 8},
             "eval_data": {"builder": "tiny_arithmetic", "split": "test", "limit": 2},
             "rewards": [{"name": "math"}, {"name": "format", "weight": 0.1}], "trainer": TINY_GRPO},
            {"name": "rejection", "type": "sample", "data": {"builder": "tiny_arithmetic", "limit": 6},
             "rewards": [{"name": "format"}], "keep": {"verifiers": [], "drop_truncated": False}, "n": 2,
             "sampling": {"max_tokens": 6}, "rl_pass_rate": [0.0, 1.0], "batch_size": 4},
            {"name": "sft_again", "type": "sft", "model": {"from": "base"}, "data": {"from": "rejection"},
             "sft": {"max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1}},
            {"name": "final_rl", "type": "grpo", "data": {"from": "rejection", "output": "sft"},
             "rewards": [{"name": "format"}], "trainer": {**TINY_GRPO, "max_steps": 1}},
        ]}


def test_pipeline_runs_links_and_skips_finished_stages(setup, tmp_path):
    root, model, cold = setup
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(model, cold, tmp_path / "run")))
    first = run_pipeline(path)
    names = ["cold_start", "reasoning_rl", "rejection", "sft_again", "final_rl"]
    assert first.ran == names and first.skipped == []
    run = tmp_path / "run"
    folders = sorted((run / "stages").iterdir())
    assert [f.name for f in folders] == [f"{i + 1:02d}_{n}" for i, n in enumerate(names)]
    # each stage's output fed the next by name: resolved configs point at the earlier folders
    configs = [yaml.safe_load((f / "config.yaml").read_text()) for f in folders]
    assert configs[0]["model"] == str(model)
    assert configs[1]["model"] == str(folders[0].resolve() / "model")  # omitted: the previous model
    assert configs[2]["model"] == str(folders[1].resolve() / "model")
    assert configs[3]["model"] == str(model) and configs[3]["data"]["path"] == \
        str(folders[2].resolve() / "samples" / "sft.jsonl")
    assert configs[4]["model"] == str(folders[3].resolve() / "model")
    for name in ("cold_start", "reasoning_rl", "sft_again", "final_rl"):
        assert (Path(first.outputs[name]["model"]) / "config.json").exists()
    assert yaml.safe_load((run / "recipe.yaml").read_text())["stages"][3]["model"] == {"from": "base"}
    # one page links every stage's report, and each linked report exists
    index = (run / "index.html").read_text()
    links = [line.split("'")[0] for line in index.split("href='")[1:]]
    reports = [link for link in links if link.endswith("report.html")]
    assert len(reports) == 5 and all((run / link).exists() for link in links)
    # a rerun skips every finished stage and touches nothing
    stamp = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "index.html"
             and p.name != "recipe.yaml"}
    second = run_pipeline(path)
    assert second.ran == [] and second.skipped == names and second.outputs == first.outputs
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # redo a middle stage: it and every later stage run again, earlier ones stay
    third = run_pipeline(path, redo="sft_again")
    assert third.skipped == names[:3] and third.ran == names[3:]
    # an interrupted grpo stage (folder kept, not done, no checkpoint) starts over in its folder
    final = folders[4]
    (final / "done.json").unlink()
    assert (final / "grpo" / "metrics.jsonl").stat().st_size > 0
    fourth = run_pipeline(path)
    assert fourth.skipped == names[:4] and fourth.ran == ["final_rl"]


def test_bad_reference_fails_before_anything_runs(setup, tmp_path):
    root, model, cold = setup
    recipe = _recipe(model, cold, tmp_path / "run")
    recipe["stages"][3]["data"] = {"from": "rejection", "output": "rl_prompts"}
    recipe["stages"][2].pop("rl_pass_rate")
    recipe["stages"][4]["model"] = {"from": "final_rl"}
    recipe["stages"][1]["data"] = {"from": "cold_start"}
    with pytest.raises(ValueError) as e:
        run_pipeline(PipelineRecipe(**recipe))
    msg = str(e.value)
    assert "stage 4 ('sft_again'): data wants output 'rl_prompts' of stage 'rejection', which produces only " \
           "['sft'] (set rl_pass_rate on it to get rl_prompts)" in msg
    assert "stage 5 ('final_rl'): model refers to stage 'final_rl', which no earlier stage is" in msg
    assert "stage 2 ('reasoning_rl'): data wants output 'sft' of stage 'cold_start', which produces only " \
           "['model']" in msg
    assert not (tmp_path / "run").exists()
    recipe = _recipe(model, cold, tmp_path / "run")
    recipe["stages"][0]["model"] = {"from": "rejection"}
    recipe["stages"][1]["rewards"] = [{"name": "nope"}]
    recipe["stages"][2]["keep"] = {"verifiers": ["math_reward"]}
    recipe["stages"][3]["sft"] = {"completion_only_loss": False}
    with pytest.raises(ValueError) as e:
        check_recipe(PipelineRecipe(**recipe))
    msg = str(e.value)
    assert "model refers to stage 'rejection', which no earlier stage is (it comes later; stages run in order)" in msg
    assert "unknown reward 'nope'" in msg and "verifiers ['math_reward'] are not among the rewards" in msg
    assert "completion tokens only" in msg
    # a grpo stage's trainer is a GRPOConfig: refused when the recipe loads, as grpo train does
    recipe["stages"][4]["trainer"] = {"rollout": {"num_generations": 1}}
    with pytest.raises(ValueError, match="num_generations"):
        PipelineRecipe(**recipe)


def test_teacher_stage_is_on_policy_distillation_from_an_earlier_stage(setup, tmp_path):
    root, model, cold = setup
    stages = [
        {"name": "teacher_sft", "type": "sft", "data": {"path": str(cold)},
         "sft": {"max_steps": 2, "per_device_train_batch_size": 8, "logging_steps": 1, "learning_rate": 1.0e-3}},
        {"name": "opd", "type": "grpo", "model": {"from": "base"}, "teacher": {"from": "teacher_sft"},
         "data": {"builder": "tiny_arithmetic", "limit": 4}, "rewards": [{"name": "math", "weight": 0.0}],
         "trainer": TINY_GRPO},
    ]
    result = run_pipeline(PipelineRecipe(output_dir=str(tmp_path / "run"), model=str(model), stages=stages))
    folder = tmp_path / "run" / "stages" / "02_opd"
    teacher = str((tmp_path / "run" / "stages" / "01_teacher_sft" / "model").resolve())
    assert yaml.safe_load((folder / "config.yaml").read_text())["teacher"] == teacher
    trained = yaml.safe_load((folder / "grpo" / "config.yaml").read_text())
    assert trained["distill"]["teacher"] == teacher
    metrics = [json.loads(line) for line in (folder / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["distill/reverse_kl"] > 0 for m in metrics)  # the teacher's term is there
    assert result.ran == ["teacher_sft", "opd"]
    # a teacher must be an earlier stage's model, given once
    bad = [dict(stages[0]), {**stages[1], "teacher": {"from": "later"}},
           {**stages[1], "name": "twice", "trainer": {**TINY_GRPO, "distill": {"teacher": "x"}}},
           {**stages[1], "name": "flat", "trainer": {**TINY_GRPO, "teacher_model": "x"}}]
    with pytest.raises(ValueError) as e, pytest.warns(FlatConfigWarning):
        check_recipe(PipelineRecipe(output_dir=str(tmp_path / "bad"), model=str(model), stages=bad))
    assert "stage 2 ('opd'): teacher refers to stage 'later', which no earlier stage is" in str(e.value)
    assert "stage 3 ('twice'): give the teacher once" in str(e.value)
    assert "stage 4 ('flat'): give the teacher once" in str(e.value)  # grpo 0.1's flat key too


def test_packaged_gpu_recipes_load_and_validate():
    paths = sorted(RECIPES.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"r1_qwen2.5_math", "distill_qwen2.5_1.5b"}
    for p in paths:
        recipe = PipelineRecipe.from_yaml(p)
        check_recipe(recipe)
        assert recipe.model.startswith("Qwen/Qwen2.5")
    r1 = PipelineRecipe.from_yaml(RECIPES / "r1_qwen2.5_math.yaml")
    assert [s.type for s in r1.stages] == ["sft", "grpo", "sample", "sft", "grpo"]
    assert any(r.name == "language" for r in r1.stages[1].rewards)


def _cli(argv):
    from grpo.pipeline.commands import register

    parser = argparse.ArgumentParser(prog="grpo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _error_line(capsys):
    """The one line a user error prints (progress bars of loading may precede it on stderr)."""
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    errors = [line for line in lines if line.startswith("grpo ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-3:]
    return errors[0]


def test_cli_sample_sft_pipeline(setup, tmp_path, capsys):
    root, model, cold = setup
    out = tmp_path / "rs"
    assert _cli(["sample", "--model", str(model), "--dataset", "tiny_arithmetic", "--limit", "4", "--n", "2",
                 "--reward", "format", "--verifiers", "", "--keep-truncated", "--max-tokens", "4",
                 "--output-dir", str(out), "--rl-pass-rate", "0", "1"]) == 0
    assert "kept " in capsys.readouterr().out and (out / "sft.jsonl").exists()
    assert _cli(["sft", "--model", str(model), "--data", str(out / "sft.jsonl"), "--output-dir", str(tmp_path / "m"),
                 "max_steps=1", "per_device_train_batch_size=2", "disable_tqdm=true"]) == 0
    assert (tmp_path / "m" / "model" / "config.json").exists()
    # user errors: one line, status 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1=", "completion": None}) + "\n")
    capsys.readouterr()
    assert _cli(["sft", "--model", str(model), "--data", str(bad), "--output-dir", str(tmp_path / "x")]) == 2
    assert _error_line(capsys).startswith("grpo sft: SFT row 0 has no completion")
    assert _cli(["sample", "--model", str(model), "--dataset", "tiny_arithmetic", "--limit", "2", "--n", "2",
                 "--reward", "math", "--max-tokens", "2", "--output-dir", str(tmp_path / "rs2")]) == 2
    assert _error_line(capsys).startswith("grpo sample: rejection sampling kept NO rows")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(model), "stages": [
        {"name": "a", "type": "sft", "model": {"from": "b"}, "data": {"path": str(cold)}}]}))
    assert _cli(["pipeline", str(recipe), "--check"]) == 2
    assert _error_line(capsys).startswith("grpo pipeline: pipeline recipe is invalid: stage 1 ('a'): model refers "
                                          "to stage 'b'")
    assert _cli(["pipeline", str(RECIPES / "distill_qwen2.5_1.5b.yaml"), "--check"]) == 0


def test_data_specs_columns_and_built_prompts(tmp_path):
    from grpo.pipeline.stages import load_rows

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i}+1", "answer": str(i + 1), "generations": ["long"] * 3}) + "\n"
                            for i in range(5)))
    rows = load_rows({"path": str(path), "limit": 2, "columns": ["problem", "answer"], "prompt_column": "problem",
                      "system": "Think."})
    assert rows == [{"problem": "0+1", "answer": "1", "prompt": [{"role": "system", "content": "Think."},
                                                                  {"role": "user", "content": "0+1"}]},
                    {"problem": "1+1", "answer": "2", "prompt": [{"role": "system", "content": "Think."},
                                                                  {"role": "user", "content": "1+1"}]}]
    assert load_rows({"path": str(path), "prompt_column": "problem", "system": ""})[0]["prompt"] == \
        [{"role": "user", "content": "0+1"}]
    with pytest.raises(KeyError, match=r"columns \['question'\] are not in the data"):
        load_rows({"path": str(path), "columns": ["question"]})
    with pytest.raises(KeyError, match="prompt_column 'question' is missing from row 0"):
        load_rows({"path": str(path), "prompt_column": "question"})
    with pytest.raises(ValueError, match="exactly one of from / builder / hub / path"):
        PipelineRecipe(model="m", stages=[{"name": "a", "type": "sft", "data": {"path": "x", "builder": "y"}}])


def test_failed_sample_stage_is_marked_and_rerun_refilters_without_sampling(setup, tmp_path):
    root, model, cold = setup
    recipe = {"output_dir": str(tmp_path / "run"), "model": str(model), "stages": [
        {"name": "rejection", "type": "sample", "data": {"builder": "tiny_arithmetic", "limit": 4},
         "rewards": [{"name": "math"}], "n": 2, "sampling": {"max_tokens": 3}, "batch_size": 2}]}
    from grpo.pipeline import NothingKeptError

    with pytest.raises(NothingKeptError):
        run_pipeline(PipelineRecipe(**recipe))
    run = tmp_path / "run"
    assert "<td>rejection</td><td>sample</td><td>failed</td>" in (run / "index.html").read_text()
    samples = run / "stages" / "01_rejection" / "samples" / "samples.jsonl"
    before = (samples.read_bytes(), samples.stat().st_mtime_ns)
    recipe["stages"][0]["keep"] = {"verifiers": [], "drop_truncated": False}  # loosen the rule, run again
    result = run_pipeline(PipelineRecipe(**recipe))
    assert result.ran == ["rejection"] and (samples.read_bytes(), samples.stat().st_mtime_ns) == before
    assert len(Path(result.outputs["rejection"]["sft"]).read_text().splitlines()) > 0
