"""Recipe plumbing on its own: key=value overrides (list indices included), the Hub check, the
tiny model spec."""

from pathlib import Path

import pytest

from grpo.config import FlatConfigWarning, apply_overrides
from grpo.recipes import RecipeError, find_recipe, hub_problem
from grpo.recipes.schema import Recipe

DATA = {"model": "m", "rewards": [{"name": "math", "weight": 1.0}, {"name": "format"}],
        "trainer": {"loss": {"beta": 0.1}}}


def test_overrides_set_nested_keys_and_list_entries_without_touching_the_input():
    out = apply_overrides(DATA, ["rewards.0.weight=2", "rewards.1.kwargs.partial=true", "trainer.sampling.stop=[a, b]",
                                 "trainer.optim.minibatch_size=null", "lora.r=8", "model=x=y"])
    assert out["rewards"] == [{"name": "math", "weight": 2}, {"name": "format", "kwargs": {"partial": True}}]
    assert out["trainer"] == {"loss": {"beta": 0.1}, "sampling": {"stop": ["a", "b"]}, "optim": {"minibatch_size": None}}
    assert out["lora"] == {"r": 8} and out["model"] == "x=y"  # only the first '=' splits
    assert DATA["rewards"][0]["weight"] == 1.0 and "sampling" not in DATA["trainer"]  # a copy was changed


def test_a_flat_key_below_trainer_is_read_as_its_sections_key_with_a_warning():
    with pytest.warns(FlatConfigWarning, match=r"beta -> loss\.beta"):
        out = apply_overrides(DATA, ["trainer.beta=0", "trainer.rollout=vllm"])
    assert out["trainer"] == {"loss": {"beta": 0}, "rollout": {"backend": "vllm"}}
    with pytest.warns(FlatConfigWarning):  # GRPOConfig.from_yaml's overrides: the config is the top level
        assert apply_overrides({}, ["eps_high=0.28"], config_at="") == {"loss": {"eps_high": 0.28}}


@pytest.mark.parametrize("override, message", [
    ("rewards.2.weight=1", "rewards is a list of 2 entries; use an index 0..1"),
    ("rewards.name=x", "rewards is a list of 2 entries"),
    ("trainer.loss.beta.x=1", "trainer.loss.beta is the value 0.1, not a section"),
    ("beta", "is not key=value"),
    ("trainer..beta=1", "is not key=value"),
    ("trainer.stop=[a", "the value is not valid YAML"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ValueError) as info:
        apply_overrides(DATA, [override])
    assert message in str(info.value)


def test_the_hub_check_needs_nothing_for_local_and_tiny_models(tmp_path):
    recipe = Recipe.from_yaml(find_recipe("r1_zero_cpu"))
    assert hub_problem(recipe) is None  # tiny model, generated data
    (tmp_path / "m").mkdir()
    assert hub_problem(recipe, model=str(tmp_path / "m")) is None
    assert "not a local folder" in hub_problem(recipe, model=str(tmp_path / "missing"))
    assert "not a local folder" in hub_problem(recipe, model="not-an-org-slash-name")


def test_the_hub_check_reports_offline_mode_for_what_is_not_cached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    recipe = Recipe.from_yaml(find_recipe("r1_zero_gsm8k"))
    problem = hub_problem(recipe)
    assert "model Qwen/Qwen2.5-0.5B and dataset openai/gsm8k" in problem and "HF_HUB_OFFLINE is set" in problem


def test_tiny_section_only_with_model_tiny():
    r = Recipe.from_yaml(find_recipe("r1_zero_cpu"), ["tiny.warmup_steps=3"])
    assert r.model == "tiny" and r.tiny.warmup_steps == 3 and r.tiny.hidden_size == 128
    with pytest.raises(RecipeError, match="the 'tiny' section applies to model: tiny"):
        Recipe.from_yaml(find_recipe("r1_zero_cpu"), ["model=Qwen/Qwen2.5-0.5B"])


def test_bilingual_teacher_steps_and_their_tokens():
    import random

    from grpo.recipes.tiny_task import BILINGUAL_TOKENS, teacher_completion, teacher_rows
    from grpo.textstats import is_language_mixed
    from grpo.tiny import build_char_tokenizer

    tok = build_char_tokenizer(BILINGUAL_TOKENS)
    en, zh = "<think>4 plus 3 is 7,7 plus 9 is 16</think>", "<think>4加3得7,7加9得16</think>"
    # the two languages cost the same number of tokens, each word one token, and decode back
    assert len(tok(en)["input_ids"]) == len(tok(zh)["input_ids"]) == 2 + 2 * 5 + 1 + 1
    assert tok.decode(tok(en + zh)["input_ids"]) == en + zh
    assert len(tok) == len(build_char_tokenizer()) + len(BILINGUAL_TOKENS)
    with pytest.raises(ValueError, match="already tokens"):
        build_char_tokenizer(["a"])
    # steps draw their language independently: a two-step CoT mixes half of the time
    rng = random.Random(0)
    cots = [t for t in (teacher_completion([4, 3, 9], rng, think_p=1.0, noformat_p=0.0, languages=("en", "zh"))
                        for _ in range(2000))]
    assert 0.45 < sum(map(is_language_mixed, cots)) / len(cots) < 0.55
    assert {c for c in cots if not is_language_mixed(c)} == {en + "<answer>16</answer>", zh + "<answer>16</answer>"}
    # one language draws no language at all (two draws per completion, as before languages existed),
    # so the R1-Zero demo's warm-up data is unchanged
    used, fresh = random.Random(5), random.Random(5)
    assert teacher_completion([1, 2, 3], used, think_p=1.0, noformat_p=0.0) == \
        "<think>1+2=3,3+3=6</think><answer>6</answer>"
    fresh.random(), fresh.randint(0, 27)
    assert used.random() == fresh.random()
    assert teacher_rows([{"prompt": "p", "terms": [1, 2]}], 5, seed=3) == \
        teacher_rows([{"prompt": "p", "terms": [1, 2]}], 5, seed=3, languages=("symbols",))
    with pytest.raises(ValueError, match="STEP_LANGUAGES"):
        teacher_completion([1, 2], rng, languages=("fr",))


def _build_in_child(folder: str, out: str) -> None:
    from grpo.recipes import build_tiny_model
    from grpo.recipes.schema import TinyModelSpec

    try:
        build_tiny_model(Path(folder), TinyModelSpec(hidden_size=64, num_heads=2, warmup_steps=3))
        Path(out).write_text("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        Path(out).write_text(f"{type(e).__name__}: {e}")


def test_processes_of_one_run_build_the_tiny_model_once(tmp_path):
    """torchrun starts every process of a `model: tiny` run at once: they must not build into the
    same folder together (one builds, the others wait and reuse it)."""
    import multiprocessing as mp

    from transformers import AutoModelForCausalLM

    ctx = mp.get_context("spawn")
    folder = tmp_path / "run" / "tiny_model"
    procs = [ctx.Process(target=_build_in_child, args=(str(folder), str(tmp_path / f"out{i}"))) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [(tmp_path / f"out{i}").read_text() for i in range(3)] == ["ok"] * 3
    assert AutoModelForCausalLM.from_pretrained(folder).config.hidden_size == 64
    assert not folder.with_name("tiny_model.tmp").exists()
