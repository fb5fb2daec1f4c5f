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
trainer: {{output_dir: {run}, max_steps: 5, rollout: {{num_generations: 2, prompts_per_step: 2}},
           sampling: {{max_tokens: 6}}, optim: {{learning_rate: 1.0e-3}}, loss: {{beta: 0.0}},
           eval: {{samples: 2}}, log: {{progress_bar: false}}}}
""")
    cli = [sys.executable, "-m", "grpo.cli"]
    out = subprocess.run(cli + ["train", str(recipe), "trainer.max_steps=2"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FlatConfigWarning" not in out.stderr  # the library itself speaks the sections
    assert "report:" in out.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # the override won
    assert (run / "report" / "reward_accuracy.png").exists() and (run / "final" / "config.json").exists()
    out = subprocess.run(cli + ["eval", str(recipe), "--model", str(run / "final")], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "eval/greedy_accuracy" in out.stdout
    bad = subprocess.run(cli + ["train", str(recipe), "trainer.rollout.num_generations=1"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "num_generations" in bad.stderr
    helptext = subprocess.run(cli + ["train", "--help-config"], capture_output=True, text=True, timeout=120)
    assert "trainer.loss.beta" in helptext.stdout and "KL coefficient" in helptext.stdout


def test_r1_zero_cpu_demo_quick(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "r1_zero_cpu.py"), "--quick",
                          "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FlatConfigWarning" not in out.stderr
    assert "held-out greedy accuracy" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["grpo_steps"] == 2 and (tmp_path / "run" / "report" / "report.html").exists()



@pytest.mark.slow
def test_tool_use_demo_async_from_a_saved_warmup(tmp_path):
    """The measuring flags of the tool-use demo: --save-warmup keeps the warm-up model, and
    --start-model starts GRPO from it with --async-staleness 1 (the tool loop wrapped around the
    trainer's generator process) and --eval-steps 1 (the trainer's held-out evaluation)."""
    script, warm = str(ROOT / "examples" / "tool_use_cpu.py"), tmp_path / "warm"
    out = subprocess.run([sys.executable, script, "--quick", "--save-warmup", str(warm), "--output-dir",
                          str(tmp_path / "first")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (warm / "config.json").exists() and (warm / "tokenizer.json").exists()
    run = tmp_path / "async"
    out = subprocess.run([sys.executable, script, "--quick", "--start-model", str(warm), "--async-staleness", "1",
                          "--eval-steps", "1", "--output-dir", str(run)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[warm-up]" not in out.stdout  # started from the saved model
    assert [json.loads(x)["step"] for x in (run / "eval.jsonl").read_text().splitlines()] == [0, 1, 2]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["async/staleness_max"] for m in metrics] == [0.0, 1.0]  # step 2 trained on version-1 rollouts
    # the training trajectories went through the tool loop (the Recording generator saw both steps)
    assert len((run / "tool_metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "summary.json").read_text())["async_staleness"] == 1

def test_r1_pipeline_example_runs_every_stage_and_regenerates_its_table(tmp_path):
    """The R1 miniature with tiny settings: every stage runs, each model stage's numbers land in
    its folder as JSON, the table comes back from them, and the report links every stage."""
    script = str(ROOT / "examples" / "r1_pipeline_cpu.py")
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, script, "--quick", "--output-dir", str(run)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    models = ["warmup", "r1_zero", "r1_zero_lang", "cold_start", "reasoning_rl", "sft_base", "final_rl",
              "student_warmup", "student_distill", "student_rl", "student_opd", "student_rl_x10", "student_opd_x10"]
    results = json.loads((run / "results.json").read_text())["stages"]
    assert [r["stage"] for r in results] == models
    for r in results:
        assert 0 <= r["greedy_accuracy"] <= 1 and 0 <= r["mixing_rate"] <= 1 and r["mean_length"] > 0
        assert json.loads((run / "stages" / r["folder"] / "miniature.json").read_text()) == r
    assert results[-1]["parameters"] * 3 < results[0]["parameters"]  # the student is several times smaller
    # the student's RL stages ran under the distillation stage's wall time
    distill = json.loads((run / "stages" / "11_student_distill" / "done.json").read_text())
    budget = max(1.0, distill["summary"]["seconds"])
    for folder, factor in (("12_student_rl", 1), ("13_student_opd", 1), ("14_student_rl_x10", 10),
                           ("15_student_opd_x10", 10)):
        cfg = json.loads((run / "stages" / folder / "done.json").read_text())["config"]
        assert cfg["trainer"]["max_seconds"] == pytest.approx(factor * budget)
    assert "distill/reverse_kl" in (run / "stages" / "13_student_opd" / "grpo" / "metrics.jsonl").read_text()
    table = out.stdout[out.stdout.index("| stage |"):].split("\n\n")[0].strip()
    again = subprocess.run([sys.executable, script, "--table", str(run)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == table
    # one page links the pipeline index and every stage's report; every link resolves
    report = (run / "report.html").read_text()
    links = [chunk.split("'")[0] for chunk in report.split("href='")[1:]]
    assert "index.html" in links and all((run / link).exists() for link in links)
    stage_reports = [link for link in links if link.endswith("report.html")]
    assert len(stage_reports) == 15  # 8 GRPO, 5 SFT and 2 rejection-sampling stages
