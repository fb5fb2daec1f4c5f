"""Re-runs of a pipeline (docs/pipeline.md, "Multi-stage pipelines"): a stage that must run again
(named by --redo, its settings changed, or an earlier stage ran again) replaces its own folder;
a folder the pipeline did not write is refused, naming it. Tiny model, real stages."""

import json
from pathlib import Path

import pytest

from grpo.pipeline import NothingKeptError, run_pipeline
from grpo.pipeline.recipe import PipelineRecipe


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from grpo.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("redo") / "base", hidden_size=64, num_heads=2, head_dim=32)


def _sample(**changes):
    return {"name": "rejection", "type": "sample", "data": {"builder": "tiny_arithmetic", "limit": 4},
            "rewards": [{"name": "format"}], "keep": {"verifiers": [], "drop_truncated": False}, "n": 2,
            "sampling": {"max_tokens": 3}, "batch_size": 2, **changes}


SFT = {"name": "sft_after", "type": "sft", "model": {"from": "base"}, "data": {"from": "rejection"},
       "sft": {"max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1}}


def _run(model, out, stages, **kw):
    return run_pipeline(PipelineRecipe(output_dir=str(out), model=str(model), stages=stages), **kw)


def _per_prompt(folder: Path) -> list[int]:
    rows = (folder / "samples" / "samples.jsonl").read_text().splitlines()
    return [len(json.loads(r)["samples"]) for r in rows]


def test_redo_of_a_sample_stage_replaces_its_samples(model, tmp_path):
    run, stage = tmp_path / "run", tmp_path / "run" / "stages" / "01_rejection"
    assert _run(model, run, [_sample()]).ran == ["rejection"]
    (stage / "samples" / "left_over.txt").write_text("x")
    assert _run(model, run, [_sample()]).ran == []  # finished: skipped
    assert _run(model, run, [_sample()], redo="rejection").ran == ["rejection"]
    assert not (stage / "samples" / "left_over.txt").exists()  # replaced, not resumed
    assert _per_prompt(stage) == [2] * 4 and (stage / "done.json").exists()


def test_changed_sample_stage_reruns_after_a_failure_and_when_finished(model, tmp_path):
    """The issue's case: NothingKeptError says "sample more (n, ...)"; doing so reruns the stage."""
    run, stage = tmp_path / "run", tmp_path / "run" / "stages" / "01_rejection"
    strict = {"rewards": [{"name": "math"}], "keep": {}}
    with pytest.raises(NothingKeptError):
        _run(model, run, [_sample(**strict)])
    assert _per_prompt(stage) == [2] * 4 and not (stage / "done.json").exists()
    assert _run(model, run, [_sample(n=3)]).ran == ["rejection"]  # n and the rule changed
    assert json.loads((stage / "samples" / "manifest.json").read_text())["n"] == 3
    assert _per_prompt(stage) == [3] * 4
    # finished, then changed again: runs again in a clean folder
    (stage / "samples" / "left_over.txt").write_text("x")
    assert _run(model, run, [_sample(n=1)]).ran == ["rejection"]
    assert _per_prompt(stage) == [1] * 4 and not (stage / "samples" / "left_over.txt").exists()


def test_redo_of_a_failed_sample_stage_samples_again(model, tmp_path):
    run, stage = tmp_path / "run", tmp_path / "run" / "stages" / "01_rejection"
    strict = {"rewards": [{"name": "math"}], "keep": {}}
    with pytest.raises(NothingKeptError):
        _run(model, run, [_sample(**strict)])
    (stage / "samples" / "left_over.txt").write_text("x")
    with pytest.raises(NothingKeptError):  # same settings, redone from scratch rather than resumed
        _run(model, run, [_sample(**strict)], redo="rejection")
    assert not (stage / "samples" / "left_over.txt").exists()


def test_keep_rule_change_refilters_stored_samples_then_reruns_later_stages(model, tmp_path):
    run, stage = tmp_path / "run", tmp_path / "run" / "stages" / "01_rejection"
    _run(model, run, [_sample(), SFT])
    samples = stage / "samples" / "samples.jsonl"
    before = (samples.read_bytes(), samples.stat().st_mtime_ns)
    (run / "stages" / "02_sft_after" / "left_over.txt").write_text("x")
    result = _run(model, run, [_sample(keep={"verifiers": [], "drop_truncated": False, "max_per_prompt": 1}), SFT])
    assert result.ran == ["rejection", "sft_after"]
    assert (samples.read_bytes(), samples.stat().st_mtime_ns) == before  # not sampled again
    assert len((stage / "samples" / "sft.jsonl").read_text().splitlines()) == 4  # one row per prompt
    assert not (run / "stages" / "02_sft_after" / "left_over.txt").exists()  # downstream: clean


def test_upstream_change_reruns_downstream_stages_in_clean_folders(model, tmp_path):
    run = tmp_path / "run"
    _run(model, run, [_sample(), SFT])
    after = run / "stages" / "02_sft_after"
    (after / "left_over.txt").write_text("x")
    assert _run(model, run, [_sample(seed=1), SFT]).ran == ["rejection", "sft_after"]
    assert not (after / "left_over.txt").exists() and (after / "model" / "config.json").exists()


def test_foreign_folders_are_refused_naming_them(model, tmp_path):
    run = tmp_path / "run"
    foreign = run / "stages" / "02_sft_after"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"stage 'sft_after'.*02_sft_after holds files the pipeline did not "
                       r"write \(notes.txt; no config.yaml"):
        _run(model, run, [_sample(), SFT])
    assert (foreign / "notes.txt").read_text() == "mine"
    assert not (run / "stages" / "01_rejection").exists()  # refused before anything ran
    # the run folder may hold the user's own files beside stages/ (examples/r1_pipeline_cpu.py
    # keeps its data and models there): the pipeline writes recipe.yaml and stages/ only
    other = tmp_path / "project"
    other.mkdir()
    (other / "data.csv").write_text("a,b")
    _run(model, other, [_sample()])
    assert (other / "data.csv").read_text() == "a,b"


def test_interrupted_grpo_stage_with_changed_settings_starts_over(model, tmp_path):
    """Same settings: it resumes its latest checkpoint; other settings: not the old run's
    checkpoints (they were made with other settings), a clean folder."""
    trainer = {"max_steps": 1, "rollout": {"num_generations": 2, "prompts_per_step": 2},
               "sampling": {"max_tokens": 4}, "loss": {"beta": 0.0}, "log": {"progress_bar": False},
               "checkpoint": {"steps": 1}}
    stage = {"name": "rl", "type": "grpo", "data": {"builder": "tiny_arithmetic", "limit": 4},
             "rewards": [{"name": "format"}], "trainer": trainer}
    run, folder = tmp_path / "run", tmp_path / "run" / "stages" / "01_rl"
    _run(model, run, [stage])
    assert list((folder / "grpo" / "checkpoints").iterdir())
    (folder / "done.json").unlink()  # as if stopped after its checkpoint
    (folder / "grpo" / "left_over.txt").write_text("x")
    changed = {**stage, "trainer": {**trainer, "optim": {"learning_rate": 1.0e-4}}}
    assert _run(model, run, [changed]).ran == ["rl"]
    assert not (folder / "grpo" / "left_over.txt").exists()
    metrics = (folder / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics] == [1]
