"""Examples as subprocess smoke tests with tiny settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_runs(tmp_path):
    nb = json.loads((ROOT / "examples" / "notebook.ipynb").read_text())
    code = "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    script = tmp_path / "nb.py"
    script.write_text(code + "\nprint('CURVE', curve)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CURVE [" in out.stdout


def test_math_demo_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "math_demo.py")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loss/clip_frac_high" in out.stdout


def test_gpu_recipes_load_and_validate():
    from grpo.recipes import RECIPE_DIR, find_recipe
    from grpo.recipes.schema import Recipe

    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert {"r1_zero_gsm8k", "r1_zero_countdown"} <= set(names)
    for name in names:
        recipe = Recipe.from_yaml(find_recipe(name))
        assert recipe.trainer.max_steps >= 1 and recipe.rewards
    r = Recipe.from_yaml(find_recipe("r1_zero_gsm8k"), ["trainer.beta=0", "model=Qwen/Qwen2.5-1.5B"])
    assert r.trainer.beta == 0 and r.model == "Qwen/Qwen2.5-1.5B"
    with pytest.raises(ValueError, match="minibatch_size"):
        Recipe.from_yaml(find_recipe("r1_zero_gsm8k"), ["trainer.minibatch_size=100"])
