"""A recipe's own data (``dataset: {path | hub, columns, prompt_column}``, read by the pipeline's
one loader), the tiny model's announced warm-up, and ``--quick`` for every packaged CPU recipe."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grpo import cli
from grpo.recipes import RECIPE_DIR, RecipeError, build_tiny_model, prepare_model
from grpo.recipes.assemble import build_trainer, dataset_rows
from grpo.recipes.datasets import load_rows
from grpo.recipes.schema import Recipe, TinyModelSpec

ROWS = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(4)]
SMALL_TINY = "tiny: {hidden_size: 32, num_layers: 1, num_heads: 2, head_dim: 16, warmup_steps: 0}"


def write_rows(path, rows=ROWS):
    """``rows`` as a file of ``path``'s format, written by ``datasets`` (jsonl by hand)."""
    from datasets import Dataset

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))  # a JSON array: not JSON Lines
    elif path.suffix == ".parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    else:
        Dataset.from_list(rows).to_csv(str(path), index=False)
    return path


def recipe_file(tmp_path, dataset: str, eval_dataset: str = "null") -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        model: tiny
        {SMALL_TINY}
        dataset: {dataset}
        eval_dataset: {eval_dataset}
        rewards: [{{name: math}}]
        trainer: {{output_dir: {tmp_path / 'run'}}}
        """))
    return str(path)


def recipe(tmp_path, dataset: str, *overrides: str) -> Recipe:
    return Recipe.from_yaml(recipe_file(tmp_path, dataset), list(overrides))


# ------------------------------------------------------------------------------ files and the hub
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_a_recipe_reads_its_rows_from_a_file_of_each_format(tmp_path, suffix):
    path = write_rows(tmp_path / f"rows{suffix}")
    spec = recipe(tmp_path, f"{{path: {path}, prompt_column: question, system: '', limit: 3}}").dataset
    rows = dataset_rows(spec)
    # csv infers types: "1" is read back as the number 1
    answers = [1, 2, 3] if suffix == ".csv" else ["1", "2", "3"]
    assert [r["answer"] for r in rows] == answers
    assert rows[2]["prompt"] == [{"role": "user", "content": "2+1"}]


def test_a_missing_or_unknown_file_is_refused_naming_it_before_the_model_is_built(tmp_path, capsys):
    for dataset, message in [
        (f"{{path: {tmp_path / 'nope.jsonl'}}}", f"data file {tmp_path / 'nope.jsonl'} does not exist"),
        (f"{{path: {write_rows(tmp_path / 'rows.txt')}}}", "unknown format '.txt'; give a .jsonl / .json / "
                                                          ".parquet / .csv file"),
    ]:
        code = cli.main(["train", recipe_file(tmp_path, dataset)])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert not (tmp_path / "run" / "tiny_model").exists()  # refused before anything was built
        # grpo eval too: its quick checks come before the model
        code = cli.main(["eval", recipe_file(tmp_path, "{name: tiny_arithmetic}", eval_dataset=dataset)])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert not (tmp_path / "run" / "tiny_model").exists()


@pytest.mark.parametrize("dataset, message", [
    ("{name: tiny_arithmetic, path: x.jsonl}", "exactly one of name (a builder), path (your file) or hub"),
    ("{split: train}", "got none"),
    ("{path: x.jsonl, split: test}", "split='test' does not apply to a file"),
    ("{name: tiny_arithmetic, config: main}", "config='main' is a hub dataset's; it needs hub:"),
    ("{path: x.jsonl, system: Think.}", "system applies to prompts built from prompt_column"),
])
def test_a_dataset_spec_names_one_source_and_no_setting_that_cannot_apply(tmp_path, dataset, message):
    with pytest.raises(RecipeError, match="dataset") as info:
        recipe(tmp_path, dataset)
    assert message in str(info.value)


def test_a_hub_dataset_offline_is_refused_naming_it_and_the_file_to_use_instead(tmp_path, monkeypatch, capsys):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    # grpo train: found by the Hub check, before anything is built
    assert cli.main(["train", recipe_file(tmp_path, "{hub: someone/rows, config: main, split: test}")]) == 2
    err = capsys.readouterr().err
    assert "dataset someone/rows" in err and "HF_HUB_OFFLINE is set" in err and "dataset: {path: rows.jsonl}" in err
    # the loader itself (the pipeline's data: too): datasets' ConnectionError, named
    with pytest.raises(RecipeError) as info:
        load_rows({"hub": "someone/rows", "split": "test"})
    assert "hub dataset 'someone/rows': cannot reach it" in str(info.value)
    assert "dataset: {path: rows.jsonl}" in str(info.value)


# ------------------------------------------------------------------------------ column renames
def test_a_rename_of_a_missing_column_or_onto_an_existing_one_is_refused_naming_it(tmp_path, capsys):
    path = write_rows(tmp_path / "rows.jsonl")
    with pytest.raises(RecipeError, match="cannot rename column 'answr' to 'solution': row 0 has no 'answr'; "
                                          "did you mean 'answer'?"):
        load_rows({"path": str(path), "columns": {"answr": "solution"}})
    with pytest.raises(RecipeError, match="renaming column 'answer' to 'question' would overwrite the existing "
                                          "column 'question'"):
        load_rows({"path": str(path), "columns": {"answer": "question"}})
    swapped = load_rows({"path": str(path), "columns": {"answer": "question", "question": "answer"}})
    assert swapped[0] == {"question": "1", "answer": "0+1"}  # one pass: a swap is no overwrite
    # through grpo train: one line, exit code 2, nothing built
    dataset = f"{{path: {path}, prompt_column: question, columns: {{answr: solution}}}}"
    assert cli.main(["train", recipe_file(tmp_path, dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"data file {path}: cannot rename column 'answr'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "tiny_model").exists()


def test_a_renamed_column_reaches_a_trl_style_reward_function(tmp_path, monkeypatch):
    """trl's accuracy_reward reads ``solution``; the rows give ``answer``: columns: {answer: solution}."""
    (tmp_path / "seen_rewards.py").write_text(textwrap.dedent("""
        SEEN = []

        def accuracy(completions, solution, **kwargs):
            SEEN.extend(solution)
            return [0.0 for _ in completions]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "seen_rewards", raising=False)
    path = write_rows(tmp_path / "rows.jsonl")
    r = recipe(tmp_path, f"{{path: {path}, prompt_column: question, columns: {{answer: solution}}}}",
               "rewards.0.name=seen_rewards:accuracy", "trainer.max_steps=1", "trainer.rollout.backend=hf",
               "trainer.rollout.num_generations=2", "trainer.rollout.prompts_per_step=2",
               "trainer.sampling.max_tokens=4", "trainer.log.progress_bar=false", "trainer.checkpoint.final_model=false")
    trainer = build_trainer(r)
    try:
        trainer.train()
    finally:
        trainer.close()
    import seen_rewards

    assert seen_rewards.SEEN and set(seen_rewards.SEEN) <= {"1", "2", "3", "4"}


# ------------------------------------------------------------------------------ the tiny model's warm-up
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("progress_bar", [True, False])
def test_the_warm_up_is_announced_and_shows_progress_not_trls_raw_dicts(tmp_path, monkeypatch, capfd, progress_bar):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # tqdm's default stream, a terminal now
    r = recipe(tmp_path, "{name: tiny_arithmetic, limit: 4}", "tiny.warmup_steps=4",
               f"trainer.log.progress_bar={str(progress_bar).lower()}")
    prepare_model(r)
    out = capfd.readouterr().out + terminal.getvalue()
    assert f"building the tiny model into {tmp_path / 'run' / 'tiny_model'}: a supervised warm-up of 4 steps" in out
    assert "{'loss'" not in out and "'train_runtime'" not in out  # no raw trl/transformers dicts
    bar = "warm-up: 100%" in terminal.getvalue()
    assert bar == progress_bar, out
    if not progress_bar:  # plain lines instead of a bar
        assert "warm-up step 4/4: loss " in out


def test_a_long_warm_up_says_how_to_shorten_it_and_the_smoke_form(tmp_path):
    from grpo.recipes import warmup_notice

    notice = warmup_notice(tmp_path, TinyModelSpec(warmup_steps=800))
    assert "800 steps" in notice and "min on a CPU" in notice
    assert "tiny.warmup_steps=5" in notice and "grpo train r1_zero_cpu --quick" in notice


def test_off_a_terminal_the_warm_up_prints_plain_lines(tmp_path, capfd):
    build_tiny_model(tmp_path / "m", TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, head_dim=16,
                                                   warmup_steps=2), progress=True)
    captured = capfd.readouterr()
    assert "warm-up step 2/2: loss " in captured.out and "warm-up:" not in captured.err


# ------------------------------------------------------------------------------ --quick
CPU_RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if "cpu" in p.stem)


def test_every_packaged_cpu_recipe_has_a_quick_section_of_valid_overrides():
    assert CPU_RECIPES == ["r1_zero_cpu"]  # a new one: add a quick: section (this test reads it)
    for name in CPU_RECIPES:
        full = Recipe.from_yaml(RECIPE_DIR / f"{name}.yaml")
        quick = Recipe.from_yaml(RECIPE_DIR / f"{name}.yaml", quick=True)
        assert quick.trainer.max_steps <= 3 and quick.tiny.warmup_steps <= 10
        assert quick.trainer.output_dir != full.trainer.output_dir  # the full run's tiny_model is left alone
        # the command line's overrides still win
        assert Recipe.from_yaml(RECIPE_DIR / f"{name}.yaml", ["trainer.max_steps=1"], quick=True).trainer.max_steps == 1


def test_quick_without_a_quick_section_is_refused(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("model: tiny\ndataset: {name: tiny_arithmetic}\nrewards: [{name: math}]\n")
    assert cli.main(["train", str(path), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "--quick: recipe" in err and "has no quick: section" in err
    path.write_text(path.read_text() + "quick: {trainer.max_stepz: 2}\n")
    assert cli.main(["train", str(path), "--quick"]) == 2
    assert "did you mean 'trainer.max_steps'?" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_RECIPES)
def test_every_packaged_cpu_recipe_trains_with_quick(tmp_path, name):
    import grpo

    src = str(Path(grpo.__file__).parents[1])  # this tree's grpo, from the run folder too
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "grpo.cli", "train", name, "--quick"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    quick = Recipe.from_yaml(RECIPE_DIR / f"{name}.yaml", quick=True)
    run = tmp_path / quick.trainer.output_dir
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == quick.trainer.max_steps
    assert "a supervised warm-up of" in out.stdout and "{'loss'" not in out.stdout + out.stderr


def test_a_pipeline_stage_reads_data_with_the_same_loader_and_renames(tmp_path):
    from grpo.pipeline.recipe import PipelineRecipe
    from grpo.pipeline.stages import load_rows as pipeline_load_rows

    assert pipeline_load_rows is load_rows  # one loader, not two
    path = write_rows(tmp_path / "rows.parquet")
    stage = {"name": "a", "type": "sft", "data": {"path": str(path), "columns": {"answer": "solution"}}}
    spec = PipelineRecipe(model="m", stages=[stage]).stages[0].data
    rows = load_rows(spec.model_dump(by_alias=True))
    assert rows[0] == {"question": "0+1", "solution": "1"}


def test_a_pipeline_stage_refuses_a_quick_section_it_would_never_apply():
    from grpo.pipeline.recipe import PipelineRecipe

    stage = {"name": "a", "type": "grpo", "dataset": {"name": "tiny_arithmetic"}, "rewards": [{"name": "math"}],
             "quick": {"trainer.max_steps": 2}}
    with pytest.raises(ValueError, match="quick: is grpo train --quick's smoke form; a pipeline stage has none"):
        PipelineRecipe(model="m", stages=[stage])
