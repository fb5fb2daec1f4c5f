"""RunLogger with the real tensorboard tracker (through accelerate, offline): the run config with
lists and None no longer crashes its hparams, and the scalars are in the event file."""

import math

from grpo.config import GRPOConfig
from grpo.tracking import RunLogger, read_jsonl, tracker_config


def test_tracker_config_flattens_and_stringifies():
    flat = tracker_config({"beta": 0.001, "stop": [], "adam_betas": (0.9, 0.99), "minibatch_size": None,
                           "fsdp": False, "sub": {"a": 1, "b": ["x"]}})
    assert flat == {"beta": 0.001, "stop": "[]", "adam_betas": "(0.9, 0.99)", "minibatch_size": "None",
                    "fsdp": False, "sub/a": 1, "sub/b": "['x']"}


def test_tensorboard_receives_config_metrics_and_eval(tmp_path):
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = GRPOConfig(output_dir=str(tmp_path), report_to=["tensorboard"], stop=["</answer>"])
    acc = Accelerator(cpu=True, log_with=cfg.report_to, project_dir=cfg.output_dir)
    log = RunLogger(tmp_path, accelerator=acc, report_to=cfg.report_to, progress_bar=False,
                    config=cfg.model_dump(mode="json"))  # what the trainer passes: lists, None, tuples
    log.log_metrics(1, {"reward/total/mean": 0.25, "loss/kl": 1e-3})
    log.log_metrics(2, {"reward/total/mean": 0.5, "loss/kl": 2e-3, "reward/total/std": math.nan})
    log.log_eval(2, {"eval/greedy_accuracy": 0.75})
    log.close()

    events = list((tmp_path / "grpo").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file written"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in events:
        ea = EventAccumulator(str(path))
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    assert scalars["reward/total/mean"] == [(1, 0.25), (2, 0.5)]
    assert [s for s, _ in scalars["loss/kl"]] == [1, 2] and abs(scalars["loss/kl"][0][1] - 1e-3) < 1e-9
    assert scalars["eval/greedy_accuracy"] == [(2, 0.75)]
    # the JSONL log is written as before (NaN as null)
    assert read_jsonl(tmp_path / "metrics.jsonl")[1]["reward/total/std"] is None


def test_a_tracker_that_is_not_installed_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """report_to=["wandb"] without wandb used to leave accelerate's debug line only, and the run
    trained unlogged. `sys.modules["wandb"] = None` makes `import wandb` fail for real; the model
    path does not exist, so the refusal comes before any model loads."""
    import sys

    import pytest

    from grpo import GRPOTrainer

    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), log={"report_to": ["tensorboard", "wandb"]})
    with pytest.raises(ImportError, match=r"log.report_to=\['tensorboard', 'wandb'\] asks for wandb, but "
                                          r"wandb cannot be imported .*: install it \(pip install wandb\), "
                                          r"or drop 'wandb' from log.report_to"):
        GRPOTrainer(str(tmp_path / "no-model-here"), [lambda completions, **kw: [0.0] * len(completions)],
                    [{"prompt": "hi"}], cfg)


def test_an_installed_tracker_passes_the_check(tiny_dir, tmp_path):
    from grpo import GRPOTrainer

    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1,
                     log={"report_to": ["tensorboard"], "progress_bar": False},
                     rollout={"num_generations": 2, "prompts_per_step": 1}, sampling={"max_tokens": 4},
                     checkpoint={"final_model": False})
    trainer = GRPOTrainer(str(tiny_dir), [lambda completions, **kw: [0.0] * len(completions)],
                          [{"prompt": "hi"}], cfg)
    trainer.close()
