"""The packaged GPU recipe for tool-integrated math is a plain recipe: it loads and validates
(model, data, rewards, GRPOConfig and the multiturn section), its section builds a
MultiTurnGenerator, and the CPU demo runs (smoke test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.config import GRPOConfig
from grpo.recipes import RecipeError, find_recipe
from grpo.recipes.multiturn import MultiTurnSettings
from grpo.recipes.schema import Recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = find_recipe("tool_math_qwen2.5")  # a packaged recipe: grpo train tool_math_qwen2.5


def test_tool_math_recipe_loads_and_validates():
    recipe = Recipe.from_yaml(RECIPE)
    tools = recipe.multiturn
    assert isinstance(recipe.trainer, GRPOConfig) and recipe.trainer.rollout.backend == "vllm"
    assert recipe.model.startswith("Qwen/Qwen2.5") and recipe.rewards[0].name == "math"
    assert tools.parser == "hermes" and tools.tools == ["python"] and tools.max_turns == 4
    assert tools.max_turn_tokens <= recipe.trainer.sampling.max_tokens
    recipe = Recipe.from_yaml(RECIPE, ["multiturn.max_turns=2", "trainer.loss.beta=0.01"])
    assert recipe.multiturn.max_turns == 2 and recipe.trainer.loss.beta == 0.01
    assert Recipe.from_yaml(RECIPE, ["multiturn=null"]).multiturn is None  # single turn
    # asynchronous tool use: the trainer wraps the multi-turn generator, never replaces it
    assert Recipe.from_yaml(RECIPE, ["trainer.async.staleness=1"]).trainer.async_.staleness == 1
    for overrides, message in [
        (["multiturn.max_turn_tokens=99999"], ("multiturn.max_turn_tokens=99999 exceeds "
                                               "trainer.sampling.max_tokens=3072")),
        (["multiturn.max_turnz=2"], ("unknown key 'multiturn.max_turnz'; did you mean "
                                     "'multiturn.max_turns'?")),
        (["trainer.rollout.backend=vllm_server"], ("trainer.rollout.backend='vllm_server' is not "
                                                   "supported; use 'hf' or 'vllm'")),
    ]:
        with pytest.raises(RecipeError) as info:
            Recipe.from_yaml(RECIPE, overrides)
        assert message in str(info.value), str(info.value)
    with pytest.raises(TypeError):
        MultiTurnSettings(sandbox={"wall_time": 5})  # not a SandboxLimits field


def test_settings_build_the_generator():
    from grpo.rollout import HFGenerator
    from grpo.rollout.multiturn import MultiTurnGenerator
    from grpo.tiny import build_char_tokenizer, build_tiny_llama

    tok = build_char_tokenizer()
    gen = MultiTurnSettings(parser="code_block", code_tags=("<python>", "</python>"), max_turns=3,
                       sandbox={"wall_time_s": 2}).build(HFGenerator(build_tiny_llama(tok, hidden_size=64), tok))
    assert isinstance(gen, MultiTurnGenerator) and gen.max_turns == 3 and gen.stops == ("</python>",)
    gen.close()


def test_tool_use_demo_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "tool_use_cpu.py"), "--quick", "--output-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"held_out_accuracy_before", "held_out_accuracy_after", "tool_call_rate_after"} <= set(summary)
