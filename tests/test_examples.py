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


def test_cli_train_eval_report(tmp_path):
    from grpo.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model", hidden_size=64, num_heads=2, head_dim=32)
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
model: {model}
dataset: {{name: tiny_arithmetic, split: train, limit: 16}}
eval_dataset: {{name: tiny_arithmetic, split: test, limit: 4}}
rewards:
  - {{name: math, weight: 1.0}}
  - {{name: format, weight: 0.1}}
trainer: {{output_dir: {run}, num_generations: 2, prompts_per_step: 2, max_steps: 5,
           max_completion_length: 6, learning_rate: 1.0e-3, beta: 0.0, eval_samples: 2, progress_bar: false}}
""")
    cli = [sys.executable, "-m", "grpo.cli"]
    out = subprocess.run(cli + ["train", str(recipe), "trainer.max_steps=2"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "report:" in out.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # the override won
    assert (run / "report" / "reward_accuracy.png").exists() and (run / "final" / "config.json").exists()
    out = subprocess.run(cli + ["eval", str(recipe), "--model", str(run / "final")], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "eval/greedy_accuracy" in out.stdout
    bad = subprocess.run(cli + ["train", str(recipe), "trainer.num_generations=1"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "num_generations" in bad.stderr
    helptext = subprocess.run(cli + ["train", "--help-config"], capture_output=True, text=True, timeout=120)
    assert "trainer.beta" in helptext.stdout and "KL coefficient" in helptext.stdout


def test_r1_zero_cpu_demo_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "r1_zero_cpu.py"), "--quick",
                          "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held-out greedy accuracy" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["grpo_steps"] == 2 and (tmp_path / "run" / "report" / "report.html").exists()
