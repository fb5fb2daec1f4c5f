"""GRPOConfig's sections and grpo 0.1's flat keys: the same run either way, with a warning that
names the new key; refusals name both settings."""

import copy
import dataclasses
import warnings

import pytest
import yaml

from grpo.config import FLAT_KEYS, SECTIONS, FlatConfigWarning, GRPOConfig, apply_overrides
from grpo.recipes import RECIPE_DIR

# Every field GRPOConfig had in grpo 0.1 (flat), written out so that the mapping is checked
# against the old names, not against itself.
OLD_FIELDS = """
output_dir seed max_steps num_train_epochs max_seconds num_generations prompts_per_step rollout
max_prompt_length max_completion_length temperature top_p top_k min_p repetition_penalty stop
chat_template_kwargs mask_truncated_completions vllm_gpu_memory_utilization vllm_tensor_parallel_size
vllm_enforce_eager vllm_sleep vllm_dtype vllm_server_host vllm_server_port async_staleness async_timeout
advantage_estimator dynamic_sampling dynamic_sampling_max_rounds dynamic_sampling_tol beta kl_estimator
kl_ratio_correction eps_low eps_high dual_clip ratio_level aggregation use_tis is_cap reward_weights
teacher_model distill_coef reward_failure_patience learning_rate weight_decay adam_betas warmup_steps
warmup_ratio lr_schedule max_grad_norm num_iterations minibatch_size micro_batch_size logprob_chunk_size
share_prompt_forward padding_free gradient_checkpointing cpu_keep_freed_memory fsdp dtype eval_steps
eval_samples eval_by eval_max_prompts logging_steps log_completions report_to save_steps save_total_limit
save_final_model merge_lora_on_save resume_from overwrite_output_dir torch_threads progress_bar
""".split()
ROOT_FIELDS = {"output_dir", "seed", "max_steps", "num_train_epochs", "max_seconds", "resume_from",
               "overwrite_output_dir"}

# The packaged r1_zero_cpu recipe's trainer block as grpo 0.1 wrote it (flat), copied literally.
R1_ZERO_CPU_01 = """
output_dir: runs/r1_zero_cpu
seed: 0
max_steps: 150
rollout: hf
num_generations: 8
prompts_per_step: 8
max_completion_length: 40
temperature: 1.0
learning_rate: 1.0e-4
beta: 0.0
eps_low: 0.2
eps_high: 0.28
aggregation: token_mean
micro_batch_size: 64
eval_steps: 50
eval_samples: 4
save_steps: 50
torch_threads: 1
"""


def flatten(nested: dict) -> dict:
    """A nested trainer block written with grpo 0.1's flat keys (where the setting has one)."""
    back = {path: key for key, path in FLAT_KEYS.items()}
    flat = {}
    for key, value in nested.items():
        if key in SECTIONS:
            for name, v in value.items():
                if (key, name) in back:
                    flat[back[(key, name)]] = v
                else:  # new in 0.2 (e.g. reward.accuracy): no flat key, stays in its section
                    flat.setdefault(key, {})[name] = v
        else:
            flat[key] = value
    return flat


def quiet(**kw) -> GRPOConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlatConfigWarning)
        return GRPOConfig(**kw)


def section_fields(section: str) -> set[str]:
    section_type = GRPOConfig.model_fields["async_" if section == "async" else section].annotation
    if hasattr(section_type, "model_fields"):
        return set(section_type.model_fields)
    return {f.name for f in dataclasses.fields(section_type) if f.name != "seed"}


def test_every_grpo_01_field_has_a_home():
    assert len(OLD_FIELDS) == 77
    assert set(OLD_FIELDS) - ROOT_FIELDS == set(FLAT_KEYS)
    for key, (section, name) in FLAT_KEYS.items():
        assert section in SECTIONS, key
        assert name in section_fields(section), (key, section, name)


def test_the_01_demo_block_is_the_packaged_recipe():
    """The literal grpo 0.1 block and today's nested packaged recipe resolve to the same run."""
    packaged = yaml.safe_load((RECIPE_DIR / "r1_zero_cpu.yaml").read_text())["trainer"]
    with pytest.warns(FlatConfigWarning) as record:
        old = GRPOConfig(**yaml.safe_load(R1_ZERO_CPU_01))
    assert len(record) == 1  # one warning for the whole block, listing every key
    message = str(record[0].message)
    for pair in ("rollout -> rollout.backend", "max_completion_length -> sampling.max_tokens",
                 "beta -> loss.beta", "save_steps -> checkpoint.steps", "torch_threads -> forward.torch_threads"):
        assert pair in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatConfigWarning)
        new = GRPOConfig(**packaged)
    assert old == new and old.to_dict() == new.to_dict()
    assert new.sampling.max_tokens == 40 and new.loss.eps_high == 0.28 and new.forward.torch_threads == 1


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPE_DIR.glob("*.yaml")))
def test_every_packaged_recipe_is_the_same_flat_and_nested(recipe):
    trainer = yaml.safe_load((RECIPE_DIR / recipe).read_text())["trainer"]
    assert any(key in SECTIONS for key in trainer), "packaged recipes are written nested"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatConfigWarning)
        nested = GRPOConfig(**trainer)
    with pytest.warns(FlatConfigWarning):
        flat = GRPOConfig(**flatten(trainer))
    assert flat == nested


def test_flat_attributes_read_and_write_through_to_the_sections():
    cfg = GRPOConfig(loss={"beta": 0.02}, sampling={"max_tokens": 12})
    with pytest.warns(FlatConfigWarning, match=r"beta -> loss\.beta"):
        assert cfg.beta == 0.02
    with pytest.warns(FlatConfigWarning, match=r"max_completion_length -> sampling\.max_tokens"):
        assert cfg.max_completion_length == 12
    with pytest.warns(FlatConfigWarning, match=r"learning_rate -> optim\.learning_rate"):
        cfg.learning_rate = 3e-4
    assert cfg.optim.learning_rate == 3e-4
    with pytest.warns(FlatConfigWarning):
        cfg.temperature = 0.7  # sampling is a frozen-style dataclass: replaced, not mutated
    assert cfg.sampling.temperature == 0.7 and cfg.sampling.max_tokens == 12
    with pytest.raises(AttributeError):
        cfg.no_such_setting  # noqa: B018


def test_flat_rollout_string_beside_other_flat_keys():
    """grpo 0.1's ``rollout: vllm`` shares its name with the section: it works in any order."""
    for order in (("rollout", "num_generations"), ("num_generations", "rollout")):
        data = {"rollout": "vllm", "num_generations": 4}
        cfg = quiet(**{k: data[k] for k in order})
        assert cfg.rollout.backend == "vllm" and cfg.rollout.num_generations == 4


def test_overrides_flat_and_nested_reach_the_same_key():
    recipe = {"trainer": {"loss": {"beta": 0.1}}}
    with pytest.warns(FlatConfigWarning) as record:
        flat = apply_overrides(recipe, ["trainer.beta=0.0", "trainer.rollout=vllm"])
    assert [str(w.message).split("sections: ")[1].split(" (")[0] for w in record] == [
        "beta -> loss.beta", "rollout -> rollout.backend"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatConfigWarning)
        nested = apply_overrides(recipe, ["trainer.loss.beta=0.0", "trainer.rollout.backend=vllm"])
        whole = apply_overrides(recipe, ["trainer.rollout={backend: vllm}"])
    assert flat == nested == {"trainer": {"loss": {"beta": 0.0}, "rollout": {"backend": "vllm"}}}
    assert whole["trainer"]["rollout"] == {"backend": "vllm"}
    assert recipe == {"trainer": {"loss": {"beta": 0.1}}}  # the input is not changed


def test_refusals_name_both_settings():
    with pytest.raises(ValueError, match=r"'beta' \(grpo 0\.1's flat key\) and loss\.beta are both given"):
        quiet(beta=0.1, loss={"beta": 0.2})
    with pytest.raises(ValueError, match=r"async\.staleness=1 with vllm\.sleep=True"):
        GRPOConfig(rollout={"backend": "vllm"}, vllm={"sleep": True}, **{"async": {"staleness": 1}})
    assert GRPOConfig(rollout={"backend": "vllm"}, **{"async": {"staleness": 1}}).async_.staleness == 1
    with pytest.raises(ValueError, match=r"optim\.warmup_steps=3 and optim\.warmup_ratio=0\.1"):
        GRPOConfig(optim={"warmup_steps": 3, "warmup_ratio": 0.1})
    with pytest.raises(ValueError, match=r"optim\.minibatch_size=3 must divide"):
        GRPOConfig(optim={"minibatch_size": 3}, rollout={"num_generations": 4, "prompts_per_step": 2})
    with pytest.raises(ValueError, match=r"sampling\.temperature=0"):
        GRPOConfig(sampling={"temperature": 0.0})
    with pytest.raises(ValueError, match="extra"):
        GRPOConfig(loss={"betta": 0.1})


def test_async_section_round_trips_through_yaml(tmp_path):
    cfg = GRPOConfig(**{"async": {"staleness": 2, "timeout": 30.0}, "loss": {"beta": 0.0}})
    assert cfg.async_.staleness == 2
    data = cfg.to_dict()
    assert "async" in data and "async_" not in data
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    again = GRPOConfig.from_yaml(path)
    assert again == cfg and again.async_.timeout == 30.0
    assert cfg.updated({"async.staleness": 0}).async_.staleness == 0 and cfg.async_.staleness == 2


def test_construction_does_not_change_the_callers_mapping():
    data = {"beta": 0.0, "loss": {"eps_high": 0.28}, "rollout": "hf", "num_generations": 4}
    before = copy.deepcopy(data)
    quiet(**data)
    assert data == before
    nested = {"loss": {"beta": 0.0}}
    GRPOConfig(**nested).loss.beta = 0.5
    assert nested == {"loss": {"beta": 0.0}}


def test_the_sections_table_in_the_docs_names_every_key():
    """docs/trainer.md's table of sections stays true: every section, every key."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "trainer.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2] for line in text.splitlines()
            if line.startswith("| `")}
    assert set(rows) == set(SECTIONS)
    for section in SECTIONS:
        for name in section_fields(section):
            assert f"`{name}`" in rows[section], f"docs/trainer.md: {section}.{name} is missing"


@pytest.mark.parametrize("setting, key", [
    ({"rollout": {"dynamic_sampling": True}}, r"rollout\.dynamic_sampling=True"),
    ({"sampling": {"top_p": 0.9}}, r"sampling\.top_p=0\.9"),
    ({"sampling": {"top_k": 20}}, r"sampling\.top_k=20"),
    ({"sampling": {"min_p": 0.05}}, r"sampling\.min_p=0\.05"),
    ({"sampling": {"repetition_penalty": 1.1}}, r"sampling\.repetition_penalty=1\.1"),
])
def test_distillation_refuses_dynamic_sampling_and_truncated_sampling(setting, key):
    """With a teacher, DAPO's filter on task-reward spread would drop the teacher's signal, and a
    truncated sampler's log-probs are no match for the teacher's full softmax: both refused."""
    with pytest.raises(ValueError, match=key + r" with distill\.teacher: .*for on-policy distillation"):
        GRPOConfig(distill={"teacher": "some/teacher"}, **setting)
    GRPOConfig(**setting)  # without a teacher each is fine
    GRPOConfig(distill={"teacher": "some/teacher"}, sampling={"top_k": -1})  # -1 is off too
