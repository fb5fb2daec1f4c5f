"""The R1-Zero CPU demo with each registered objective, estimator and regulariser (issue 24).

One short run each (``examples/r1_zero_cpu.py --quick`` from one shared warm-up model): the run
finishes, every logged training metric is finite, and the weights move from the warm-up model.
The objectives and estimators come from the registries, so a newly registered built-in is run
without editing this file.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo.advantages import ADVANTAGE_ESTIMATORS
from grpo.objectives import LOSSES
from grpo.objectives.corrections import CORRECTIONS

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "r1_zero_cpu.py"

pytestmark = pytest.mark.slow


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), "--quick", "--output-dir", str(out), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """One warm-up model for every run below: 300 steps, enough for groups with reward spread
    (the --quick warm-up's 5 steps leave every group without signal: nothing would train)."""
    run = tmp_path_factory.mktemp("warm")
    out = _run(run, "--warmup-steps", "300")
    assert out.returncode == 0, out.stderr[-3000:]
    return run / "warmup_model"


def _check_trained(run: Path, warm: Path, out: subprocess.CompletedProcess) -> list[dict]:
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss/loss" in r]
    assert len(train) == 2, rows
    for r in train:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)
               and not k.startswith(("rewards/", "eval/"))}  # reward means are NaN when nothing scored
        assert not bad, bad
    before, after = load_file(warm / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "no weight changed"
    return train


BUILTIN_OBJECTIVES = sorted(LOSSES)
BUILTIN_ESTIMATORS = sorted(set(ADVANTAGE_ESTIMATORS) - {"grpo"})


@pytest.mark.parametrize("objective", BUILTIN_OBJECTIVES)
def test_demo_trains_with_each_objective(objective, warm, tmp_path):
    out = _run(tmp_path, "--start-model", str(warm), "--objective", objective)
    train = _check_trained(tmp_path, warm, out)
    assert json.loads((tmp_path / "summary.json").read_text())["objective"] == objective
    cfg = (tmp_path / "config.yaml").read_text()
    assert f"objective: {objective}" in cfg


@pytest.mark.parametrize("estimator", BUILTIN_ESTIMATORS)
def test_demo_trains_with_each_estimator(estimator, warm, tmp_path):
    out = _run(tmp_path, "--start-model", str(warm), "--set", f"rollout.advantage_estimator={estimator}")
    _check_trained(tmp_path, warm, out)
    assert f"advantage_estimator: {estimator}" in (tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize("overrides", [
    ["loss.entropy_coef=0.01"],
    ["loss.entropy_coef=0.01", "loss.entropy_target=0.5"],
    ["rollout.length_penalty=0.25"],
    ["distill.self_context=The verified answer is {answer}."],  # OPSD beside the rewards
], ids=["entropy", "adaptive_entropy", "length_penalty", "self_distillation"])
def test_demo_trains_with_each_regulariser(overrides, warm, tmp_path):
    args = [a for kv in overrides for a in ("--set", kv)]
    train = _check_trained(tmp_path, warm, _run(tmp_path, "--start-model", str(warm), *args))
    if overrides[0].startswith("distill."):
        assert all(r["distill/reverse_kl"] > 0 for r in train)
    if overrides[0].startswith("loss.entropy_coef") and len(overrides) == 1:
        assert all(r["loss/entropy_coef"] == 0.01 for r in train)


BUILTIN_CORRECTIONS = sorted(set(CORRECTIONS) - {"tis"})  # tis: the default, in tests/test_async.py


@pytest.mark.parametrize("correction", BUILTIN_CORRECTIONS)
def test_demo_trains_asynchronously_with_each_correction(correction, warm, tmp_path):
    """The corrections weigh the policy term by the sampler's log-probs: with the HF backend they
    act under asynchronous rollouts (the decoupled objective's behaviour weight)."""
    out = _run(tmp_path, "--start-model", str(warm), "--async-staleness", "1",
               "--set", f"loss.correction={correction}")
    train = _check_trained(tmp_path, warm, out)
    assert all("loss/is_weight_mean" in r for r in train)
