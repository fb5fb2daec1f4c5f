"""A trl user switches by changing one import (issue #26): grpo.GRPOTrainer takes trl's keyword
names and a trl.GRPOConfig, converted through the one mapping grpo.trl_args.TRL_FIELDS;
grpo.GRPOConfig given a trl name says which grpo setting it is; docs/trl.md is the mapping."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from grpo import GRPOConfig
from grpo.trl_args import TRL_FIELDS, TRL_VERSION, TrlArgsError, grpo_settings, render

trl = pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]


def trl_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False)
    return trl.GRPOConfig(**{**base, **kw})


def converted(tmp_path, **kw) -> GRPOConfig:
    return GRPOConfig(**grpo_settings(trl_args(tmp_path, **kw)))


# ----------------------------------------------------------------------------- the quickstart
def test_trl_quickstart_with_only_the_import_changed(tiny_dir, tmp_path):
    """trl's GRPOTrainer quickstart, keyword for keyword; only the trainer import is grpo's."""
    from datasets import Dataset
    from trl import GRPOConfig as TrlGRPOConfig
    from trl.rewards import accuracy_reward

    from grpo import GRPOTrainer  # was: from trl import GRPOTrainer

    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"{i}+1="}], "solution": f"${i + 1}$"}
            for i in range(4)
        ]
    )
    training_args = TrlGRPOConfig(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=str(tiny_dir),
        reward_funcs=accuracy_reward,
        args=training_args,
        train_dataset=dataset,
    )
    cfg = trainer.config
    assert (cfg.max_steps, cfg.rollout.num_generations, cfg.rollout.prompts_per_step) == (2, 4, 1)
    assert (cfg.optim.minibatch_size, cfg.forward.micro_batch_size) == (4, 4)
    assert (cfg.loss.beta, cfg.loss.aggregation, cfg.sampling.max_tokens) == (0.0, "token_mean", 8)
    trainer.train()
    assert trainer.step == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"step"' in line][-1] == 2


# ----------------------------------------------------------------------------- the mapping
def test_every_field_of_the_installed_trl_is_declared():
    """Exactly the installed trl's fields, for the release the table is written for; with
    another trl, its new fields are refused when set (test below) and the table may list
    fields it lacks."""
    names = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    if ".".join(trl.__version__.split(".")[:2]) == TRL_VERSION:
        assert sorted(names - set(TRL_FIELDS)) == []
        assert sorted(set(TRL_FIELDS) - names) == []
    for name, rule in TRL_FIELDS.items():
        assert rule.note or rule.kind == "mapped" and rule.convert, name
        assert (rule.kind == "mapped") == bool(rule.keys) or name == "use_cpu", name


def test_trl_defaults_become_grpo_settings(tmp_path):
    cfg = converted(tmp_path)
    assert cfg.seed == 42 and cfg.num_train_epochs == 3.0
    assert cfg.rollout.num_generations == 8 and cfg.rollout.prompts_per_step == 1
    assert (cfg.loss.beta, cfg.loss.eps_low, cfg.loss.eps_high) == (0.0, 0.2, 0.2)
    assert cfg.loss.aggregation == "token_mean" and cfg.rollout.advantage_estimator == "grpo"
    assert cfg.optim.adam_betas == (0.9, 0.999) and cfg.optim.lr_schedule == "linear"
    assert cfg.forward.gradient_checkpointing and cfg.sampling.max_tokens == 512
    assert cfg.rollout.backend == "hf" and not cfg.loss.use_tis


def test_batch_layout(tmp_path):
    cfg = converted(
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        steps_per_generation=4,
        num_generations=8,
        num_iterations=2,
        max_steps=8,
        logging_steps=4,
    )
    # 4 x 1 process x 4 = 16 completions per generation: 2 prompts of 8; optimizer steps of 8
    assert (cfg.rollout.prompts_per_step, cfg.optim.minibatch_size) == (2, 8)
    assert cfg.forward.micro_batch_size == 4 and cfg.optim.num_iterations == 2
    # k = 4 / 2 x 2 = 4 optimizer steps per grpo step
    assert cfg.max_steps == 2 and cfg.log.steps == 1


@pytest.mark.parametrize(
    "kw, grpo",
    [
        (dict(loss_type="grpo"), ("loss", "aggregation", "seq_mean_token_mean")),
        (dict(loss_type="dr_grpo"), ("loss", "aggregation", "seq_sum_max_len")),
        (dict(epsilon=0.1, epsilon_high=0.28), ("loss", "eps_high", 0.28)),
        (dict(epsilon=0.1), ("loss", "eps_low", 0.1)),
        (dict(scale_rewards="batch"), ("rollout", "advantage_estimator", "batch_std")),
        (dict(scale_rewards=False), ("rollout", "advantage_estimator", "dr_grpo")),
        (dict(scale_rewards="batch", multi_objective_aggregation="normalize_then_sum"),
         ("rollout", "advantage_estimator", "gdpo")),
        (dict(use_vllm=True, vllm_importance_sampling_correction=False), ("rollout", "backend", "vllm")),
        (
            dict(use_vllm=True, vllm_mode="server", vllm_importance_sampling_correction=False),
            ("rollout", "backend", "vllm_server"),
        ),
        (
            dict(use_vllm=True, vllm_importance_sampling_mode="token_truncate"),
            ("loss", "is_cap", 3.0),
        ),
        (dict(report_to="wandb"), ("log", "report_to", ["wandb"])),
        (dict(lr_scheduler_type="cosine"), ("optim", "lr_schedule", "cosine")),
        (dict(entropy_coef=0.01), ("loss", "entropy_coef", 0.01)),
        (dict(entropy_coef=0.01, entropy_target=0.3), ("loss", "entropy_target", None)),  # not adaptive
        (dict(use_adaptive_entropy=True), ("loss", "entropy_target", 0.2)),  # trl's defaults
        (dict(use_adaptive_entropy=True, entropy_coef_max=0.05), ("loss", "entropy_coef_max", 0.05)),
        (dict(use_adaptive_entropy=True), ("loss", "entropy_coef_delta", 0.005)),
        # trl's epsilon_high is CISPO's absolute cap on the ratio: 5.0 -> grpo's 1 + eps_high
        (dict(loss_type="cispo", epsilon_high=5.0), ("loss", "options", {"eps_low": 1.0, "eps_high": 4.0})),
        (dict(loss_type="cispo", epsilon_high=5.0), ("loss", "aggregation", "token_mean")),
        (dict(loss_type="sapo", sapo_temperature_neg=2.0), ("loss", "options", {"tau_pos": 1.0, "tau_neg": 2.0})),
        (dict(loss_type="sapo"), ("loss", "aggregation", "seq_mean_token_mean")),
        # every vllm importance-sampling mode has its correction; trl's default is sequence_mask
        (dict(use_vllm=True), ("loss", "correction", "mis_sequence")),
        (dict(use_vllm=True), ("loss", "correction_options", {"low": None, "high": 3.0})),
        (dict(use_vllm=True, vllm_importance_sampling_mode="token_mask", vllm_importance_sampling_clip_min=0.5),
         ("loss", "correction_options", {"low": 0.5, "high": 3.0})),
        (dict(use_vllm=True, vllm_importance_sampling_mode="token_mask"), ("loss", "correction", "icepop")),
        (dict(use_vllm=True, vllm_importance_sampling_mode="sequence_truncate"),
         ("loss", "correction_options", {"cap": 3.0, "floor": None})),
    ],
)
def test_mapped_values(tmp_path, kw, grpo):
    section, key, value = grpo
    got = getattr(getattr(converted(tmp_path, **kw), section), key)
    assert got == (tuple(value) if isinstance(got, tuple) else value)


@pytest.mark.parametrize(
    "kw, field, says",
    [
        (dict(loss_type="bnpo"), "loss_type", "no equivalent"),
        (dict(loss_type="vespo"), "loss_type", "no equivalent"),
        (dict(loss_type="cispo"), "epsilon_high", "trl recommends 5.0"),  # None: epsilon = 0.2
        (dict(sync_ref_model=True), "sync_ref_model", "reference model is fixed"),
        (dict(top_entropy_quantile=0.2), "top_entropy_quantile", "entropy"),
        (dict(push_to_hub=True), "push_to_hub", "hub"),
        (dict(delta=2.0), "delta", "loss.dual_clip"),
        (dict(use_vllm=True, vllm_importance_sampling_mode="token_truncate",
              vllm_importance_sampling_clip_min=0.5), "vllm_importance_sampling_clip_min", "from above only"),
        (
            dict(gradient_accumulation_steps=2, steps_per_generation=3),
            "steps_per_generation",
            "optim.minibatch_size",
        ),
        (
            dict(per_device_train_batch_size=2, steps_per_generation=2, max_steps=3,
                 gradient_accumulation_steps=1, num_iterations=2, num_generations=2),
            "max_steps",
            "multiple of 4",
        ),
        (dict(optim="sgd"), "optim", "AdamW"),
        (dict(generation_kwargs={"do_sample": False}), "generation_kwargs", "sampling"),
    ],
)
def test_refused_fields_are_named(tmp_path, kw, field, says):
    args = trl_args(tmp_path, **kw)
    with pytest.raises(TrlArgsError) as e:
        grpo_settings(args)
    assert f"GRPOConfig {field}=" in str(e.value) and says in str(e.value)


def test_an_unknown_trl_field_is_refused_when_set(tmp_path):
    @dataclasses.dataclass
    class Newer(trl.GRPOConfig):
        shiny_new_knob: float = 0.0

    assert "shiny_new_knob" not in str(grpo_settings(Newer(output_dir=str(tmp_path), bf16=False,
                                                         use_cpu=True)))
    with pytest.raises(TrlArgsError, match="shiny_new_knob=0.5.*not in grpo's mapping"):
        grpo_settings(Newer(output_dir=str(tmp_path), bf16=False, use_cpu=True,
                            shiny_new_knob=0.5))


# ----------------------------------------------------------------------------- grpo's config
@pytest.mark.parametrize(
    "name, value, key",
    [
        ("loss_type", "dapo", "loss.aggregation"),
        ("epsilon", 0.1, "loss.eps_low"),
        ("epsilon_high", 0.28, "loss.eps_high"),
        ("use_vllm", True, "rollout.backend"),
        ("per_device_train_batch_size", 4, "forward.micro_batch_size"),
        ("gradient_accumulation_steps", 2, "optim.minibatch_size"),
        ("scale_rewards", "none", "rollout.advantage_estimator"),
        ("vllm_enable_sleep_mode", True, "vllm.sleep"),
    ],
)
def test_grpo_config_names_the_grpo_setting_of_a_trl_name(name, value, key):
    with pytest.raises(ValueError) as e:
        GRPOConfig(**{name: value})
    text = str(e.value)
    assert f"'{name}' is trl's name" in text and key in text
    assert "Extra inputs are not permitted" not in text


def test_grpo_config_on_a_refused_trl_name():
    with pytest.raises(ValueError, match="'sync_ref_model' is a trl setting grpo does not have"):
        GRPOConfig(sync_ref_model=True)


def test_report_to_takes_a_string():
    assert GRPOConfig(log={"report_to": "wandb"}).log.report_to == ["wandb"]
    assert GRPOConfig(log={"report_to": "none"}).log.report_to == []


# ----------------------------------------------------------------------------- the trainer's names
def test_both_names_of_one_thing_are_refused(tiny_dir, tmp_path):
    from grpo import GRPOTrainer

    rows = [{"prompt": "1+1=", "answer": "2"}]
    with pytest.raises(ValueError, match="both config= and args="):
        GRPOTrainer(str(tiny_dir), [len], rows, config=GRPOConfig(), args=GRPOConfig())
    with pytest.raises(ValueError, match="both tokenizer= and processing_class="):
        GRPOTrainer(str(tiny_dir), [len], rows, tokenizer=object(), processing_class=object())
    with pytest.raises(TypeError, match="args="):
        GRPOTrainer(str(tiny_dir), [len], trl_args(tmp_path))


def test_a_refused_trl_field_stops_the_trainer(tiny_dir, tmp_path):
    from grpo import GRPOTrainer

    with pytest.raises(TrlArgsError, match="sync_ref_model"):
        GRPOTrainer(
            model=str(tiny_dir),
            reward_funcs=len,
            args=trl_args(tmp_path, sync_ref_model=True),
            train_dataset=[{"prompt": "1+1="}],
        )


# ----------------------------------------------------------------------------- the page
def test_docs_trl_md_is_the_mapping():
    assert (ROOT / "docs" / "trl.md").read_text() == render(), (
        "docs/trl.md is stale: PYTHONPATH=src python -m grpo.trl_args > docs/trl.md"
    )
    assert "docs/trl.md" in (ROOT / "README.md").read_text()
    assert "trl.md" in (ROOT / "docs" / "trainer.md").read_text()
